//! Peer policy: which peer addresses the relay may exchange data with.
//!
//! The relay must never become a proxy into private networks. Every decision is a pure function
//! of a canonicalized address (IPv4-mapped IPv6 `::ffff:a.b.c.d` is unmapped to IPv4 first:
//! coturn's CVE-2020-26262 and CVE-2026-27624 were bypasses of exactly that), the configured kind,
//! the operator's CIDR lists and the set of relay addresses this server allocated.
//!
//! Order of the rules (first match wins):
//! 0. port 0: denied, whatever the kind and the lists say. RFC 8656 does not forbid it, but no
//!    peer listens there, and the kernel refuses a send to it with `EINVAL`, the same error some
//!    kernels give for a batched send they cannot do: a client must not be able to make the
//!    relay's send path fail on purpose (`datagram_batch::send`);
//! 1. one of our own relay addresses (exact IP and port): allowed, always, so relay-to-relay media
//!    works on localhost and LAN deployments;
//! 2. one of the server's own listening sockets (the TURN UDP listener on any of our addresses):
//!    denied, whatever the kind and the lists say: relaying into our own listener would let a
//!    client loop requests through the relay or make them appear to come from the relay;
//! 3. `denied_peer_cidrs`: denied (an explicit operator deny always wins);
//! 4. `allowed_peer_cidrs`: allowed (punches a hole, also under `own-relays`);
//! 5. `own-relays`: denied; `any`: allowed; `public`: denied if in the built-in deny list below.

use std::net::SocketAddr;

use ipnet::IpNet;

use crate::addr::canonical_addr;
use crate::config::PeerPolicyKind;

/// Special-purpose ranges denied under `public` (private, loopback, link-local and cloud metadata,
/// documentation, benchmarking, multicast, reserved, and the IPv6 ranges that embed or tunnel
/// IPv4, which would otherwise reach private IPv4 space through a translator).
pub const PUBLIC_DENY_LIST: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "255.255.255.255/32",
    "::/128",
    "::1/128",
    // Deprecated IPv4-compatible addresses (::a.b.c.d); not in the issue's list, denied for the
    // same reason as ::ffff:0:0/96.
    "::/96",
    "64:ff9b::/96",
    "64:ff9b:1::/48",
    "::ffff:0:0/96",
    "100::/64",
    "2001::/23",
    "2001:db8::/32",
    "2002::/16",
    "fc00::/7",
    "fe80::/10",
    "fec0::/10",
    "ff00::/8",
];

/// Why a peer was allowed or denied (for counters and debug logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    OwnRelay,
    AllowedCidr,
    Allowed,
    DeniedPortZero,
    DeniedOwnService,
    DeniedCidr,
    DeniedOwnRelaysOnly,
    DeniedSpecialRange,
}

impl Verdict {
    pub fn is_allowed(self) -> bool {
        matches!(self, Verdict::OwnRelay | Verdict::AllowedCidr | Verdict::Allowed)
    }
}

/// The configured policy, with every list parsed once at start-up.
#[derive(Debug, Clone)]
pub struct PeerPolicy {
    kind: PeerPolicyKind,
    allowed: Vec<IpNet>,
    denied: Vec<IpNet>,
    builtin_denied: Vec<IpNet>,
    /// The server's own listening sockets a relayed datagram could reach.
    own_services: Vec<SocketAddr>,
}

impl PeerPolicy {
    /// Builds the policy from the parsed `[turn]` lists.
    pub fn new(kind: PeerPolicyKind, allowed: &[IpNet], denied: &[IpNet]) -> Self {
        PeerPolicy {
            kind,
            allowed: allowed.iter().copied().map(canonical_net).collect(),
            denied: denied.iter().copied().map(canonical_net).collect(),
            builtin_denied: PUBLIC_DENY_LIST
                .iter()
                .map(|s| s.parse::<IpNet>().expect("built-in deny list is valid"))
                .collect(),
            own_services: Vec::new(),
        }
    }

