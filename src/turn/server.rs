//! The relay: listeners, our read loop in front of the crate, and teardown.
//!
//! The crate's `Server` owns its read loop, keeps nonces forever and speaks UDP only, so we run
//! our own loop per listener and hand each datagram or TCP frame to the crate's public
//! `server::request::Request::handle_request`, with the crate's allocation `Manager`s held here.
//! Before a request reaches the crate, [`Relay::dispatch`] answers what the crate gets wrong or
//! cannot know:
//! - unauthenticated requests: 401 with a stateless nonce (no memory per source, see `nonce`);
//! - a wrong HMAC: 401 (the crate answers 400), an unknown/expired nonce: 438;
//! - expiry and the live-session rule, with the method and the 5-tuple's allocation in view
//!   (refreshes keep working past expiry while the user is in voice, see `auth`);
//! - quotas: 486 per user, 508 in total;
//! - the peer policy on CreatePermission and ChannelBind: 403 (and again on every datagram in the
//!   relay socket, see `relay`); CreatePermission and ChannelBind are handled here entirely, so
//!   that every XOR-PEER-ADDRESS is installed (the crate installs only the first) and always in
//!   its canonical form;
//! - a REQUESTED-ADDRESS-FAMILY we do not relay: 440 (the crate answers 508).
//!
//! When a user leaves voice (any reason), every allocation made under their name is deleted at
//! once through the crate's `Manager::delete_allocations_by_username` (which matches the full
//! REST username `<expiry>:<user>`, so we look the names up first).

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::Arc;
use std::time::Duration;

use stun::attributes::{
    ATTR_MESSAGE_INTEGRITY, ATTR_NONCE, ATTR_REALM, ATTR_USERNAME, ATTR_XOR_PEER_ADDRESS,
};
use stun::error_code::{
    ErrorCode, ErrorCodeAttribute, CODE_ADDR_FAMILY_NOT_SUPPORTED, CODE_ALLOC_MISMATCH,
    CODE_ALLOC_QUOTA_REACHED, CODE_BAD_REQUEST, CODE_FORBIDDEN, CODE_INSUFFICIENT_CAPACITY,
    CODE_PEER_ADDR_FAMILY_MISMATCH, CODE_STALE_NONCE, CODE_UNAUTHORIZED,
};
use stun::integrity::MessageIntegrity;
use stun::message::{
    Getter, Message, MessageType, Method, Setter, CLASS_ERROR_RESPONSE, CLASS_REQUEST,
    CLASS_SUCCESS_RESPONSE, METHOD_ALLOCATE, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION, METHOD_REFRESH,
};
use stun::textattrs::TextAttribute;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch, Mutex as AsyncMutex};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use turn::allocation::allocation_manager::{Manager, ManagerConfig};
use turn::allocation::channel_bind::ChannelBind;
use turn::allocation::five_tuple::FiveTuple;
use turn::allocation::permission::Permission;
use turn::allocation::AllocationInfo;
use turn::auth::AuthHandler;
use turn::proto::channum::ChannelNumber;
use turn::proto::peeraddr::PeerAddress;
use turn::proto::reqfamily::{RequestedAddressFamily, REQUESTED_FAMILY_IPV4};
use turn::proto::PROTO_UDP;
use turn::server::request::Request;
use webrtc_util::Conn;

use crate::config::Settings;
use crate::turn::auth::{Admission, AuthFailure, Authenticator, CheckedKey};
use crate::turn::counters::RelayCounters;
use crate::turn::credentials::parse_username;
use crate::turn::nonce::NonceMinter;
use crate::turn::policy::{canonical_addr, is_unspecified, PeerPolicy};
use crate::turn::presence::VoicePresence;
use crate::turn::quota::{QuotaRefusal, Quotas, Reservation, Transport};
use crate::turn::relay::{OwnRelays, RelayAllocator, RelayContext};
use crate::turn::tcp;

