//! `soak`: minutes of mixed, hostile load against one relaychat, sampled every few seconds, to
//! show that nothing leaks: after the load stops, every curve (RSS, heap in use, open fds,
//! threads, runtime tasks, connections, TURN allocations) returns to its baseline.
//!
//! Phases: `baseline` (idle server) → `load` (idle sessions held, connect/disconnect churn,
//! calls that join, relay media and leave over and over, chatters, flooders, slow readers) →
//! `cooldown` (every client gone). `scripts/soak` starts the server, runs this, and renders the
//! samples into BENCHMARKS.md with a plot.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::{stream, StreamExt};
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use super::soak_abuse::{self, AbuseCounters};
use super::soak_call::{self, CallCounters, CallShape};
use super::soak_sample::{self, ServerSample};
use super::ws_session::{self, Behaviour, Counters, Session};

#[derive(Args, Debug)]
pub struct SoakCli {
    /// relaychat's HTTP address (WebSocket and /metrics).
    #[arg(long)]
    http: SocketAddr,
    /// PID of the server, for /proc readings.
    #[arg(long)]
    server_pid: u32,
    /// Seconds of idle-server samples before the load.
    #[arg(long, default_value_t = 30)]
    baseline_s: u64,
    /// Seconds of load.
    #[arg(long, default_value_t = 600)]
    load_s: u64,
    /// Seconds of a second, identical round of load after the first cooldown (0: none).
    #[arg(long, default_value_t = 180)]
    second_load_s: u64,
    /// Seconds of samples after every client has gone (after each round).
    #[arg(long, default_value_t = 120)]
    cooldown_s: u64,
    #[arg(long, default_value_t = 10)]
    sample_every_s: u64,
    /// Sessions held open for the whole load phase.
    #[arg(long, default_value_t = 2000)]
    sessions: usize,
    /// Short-lived sessions opened (and as many closed) per second.
    #[arg(long, default_value_t = 50)]
    churn_per_s: u32,
    /// Concurrent call groups, and members per group (all in the server's one voice room).
    #[arg(long, default_value_t = 20)]
    calls: usize,
    #[arg(long, default_value_t = 4)]
    call_members: usize,
    /// ChannelData packets per second from each member to each other member, and their size.
    #[arg(long, default_value_t = 25.0)]
    call_packets_per_s: f64,
    #[arg(long, default_value_t = 100)]
    call_payload: usize,
    /// Seconds a group stays in voice before leaving and joining again.
    #[arg(long, default_value_t = 60)]
    call_hold_s: u64,
    /// Sessions that each send a chat message every `chat_every_s` (fanned out to everybody).
    #[arg(long, default_value_t = 10)]
    chatters: usize,
    #[arg(long, default_value_t = 5)]
    chat_every_s: u64,
    #[arg(long, default_value_t = 200)]
    chat_size: usize,
    #[arg(long, default_value_t = 5)]
    flooders: usize,
    #[arg(long, default_value_t = 20)]
    slow_readers: usize,
}

#[derive(Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub phase: &'static str,
    #[serde(flatten)]
    pub server: ServerSample,
    pub client: ClientSample,
}

#[derive(Clone, Default, Serialize)]
pub struct ClientSample {
    pub held_sessions: usize,
    /// Held sessions the server closed and the soak opened again.
    pub held_reopened: u64,
    pub churn_opened: u64,
    pub churn_failed: u64,
    pub call_cycles: u64,
    pub call_failed_cycles: u64,
    pub media_sent: u64,
    pub media_received: u64,
    pub chat_sent: u64,
    pub flooders_closed: u64,
    pub slow_readers_dropped: u64,
    pub frames_received: u64,
}

#[derive(Serialize)]
pub struct SoakReport {
    pub settings: serde_json::Value,
    pub samples: Vec<Sample>,
    pub last_call_error: Option<String>,
    /// Failed call cycles by cause.
    pub call_errors: std::collections::BTreeMap<String, u64>,
    /// webrtc-join → webrtc-joined over the whole run: p50, p99, max in ms, and the count.
    pub join_latency_ms: serde_json::Value,
}

