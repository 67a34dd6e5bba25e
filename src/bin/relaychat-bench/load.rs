//! The data plane shared by the TURN and echo benchmarks: paced senders and draining receivers
//! over many nonblocking UDP sockets driven by a few tokio tasks.
//!
//! Every flow sends `rate` packets/s from one socket to one destination, optionally framed as
//! ChannelData. Each payload starts with a marker, the sending flow's id, a sequence number and
//! the send time on the process-wide monotonic clock. Because the sending and the receiving sockets
//! live in this one process, the receiver computes an exact **one-way** latency (TURN: client A ->
//! server -> A's relay -> B's relay -> server -> client B), or a round-trip time when the packet
//! comes back to the socket that sent it (echo).
//!
//! Pacing: a sender task wakes every millisecond and sends each flow the packets it is due
//! (`floor(elapsed * rate + phase)`, phases spread so flows do not fire in lockstep). `try_send_to`
//! never waits: a full socket buffer is counted as `send_blocked`, not hidden.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::histogram::Histogram;
use super::wire::{channel_data_header, data_indication_payload, parse_channel_data, parse_stun};

const MARKER: &[u8; 4] = b"RCB1";
/// Marker, flow id, sequence number, send time.
pub const MIN_PAYLOAD: usize = 4 + 4 + 8 + 8;

/// Nanoseconds on a monotonic clock shared by every task in the process.
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// One paced stream of packets.
pub struct Flow {
    pub sock: Arc<UdpSocket>,
    pub dest: SocketAddr,
    /// Frame as ChannelData on this channel; raw payload when None.
    pub channel: Option<u16>,
    /// Where the receiver of this flow's socket reports a NONCE from a 438 answer to a keepalive.
    pub stale_nonce: Option<Arc<Mutex<Option<String>>>>,
}

#[derive(Clone, Copy, Debug)]
pub struct LoadParams {
    pub rate_per_flow: f64,
    /// Payload bytes (after the ChannelData header, if any).
    pub size: usize,
    pub duration: Duration,
    /// How long receivers keep reading after the senders stop.
    pub drain: Duration,
    /// Number of sender tasks the flows are split over.
    pub sender_tasks: usize,
}

/// Counts from one load run, summed over all flows.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoadCounts {
    pub offered: u64,
    pub sent: u64,
    pub send_blocked: u64,
    pub send_errors: u64,
    pub received: u64,
    pub reordered: u64,
    pub data_indications: u64,
    pub stun_success: u64,
    pub stun_errors: u64,
    pub unrecognized: u64,
    pub recv_errors: u64,
    /// Wall time the senders took for their schedule (longer than the duration when starved).
    pub send_elapsed_s: f64,
    /// Late packets of an earlier step read and dropped before this one started.
    pub stale_dropped_before: u64,
    /// Longest gap between two sender wake-ups (1 ms nominal): a starved generator shows here.
    pub sender_max_gap_ms: f64,
}

pub struct LoadOutcome {
    pub counts: LoadCounts,
    pub latency: Histogram,
}

struct ReceiverStats {
    counts: LoadCounts,
    latency: Histogram,
}

