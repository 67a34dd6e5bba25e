//! `relaychat-bench signaling`: what the chat/signaling face of the server holds and how fast it
//! moves frames. In order:
//!
//! 1. `listeners` sessions connect (plus two WebRTC users and `senders` among the listeners).
//! 2. Chat fan-out for `fanout_secs`: each sender chats in a closed loop (next message once its own
//!    comes back), every session counts chat frames: deliveries/s across all listeners. At the same
//!    time the WebRTC pair joins voice and one sends `offers` offers to the other, which answers
//!    each at once: offer one-way latency and offer->answer round trip, under that load.
//! 3. `joins` fresh connections, one after another: time from TCP connect to `webrtc-joined`.
//! 4. More idle sessions up to `sessions` in all; once the server's CPU settles, its RSS delta over
//!    the baseline divided by the sessions is the memory per session. Then everything closes.
//!
//! Every connect broadcasts "<name> has joined." to everyone already there (PROTOCOL.md section 1),
//! so opening N sessions moves about N^2/2 frames: the ramp time is reported as measured.
//!
//! This module opens the sessions, runs the steps in order and measures memory; `fanout` is the
//! chat half of step 2, `call_setup` its offer/answer half and step 3.

mod call_setup;
mod fanout;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use serde::Serialize;
use tokio::sync::watch;

use super::histogram::LatencySummary;
use super::procfs;
use super::ws_session::{self, Behaviour, Counters, Session};
use call_setup::{join_times, CallPair};
pub use fanout::{fan_out, FanoutReport};

#[derive(clap::Args, Debug, Clone)]
pub struct SignalingCli {
    /// WebSocket URL of the chat server.
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    pub url: String,
    /// Idle sessions to hold in total.
    #[arg(long, default_value_t = 10_000)]
    pub sessions: usize,
    /// Sessions connected during the fan-out and latency phases.
    #[arg(long, default_value_t = 1000)]
    pub listeners: usize,
    /// Listeners that also send chat (closed loop each).
    #[arg(long, default_value_t = 20)]
    pub senders: usize,
    #[arg(long, default_value_t = 5.0)]
    pub fanout_secs: f64,
    /// Offers sent during the fan-out (evenly spaced).
    #[arg(long, default_value_t = 200)]
    pub offers: usize,
    /// Fresh connections timed from connect to webrtc-joined.
    #[arg(long, default_value_t = 50)]
    pub joins: usize,
    /// Connections opened at once during ramps.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Seconds to hold all sessions open before reading memory.
    #[arg(long, default_value_t = 3.0)]
    pub hold_secs: f64,
    /// Server PID, for RSS and CPU from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    #[arg(long, default_value = "relaychat")]
    pub label: String,
    /// Prefix for generated usernames (3-20 of [A-Za-z0-9_-] in all).
    #[arg(long, default_value = "b")]
    pub prefix: String,
}

#[derive(Debug, Serialize, Default)]
pub struct SignalingReport {
    pub label: String,
    pub url: String,
    pub server_rss_baseline_kib: Option<u64>,
    pub listeners: usize,
    pub listeners_connected: usize,
    pub listener_ramp_s: f64,
    pub fanout: FanoutReport,
    pub offer_one_way: LatencySummary,
    pub offer_answer_rtt: LatencySummary,
    pub offers_lost: u64,
    pub connect_to_session_token: LatencySummary,
    pub connect_to_webrtc_joined: LatencySummary,
    pub join_failures: usize,
    pub join_error: Option<String>,
    pub sessions_target: usize,
    pub sessions_connected: usize,
    pub sessions_failed: usize,
    pub first_connect_error: Option<String>,
    pub sessions_ramp_s: f64,
    pub settle_s: f64,
    pub sessions_alive_after_hold: usize,
    pub server_rss_sessions_kib: Option<u64>,
    /// RSS delta over the server's baseline (taken before any session) / sessions held.
    pub server_rss_per_session_kib: Option<f64>,
    pub server_rss_before_ramp_kib: Option<u64>,
    /// RSS growth during the idle ramp / sessions added by it: the marginal cost of a session,
    /// without the heap the fan-out phase grew.
    pub server_rss_per_added_session_kib: Option<f64>,
    pub server_cpu_ramp_s: Option<f64>,
    pub closed_by_server: u64,
    pub last_close_reason: Option<String>,
}

