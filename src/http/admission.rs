//! Accept-time admission: caps on TCP connections in total, per IP and "pending" (not a
//! WebSocket session yet), checked the moment a connection is accepted, before a byte is read
//! (from a PROXY protocol load balancer: right after its header, by the client it names).
//!
//! The hub's `ConnectionLimiter` counts sessions, which exist only after the upgrade; without
//! this gate a single address could hold every file descriptor with half-sent request heads.
//! A connection is admitted with a `Ticket` that releases its slots when the last clone drops
//! (the HTTP connection task and, after an upgrade, the WebSocket session each hold one), so a
//! slot can never leak on an early return. Trusted proxies count only towards the totals: every
//! client behind them shares their address, and the hub limits those clients by forwarded IP.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use ipnet::IpNet;

use crate::config::Settings;
use crate::hub::limits::ip_key;

/// Why a connection was closed at accept time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    ServerFull,
    TooManyFromIp,
    TooManyPending,
    TooManyPendingFromIp,
}

#[derive(Debug, Clone)]
struct Caps {
    total: usize,
    per_ip: usize,
    pending_total: usize,
    pending_per_ip: usize,
    v6_prefix_len: u8,
    exempt: Vec<IpNet>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    open: usize,
    pending: usize,
}

#[derive(Debug, Default)]
struct State {
    all: Counts,
    by_ip: HashMap<IpAddr, Counts>,
}

/// The gate in front of the accept loop; shared by every connection task.
#[derive(Debug)]
pub struct Admission {
    caps: Caps,
    state: Mutex<State>,
}

impl Admission {
    /// Caps from `[limits]` and `[network]`: sessions plus pending connections.
    pub fn new(settings: &Settings, trusted_proxies: Vec<IpNet>) -> Arc<Self> {
        let (limits, network) = (&settings.limits, &settings.network);
        Arc::new(Self {
            caps: Caps {
                total: limits.total_max_connections + network.max_pending_total,
                per_ip: limits.max_connections_per_ip + network.max_pending_per_ip,
                pending_total: network.max_pending_total,
                pending_per_ip: network.max_pending_per_ip,
                v6_prefix_len: limits.ipv6_prefix_len,
                exempt: trusted_proxies,
            },
            state: Mutex::new(State::default()),
        })
    }

    /// Admits a new (pending) connection from `peer`, or says which cap it hit.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Ticket, Refused> {
        let peer = ip_key(peer, 128); // canonical: IPv4-mapped addresses are IPv4
        let key = (!self.caps.exempt.iter().any(|net| net.contains(&peer)))
            .then(|| ip_key(peer, self.caps.v6_prefix_len));
        let mut state = self.lock();
        if state.all.open >= self.caps.total {
            return Err(Refused::ServerFull);
        }
        if state.all.pending >= self.caps.pending_total {
            return Err(Refused::TooManyPending);
        }
        if let Some(key) = key {
            let counts = state.by_ip.get(&key).copied().unwrap_or_default();
            if counts.open >= self.caps.per_ip {
                return Err(Refused::TooManyFromIp);
            }
            if counts.pending >= self.caps.pending_per_ip {
                return Err(Refused::TooManyPendingFromIp);
            }
            let counts = state.by_ip.entry(key).or_default();
            counts.open += 1;
            counts.pending += 1;
        }
        state.all.open += 1;
        state.all.pending += 1;
        drop(state);
        Ok(Ticket(Arc::new(TicketInner { admission: self.clone(), key, pending: AtomicBool::new(true) })))
    }

    /// Connections held now: (open, pending).
    pub fn counts(&self) -> (usize, usize) {
        let state = self.lock();
        (state.all.open, state.all.pending)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn release(&self, key: Option<IpAddr>, open: bool, pending: bool) {
        let mut state = self.lock();
        let take = |counts: &mut Counts| {
            if open {
                counts.open = counts.open.saturating_sub(1);
            }
            if pending {
                counts.pending = counts.pending.saturating_sub(1);
            }
        };
        take(&mut state.all);
        if let Some(key) = key {
            if let Some(counts) = state.by_ip.get_mut(&key) {
                take(counts);
                if *counts == Counts::default() {
                    state.by_ip.remove(&key);
                }
            }
        }
    }
}

/// One admitted connection's slots; cheap to clone, released when the last clone drops.
#[derive(Debug, Clone)]
pub struct Ticket(Arc<TicketInner>);

#[derive(Debug)]
struct TicketInner {
    admission: Arc<Admission>,
    key: Option<IpAddr>,
    pending: AtomicBool,
}

impl Ticket {
    /// The connection became a WebSocket session: it no longer counts as pending.
    pub fn upgraded(&self) {
        if self.0.pending.swap(false, Ordering::AcqRel) {
            self.0.admission.release(self.0.key, false, true);
        }
    }
}

impl Drop for TicketInner {
    fn drop(&mut self) {
        let pending = *self.pending.get_mut();
        self.admission.release(self.key, true, pending);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(edit: impl FnOnce(&mut Settings)) -> Arc<Admission> {
        let mut settings = Settings::defaults();
        edit(&mut settings);
        Admission::new(&settings, vec!["10.0.0.0/8".parse().unwrap()])
    }

    #[test]
    fn pending_per_ip_cap_frees_on_upgrade_and_on_drop() {
        let gate = admission(|s| {
            s.network.max_pending_per_ip = 2;
            s.limits.max_connections_per_ip = 1;
        });
        let ip: IpAddr = "203.0.113.1".parse().unwrap();
        let a = gate.admit(ip).unwrap();
        let b = gate.admit(ip).unwrap();
        assert_eq!(gate.admit(ip).unwrap_err(), Refused::TooManyPendingFromIp);
        a.upgraded();
        let c = gate.admit(ip).unwrap(); // a is a session now; 3 open = 1 + 2
        assert_eq!(gate.admit(ip).unwrap_err(), Refused::TooManyFromIp);
        assert!(gate.admit("203.0.113.2".parse().unwrap()).is_ok());
        drop((b, c));
        let clone = a.clone();
        drop(a);
        assert_eq!(gate.counts(), (1, 0)); // the session still holds its slot through the clone
        drop(clone);
        assert_eq!(gate.counts(), (0, 0));
        assert!(gate.lock().by_ip.is_empty());
    }

    #[test]
    fn ipv6_prefix_is_one_address_and_proxies_only_count_in_totals() {
        let gate = admission(|s| {
            s.network.max_pending_per_ip = 1;
            s.network.max_pending_total = 3;
        });
        let _a = gate.admit("2001:db8::1".parse().unwrap()).unwrap();
        assert_eq!(gate.admit("2001:db8::2".parse().unwrap()).unwrap_err(), Refused::TooManyPendingFromIp);
        let _p1 = gate.admit("10.0.0.1".parse().unwrap()).unwrap();
        let _p2 = gate.admit("10.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(gate.admit("10.0.0.1".parse().unwrap()).unwrap_err(), Refused::TooManyPending);
    }
}
