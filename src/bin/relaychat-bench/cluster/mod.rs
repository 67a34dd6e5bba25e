//! `relaychat-bench cluster`: what running relaychat as several nodes on one Redis costs and
//! gives, measured from the outside (WebSocket clients and read-only Redis statistics). In order:
//!
//! 1. **Cross-node latency.** One sender on node A (the first `--url`) sends chat at a steady
//!    rate (open loop), each text carrying its send time on this process's monotonic clock;
//!    receivers on every node record arrival - send. Receivers on the other nodes give the
//!    cross-node latency, those on A the same-node latency, the sender's own copy the echo (in
//!    cluster mode a node delivers even its own users' chat only after reading it back from the
//!    shared log). Each receiver also checks that the sender's messages arrive in send order.
//! 2. **Redis operations per chat message.** `INFO commandstats` around phase 1, minus the
//!    background rate (heartbeats, blocked stream reads) measured over a quiet window just
//!    before it, divided by the messages sent.
//! 3. **Fan-out, 1 node vs all nodes.** The same load (closed-loop senders and listeners, the
//!    signaling benchmark's fan-out) with every session on node A, then with the sessions spread
//!    round robin over every node: chat deliveries per second, and the CPU each process used.
//!    Redis memory growth per connected user and per chat message is read around these runs.
//!
//! Given one URL (or the same URL three times) it runs against a single node: phase 3 then has
//! only the 1-node run, and "cross-node" numbers are same-node ones (the report says so).
//!
//! Children: `latency` (phase 1), `fanout` (phase 3), `probes` (CPU and Redis marks around a
//! phase, phase 2's arithmetic).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde::Serialize;

use super::histogram::LatencySummary;
use super::signaling::FanoutReport;

mod fanout;
mod latency;
mod probes;

use fanout::fanout_run;
use latency::latency_phase;
use probes::{CpuMark, RedisProbe};

/// How long receivers keep waiting for the last latency messages after the sender stops.
const LATENCY_DRAIN: Duration = Duration::from_secs(5);
/// Pause after closing a run's sessions, so their leaves have propagated before the next phase.
const CLOSE_PAUSE: Duration = Duration::from_secs(1);
/// The cluster counts as quiet once no `XADD` ran for this long (joins and leaves all written).
const QUIET_FOR: Duration = Duration::from_millis(500);
/// Longest wait for quiet before measuring the background rate anyway.
const QUIET_MAX: Duration = Duration::from_secs(60);

#[derive(clap::Args, Debug, Clone)]
pub struct ClusterCli {
    /// WebSocket URL of a node (repeat for each node, e.g. 3). The first is node A.
    #[arg(long = "url", required = true)]
    pub urls: Vec<String>,
    /// The cluster's Redis, redis://[[user]:password@]host:port/db, for INFO commandstats/memory.
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Chat messages the latency sender sends.
    #[arg(long, default_value_t = 500)]
    pub latency_messages: usize,
    /// Messages per second the latency sender sends (evenly spaced, not waiting for echoes).
    #[arg(long, default_value_t = 50.0)]
    pub latency_rate: f64,
    /// Latency receivers on each node.
    #[arg(long, default_value_t = 2)]
    pub latency_receivers: usize,
    /// Listening sessions in each fan-out run (senders come on top).
    #[arg(long, default_value_t = 300)]
    pub listeners: usize,
    /// Closed-loop chat senders in each fan-out run.
    #[arg(long, default_value_t = 12)]
    pub senders: usize,
    /// Seconds each fan-out run lasts.
    #[arg(long, default_value_t = 5.0)]
    pub fanout_secs: f64,
    /// Seconds of quiet before each measured phase, for the background Redis command rate.
    #[arg(long, default_value_t = 2.0)]
    pub idle_secs: f64,
    /// The cluster's `[cluster] namespace`: with it, the size of its keys in Redis is reported
    /// (bytes per history entry, log entry, online user, name claim).
    #[arg(long)]
    pub namespace: Option<String>,
    /// A process to read CPU time from during each phase, as LABEL=PID (repeat: nodes, redis).
    #[arg(long = "pid")]
    pub pids: Vec<String>,
    /// Connections opened at once during ramps.
    #[arg(long, default_value_t = 32)]
    pub connect_concurrency: usize,
    /// Prefix for generated usernames (3-20 of [A-Za-z0-9_-] in all).
    #[arg(long, default_value = "k")]
    pub prefix: String,
    #[arg(long, default_value = "cluster")]
    pub label: String,
}

