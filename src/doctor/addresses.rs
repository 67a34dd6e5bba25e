//! This machine's addresses, and whether the relay's addresses are among them.
//!
//! std has no interface list, and we keep libc out: IPv4 local addresses come from
//! `/proc/net/fib_trie` (the `/32 host LOCAL` leaves of the local table), IPv6 ones from
//! `/proc/net/if_inet6`. Those lists are only for the message; the verdict "is this address
//! mine" is a UDP bind to it, which the kernel allows exactly for local addresses.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};

use super::report::Finding;
use crate::config::Settings;

/// Where the relay binds and what it tells clients, derived like `turn::start_relay` does.
#[derive(Debug, Clone)]
pub struct RelayAddresses {
    pub listen: SocketAddr,
    pub relay_ip: IpAddr,
    pub advertised_ip: IpAddr,
}

impl RelayAddresses {
    /// None when the integrated relay is off (or its addresses cannot be worked out, which
    /// `check` reports).
    pub fn resolve(settings: &Settings) -> Option<Self> {
        let turn = &settings.turn;
        if !turn.enabled {
            return None;
        }
        let config = settings.turn_config().ok()?;
        let listen = config.listen;
        let relay_ip = match config.relay_ip {
            Some(ip) => ip,
            None if !listen.ip().is_unspecified() => listen.ip(),
            None => primary_address(listen.ip().is_ipv6())?,
        };
        let advertised_ip = config.external_ip.unwrap_or(relay_ip);
        Some(Self { listen, relay_ip, advertised_ip })
    }
}

/// What the relay would detect (`turn::relay_ip`); an IPv4 relay without a route falls back to
/// loopback like the relay does, an IPv6 one has no such fallback (reported by `check`).
fn primary_address(ipv6: bool) -> Option<IpAddr> {
    match crate::turn::relay_ip::detect_primary_ip(ipv6) {
        Ok(ip) => Some(ip),
        Err(_) if !ipv6 => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        Err(_) => None,
    }
}

/// True when a socket can be bound to `ip`, i.e. the address belongs to this machine.
pub fn is_local(ip: IpAddr) -> bool {
    UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// This machine's addresses, for messages (empty when /proc is not readable).
pub fn machine_addresses() -> BTreeSet<IpAddr> {
    let mut found = BTreeSet::new();
    if let Ok(text) = std::fs::read_to_string("/proc/net/fib_trie") {
        found.extend(parse_fib_trie(&text).into_iter().map(IpAddr::V4));
    }
    if let Ok(text) = std::fs::read_to_string("/proc/net/if_inet6") {
        found.extend(parse_if_inet6(&text).into_iter().map(IpAddr::V6));
    }
    found
}

/// The local IPv4 addresses in a `/proc/net/fib_trie`: a `|-- A.B.C.D` leaf followed by a
/// `/32 host LOCAL` line.
pub fn parse_fib_trie(text: &str) -> BTreeSet<Ipv4Addr> {
    let mut found = BTreeSet::new();
    let mut leaf: Option<Ipv4Addr> = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(addr) = line.strip_prefix("|-- ") {
            leaf = addr.trim().parse().ok();
        } else if line.starts_with("/32 host LOCAL") {
            if let Some(addr) = leaf {
                found.insert(addr);
            }
        }
    }
    found
}

/// The addresses in a `/proc/net/if_inet6`: 32 hex digits first on each line.
pub fn parse_if_inet6(text: &str) -> BTreeSet<Ipv6Addr> {
    text.lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|hex| u128::from_str_radix(hex, 16).ok().filter(|_| hex.len() == 32))
        .map(Ipv6Addr::from)
        .collect()
}

/// Private (RFC 1918, CGNAT, ULA) or link-local: what a host behind NAT has on its interface.
fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_private() || v4.is_link_local() || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00 || (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// An address a NAT could forward to us from the internet: not private, loopback, documentation
/// or otherwise reserved.
fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(is_private(ip)
                || v4.is_loopback()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || o[0] >= 240
                || (o[0] == 198 && (o[1] & 0xfe) == 18))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            !(is_private(ip)
                || v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || s[0] == 0x2001 && s[1] == 0xdb8)
        }
    }
}

