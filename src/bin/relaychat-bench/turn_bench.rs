//! `relaychat-bench turn`: N client pairs, each client with its own allocation, relaying
//! ChannelData to its partner's relayed address (client A -> server -> relay A -> relay B ->
//! server -> client B). Sets up once, then runs one or more load steps on the same allocations:
//! a fixed rate, or a search (doubling, then bisection) for the highest rate with loss under a
//! threshold. Server CPU and RSS come from /proc when `--server-pid` is given.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::stream::{self, StreamExt};
use serde::Serialize;
use tokio::sync::watch;

use super::credentials;
use super::load::{self, Flow};
use super::procfs;
use super::sockbuf;
use super::step::{self, Search, StepConfig, StepReport};
use super::turn_client::{keepalive_requests, TurnClient};
use super::wire::Auth;

/// The one channel each client binds to its partner (channel numbers are per allocation).
const CHANNEL: u16 = 0x4000;

#[derive(Clone, Debug)]
pub struct TurnArgs {
    pub server: SocketAddr,
    pub secret: String,
    pub pairs: usize,
    pub setup_concurrency: usize,
    pub socket_buffer: usize,
    /// Fixed rate per client (0 = set up, read memory, tear down).
    pub rate: f64,
    pub cfg: StepConfig,
    pub find_max: bool,
    pub search: Search,
}

#[derive(Clone, Debug, Serialize)]
pub struct TurnReport {
    pub label: String,
    pub server: String,
    pub pairs: usize,
    pub clients: usize,
    pub payload_bytes: usize,
    pub duration_s: f64,
    pub generator_threads: usize,
    pub client_rcvbuf_bytes: usize,
    pub client_sndbuf_bytes: usize,
    pub setup_s: f64,
    pub server_rss_before_kib: Option<u64>,
    pub server_rss_allocated_kib: Option<u64>,
    pub server_rss_per_allocation_kib: Option<f64>,
    pub steps: Vec<StepReport>,
    /// With --find-max: the fastest step that passed.
    pub max_sustained: Option<StepReport>,
    pub keepalive_rounds: u64,
    pub teardown_failures: usize,
}

struct Client {
    turn: TurnClient,
    partner_relayed: SocketAddr,
    stale_nonce: Arc<Mutex<Option<String>>>,
}

/// Allocate 2 * pairs clients and cross-bind them.
async fn set_up(a: &TurnArgs) -> anyhow::Result<Vec<Client>> {
    let n = a.pairs * 2;
    let local = SocketAddr::new(
        if a.server.ip().is_loopback() { a.server.ip() } else { IpAddr::V4(Ipv4Addr::UNSPECIFIED) },
        0,
    );
    let results: Vec<anyhow::Result<TurnClient>> = stream::iter(0..n)
        .map(|i| {
            let secret = a.secret.clone();
            let server = a.server;
            let bytes = a.socket_buffer;
            async move {
                let cred = credentials::mint(&secret, &format!("bench{i}"), 86_400);
                // A fresh ephemeral port can collide with a 5-tuple that an earlier, aborted run
                // still holds an allocation for (the server then refuses); retry on a new socket.
                let mut last = None;
                for _ in 0..3 {
                    let sock = Arc::new(sockbuf::bind_udp(local, bytes)?);
                    match TurnClient::allocate(sock, server, &cred).await {
                        Ok(c) => return Ok(c),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
            }
        })
        .buffered(a.setup_concurrency.max(1))
        .collect()
        .await;
    let mut turns = Vec::with_capacity(n);
    let mut first_error = None;
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(t) => turns.push(t),
            Err(e) if first_error.is_none() => {
                first_error = Some(e.context(format!("allocating client {i} on {}", a.server)))
            }
            Err(_) => {}
        }
    }
    if let Some(e) = first_error {
        // Free what did get allocated so a rerun starts clean.
        for mut t in turns {
            let _ = t.refresh(0).await;
        }
        return Err(e);
    }
    let relayed: Vec<SocketAddr> = turns.iter().map(|t| t.relayed).collect();
    let bound: Vec<anyhow::Result<Client>> = stream::iter(turns.into_iter().enumerate())
        .map(|(i, mut t)| {
            let peer = relayed[i ^ 1];
            async move {
                t.create_permission(peer)
                    .await
                    .with_context(|| format!("CreatePermission for client {i}"))?;
                t.channel_bind(CHANNEL, peer).await.with_context(|| format!("ChannelBind for client {i}"))?;
                Ok(Client { turn: t, partner_relayed: peer, stale_nonce: Arc::new(Mutex::new(None)) })
            }
        })
        .buffered(a.setup_concurrency.max(1))
        .collect()
        .await;
    bound.into_iter().collect()
}

/// Free every allocation (Refresh lifetime 0); returns how many failed.
async fn tear_down(clients: Vec<Client>, concurrency: usize) -> usize {
    stream::iter(clients)
        .map(|mut c| async move { c.turn.refresh(0).await.is_err() })
        .buffer_unordered(concurrency.max(1))
        .filter(|failed| std::future::ready(*failed))
        .count()
        .await
}

