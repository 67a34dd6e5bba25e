//! Relay counters for the metrics endpoint: atomics, bumped on the hot path without locks.
//!
//! Directions are seen from the relay socket: `relayed_*_in` is what peers sent to a relayed
//! address (delivered to the client), `relayed_*_out` is what clients sent out through the relay.
//!
//! The counters every relayed datagram touches are [`StripedCounter`]s: one cache line per
//! thread stripe, summed when read. With one shared atomic, each of the listener shards' threads
//! took the line from the other on every datagram (a cross-core transfer per increment); the
//! rare counters (refusals, failures) stay plain atomics.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::turn::datagram_batch::SendOutcome;

#[derive(Debug, Default)]
pub struct RelayCounters {
    pub allocations_active: AtomicU64,
    pub allocations_total: AtomicU64,
    pub relayed_bytes_in: StripedCounter,
    pub relayed_bytes_out: StripedCounter,
    pub relayed_packets_in: StripedCounter,
    pub relayed_packets_out: StripedCounter,
    /// Wrong HMAC, wrong realm, or a username that is not ours.
    pub auth_failures_bad_credential: AtomicU64,
    /// Correct HMAC, but the credential's expiry has passed (and no live allocation excuses it).
    pub auth_failures_expired: AtomicU64,
    /// Correct, unexpired credential of a user who is not in voice chat right now.
    pub auth_failures_not_in_voice: AtomicU64,
    /// A request whose username, realm or nonce is missing or unparsable.
    pub auth_failures_malformed: AtomicU64,
    /// Credentials refused because the operator revoked the user's TURN access.
    pub auth_failures_revoked: AtomicU64,
    /// Datagrams and permission/channel requests refused by the peer policy.
    pub denied_peers: AtomicU64,
    /// Allocate requests refused by the per-user or total allocation limit.
    pub quota_refusals: AtomicU64,
    /// Datagrams dropped by the per-allocation bandwidth cap.
    pub bandwidth_drops: AtomicU64,
    /// Frames dropped because a TCP client did not read fast enough (bounded send queue).
    pub tcp_send_drops: AtomicU64,
    /// Relayed datagrams the kernel refused to send to the client (the rest of their batch
    /// still went).
    pub client_send_failures: AtomicU64,
    /// Relayed datagrams the kernel refused to send to a peer in a batched send (the rest of
    /// their batch still went).
    pub peer_send_failures: AtomicU64,
    /// Relayed datagrams (either direction, over UDP) that left in UDP GSO sends, many per
    /// system call. Stays 0 where the kernel has no GSO or batching is off.
    pub sent_by_gso: StripedCounter,
    /// Relayed datagrams (either direction, over UDP) that left in `sendmmsg` calls.
    pub sent_by_sendmmsg: StripedCounter,
    /// Peer datagrams dropped because they were larger than a relayed packet may be.
    pub oversize_drops: AtomicU64,
    /// CreatePermission / ChannelBind refused: the allocation holds `max_permissions_per_allocation`.
    pub permission_cap_refusals: AtomicU64,
    /// ChannelBind refused: the allocation holds `max_channels_per_allocation` channels.
    pub channel_cap_refusals: AtomicU64,
    /// TCP/TLS connections closed at accept: their IP holds `max_tcp_connections_per_ip`.
    pub tcp_per_ip_refusals: AtomicU64,
}

impl RelayCounters {
    pub(crate) fn bump(counter: &impl Count) {
        counter.add(1);
    }

    /// Adds `n`; adding 0 (a batch without failures) writes nothing.
    pub(crate) fn add(counter: &impl Count, n: u64) {
        if n != 0 {
            counter.add(n);
        }
    }

    /// How a batched send went out: the system calls that carried it.
    pub(crate) fn add_batched(&self, outcome: &SendOutcome) {
        Self::add(&self.sent_by_gso, outcome.sent_by_gso as u64);
        Self::add(&self.sent_by_sendmmsg, outcome.sent_by_sendmmsg as u64);
    }

    pub fn get(counter: &impl Count) -> u64 {
        counter.value()
    }
}

/// A counter that only grows and is read as a total.
pub trait Count {
    fn add(&self, n: u64);
    fn value(&self) -> u64;
}

impl Count for AtomicU64 {
    fn add(&self, n: u64) {
        self.fetch_add(n, Ordering::Relaxed);
    }

    fn value(&self) -> u64 {
        self.load(Ordering::Relaxed)
    }
}

/// Stripes of a [`StripedCounter`]: more than the threads that relay (one per listener shard,
/// the runtime's workers), so each usually has one to itself; two threads sharing a stripe
/// still count correctly, they only share its cache line.
const STRIPES: usize = 16;

/// A counter bumped from several threads at a high rate: each thread adds to its own stripe
/// (its own cache line), and reading sums them. The total is exact; a reader racing writers
/// sees some of their latest additions, as with one atomic.
#[derive(Debug, Default)]
pub struct StripedCounter {
    stripes: [Stripe; STRIPES],
}

/// One stripe on a cache line of its own (128 bytes: the adjacent-line prefetcher pulls pairs).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe(AtomicU64);

impl Count for StripedCounter {
    fn add(&self, n: u64) {
        self.stripes[thread_stripe()].0.fetch_add(n, Ordering::Relaxed);
    }

    fn value(&self) -> u64 {
        self.stripes.iter().fold(0u64, |sum, s| sum.wrapping_add(s.0.load(Ordering::Relaxed)))
    }
}

/// This thread's stripe: handed out round-robin as threads first count.
fn thread_stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    STRIPE.with(|s| *s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_striped_counter_totals_what_every_thread_added() {
        let counter = std::sync::Arc::new(StripedCounter::default());
        let threads: Vec<_> = (0..STRIPES + 3)
            .map(|i| {
                let counter = counter.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        RelayCounters::add(&*counter, i as u64);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let expected: u64 = (0..STRIPES as u64 + 3).map(|i| i * 1000).sum();
        assert_eq!(RelayCounters::get(&*counter), expected);
    }

    #[test]
    fn stripes_sit_on_cache_lines_of_their_own() {
        assert_eq!(std::mem::align_of::<Stripe>(), 128);
        assert_eq!(std::mem::size_of::<StripedCounter>(), STRIPES * 128);
    }
}
