//! `relaychat-bench`: the load generator behind BENCHMARKS.md.
//!
//! - `turn`: client pairs relaying ChannelData through their own TURN allocations (relaychat or
//!   coturn), at a fixed rate or searching for the highest rate with loss under a threshold.
//! - `turn-alloc-rate`: allocations per second with REST (use-auth-secret) credentials.
//! - `echo` / `udp-echo`: the generator's own ceiling against a trivial UDP echo server.
//! - `signaling`: idle WebSocket sessions, memory per session, chat fan-out, offer/answer latency,
//!   time to `webrtc-joined` against relaychat (or js-chat-server).
//! - `soak`: minutes of churn, relayed calls, floods and slow readers, sampling the server's
//!   memory, descriptors, tasks and allocations for leaks (`scripts/soak`).
//! - `cluster`: relaychat nodes sharing one Redis: cross-node chat latency, fan-out over 1 vs N
//!   nodes, Redis commands and memory per chat message and per user.
//! - `quick`: every part for a second or two, for CI smoke.
//!
//! `scripts/bench` runs the whole comparison and writes bench/results.json and BENCHMARKS.md.
//! One concept per module file in this directory.

mod alloc_rate;
mod cluster;
mod credentials;
mod echo;
mod histogram;
mod load;
mod procfs;
mod quick;
mod redis_stats;
mod signaling;
mod soak;
mod soak_abuse;
mod soak_call;
mod soak_sample;
mod sockbuf;
mod step;
mod turn_bench;
mod turn_client;
mod wire;
mod ws_session;

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(name = "relaychat-bench", about = "Load generator for relaychat vs coturn")]
struct Cli {
    /// Print the machine-readable report as JSON on stdout (progress goes to stderr).
    #[arg(long, global = true)]
    json: bool,
    /// Tokio worker threads for the generator (also the number of sender tasks).
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Relay ChannelData between client pairs through a TURN server.
    Turn(TurnCli),
    /// Allocations per second with REST auth (Allocate 401 -> signed Allocate -> Refresh 0).
    TurnAllocRate(AllocRateCli),
    /// The generator's own ceiling against a UDP echo server.
    Echo(EchoCli),
    /// A trivial UDP echo server for `echo`.
    UdpEcho(UdpEchoCli),
    /// WebSocket signaling: idle sessions, memory, fan-out, offer/answer latency.
    Signaling(signaling::SignalingCli),
    /// Every part for a second or two (CI smoke). Starts its own UDP echo.
    Quick(quick::QuickCli),
    /// Minutes of churn, calls, floods and slow readers, sampling the server for leaks.
    Soak(soak::SoakCli),
    /// Several nodes on one Redis: cross-node latency, 1-vs-N-node fan-out, Redis cost per message.
    Cluster(cluster::ClusterCli),
}

/// Load-step options shared by `turn` and `echo`.
#[derive(Args, Debug, Clone)]
struct StepCli {
    /// Payload bytes per packet (after the 4-byte ChannelData header for TURN).
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Packets per second per client (the starting rate with --find-max; 0 = set up only).
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Seconds each load step lasts.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds to keep receiving after the senders stop.
    #[arg(long, default_value_t = 1.0)]
    drain: f64,
    /// Search for the highest rate with loss <= --max-loss (double, then bisect).
    #[arg(long)]
    find_max: bool,
    /// Loss ratio a step may have and still pass.
    #[arg(long, default_value_t = 0.001)]
    max_loss: f64,
    /// Highest per-client rate the search tries.
    #[arg(long, default_value_t = 100_000.0)]
    max_rate: f64,
    /// Search stops when fail/pass rates are within this fraction.
    #[arg(long, default_value_t = 0.1)]
    precision: f64,
    /// Most steps the search runs.
    #[arg(long, default_value_t = 12)]
    max_steps: usize,
    /// SO_RCVBUF/SO_SNDBUF requested for each client socket, bytes (0 = kernel default).
    #[arg(long, default_value_t = 4 << 20)]
    socket_buffer: usize,
    /// PID of the server, to read its CPU time and RSS from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Name for this server in the output.
    #[arg(long, default_value = "server")]
    label: String,
}

impl StepCli {
    fn config(&self, threads: usize) -> step::StepConfig {
        step::StepConfig {
            label: self.label.clone(),
            size: self.size,
            duration: Duration::from_secs_f64(self.duration),
            drain: Duration::from_secs_f64(self.drain),
            threads,
            max_loss: self.max_loss,
            server_pid: self.server_pid,
        }
    }

