//! The allocation table: every live [`Allocation`], keyed by its client's 5-tuple, with the
//! per-user and total quotas.
//!
//! Read on every datagram from a client (ChannelData, Send) under a std `RwLock` held for the
//! lookup only (an `Arc` is cloned out), written when allocations begin and end. An entry is
//! added once its relay socket is bound ([`AllocationTable::insert`], quotas checked again under
//! the write lock so concurrent Allocates cannot overshoot) and removed by whoever ends it first
//! (expiry sweep, Refresh 0, the user leaving voice, the TCP connection closing, shutdown):
//! [`AllocationTable::remove`] says which one did. Each allocation carries its grants, capped by
//! [`GrantCaps`], so the table is bounded by `max_allocations_total` x the caps.
//!
//! Every insert and remove is announced ([`AllocationTable::changes`]): the UDP listener read
//! loops keep their own view of the entries they use (`table_view`) and drop it when told.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

pub use crate::turn::allocation::{Allocation, AllocationSummary, Usage};
use crate::turn::grants::GrantCaps;
use crate::turn::quota::{QuotaLimits, QuotaRefusal};
pub use crate::turn::transport::{ClientKey, Transport};

/// Why [`AllocationTable::insert`] refused an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertRefusal {
    Quota(QuotaRefusal),
    /// The 5-tuple holds an allocation already (437).
    Occupied,
}

#[derive(Default)]
struct State {
    by_client: HashMap<ClientKey, Arc<Allocation>>,
    /// The same allocations by each relayed address they hold (as advertised): where a client
    /// sending to another of our relays is handed over in-process (see `handoff`).
    by_relayed: HashMap<SocketAddr, Arc<Allocation>>,
    per_user: HashMap<String, usize>,
}

pub struct AllocationTable {
    limits: QuotaLimits,
    caps: GrantCaps,
    state: RwLock<State>,
    /// A new version with every insert and remove.
    changed: watch::Sender<()>,
}

impl AllocationTable {
    pub fn new(limits: QuotaLimits, caps: GrantCaps) -> Self {
        AllocationTable { limits, caps, state: RwLock::default(), changed: watch::Sender::new(()) }
    }

