//! `relaychat-bench quick`: every benchmark for a second or two, as a CI smoke test that the
//! generator and the servers still talk. Starts its own UDP echo; the TURN servers and the chat
//! server are optional (`scripts/bench --quick` starts them). Fails if a part moved no traffic.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::bail;
use serde::Serialize;

use super::alloc_rate::{self, AllocRateArgs, AllocRateReport};
use super::echo::{self, EchoArgs, EchoReport};
use super::signaling::{self, SignalingCli, SignalingReport};
use super::step::{Search, StepConfig};
use super::turn_bench::{self, TurnArgs, TurnReport};

#[derive(clap::Args, Debug)]
pub struct QuickCli {
    /// TURN servers to smoke-test, as LABEL=ADDR (repeatable), e.g. relaychat=127.0.0.1:3478.
    #[arg(long = "turn")]
    pub turn: Vec<String>,
    /// Shared TURN secret.
    #[arg(long, default_value = "benchsecret")]
    pub secret: String,
    /// Chat server WebSocket URL to smoke-test the signaling benchmark against.
    #[arg(long)]
    pub url: Option<String>,
}

#[derive(Serialize)]
pub struct QuickReport {
    pub echo: EchoReport,
    pub turn: Vec<TurnReport>,
    pub alloc_rate: Vec<AllocRateReport>,
    pub signaling: Option<SignalingReport>,
}

fn cfg(label: &str, threads: usize) -> StepConfig {
    StepConfig {
        label: label.to_string(),
        size: 100,
        duration: Duration::from_secs(1),
        drain: Duration::from_millis(300),
        threads,
        max_loss: 0.01,
        server_pid: None,
    }
}

pub async fn run(q: QuickCli, threads: usize) -> anyhow::Result<QuickReport> {
    let echo_sock = super::sockbuf::bind_udp("127.0.0.1:0".parse()?, 1 << 20)?;
    let echo_addr = echo_sock.local_addr()?;
    drop(echo_sock);
    let server = tokio::spawn(echo::serve(echo_addr, 1 << 20));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let echo = echo::run(EchoArgs {
        cfg: cfg("echo", threads),
        server: echo_addr,
        clients: 10,
        rate: 200.0,
        socket_buffer: 1 << 20,
        find_max: None,
    })
    .await?;
    server.abort();
    let mut problems = Vec::new();
    if echo.steps.iter().all(|s| s.counts.received == 0) {
        problems.push("echo: nothing came back".to_string());
    }

    let mut turn = Vec::new();
    let mut alloc = Vec::new();
    for spec in &q.turn {
        let Some((label, addr)) = spec.split_once('=') else { bail!("--turn takes LABEL=ADDR, got {spec}") };
        let addr: SocketAddr = addr.parse()?;
        let t = turn_bench::run(TurnArgs {
            server: addr,
            secret: q.secret.clone(),
            pairs: 5,
            setup_concurrency: 8,
            socket_buffer: 1 << 20,
            rate: 100.0,
            cfg: cfg(label, threads),
            find_max: false,
            search: Search { start: 100.0, max_rate: 100.0, precision: 0.1, max_steps: 1 },
        })
        .await?;
        if t.steps.iter().all(|s| s.counts.received == 0) {
            problems.push(format!("{label}: no ChannelData relayed"));
        }
        turn.push(t);
        let a = alloc_rate::run(AllocRateArgs {
            server: addr,
            secret: q.secret.clone(),
            label: label.to_string(),
            concurrency: 4,
            duration: Duration::from_secs(1),
            server_pid: None,
        })
        .await?;
        if a.allocations == 0 {
            problems.push(format!("{label}: no allocation succeeded ({:?})", a.first_error));
        }
        alloc.push(a);
    }

    let signaling = match &q.url {
        None => None,
        Some(url) => {
            let s = signaling::run(SignalingCli {
                url: url.clone(),
                sessions: 60,
                listeners: 20,
                senders: 2,
                fanout_secs: 1.0,
                offers: 20,
                joins: 3,
                connect_concurrency: 16,
                hold_secs: 0.5,
                server_pid: None,
                label: "relaychat".into(),
                prefix: "q".into(),
            })
            .await?;
            if s.fanout.deliveries == 0 {
                problems.push("signaling: no chat delivered".into());
            }
            if s.offer_answer_rtt.samples == 0 {
                problems.push("signaling: no offer answered".into());
            }
            Some(s)
        }
    };
    if !problems.is_empty() {
        bail!("quick benchmark smoke failed: {}", problems.join("; "));
    }
    Ok(QuickReport { echo, turn, alloc_rate: alloc, signaling })
}
