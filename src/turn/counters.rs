//! Relay counters for the metrics endpoint: plain atomics, bumped on the hot path without locks.
//!
//! Directions are seen from the relay socket: `relayed_*_in` is what peers sent to a relayed
//! address (delivered to the client), `relayed_*_out` is what clients sent out through the relay.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::turn::datagram_batch::SendOutcome;

#[derive(Debug, Default)]
pub struct RelayCounters {
    pub allocations_active: AtomicU64,
    pub allocations_total: AtomicU64,
    pub relayed_bytes_in: AtomicU64,
    pub relayed_bytes_out: AtomicU64,
    pub relayed_packets_in: AtomicU64,
    pub relayed_packets_out: AtomicU64,
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
    pub sent_by_gso: AtomicU64,
    /// Relayed datagrams (either direction, over UDP) that left in `sendmmsg` calls.
    pub sent_by_sendmmsg: AtomicU64,
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
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// How a batched send went out: the system calls that carried it.
    pub(crate) fn add_batched(&self, outcome: &SendOutcome) {
        Self::add(&self.sent_by_gso, outcome.sent_by_gso as u64);
        Self::add(&self.sent_by_sendmmsg, outcome.sent_by_sendmmsg as u64);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