    /// Denies the server's own listening sockets (canonical addresses) under every kind.
    pub fn with_own_services(mut self, services: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.own_services = services.into_iter().map(canonical_addr).collect();
        self
    }

    /// `addr` (canonical) is one of this server's own listening sockets.
    pub fn is_own_service(&self, addr: SocketAddr) -> bool {
        self.own_services.contains(&addr)
    }

    pub fn kind(&self) -> PeerPolicyKind {
        self.kind
    }

    /// Decides for `peer` (canonicalized here); `is_own_relay` answers for canonical addresses.
    pub fn check(&self, peer: SocketAddr, is_own_relay: impl Fn(SocketAddr) -> bool) -> Verdict {
        let peer = canonical_addr(peer);
        if peer.port() == 0 {
            return Verdict::DeniedPortZero;
        }
        if is_own_relay(peer) {
            return Verdict::OwnRelay;
        }
        if self.own_services.contains(&peer) {
            return Verdict::DeniedOwnService;
        }
        let ip = peer.ip();
        if self.denied.iter().any(|net| net.contains(&ip)) {
            return Verdict::DeniedCidr;
        }
        if self.allowed.iter().any(|net| net.contains(&ip)) {
            return Verdict::AllowedCidr;
        }
        match self.kind {
            PeerPolicyKind::Any => Verdict::Allowed,
            PeerPolicyKind::OwnRelays => Verdict::DeniedOwnRelaysOnly,
            PeerPolicyKind::Public => {
                if self.builtin_denied.iter().any(|net| net.contains(&ip)) {
                    Verdict::DeniedSpecialRange
                } else {
                    Verdict::Allowed
                }
            }
        }
    }
}

