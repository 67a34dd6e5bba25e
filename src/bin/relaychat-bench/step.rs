//! One measured load step (a rate held for a duration, with the server's CPU, memory and the
//! kernel's UDP drop counters read around it) and the search for the highest rate that passes:
//! double until a step fails, then bisect. Shared by the TURN and echo benchmarks.

use std::future::Future;
use std::time::Duration;

use serde::Serialize;

use super::histogram::LatencySummary;
use super::load::{self, Flow, LoadCounts, LoadParams};
use super::procfs::{self, Snapshot, UdpCounters};

#[derive(Clone, Debug)]
pub struct StepConfig {
    pub label: String,
    pub size: usize,
    pub duration: Duration,
    pub drain: Duration,
    pub threads: usize,
    /// A step passes when loss (and send-side drops) stay at or under this ratio.
    pub max_loss: f64,
    pub server_pid: Option<u32>,
}

/// One load step at one rate.
#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    pub rate_per_client: f64,
    pub offered_pps: f64,
    pub delivered_pps: f64,
    pub loss_ratio: f64,
    pub passed: bool,
    /// Why a step failed: "loss", "loss (generator stalled too)", "send-blocked".
    pub failed_on: Option<String>,
    pub counts: LoadCounts,
    pub latency: LatencySummary,
    pub server_cpu_s: Option<f64>,
    pub server_cpu_s_per_million: Option<f64>,
    pub generator_cpu_s: Option<f64>,
    pub server_rss_kib: Option<u64>,
    pub udp: UdpCounters,
    /// Datagrams dropped at the server's own UDP sockets during the step (listener and relay
    /// sockets; `None` without --server-pid).
    pub server_socket_drops: Option<u64>,
}

fn judge(cfg: &StepConfig, c: &LoadCounts) -> (f64, Option<String>) {
    let loss = if c.sent == 0 { 1.0 } else { c.sent.saturating_sub(c.received) as f64 / c.sent as f64 };
    let blocked = (c.send_blocked + c.send_errors) as f64 / c.offered.max(1) as f64;
    let starved = c.sender_max_gap_ms > 100.0 || c.send_elapsed_s > cfg.duration.as_secs_f64() * 1.05 + 0.1;
    // A stalled generator (other work on the box) sends a burst when it wakes; that only fails
    // the step if packets were actually lost, and the report says the generator stalled too.
    let failed = if blocked > cfg.max_loss {
        Some("send-blocked")
    } else if loss > cfg.max_loss && starved {
        Some("loss (generator stalled too)")
    } else if loss > cfg.max_loss {
        Some("loss")
    } else {
        None
    };
    (loss, failed.map(str::to_string))
}

/// Run `flows` at `rate` per flow and report.
pub async fn measure(cfg: &StepConfig, flows: &[Flow], rate: f64) -> StepReport {
    let me = std::process::id();
    let gen_before = procfs::cpu_seconds(me);
    let before = Snapshot::take(cfg.server_pid);
    let out = load::run(
        flows,
        LoadParams {
            rate_per_flow: rate,
            size: cfg.size,
            duration: cfg.duration,
            drain: cfg.drain,
            sender_tasks: cfg.threads,
        },
    )
    .await;
    let after = Snapshot::take(cfg.server_pid);
    let gen_after = procfs::cpu_seconds(me);
    let c = out.counts;
    let (loss, failed_on) = judge(cfg, &c);
    let secs = cfg.duration.as_secs_f64();
    let server_cpu_s = before.cpu_s.zip(after.cpu_s).map(|(b, x)| x - b);
    let report = StepReport {
        rate_per_client: rate,
        offered_pps: c.offered as f64 / secs,
        delivered_pps: c.received as f64 / secs,
        loss_ratio: loss,
        passed: failed_on.is_none(),
        failed_on,
        latency: out.latency.summary_us(),
        server_cpu_s,
        server_cpu_s_per_million: server_cpu_s
            .filter(|_| c.received > 0)
            .map(|s| s / (c.received as f64 / 1e6)),
        generator_cpu_s: gen_before.zip(gen_after).map(|(b, x)| x - b),
        server_rss_kib: after.rss_kib,
        udp: after.udp.since(&before.udp),
        server_socket_drops: before
            .server_socket_drops
            .zip(after.server_socket_drops)
            .map(|(b, a)| a.saturating_sub(b)),
        counts: c,
    };
    print_step(&cfg.label, &report);
    report
}

fn print_step(label: &str, s: &StepReport) {
    eprintln!(
        "[{label}] rate {:>8.1}/flow  offered {:>9.0} pps  delivered {:>9.0} pps  loss {:>7.4}%  \
         p50 {:>8.1}us p99 {:>8.1}us max {:>9.1}us  srv cpu {}  gen cpu {}  RcvbufErrors {}  {}",
        s.rate_per_client,
        s.offered_pps,
        s.delivered_pps,
        s.loss_ratio * 100.0,
        s.latency.p50_us,
        s.latency.p99_us,
        s.latency.max_us,
        s.server_cpu_s.map_or("-".into(), |c| format!("{c:.2}s")),
        s.generator_cpu_s.map_or("-".into(), |c| format!("{c:.2}s")),
        s.udp.rcvbuf_errors,
        match &s.failed_on {
            None => "PASS".to_string(),
            Some(w) => format!("FAIL ({w})"),
        }
    );
}

/// Search parameters for the highest passing rate.
#[derive(Clone, Copy, Debug)]
pub struct Search {
    pub start: f64,
    pub max_rate: f64,
    /// Stop when the failing rate is within this fraction above the passing one.
    pub precision: f64,
    pub max_steps: usize,
}

/// Double from `s.start` until a step fails (or `max_rate` passes), then bisect.
/// Returns every step and the fastest that passed.
pub async fn find_max<F, Fut>(s: Search, mut run_step: F) -> (Vec<StepReport>, Option<StepReport>)
where
    F: FnMut(f64) -> Fut,
    Fut: Future<Output = StepReport>,
{
    let mut steps = Vec::new();
    let mut best: Option<StepReport> = None;
    let (mut lo, mut hi): (f64, Option<f64>) = (0.0, None);
    let mut rate = s.start;
    for _ in 0..s.max_steps.max(1) {
        let r = run_step(rate).await;
        let passed = r.passed;
        if passed {
            lo = rate;
            best = Some(r.clone());
        } else {
            hi = Some(rate);
        }
        steps.push(r);
        let converged = match hi {
            None => passed && lo >= s.max_rate,
            Some(h) => (lo > 0.0 && h / lo <= 1.0 + s.precision) || (lo == 0.0 && h < 1.0),
        };
        if converged {
            break;
        }
        rate = match hi {
            None => (rate * 2.0).min(s.max_rate),
            Some(h) if lo == 0.0 => h / 2.0,
            Some(h) => (lo + h) / 2.0,
        };
        // Let the server's queues empty between steps (the next step also discards what is
        // still arriving before it starts).
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    (steps, best)
}