fn list(addresses: &BTreeSet<IpAddr>) -> String {
    if addresses.is_empty() {
        return "unknown".into();
    }
    addresses.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// The relay's bind address, its advertised address and the public host name, against this
/// machine's addresses.
pub fn check(settings: &Settings, relay: &Option<RelayAddresses>) -> Vec<Finding> {
    let turn = &settings.turn;
    if !turn.enabled {
        return vec![Finding::ok("relay address", "integrated TURN relay disabled ([turn] enabled = false)")];
    }
    let Some(relay) = relay else {
        return vec![Finding::fail(
            "relay address",
            "cannot work out the relay address: set [turn] relay_ip to one address of this machine",
        )];
    };
    let mine = machine_addresses();
    let mut findings = Vec::new();
    if !is_local(relay.relay_ip) {
        findings.push(Finding::fail(
            "relay address",
            format!(
                "relay_ip {} is not an address of this machine (it has {}): relay sockets cannot bind there; set [turn] relay_ip to one of them",
                relay.relay_ip,
                list(&mine)
            ),
        ));
        return findings;
    }
    let advertised = relay.advertised_ip;
    let public_host = turn.public_host.trim();
    let host_is_loopback =
        public_host == "localhost" || public_host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if advertised != relay.relay_ip && !is_local(advertised) {
        // Behind NAT the interface has a private address and the advertised one lives on the NAT
        // (public, or private on a LAN); anything else (loopback, documentation, reserved, or a
        // public relay_ip with another address advertised) cannot be reached.
        if is_private(relay.relay_ip) && (is_global(advertised) || is_private(advertised)) {
            findings.push(Finding::warn(
                "relay address",
                format!(
                    "advertised {advertised} (external_ip) is not on this machine, relay sockets on {}: right only if a NAT forwards {advertised} to {} (UDP {}, the relay ports {}-{}); doctor cannot see that from inside, test from another network with `turnutils_uclient` and `relaychat turn-credentials`",
                    relay.relay_ip, relay.relay_ip, relay.listen.port(), turn.min_port, turn.max_port
                ),
            ));
        } else {
            findings.push(Finding::fail(
                "relay address",
                format!(
                    "advertised relay address {advertised} ([turn] external_ip) is not an address of this machine (it has {}) and not an address a NAT could forward to relay_ip {}: clients would send their media to nowhere; set external_ip to this machine's public address, or leave it empty",
                    list(&mine),
                    relay.relay_ip
                ),
            ));
        }
    } else if advertised.is_loopback() && !host_is_loopback {
        findings.push(Finding::warn(
            "relay address",
            format!(
                "the relay is advertised as {advertised}: only clients on this machine can reach it; set [turn] relay_ip (and external_ip behind NAT) to an address clients can reach"
            ),
        ));
    } else {
        let scope = if advertised.is_loopback() { " (a local-only setup)" } else { "" };
        findings.push(Finding::ok(
            "relay address",
            format!(
                "relay sockets on {}, advertised as {advertised}, an address of this machine{scope}",
                relay.relay_ip
            ),
        ));
    }
    findings.push(check_public_host(public_host, advertised, &mine));
    findings
}

/// The DNS name put in the TURN URLs should lead to this machine.
fn check_public_host(host: &str, advertised: IpAddr, mine: &BTreeSet<IpAddr>) -> Finding {
    let check = "public host";
    if host.is_empty() {
        return Finding::ok(
            check,
            "[turn] public_host not set: TURN URLs name whatever host each browser used to reach the page",
        );
    }
    let resolved: BTreeSet<IpAddr> = match (host, 0).to_socket_addrs() {
        Ok(found) => found.map(|a| a.ip()).collect(),
        Err(e) => {
            return Finding::warn(
                check,
                format!("{host} does not resolve ({e}): browsers cannot reach TURN by that name until its DNS A/AAAA records exist"),
            )
        }
    };
    if resolved.contains(&advertised) || resolved.iter().any(|ip| mine.contains(ip) || is_local(*ip)) {
        Finding::ok(check, format!("{host} resolves to {}", list(&resolved)))
    } else {
        Finding::warn(
            check,
            format!(
                "{host} resolves to {}, neither this machine nor the advertised relay address {advertised}: fine behind NAT, otherwise fix the DNS records",
                list(&resolved)
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fib_trie_local_leaves_are_found() {
        let text = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n     +-- 127.0.0.0/8 2 0 2\n        |-- 127.0.0.0\n           /8 host LOCAL\n        |-- 127.0.0.1\n           /32 host LOCAL\n     |-- 10.1.2.3\n        /32 host LOCAL\n     |-- 10.1.2.255\n        /32 link BROADCAST\n";
        let found = parse_fib_trie(text);
        assert_eq!(found, ["127.0.0.1", "10.1.2.3"].iter().map(|s| s.parse().unwrap()).collect());
    }

    #[test]
    fn if_inet6_lines_are_read() {
        let text = "00000000000000000000000000000001 01 80 10 80       lo\nfe800000000000000000000000000001 02 40 20 80     eth0\n";
        let found = parse_if_inet6(text);
        assert!(found.contains(&"::1".parse().unwrap()));
        assert!(found.contains(&"fe80::1".parse().unwrap()));
    }

    #[test]
    fn nat_shapes() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(is_private(ip("10.0.0.5")) && is_private(ip("100.64.1.1")) && is_private(ip("fd00::1")));
        assert!(is_global(ip("203.0.114.1")) && is_global(ip("2a01:4f8::1")));
        assert!(!is_global(ip("192.0.2.10")) && !is_global(ip("127.0.0.1")) && !is_global(ip("2001:db8::1")));
        assert!(is_local(ip("127.0.0.1")));
    }
}
