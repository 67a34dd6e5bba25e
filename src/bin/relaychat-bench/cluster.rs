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

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde::Serialize;
use serde_json::json;
use tokio::sync::{mpsc, watch};

use super::histogram::{Histogram, LatencySummary};
use super::load::now_ns;
use super::procfs;
use super::redis_stats::{calls_delta, RedisStats, RedisTarget};
use super::signaling::{fan_out, open_many, FanoutReport};
use super::ws_session::{self, Behaviour, Counters, Event, Session};

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

/// CPU seconds of the named processes and of this generator.
struct CpuMark {
    named: Vec<(String, Option<f64>)>,
    generator: Option<f64>,
}

impl CpuMark {
    fn take(pids: &[(String, u32)]) -> CpuMark {
        CpuMark {
            named: pids.iter().map(|(l, p)| (l.clone(), procfs::cpu_seconds(*p))).collect(),
            generator: procfs::cpu_seconds(std::process::id()),
        }
    }

    fn since(&self, before: &CpuMark) -> (BTreeMap<String, f64>, Option<f64>) {
        let named = self
            .named
            .iter()
            .zip(&before.named)
            .filter_map(|((l, a), (_, b))| Some((l.clone(), (*a)? - (*b)?)))
            .collect();
        (named, self.generator.zip(before.generator).map(|(a, b)| a - b))
    }
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

/// The Redis side of a phase: a connection plus the marks taken around it.
struct RedisProbe {
    conn: RedisStats,
}

impl RedisProbe {
    async fn connect(url: &Option<String>) -> anyhow::Result<Option<RedisProbe>> {
        let Some(url) = url else { return Ok(None) };
        let target = RedisTarget::parse(url)?;
        Ok(Some(RedisProbe { conn: RedisStats::connect(&target).await? }))
    }

    /// Background command rate: once nothing is being written to the log any more (the joins
    /// before a phase reach Redis a while after the clients saw their welcome), calls over `secs`,
    /// per second, per command.
    async fn idle_rate(&mut self, secs: f64) -> anyhow::Result<BTreeMap<String, f64>> {
        let t0 = Instant::now();
        let mut last = self.conn.command_calls().await?;
        while t0.elapsed() < QUIET_MAX {
            tokio::time::sleep(QUIET_FOR).await;
            let now = self.conn.command_calls().await?;
            let writes = calls_delta(&last, &now).get("xadd").copied().unwrap_or(0);
            last = now;
            if writes == 0 {
                break;
            }
        }
        let a = last;
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        let b = self.conn.command_calls().await?;
        Ok(calls_delta(&a, &b).into_iter().map(|(k, v)| (k, v as f64 / secs)).collect())
    }

    /// Sizes of the cluster's keys; `user` is a connected user whose name key is measured.
    async fn key_memory(&mut self, ns: &str, user: &str) -> anyhow::Result<KeyMemory> {
        let per = |bytes: u64, n: u64| (n > 0).then(|| bytes as f64 / n as f64);
        let c = &mut self.conn;
        let (history, log, online) = (format!("{ns}:history"), format!("{ns}:log"), format!("{ns}:online"));
        let mut k = KeyMemory {
            history_entries: c.length("XLEN", &history).await?,
            history_bytes: c.key_bytes(&history).await?.unwrap_or(0),
            log_entries: c.length("XLEN", &log).await?,
            log_bytes: c.key_bytes(&log).await?.unwrap_or(0),
            online_users: c.length("HLEN", &online).await?,
            online_bytes: c.key_bytes(&online).await?.unwrap_or(0),
            name_key_bytes: c.key_bytes(&format!("{ns}:name:{user}")).await?,
            ..Default::default()
        };
        k.history_bytes_per_entry = per(k.history_bytes, k.history_entries);
        k.log_bytes_per_entry = per(k.log_bytes, k.log_entries);
        k.online_bytes_per_user = per(k.online_bytes, k.online_users);
        Ok(k)
    }

