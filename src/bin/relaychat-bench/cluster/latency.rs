//! Phase 1: cross-node delivery latency (an open-loop sender on node A, receivers on every
//! node, each checking the sender's order).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::histogram::Histogram;
use crate::load::now_ns;
use crate::ws_session::{self, Behaviour, Counters, Event, Session};

use super::probes::per_message;
use super::*;

/// What one latency receiver saw.
#[derive(Default)]
pub(super) struct Received {
    latency: Histogram,
    got: u64,
    out_of_order: u64,
}

/// Collect the latency sender's messages ("lat SEQ SENT_NS") until all `expected` arrived or
/// `until` passes.
pub(super) async fn collect(
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

pub(super) async fn latency_phase(
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