struct Shared {
    frames: Arc<Counters>,
    calls: Arc<CallCounters>,
    abuse: Arc<AbuseCounters>,
    churn_opened: AtomicU64,
    churn_failed: AtomicU64,
    held: std::sync::atomic::AtomicUsize,
    held_reopened: AtomicU64,
}

impl Shared {
    fn client_sample(&self) -> ClientSample {
        let f = &self.frames;
        ClientSample {
            held_sessions: self.held.load(Ordering::Relaxed),
            held_reopened: self.held_reopened.load(Ordering::Relaxed),
            churn_opened: self.churn_opened.load(Ordering::Relaxed),
            churn_failed: self.churn_failed.load(Ordering::Relaxed),
            call_cycles: self.calls.cycles.load(Ordering::Relaxed),
            call_failed_cycles: self.calls.failed_cycles.load(Ordering::Relaxed),
            media_sent: self.calls.packets_sent.load(Ordering::Relaxed),
            media_received: self.calls.packets_received.load(Ordering::Relaxed),
            chat_sent: self.abuse.chat_sent.load(Ordering::Relaxed),
            flooders_closed: self.abuse.flooders_closed.load(Ordering::Relaxed),
            slow_readers_dropped: self.abuse.slow_readers_dropped.load(Ordering::Relaxed),
            frames_received: f.chat_frames.load(Ordering::Relaxed)
                + f.system_frames.load(Ordering::Relaxed)
                + f.other_frames.load(Ordering::Relaxed),
        }
    }
}

pub async fn run(c: SoakCli) -> anyhow::Result<SoakReport> {
    let url = format!("ws://{}", c.http);
    let shared = Arc::new(Shared {
        frames: Arc::new(Counters::default()),
        calls: Arc::new(CallCounters::default()),
        abuse: Arc::new(AbuseCounters::default()),
        churn_opened: AtomicU64::new(0),
        churn_failed: AtomicU64::new(0),
        held: Default::default(),
        held_reopened: AtomicU64::new(0),
    });
    let t0 = Instant::now();
    let mut samples = Vec::new();
    let every = Duration::from_secs(c.sample_every_s.max(1));

    eprintln!("soak: baseline, {} s", c.baseline_s);
    sample_for(&c, &shared, t0, "baseline", Duration::from_secs(c.baseline_s), every, &mut samples).await;

    load_round(&c, &url, &shared, t0, "load", Duration::from_secs(c.load_s), &mut samples).await;
    eprintln!("soak: every client gone, cooldown {} s", c.cooldown_s);
    sample_for(&c, &shared, t0, "cooldown", Duration::from_secs(c.cooldown_s), every, &mut samples).await;
    if c.second_load_s > 0 {
        // The same load again: a leak grows with the load served, a cache or a high-water mark
        // (a map's capacity, SQLite's page cache) does not, so the second cooldown must end
        // where the first one did.
        load_round(&c, &url, &shared, t0, "load2", Duration::from_secs(c.second_load_s), &mut samples).await;
        eprintln!("soak: every client gone, second cooldown {} s", c.cooldown_s);
        sample_for(&c, &shared, t0, "cooldown2", Duration::from_secs(c.cooldown_s), every, &mut samples)
            .await;
    }

    let last_call_error = shared.calls.last_error.lock().ok().and_then(|e| e.clone());
    let settings = serde_json::json!({
        "baseline_s": c.baseline_s, "load_s": c.load_s, "second_load_s": c.second_load_s, "cooldown_s": c.cooldown_s,
        "sample_every_s": c.sample_every_s, "sessions": c.sessions, "churn_per_s": c.churn_per_s,
        "calls": c.calls, "call_members": c.call_members, "call_packets_per_s": c.call_packets_per_s,
        "call_payload": c.call_payload, "call_hold_s": c.call_hold_s, "chatters": c.chatters, "chat_every_s": c.chat_every_s,
        "chat_size": c.chat_size, "flooders": c.flooders, "slow_readers": c.slow_readers,
    });
    let call_errors = shared.calls.errors.lock().map(|e| e.clone()).unwrap_or_default();
    let mut joins = shared.calls.join_latency_us.lock().map(|l| l.clone()).unwrap_or_default();
    joins.sort_unstable();
    let at =
        |q: f64| joins.get(((joins.len() as f64 - 1.0) * q).round() as usize).map(|us| *us as f64 / 1000.0);
    let join_latency_ms =
        serde_json::json!({"count": joins.len(), "p50": at(0.5), "p99": at(0.99), "max": at(1.0)});
    Ok(SoakReport { settings, samples, last_call_error, call_errors, join_latency_ms })
}