/// Receive buffer of the listening UDP socket. Measured (tests/turn_flood.rs, 25 clients with
/// 100 requests each in flight, debug build): with the kernel default of 208 KiB only 1680 of
/// 5000 requests were answered, the rest overflowed the buffer while the read loop was busy;
/// with 4 MiB, 5000 of 5000 and then 100000 of 100000. Capped by net.core.rmem_max (warned).
pub const LISTENER_RECV_BUFFER: usize = 4 * 1024 * 1024;
pub const LISTENER_SEND_BUFFER: usize = 4 * 1024 * 1024;
/// Largest datagram the listener accepts (a STUN message or ChannelData may exceed the MTU).
const MAX_DATAGRAM: usize = 65_536;
/// The crate's default channel-binding lifetime (RFC 8656: 10 minutes).
const CHANNEL_BIND_LIFETIME: Duration = Duration::from_secs(600);
/// At most this many UDP listener sockets (SO_REUSEPORT), one read loop each; one per core.
const MAX_UDP_SHARDS: usize = 4;
/// How many times to look for a port free on both UDP and TCP when `listen` has port 0.
const SHARED_PORT_ATTEMPTS: usize = 10;

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("cannot listen for TURN on {addr} ({transport}): {source}; is another TURN server (coturn?) running, or is the port below 1024 without privileges?")]
    Bind { addr: SocketAddr, transport: &'static str, source: io::Error },
    #[error("invalid TURN setting `{key}`: {problem}")]
    Config { key: &'static str, problem: String },
    #[error("cannot read or create the TURN secret file {path}: {source}")]
    Secret { path: std::path::PathBuf, source: io::Error },
}

/// The running relay. Dropping it leaves the relay running; call [`RelayHandle::close`].
pub struct RelayHandle {
    /// The address relay sockets are bound to.
    pub relay_ip: IpAddr,
    /// The address put in XOR-RELAYED-ADDRESS (`external_ip`, or `relay_ip`): what a peer's
    /// relay candidate names.
    pub advertised_ip: IpAddr,
    pub udp_addr: SocketAddr,
    pub tcp_addr: SocketAddr,
    /// TURN over TLS (`turns:`), once [`RelayHandle::start_tls`] was called.
    pub tls_addr: Option<SocketAddr>,
    pub counters: Arc<RelayCounters>,
    relay: Arc<Relay>,
    shutdown: watch::Sender<bool>,
    shutdown_rx: watch::Receiver<bool>,
    /// Sent once the managers closed every allocation: the bookkeeping tasks drain and end.
    finished: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    bookkeeping: Vec<JoinHandle<()>>,
}

impl RelayHandle {
    /// Stops the listeners and deletes every allocation (their relay sockets close).
    pub async fn close(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        let _ = self.relay.udp.close().await;
        let _ = self.relay.tcp.close().await;
        let _ = self.relay.tls.close().await;
        let _ = self.finished.send(true);
        for task in self.bookkeeping {
            let _ = task.await;
        }
    }

    /// Starts TURN over TLS on `listen` (`[turn] tls_listen`; port 0 picks one). `config` is
    /// asked for the current rustls configuration at every handshake, so certificate reloads
    /// (SIGHUP) apply to new connections; pass `move || tls_source.current()`.
    pub async fn start_tls(
        &mut self,
        listen: SocketAddr,
        config: impl Fn() -> Arc<rustls::ServerConfig> + Send + Sync + 'static,
    ) -> Result<SocketAddr, RelayError> {
        let listener =
            bind_tcp(listen).map_err(|source| RelayError::Bind { addr: listen, transport: "tls", source })?;
        let addr = listener.local_addr().map_err(|source| RelayError::Bind {
            addr: listen,
            transport: "tls",
            source,
        })?;
        let config: tcp::TlsConfigFn = Arc::new(config);
        self.tasks.push(tokio::spawn(tcp::accept_loop(
            listener,
            self.relay.clone(),
            Some(config),
            self.shutdown_rx.clone(),
        )));
        self.tls_addr = Some(addr);
        Ok(addr)
    }

    /// Allocations alive right now (UDP, TCP and TLS).
    pub fn active_allocations(&self) -> usize {
        RelayCounters::get(&self.counters.allocations_active) as usize
    }

    /// Relayed addresses alive right now (for tests and diagnostics).
    pub fn relay_addresses(&self) -> usize {
        self.relay.relay_ctx.own.len()
    }
}

/// Everything the read loops share.
pub(crate) struct Relay {
    auth: Authenticator,
    nonces: NonceMinter,
    relay_ctx: Arc<RelayContext>,
    relay_is_ipv4: bool,
    quotas: Quotas,
    counters: Arc<RelayCounters>,
    presence: Arc<VoicePresence>,
    require_live_session: bool,
    udp: Arc<Manager>,
    tcp: Arc<Manager>,
    tls: Arc<Manager>,
    /// Handed to the crate on paths that never authenticate (ChannelData, Send, Binding).
    no_auth: Arc<dyn AuthHandler + Send + Sync>,
    no_nonces: Arc<AsyncMutex<HashMap<String, Instant>>>,
}

/// The UDP listener as the crate's `Conn`. The crate asks for `local_addr()` on every packet
/// (to build the 5-tuple); tokio's socket answers with a getsockname system call each time, so
/// the address is kept here. `close()` does nothing: the crate calls it when an allocation ends,
/// and the listener serves every other client.
struct ListenerConn {
    socket: UdpSocket,
    local: SocketAddr,
}

#[async_trait::async_trait]
impl Conn for ListenerConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Err(webrtc_util::Error::Other("the TURN listener is not connected".into()))
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.socket.recv(buf).await?)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        Ok(self.socket.recv_from(buf).await?)
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        Ok(self.socket.send(buf).await?)
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        Ok(self.socket.send_to(buf, target).await?)
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

struct DenyAll;

impl AuthHandler for DenyAll {
    fn auth_handle(&self, _: &str, _: &str, _: SocketAddr) -> Result<Vec<u8>, turn::Error> {
        Err(turn::Error::Other("not an authenticated path".into()))
    }
}