/// Read and drop whatever is still queued on the sockets (late packets of an overloaded earlier
/// step would otherwise count as received, and their backlog would delay this step), until a
/// pass over all sockets finds nothing for 200 ms or `max` passes. Returns packets dropped.
pub async fn discard_backlog(flows: &[Flow], max: Duration) -> u64 {
    let start = Instant::now();
    let mut buf = vec![0u8; 65536];
    let mut dropped = 0;
    let mut quiet_since = Instant::now();
    while start.elapsed() < max {
        let mut got = 0;
        for f in flows {
            while f.sock.try_recv(&mut buf).is_ok() {
                got += 1;
            }
        }
        dropped += got;
        if got > 0 {
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= Duration::from_millis(200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    dropped
}

/// Run the flows for `p.duration`, drain, and return what arrived.
pub async fn run(flows: &[Flow], p: LoadParams) -> LoadOutcome {
    let stale_dropped = discard_backlog(flows, Duration::from_secs(10)).await;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut receivers = Vec::with_capacity(flows.len());
    for f in flows {
        receivers.push(tokio::spawn(receive(f.sock.clone(), f.stale_nonce.clone(), stop_rx.clone())));
    }

    let start = now_ns();
    let tasks = p.sender_tasks.max(1).min(flows.len().max(1));
    let mut senders = Vec::new();
    for t in 0..tasks {
        let mine: Vec<(usize, Arc<UdpSocket>, SocketAddr, Option<u16>)> = flows
            .iter()
            .enumerate()
            .filter(|(i, _)| i % tasks == t)
            .map(|(i, f)| (i, f.sock.clone(), f.dest, f.channel))
            .collect();
        let n = flows.len();
        senders.push(tokio::spawn(send(mine, n, p, start)));
    }
    let mut counts = LoadCounts::default();
    for s in senders {
        if let Ok(c) = s.await {
            counts.offered += c.offered;
            counts.sent += c.sent;
            counts.send_blocked += c.send_blocked;
            counts.send_errors += c.send_errors;
            counts.sender_max_gap_ms = counts.sender_max_gap_ms.max(c.sender_max_gap_ms);
        }
    }
    counts.send_elapsed_s = (now_ns() - start) as f64 / 1e9;
    tokio::time::sleep(p.drain).await;
    let _ = stop_tx.send(true);

    let mut latency = Histogram::default();
    for r in receivers {
        if let Ok(s) = r.await {
            counts.received += s.counts.received;
            counts.reordered += s.counts.reordered;
            counts.data_indications += s.counts.data_indications;
            counts.stun_success += s.counts.stun_success;
            counts.stun_errors += s.counts.stun_errors;
            counts.unrecognized += s.counts.unrecognized;
            counts.recv_errors += s.counts.recv_errors;
            latency.merge(&s.latency);
        }
    }
    counts.stale_dropped_before = stale_dropped;
    LoadOutcome { counts, latency }
}

async fn send(
    flows: Vec<(usize, Arc<UdpSocket>, SocketAddr, Option<u16>)>,
    total_flows: usize,
    p: LoadParams,
    start: u64,
) -> LoadCounts {
    let size = p.size.max(MIN_PAYLOAD);
    // Per flow: prebuilt packet (header + payload), packets sent so far, phase in 0..1.
    let mut state: Vec<(Vec<u8>, u64, f64)> = flows
        .iter()
        .map(|(id, _, _, ch)| {
            let mut pkt = Vec::with_capacity(4 + size);
            if let Some(ch) = ch {
                pkt.extend_from_slice(&channel_data_header(*ch, size));
            }
            let off = pkt.len();
            pkt.resize(off + size, 0);
            pkt[off..off + 4].copy_from_slice(MARKER);
            pkt[off + 4..off + 8].copy_from_slice(&(*id as u32).to_be_bytes());
            (pkt, 0u64, *id as f64 / total_flows.max(1) as f64)
        })
        .collect();
    let duration_ns = p.duration.as_nanos() as u64;
    let total_due = |phase: f64| (p.duration.as_secs_f64() * p.rate_per_flow + phase) as u64;
    let mut c = LoadCounts::default();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_wake = now_ns();
    loop {
        tick.tick().await;
        let woke = now_ns();
        c.sender_max_gap_ms = c.sender_max_gap_ms.max((woke - last_wake) as f64 / 1e6);
        last_wake = woke;
        let elapsed = woke.saturating_sub(start);
        let done = elapsed >= duration_ns;
        let secs = elapsed.min(duration_ns) as f64 / 1e9;
        for ((_, sock, dest, ch), (pkt, sent, phase)) in flows.iter().zip(state.iter_mut()) {
            let due = if done { total_due(*phase) } else { (secs * p.rate_per_flow + *phase) as u64 };
            let off = if ch.is_some() { 4 } else { 0 };
            while *sent < due {
                pkt[off + 8..off + 16].copy_from_slice(&sent.to_be_bytes());
                pkt[off + 16..off + 24].copy_from_slice(&now_ns().to_be_bytes());
                *sent += 1;
                match sock.try_send_to(pkt, *dest) {
                    Ok(_) => c.sent += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => c.send_blocked += 1,
                    Err(_) => c.send_errors += 1,
                }
            }
        }
        if done {
            break;
        }
    }
    c.offered = state.iter().map(|s| s.1).sum();
    c
}

async fn receive(
    sock: Arc<UdpSocket>,
    stale_nonce: Option<Arc<Mutex<Option<String>>>>,
    mut stop: watch::Receiver<bool>,
) -> ReceiverStats {
    let mut s = ReceiverStats { counts: LoadCounts::default(), latency: Histogram::default() };
    let mut last_seq: HashMap<u32, u64> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        tokio::select! {
            r = sock.readable() => {
                if r.is_err() {
                    s.counts.recv_errors += 1;
                    break;
                }
                loop {
                    match sock.try_recv(&mut buf) {
                        Ok(n) => {
                            let now = now_ns();
                            classify(&buf[..n], now, &mut s, &mut last_seq, stale_nonce.as_ref());
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(_) => {
                            // e.g. ECONNREFUSED from an ICMP error: count, keep reading.
                            s.counts.recv_errors += 1;
                            break;
                        }
                    }
                }
            }
            _ = stop.changed() => break,
        }
    }
    s
}

fn classify(
    pkt: &[u8],
    now: u64,
    s: &mut ReceiverStats,
    last_seq: &mut HashMap<u32, u64>,
    stale_nonce: Option<&Arc<Mutex<Option<String>>>>,
) {
    let owned;
    let payload: &[u8] = if let Some((_, p)) = parse_channel_data(pkt) {
        p
    } else if pkt.starts_with(MARKER) {
        pkt
    } else if let Some(p) = data_indication_payload(pkt) {
        s.counts.data_indications += 1;
        owned = p;
        &owned
    } else if let Some(r) = parse_stun(pkt) {
        if r.is_success() {
            s.counts.stun_success += 1;
        } else if r.is_error() {
            s.counts.stun_errors += 1;
            if r.error_code() == Some(438) {
                if let (Some(slot), Some(n)) = (stale_nonce, r.nonce()) {
                    if let Ok(mut g) = slot.lock() {
                        *g = Some(n);
                    }
                }
            }
        }
        return;
    } else {
        s.counts.unrecognized += 1;
        return;
    };
    if payload.len() < MIN_PAYLOAD || &payload[..4] != MARKER {
        s.counts.unrecognized += 1;
        return;
    }
    let field = |a: usize, b: usize| payload[a..b].iter().fold(0u64, |acc, x| acc << 8 | *x as u64);
    let flow = field(4, 8) as u32;
    let seq = field(8, 16);
    let sent_at = field(16, 24);
    s.counts.received += 1;
    s.latency.record(now.saturating_sub(sent_at));
    let last = last_seq.entry(flow).or_insert(0);
    if seq < *last {
        s.counts.reordered += 1;
    } else {
        *last = seq;
    }
}
