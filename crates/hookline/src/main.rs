//! `hookline serve` and `hookline demo`: read configuration, start telemetry, run.

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
    }
}
