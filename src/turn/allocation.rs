//! One allocation: its relay socket(s), what it was granted, how its client is reached, its
//! lifetime and its traffic.
//!
//! Shared (`Arc`) between the allocation table, the read loop of each relay socket (peer ->
//! client) and the listener read loops (client -> peer: for one message, or over UDP in their
//! `table_view` until the table changes). The data path takes no async lock: the grants sit
//! behind a std `RwLock` held for a lookup, the counters and the expiry are atomics. Every
//! change to the grants bumps a version number, so a listener read loop can keep a copy and
//! read it without the lock (`table_view`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::turn::auth::chat_user_of;
use crate::turn::bandwidth::BandwidthCap;
use crate::turn::counters::RelayCounters;
use crate::turn::datagram_batch::{BatchSender, MAX_BATCH};
use crate::turn::grants::Grants;
use crate::turn::link::ClientPath;
use crate::turn::relay_socket::RelaySocket;
use crate::turn::transport::{ClientKey, Transport};

/// Bytes and packets relayed in one direction.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub bytes: u64,
    pub packets: u64,
}

/// One allocation as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AllocationSummary {
    /// The chat user it belongs to (the REST username's user part up to its session tag).
    pub user: String,
    pub transport: Transport,
    pub client: SocketAddr,
    /// The (first) relayed address, as advertised.
    pub relayed: SocketAddr,
    pub age_secs: u64,
    /// What the client sent out through the relay.
    pub to_peers: Usage,
    /// What peers sent that was relayed to the client.
    pub from_peers: Usage,
    pub permissions: usize,
    pub channels: usize,
}

/// Which way a relayed packet went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client -> peer (sent from the relayed address).
    ToPeer,
    /// Peer -> client (received on the relayed address).
    FromPeer,
}

/// Counters of one direction, bumped on the data path (through [`Allocation::count_relayed`]).
///
/// Each direction on a line pair of its own: a call's two clients usually sit on different
/// listener shards, so `to_peers` and `from_peers` are bumped from two threads, and the fields
/// the data path only reads (the grants' version above all) must not share a line with either.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Traffic {
    bytes: AtomicU64,
    packets: AtomicU64,
}

impl Traffic {
    fn record(&self, bytes: usize) {
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.packets.fetch_add(1, Ordering::Relaxed);
    }

    /// `packets` datagrams of `bytes` in all.
    pub fn record_many(&self, packets: usize, bytes: usize) {
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.packets.fetch_add(packets as u64, Ordering::Relaxed);
    }

    pub fn usage(&self) -> Usage {
        Usage { bytes: self.bytes.load(Ordering::Relaxed), packets: self.packets.load(Ordering::Relaxed) }
    }
}

/// What an allocation is made of (see [`Allocation::new`]).
pub struct AllocationParts {
    pub key: ClientKey,
    /// The full REST username (`<expiry>:<user>`) it was made with.
    pub username: String,
    pub user: String,
    /// The Allocate's transaction ID (a retransmission is answered again, not refused).
    pub transaction_id: [u8; 12],
    /// One relay socket per address family held (one or two).
    pub relays: Vec<RelaySocket>,
    pub client: ClientPath,
    pub bandwidth_bytes_per_s: u64,
    /// Unix seconds.
    pub expires_at: u64,
}

pub struct Allocation {
    pub key: ClientKey,
    pub username: String,
    pub user: String,
    pub transaction_id: [u8; 12],
    pub relays: Vec<RelaySocket>,
    pub client: ClientPath,
    created: Instant,
    expires_at: AtomicU64,
    grants: RwLock<Grants>,
    /// Bumped (under the write lock) by every change to `grants`.
    grants_version: AtomicU64,
    bandwidth: BandwidthCap,
    pub to_peers: Traffic,
    pub from_peers: Traffic,
    closed: AtomicBool,
    close_signal: Notify,
}

impl Allocation {
    pub fn new(parts: AllocationParts) -> Arc<Self> {
        Arc::new(Allocation {
            key: parts.key,
            username: parts.username,
            user: parts.user,
            transaction_id: parts.transaction_id,
            relays: parts.relays,
            client: parts.client,
            created: Instant::now(),
            expires_at: AtomicU64::new(parts.expires_at),
            grants: RwLock::default(),
            grants_version: AtomicU64::new(0),
            bandwidth: BandwidthCap::new(parts.bandwidth_bytes_per_s),
            to_peers: Traffic::default(),
            from_peers: Traffic::default(),
            closed: AtomicBool::new(false),
            close_signal: Notify::new(),
        })
    }

    /// Unix seconds after which the sweep deletes it.
    pub fn expires_at(&self) -> u64 {
        self.expires_at.load(Ordering::Relaxed)
    }

    /// Refresh: the allocation now lives `lifetime` from `now`.
    pub fn extend(&self, now: u64, lifetime: Duration) {
        self.expires_at.store(now.saturating_add(lifetime.as_secs()), Ordering::Relaxed);
    }

    /// Seconds left at `now` (what a retransmitted Allocate is answered with).
    pub fn remaining(&self, now: u64) -> Duration {
        Duration::from_secs(self.expires_at().saturating_sub(now))
    }

    /// The relayed addresses, as advertised (XOR-RELAYED-ADDRESS).
    pub fn relayed(&self) -> Vec<SocketAddr> {
        self.relays.iter().map(|r| r.advertised()).collect()
    }

    /// The relay socket of `peer`'s address family, if the allocation holds one.
    pub fn relay_for(&self, peer: SocketAddr) -> Option<&RelaySocket> {
        self.relays.iter().find(|r| r.advertised().is_ipv4() == peer.is_ipv4())
    }