/// One round of load: every kind of client for `length`, sampled, then every client stopped.
async fn load_round(
    c: &SoakCli,
    url: &str,
    shared: &Arc<Shared>,
    t0: Instant,
    phase: &'static str,
    length: Duration,
    samples: &mut Vec<Sample>,
) {
    eprintln!("soak: {phase}, {} s", length.as_secs());
    let url = url.to_string();
    let (stop_tx, stop_rx) = watch::channel(false);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    shared.held.store(0, Ordering::Relaxed);
    tasks.spawn(hold_sessions(url.clone(), c.sessions, shared.clone(), stop_rx.clone()));
    tasks.spawn(churn(url.clone(), c.churn_per_s, shared.clone(), stop_rx.clone()));
    let shape = CallShape {
        url: url.clone(),
        members: c.call_members,
        packets_per_s: c.call_packets_per_s,
        payload: c.call_payload,
        hold: Duration::from_secs(c.call_hold_s),
    };
    let calls_total = c.calls.max(1);
    for g in 0..c.calls {
        let (shape, frames, calls, stop) =
            (shape.clone(), shared.frames.clone(), shared.calls.clone(), stop_rx.clone());
        tasks.spawn(async move {
            // Stagger the groups so joins and teardowns are spread over the hold time.
            tokio::time::sleep(shape.hold.mul_f64(g as f64 / calls_total as f64)).await;
            soak_call::run_group(g, shape, frames, calls, stop).await
        });
    }
    for i in 0..c.chatters {
        let (name, every) = (format!("chatter{i:02}"), Duration::from_secs(c.chat_every_s.max(1)));
        let (frames, abuse) = (shared.frames.clone(), shared.abuse.clone());
        tasks.spawn(soak_abuse::chatter(
            url.clone(),
            name,
            c.chat_size,
            every,
            frames,
            abuse,
            stop_rx.clone(),
        ));
    }
    for i in 0..c.flooders {
        let name = format!("flooder{i:02}");
        tasks.spawn(soak_abuse::flooder(
            url.clone(),
            name,
            shared.frames.clone(),
            shared.abuse.clone(),
            stop_rx.clone(),
        ));
    }
    for i in 0..c.slow_readers {
        tasks.spawn(soak_abuse::slow_reader(
            c.http,
            format!("slow{i:02}"),
            shared.abuse.clone(),
            stop_rx.clone(),
        ));
    }
    let every = Duration::from_secs(c.sample_every_s.max(1));
    sample_for(c, shared, t0, phase, length.saturating_sub(started.elapsed()), every, samples).await;
    let _ = stop_tx.send(true);
    // Sessions close on the stop signal; give the tasks a bounded time to finish.
    let _ =
        tokio::time::timeout(Duration::from_secs(20), async { while tasks.join_next().await.is_some() {} })
            .await;
    tasks.abort_all();
}

