//! The `relaychat` command line: parse arguments, load settings, run until a signal.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use relaychat::config::{Settings, Sources};

#[derive(Parser)]
#[command(
    name = "relaychat",
    version,
    about = "Chat server, WebRTC signaling server and TURN relay in one binary"
)]
struct Cli {
    /// Configuration file: TOML, or a js-chat-server settings.json.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// HTTP/WebSocket port (0 picks a free one); overrides the configuration.
    #[arg(long)]
    port: Option<u16>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging();
    let settings = match Settings::load(&Sources { config_file: cli.config.clone(), port: cli.port }) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("relaychat: {e}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run(settings))?;
    // Sessions stuck on a dead peer must not hold the exit hostage.
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let server = relaychat::server::start(settings).await?;
    wait_for_signal().await;
    tracing::info!("shutting down");
    tokio::time::timeout(Duration::from_secs(4), server.shutdown()).await.ok();
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("RELAYCHAT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
}