/// Resend Refresh/CreatePermission/ChannelBind for every client every `every`, and one second
/// after a keepalive got 438 (stale nonce), until `stop`. Returns rounds sent.
struct KeepAlive {
    sock: Arc<tokio::net::UdpSocket>,
    server: SocketAddr,
    auth: Option<Auth>,
    lifetime: u32,
    peer: SocketAddr,
    stale_nonce: Arc<Mutex<Option<String>>>,
}

async fn keep_alive(clients: Vec<KeepAlive>, every: Duration, mut stop: watch::Receiver<bool>) -> u64 {
    let mut rounds = 0;
    let mut auths: Vec<Option<Auth>> = clients.iter().map(|c| c.auth.clone()).collect();
    let mut next_full = tokio::time::Instant::now() + every;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return rounds,
        }
        let full = tokio::time::Instant::now() >= next_full;
        if full {
            next_full += every;
            rounds += 1;
        }
        for (c, auth) in clients.iter().zip(auths.iter_mut()) {
            let stale = c.stale_nonce.lock().ok().and_then(|mut g| g.take());
            if let (Some(n), Some(a)) = (&stale, auth.as_mut()) {
                a.nonce = n.clone();
            }
            if full || stale.is_some() {
                if let Ok(reqs) = keepalive_requests(auth.as_ref(), c.lifetime, CHANNEL, c.peer) {
                    for r in reqs {
                        let _ = c.sock.try_send_to(&r, c.server);
                    }
                }
            }
        }
    }
}

/// Measure one step on the established allocations, keeping them alive if the step is long.
async fn step(cfg: &StepConfig, clients: &[Client], rate: f64, keepalive_rounds: &AtomicU64) -> StepReport {
    let flows: Vec<Flow> = clients
        .iter()
        .map(|c| Flow {
            sock: c.turn.sock.clone(),
            dest: c.turn.server,
            channel: Some(CHANNEL),
            stale_nonce: Some(c.stale_nonce.clone()),
        })
        .collect();
    let lifetime = clients.iter().map(|c| c.turn.lifetime).min().unwrap_or(600);
    // Permissions last 300 s whatever the allocation lifetime; refresh well before either ends.
    let every = Duration::from_secs((lifetime / 2).clamp(5, 120) as u64);
    let (stop_tx, stop_rx) = watch::channel(false);
    let ka = (cfg.duration + cfg.drain > every).then(|| {
        let spec = clients
            .iter()
            .map(|c| KeepAlive {
                sock: c.turn.sock.clone(),
                server: c.turn.server,
                auth: c.turn.auth.clone(),
                lifetime: c.turn.lifetime,
                peer: c.partner_relayed,
                stale_nonce: c.stale_nonce.clone(),
            })
            .collect();
        tokio::spawn(keep_alive(spec, every, stop_rx))
    });
    let report = step::measure(cfg, &flows, rate).await;
    let _ = stop_tx.send(true);
    if let Some(k) = ka {
        keepalive_rounds.fetch_add(k.await.unwrap_or(0), Ordering::Relaxed);
    }
    report
}

pub async fn run(a: TurnArgs) -> anyhow::Result<TurnReport> {
    if a.cfg.size < load::MIN_PAYLOAD {
        bail!("--size must be at least {} bytes", load::MIN_PAYLOAD);
    }
    let rss_before = a.cfg.server_pid.and_then(procfs::rss_kib);
    let t0 = Instant::now();
    let clients = set_up(&a).await?;
    let setup_s = t0.elapsed().as_secs_f64();
    // Give the server a moment to settle before reading its memory.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_alloc = a.cfg.server_pid.and_then(procfs::rss_kib);
    let (rcvbuf, sndbuf) =
        clients.first().map(|c| sockbuf::granted_buffers(c.turn.sock.as_ref())).unwrap_or((0, 0));
    eprintln!(
        "[{}] {} allocations on {} in {:.2}s (client buffers rcv {} snd {})",
        a.cfg.label,
        clients.len(),
        a.server,
        setup_s,
        rcvbuf,
        sndbuf
    );

    let cfg = &a.cfg;
    let keepalive_rounds = AtomicU64::new(0);
    let (steps, best) = if a.rate <= 0.0 {
        (Vec::new(), None)
    } else if !a.find_max {
        (vec![step(cfg, &clients, a.rate, &keepalive_rounds).await], None)
    } else {
        let (clients, rounds) = (&clients, &keepalive_rounds);
        step::find_max(a.search, |rate| step(cfg, clients, rate, rounds)).await
    };
    let keepalive_rounds = keepalive_rounds.load(Ordering::Relaxed);
    let teardown_failures = tear_down(clients, a.setup_concurrency).await;
    let n = a.pairs * 2;
    Ok(TurnReport {
        label: a.cfg.label.clone(),
        server: a.server.to_string(),
        pairs: a.pairs,
        clients: n,
        payload_bytes: a.cfg.size,
        duration_s: a.cfg.duration.as_secs_f64(),
        generator_threads: a.cfg.threads,
        client_rcvbuf_bytes: rcvbuf,
        client_sndbuf_bytes: sndbuf,
        setup_s,
        server_rss_before_kib: rss_before,
        server_rss_allocated_kib: rss_alloc,
        server_rss_per_allocation_kib: rss_before
            .zip(rss_alloc)
            .map(|(b, x)| (x as f64 - b as f64) / n as f64),
        steps,
        max_sustained: best,
        keepalive_rounds,
        teardown_failures,
    })
}
