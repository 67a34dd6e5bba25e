//! Address canonicalization, in one place.
//!
//! An IPv4 peer can be spelled as IPv4-mapped IPv6 (`::ffff:a.b.c.d`); every comparison of
//! addresses (the peer policy, nonces bound to a client IP, per-IP limits) must see one spelling,
//! or a deny list is bypassed by the other one (coturn's CVE-2020-26262). std's
//! [`IpAddr::to_canonical`] does the unmapping; these helpers apply it to what we compare.

use std::net::{IpAddr, SocketAddr};

/// `addr` with an IPv4-mapped IPv6 address unmapped to IPv4; everything else unchanged.
pub fn canonical_addr(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// The key per-IP limits count under: the canonical IP, with IPv6 cut to its first
/// `v6_prefix_len` bits (one host usually holds a whole /64, so counting single IPv6 addresses
/// would let it open a limit's worth of connections per address).
pub fn ip_key(ip: IpAddr, v6_prefix_len: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let len = u32::from(v6_prefix_len.min(128));
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
            IpAddr::V6((bits & mask).into())
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_addresses_become_ipv4_and_ipv6_groups_by_prefix() {
        let a: SocketAddr = "[::ffff:127.0.0.1]:9".parse().unwrap();
        assert_eq!(canonical_addr(a), "127.0.0.1:9".parse::<SocketAddr>().unwrap());
        let v6: SocketAddr = "[2001:db8::1]:9".parse().unwrap();
        assert_eq!(canonical_addr(v6), v6);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(ip_key(ip("::ffff:10.0.0.1"), 64), ip("10.0.0.1"));
        assert_eq!(ip_key(ip("2001:db8:1:2:3:4:5:6"), 64), ip("2001:db8:1:2::"));
        assert_eq!(ip_key(ip("2001:db8:1:2:3:4:5:6"), 128), ip("2001:db8:1:2:3:4:5:6"));
        assert_eq!(ip_key(ip("2001:db8::1"), 0), ip("::"));
    }
}
