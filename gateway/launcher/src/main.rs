//! `baton`: run a whole local Baton stack with one command.
//!
//! `baton up` starts a prefill and a decode native engine (child processes
//! running `baton engine`) and the gateway in vLLM PD mode in front of them,
//! with the embedded in-memory SLO store. `baton engine` is `baton-engine`.

mod model;
mod signal;
mod up;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "baton",
    version,
    about = "Run a local Baton stack: gateway + prefill + decode engines"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start gateway + prefill engine + decode engine on this machine (CPU).
    Up(up::UpArgs),
    /// Run one native engine (the same as `baton-engine`; see `baton engine --help`).
    Engine(Box<baton_native::cli::Args>),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Engine(args) => match baton_native::cli::run(*args) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("baton engine: {e:#}");
                std::process::ExitCode::FAILURE
            }
        },
        Cmd::Up(args) => {
            // Coloured only on a terminal: a log file gets plain text.
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_ansi(
                    std::io::IsTerminal::is_terminal(&std::io::stdout())
                        && std::env::var_os("NO_COLOR").is_none(),
                )
                .init();
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("baton: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            };
            match rt.block_on(up::run(args)) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("baton: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}