/// Starts the UDP and TCP listeners on `[turn] listen` (one port number for both).
pub async fn start_relay(
    settings: &Settings,
    secret: Vec<u8>,
    presence: Arc<VoicePresence>,
) -> Result<RelayHandle, RelayError> {
    let turn = &settings.turn;
    let listen: SocketAddr = turn.listen.parse().map_err(|_| RelayError::Config {
        key: "turn.listen",
        problem: format!("{:?} is not an address", turn.listen),
    })?;
    let relay_ip = resolve_relay_ip(&turn.relay_ip, listen.ip())?;
    let advertised_ip = match turn.external_ip.trim() {
        "" => relay_ip,
        text => text.parse::<IpAddr>().map_err(|_| RelayError::Config {
            key: "turn.external_ip",
            problem: format!("{text:?} is not an IP address"),
        })?,
    };
    if advertised_ip.is_ipv4() != relay_ip.is_ipv4() {
        return Err(RelayError::Config {
            key: "turn.external_ip",
            problem: "must be of the same address family as turn.relay_ip".into(),
        });
    }
    let shards = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, MAX_UDP_SHARDS);
    let (udp_sockets, tcp_listener) = bind_listeners(listen, shards).await?;
    let udp_addr = udp_sockets[0].local_addr().map_err(|source| RelayError::Bind {
        addr: listen,
        transport: "udp",
        source,
    })?;
    let tcp_addr = tcp_listener.local_addr().map_err(|source| RelayError::Bind {
        addr: listen,
        transport: "tcp",
        source,
    })?;
    // The UDP listener is the one socket of ours a relayed (UDP) datagram could reach: on every
    // address it answers on.
    let mut listener_ips = vec![relay_ip, advertised_ip, listen.ip()];
    if listen.ip().is_unspecified() {
        listener_ips.extend([IpAddr::from([127, 0, 0, 1]), IpAddr::from(std::net::Ipv6Addr::LOCALHOST)]);
    }
    let policy = PeerPolicy::new(
        turn.peer_policy_kind(settings.webrtc.force_relay),
        &turn.allowed_peer_cidrs,
        &turn.denied_peer_cidrs,
    )
    .map_err(|e| RelayError::Config { key: e.key, problem: format!("{:?} is not an IP or CIDR", e.entry) })?
    .with_own_services(listener_ips.into_iter().map(|ip| SocketAddr::new(ip, udp_addr.port())));

    let counters = Arc::new(RelayCounters::default());
    let relay_ctx = Arc::new(RelayContext {
        policy,
        own: Arc::new(OwnRelays::default()),
        counters: counters.clone(),
        bandwidth_bytes_per_s: turn.allocation_bandwidth_bytes_per_s,
    });
    let allocator = || RelayAllocator {
        relay_ip,
        advertised_ip,
        min_port: turn.min_port,
        max_port: turn.max_port,
        ctx: relay_ctx.clone(),
    };
    let (udp_closed_tx, udp_closed_rx) = mpsc::channel(1024);
    let (tcp_closed_tx, tcp_closed_rx) = mpsc::channel(1024);
    let (tls_closed_tx, tls_closed_rx) = mpsc::channel(1024);
    let udp = Arc::new(Manager::new(ManagerConfig {
        relay_addr_generator: Box::new(allocator()),
        alloc_close_notify: Some(udp_closed_tx),
    }));
    let tcp = Arc::new(Manager::new(ManagerConfig {
        relay_addr_generator: Box::new(allocator()),
        alloc_close_notify: Some(tcp_closed_tx),
    }));
    let tls = Arc::new(Manager::new(ManagerConfig {
        relay_addr_generator: Box::new(allocator()),
        alloc_close_notify: Some(tls_closed_tx),
    }));

    let relay = Arc::new(Relay {
        auth: Authenticator::new(secret, turn.realm.clone(), turn.require_live_session, presence.clone()),
        nonces: NonceMinter::new(),
        relay_ctx,
        relay_is_ipv4: relay_ip.is_ipv4(),
        quotas: Quotas::new(
            turn.allocations_per_user(settings.webrtc.max_participants),
            turn.max_allocations_total,
        ),
        counters: counters.clone(),
        presence: presence.clone(),
        require_live_session: turn.require_live_session,
        udp,
        tcp,
        tls,
        no_auth: Arc::new(DenyAll),
        no_nonces: Arc::new(AsyncMutex::new(HashMap::new())),
    });

    let (shutdown, shutdown_rx) = watch::channel(false);
    let shutdown_rx_for_tls = shutdown_rx.clone();
    let (departures_tx, departures_rx) = mpsc::unbounded_channel::<String>();
    presence.on_departure(move |user| {
        let _ = departures_tx.send(user.to_string());
    });

    let (finished, finished_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for socket in udp_sockets {
        let local = socket.local_addr().map_err(|source| RelayError::Bind {
            addr: listen,
            transport: "udp",
            source,
        })?;
        let conn: Arc<dyn Conn + Send + Sync> = Arc::new(ListenerConn { socket, local });
        tasks.push(tokio::spawn(relay.clone().udp_loop(conn, shutdown_rx.clone())));
    }
    tasks.extend([
        tokio::spawn(tcp::accept_loop(tcp_listener, relay.clone(), None, shutdown_rx.clone())),
        tokio::spawn(relay.clone().teardown_departed(departures_rx, shutdown_rx)),
    ]);
    let bookkeeping = vec![
        tokio::spawn(relay.clone().closed_allocations(Transport::Udp, udp_closed_rx, finished_rx.clone())),
        tokio::spawn(relay.clone().closed_allocations(Transport::Tcp, tcp_closed_rx, finished_rx.clone())),
        tokio::spawn(relay.clone().closed_allocations(Transport::Tls, tls_closed_rx, finished_rx)),
    ];
    // Said once at info: the first thing to compare when calls connect locally but not remotely.
    tracing::info!(
        "turn relay sockets on {relay_ip}, advertised to clients as {advertised_ip}, ports {}-{}",
        turn.min_port,
        turn.max_port
    );
    Ok(RelayHandle {
        relay_ip,
        advertised_ip,
        udp_addr,
        tcp_addr,
        tls_addr: None,
        counters,
        relay,
        shutdown,
        shutdown_rx: shutdown_rx_for_tls,
        finished,
        tasks,
        bookkeeping,
    })
}

