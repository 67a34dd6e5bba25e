//! Relayed transport addresses: binding relay sockets in the port range, the peer policy every
//! relayed datagram passes, and [`OwnRelays`].
//!
//! [`RelaySocket::send_to_peer`] drops datagrams to denied peers and [`PeerGuard::admits_from`]
//! datagrams from them (both counted), so the policy holds whatever a client's permissions say.
//!
//! [`OwnRelays`] is the live set of relayed addresses this server allocated (the advertised
//! address and the local one). Relay-to-relay traffic to our own advertised address is sent to the
//! local address directly, and arrives rewritten to the advertised one, so relay-to-relay media
//! works behind NAT without hairpinning (and IP-keyed permissions still match).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use tokio::net::UdpSocket;

use crate::addr::canonical_addr;
use crate::turn::counters::RelayCounters;
use crate::turn::datagram_batch::{BatchSender, SendOutcome};
use crate::turn::policy::{PeerPolicy, Verdict};

/// Socket buffers of each relay socket: a few hundred milliseconds of a video call's bitrate.
const RELAY_SOCKET_BUFFER: usize = 512 * 1024;
/// Random ports tried before a sequential scan of the range.
const RANDOM_PORT_ATTEMPTS: usize = 64;

/// The relayed addresses of live allocations: advertised address <-> local bound address.
#[derive(Default)]
pub struct OwnRelays {
    by_advertised: RwLock<HashMap<SocketAddr, SocketAddr>>,
    by_local: RwLock<HashMap<SocketAddr, SocketAddr>>,
}

impl OwnRelays {
    fn insert(&self, advertised: SocketAddr, local: SocketAddr) {
        self.by_advertised.write().unwrap_or_else(|e| e.into_inner()).insert(advertised, local);
        self.by_local.write().unwrap_or_else(|e| e.into_inner()).insert(local, advertised);
    }

    fn remove(&self, advertised: SocketAddr, local: SocketAddr) {
        self.by_advertised.write().unwrap_or_else(|e| e.into_inner()).remove(&advertised);
        self.by_local.write().unwrap_or_else(|e| e.into_inner()).remove(&local);
    }

    /// True if `addr` (canonical) is a relayed address we allocated, in either spelling.
    pub fn contains(&self, addr: SocketAddr) -> bool {
        self.by_advertised.read().unwrap_or_else(|e| e.into_inner()).contains_key(&addr)
            || self.by_local.read().unwrap_or_else(|e| e.into_inner()).contains_key(&addr)
    }

    /// Where to actually send a datagram meant for `advertised` (our own relays: locally).
    fn local_for(&self, advertised: SocketAddr) -> Option<SocketAddr> {
        self.by_advertised.read().unwrap_or_else(|e| e.into_inner()).get(&advertised).copied()
    }

    /// How a datagram from our own relay at `local` is presented (its advertised address).
    fn advertised_for(&self, local: SocketAddr) -> Option<SocketAddr> {
        self.by_local.read().unwrap_or_else(|e| e.into_inner()).get(&local).copied()
    }