/// Take a sample every `every` for `length`, printing a progress line for each.
async fn sample_for(
    c: &SoakCli,
    shared: &Shared,
    t0: Instant,
    phase: &'static str,
    length: Duration,
    every: Duration,
    samples: &mut Vec<Sample>,
) {
    let end = Instant::now() + length;
    loop {
        let server = soak_sample::take(c.server_pid, c.http).await;
        let client = shared.client_sample();
        eprintln!(
            "soak {:>6.0}s {phase:<9} rss {:>7} KiB fds {:>5} tasks {:>6} conns {:>5} allocs {:>4} | held {:>5} (+{}) churn {:>6} calls {:>4}/{} media {}/{} floods {} slow {}",
            t0.elapsed().as_secs_f64(),
            server.rss_kib,
            server.open_fds,
            server.metrics.get("relaychat_runtime_tasks").copied().unwrap_or(-1.0),
            server.metrics.get("relaychat_connections").copied().unwrap_or(-1.0),
            server.metrics.get("relaychat_turn_allocations_active").copied().unwrap_or(-1.0),
            client.held_sessions,
            client.held_reopened,
            client.churn_opened,
            client.call_cycles,
            client.call_failed_cycles,
            client.media_received,
            client.media_sent,
            client.flooders_closed,
            client.slow_readers_dropped,
        );
        samples.push(Sample { t_s: t0.elapsed().as_secs_f64(), phase, server, client });
        let now = Instant::now();
        if now + every > end + Duration::from_millis(500) {
            tokio::time::sleep(end.saturating_duration_since(now)).await;
            return;
        }
        tokio::time::sleep(every).await;
    }
}

/// Open `count` sessions (64 at a time) and keep them open until the stop signal: a session the
/// server closes (a client too slow to read its share of the fan-out is dropped, by design) is
/// opened again under its name, so the server keeps holding `count`.
async fn hold_sessions(url: String, count: usize, shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let mut stopped = stop.clone();
    let open_slot = |i: usize| {
        let (url, frames, stop) = (url.clone(), shared.frames.clone(), stop.clone());
        async move {
            ws_session::open(&url, &format!("idle{i:05}"), Behaviour::default(), frames, stop).await.ok()
        }
    };
    let mut slots: Vec<Option<Session>> = stream::iter(0..count).map(open_slot).buffered(64).collect().await;
    loop {
        let open = slots.iter().filter(|s| s.as_ref().is_some_and(Session::is_open)).count();
        shared.held.store(open, Ordering::Relaxed);
        tokio::select! {
            _ = stopped.changed() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let closed: Vec<usize> =
            (0..count).filter(|i| !slots[*i].as_ref().is_some_and(Session::is_open)).take(64).collect();
        shared.held_reopened.fetch_add(closed.len() as u64, Ordering::Relaxed);
        let reopened: Vec<(usize, Option<Session>)> = stream::iter(closed)
            .map(|i| async move { (i, open_slot(i).await) })
            .buffer_unordered(64)
            .collect()
            .await;
        for (i, session) in reopened {
            slots[i] = session;
        }
    }
}

/// Every 1/rate s open a session, and close the oldest once more than a second's worth are
/// open: `rate` connects and as many disconnects per second, each session living about 1 s.
async fn churn(url: String, per_s: u32, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    if per_s == 0 {
        return;
    }
    let (opened_tx, mut opened_rx) = mpsc::unbounded_channel::<Session>();
    let mut live: VecDeque<Session> = VecDeque::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_s as f64));
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        n += 1;
        // Connect in the background so a slow handshake never slows the churn rate down.
        let (url, frames, shared, opened_tx, stop) =
            (url.clone(), shared.frames.clone(), shared.clone(), opened_tx.clone(), stop.clone());
        tokio::spawn(async move {
            match ws_session::open(&url, &format!("churn{n:07}"), Behaviour::default(), frames, stop).await {
                Ok(session) => {
                    shared.churn_opened.fetch_add(1, Ordering::Relaxed);
                    let _ = opened_tx.send(session);
                }
                Err(_) => {
                    shared.churn_failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        while let Ok(session) = opened_rx.try_recv() {
            live.push_back(session);
        }
        while live.len() > per_s as usize {
            // Dropping the handle ends the session task, which drops the connection.
            live.pop_front();
        }
    }
}