#[derive(Debug, Serialize)]
pub struct ClusterReport {
    pub label: String,
    pub urls: Vec<String>,
    /// Distinct node URLs; 1 means every number below is single-node.
    pub nodes: usize,
    pub latency: LatencyReport,
    pub fanout: Vec<FanoutRun>,
    /// Size of the cluster's keys at the end of the last fan-out run (with --namespace).
    pub key_memory: Option<KeyMemory>,
}

/// What the cluster's data takes in Redis, from `MEMORY USAGE` (all elements counted).
#[derive(Debug, Serialize, Default)]
pub struct KeyMemory {
    pub history_entries: u64,
    pub history_bytes: u64,
    pub history_bytes_per_entry: Option<f64>,
    pub log_entries: u64,
    pub log_bytes: u64,
    pub log_bytes_per_entry: Option<f64>,
    /// Users listed in `{ns}:online`.
    pub online_users: u64,
    pub online_bytes: u64,
    pub online_bytes_per_user: Option<f64>,
    /// One `{ns}:name:{name}` claim key.
    pub name_key_bytes: Option<u64>,
}

#[derive(Debug, Serialize, Default)]
pub struct LatencyReport {
    pub messages_sent: u64,
    pub rate_per_s: f64,
    pub receivers_per_node: usize,
    /// Send -> the sender's own copy back from node A.
    pub sender_echo: LatencySummary,
    /// Send on A -> arrival at receivers on the other nodes (empty with one node).
    pub cross_node: LatencySummary,
    /// Send on A -> arrival at the other receivers on A.
    pub same_node: LatencySummary,
    pub per_node: Vec<NodeLatency>,
    /// Deliveries that never arrived (messages x receivers - received).
    pub deliveries_missing: u64,
    /// Deliveries that arrived after a later message from the same sender.
    pub deliveries_out_of_order: u64,
    pub redis: Option<RedisPerMessage>,
    pub cpu_s: BTreeMap<String, f64>,
    pub generator_cpu_s: Option<f64>,
    pub seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct NodeLatency {
    pub url: String,
    pub receivers: usize,
    pub latency: LatencySummary,
    pub missing: u64,
}

/// Redis commands the cluster ran per chat message over one phase.
#[derive(Debug, Serialize, Default)]
pub struct RedisPerMessage {
    pub messages: u64,
    /// Every command counted by `INFO commandstats` during the phase (commands a Lua script runs
    /// count under their own names as well as the script call).
    pub calls: u64,
    /// What the background rate measured just before accounts for over the phase's length.
    pub background_calls: f64,
    pub background_calls_per_s: f64,
    /// (calls - background) / messages.
    pub calls_per_message: f64,
    /// Per command, (calls - background) / messages.
    pub per_command_per_message: BTreeMap<String, f64>,
    /// Per command, calls per second while idle.
    pub background_per_command_per_s: BTreeMap<String, f64>,
    pub used_memory_delta_bytes: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct FanoutRun {
    /// Nodes the sessions were spread over.
    pub nodes: usize,
    /// Sessions placed on each node (connect failures are counted in `connect_failed`).
    pub sessions_per_node: Vec<usize>,
    pub sessions_connected: usize,
    pub connect_failed: usize,
    pub first_connect_error: Option<String>,
    pub ramp_s: f64,
    pub fanout: FanoutReport,
    pub cpu_s: BTreeMap<String, f64>,
    pub redis: Option<RedisPerMessage>,
    /// Redis `used_memory` growth while the run's sessions connected / sessions (a name key, the
    /// presence entry and the join entry in the log, each).
    pub redis_bytes_per_session: Option<f64>,
    /// Redis `used_memory` growth over the fan-out / chat messages (the history and log entries).
    pub redis_bytes_per_message: Option<f64>,
    /// Redis commands per second per connected session while nobody chats (heartbeat renewals).
    pub redis_idle_calls_per_s_per_session: Option<f64>,
}

fn parse_pids(specs: &[String]) -> anyhow::Result<Vec<(String, u32)>> {
    specs
        .iter()
        .map(|s| {
            let (l, p) = s.split_once('=').ok_or_else(|| anyhow!("--pid takes LABEL=PID, got {s}"))?;
            Ok((l.to_string(), p.parse().with_context(|| format!("--pid {s}"))?))
        })
        .collect()
}

/// The distinct URLs in the order given.
fn distinct(urls: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for u in urls {
        let u = u.trim_end_matches('/').to_string();
        if !out.contains(&u) {
            out.push(u);
        }
    }
    out
}

/// A username: prefix, phase tag, index; at most 20 characters.
fn username(prefix: &str, tag: &str, i: usize) -> String {
    format!("{prefix}{tag}{i:04}")
}

pub async fn run(c: ClusterCli) -> anyhow::Result<ClusterReport> {
    let nodes = distinct(&c.urls);
    if nodes.is_empty() {
        bail!("give at least one --url");
    }
    if c.latency_rate <= 0.0 || c.latency_messages == 0 {
        bail!("--latency-rate and --latency-messages must be positive");
    }
    let pids = parse_pids(&c.pids)?;
    let mut redis = RedisProbe::connect(&c.redis_url).await?;
    if nodes.len() == 1 {
        eprintln!("[{}] one distinct node URL: every number is single-node", c.label);
    }

    let latency = latency_phase(&c, &nodes, &pids, redis.as_mut()).await?;
    eprintln!(
        "[{}] latency over {} msgs at {}/s: cross-node p50 {:.2} ms p99 {:.2} ms, same-node p50 {:.2} ms, \
         echo p50 {:.2} ms p99 {:.2} ms; {} missing, {} out of order; redis {} cmds/msg",
        c.label,
        latency.messages_sent,
        c.latency_rate,
        latency.cross_node.p50_us / 1e3,
        latency.cross_node.p99_us / 1e3,
        latency.same_node.p50_us / 1e3,
        latency.sender_echo.p50_us / 1e3,
        latency.sender_echo.p99_us / 1e3,
        latency.deliveries_missing,
        latency.deliveries_out_of_order,
        latency.redis.as_ref().map_or("-".into(), |r| format!("{:.2}", r.calls_per_message)),
    );

    let mut fanout = Vec::new();
    let mut key_memory = None;
    let mut spreads = vec![1];
    if nodes.len() > 1 {
        spreads.push(nodes.len());
    }
    for (run_no, k) in spreads.into_iter().enumerate() {
        let (r, keys) = fanout_run(&c, &nodes[..k], run_no, &pids, redis.as_mut()).await?;
        key_memory = keys.or(key_memory);
        eprintln!(
            "[{}] fan-out over {} node(s): {:.0} deliveries/s ({:.0} msgs/s to {} sessions), cpu {:?}, \
             redis {} cmds/msg, {} B/session, {} B/msg",
            c.label,
            k,
            r.fanout.deliveries_per_s,
            r.fanout.messages_per_s,
            r.fanout.listeners,
            r.cpu_s,
            r.redis.as_ref().map_or("-".into(), |x| format!("{:.2}", x.calls_per_message)),
            r.redis_bytes_per_session.map_or("-".into(), |v| format!("{v:.0}")),
            r.redis_bytes_per_message.map_or("-".into(), |v| format!("{v:.0}")),
        );
        fanout.push(r);
    }
    if let Some(k) = &key_memory {
        eprintln!(
            "[{}] Redis keys: history {} B/entry, log {} B/entry, online {} B/user, name key {} B",
            c.label,
            k.history_bytes_per_entry.map_or("-".into(), |v| format!("{v:.0}")),
            k.log_bytes_per_entry.map_or("-".into(), |v| format!("{v:.0}")),
            k.online_bytes_per_user.map_or("-".into(), |v| format!("{v:.0}")),
            k.name_key_bytes.map_or("-".into(), |v| v.to_string()),
        );
    }
    Ok(ClusterReport { label: c.label, urls: c.urls, nodes: nodes.len(), latency, fanout, key_memory })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_urls_are_one_node() {
        let u = |s: &str| s.to_string();
        assert_eq!(
            distinct(&[u("ws://a:1"), u("ws://a:1/"), u("ws://b:2")]),
            vec![u("ws://a:1"), u("ws://b:2")]
        );
    }

    #[test]
    fn usernames_fit_the_servers_rule() {
        let n = username("k", "f1l", 9999);
        assert!(n.len() <= 20 && n.len() >= 3, "{n}");
        assert!(n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
    }

    #[test]
    fn pid_specs_parse() {
        assert_eq!(parse_pids(&["node-a=12".into()]).unwrap(), vec![("node-a".to_string(), 12)]);
        assert!(parse_pids(&["12".into()]).is_err());
    }
}
