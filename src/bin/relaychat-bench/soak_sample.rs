//! One soak sample of the server: what the kernel says about the process (RSS, open file
//! descriptors, threads, CPU) and what the server says about itself on `/metrics` (connections,
//! users, voice, live tasks, heap bytes in use, TURN allocations, slow readers dropped).
//! Reading `/metrics` is a plain HTTP/1.0 GET: no client library for one request every 10 s.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, Context};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::procfs;

/// The `/metrics` gauges and counters a soak watches, by their exposition names.
const WATCHED: [&str; 9] = [
    "relaychat_connections",
    "relaychat_hub_queue_depth",
    "relaychat_users",
    "relaychat_voice_participants",
    "relaychat_runtime_tasks",
    "relaychat_heap_in_use_bytes",
    "relaychat_turn_allocations_active",
    "relaychat_outbound_queue_drops_total",
    "relaychat_messages_in_total",
];

#[derive(Clone, Debug, Default, Serialize)]
pub struct ServerSample {
    pub rss_kib: u64,
    pub open_fds: u64,
    pub threads: u64,
    pub cpu_s: f64,
    /// The watched `/metrics` values (absent if the scrape failed).
    pub metrics: HashMap<String, f64>,
}

/// Count the entries of /proc/PID/fd and read the thread count from /proc/PID/status.
fn fds_and_threads(pid: u32) -> (u64, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0);
    let threads = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Threads:"))?.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    (fds, threads)
}

/// GET http://ADDR/metrics and keep the watched values.
pub async fn scrape(addr: SocketAddr) -> anyhow::Result<HashMap<String, f64>> {
    let fetch = async {
        let mut stream = TcpStream::connect(addr).await.with_context(|| format!("connecting {addr}"))?;
        let request = format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut body = String::new();
        stream.read_to_string(&mut body).await?;
        Ok::<_, anyhow::Error>(body)
    };
    let text = tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .map_err(|_| anyhow!("/metrics: 5 s timeout"))??;
    Ok(parse_metrics(&text))
}

/// `name value` lines of the exposition format; labelled series are summed per name.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let name = series.split('{').next().unwrap_or(series);
        if let (true, Ok(v)) = (WATCHED.contains(&name), value.trim().parse::<f64>()) {
            *out.entry(name.to_string()).or_insert(0.0) += v;
        }
    }
    out
}

/// Everything about the server at this moment; a failed scrape leaves `metrics` empty.
pub async fn take(pid: u32, metrics_addr: SocketAddr) -> ServerSample {
    let (open_fds, threads) = fds_and_threads(pid);
    ServerSample {
        rss_kib: procfs::rss_kib(pid).unwrap_or(0),
        open_fds,
        threads,
        cpu_s: procfs::cpu_seconds(pid).unwrap_or(0.0),
        metrics: scrape(metrics_addr).await.unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watched_series_are_read_and_labels_summed() {
        let text = "# HELP relaychat_users Users.\n# TYPE relaychat_users gauge\nrelaychat_users 12\n\
                    relaychat_turn_allocations_active 3\nrelaychat_other 5\n\
                    relaychat_outbound_queue_drops_total{reason=\"a\"} 2\n\
                    relaychat_outbound_queue_drops_total{reason=\"b\"} 1\n";
        let m = parse_metrics(text);
        assert_eq!(m.get("relaychat_users"), Some(&12.0));
        assert_eq!(m.get("relaychat_turn_allocations_active"), Some(&3.0));
        assert_eq!(m.get("relaychat_outbound_queue_drops_total"), Some(&3.0));
        assert!(!m.contains_key("relaychat_other"));
    }
}