/// `relay_ip`, else the listen IP, else the address of the interface holding the default route.
fn resolve_relay_ip(configured: &str, listen_ip: IpAddr) -> Result<IpAddr, RelayError> {
    let configured = configured.trim();
    if !configured.is_empty() {
        let ip: IpAddr = configured.parse().map_err(|_| RelayError::Config {
            key: "turn.relay_ip",
            problem: format!("{configured:?} is not an IP address"),
        })?;
        if is_unspecified(ip) {
            return Err(RelayError::Config {
                key: "turn.relay_ip",
                problem: "must name one address (relayed addresses are handed to peers)".into(),
            });
        }
        return Ok(ip);
    }
    if !is_unspecified(listen_ip) {
        return Ok(listen_ip);
    }
    // Connecting a UDP socket sends nothing; it only asks the kernel which source address a
    // packet to that (documentation-only, TEST-NET / 2001:db8::) destination would use.
    let probe = |bind: SocketAddr, to: SocketAddr| -> io::Result<IpAddr> {
        let socket = StdUdpSocket::bind(bind)?;
        socket.connect(to)?;
        Ok(socket.local_addr()?.ip())
    };
    let v4 = || probe((Ipv4Addr::UNSPECIFIED, 0).into(), (Ipv4Addr::new(192, 0, 2, 1), 9).into());
    let v6 = || {
        probe((Ipv6Addr::UNSPECIFIED, 0).into(), (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), 9).into())
    };
    let found = if listen_ip.is_ipv6() { v6().or_else(|_| v4()) } else { v4() };
    match found {
        Ok(ip) => Ok(ip),
        // No route at all (an offline machine): still start, so `cargo run` works anywhere, but
        // say loudly that only local clients can use such a relay.
        Err(e) => {
            tracing::warn!(
                "cannot find this machine's primary address ({e}); relaying on 127.0.0.1, which only \
                 local clients can reach: set [turn] relay_ip (and external_ip behind NAT)"
            );
            Ok(IpAddr::V4(Ipv4Addr::LOCALHOST))
        }
    }
}

/// Binds UDP then TCP on the same port number (a fresh pair if `listen` has port 0 and the
/// kernel's UDP choice is taken on TCP). UDP is bound `shards` times with SO_REUSEPORT, so the
/// kernel spreads clients (by their address hash, so each client always lands on the same
/// socket) over one read loop per core.
async fn bind_listeners(
    listen: SocketAddr,
    shards: usize,
) -> Result<(Vec<UdpSocket>, tokio::net::TcpListener), RelayError> {
    let attempts = if listen.port() == 0 { SHARED_PORT_ATTEMPTS } else { 1 };
    let udp_error = |source| RelayError::Bind { addr: listen, transport: "udp", source };
    let mut last_err = None;
    for _ in 0..attempts {
        let first = bind_udp(listen, shards > 1).map_err(udp_error)?;
        let bound = first.local_addr().map_err(udp_error)?;
        let tcp_addr = SocketAddr::new(listen.ip(), bound.port());
        let tcp = match bind_tcp(tcp_addr) {
            Ok(tcp) => tcp,
            Err(source) => {
                last_err = Some(RelayError::Bind { addr: tcp_addr, transport: "tcp", source });
                continue;
            }
        };
        let mut udp = vec![first];
        for _ in 1..shards {
            match bind_udp(bound, true) {
                Ok(socket) => udp.push(socket),
                Err(err) => {
                    tracing::debug!(%err, "SO_REUSEPORT sharding unavailable; one UDP read loop");
                    break;
                }
            }
        }
        return Ok((udp, tcp));
    }
    Err(last_err.expect("at least one attempt"))
}

