//! `hookline serve` and `hookline demo` (read configuration, start telemetry, run),
//! `hookline import`, and the command line for daily work (`webhook`, `attempts`,
//! `dead-letters`, `record`; see [`hookline::cli`]).

use clap::{Parser, Subcommand};

/// mimalloc instead of the system allocator: deliveries allocate on several threads at
/// once, and glibc's allocator spent a sixth of a drain's CPU on it (profiled with perf).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use hookline::{Config, ServeArgs};

#[derive(Parser)]
#[command(name = "hookline", version, about = "Turns record changes into calls to third-party REST APIs.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (every role by default).
    Serve(ServeArgs),
    /// Run the seed's example end to end against a built-in ticket tracker, print what
    /// happened, and keep serving.
    Demo(ServeArgs),
    /// Send an NDJSON file of records to a node, with progress and a summary; exits 1 when
    /// some lines were rejected.
    Import(hookline::import::ImportArgs),
    /// Webhooks: apply definitions from a file, list, get, pause, resume, delete, dry-run
    Webhook(hookline::cli::WebhookArgs),
    /// A webhook's attempts, newest last, as a table or NDJSON; --follow for new ones
    Attempts(hookline::cli::AttemptsArgs),
    /// A webhook's dead letters; --redrive sends them again
    DeadLetters(hookline::cli::DeadLettersArgs),
    /// Records: the current version, or the journey (each change, what it fired and why not)
    Record(hookline::cli::RecordArgs),
}

/// Runs a CLI command; its failure is printed and becomes the exit code.
fn remote<F: std::future::Future<Output = Result<(), hookline::cli::Failure>>>(command: F) -> anyhow::Result<()> {
    if let Err(f) = system().block_on(command) {
        eprintln!("error: {}", f.message);
        std::process::exit(f.code);
    }
    Ok(())
}

/// The runtime every command runs on: actix's system (the actors) on a multi-threaded Tokio
/// runtime, so the workers and deliveries the actors spawn use every core.
fn system() -> actix_rt::SystemRunner {
    actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("hookline-worker")
            .build()
            .expect("a Tokio runtime (threads and a timer) can be built")
    })
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve(args) => {
            let config = Config::load(args)?;
            // Dropped after the node stops, which sends the spans still pending.
            let _telemetry =
                hookline_telemetry::init(config.log_format, "info", config.otlp_endpoint.as_deref(), &config.node_id);
            let listener = std::net::TcpListener::bind(config.listen)
                .map_err(|e| anyhow::anyhow!("--listen {}: {e}", config.listen))?;
            system().block_on(hookline::run(config, listener, hookline::shutdown_signal()))
        }
        Command::Demo(args) => {
            let config = Config::load(args)?;
            // Quiet logs so the story reads clearly; RUST_LOG still wins.
            let _telemetry =
                hookline_telemetry::init(config.log_format, "warn", config.otlp_endpoint.as_deref(), &config.node_id);
            system().block_on(hookline::demo::run(config, hookline::shutdown_signal()))
        }
        Command::Import(args) => {
            let summary = system().block_on(hookline::import::run(args))?;
            if summary.rejected > 0 {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Webhook(args) => remote(hookline::cli::webhook(args)),
        Command::Attempts(args) => remote(hookline::cli::attempts(args)),
        Command::DeadLetters(args) => remote(hookline::cli::dead_letters(args)),
        Command::Record(args) => remote(hookline::cli::record(args)),
    }
}
