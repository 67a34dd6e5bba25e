//! Open TURN-over-TCP/TLS connections per client IP, capped (`[turn] max_tcp_connections_per_ip`).
//!
//! Counted from accept, before a byte is read, so unauthenticated connections count too: one
//! host cannot hold thousands of sockets (and their buffers and tasks) while staying under the
//! global connection limit. IPv6 clients are grouped by `limits.ipv6_prefix_len` (`addr::ip_key`).
//! A connection's [`IpSlot`] gives its place back when dropped, and a count that reaches zero is
//! forgotten, so the map holds only IPs with open connections.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::addr::ip_key;

pub struct ConnectionsPerIp {
    limit: usize,
    v6_prefix_len: u8,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One open connection's place; dropping it frees the place.
pub struct IpSlot {
    owner: Arc<ConnectionsPerIp>,
    key: IpAddr,
}

impl ConnectionsPerIp {
    pub fn new(limit: usize, v6_prefix_len: u8) -> Arc<Self> {
        Arc::new(ConnectionsPerIp { limit, v6_prefix_len, open: Mutex::default() })
    }

    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for one more connection from `ip`, or `None` when it holds the limit already.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let key = ip_key(ip, self.v6_prefix_len);
        let mut open = self.open();
        let count = open.entry(key).or_default();
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(IpSlot { owner: self.clone(), key })
    }

    /// Connections open from `ip`'s group.
    pub fn open_from(&self, ip: IpAddr) -> usize {
        self.open().get(&ip_key(ip, self.v6_prefix_len)).copied().unwrap_or(0)
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.owner.open();
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_ip_group_gets_the_limit_and_places_come_back() {
        let limiter = ConnectionsPerIp::new(2, 64);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let a = limiter.try_acquire(ip("192.0.2.1")).unwrap();
        let _b = limiter.try_acquire(ip("::ffff:192.0.2.1")).unwrap();
        assert!(limiter.try_acquire(ip("192.0.2.1")).is_none(), "mapped spelling is the same IP");
        assert!(limiter.try_acquire(ip("192.0.2.2")).is_some());
        drop(a);
        assert_eq!(limiter.open_from(ip("192.0.2.1")), 1);
        let _c = limiter.try_acquire(ip("192.0.2.1")).unwrap();
        // One /64 is one host.
        let _d = limiter.try_acquire(ip("2001:db8::1")).unwrap();
        let _e = limiter.try_acquire(ip("2001:db8::2")).unwrap();
        assert!(limiter.try_acquire(ip("2001:db8::3")).is_none());
        assert!(limiter.try_acquire(ip("2001:db8:0:1::1")).is_some());
    }

    #[test]
    fn the_map_forgets_ips_without_connections() {
        let limiter = ConnectionsPerIp::new(1, 64);
        for i in 0..100u8 {
            drop(limiter.try_acquire(IpAddr::from([10, 0, 0, i])).unwrap());
        }
        assert!(limiter.open().is_empty());
    }
}