    async fn mark(&mut self) -> anyhow::Result<(BTreeMap<String, u64>, u64)> {
        Ok((self.conn.command_calls().await?, self.conn.used_memory().await?))
    }
}

fn per_message(
    idle: &BTreeMap<String, f64>,
    before: &(BTreeMap<String, u64>, u64),
    after: &(BTreeMap<String, u64>, u64),
    secs: f64,
    messages: u64,
) -> RedisPerMessage {
    let delta = calls_delta(&before.0, &after.0);
    let calls: u64 = delta.values().sum();
    let background_per_s = idle.values().fold(0.0, |a, b| a + b);
    let background = background_per_s * secs;
    let m = messages.max(1) as f64;
    RedisPerMessage {
        messages,
        calls,
        background_calls: background,
        background_calls_per_s: background_per_s,
        calls_per_message: (calls as f64 - background).max(0.0) / m,
        per_command_per_message: delta
            .iter()
            .map(|(k, v)| {
                let bg = idle.get(k).copied().unwrap_or(0.0) * secs;
                (k.clone(), (*v as f64 - bg).max(0.0) / m)
            })
            .collect(),
        background_per_command_per_s: idle.clone(),
        used_memory_delta_bytes: Some(after.1 as i64 - before.1 as i64),
    }
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

/// What one latency receiver saw.
#[derive(Default)]
struct Received {
    latency: Histogram,
    got: u64,
    out_of_order: u64,
}

/// Collect the latency sender's messages ("lat SEQ SENT_NS") until all `expected` arrived or
/// `until` passes.
async fn collect(
    mut events: mpsc::UnboundedReceiver<Event>,
    sender: String,
    expected: u64,
    mut until: watch::Receiver<Option<tokio::time::Instant>>,
) -> Received {
    let mut r = Received::default();
    let mut last_seq: Option<u64> = None;
    loop {
        let deadline =
            (*until.borrow()).unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        let ev = tokio::select! {
            ev = events.recv() => ev,
            _ = tokio::time::sleep_until(deadline) => break,
            changed = until.changed() => {
                if changed.is_err() {
                    break; // the phase ended without a drain deadline (it failed)
                }
                continue;
            }
        };
        let Some(ev) = ev else { break };
        let Event::Chat { username, text, at } = ev else { continue };
        if username != sender {
            continue;
        }
        let mut parts = text.split(' ');
        let (Some("lat"), Some(seq), Some(sent)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(seq), Ok(sent)) = (seq.parse::<u64>(), sent.parse::<u64>()) else { continue };
        r.latency.record(at.saturating_sub(sent));
        r.got += 1;
        if last_seq.is_some_and(|l| seq <= l) {
            r.out_of_order += 1;
        } else {
            last_seq = Some(seq);
        }
        if r.got >= expected {
            break;
        }
    }
    r
}

async fn latency_phase(
    c: &ClusterCli,
    nodes: &[String],
    pids: &[(String, u32)],
    mut redis: Option<&mut RedisProbe>,
) -> anyhow::Result<LatencyReport> {
    let counters = Arc::new(Counters::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let forward = Behaviour { forward_events: true, auto_answer: false };
    let sender_name = username(&c.prefix, "ls", 0);
    let mut sender = ws_session::open(&nodes[0], &sender_name, forward, counters.clone(), stop_rx.clone())
        .await
        .context("latency sender on node A")?;
    let mut receivers: Vec<(usize, Session)> = Vec::new();
    for (n, url) in nodes.iter().enumerate() {
        for i in 0..c.latency_receivers {
            let name = username(&c.prefix, &format!("l{n}r"), i);
            let s = ws_session::open(url, &name, forward, counters.clone(), stop_rx.clone())
                .await
                .with_context(|| format!("latency receiver on {url}"))?;
            receivers.push((n, s));
        }
    }
    // Let the joins settle everywhere before measuring anything.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = match redis.as_deref_mut() {
        Some(r) => Some(r.idle_rate(c.idle_secs).await?),
        None => None,
    };

    let expected = c.latency_messages as u64;
    let (until_tx, until_rx) = watch::channel(None);
    let mut collectors = Vec::new();
    let echo_events = sender.events.take().ok_or_else(|| anyhow!("sender without events"))?;
    let echo = tokio::spawn(collect(echo_events, sender_name.clone(), expected, until_rx.clone()));
    for (n, s) in receivers.iter_mut() {
        let ev = s.events.take().ok_or_else(|| anyhow!("receiver without events"))?;
        collectors.push((*n, tokio::spawn(collect(ev, sender_name.clone(), expected, until_rx.clone()))));
    }

    let before = match redis.as_deref_mut() {
        Some(r) => Some(r.mark().await?),
        None => None,
    };
    let cpu0 = CpuMark::take(pids);
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / c.latency_rate));
    let mut sent = 0u64;
    while sent < expected {
        tick.tick().await;
        let text = format!("lat {sent} {}", now_ns());
        if !sender.send(&json!({"type": "chat", "token": sender.token, "content": text})) {
            bail!("latency sender's connection closed after {sent} messages");
        }
        sent += 1;
    }
    let _ = until_tx.send(Some(tokio::time::Instant::now() + LATENCY_DRAIN));

