//! Allocation bookkeeping: who holds which allocation, and the per-user and total limits.
//!
//! The crate keeps allocations per listener and tells us nothing about users, so the read loop
//! records each allocation by its client transport address (the 5-tuple, tagged with UDP or TCP)
//! with the REST username it was made with: *reserved* before the crate handles an Allocate,
//! *committed* once the allocation exists, *released* when the crate reports it closed
//! (`alloc_close_notify`) or the Allocate failed. A reservation counts against the limits, so
//! concurrent Allocates (TCP streams run in parallel) cannot overshoot them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use crate::turn::credentials::parse_username;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

/// A client's transport address on one of our listeners (the 5-tuple, as far as we need it).
pub type ClientKey = (Transport, SocketAddr);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaRefusal {
    /// 486 Allocation Quota Reached.
    PerUser,
    /// 508 Insufficient Capacity.
    Total,
}

/// What `reserve` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// A new slot; `commit` or `release` it.
    New,
    /// The 5-tuple already holds an allocation (the crate will answer 437); nothing to undo.
    Existing,
}

struct Entry {
    username: String,
    user: String,
    committed: bool,
}

#[derive(Default)]
struct State {
    by_client: HashMap<ClientKey, Entry>,
    per_user: HashMap<String, usize>,
}

pub struct Quotas {
    per_user_limit: usize,
    total_limit: usize,
    state: Mutex<State>,
}

impl Quotas {
    pub fn new(per_user_limit: usize, total_limit: usize) -> Self {
        Quotas { per_user_limit, total_limit, state: Mutex::default() }
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
        if state.by_client.len() >= self.total_limit {
            return Err(QuotaRefusal::Total);
        }
        let held = state.per_user.get(&user).copied().unwrap_or(0);
        if held >= self.per_user_limit {
            return Err(QuotaRefusal::PerUser);
        }
        *state.per_user.entry(user.clone()).or_default() += 1;
        state.by_client.insert(key, Entry { username: username.to_string(), user, committed: false });
        Ok(Reservation::New)
    }

    /// The Allocate succeeded.
    pub fn commit(&self, key: ClientKey) {
        if let Some(entry) = self.state().by_client.get_mut(&key) {
            entry.committed = true;
        }
    }

    /// The Allocate failed, or the allocation closed. Returns true if a committed one ended.
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> ClientKey {
        (Transport::Udp, SocketAddr::from(([127, 0, 0, 1], port)))
    }

    #[test]
    fn per_user_and_total_limits() {
        let q = Quotas::new(2, 3);
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
}