    pub fn len(&self) -> usize {
        self.by_advertised.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Cluster mode: the relay addresses of every node of the cluster (from the node registry,
/// refreshed with each heartbeat). A peer on one of these IPs, in the relay port range, counts as
/// one of our relays, so relay-to-relay media works between nodes; the policy's own-service
/// denials still hold, and nothing else opens. Empty outside cluster mode.
pub struct ClusterRelays {
    ips: RwLock<Vec<IpAddr>>,
    ports: std::ops::RangeInclusive<u16>,
}

impl ClusterRelays {
    pub fn new(ports: std::ops::RangeInclusive<u16>) -> Self {
        Self { ips: RwLock::new(Vec::new()), ports }
    }

    /// The nodes' relay IPs as the registry lists them now.
    pub fn set(&self, ips: impl IntoIterator<Item = IpAddr>) {
        let mut ips: Vec<IpAddr> =
            ips.into_iter().map(|ip| canonical_addr(SocketAddr::new(ip, 0)).ip()).collect();
        ips.sort();
        ips.dedup();
        *self.ips.write().unwrap_or_else(|e| e.into_inner()) = ips;
    }

    /// `addr` (canonical) is a relayed address some node of the cluster could have allocated.
    pub fn contains(&self, addr: SocketAddr) -> bool {
        self.ports.contains(&addr.port())
            && self.ips.read().unwrap_or_else(|e| e.into_inner()).contains(&addr.ip())
    }
}

/// What every relay socket shares: the peer policy with the live set of our own relayed
/// addresses (and, clustered, the other nodes' relays), the counters, and the bandwidth cap.
pub struct PeerGuard {
    pub policy: PeerPolicy,
    pub own: Arc<OwnRelays>,
    pub cluster: Arc<ClusterRelays>,
    pub counters: Arc<RelayCounters>,
    /// Bytes per second per allocation, both directions together; 0 = unlimited.
    pub bandwidth_bytes_per_s: u64,
}

impl PeerGuard {
    /// One of our relays, or (clustered) another node's, but never one of our own listeners.
    fn is_relay(&self, addr: SocketAddr) -> bool {
        self.own.contains(addr) || (self.cluster.contains(addr) && !self.policy.is_own_service(addr))
    }

    /// True if the policy lets `peer` (canonical) be sent to; a denial is counted.
    pub fn allows(&self, peer: SocketAddr) -> bool {
        self.judged(self.policy.check(peer, |a| self.is_relay(a)))
    }

    /// [`Self::allows`] for `relay`, known to be one of this server's relayed addresses (the
    /// hand-off found its allocation by it): the same verdict without looking the address up in
    /// [`OwnRelays`] again, which took two shared locks per relayed datagram.
    pub fn allows_own_relay(&self, relay: SocketAddr) -> bool {
        // Skipping the lookup is only sound for our own relays: every test run checks it.
        debug_assert!(self.own.contains(relay), "{relay} is not one of this server's relays");
        self.judged(self.policy.check(relay, |_| true))
    }

    /// The verdict as a yes or no; a denial is counted.
    fn judged(&self, verdict: Verdict) -> bool {
        if !verdict.is_allowed() {
            RelayCounters::bump(&self.counters.denied_peers);
            tracing::debug!(?verdict, "relay dropped a datagram for a denied peer");
        }
        verdict.is_allowed()
    }

    /// True if every address would be accepted (used to answer 403 up front).
    pub fn permits(&self, peer: SocketAddr) -> bool {
        self.policy.check(peer, |a| self.is_relay(a)).is_allowed()
    }

    /// A datagram arrived on a relay socket from `from`: the peer it counts as (our own relays
    /// by their advertised address, canonical), if the policy lets it in.
    pub fn admits_from(&self, from: SocketAddr) -> Option<SocketAddr> {
        let from = canonical_addr(from);
        let from = self.own.advertised_for(from).unwrap_or(from);
        self.allows(from).then_some(from)
    }
}

/// One relayed transport address: a UDP socket bound in the port range. Dropping it releases
/// the address (and its entry in [`OwnRelays`]).
pub struct RelaySocket {
    socket: UdpSocket,
    local: SocketAddr,
    advertised: SocketAddr,
    guard: Arc<PeerGuard>,
}

impl RelaySocket {
    /// The address peers send to (XOR-RELAYED-ADDRESS).
    pub fn advertised(&self) -> SocketAddr {
        self.advertised
    }

    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    pub fn guard(&self) -> &Arc<PeerGuard> {
        &self.guard
    }

    /// Sends `payload` to `peer` from the relayed address, unless the policy denies the peer.
    /// Returns whether it left (a full socket buffer waits; a send error is a lost datagram).
    pub async fn send_to_peer(&self, payload: &[u8], peer: SocketAddr) -> bool {
        let peer = canonical_addr(peer);
        if !self.guard.allows(peer) {
            return false;
        }
        let destination = self.guard.own.local_for(peer).unwrap_or(peer);
        match self.socket.send_to(payload, destination).await {
            Ok(_) => true,
            Err(err) => {
                tracing::trace!(%err, "relay socket send error");
                false
            }
        }
    }

    /// Sends `payloads` to `peer` in order from the relayed address, with `sender`'s batched
    /// system calls, unless the policy denies the peer (each datagram counted as denied).
    pub async fn send_many_to_peer(
        &self,
        sender: &BatchSender,
        payloads: &[&[u8]],
        peer: SocketAddr,
    ) -> SendOutcome {
        let peer = canonical_addr(peer);
        if payloads.is_empty() {
            return SendOutcome::default();
        }
        if !self.guard.allows(peer) {
            // `allows` counted one denied datagram; the others of the run are denied too.
            RelayCounters::add(&self.guard.counters.denied_peers, (payloads.len() - 1) as u64);
            return SendOutcome::default();
        }
        let destination = self.guard.own.local_for(peer).unwrap_or(peer);
        sender.send_many(&self.socket, destination, payloads).await
    }
}

impl Drop for RelaySocket {
    fn drop(&mut self) {
        self.guard.own.remove(self.advertised, self.local);
    }
}

/// One address family the relay serves: where relay sockets bind, and what they advertise.
#[derive(Debug, Clone, Copy)]
pub struct RelayAddress {
    pub bind: IpAddr,
    pub advertised: IpAddr,
}

/// Binds relay sockets in `min_port..=max_port` on the address of the family asked for.
pub struct RelayBinder {
    pub ipv4: Option<RelayAddress>,
    pub ipv6: Option<RelayAddress>,
    pub min_port: u16,
    pub max_port: u16,
    pub guard: Arc<PeerGuard>,
}

/// Why no relay socket was bound.
#[derive(Debug)]
pub enum BindFailure {
    /// The relay has no address of that family: 440.
    FamilyNotServed,
    /// No free port (or the kernel refused): 508.
    NoPort(io::Error),
}

impl RelayBinder {
    pub fn serves(&self, ipv6: bool) -> bool {
        if ipv6 {
            self.ipv6.is_some()
        } else {
            self.ipv4.is_some()
        }
    }

    /// A new relay socket of the family asked for; on an even port if `even_port`.
    pub fn bind(&self, ipv6: bool, even_port: bool) -> Result<RelaySocket, BindFailure> {
        let family = if ipv6 { self.ipv6 } else { self.ipv4 };
        let family = family.ok_or(BindFailure::FamilyNotServed)?;
        let socket = self.bind_in_range(family.bind, even_port).map_err(BindFailure::NoPort)?;
        let local = socket.local_addr().map_err(BindFailure::NoPort)?;
        let advertised = SocketAddr::new(family.advertised, local.port());
        self.guard.own.insert(advertised, local);
        Ok(RelaySocket { socket, local, advertised, guard: self.guard.clone() })
    }

    fn bind_port(ip: IpAddr, port: u16) -> io::Result<UdpSocket> {
        let addr = SocketAddr::new(ip, port);
        let domain = socket2::Domain::for_address(addr);
        let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        // Best effort: the kernel caps these at net.core.{r,w}mem_max.
        let _ = socket.set_recv_buffer_size(RELAY_SOCKET_BUFFER);
        let _ = socket.set_send_buffer_size(RELAY_SOCKET_BUFFER);
        UdpSocket::from_std(socket.into())
    }

    fn bind_in_range(&self, ip: IpAddr, even_port: bool) -> io::Result<UdpSocket> {
        let span = u32::from(self.max_port) - u32::from(self.min_port) + 1;
        let acceptable = |port: u16| !even_port || port % 2 == 0;
        for _ in 0..RANDOM_PORT_ATTEMPTS.min(span as usize) {
            let port = self.min_port + (rand::random::<u32>() % span) as u16;
            if acceptable(port) {
                if let Ok(socket) = Self::bind_port(ip, port) {
                    return Ok(socket);
                }
            }
        }
        let start = rand::random::<u32>() % span;
        for i in 0..span {
            let port = self.min_port + ((start + i) % span) as u16;
            if acceptable(port) {
                if let Ok(socket) = Self::bind_port(ip, port) {
                    return Ok(socket);
                }
            }
        }
        Err(io::Error::new(io::ErrorKind::AddrInUse, "no free relay port in turn.min_port..=turn.max_port"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PeerPolicyKind;

    #[test]
    fn an_own_relay_hop_gets_the_verdict_the_full_lookup_gives() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        let (relay, other) = (addr("127.0.0.1:50000"), addr("127.0.0.1:50001"));
        for kind in [PeerPolicyKind::OwnRelays, PeerPolicyKind::Public, PeerPolicyKind::Any] {
            let guard = PeerGuard {
                // Loopback denied outright: our own relays still pass, as with the lookup.
                policy: PeerPolicy::new(kind, &[], &["127.0.0.0/8".parse().unwrap()]),
                own: Arc::new(OwnRelays::default()),
                cluster: Arc::new(ClusterRelays::new(50000..=50999)),
                counters: Arc::new(RelayCounters::default()),
                bandwidth_bytes_per_s: 0,
            };
            guard.own.insert(relay, relay);
            assert!(guard.allows(relay) && guard.allows_own_relay(relay), "{kind:?}");
            assert!(!guard.allows(other), "{kind:?}: not a relay of ours, denied by the lookup");
            assert_eq!(RelayCounters::get(&guard.counters.denied_peers), 1);
        }
    }

    #[test]
    fn cluster_relays_are_the_registry_ips_in_the_relay_port_range_only() {
        let relays = ClusterRelays::new(50000..=50999);
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(!relays.contains(addr("192.0.2.7:50001")), "empty until the registry is read");
        relays.set(["192.0.2.7".parse().unwrap(), "::ffff:198.51.100.9".parse().unwrap()]);
        assert!(relays.contains(addr("192.0.2.7:50001")));
        assert!(relays.contains(addr("198.51.100.9:50999")), "IPv4-mapped spelled canonically");
        assert!(!relays.contains(addr("192.0.2.7:3478")), "not a relay port: the node's listener");
        assert!(!relays.contains(addr("192.0.2.8:50001")), "not a node");
        relays.set([]);
        assert!(!relays.contains(addr("192.0.2.7:50001")), "a node gone from the registry closes");
    }
}
