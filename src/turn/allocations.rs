//! The allocation table: who holds which allocation, keyed by the client's 5-tuple.
//!
//! The crate keeps allocations per listener and tells us nothing about users, so the read loops
//! record each allocation by its client transport address (tagged with the transport it came
//! over) with the REST username it was made with: *reserved* before the crate handles an
//! Allocate, *committed* once the allocation exists, *released* when the crate reports it closed
//! (`alloc_close_notify`: expiry, Refresh 0, deletion) or the Allocate failed. A reservation
//! counts against the quotas. Each committed entry also carries the allocation's [`Grants`]
//! (permissions and channels, capped), dropped with the entry, so the table is bounded by
//! `max_allocations_total` x the caps.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use crate::turn::credentials::parse_username;
use crate::turn::grants::{CapReached, GrantCaps, Grants};
use crate::turn::quota::{QuotaLimits, QuotaRefusal};

/// The listener a client reached us on (relayed transport is always UDP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

/// A client's transport address on one of our listeners (the 5-tuple, as far as we need it).
pub type ClientKey = (Transport, SocketAddr);

/// What `reserve` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// A new slot; `commit` or `release` it.
    New,
    /// The 5-tuple already holds an allocation (the crate will answer 437); nothing to undo.
    Existing,
}

/// Why a permission or channel was not granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantRefusal {
    /// The 5-tuple holds no (committed) allocation: 437.
    NoAllocation,
    /// 508, counted.
    Cap(CapReached),
}

struct Entry {
    username: String,
    user: String,
    committed: bool,
    grants: Grants,
}

#[derive(Default)]
struct State {
    by_client: HashMap<ClientKey, Entry>,
    per_user: HashMap<String, usize>,
}

pub struct AllocationTable {
    limits: QuotaLimits,
    caps: GrantCaps,
    state: Mutex<State>,
}

