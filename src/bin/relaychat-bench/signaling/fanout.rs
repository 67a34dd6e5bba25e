//! Step 2 of `relaychat-bench signaling`, the chat half: every sender chats in a closed loop
//! (its next message once its own comes back) for `fanout_secs`, and every session counts the
//! chat frames it gets, so deliveries/s is what the server fans out to all listeners.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use crate::histogram::{Histogram, LatencySummary};
use crate::load::now_ns;
use crate::procfs;
use crate::ws_session::{Counters, Event, Session};

#[derive(Debug, Serialize, Default)]
pub struct FanoutReport {
    pub senders: usize,
    pub listeners: usize,
    pub messages_sent: u64,
    pub deliveries: u64,
    pub expected_deliveries: u64,
    pub deliveries_per_s: f64,
    pub messages_per_s: f64,
    /// Sender's own copy coming back: send -> broadcast reaches the sender.
    pub sender_echo: LatencySummary,
    pub rate_limited: u64,
    pub server_cpu_s: Option<f64>,
    /// CPU the benchmark process itself used meanwhile (all its sessions read every frame).
    pub generator_cpu_s: Option<f64>,
    pub seconds: f64,
}

/// Closed-loop chat from every sender for `dur`; deliveries counted by every session sharing
/// `counters` (`receivers` of them, senders included). Also used by the cluster benchmark.
pub async fn fan_out(
    dur: Duration,
    server_pid: Option<u32>,
    senders: Vec<Session>,
    counters: &Arc<Counters>,
    receivers: u64,
) -> (FanoutReport, Vec<Session>) {
    let cpu0 = server_pid.and_then(procfs::cpu_seconds);
    let gen0 = procfs::cpu_seconds(std::process::id());
    let rl0 = counters.rate_limited.load(Ordering::Relaxed);
    let before = counters.chat_frames.load(Ordering::Relaxed);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for mut s in senders {
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::default();
            let mut sent = 0u64;
            let mut events = s.events.take();
            while start.elapsed() < dur {
                let text = format!("fanout {} {sent}", s.name);
                let t = now_ns();
                if !s.send(&json!({"type": "chat", "token": s.token, "content": text})) {
                    break;
                }
                sent += 1;
                // Wait for our own copy (bounded, so a rate-limited sender does not stall forever).
                let Some(ev) = events.as_mut() else { break };
                let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
                loop {
                    match tokio::time::timeout_at(deadline, ev.recv()).await {
                        Ok(Some(Event::Chat { username, text: got, at }))
                            if username == s.name && got == text =>
                        {
                            h.record(at.saturating_sub(t));
                            break;
                        }
                        Ok(Some(_)) => continue,
                        _ => break,
                    }
                }
            }
            s.events = events;
            (sent, h, s)
        }));
    }
    let mut h = Histogram::default();
    let mut sent = 0;
    let mut back = Vec::new();
    for t in tasks {
        if let Ok((n, sh, s)) = t.await {
            sent += n;
            h.merge(&sh);
            back.push(s);
        }
    }
    // Wait for the tail of the broadcasts to land (or stop growing).
    let expected = sent * receivers;
    let mut last = counters.chat_frames.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    let mut last_growth_at = start.elapsed();
    while last - before < expected && last_change.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = counters.chat_frames.load(Ordering::Relaxed);
        if now != last {
            last = now;
            last_change = Instant::now();
            last_growth_at = start.elapsed();
        }
    }
    let deliveries = last - before;
    let secs = last_growth_at.max(dur).as_secs_f64();
    let cpu1 = server_pid.and_then(procfs::cpu_seconds);
    let gen1 = procfs::cpu_seconds(std::process::id());
    (
        FanoutReport {
            senders: back.len(),
            listeners: receivers as usize,
            messages_sent: sent,
            deliveries,
            expected_deliveries: expected,
            deliveries_per_s: deliveries as f64 / secs,
            messages_per_s: sent as f64 / secs,
            sender_echo: h.summary_us(),
            rate_limited: counters.rate_limited.load(Ordering::Relaxed) - rl0,
            server_cpu_s: cpu0.zip(cpu1).map(|(a, b)| b - a),
            generator_cpu_s: gen0.zip(gen1).map(|(a, b)| b - a),
            seconds: secs,
        },
        back,
    )
}
