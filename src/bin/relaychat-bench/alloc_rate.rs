//! `relaychat-bench turn-alloc-rate`: allocations per second with REST auth. Each allocation is a
//! brand-new client (fresh socket, fresh credential): unauthenticated Allocate (401 with
//! REALM+NONCE), signed Allocate, then Refresh with lifetime 0 to free it. `concurrency` workers
//! loop like that for the duration; latency is the whole three-transaction cycle.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::credentials;
use super::histogram::{Histogram, LatencySummary};
use super::procfs;
use super::sockbuf;
use super::turn_client::TurnClient;

/// How long, and how many per worker, freed clients' sockets stay bound.
const QUARANTINE: Duration = Duration::from_secs(2);
const QUARANTINE_MAX: usize = 400;

pub struct AllocRateArgs {
    pub server: SocketAddr,
    pub secret: String,
    pub label: String,
    pub concurrency: usize,
    pub duration: Duration,
    pub server_pid: Option<u32>,
}

#[derive(Clone, Debug, Serialize)]
pub struct AllocRateReport {
    pub label: String,
    pub server: String,
    pub concurrency: usize,
    pub duration_s: f64,
    pub allocations: u64,
    pub failures: u64,
    /// 437 Allocation Mismatch on a fresh socket whose port the kernel reused while the server
    /// still held the old 5-tuple; retried with a new socket, not counted as failures.
    pub port_reuse_mismatches: u64,
    pub first_error: Option<String>,
    pub allocations_per_s: f64,
    pub cycle_latency: LatencySummary,
    pub server_cpu_s: Option<f64>,
}

pub async fn run(a: AllocRateArgs) -> anyhow::Result<AllocRateReport> {
    let local = SocketAddr::new(
        if a.server.ip().is_loopback() { a.server.ip() } else { IpAddr::V4(Ipv4Addr::UNSPECIFIED) },
        0,
    );
    let cpu_before = a.server_pid.and_then(procfs::cpu_seconds);
    let start = Instant::now();
    let mut workers = Vec::new();
    for w in 0..a.concurrency.max(1) {
        let (server, secret, duration) = (a.server, a.secret.clone(), a.duration);
        workers.push(tokio::spawn(async move {
            let mut h = Histogram::default();
            let (mut ok, mut failed, mut first_error) = (0u64, 0u64, None::<String>);
            let mut collisions = 0u64;
            let mut i = 0u64;
            // Closed sockets are kept open for a while: otherwise the kernel hands the same
            // ephemeral port to the next client at once, and a server that still remembers that
            // 5-tuple (coturn keeps a freed session briefly) answers 437 Allocation Mismatch.
            let mut quarantine: VecDeque<(Instant, Arc<tokio::net::UdpSocket>)> = VecDeque::new();
            while start.elapsed() < duration {
                while quarantine.front().is_some_and(|(t, _)| t.elapsed() > QUARANTINE)
                    || quarantine.len() > QUARANTINE_MAX
                {
                    quarantine.pop_front();
                }
                let t = Instant::now();
                let r: anyhow::Result<()> = async {
                    let sock = Arc::new(sockbuf::bind_udp(local, 0)?);
                    quarantine.push_back((Instant::now(), sock.clone()));
                    let cred = credentials::mint(&secret, &format!("ar{w}x{i}"), 3600);
                    let mut c = TurnClient::allocate(sock, server, &cred).await?;
                    c.refresh(0).await
                }
                .await;
                i += 1;
                match r {
                    Ok(()) => {
                        ok += 1;
                        h.record(t.elapsed().as_nanos() as u64);
                    }
                    // The kernel reused a port whose old allocation the server still remembers:
                    // an artifact of churning thousands of clients per second from one host.
                    Err(e) if format!("{e:#}").contains("error 437") => collisions += 1,
                    Err(e) => {
                        failed += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
            (ok, failed, first_error, h, collisions)
        }));
    }
    let mut h = Histogram::default();
    let (mut ok, mut failed, mut first_error, mut collisions) = (0, 0, None, 0);
    for w in workers {
        let (o, f, e, wh, c) = w.await?;
        collisions += c;
        ok += o;
        failed += f;
        if first_error.is_none() {
            first_error = e;
        }
        h.merge(&wh);
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu_after = a.server_pid.and_then(procfs::cpu_seconds);
    let r = AllocRateReport {
        label: a.label,
        server: a.server.to_string(),
        concurrency: a.concurrency,
        duration_s: secs,
        allocations: ok,
        failures: failed,
        port_reuse_mismatches: collisions,
        first_error,
        allocations_per_s: ok as f64 / secs,
        cycle_latency: h.summary_us(),
        server_cpu_s: cpu_before.zip(cpu_after).map(|(b, x)| x - b),
    };
    eprintln!(
        "[{}] {} allocations/s ({} ok, {} failed, {} port-reuse 437s{}) cycle p50 {:.0}us p99 {:.0}us",
        r.label,
        r.allocations_per_s.round(),
        r.allocations,
        r.failures,
        r.port_reuse_mismatches,
        r.first_error.as_deref().map(|e| format!(", first: {e}")).unwrap_or_default(),
        r.cycle_latency.p50_us,
        r.cycle_latency.p99_us
    );
    Ok(r)
}
