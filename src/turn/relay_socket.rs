//! Relayed transport addresses: allocating relay sockets, and the `Conn` that guards each one.
//!
//! The crate has no permission hook, so the peer policy is enforced where every relayed datagram
//! passes: the relay socket our [`RelayAllocator`] hands the crate. [`RelaySocket::send_to`] drops
//! datagrams to denied peers, [`RelaySocket::recv_from`] drops datagrams from them, both count
//! them, meter bytes and packets, and apply the optional per-allocation bandwidth cap.
//!
//! [`OwnRelays`] is the live set of relayed addresses this server allocated (the advertised
//! address and the local one). Relay-to-relay traffic to our own advertised address is sent to the
//! local address directly, and arrives rewritten to the advertised one, so relay-to-relay media
//! works behind NAT without hairpinning (and the crate's IP-keyed permissions still match).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use async_trait::async_trait;
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use turn::relay::RelayAddressGenerator;
use webrtc_util::Conn;

use crate::addr::canonical_addr;
use crate::turn::counters::RelayCounters;
use crate::turn::policy::PeerPolicy;

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

/// What every relay socket shares: the peer policy with the live set of our own relayed
/// addresses, the counters, and the bandwidth cap.
pub struct PeerGuard {
    pub policy: PeerPolicy,
    pub own: Arc<OwnRelays>,
    pub counters: Arc<RelayCounters>,
    /// Bytes per second per allocation, both directions together; 0 = unlimited.
    pub bandwidth_bytes_per_s: u64,
}

impl PeerGuard {
    fn allows(&self, peer: SocketAddr) -> bool {
        let verdict = self.policy.check(peer, |a| self.own.contains(a));
        if !verdict.is_allowed() {
            RelayCounters::bump(&self.counters.denied_peers);
            tracing::debug!(?verdict, "relay dropped a datagram for a denied peer");
        }
        verdict.is_allowed()
    }

    /// True if every address would be accepted (used to answer 403 up front).
    pub fn permits(&self, peer: SocketAddr) -> bool {
        self.policy.check(peer, |a| self.own.contains(a)).is_allowed()
    }
}

/// A token bucket holding at most one second of the configured rate.
struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn take(&mut self, n: usize) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.rate);
        self.last = now;
        if self.tokens >= n as f64 {
            self.tokens -= n as f64;
            true
        } else {
            false
        }
    }
}

/// One allocation's relay socket, guarded by the peer policy.
pub struct RelaySocket {
    socket: UdpSocket,
    local: SocketAddr,
    advertised: SocketAddr,
    guard: Arc<PeerGuard>,
    bucket: Option<Mutex<Bucket>>,
    closed: AtomicBool,
    close_signal: Notify,
}

impl RelaySocket {
    fn new(socket: UdpSocket, local: SocketAddr, advertised: SocketAddr, guard: Arc<PeerGuard>) -> Self {
        let rate = guard.bandwidth_bytes_per_s as f64;
        let bucket = (rate > 0.0).then(|| Mutex::new(Bucket { rate, tokens: rate, last: Instant::now() }));
        guard.own.insert(advertised, local);
        RelaySocket {
            socket,
            local,
            advertised,
            guard,
            bucket,
            closed: AtomicBool::new(false),
            close_signal: Notify::new(),
        }
    }

    fn within_bandwidth(&self, n: usize) -> bool {
        let Some(bucket) = &self.bucket else { return true };
        let ok = bucket.lock().unwrap_or_else(|e| e.into_inner()).take(n);
        if !ok {
            RelayCounters::bump(&self.guard.counters.bandwidth_drops);
        }
        ok
    }

    fn closed_error() -> webrtc_util::Error {
        webrtc_util::Error::Io(io::Error::new(io::ErrorKind::NotConnected, "relay socket closed").into())
    }

    fn shut(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.guard.own.remove(self.advertised, self.local);
            self.close_signal.notify_waiters();
        }
    }
}

impl Drop for RelaySocket {
    fn drop(&mut self) {
        self.shut();
    }
}