    fn search(&self) -> Option<step::Search> {
        self.find_max.then_some(step::Search {
            start: self.rate,
            max_rate: self.max_rate,
            precision: self.precision,
            max_steps: self.max_steps,
        })
    }
}

#[derive(Args, Debug)]
struct TurnCli {
    /// TURN server UDP address.
    #[arg(long, default_value = "127.0.0.1:3478")]
    server: SocketAddr,
    /// Shared secret (coturn static-auth-secret / relaychat [turn] secret).
    #[arg(long)]
    secret: String,
    /// Realm; informational: the server's 401 names the realm the client then uses.
    #[arg(long, default_value = "relaychat")]
    realm: String,
    /// Client pairs (each client holds one allocation).
    #[arg(long, default_value_t = 50)]
    pairs: usize,
    /// Allocations set up concurrently.
    #[arg(long, default_value_t = 32)]
    setup_concurrency: usize,
    #[command(flatten)]
    step: StepCli,
}

#[derive(Args, Debug)]
struct AllocRateCli {
    #[arg(long, default_value = "127.0.0.1:3478")]
    server: SocketAddr,
    #[arg(long)]
    secret: String,
    /// Informational; the server's 401 names the realm.
    #[arg(long, default_value = "relaychat")]
    realm: String,
    /// Clients allocating at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    #[arg(long)]
    server_pid: Option<u32>,
    #[arg(long, default_value = "server")]
    label: String,
}

#[derive(Args, Debug)]
struct EchoCli {
    /// UDP echo server address.
    #[arg(long, default_value = "127.0.0.1:9999")]
    server: SocketAddr,
    /// Client sockets.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    #[command(flatten)]
    step: StepCli,
}

#[derive(Args, Debug)]
struct UdpEchoCli {
    #[arg(long, default_value = "127.0.0.1:9999")]
    listen: SocketAddr,
    /// SO_RCVBUF/SO_SNDBUF for the echo socket, bytes.
    #[arg(long, default_value_t = 8 << 20)]
    socket_buffer: usize,
}

fn emit<T: Serialize>(json: bool, report: &T) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(async_main(cli))
}

async fn async_main(cli: Cli) -> anyhow::Result<()> {
    let threads = cli.threads.max(1);
    match cli.cmd {
        Cmd::Turn(t) => {
            let _ = &t.realm;
            let r = turn_bench::run(turn_bench::TurnArgs {
                server: t.server,
                secret: t.secret,
                setup_concurrency: t.setup_concurrency,
                pairs: t.pairs,
                socket_buffer: t.step.socket_buffer,
                rate: t.step.rate,
                cfg: t.step.config(threads),
                search: t.step.search().unwrap_or(step::Search {
                    start: t.step.rate,
                    max_rate: t.step.rate,
                    precision: 0.1,
                    max_steps: 1,
                }),
                find_max: t.step.find_max,
            })
            .await?;
            emit(cli.json, &r)
        }
        Cmd::TurnAllocRate(a) => {
            let _ = &a.realm;
            let r = alloc_rate::run(alloc_rate::AllocRateArgs {
                server: a.server,
                secret: a.secret,
                label: a.label,
                concurrency: a.concurrency,
                duration: Duration::from_secs_f64(a.duration),
                server_pid: a.server_pid,
            })
            .await?;
            emit(cli.json, &r)
        }
        Cmd::Echo(e) => {
            let r = echo::run(echo::EchoArgs {
                cfg: e.step.config(threads),
                server: e.server,
                clients: e.clients,
                rate: e.step.rate,
                socket_buffer: e.step.socket_buffer,
                find_max: e.step.search(),
            })
            .await?;
            emit(cli.json, &r)
        }
        Cmd::UdpEcho(u) => echo::serve(u.listen, u.socket_buffer).await,
        Cmd::Signaling(s) => {
            let r = signaling::run(s).await?;
            emit(cli.json, &r)
        }
        Cmd::Soak(s) => {
            let r = soak::run(s).await?;
            emit(cli.json, &r)
        }
        Cmd::Cluster(c) => {
            let r = cluster::run(c).await?;
            emit(cli.json, &r)
        }
        Cmd::Quick(q) => {
            let r = quick::run(q, threads).await?;
            emit(cli.json, &r)
        }
    }
}
