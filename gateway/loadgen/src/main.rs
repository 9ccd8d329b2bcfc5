//! `baton-bench`: see `baton-bench --help`.

use clap::Parser;

use baton_loadgen::app;
use baton_loadgen::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Plot(args) => app::plot(args),
        Command::Twin(args) => app::twin(args),
        command => match tokio::runtime::Runtime::new() {
            Ok(rt) => rt.block_on(async move {
                match command {
                    Command::Run(args) => app::run(args).await,
                    Command::Sweep(args) => app::sweep(args).await,
                    Command::Plot(args) => app::plot(args),
                    Command::Twin(args) => app::twin(args),
                }
            }),
            Err(e) => Err(e.into()),
        },
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
