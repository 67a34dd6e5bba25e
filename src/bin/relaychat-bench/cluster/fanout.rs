//! Phase 3: chat fan-out with every session on node A, then spread over every node.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::signaling::{fan_out, open_many};
use crate::ws_session::{self, Behaviour, Counters};

use super::probes::per_message;
use super::*;

pub(super) async fn fanout_run(
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
