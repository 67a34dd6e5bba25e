//! Starting and stopping the relay: [`start_relay`] builds every part from the typed settings
//! and spawns the loops; [`RelayHandle`] is what the server keeps to add TLS, read gauges and
//! close it all in order.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::Settings;
use crate::presence::VoicePresence;
use crate::proxy_protocol::ProxyProtocol;
use crate::time::unix_now;
use crate::turn::allocations::{AllocationSummary, AllocationTable};
use crate::turn::auth::Authenticator;
use crate::turn::counters::RelayCounters;
use crate::turn::dispatch::Dispatcher;
use crate::turn::error::RelayError;
use crate::turn::grants::GrantCaps;
use crate::turn::link::{DatagramSenders, SharedConn};
use crate::turn::nonce::NonceMinter;
use crate::turn::per_ip::ConnectionsPerIp;
use crate::turn::policy::PeerPolicy;
use crate::turn::quota::QuotaLimits;
use crate::turn::relay_ip::resolve_relay_ip;
use crate::turn::relay_socket::{ClusterRelays, OwnRelays, PeerGuard, RelayAddress, RelayBinder};
use crate::turn::shard::{Shard, ShardSet};
use crate::turn::sockets::{bind_listeners, bind_tcp_with};
use crate::turn::{handoff, tcp, teardown, udp};

/// At most this many UDP listener sockets (SO_REUSEPORT), one shard thread each; one per core.
const MAX_UDP_SHARDS: usize = 4;

/// The running relay. Dropping it leaves the relay running; call [`RelayHandle::close`].
pub struct RelayHandle {
    /// The address relay sockets are bound to.
    pub relay_ip: IpAddr,
    /// The address put in XOR-RELAYED-ADDRESS (`external_ip`, or `relay_ip`): what a peer's
    /// relay candidate names.
    pub advertised_ip: IpAddr,
    /// The IPv6 relay address (`[turn] relay_ip6`), when this relay also relays IPv6.
    pub relay_ip6: Option<std::net::Ipv6Addr>,
    pub udp_addr: SocketAddr,
    pub tcp_addr: SocketAddr,
    /// TURN over TLS (`turns:`), once [`RelayHandle::start_tls`] was called.
    pub tls_addr: Option<SocketAddr>,
    /// The IPv6 UDP and TCP listener (one port number), when `[turn] listen6` is set.
    pub listen6_addr: Option<SocketAddr>,
    /// TURN over TLS on the IPv6 listener's IP, once `start_tls` was called with `listen6` set.
    pub tls6_addr: Option<SocketAddr>,
    pub counters: Arc<RelayCounters>,
    /// Cluster mode: the other nodes' relay addresses the peer policy lets through.
    pub cluster_relays: Arc<ClusterRelays>,
    dispatcher: Arc<Dispatcher>,
    per_ip: Arc<ConnectionsPerIp>,
    /// `[turn] proxy_protocol`, for the TCP and TLS listeners.
    proxy_protocol: Option<ProxyProtocol>,
    shutdown: watch::Sender<bool>,
    shutdown_rx: watch::Receiver<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// The UDP listeners' threads (see `shard`).
    shards: ShardSet,
}

impl RelayHandle {
    /// Stops the listeners and deletes every allocation (their relay sockets close).
    pub async fn close(mut self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        self.shards.read_loops_stopped().await;
        teardown::delete_all(&self.dispatcher).await;
        self.shards.finish().await;
    }

    /// Every allocation alive now, with its traffic (the admin API).
    pub fn allocations(&self) -> Vec<AllocationSummary> {
        summaries(&self.dispatcher)
    }

