//! `hookline serve`: reads configuration, starts telemetry, runs the node until SIGTERM.

use clap::{Parser, Subcommand};
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
}

fn main() -> anyhow::Result<()> {
    let Cli { command: Command::Serve(args) } = Cli::parse();
    let config = Config::load(args)?;
    hookline_telemetry::init(config.log_format);
    let listener =
        std::net::TcpListener::bind(config.listen).map_err(|e| anyhow::anyhow!("--listen {}: {e}", config.listen))?;
    actix_rt::System::new().block_on(hookline::run(config, listener, hookline::shutdown_signal()))
}