#[async_trait]
impl Conn for RelaySocket {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Err(webrtc_util::Error::Other("relay sockets are not connected".into()))
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let closed = self.close_signal.notified();
        tokio::pin!(closed);
        closed.as_mut().enable();
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Err(Self::closed_error());
            }
            let (n, from) = tokio::select! {
                r = recv_whole_datagram(&self.socket, buf) => match r {
                    Ok(Some(v)) => v,
                    // Larger than the crate's buffer (its relay MTU, 1500 bytes): dropped and
                    // counted rather than handed on cut short, which would corrupt the media.
                    Ok(None) => {
                        RelayCounters::bump(&self.guard.counters.oversize_drops);
                        continue;
                    }
                    // ICMP errors and the like must not end the allocation (the crate would
                    // drop it silently); only close() ends this loop.
                    Err(err) => {
                        tracing::debug!(%err, "relay socket receive error");
                        continue;
                    }
                },
                _ = &mut closed => return Err(Self::closed_error()),
            };
            let from = canonical_addr(from);
            let from = self.guard.own.advertised_for(from).unwrap_or(from);
            if !self.guard.allows(from) || !self.within_bandwidth(n) {
                continue;
            }
            RelayCounters::bump(&self.guard.counters.relayed_packets_in);
            RelayCounters::add(&self.guard.counters.relayed_bytes_in, n as u64);
            return Ok((n, from));
        }
    }

    async fn send(&self, _buf: &[u8]) -> webrtc_util::Result<usize> {
        Err(webrtc_util::Error::Other("relay sockets need a destination".into()))
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Self::closed_error());
        }
        let target = canonical_addr(target);
        // Denied or over the cap: dropped like a lost datagram (the crate treats a short write
        // as an error, so report the full length).
        if !self.guard.allows(target) || !self.within_bandwidth(buf.len()) {
            return Ok(buf.len());
        }
        let destination = self.guard.own.local_for(target).unwrap_or(target);
        let n = self.socket.send_to(buf, destination).await?;
        RelayCounters::bump(&self.guard.counters.relayed_packets_out);
        RelayCounters::add(&self.guard.counters.relayed_bytes_out, n as u64);
        Ok(n)
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        self.shut();
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// The crate's `RelayAddressGenerator`: binds `relay_ip` in `min_port..=max_port` and advertises
/// `external_ip` (or `relay_ip`).
pub struct RelayAllocator {
    pub relay_ip: IpAddr,
    pub advertised_ip: IpAddr,
    pub min_port: u16,
    pub max_port: u16,
    pub guard: Arc<PeerGuard>,
}

impl RelayAllocator {
    async fn bind(&self, port: u16) -> io::Result<UdpSocket> {
        let addr = SocketAddr::new(self.relay_ip, port);
        let domain = socket2::Domain::for_address(addr);
        let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        // Best effort: the kernel caps these at net.core.{r,w}mem_max.
        let _ = socket.set_recv_buffer_size(RELAY_SOCKET_BUFFER);
        let _ = socket.set_send_buffer_size(RELAY_SOCKET_BUFFER);
        UdpSocket::from_std(socket.into())
    }

    async fn bind_in_range(&self) -> io::Result<UdpSocket> {
        let span = u32::from(self.max_port) - u32::from(self.min_port) + 1;
        for _ in 0..RANDOM_PORT_ATTEMPTS.min(span as usize) {
            let port = self.min_port + (rand::random::<u32>() % span) as u16;
            if let Ok(socket) = self.bind(port).await {
                return Ok(socket);
            }
        }
        let start = rand::random::<u32>() % span;
        for i in 0..span {
            let port = self.min_port + ((start + i) % span) as u16;
            if let Ok(socket) = self.bind(port).await {
                return Ok(socket);
            }
        }
        Err(io::Error::new(io::ErrorKind::AddrInUse, "no free relay port in turn.min_port..=turn.max_port"))
    }
}

#[async_trait]
impl RelayAddressGenerator for RelayAllocator {
    fn validate(&self) -> Result<(), turn::Error> {
        if self.min_port == 0 || self.min_port > self.max_port {
            return Err(turn::Error::Other("turn.min_port must be between 1 and turn.max_port".into()));
        }
        Ok(())
    }

    async fn allocate_conn(
        &self,
        use_ipv4: bool,
        requested_port: u16,
    ) -> Result<(Arc<dyn Conn + Send + Sync>, SocketAddr), turn::Error> {
        if use_ipv4 != self.relay_ip.is_ipv4() {
            return Err(turn::Error::Other("requested address family is not served".into()));
        }
        let socket =
            if requested_port != 0 { self.bind(requested_port).await } else { self.bind_in_range().await }
                .map_err(|e| turn::Error::Other(e.to_string()))?;
        let local = socket.local_addr().map_err(|e| turn::Error::Other(e.to_string()))?;
        let advertised = SocketAddr::new(self.advertised_ip, local.port());
        let relay = RelaySocket::new(socket, local, advertised, self.guard.clone());
        Ok((Arc::new(relay), advertised))
    }
}

/// Receives one datagram into `buf`; `None` if it did not fit (the kernel cut it: `MSG_TRUNC`).
async fn recv_whole_datagram(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<Option<(usize, SocketAddr)>> {
    loop {
        socket.readable().await?;
        let received = socket.try_io(tokio::io::Interest::READABLE, || {
            // SAFETY: `buf` is initialized memory; viewing it as `MaybeUninit<u8>` only lets
            // `recvmsg` write bytes into it, which keeps it initialized.
            let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) };
            let mut slices = [socket2::MaybeUninitSlice::new(uninit)];
            socket2::SockRef::from(socket).recv_from_vectored(&mut slices)
        });
        match received {
            Ok((n, flags, from)) => {
                let Some(from) = from.as_socket() else { continue };
                return Ok((!flags.is_truncated()).then_some((n, from)));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}