    /// Starts TURN over TLS on `listen` (`[turn] tls_listen`; port 0 picks one), and on the
    /// IPv6 listener's IP at the same port when `listen6` is set. `config` is asked for the
    /// current rustls configuration at every handshake, so certificate reloads (SIGHUP) apply
    /// to new connections; pass `move || tls_source.current()`.
    pub async fn start_tls(
        &mut self,
        listen: SocketAddr,
        config: impl Fn() -> Arc<rustls::ServerConfig> + Send + Sync + 'static,
    ) -> Result<SocketAddr, RelayError> {
        let config: tcp::TlsConfigFn = Arc::new(config);
        let addr = self.spawn_tls_listener(listen, false, config.clone())?;
        self.tls_addr = Some(addr);
        if let Some(listen6) = self.listen6_addr {
            let addr6 = SocketAddr::new(listen6.ip(), listen.port());
            self.tls6_addr = Some(self.spawn_tls_listener(addr6, true, config)?);
        }
        Ok(addr)
    }

    fn spawn_tls_listener(
        &mut self,
        listen: SocketAddr,
        v6_only: bool,
        config: tcp::TlsConfigFn,
    ) -> Result<SocketAddr, RelayError> {
        let bind_error = |source| RelayError::Bind { addr: listen, transport: "tls", source };
        let listener = bind_tcp_with(listen, v6_only).map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        self.tasks.push(tokio::spawn(tcp::accept_loop(
            listener,
            self.dispatcher.clone(),
            self.per_ip.clone(),
            Some(config),
            self.proxy_protocol.clone(),
            self.shutdown_rx.clone(),
        )));
        Ok(addr)
    }

    /// The addresses relayed candidates of this relay name (advertised and bound), for the
    /// hub's relay-only check.
    pub fn relayed_ips(&self) -> Vec<IpAddr> {
        let mut ips = vec![self.advertised_ip, self.relay_ip];
        ips.extend(self.relay_ip6.map(IpAddr::V6));
        ips
    }

    /// Allocations alive right now (UDP, TCP and TLS).
    pub fn active_allocations(&self) -> usize {
        RelayCounters::get(&self.counters.allocations_active) as usize
    }

    /// Relayed addresses alive right now (for tests and diagnostics).
    pub fn relay_addresses(&self) -> usize {
        self.dispatcher.guard.own.len()
    }

    /// TURN-over-TCP/TLS connections open from `ip` (grouped like the per-IP cap).
    pub fn tcp_connections_from(&self, ip: IpAddr) -> usize {
        self.per_ip.open_from(ip)
    }

    /// What the admin API keeps to revoke access and rotate the secret while the relay runs.
    pub fn control(&self) -> RelayControl {
        RelayControl { dispatcher: self.dispatcher.clone() }
    }
}

/// Operator actions on the running relay (cheap to clone).
#[derive(Clone)]
pub struct RelayControl {
    dispatcher: Arc<Dispatcher>,
}

impl RelayControl {
    /// Every allocation alive now, with its traffic (as [`RelayHandle::allocations`]).
    pub fn allocations(&self) -> Vec<AllocationSummary> {
        summaries(&self.dispatcher)
    }

    /// The operator revoked `chat_user`'s TURN access: every credential issued to them so far
    /// is refused from now on (any session, expired or not).
    pub fn revoke_credentials(&self, chat_user: &str) {
        self.dispatcher.auth.revoke(chat_user, crate::time::unix_now());
    }

    /// Deletes every allocation `chat_user` holds (any session, UDP, TCP or TLS) at once;
    /// returns how many.
    pub async fn delete_allocations_of(&self, chat_user: &str) -> usize {
        teardown::delete_allocations_of_chat_user(&self.dispatcher, chat_user).await
    }

    /// Verifies with `secret` from now on, and with the current one for `grace_s` more seconds.
    /// Returns the unix second the previous secret stops working.
    pub fn rotate_secret(&self, secret: Vec<u8>, grace_s: u64) -> u64 {
        let now = crate::time::unix_now();
        self.dispatcher.auth.rotate_secret(secret, now, grace_s);
        now.saturating_add(grace_s)
    }
}

