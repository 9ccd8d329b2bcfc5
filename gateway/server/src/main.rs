use tracing_subscriber::EnvFilter;

use baton_gateway::cli::Cli;

// Every streamed token allocates a little (hyper's chunk buffers, batches);
// glibc's allocator spends a noticeable share of the relay's CPU on it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse_args(std::env::args_os()).unwrap_or_else(|e| e.exit());
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cli.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs (stdout) are coloured only on a terminal: a file or `docker logs` gets plain text.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stdout())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .init();
    let config = match cli.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("baton-gateway: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let gateway = match baton_gateway::start(config).await {
        Ok(g) => g,
        Err(e) => {
            eprintln!("baton-gateway: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    println!("baton-gateway listening on {}", gateway.url());
    wait_for_signal().await;
    tracing::info!("shutting down");
    gateway.shutdown().await;
    std::process::ExitCode::SUCCESS
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