impl AllocationTable {
    pub fn new(limits: QuotaLimits, caps: GrantCaps) -> Self {
        AllocationTable { limits, caps, state: Mutex::default() }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn reserve(&self, key: ClientKey, username: &str) -> Result<Reservation, QuotaRefusal> {
        let user = parse_username(username).map(|u| u.user).unwrap_or(username).to_string();
        let mut state = self.state();
        if state.by_client.contains_key(&key) {
            return Ok(Reservation::Existing);
        }
        let held = state.per_user.get(&user).copied().unwrap_or(0);
        self.limits.check(state.by_client.len(), held)?;
        *state.per_user.entry(user.clone()).or_default() += 1;
        let entry =
            Entry { username: username.to_string(), user, committed: false, grants: Grants::default() };
        state.by_client.insert(key, entry);
        Ok(Reservation::New)
    }

    /// The Allocate succeeded.
    pub fn commit(&self, key: ClientKey) {
        if let Some(entry) = self.state().by_client.get_mut(&key) {
            entry.committed = true;
        }
    }

    /// The Allocate failed, or the allocation closed (its grants go with it). Returns true if a
    /// committed one ended.
    pub fn release(&self, key: ClientKey) -> bool {
        let mut state = self.state();
        let Some(entry) = state.by_client.remove(&key) else { return false };
        if let Some(n) = state.per_user.get_mut(&entry.user) {
            *n -= 1;
            if *n == 0 {
                state.per_user.remove(&entry.user);
            }
        }
        entry.committed
    }

    /// The full REST username the allocation of `key` was made with.
    pub fn allocation_username(&self, key: ClientKey) -> Option<String> {
        self.state().by_client.get(&key).filter(|e| e.committed).map(|e| e.username.clone())
    }

    /// How many allocations (including pending ones) `user` holds.
    pub fn held_by(&self, user: &str) -> usize {
        self.state().per_user.get(user).copied().unwrap_or(0)
    }

    pub fn total(&self) -> usize {
        self.state().by_client.len()
    }

    /// Runs `f` on the grants of `key`'s committed allocation.
    fn with_grants<T>(
        &self,
        key: ClientKey,
        f: impl FnOnce(&mut Grants, GrantCaps) -> Result<T, CapReached>,
    ) -> Result<T, GrantRefusal> {
        let mut state = self.state();
        let entry =
            state.by_client.get_mut(&key).filter(|e| e.committed).ok_or(GrantRefusal::NoAllocation)?;
        f(&mut entry.grants, self.caps).map_err(GrantRefusal::Cap)
    }

    /// Records permissions for `peers` on `key`'s allocation, within the cap (all or none).
    pub fn grant_permissions(
        &self,
        key: ClientKey,
        peers: &[SocketAddr],
        now: u64,
    ) -> Result<(), GrantRefusal> {
        self.with_grants(key, |g, caps| g.grant_permissions(peers, now, caps))
    }

    /// May `key`'s allocation bind `number` to `peer`? (See [`Grants::check_channel`].)
    pub fn check_channel(
        &self,
        key: ClientKey,
        number: u16,
        peer: SocketAddr,
        now: u64,
    ) -> Result<(), GrantRefusal> {
        self.with_grants(key, |g, caps| g.check_channel(number, peer, now, caps))
    }

    /// The crate bound the channel: record it (and its peer's permission).
    pub fn record_channel(&self, key: ClientKey, number: u16, peer: SocketAddr, now: u64) {
        let _ = self.with_grants(key, |g, _| {
            g.record_channel(number, peer, now);
            Ok(())
        });
    }

    /// Live permissions and channels of `key`'s allocation (diagnostics and tests).
    pub fn grant_counts(&self, key: ClientKey, now: u64) -> Option<(usize, usize)> {
        self.with_grants(key, |g, _| Ok(g.counts(now))).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn key(port: u16) -> ClientKey {
        (Transport::Udp, SocketAddr::from(([127, 0, 0, 1], port)))
    }

    fn table(per_user: usize, total: usize) -> AllocationTable {
        AllocationTable::new(QuotaLimits { per_user, total }, GrantCaps { permissions: 2, channels: 1 })
    }

    #[test]
    fn per_user_and_total_limits() {
        let q = table(2, 3);
        assert_eq!(q.reserve(key(1), "9:alice"), Ok(Reservation::New));
        assert_eq!(q.reserve(key(2), "10:alice"), Ok(Reservation::New));
        assert_eq!(q.reserve(key(3), "9:alice"), Err(QuotaRefusal::PerUser));
        assert_eq!(q.reserve(key(1), "9:alice"), Ok(Reservation::Existing));
        assert_eq!(q.reserve(key(4), "9:bob"), Ok(Reservation::New));
        assert_eq!(q.reserve(key(5), "9:carol"), Err(QuotaRefusal::Total));
        assert!(!q.release(key(2)), "never committed");
        q.commit(key(1));
        assert_eq!(q.allocation_username(key(1)).as_deref(), Some("9:alice"));
        assert_eq!(q.held_by("alice"), 1);
        assert!(q.release(key(1)));
        assert_eq!(q.held_by("alice"), 0);
        assert_eq!(q.total(), 1);
        let tcp = (Transport::Tcp, key(4).1);
        assert_eq!(q.reserve(tcp, "9:alice"), Ok(Reservation::New), "UDP and TCP 5-tuples differ");
    }

    #[test]
    fn grants_need_a_committed_allocation_and_end_with_it() {
        let q = table(2, 3);
        let peer = SocketAddr::from(([198, 51, 100, 1], 9));
        let other = SocketAddr::from(([198, 51, 100, 2], 9));
        let third = SocketAddr::from(([198, 51, 100, 3], 9));
        assert_eq!(q.grant_permissions(key(1), &[peer], NOW), Err(GrantRefusal::NoAllocation));
        q.reserve(key(1), "9:alice").unwrap();
        assert_eq!(q.grant_permissions(key(1), &[peer], NOW), Err(GrantRefusal::NoAllocation), "pending");
        q.commit(key(1));
        assert_eq!(q.grant_permissions(key(1), &[peer, other], NOW), Ok(()));
        assert_eq!(
            q.grant_permissions(key(1), &[third], NOW),
            Err(GrantRefusal::Cap(CapReached::Permissions))
        );
        assert_eq!(q.check_channel(key(1), 0x4000, peer, NOW), Ok(()));
        q.record_channel(key(1), 0x4000, peer, NOW);
        assert_eq!(q.check_channel(key(1), 0x4001, other, NOW), Err(GrantRefusal::Cap(CapReached::Channels)));
        assert_eq!(q.grant_counts(key(1), NOW), Some((2, 1)));
        q.release(key(1));
        q.reserve(key(1), "9:alice").unwrap();
        q.commit(key(1));
        assert_eq!(q.grant_counts(key(1), NOW), Some((0, 0)), "a new allocation starts empty");
    }
}