    /// Sees a new version whenever an allocation is inserted or removed.
    pub fn changes(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn caps(&self) -> GrantCaps {
        self.caps
    }

    /// Would one more allocation for `user` fit? (Checked before binding a relay socket.)
    pub fn admits(&self, user: &str) -> Result<(), QuotaRefusal> {
        let state = self.read();
        self.limits.check(state.by_client.len(), state.per_user.get(user).copied().unwrap_or(0))
    }

    /// Adds a new allocation, within the quotas, on a 5-tuple that holds none.
    pub fn insert(&self, allocation: Arc<Allocation>) -> Result<(), InsertRefusal> {
        let mut state = self.write();
        if state.by_client.contains_key(&allocation.key) {
            return Err(InsertRefusal::Occupied);
        }
        let held = state.per_user.get(&allocation.user).copied().unwrap_or(0);
        self.limits.check(state.by_client.len(), held).map_err(InsertRefusal::Quota)?;
        *state.per_user.entry(allocation.user.clone()).or_default() += 1;
        for relayed in allocation.relayed() {
            state.by_relayed.insert(relayed, allocation.clone());
        }
        state.by_client.insert(allocation.key, allocation);
        // Under the write lock: a view that sees the new version and looks again finds it.
        self.changed.send_replace(());
        Ok(())
    }

    /// Removes `allocation` if it is still in the table; true if this call removed it (the
    /// caller then finishes ending it: exactly one caller does).
    pub fn remove(&self, allocation: &Arc<Allocation>) -> bool {
        let mut state = self.write();
        match state.by_client.get(&allocation.key) {
            Some(held) if Arc::ptr_eq(held, allocation) => {}
            _ => return false,
        }
        state.by_client.remove(&allocation.key);
        for relayed in allocation.relayed() {
            state.by_relayed.remove(&relayed);
        }
        if let Some(n) = state.per_user.get_mut(&allocation.user) {
            *n -= 1;
            if *n == 0 {
                state.per_user.remove(&allocation.user);
            }
        }
        self.changed.send_replace(());
        true
    }

    /// The allocation of `key`, if any (the data path's lookup).
    pub fn get(&self, key: ClientKey) -> Option<Arc<Allocation>> {
        self.read().by_client.get(&key).cloned()
    }

    /// The allocation holding the relayed address `relayed` (as advertised, canonical), if any.
    pub fn by_relayed(&self, relayed: SocketAddr) -> Option<Arc<Allocation>> {
        self.read().by_relayed.get(&relayed).cloned()
    }

    /// The full REST username the allocation of `key` was made with.
    pub fn allocation_username(&self, key: ClientKey) -> Option<String> {
        self.read().by_client.get(&key).map(|a| a.username.clone())
    }

    /// How many allocations `user` holds.
    pub fn held_by(&self, user: &str) -> usize {
        self.read().per_user.get(user).copied().unwrap_or(0)
    }

    pub fn total(&self) -> usize {
        self.read().by_client.len()
    }

    /// The allocations whose lifetime is over at `now` (Unix seconds).
    pub fn expired(&self, now: u64) -> Vec<Arc<Allocation>> {
        self.read().by_client.values().filter(|a| a.expires_at() <= now).cloned().collect()
    }

    /// Every allocation alive now (for sweeps, departures and the admin API).
    pub fn all(&self) -> Vec<Arc<Allocation>> {
        self.read().by_client.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::*;
    use crate::turn::allocation::AllocationParts;
    use crate::turn::link::ClientPath;

    const NOW: u64 = 1_800_000_000;

    fn key(port: u16) -> ClientKey {
        (Transport::Udp, SocketAddr::from(([127, 0, 0, 1], port)))
    }

    fn table(per_user: usize, total: usize) -> AllocationTable {
        AllocationTable::new(QuotaLimits { per_user, total }, GrantCaps { permissions: 2, channels: 1 })
    }

    async fn allocation(key: ClientKey, username: &str, expires_at: u64) -> Arc<Allocation> {
        let socket = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let user = username.split_once(':').map_or(username, |(_, u)| u).to_string();
        Allocation::new(AllocationParts {
            key,
            username: username.into(),
            user,
            transaction_id: [0; 12],
            relays: Vec::new(),
            client: ClientPath::Datagram { socket, client: key.1 },
            bandwidth_bytes_per_s: 0,
            expires_at,
        })
    }

    #[tokio::test]
    async fn per_user_and_total_limits() {
        let t = table(2, 3);
        t.insert(allocation(key(1), "9:alice", NOW).await).unwrap();
        t.insert(allocation(key(2), "10:alice", NOW).await).unwrap();
        assert_eq!(t.admits("alice"), Err(QuotaRefusal::PerUser));
        let third = allocation(key(3), "9:alice", NOW).await;
        assert_eq!(
            t.insert(third),
            Err(InsertRefusal::Quota(QuotaRefusal::PerUser)),
            "checked under the lock"
        );
        let same_tuple = allocation(key(1), "9:dave", NOW).await;
        assert_eq!(t.insert(same_tuple), Err(InsertRefusal::Occupied));
        t.insert(allocation(key(4), "9:bob", NOW).await).unwrap();
        assert_eq!(t.admits("carol"), Err(QuotaRefusal::Total));
        assert_eq!(t.allocation_username(key(1)).as_deref(), Some("9:alice"));
        assert_eq!(t.held_by("alice"), 2);
        let tcp = (Transport::Tcp, key(4).1);
        assert!(t.get(tcp).is_none(), "UDP and TCP 5-tuples differ");
    }

    #[tokio::test]
    async fn an_allocation_is_removed_once_and_frees_its_slot() {
        let t = table(1, 3);
        let first = allocation(key(1), "9:alice", NOW).await;
        t.insert(first.clone()).unwrap();
        assert!(t.remove(&first), "the first caller ends it");
        assert!(!t.remove(&first), "every later one learns it is gone");
        assert_eq!((t.total(), t.held_by("alice")), (0, 0));
        // A new allocation on the same 5-tuple is not removed through the old handle.
        let second = allocation(key(1), "9:alice", NOW).await;
        t.insert(second.clone()).unwrap();
        assert!(!t.remove(&first));
        assert!(t.get(key(1)).is_some_and(|a| Arc::ptr_eq(&a, &second)));
    }

    #[tokio::test]
    async fn expiry_follows_the_lifetime_and_refreshes_extend_it() {
        let t = table(3, 3);
        let short = allocation(key(1), "9:alice", NOW + 600).await;
        let long = allocation(key(2), "9:alice", NOW + 3600).await;
        t.insert(short.clone()).unwrap();
        t.insert(long.clone()).unwrap();
        assert!(t.expired(NOW + 599).is_empty());
        let due: Vec<_> = t.expired(NOW + 600);
        assert!(due.len() == 1 && Arc::ptr_eq(&due[0], &short));
        short.extend(NOW + 599, Duration::from_secs(600));
        assert!(t.expired(NOW + 600).is_empty(), "refreshed just in time");
        assert_eq!(short.remaining(NOW + 600), Duration::from_secs(599));
        assert_eq!(t.expired(NOW + 3600).len(), 2);
    }
}