/// Starts the UDP and TCP listeners on `[turn] listen` (one port number for both).
pub async fn start_relay(
    settings: &Settings,
    secret: Vec<u8>,
    presence: Arc<VoicePresence>,
) -> Result<RelayHandle, RelayError> {
    let turn = settings.turn_config()?;
    let listen = turn.listen;
    let relay_ip = resolve_relay_ip(turn.relay_ip, listen.ip());
    let advertised_ip = turn.external_ip.unwrap_or(relay_ip);
    if advertised_ip.is_ipv4() != relay_ip.is_ipv4() {
        // Only possible with a detected relay IP; a configured pair is checked with the config.
        return Err(RelayError::Config {
            key: "turn.external_ip",
            problem: "must be of the same address family as turn.relay_ip".into(),
        });
    }
    let shards = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, MAX_UDP_SHARDS);
    let (udp_sockets, tcp_listener) = bind_listeners(listen, shards, false).await?;
    let udp_error = |source| RelayError::Bind { addr: listen, transport: "udp", source };
    let udp_addr = udp_sockets[0].local_addr().map_err(udp_error)?;
    let tcp_addr = tcp_listener.local_addr().map_err(|source| RelayError::Bind {
        addr: listen,
        transport: "tcp",
        source,
    })?;
    // The UDP listener is the one socket of ours a relayed (UDP) datagram could reach: on every
    // address it answers on.
    let mut listener_ips = vec![relay_ip, advertised_ip, listen.ip()];
    listener_ips.extend(turn.relay_ip6.map(IpAddr::V6));
    if listen.ip().is_unspecified() {
        listener_ips.extend([IpAddr::from([127, 0, 0, 1]), IpAddr::from(std::net::Ipv6Addr::LOCALHOST)]);
    }
    let mut own_services: Vec<SocketAddr> =
        listener_ips.into_iter().map(|ip| SocketAddr::new(ip, udp_addr.port())).collect();
    // The IPv6 listener: same rule, on its own port and addresses.
    let listeners6 = match turn.listen6 {
        Some(listen6) => Some(bind_listeners(listen6, shards, true).await?),
        None => None,
    };
    let listen6_addr = match &listeners6 {
        Some((udp6, _)) => Some(udp6[0].local_addr().map_err(|source| RelayError::Bind {
            addr: turn.listen6.unwrap_or(listen),
            transport: "udp",
            source,
        })?),
        None => None,
    };
    if let Some(addr6) = listen6_addr {
        own_services.push(addr6);
        if addr6.ip().is_unspecified() {
            own_services.push(SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), addr6.port()));
        }
    }
    let policy = PeerPolicy::new(turn.peer_policy, &turn.allowed_peer_cidrs, &turn.denied_peer_cidrs)
        .with_own_services(own_services);

    let counters = Arc::new(RelayCounters::default());
    let cluster_relays = Arc::new(ClusterRelays::new(turn.relay_ports.clone()));
    let guard = Arc::new(PeerGuard {
        policy,
        own: Arc::new(OwnRelays::default()),
        cluster: cluster_relays.clone(),
        counters: counters.clone(),
        bandwidth_bytes_per_s: turn.allocation_bandwidth_bytes_per_s,
    });
    let family = |bind: IpAddr, advertised: IpAddr| Some(RelayAddress { bind, advertised });
    let binder = RelayBinder {
        ipv4: if relay_ip.is_ipv4() { family(relay_ip, advertised_ip) } else { None },
        ipv6: if relay_ip.is_ipv6() {
            family(relay_ip, advertised_ip)
        } else {
            turn.relay_ip6.and_then(|ip6| family(IpAddr::V6(ip6), IpAddr::V6(ip6)))
        },
        min_port: *turn.relay_ports.start(),
        max_port: *turn.relay_ports.end(),
        guard: guard.clone(),
    };

    // The listener sockets (IPv4, then IPv6), and a second handle on each for relayed data
    // (see `link`), each registered with the shard that reads it: shard i reads the i-th IPv4
    // socket and the i-th IPv6 one.
    let (udp6_sockets, tcp6_listener) = match listeners6 {
        Some((udp6, tcp6)) => (udp6, Some(tcp6)),
        None => (Vec::new(), None),
    };
    let shard_count = udp_sockets.len().max(1);
    let mut shards =
        (0..shard_count).map(|_| Shard::new()).collect::<Result<Vec<_>, _>>().map_err(udp_error)?;
    let mut senders = DatagramSenders::default();
    let v4 = udp_sockets.into_iter().enumerate();
    let v6 = udp6_sockets.into_iter().enumerate();
    for (index, socket) in v4.chain(v6) {
        let shard = &mut shards[index % shard_count];
        let local = socket.local_addr().map_err(udp_error)?;
        let sender = shard.register(socket.try_clone().map_err(udp_error)?).map_err(udp_error)?;
        let listener = Arc::new(udp::ListenerConn::new(shard.register(socket).map_err(udp_error)?, local));
        // The read loop answers through this same allocation (as a `SharedConn`): the
        // senders find the duplicate handle by its address.
        let conn: SharedConn = listener.clone();
        senders.add(&conn, Arc::new(sender));
        shard.add_listener(listener);
    }

    let dispatcher = Arc::new(Dispatcher {
        auth: Authenticator::new(secret, turn.realm.clone(), turn.require_live_session)
            .with_credential_ttl(settings.turn.credential_ttl_s),
        nonces: NonceMinter::new(),
        guard,
        allocations: AllocationTable::new(
            QuotaLimits { per_user: turn.allocations_per_user, total: turn.max_allocations_total },
            GrantCaps {
                permissions: turn.max_permissions_per_allocation,
                channels: turn.max_channels_per_allocation,
            },
        ),
        counters: counters.clone(),
        presence: presence.clone(),
        require_live_session: turn.require_live_session,
        binder,
        senders,
        bandwidth_bytes_per_s: turn.allocation_bandwidth_bytes_per_s,
        keep_client_family: turn.keep_client_family,
        handoff: handoff::configured(),
    });
    let per_ip = ConnectionsPerIp::new(turn.max_tcp_connections_per_ip, turn.ipv6_prefix_len);
    let proxy_protocol = ProxyProtocol::from_trusted(turn.proxy_protocol_from.clone());

    let (shutdown, shutdown_rx) = watch::channel(false);
    let (departures_tx, departures_rx) = mpsc::unbounded_channel::<String>();
    presence.on_departure(move |user| {
        let _ = departures_tx.send(user.to_string());
    });

    let shards = ShardSet::start(shards, &dispatcher, &shutdown_rx).map_err(udp_error)?;
    let mut tasks = Vec::new();
    for listener in std::iter::once(tcp_listener).chain(tcp6_listener) {
        tasks.push(tokio::spawn(tcp::accept_loop(
            listener,
            dispatcher.clone(),
            per_ip.clone(),
            None,
            proxy_protocol.clone(),
            shutdown_rx.clone(),
        )));
    }
    tasks.extend([
        tokio::spawn(teardown::teardown_departed(dispatcher.clone(), departures_rx, shutdown_rx.clone())),
        tokio::spawn(teardown::sweep_expired(dispatcher.clone(), shutdown_rx.clone())),
    ]);
    // Said once at info: the first thing to compare when calls connect locally but not remotely.
    tracing::info!(
        "turn relay sockets on {relay_ip}{}, advertised to clients as {advertised_ip}, ports {}-{}",
        turn.relay_ip6.map(|ip6| format!(" and {ip6}")).unwrap_or_default(),
        turn.relay_ports.start(),
        turn.relay_ports.end()
    );
    Ok(RelayHandle {
        relay_ip,
        advertised_ip,
        relay_ip6: turn.relay_ip6,
        udp_addr,
        tcp_addr,
        tls_addr: None,
        listen6_addr,
        tls6_addr: None,
        counters,
        cluster_relays,
        dispatcher,
        per_ip,
        proxy_protocol,
        shutdown,
        shutdown_rx,
        tasks,
        shards,
    })
}

fn summaries(dispatcher: &Dispatcher) -> Vec<AllocationSummary> {
    let now = unix_now();
    dispatcher.allocations.all().iter().map(|a| a.summary(now)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