/// A configured `::ffff:10.0.0.0/104` means the IPv4 net `10.0.0.0/8` (we compare canonical IPs).
fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net {
        if let Some(v4) = v6.network().to_ipv4_mapped() {
            if v6.prefix_len() >= 96 {
                if let Ok(n) = ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96) {
                    return IpNet::V4(n);
                }
            }
        }
    }
    net
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public() -> PeerPolicy {
        PeerPolicy::new(PeerPolicyKind::Public, &[], &[])
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| crate::config::parse_net(s).unwrap()).collect()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn no_relays(_: SocketAddr) -> bool {
        false
    }

    #[test]
    fn the_servers_own_listener_is_denied_under_every_kind() {
        let listener = addr("203.0.113.10:3478");
        for kind in [PeerPolicyKind::Any, PeerPolicyKind::Public, PeerPolicyKind::OwnRelays] {
            let policy = PeerPolicy::new(kind, &nets(&["203.0.113.0/24"]), &[]).with_own_services([listener]);
            assert_eq!(policy.check(listener, no_relays), Verdict::DeniedOwnService);
            assert_eq!(
                policy.check(addr("[::ffff:203.0.113.10]:3478"), no_relays),
                Verdict::DeniedOwnService
            );
            assert!(policy.check(addr("203.0.113.10:3479"), no_relays) != Verdict::DeniedOwnService);
        }
    }

    #[test]
    fn port_zero_is_denied_under_every_kind_and_list() {
        for kind in [PeerPolicyKind::Any, PeerPolicyKind::Public, PeerPolicyKind::OwnRelays] {
            let p = PeerPolicy::new(kind, &nets(&["8.8.8.8", "2606:4700::/32"]), &[]);
            for peer in ["8.8.8.8:0", "[2606:4700::1111]:0", "[::ffff:8.8.8.8]:0", "127.0.0.1:0"] {
                assert_eq!(p.check(addr(peer), |_| true), Verdict::DeniedPortZero, "{kind:?} {peer}");
            }
            assert!(p.check(addr("8.8.8.8:1"), no_relays).is_allowed(), "{kind:?}: port 1 is a port");
        }
    }

    #[test]
    fn newer_special_ranges_are_denied_under_public() {
        for peer in ["192.88.99.1:5000", "[64:ff9b:1::a00:1]:5000", "[fec0::1]:5000"] {
            assert_eq!(public().check(addr(peer), no_relays), Verdict::DeniedSpecialRange, "{peer}");
        }
    }

    #[test]
    fn public_denies_every_special_range_of_the_issue() {
        let p = public();
        // One address inside each range, at its start and at its end where that matters.
        let denied = [
            "0.0.0.0",
            "0.255.255.255",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.1",
            "100.127.255.255",
            "127.0.0.1",
            "127.255.255.254",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.1",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.255",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "64:ff9b::a00:1",
            "::ffff:0:1",
            "100::1",
            "2001::1",
            "2001:1ff::1",
            "2001:db8::1",
            "2002::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::10.0.0.1",
        ];
        for ip in denied {
            let peer = SocketAddr::new(ip.parse().unwrap(), 5000);
            assert_eq!(p.check(peer, no_relays), Verdict::DeniedSpecialRange, "{ip} must be denied");
        }
    }

    #[test]
    fn public_allows_public_addresses_next_to_the_ranges() {
        let p = public();
        let allowed = [
            "1.1.1.1",
            "8.8.8.8",
            "11.0.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "126.255.255.255",
            "128.0.0.1",
            "169.253.255.255",
            "172.15.255.255",
            "172.32.0.1",
            "192.0.1.1",
            "192.167.1.1",
            "198.17.255.255",
            "198.20.0.1",
            "223.255.255.255",
            "2001:200::1",
            "2a00:1450::1",
            "2606:4700::1111",
        ];
        for ip in allowed {
            let peer = SocketAddr::new(ip.parse().unwrap(), 5000);
            assert_eq!(p.check(peer, no_relays), Verdict::Allowed, "{ip} must be allowed");
        }
    }

    #[test]
    fn mapped_ipv6_cannot_bypass_the_deny_list() {
        let p = public();
        for ip in ["::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "::ffff:192.168.0.1"] {
            let peer = SocketAddr::new(ip.parse().unwrap(), 80);
            assert!(!p.check(peer, no_relays).is_allowed(), "{ip} must be denied");
        }
        // A mapped public address is that public address.
        assert!(p.check(addr("[::ffff:8.8.8.8]:53"), no_relays).is_allowed());
    }

    #[test]
    fn own_relays_are_allowed_even_in_denied_ranges_and_by_exact_port() {
        let own = addr("127.0.0.1:50000");
        let is_own = |a: SocketAddr| a == own;
        for kind in [PeerPolicyKind::OwnRelays, PeerPolicyKind::Public, PeerPolicyKind::Any] {
            let p = PeerPolicy::new(kind, &[], &nets(&["127.0.0.0/8"]));
            assert_eq!(p.check(own, is_own), Verdict::OwnRelay);
            // Through an IPv4-mapped spelling too.
            assert_eq!(p.check(addr("[::ffff:127.0.0.1]:50000"), is_own), Verdict::OwnRelay);
            // Another port on the same IP is not a relay of ours.
            assert!(!p.check(addr("127.0.0.1:50001"), is_own).is_allowed());
        }
    }

    #[test]
    fn own_relays_policy_denies_everything_else() {
        let p = PeerPolicy::new(PeerPolicyKind::OwnRelays, &[], &[]);
        for a in ["8.8.8.8:53", "127.0.0.2:9", "[::ffff:127.0.0.1]:9", "[2606:4700::1111]:443"] {
            assert_eq!(p.check(addr(a), no_relays), Verdict::DeniedOwnRelaysOnly, "{a}");
        }
    }

    #[test]
    fn any_allows_private_ranges_but_honours_explicit_denies() {
        let p = PeerPolicy::new(PeerPolicyKind::Any, &[], &nets(&["10.0.0.0/8"]));
        assert!(p.check(addr("127.0.0.2:9"), no_relays).is_allowed());
        assert!(p.check(addr("192.168.1.1:9"), no_relays).is_allowed());
        assert_eq!(p.check(addr("10.1.1.1:9"), no_relays), Verdict::DeniedCidr);
        assert_eq!(p.check(addr("[::ffff:10.1.1.1]:9"), no_relays), Verdict::DeniedCidr);
    }

    #[test]
    fn operator_lists_adjust_public_and_deny_wins() {
        let p = PeerPolicy::new(
            PeerPolicyKind::Public,
            &nets(&["10.1.0.0/16", "10.1.2.3"]),
            &nets(&["10.1.2.0/24", "8.8.8.8"]),
        );
        assert_eq!(p.check(addr("10.1.9.9:1"), no_relays), Verdict::AllowedCidr);
        assert_eq!(p.check(addr("10.1.2.3:1"), no_relays), Verdict::DeniedCidr);
        assert_eq!(p.check(addr("8.8.8.8:53"), no_relays), Verdict::DeniedCidr);
        assert_eq!(p.check(addr("10.2.0.1:1"), no_relays), Verdict::DeniedSpecialRange);
        // An allowed CIDR opens a hole under own-relays as well.
        let p = PeerPolicy::new(PeerPolicyKind::OwnRelays, &nets(&["192.0.2.10"]), &[]);
        assert_eq!(p.check(addr("192.0.2.10:3478"), no_relays), Verdict::AllowedCidr);
    }

    #[test]
    fn mapped_cidrs_in_config_match_ipv4_peers() {
        let p = PeerPolicy::new(PeerPolicyKind::Any, &[], &nets(&["::ffff:10.0.0.0/104"]));
        assert_eq!(p.check(addr("10.9.9.9:1"), no_relays), Verdict::DeniedCidr);
    }

    #[test]
    fn ipv6_peers_are_classified_range_by_range_at_both_edges() {
        let p = public();
        let denied = [
            ("loopback", "::1"),
            ("unspecified", "::"),
            ("link-local, first", "fe80::"),
            ("link-local, last", "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            ("unique local, first", "fc00::"),
            ("unique local, last", "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            ("IPv4-mapped private", "::ffff:192.168.1.1"),
            ("IPv4-mapped loopback", "::ffff:127.0.0.1"),
            ("NAT64 of a private address", "64:ff9b::a00:1"),
            ("NAT64 of a public address (a translator reaches any IPv4)", "64:ff9b::808:808"),
            ("NAT64 local-use", "64:ff9b:1::1"),
            ("documentation, first", "2001:db8::"),
            ("documentation, last", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"),
            ("multicast, link scope", "ff02::1"),
            ("multicast, global scope", "ff0e::101"),
            ("6to4", "2002:a00:1::1"),
            ("Teredo", "2001::1"),
        ];
        for (what, ip) in denied {
            let peer = SocketAddr::new(ip.parse().unwrap(), 5000);
            assert_eq!(p.check(peer, no_relays), Verdict::DeniedSpecialRange, "{what}: {ip}");
        }
        let allowed = [
            ("global unicast", "2a00:1450:4001::200e"),
            ("just below unique local", "fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            ("just past the documentation /32", "2001:db9::1"),
            ("IPv4-mapped public", "::ffff:8.8.8.8"),
            ("just above NAT64's /96", "64:ff9b:0:0:0:1::1"),
        ];
        for (what, ip) in allowed {
            let peer = SocketAddr::new(ip.parse().unwrap(), 5000);
            assert_eq!(p.check(peer, no_relays), Verdict::Allowed, "{what}: {ip}");
        }
        // The IPv6 loopback is one of our own services' addresses like 127.0.0.1 is.
        let listener = addr("[::1]:3478");
        let p = PeerPolicy::new(PeerPolicyKind::Any, &[], &[]).with_own_services([listener]);
        assert_eq!(p.check(listener, no_relays), Verdict::DeniedOwnService);
        assert!(p.check(addr("[::1]:3479"), no_relays).is_allowed(), "`any` allows loopback");
    }
}