fn bind_udp(addr: SocketAddr, reuse_port: bool) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_nonblocking(true)?;
    socket.set_reuse_address(true)?;
    // Elsewhere the second bind fails and one read loop serves all.
    #[cfg(target_os = "linux")]
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    #[cfg(not(target_os = "linux"))]
    let _ = reuse_port;
    socket.bind(&addr.into())?;
    set_buffers(&socket, LISTENER_RECV_BUFFER, LISTENER_SEND_BUFFER);
    UdpSocket::from_std(socket.into())
}

/// Sets socket buffers and warns once if the kernel granted less (Linux doubles the value it
/// reports, and caps the request at net.core.rmem_max / wmem_max).
fn set_buffers(socket: &socket2::Socket, recv: usize, send: usize) {
    let _ = socket.set_recv_buffer_size(recv);
    let _ = socket.set_send_buffer_size(send);
    let granted = socket.recv_buffer_size().unwrap_or(0);
    if granted < recv {
        tracing::warn!(
            requested = recv,
            granted,
            "the TURN listener got a smaller UDP receive buffer than requested; raise net.core.rmem_max \
             (sysctl -w net.core.rmem_max={recv}) or packets will be lost under load"
        );
    }
}

fn bind_tcp(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let socket =
        if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Relay {
    fn manager(&self, transport: Transport) -> &Arc<Manager> {
        match transport {
            Transport::Udp => &self.udp,
            Transport::Tcp => &self.tcp,
            Transport::Tls => &self.tls,
        }
    }

    pub(crate) fn counters(&self) -> &Arc<RelayCounters> {
        &self.counters
    }

    pub(crate) fn has_allocation(&self, transport: Transport, client: SocketAddr) -> bool {
        self.quotas.allocation_username((transport, client)).is_some()
    }

    /// Deletes the allocation of a client whose TCP connection ended.
    pub(crate) async fn client_gone(&self, transport: Transport, five_tuple: FiveTuple) {
        self.manager(transport).delete_allocation(&five_tuple).await;
    }

    async fn udp_loop(
        self: Arc<Self>,
        conn: Arc<dyn Conn + Send + Sync>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let (n, from) = tokio::select! {
                r = conn.recv_from(&mut buf) => match r {
                    Ok(v) => v,
                    Err(err) => {
                        tracing::debug!(%err, "turn udp listener receive error");
                        continue;
                    }
                },
                _ = shutdown.changed() => break,
            };
            self.dispatch(Transport::Udp, &conn, from, buf[..n].to_vec()).await;
        }
    }

    /// Records allocations the crate closed (expiry, Refresh 0, deletion, shutdown).
    async fn closed_allocations(
        self: Arc<Self>,
        transport: Transport,
        mut rx: mpsc::Receiver<AllocationInfo>,
        mut finished: watch::Receiver<bool>,
    ) {
        let release = |info: AllocationInfo| {
            if self.quotas.release((transport, info.five_tuple.src_addr)) {
                self.counters.allocations_active.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
        };
        loop {
            tokio::select! {
                info = rx.recv() => match info {
                    Some(info) => release(info),
                    None => break,
                },
                _ = finished.changed() => {
                    while let Ok(info) = rx.try_recv() {
                        release(info);
                    }
                    break;
                }
            }
        }
    }

    async fn teardown_departed(
        self: Arc<Self>,
        mut departures: mpsc::UnboundedReceiver<String>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let user = tokio::select! {
                user = departures.recv() => match user { Some(u) => u, None => break },
                _ = shutdown.changed() => break,
            };
            let deleted = self.delete_allocations_of(&user).await;
            if deleted > 0 {
                tracing::info!(user = %user, allocations = deleted, "turn allocations deleted: user left voice chat");
            }
        }
    }

    /// Deletes every allocation whose REST username names `user`; returns how many.
    pub(crate) async fn delete_allocations_of(&self, user: &str) -> usize {
        let mut deleted = 0;
        for manager in [&self.udp, &self.tcp, &self.tls] {
            let infos = manager.get_allocations_info(None).await;
            let names: HashSet<String> = infos
                .into_values()
                .filter(|info| parse_username(&info.username).is_some_and(|u| u.user == user))
                .map(|info| {
                    deleted += 1;
                    info.username
                })
                .collect();
            for name in names {
                manager.delete_allocations_by_username(&name).await;
            }
        }
        deleted
    }

    /// Handles one datagram (UDP) or frame (TCP) from `src`.
    pub(crate) async fn dispatch(
        &self,
        transport: Transport,
        conn: &Arc<dyn Conn + Send + Sync>,
        src: SocketAddr,
        buf: Vec<u8>,
    ) {
        // ChannelData (first two bits 01) is the hot path: straight to the crate.
        let is_stun = buf.first().is_some_and(|b| b >> 6 == 0);
        if !is_stun {
            self.pass(transport, conn, src, buf, self.no_auth.clone(), self.no_nonces.clone()).await;
            return;
        }
        let mut m = Message { raw: buf, ..Default::default() };
        if m.decode().is_err() {
            tracing::trace!("dropped a datagram that is neither STUN nor ChannelData");
            return;
        }
        let method = m.typ.method;
        let gated = m.typ.class == CLASS_REQUEST
            && [METHOD_ALLOCATE, METHOD_REFRESH, METHOD_CREATE_PERMISSION, METHOD_CHANNEL_BIND]
                .contains(&method);
        if !gated {
            // Binding requests and Send indications need no credentials (Send is policed by the
            // relay socket and the permissions).
            let raw = std::mem::take(&mut m.raw);
            self.pass(transport, conn, src, raw, self.no_auth.clone(), self.no_nonces.clone()).await;
            return;
        }
        self.gate(transport, conn, src, m).await;
    }

    async fn pass(
        &self,
        transport: Transport,
        conn: &Arc<dyn Conn + Send + Sync>,
        src: SocketAddr,
        buf: Vec<u8>,
        auth_handler: Arc<dyn AuthHandler + Send + Sync>,
        nonces: Arc<AsyncMutex<HashMap<String, Instant>>>,
    ) {
        let authenticated = !Arc::ptr_eq(&nonces, &self.no_nonces);
        // Only the authenticated paths read the realm; spare the hot path an allocation.
        let realm = if authenticated { self.auth.realm().to_string() } else { String::new() };
        let mut request = Request {
            conn: conn.clone(),
            src_addr: src,
            buff: buf,
            allocation_manager: self.manager(transport).clone(),
            nonces,
            auth_handler,
            realm,
            channel_bind_timeout: CHANNEL_BIND_LIFETIME,
        };
        if let Err(err) = request.handle_request().await {
            tracing::trace!(%err, "turn request not handled");
        }
    }

    /// Authenticated requests: everything the crate would get wrong is answered here.
    async fn gate(
        &self,
        transport: Transport,
        conn: &Arc<dyn Conn + Send + Sync>,
        src: SocketAddr,
        m: Message,
    ) {
        let method = m.typ.method;
        let reply = Reply { conn, to: src, request: &m };
        if !m.contains(ATTR_MESSAGE_INTEGRITY) {
            reply.challenge(CODE_UNAUTHORIZED, "Unauthorized", self).await;
            return;
        }
        let (Ok(nonce), Ok(realm), Ok(username)) = (
            TextAttribute::get_from_as(&m, ATTR_NONCE),
            TextAttribute::get_from_as(&m, ATTR_REALM),
            TextAttribute::get_from_as(&m, ATTR_USERNAME),
        ) else {
            RelayCounters::bump(&self.counters.auth_failures_malformed);
            reply.error(CODE_BAD_REQUEST, "Missing USERNAME, REALM or NONCE", None).await;
            return;
        };
        if self.nonces.verify(&nonce.text, src.ip()).is_err() {
            reply.challenge(CODE_STALE_NONCE, "Stale Nonce", self).await;
            return;
        }
        let key = match self.auth.key(&username.text, &realm.text) {
            Ok(key) => key,
            Err(failure) => {
                self.count_auth_failure(failure);
                reply.challenge(CODE_UNAUTHORIZED, failure.reason(), self).await;
                return;
            }
        };
        if MessageIntegrity(key.clone()).check(&mut m.clone()).is_err() {
            self.count_auth_failure(AuthFailure::BadCredential);
            reply.challenge(CODE_UNAUTHORIZED, AuthFailure::BadCredential.reason(), self).await;
            return;
        }
        let client = (transport, src);
        let allocation_username = self.quotas.allocation_username(client);
        let admission = Admission {
            now_unix: unix_now(),
            is_allocate: method == METHOD_ALLOCATE,
            allocation_username: allocation_username.as_deref(),
        };
        if let Err(failure) = self.auth.admit(&username.text, admission) {
            self.count_auth_failure(failure);
            reply.challenge(CODE_UNAUTHORIZED, failure.reason(), self).await;
            return;
        }
        let integrity = MessageIntegrity(key.clone());
        let five_tuple =
            FiveTuple { protocol: PROTO_UDP, src_addr: src, dst_addr: conn.local_addr().unwrap_or(src) };
        let manager = self.manager(transport);
        if method != METHOD_ALLOCATE && manager.get_allocation(&five_tuple).await.is_none() {
            reply.error(CODE_ALLOC_MISMATCH, "Allocation Mismatch", Some(&integrity)).await;
            return;
        }
        let checked: Arc<dyn AuthHandler + Send + Sync> = Arc::new(CheckedKey(key));
        let nonces = Arc::new(AsyncMutex::new(HashMap::from([(nonce.text.clone(), Instant::now())])));

        if method == METHOD_ALLOCATE {
            // Without REQUESTED-ADDRESS-FAMILY a client asks for IPv4 (RFC 6156 section 4.2).
            let mut family = RequestedAddressFamily::default();
            let wants_ipv4 = family.get_from(&m).map(|_| family == REQUESTED_FAMILY_IPV4).unwrap_or(true);
            if wants_ipv4 != self.relay_is_ipv4 {
                reply
                    .error(CODE_ADDR_FAMILY_NOT_SUPPORTED, "Address Family not Supported", Some(&integrity))
                    .await;
                return;
            }
            let reservation = match self.quotas.reserve(client, &username.text) {
                Ok(r) => r,
                Err(refusal) => {
                    RelayCounters::bump(&self.counters.quota_refusals);
                    let user = parse_username(&username.text).map(|u| u.user).unwrap_or_default();
                    let (code, reason) = match refusal {
                        QuotaRefusal::PerUser => (CODE_ALLOC_QUOTA_REACHED, "Allocation Quota Reached"),
                        QuotaRefusal::Total => (CODE_INSUFFICIENT_CAPACITY, "Insufficient Capacity"),
                    };
                    tracing::info!(user = %user, ?refusal, "turn allocation refused by quota");
                    reply.error(code, reason, Some(&integrity)).await;
                    return;
                }
            };
            self.pass(transport, conn, src, m.raw, checked, nonces).await;
            if reservation == Reservation::New {
                self.settle_allocation(transport, five_tuple, &username.text).await;
            }
            return;
        }

        let peers = match peer_addresses(&m) {
            Ok(peers) => peers,
            Err(()) => {
                reply.error(CODE_BAD_REQUEST, "Bad XOR-PEER-ADDRESS", Some(&integrity)).await;
                return;
            }
        };
        if method == METHOD_CREATE_PERMISSION || method == METHOD_CHANNEL_BIND {
            if peers.is_empty() {
                reply.error(CODE_BAD_REQUEST, "Missing XOR-PEER-ADDRESS", Some(&integrity)).await;
                return;
            }
            if peers.iter().any(|p| p.is_ipv4() != self.relay_is_ipv4) {
                reply
                    .error(CODE_PEER_ADDR_FAMILY_MISMATCH, "Peer Address Family Mismatch", Some(&integrity))
                    .await;
                return;
            }
            if let Some(denied) = peers.iter().find(|p| !self.relay_ctx.permits(**p)) {
                RelayCounters::bump(&self.counters.denied_peers);
                tracing::debug!(peer = %denied, "turn permission refused by the peer policy");
                reply.error(CODE_FORBIDDEN, "Forbidden", Some(&integrity)).await;
                return;
            }
        }
        if method == METHOD_CREATE_PERMISSION {
            // Handled here: the crate installs only the first XOR-PEER-ADDRESS.
            let Some(allocation) = manager.get_allocation(&five_tuple).await else {
                reply.error(CODE_ALLOC_MISMATCH, "Allocation Mismatch", Some(&integrity)).await;
                return;
            };
            for peer in peers {
                allocation.add_permission(Permission::new(peer)).await;
            }
            reply.success(Some(&integrity)).await;
            return;
        }
        if method == METHOD_CHANNEL_BIND {
            // Handled here too, so the peer is the canonical address the policy approved (the
            // crate would answer 443 to an IPv4-mapped peer, and bind the raw spelling).
            let Some(allocation) = manager.get_allocation(&five_tuple).await else {
                reply.error(CODE_ALLOC_MISMATCH, "Allocation Mismatch", Some(&integrity)).await;
                return;
            };
            let mut number = ChannelNumber::default();
            if number.get_from(&m).is_err() || !number.valid() || peers.len() != 1 {
                reply
                    .error(CODE_BAD_REQUEST, "Bad CHANNEL-NUMBER or XOR-PEER-ADDRESS", Some(&integrity))
                    .await;
                return;
            }
            let bound =
                allocation.add_channel_bind(ChannelBind::new(number, peers[0]), CHANNEL_BIND_LIFETIME).await;
            if bound.is_err() {
                // The number is bound to another peer, or the peer to another number.
                reply.error(CODE_BAD_REQUEST, "Channel already bound differently", Some(&integrity)).await;
                return;
            }
            reply.success(Some(&integrity)).await;
            return;
        }
        self.pass(transport, conn, src, m.raw, checked, nonces).await;
    }

    /// After the crate handled a new Allocate: commit or release the reservation.
    async fn settle_allocation(&self, transport: Transport, five_tuple: FiveTuple, username: &str) {
        let client = (transport, five_tuple.src_addr);
        let manager = self.manager(transport);
        if manager.get_allocation(&five_tuple).await.is_none() {
            self.quotas.release(client);
            return;
        }
        self.quotas.commit(client);
        RelayCounters::bump(&self.counters.allocations_total);
        RelayCounters::bump(&self.counters.allocations_active);
        // The user may have left between our admission check and the crate creating the
        // allocation; the departure sweep may have run before it existed, so look again.
        let user = parse_username(username).map(|u| u.user).unwrap_or_default();
        if self.require_live_session && !self.presence.is_in_voice(user) {
            manager.delete_allocation(&five_tuple).await;
        }
    }

    fn count_auth_failure(&self, failure: AuthFailure) {
        let c = &self.counters;
        RelayCounters::bump(match failure {
            AuthFailure::BadCredential => &c.auth_failures_bad_credential,
            AuthFailure::Expired => &c.auth_failures_expired,
            AuthFailure::NotInVoice => &c.auth_failures_not_in_voice,
            AuthFailure::Malformed => &c.auth_failures_malformed,
        });
    }
}

