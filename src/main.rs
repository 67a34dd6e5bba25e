//! The `relaychat` command line: parse arguments, load settings, run until a signal.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
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
    #[arg(long, global = true)]
    port: Option<u16>,
    /// Log format on stderr. Set the level with RELAYCHAT_LOG (e.g. "debug"; participants' IP
    /// addresses appear only at debug level). Default: "info,turn=warn,webrtc_util=warn".
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration and print it (secrets redacted); exit 1 on any problem.
    CheckConfig,
    /// Print a TURN REST username/credential pair, for testing with other TURN clients.
    TurnCredentials {
        /// The chat user the credential names.
        #[arg(long)]
        user: String,
        /// Lifetime in seconds (default: [turn] credential_ttl_s).
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Check the configuration from the server's side (addresses, ports, TLS, clock, a TURN
    /// self-test); one line per check, exit 1 on any FAIL. Run it before opening to people.
    Doctor,
    /// Exit 0 when the server on this configuration's port answers /healthz (container checks).
    Healthcheck,
    /// Operator actions on a running server through its admin API ([admin] listen):
    /// sessions, rooms, kick, ban, mute, broadcast, revoke-turn, rotate-turn-secret.
    Admin(relaychat::admin::client::AdminArgs),
    /// Accounts and admins, in the server's database (works while the server runs).
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// Print an invite link for invite-only mode, or list / revoke invites.
    Invite {
        /// How long the link works: 30m, 24h, 7d, 2w.
        #[arg(long, default_value = "24h", value_parser = relaychat::cli::parse_lifetime)]
        expires: Duration,
        /// How many people (browsers) may come in with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Where the server is reached, e.g. https://chat.example.org (default: https:// and
        /// [turn] public_host).
        #[arg(long)]
        base_url: Option<String>,
        /// Revoke the invite with this id (its link and the member passes it led to).
        #[arg(long, conflicts_with = "list")]
        revoke: Option<String>,
        /// List every invite with its uses.
        #[arg(long)]
        list: bool,
    },
}

#[derive(Subcommand)]
enum UserAction {
    /// Create an account; the password is read from stdin (or typed twice at a prompt).
    Add {
        name: String,
        /// Make the account an admin (/kick, /ban, /unban).
        #[arg(long)]
        admin: bool,
    },
    /// Make an account an admin, or no longer one.
    SetAdmin {
        name: String,
        #[arg(value_enum)]
        state: OnOff,
    },
    /// List accounts and which are admins.
    List,
}

#[derive(Clone, Copy, ValueEnum)]
enum OnOff {
    On,
    Off,
}

fn main() {
    relaychat::memory::return_large_allocations_to_the_os();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let settings = match Settings::load(&Sources { config_file: cli.config.clone(), port: cli.port }) {
        Ok(settings) => settings,
        Err(e) => fail(&e.to_string()),
    };
    let result = match cli.command {
        Some(Command::CheckConfig) => relaychat::cli::check_config(&settings),
        Some(Command::Doctor) => relaychat::cli::doctor(&settings),
        Some(Command::Healthcheck) => relaychat::cli::healthcheck(&settings),
        Some(Command::TurnCredentials { user, ttl }) => {
            relaychat::cli::turn_credentials(&settings, &user, ttl)
        }
        Some(Command::User { action: UserAction::Add { name, admin } }) => {
            relaychat::cli::user_add(&settings, &name, admin)
        }
        Some(Command::User { action: UserAction::SetAdmin { name, state } }) => {
            relaychat::cli::user_set_admin(&settings, &name, matches!(state, OnOff::On))
        }
        Some(Command::User { action: UserAction::List }) => relaychat::cli::user_list(&settings),
        Some(Command::Invite { list: true, .. }) => relaychat::cli::invite_list(&settings),
        Some(Command::Invite { revoke: Some(id), .. }) => relaychat::cli::invite_revoke(&settings, &id),
        Some(Command::Invite { expires, uses, base_url, .. }) => {
            relaychat::cli::invite_create(&settings, expires, uses, base_url.as_deref())
        }
        Some(Command::Admin(args)) => relaychat::admin::client::run(&settings, args),
        None => serve(settings, Sources { config_file: cli.config.clone(), port: cli.port }),
    };
    if let Err(e) = result {
        fail(&format!("{e:#}"));
    }
}

fn fail(message: &str) -> ! {
    eprintln!("relaychat: {message}");
    std::process::exit(1);
}

fn serve(settings: Settings, sources: Sources) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        // Listen for signals before anything is bound: a SIGTERM that arrives right after the
        // "listening" line must still mean a graceful shutdown, and a SIGHUP (the systemd
        // unit's reload) must never take the default action, which is to exit.
        let mut signals = Signals::install()?;
        let running = settings.clone();
        let server = relaychat::server::start(settings).await?;
        while let SignalEvent::Reload = signals.next().await {
            report_config_changes(&sources, &running);
        }
        tracing::info!("shutting down");
        tokio::time::timeout(Duration::from_secs(4), server.shutdown()).await.ok();
        anyhow::Ok(())
    })?;
    // Sessions stuck on a dead peer must not hold the exit hostage.
    runtime.shutdown_timeout(Duration::from_millis(500));
    Ok(())
}

enum SignalEvent {
    Shutdown,
    Reload,
}

/// SIGTERM and SIGINT mean "shut down gracefully"; SIGHUP means "reload".
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) -> SignalEvent {
        tokio::select! {
            _ = self.term.recv() => SignalEvent::Shutdown,
            _ = self.int.recv() => SignalEvent::Shutdown,
            _ = self.hup.recv() => SignalEvent::Reload,
        }
    }
}

/// SIGHUP: the TLS certificate is reloaded by `tls::reload_on_sighup` (when TLS is on); every
/// other setting is fixed for the process's life, so re-read the configuration and say which
/// keys changed and need a restart. Never fatal: a broken file is reported and ignored.
fn report_config_changes(sources: &Sources, running: &Settings) {
    let reread = match Settings::load(sources) {
        Ok(settings) => settings,
        Err(e) => {
            tracing::error!("SIGHUP: the configuration does not load, nothing changed: {e}");
            return;
        }
    };
    let changed = relaychat::config::changed_keys(running, &reread);
    if changed.is_empty() {
        tracing::info!("SIGHUP: configuration re-read, no changes");
    } else {
        tracing::warn!(
            "SIGHUP: configuration keys changed that take effect only after a restart: {}",
            changed.join(", ")
        );
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("RELAYCHAT_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,turn=warn,webrtc_util=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
    }
}
