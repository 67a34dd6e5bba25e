//! Starting and stopping the relay: [`start_relay`] builds every part from the typed settings
//! and spawns the loops; [`RelayHandle`] is what the server keeps to add TLS, read gauges and
//! close it all in order.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use turn::allocation::allocation_manager::{Manager, ManagerConfig};

use crate::config::Settings;
use crate::presence::VoicePresence;
use crate::turn::allocations::{AllocationTable, Transport};
use crate::turn::auth::Authenticator;
use crate::turn::counters::RelayCounters;
use crate::turn::dispatch::{Dispatcher, Managers};
use crate::turn::error::RelayError;
use crate::turn::grants::GrantCaps;
use crate::turn::nonce::NonceMinter;
use crate::turn::per_ip::ConnectionsPerIp;
use crate::turn::policy::PeerPolicy;
use crate::turn::quota::QuotaLimits;
use crate::turn::relay_ip::resolve_relay_ip;
use crate::turn::relay_socket::{OwnRelays, PeerGuard, RelayAllocator};
use crate::turn::sockets::{bind_listeners, bind_tcp};
use crate::turn::{tcp, teardown, udp};

/// At most this many UDP listener sockets (SO_REUSEPORT), one read loop each; one per core.
const MAX_UDP_SHARDS: usize = 4;

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
    dispatcher: Arc<Dispatcher>,
    per_ip: Arc<ConnectionsPerIp>,
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
        for manager in self.dispatcher.managers.all() {
            let _ = manager.close().await;
        }
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
        let bind_error = |source| RelayError::Bind { addr: listen, transport: "tls", source };
        let listener = bind_tcp(listen).map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        let config: tcp::TlsConfigFn = Arc::new(config);
        self.tasks.push(tokio::spawn(tcp::accept_loop(
            listener,
            self.dispatcher.clone(),
            self.per_ip.clone(),
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
        self.dispatcher.guard.own.len()
    }

    /// TURN-over-TCP/TLS connections open from `ip` (grouped like the per-IP cap).
    pub fn tcp_connections_from(&self, ip: IpAddr) -> usize {
        self.per_ip.open_from(ip)
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
    let (udp_sockets, tcp_listener) = bind_listeners(listen, shards).await?;
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
    if listen.ip().is_unspecified() {
        listener_ips.extend([IpAddr::from([127, 0, 0, 1]), IpAddr::from(std::net::Ipv6Addr::LOCALHOST)]);
    }
    let policy = PeerPolicy::new(turn.peer_policy, &turn.allowed_peer_cidrs, &turn.denied_peer_cidrs)
        .with_own_services(listener_ips.into_iter().map(|ip| SocketAddr::new(ip, udp_addr.port())));

    let counters = Arc::new(RelayCounters::default());
    let guard = Arc::new(PeerGuard {
        policy,
        own: Arc::new(OwnRelays::default()),
        counters: counters.clone(),
        bandwidth_bytes_per_s: turn.allocation_bandwidth_bytes_per_s,
    });
    let manager = |notify| {
        Arc::new(Manager::new(ManagerConfig {
            relay_addr_generator: Box::new(RelayAllocator {
                relay_ip,
                advertised_ip,
                min_port: *turn.relay_ports.start(),
                max_port: *turn.relay_ports.end(),
                guard: guard.clone(),
            }),
            alloc_close_notify: Some(notify),
        }))
    };
    let (udp_closed_tx, udp_closed_rx) = mpsc::channel(1024);
    let (tcp_closed_tx, tcp_closed_rx) = mpsc::channel(1024);
    let (tls_closed_tx, tls_closed_rx) = mpsc::channel(1024);
    let managers =
        Managers { udp: manager(udp_closed_tx), tcp: manager(tcp_closed_tx), tls: manager(tls_closed_tx) };

    let dispatcher = Arc::new(Dispatcher {
        auth: Authenticator::new(secret, turn.realm.clone(), turn.require_live_session),
        nonces: NonceMinter::new(),
        guard,
        relay_is_ipv4: relay_ip.is_ipv4(),
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
        managers,
        unauthenticated: Default::default(),
    });
    let per_ip = ConnectionsPerIp::new(turn.max_tcp_connections_per_ip, turn.ipv6_prefix_len);

    let (shutdown, shutdown_rx) = watch::channel(false);
    let (departures_tx, departures_rx) = mpsc::unbounded_channel::<String>();
    presence.on_departure(move |user| {
        let _ = departures_tx.send(user.to_string());
    });

    let (finished, finished_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for socket in udp_sockets {
        let local = socket.local_addr().map_err(udp_error)?;
        let listener = Arc::new(udp::ListenerConn::new(socket, local));
        tasks.push(tokio::spawn(udp::read_loop(dispatcher.clone(), listener, shutdown_rx.clone())));
    }
    tasks.extend([
        tokio::spawn(tcp::accept_loop(
            tcp_listener,
            dispatcher.clone(),
            per_ip.clone(),
            None,
            shutdown_rx.clone(),
        )),
        tokio::spawn(teardown::teardown_departed(dispatcher.clone(), departures_rx, shutdown_rx.clone())),
    ]);
    let bookkeeping =
        [(Transport::Udp, udp_closed_rx), (Transport::Tcp, tcp_closed_rx), (Transport::Tls, tls_closed_rx)]
            .into_iter()
            .map(|(transport, rx)| {
                tokio::spawn(teardown::closed_allocations(
                    dispatcher.clone(),
                    transport,
                    rx,
                    finished_rx.clone(),
                ))
            })
            .collect();
    // Said once at info: the first thing to compare when calls connect locally but not remotely.
    tracing::info!(
        "turn relay sockets on {relay_ip}, advertised to clients as {advertised_ip}, ports {}-{}",
        turn.relay_ports.start(),
        turn.relay_ports.end()
    );
    Ok(RelayHandle {
        relay_ip,
        advertised_ip,
        udp_addr,
        tcp_addr,
        tls_addr: None,
        counters,
        dispatcher,
        per_ip,
        shutdown,
        shutdown_rx,
        finished,
        tasks,
        bookkeeping,
    })
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