/// Every XOR-PEER-ADDRESS of `m`, canonicalized (IPv4-mapped IPv6 becomes IPv4).
fn peer_addresses(m: &Message) -> Result<Vec<SocketAddr>, ()> {
    let mut peers = Vec::new();
    for attr in m.attributes.0.iter().filter(|a| a.typ == ATTR_XOR_PEER_ADDRESS) {
        let mut one = Message::new();
        one.transaction_id = m.transaction_id;
        one.add(ATTR_XOR_PEER_ADDRESS, &attr.value);
        let mut peer = PeerAddress::default();
        peer.get_from(&one).map_err(|_| ())?;
        peers.push(canonical_addr(SocketAddr::new(peer.ip, peer.port)));
    }
    Ok(peers)
}

/// Builds and sends answers to one request.
struct Reply<'a> {
    conn: &'a Arc<dyn Conn + Send + Sync>,
    to: SocketAddr,
    request: &'a Message,
}

impl Reply<'_> {
    /// Encodes the answer (synchronously: `dyn Setter` is not `Send`, so no await while held).
    fn encode(&self, class: stun::message::MessageClass, attrs: Vec<Box<dyn Setter>>) -> Option<Vec<u8>> {
        let method: Method = self.request.typ.method;
        let mut setters: Vec<Box<dyn Setter>> =
            vec![Box::new(self.request.transaction_id), Box::new(MessageType::new(method, class))];
        setters.extend(attrs);
        let mut msg = Message::new();
        match msg.build(&setters) {
            Ok(()) => Some(msg.raw),
            Err(err) => {
                tracing::warn!(%err, "cannot build a STUN answer");
                None
            }
        }
    }

    async fn send(&self, raw: Option<Vec<u8>>) {
        let Some(raw) = raw else { return };
        if let Err(err) = self.conn.send_to(&raw, self.to).await {
            tracing::debug!(%err, "cannot send a STUN answer");
        }
    }

    /// 401 or 438 with a fresh nonce and our realm (the client retries with credentials).
    async fn challenge(&self, code: ErrorCode, reason: &str, relay: &Relay) {
        let nonce = relay.nonces.mint(self.to.ip());
        let raw = self.encode(
            CLASS_ERROR_RESPONSE,
            vec![
                Box::new(ErrorCodeAttribute { code, reason: reason.as_bytes().to_vec() }),
                Box::new(TextAttribute::new(ATTR_REALM, relay.auth.realm().to_string())),
                Box::new(TextAttribute::new(ATTR_NONCE, nonce)),
            ],
        );
        self.send(raw).await;
    }

    async fn error(&self, code: ErrorCode, reason: &str, integrity: Option<&MessageIntegrity>) {
        let raw = {
            let mut attrs: Vec<Box<dyn Setter>> =
                vec![Box::new(ErrorCodeAttribute { code, reason: reason.as_bytes().to_vec() })];
            if let Some(mi) = integrity {
                attrs.push(Box::new(mi.clone()));
            }
            self.encode(CLASS_ERROR_RESPONSE, attrs)
        };
        self.send(raw).await;
    }

    async fn success(&self, integrity: Option<&MessageIntegrity>) {
        let raw = {
            let mut attrs: Vec<Box<dyn Setter>> = Vec::new();
            if let Some(mi) = integrity {
                attrs.push(Box::new(mi.clone()));
            }
            self.encode(CLASS_SUCCESS_RESPONSE, attrs)
        };
        self.send(raw).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_ip_is_configured_or_the_listen_ip_or_detected() {
        let v4 = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(resolve_relay_ip("192.0.2.7", v4("0.0.0.0")).unwrap(), v4("192.0.2.7"));
        assert_eq!(resolve_relay_ip("", v4("127.0.0.1")).unwrap(), v4("127.0.0.1"));
        assert!(matches!(resolve_relay_ip("0.0.0.0", v4("0.0.0.0")), Err(RelayError::Config { .. })));
        assert!(matches!(resolve_relay_ip("nope", v4("0.0.0.0")), Err(RelayError::Config { .. })));
        // Detection needs a route; where there is one, it names one concrete address.
        if let Ok(ip) = resolve_relay_ip("", v4("0.0.0.0")) {
            assert!(!is_unspecified(ip));
        }
    }

    #[tokio::test]
    async fn bad_settings_stop_the_start() {
        let presence = Arc::new(VoicePresence::new());
        let mut settings = Settings::defaults();
        settings.turn.listen = "127.0.0.1:0".into();
        settings.turn.relay_ip = "127.0.0.1".into();
        settings.turn.denied_peer_cidrs = vec!["10.0.0.0/33".into()];
        let err = start_relay(&settings, b"s".to_vec(), presence.clone()).await.err().unwrap();
        assert!(matches!(err, RelayError::Config { key: "turn.denied_peer_cidrs", .. }), "{err}");
        settings.turn.denied_peer_cidrs.clear();
        settings.turn.external_ip = "::1".into();
        let err = start_relay(&settings, b"s".to_vec(), presence).await.err().unwrap();
        assert!(matches!(err, RelayError::Config { key: "turn.external_ip", .. }), "{err}");
    }
}