/// Open idle sessions, `(url, name)` each, `concurrency` at a time: the sessions that connected,
/// how many failed, and the first failure. Also used by the cluster benchmark.
pub async fn open_many(
    targets: Vec<(String, String)>,
    concurrency: usize,
    counters: &Arc<Counters>,
    stop: &watch::Receiver<bool>,
) -> (Vec<Session>, usize, Option<String>) {
    let results: Vec<anyhow::Result<Session>> = stream::iter(targets)
        .map(|(url, n)| {
            let (counters, stop) = (counters.clone(), stop.clone());
            async move { ws_session::open(&url, &n, Behaviour::default(), counters, stop).await }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut ok = Vec::new();
    let (mut failed, mut first) = (0, None);
    for r in results {
        match r {
            Ok(s) => ok.push(s),
            Err(e) => {
                failed += 1;
                first.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    (ok, failed, first)
}

/// Wait until the server spends under 5% of a core for a second (or `max` passes).
async fn settle(pid: Option<u32>, max: Duration) -> f64 {
    let t0 = Instant::now();
    let Some(pid) = pid else {
        tokio::time::sleep(Duration::from_secs(1)).await;
        return t0.elapsed().as_secs_f64();
    };
    let mut last = procfs::cpu_seconds(pid).unwrap_or(0.0);
    while t0.elapsed() < max {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = procfs::cpu_seconds(pid).unwrap_or(0.0);
        if now - last < 0.05 {
            break;
        }
        last = now;
    }
    t0.elapsed().as_secs_f64()
}

fn name(prefix: &str, kind: &str, i: usize) -> String {
    format!("{prefix}{kind}{i:05}")
}

pub async fn run(c: SignalingCli) -> anyhow::Result<SignalingReport> {
    let counters = Arc::new(Counters::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let pid = c.server_pid;
    let mut r = SignalingReport {
        label: c.label.clone(),
        url: c.url.clone(),
        listeners: c.listeners,
        sessions_target: c.sessions,
        server_rss_baseline_kib: pid.and_then(procfs::rss_kib),
        ..Default::default()
    };

    // 1. Listeners (senders are the first of them, with event forwarding), and the WebRTC pair.
    let t0 = Instant::now();
    let senders = c.senders.min(c.listeners);
    let mut sender_sessions = Vec::new();
    for i in 0..senders {
        let b = Behaviour { forward_events: true, auto_answer: false };
        sender_sessions.push(
            ws_session::open(&c.url, &name(&c.prefix, "s", i), b, counters.clone(), stop_rx.clone()).await?,
        );
    }
    let names = (senders..c.listeners).map(|i| (c.url.clone(), name(&c.prefix, "", i))).collect();
    let (idle, failed, first) = open_many(names, c.connect_concurrency, &counters, &stop_rx).await;
    r.listeners_connected = idle.len() + sender_sessions.len();
    r.sessions_failed += failed;
    r.first_connect_error = first;
    let pair = CallPair::open(&c, &counters, &stop_rx).await?;
    r.listener_ramp_s = t0.elapsed().as_secs_f64();
    eprintln!("[{}] {} listeners connected in {:.1}s", c.label, r.listeners_connected, r.listener_ramp_s);
    settle(pid, Duration::from_secs(30)).await;

    // 2. Fan-out and offer/answer latency, concurrently.
    let receivers = (r.listeners_connected + 2) as u64;
    let fan = fan_out(Duration::from_secs_f64(c.fanout_secs), pid, sender_sessions, &counters, receivers);
    let rtc = pair.measure(c.offers);
    let ((fanout, senders_back), (one_way, rtt, lost)) = tokio::join!(fan, rtc);
    r.fanout = fanout;
    r.offer_one_way = one_way.summary_us();
    r.offer_answer_rtt = rtt.summary_us();
    r.offers_lost = lost;
    eprintln!(
        "[{}] fan-out: {:.0} deliveries/s ({:.0} msgs/s to {} listeners; server cpu {}, bench cpu {} in {:.1}s), offer one-way p50 {:.0}us p99 {:.0}us, offer->answer p50 {:.0}us p99 {:.0}us",
        c.label,
        r.fanout.deliveries_per_s,
        r.fanout.messages_per_s,
        r.fanout.listeners,
        r.fanout.server_cpu_s.map_or("-".into(), |v| format!("{v:.2}s")),
        r.fanout.generator_cpu_s.map_or("-".into(), |v| format!("{v:.2}s")),
        r.fanout.seconds,
        r.offer_one_way.p50_us,
        r.offer_one_way.p99_us,
        r.offer_answer_rtt.p50_us,
        r.offer_answer_rtt.p99_us
    );
    settle(pid, Duration::from_secs(30)).await;

    // 3. Time to webrtc-joined for fresh connections.
    let (tok, joined, jf, join_error) = join_times(&c, &counters, &stop_rx).await;
    r.join_error = join_error;
    r.connect_to_session_token = tok.summary_us();
    r.connect_to_webrtc_joined = joined.summary_us();
    r.join_failures = jf;
    eprintln!(
        "[{}] connect->webrtc-joined p50 {:.0}us p99 {:.0}us ({} failed)",
        c.label, r.connect_to_webrtc_joined.p50_us, r.connect_to_webrtc_joined.p99_us, jf
    );

    // 4. Ramp to `sessions` idle sessions.
    let have = r.listeners_connected + 2;
    let more = c.sessions.saturating_sub(have);
    let cpu0 = pid.and_then(procfs::cpu_seconds);
    r.server_rss_before_ramp_kib = pid.and_then(procfs::rss_kib);
    let t1 = Instant::now();
    let mut extra = Vec::new();
    let mut i = c.listeners;
    let mut left = more;
    while left > 0 {
        let batch = left.min(1000);
        let names = (i..i + batch).map(|k| (c.url.clone(), name(&c.prefix, "", k))).collect();
        let (s, failed, first) = open_many(names, c.connect_concurrency, &counters, &stop_rx).await;
        extra.extend(s);
        r.sessions_failed += failed;
        if r.first_connect_error.is_none() {
            r.first_connect_error = first;
        }
        i += batch;
        left -= batch;
        eprintln!(
            "[{}] {} sessions open ({:.1}s, {} failed)",
            c.label,
            have + extra.len(),
            t1.elapsed().as_secs_f64(),
            r.sessions_failed
        );
    }
    r.sessions_ramp_s = t1.elapsed().as_secs_f64();
    r.sessions_connected = have + extra.len();
    r.settle_s = settle(pid, Duration::from_secs(120)).await;
    r.server_cpu_ramp_s = cpu0.zip(pid.and_then(procfs::cpu_seconds)).map(|(a, b)| b - a);
    tokio::time::sleep(Duration::from_secs_f64(c.hold_secs)).await;
    let closed = counters.closed_by_server.load(Ordering::Relaxed) as usize;
    r.sessions_alive_after_hold = r.sessions_connected.saturating_sub(closed);
    r.server_rss_sessions_kib = pid.and_then(procfs::rss_kib);
    r.server_rss_per_session_kib = r
        .server_rss_baseline_kib
        .zip(r.server_rss_sessions_kib)
        .map(|(b, x)| (x as f64 - b as f64) / r.sessions_connected.max(1) as f64);
    let added = r.sessions_connected.saturating_sub(have);
    if added > 0 {
        r.server_rss_per_added_session_kib = r
            .server_rss_before_ramp_kib
            .zip(r.server_rss_sessions_kib)
            .map(|(b, x)| (x as f64 - b as f64) / added as f64);
    }
    r.closed_by_server = closed as u64;
    r.last_close_reason = counters.last_close_reason.lock().ok().and_then(|g| g.clone());
    eprintln!(
        "[{}] {} sessions held ({} alive after {:.0}s), ramp {:.1}s + settle {:.1}s, server RSS {} KiB -> {} per session, {} per added session",
        c.label,
        r.sessions_connected,
        r.sessions_alive_after_hold,
        c.hold_secs,
        r.sessions_ramp_s,
        r.settle_s,
        r.server_rss_sessions_kib.map_or("-".into(), |v| v.to_string()),
        r.server_rss_per_session_kib.map_or("-".into(), |v| format!("{v:.1} KiB")),
        r.server_rss_per_added_session_kib.map_or("-".into(), |v| format!("{v:.1} KiB"))
    );

    // Close politely (a close frame each); the handles drop when this returns.
    let _ = stop_tx.send(true);
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop((idle, extra, senders_back));
    Ok(r)
}