    /// Read access for one lookup on the data path (never held across an await).
    pub fn grants(&self) -> RwLockReadGuard<'_, Grants> {
        self.grants.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the grants (a CreatePermission, a ChannelBind) and bumps their version.
    pub fn update_grants<R>(&self, change: impl FnOnce(&mut Grants) -> R) -> R {
        let mut grants = self.grants.write().unwrap_or_else(|e| e.into_inner());
        let result = change(&mut grants);
        // Release, under the lock: whoever reads this version then reads the grants as changed.
        self.grants_version.fetch_add(1, Ordering::Release);
        result
    }

    /// The sweep: forgets the grants expired at `now`; the version moves only if one was.
    pub fn forget_expired_grants(&self, now: u64) {
        let mut grants = self.grants.write().unwrap_or_else(|e| e.into_inner());
        if grants.forget_expired(now) {
            self.grants_version.fetch_add(1, Ordering::Release);
        }
    }

    /// The version of the grants now: equal to a copy's version, the copy is still what the
    /// grants are.
    pub fn grants_version(&self) -> u64 {
        self.grants_version.load(Ordering::Acquire)
    }

    /// A copy of the grants and its version.
    pub fn grants_copy(&self) -> (u64, Grants) {
        let grants = self.grants();
        // Read under the lock: writers bump it under the write lock, so the pair matches.
        (self.grants_version.load(Ordering::Acquire), grants.clone())
    }

    /// Within the bandwidth cap? A drop is counted.
    pub fn within_bandwidth(&self, bytes: usize, counters: &RelayCounters) -> bool {
        let ok = self.bandwidth.take(bytes);
        if !ok {
            RelayCounters::bump(&counters.bandwidth_drops);
        }
        ok
    }

    /// Client -> peer: sends `payload` from the relayed address of the peer's family, within
    /// the bandwidth cap and the peer policy, and counts it.
    pub async fn send_to_peer(&self, payload: &[u8], peer: SocketAddr, counters: &RelayCounters) {
        let Some(relay) = self.relay_for(peer) else { return };
        if !self.within_bandwidth(payload.len(), counters) {
            return;
        }
        if relay.send_to_peer(payload, peer).await {
            self.count_relayed(Direction::ToPeer, payload.len(), counters);
        }
    }

    /// Counts one relayed packet of `bytes` going `direction`: in this allocation's usage (the
    /// admin API's per-user view) and in the relay's totals (`/metrics`), so the two never
    /// disagree.
    pub fn count_relayed(&self, direction: Direction, bytes: usize, counters: &RelayCounters) {
        let (usage, packets, total_bytes) = match direction {
            Direction::ToPeer => (&self.to_peers, &counters.relayed_packets_out, &counters.relayed_bytes_out),
            Direction::FromPeer => {
                (&self.from_peers, &counters.relayed_packets_in, &counters.relayed_bytes_in)
            }
        };
        usage.record(bytes);
        RelayCounters::bump(packets);
        RelayCounters::add(total_bytes, bytes as u64);
    }

    /// Client -> peer for a run of datagrams (one client's, consecutive in a listener batch),
    /// in order: each `(payload, peer)` within the bandwidth cap and the peer policy as in
    /// [`Self::send_to_peer`], and consecutive ones to one peer in one batched send (UDP GSO or
    /// `sendmmsg`). Datagrams the kernel refuses are counted in `peer_send_failures`.
    pub async fn send_run_to_peers(
        &self,
        run: &[(&[u8], SocketAddr)],
        counters: &RelayCounters,
        sender: &BatchSender,
    ) {
        let mut rest = run;
        while let Some(&(_, peer)) = rest.first() {
            let same_peer = rest.iter().take_while(|(_, p)| *p == peer).count();
            let (now, later) = rest.split_at(same_peer);
            rest = later;
            let Some(relay) = self.relay_for(peer) else { continue };
            let mut payloads: [&[u8]; MAX_BATCH] = [&[]; MAX_BATCH];
            let mut count = 0;
            for (payload, _) in now.iter().take(MAX_BATCH) {
                if self.within_bandwidth(payload.len(), counters) {
                    payloads[count] = payload;
                    count += 1;
                }
            }
            let outcome = relay.send_many_to_peer(sender, &payloads[..count], peer).await;
            self.to_peers.record_many(outcome.sent, outcome.sent_bytes);
            RelayCounters::add(&counters.relayed_packets_out, outcome.sent as u64);
            RelayCounters::add(&counters.relayed_bytes_out, outcome.sent_bytes as u64);
            RelayCounters::add(&counters.peer_send_failures, outcome.failed as u64);
            counters.add_batched(&outcome);
        }
    }

    /// Ends the relay read loops (once; the table entry is removed by the caller).
    pub fn close(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.close_signal.notify_waiters();
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Resolves once [`Self::close`] was called (enable it before checking [`Self::is_closed`]).
    pub fn closed(&self) -> tokio::sync::futures::Notified<'_> {
        self.close_signal.notified()
    }

    pub fn summary(&self, now: u64) -> AllocationSummary {
        let (permissions, channels) = self.grants().counts(now);
        AllocationSummary {
            user: chat_user_of(&self.user).to_string(),
            transport: self.key.0,
            client: self.key.1,
            relayed: self.relays.first().map_or(self.key.1, |r| r.advertised()),
            age_secs: self.created.elapsed().as_secs(),
            to_peers: self.to_peers.usage(),
            from_peers: self.from_peers.usage(),
            permissions,
            channels,
        }
    }
}