    let echo = echo.await.unwrap_or_default();
    let mut per_node: Vec<(Histogram, u64, usize)> = vec![(Histogram::default(), 0, 0); nodes.len()];
    let (mut cross, mut same) = (Histogram::default(), Histogram::default());
    let mut out_of_order = echo.out_of_order;
    for (n, h) in collectors {
        let r = h.await.unwrap_or_default();
        let slot = &mut per_node[n];
        slot.0.merge(&r.latency);
        slot.1 += expected.saturating_sub(r.got);
        slot.2 += 1;
        out_of_order += r.out_of_order;
        if n == 0 {
            same.merge(&r.latency);
        } else {
            cross.merge(&r.latency);
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let (cpu_s, generator_cpu_s) = CpuMark::take(pids).since(&cpu0);
    let redis_report = match (redis, before, idle) {
        (Some(r), Some(b), Some(idle)) => {
            let after = r.mark().await?;
            Some(per_message(&idle, &b, &after, seconds, sent))
        }
        _ => None,
    };
    let _ = stop_tx.send(true);
    tokio::time::sleep(CLOSE_PAUSE).await;
    drop((sender, receivers));
    let missing = per_node.iter().map(|p| p.1).sum::<u64>() + expected.saturating_sub(echo.got);
    Ok(LatencyReport {
        messages_sent: sent,
        rate_per_s: c.latency_rate,
        receivers_per_node: c.latency_receivers,
        sender_echo: echo.latency.summary_us(),
        cross_node: cross.summary_us(),
        same_node: same.summary_us(),
        per_node: nodes
            .iter()
            .zip(per_node)
            .map(|(url, (h, missing, receivers))| NodeLatency {
                url: url.clone(),
                receivers,
                latency: h.summary_us(),
                missing,
            })
            .collect(),
        deliveries_missing: missing,
        deliveries_out_of_order: out_of_order,
        redis: redis_report,
        cpu_s,
        generator_cpu_s,
        seconds,
    })
}

async fn fanout_run(
    c: &ClusterCli,
    nodes: &[String],
    run_no: usize,
    pids: &[(String, u32)],
    mut redis: Option<&mut RedisProbe>,
) -> anyhow::Result<(FanoutRun, Option<KeyMemory>)> {
    let counters = Arc::new(Counters::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let k = nodes.len();
    let mem0 = match redis.as_deref_mut() {
        Some(r) => Some(r.conn.used_memory().await?),
        None => None,
    };
    let t0 = Instant::now();
    let mut per_node = vec![0usize; k];
    let mut senders = Vec::new();
    let forward = Behaviour { forward_events: true, auto_answer: false };
    for i in 0..c.senders {
        let url = &nodes[i % k];
        let name = username(&c.prefix, &format!("f{run_no}s"), i);
        senders.push(ws_session::open(url, &name, forward, counters.clone(), stop_rx.clone()).await?);
        per_node[i % k] += 1;
    }
    let targets: Vec<(String, String)> = (0..c.listeners)
        .map(|i| (nodes[(i + c.senders) % k].clone(), username(&c.prefix, &format!("f{run_no}l"), i)))
        .collect();
    for (url, _) in &targets {
        if let Some(n) = nodes.iter().position(|u| u == url) {
            per_node[n] += 1;
        }
    }
    let (listeners, failed, first) = open_many(targets, c.connect_concurrency, &counters, &stop_rx).await;
    let ramp_s = t0.elapsed().as_secs_f64();
    let sessions = senders.len() + listeners.len();
    // The last joins reach every node, then the quiet window measures the background rate.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mem1 = match redis.as_deref_mut() {
        Some(r) => Some(r.conn.used_memory().await?),
        None => None,
    };
    let idle = match redis.as_deref_mut() {
        Some(r) => Some(r.idle_rate(c.idle_secs).await?),
        None => None,
    };
    let before = match redis.as_deref_mut() {
        Some(r) => Some(r.mark().await?),
        None => None,
    };
    let cpu0 = CpuMark::take(pids);
    let dur = Duration::from_secs_f64(c.fanout_secs);
    let (fanout, senders_back) = fan_out(dur, None, senders, &counters, sessions as u64).await;
    let (cpu_s, _) = CpuMark::take(pids).since(&cpu0);
    let idle_per_session = idle.as_ref().map(|i| i.values().fold(0.0, |a, b| a + b) / sessions.max(1) as f64);
    let mut key_memory = None;
    let redis_report = match (redis, before, idle) {
        (Some(r), Some(b), Some(idle)) => {
            let after = r.mark().await?;
            if let (Some(ns), Some(user)) = (&c.namespace, senders_back.first()) {
                key_memory = Some(r.key_memory(ns, &user.name).await?);
            }
            Some(per_message(&idle, &b, &after, fanout.seconds, fanout.messages_sent))
        }
        _ => None,
    };
    let closed = counters.closed_by_server.load(Ordering::Relaxed);
    if closed > 0 {
        eprintln!(
            "[{}] {closed} sessions closed by the server during the run (last: {:?})",
            c.label,
            counters.last_close_reason.lock().ok().and_then(|g| g.clone())
        );
    }
    let _ = stop_tx.send(true);
    tokio::time::sleep(CLOSE_PAUSE).await;
    drop((listeners, senders_back));
    let per_session = mem0.zip(mem1).map(|(a, b)| (b as f64 - a as f64) / sessions.max(1) as f64);
    let per_message_bytes = redis_report
        .as_ref()
        .and_then(|r| r.used_memory_delta_bytes)
        .filter(|_| fanout.messages_sent > 0)
        .map(|d| d as f64 / fanout.messages_sent as f64);
    let run = FanoutRun {
        nodes: k,
        sessions_per_node: per_node,
        sessions_connected: sessions,
        connect_failed: failed,
        first_connect_error: first,
        ramp_s,
        fanout,
        cpu_s,
        redis: redis_report,
        redis_bytes_per_session: per_session,
        redis_bytes_per_message: per_message_bytes,
        redis_idle_calls_per_s_per_session: idle_per_session,
    };
    Ok((run, key_memory))
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
    fn background_traffic_is_subtracted_per_message() {
        let idle = BTreeMap::from([("xread".to_string(), 10.0)]);
        let before = (BTreeMap::from([("xread".to_string(), 100), ("evalsha".to_string(), 5)]), 1000);
        let after = (BTreeMap::from([("xread".to_string(), 420), ("evalsha".to_string(), 105)]), 21_000);
        // 2 s: 20 background calls; 320 + 100 calls for 100 messages.
        let r = per_message(&idle, &before, &after, 2.0, 100);
        assert_eq!(r.calls, 420);
        assert!((r.calls_per_message - 4.0).abs() < 1e-9, "{}", r.calls_per_message);
        assert_eq!(r.per_command_per_message.get("evalsha"), Some(&1.0));
        assert_eq!(r.per_command_per_message.get("xread"), Some(&3.0), "background subtracted");
        assert_eq!(r.used_memory_delta_bytes, Some(20_000));
    }

    #[test]
    fn pid_specs_parse() {
        assert_eq!(parse_pids(&["node-a=12".into()]).unwrap(), vec![("node-a".to_string(), 12)]);
        assert!(parse_pids(&["12".into()]).is_err());
    }
}
