//! Wiring: opens the store, starts the relay, the hub runner and the HTTP listener, and shuts
//! them down in the right order (announce, close sockets, flush the store).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::Context;
use rand::SeedableRng;
use tokio::sync::oneshot;
use warp::{Filter, Reply};

use crate::config::{Registration, Settings};
use crate::http::websocket::ChatWriters;
use crate::http::{listener, routes, HttpState};
use crate::hub::relay_only::RelayAddresses;
use crate::hub::runner::{self, HubHandle};
use crate::hub::Hub;
use crate::ice_servers::{IceServerIssuer, Ipv6Listener, TurnEndpoints};
use crate::presence::VoicePresence;
use crate::store::{Store, StoreThread};
use crate::tls::TlsConfigSource;
use crate::turn::{load_or_create_secret, start_relay, RelayHandle};

/// A started server. Drop order matters, so use `shutdown`.
pub struct RunningServer {
    pub http_addr: SocketAddr,
    /// The admin API, when `[admin] listen` is set.
    pub admin_addr: Option<SocketAddr>,
    pub hub: HubHandle,
    pub presence: Arc<VoicePresence>,
    /// The integrated TURN relay, when `[turn] enabled`.
    pub relay: Option<RelayHandle>,
    hub_task: tokio::task::JoinHandle<()>,
    http_task: tokio::task::JoinHandle<()>,
    stop_http: oneshot::Sender<()>,
    /// Stops the admin listener (dropped with the server otherwise).
    stop_admin: Option<oneshot::Sender<()>>,
    memory_trim: tokio::task::JoinHandle<()>,
    store_thread: StoreThread,
    /// The sessions' chat writers' runtime: stops once the sessions are gone.
    chat_writers: ChatWriters,
}

/// Starts every part; returns once all listeners are bound.
pub async fn start(settings: Settings) -> anyhow::Result<RunningServer> {
    let settings = Arc::new(settings);
    let (store, store_thread, loaded) = Store::open_with_retention(
        &settings.server.data_dir,
        settings.chat.history_limit,
        crate::store::Retention::from_settings(&settings.history),
    )
    .with_context(|| format!("cannot open the store in {}", settings.server.data_dir.display()))?;
    let tls = if settings.server.tls.is_enabled() {
        let tls = TlsConfigSource::load(
            settings.server.tls.cert_file.as_ref(),
            settings.server.tls.key_file.as_ref(),
        )?;
        crate::tls::reload_on_sighup(tls.clone());
        Some(tls)
    } else {
        None
    };
    let presence = Arc::new(VoicePresence::new());
    let cluster = match settings.cluster.enabled() {
        true => Some(crate::cluster::ClusterContext::new(&settings.cluster).context("cluster.redis_url")?),
        false => None,
    };
    if let Some(cluster) = &cluster {
        tracing::info!(node = %cluster.node_id, namespace = %cluster.keys.namespace, "cluster mode");
    }
    let relay = if settings.turn.enabled {
        let secret = match &cluster {
            // Every node must verify every node's credentials: one secret, kept in Redis.
            Some(cluster) if settings.turn.secret.trim().is_empty() => cluster
                .shared_turn_secret()
                .await
                .context("cannot read the shared TURN secret from the cluster store (is Redis up?)")?,
            _ => load_or_create_secret(&settings)?,
        };
        let mut relay = start_relay(&settings, secret.clone(), presence.clone()).await?;
        tracing::info!("turn listening on udp {} and tcp {}", relay.udp_addr, relay.tcp_addr);
        if let Some(addr6) = relay.listen6_addr {
            tracing::info!("turn listening on ipv6 udp and tcp {addr6}");
        }
        // TURN over TLS (turns:) with the same certificate, reloaded with it on SIGHUP.
        if let Some(tls) = tls.clone() {
            let listen = settings.turn_config()?.tls_listen;
            let addr = relay.start_tls(listen, move || tls.current()).await?;
            tracing::info!("turn over tls listening on {addr}");
            if let Some(addr6) = relay.tls6_addr {
                tracing::info!("turn over tls listening on ipv6 {addr6}");
            }
        }
        Some((relay, secret))
    } else {
        None
    };
    let ice = match &relay {
        Some((handle, secret)) => ice_server_issuer(&settings, secret.clone(), Some(handle)),
        None => ice_server_issuer(&settings, Vec::new(), None),
    };
    let relay = relay.map(|(handle, _)| handle);
    log_handed_out_urls(&ice);
    let relays = relay_addresses(&settings, relay.as_ref()).await;
    if settings.webrtc.force_relay {
        let list: Vec<String> = relays.iter().map(ToString::to_string).collect();
        if list.is_empty() {
            tracing::warn!("force_relay is on but no relay is configured: every candidate will be dropped");
        } else {
            tracing::info!("force_relay: relay candidates must name one of {}", list.join(", "));
        }
    }

    let relay_list: Vec<String> = relays.iter().map(ToString::to_string).collect();
    let rng = rand::rngs::StdRng::from_os_rng();
    let (hub_handle, hub_task) = match &cluster {
        None => {
            let hub = Hub::new(settings.clone(), ice, loaded.history, loaded.bans, rng)
                .with_admins(loaded.admins)
                .with_relay_addresses(relays);
            runner::spawn_with_gate(
                hub,
                store.clone(),
                presence.clone(),
                crate::password_gate::PasswordGate::from_settings(&settings),
            )
        }
        // History, bans and admins come from the cluster store (the first snapshot, the
        // admin refresh), never from this node's SQLite file.
        Some(cluster) => {
            let hub = Hub::new(settings.clone(), ice, Vec::new(), Default::default(), rng)
                .clustered(cluster.node_id.clone())
                .with_relay_addresses(relays);
            let (commands, queued) = tokio::sync::mpsc::channel(crate::cluster::WRITE_QUEUE);
            let (heartbeats, heartbeats_queued) = tokio::sync::mpsc::channel(1);
            let link = runner::ClusterLink {
                commands,
                heartbeats,
                status: cluster.status.clone(),
                accounts: crate::cluster::accounts::ClusterAccounts::new(cluster)?,
                heartbeat: std::time::Duration::from_millis(settings.cluster.heartbeat_ms),
                relay: relay.as_ref().map(RelayHandle::control),
            };
            let (handle, task) = runner::spawn_with_cluster(
                hub,
                store.clone(),
                presence.clone(),
                crate::password_gate::PasswordGate::from_settings(&settings),
                Some(link),
            );
            let record = serde_json::json!({
                "node": cluster.node_id,
                "version": env!("CARGO_PKG_VERSION"),
                "started_at": crate::protocol::iso_timestamp(chrono::Utc::now()),
                "relay_addresses": relay_list,
            })
            .to_string();
            let writer = crate::cluster::writer::Writer::new(
                cluster.clone(),
                handle.clone(),
                record,
                settings.history.clone(),
                relay.as_ref().map(|r| r.cluster_relays.clone()),
            )?;
            tokio::spawn(writer.run(queued, heartbeats_queued));
            tokio::spawn(crate::cluster::reader::run(
                cluster.clone(),
                handle.clone(),
                settings.chat.history_limit,
            ));
            (handle, task)
        }
    };

    let bind_addr =
        SocketAddr::new(settings.server.host.parse().context("server.host")?, settings.server.port);
    let listener = tokio::net::TcpListener::bind(bind_addr)
        .await
        .with_context(|| format!("cannot listen on {bind_addr}"))?;
    let http_addr = listener.local_addr()?;
    let gate_invites = settings.chat.invite_only || settings.chat.registration == Registration::Invite;
    let invites = if gate_invites {
        let data_dir = &settings.server.data_dir;
        let gate = match &cluster {
            // One key and one ledger for every node: a link works, and counts, on all of them.
            Some(cluster) => crate::invite::cluster_gate(cluster, data_dir)
                .await
                .context("cannot set up invites in the cluster store (is Redis up?)")?,
            None => {
                crate::invite::InviteGate::new(crate::invite::load_or_create_secret(data_dir)?, store.clone())
            }
        };
        if settings.chat.invite_only {
            tracing::info!("invite-only: sessions need an invite link (relaychat invite) or a member pass");
        }
        Some(gate)
    } else {
        None
    };
    let chat_writers = ChatWriters::start().context("cannot start the chat writers' threads")?;
    let state = Arc::new(HttpState {
        settings: settings.clone(),
        hub: hub_handle.clone(),
        port: http_addr.port(),
        trusted_proxies: settings.server.trusted_proxy_nets(),
        store: store.clone(),
        metrics: crate::metrics::registry(
            hub_handle.stats.clone(),
            relay.as_ref().map(|r| r.counters.clone()),
            cluster.as_ref().map(|c| c.status.clone()),
        ),
        relay_ready: !settings.turn.enabled || relay.is_some(),
        invites,
        cluster: cluster.as_ref().map(|c| c.status.clone()),
        chat_writers: chat_writers.handle(),
    });
    let (admin_addr, stop_admin) = match crate::admin::bind(&settings).await? {
        Some((listener, addr)) => {
            let token = settings.admin.resolve_token()?;
            let protection = if token.is_some() { "bearer token" } else { "loopback, no token" };
            let admin_state = Arc::new(crate::admin::AdminState {
                settings: settings.clone(),
                hub: hub_handle.clone(),
                relay: relay.as_ref().map(RelayHandle::control),
                token: token.map(|t| crate::admin::token::BearerToken::new(&t)),
            });
            let (stop, stopped) = oneshot::channel::<()>();
            tokio::spawn(crate::admin::serve(listener, admin_state, stopped));
            tracing::info!("admin api listening on {addr} ({protection})");
            (Some(addr), Some(stop))
        }
        None => (None, None),
    };
    let (stop_http, stopped) = oneshot::channel::<()>();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let http_task = tokio::spawn(listener::serve(
        listener,
        routes(state.clone()).map(Reply::into_response).boxed(),
        state,
        tls,
        stopped,
    ));
    tracing::info!("http listening on {http_addr} ({scheme})");
    Ok(RunningServer {
        http_addr,
        admin_addr,
        stop_admin,
        hub: hub_handle,
        presence,
        relay,
        hub_task,
        http_task,
        stop_http,
        memory_trim: crate::memory::spawn_periodic_trim(),
        store_thread,
        chat_writers,
    })
}

/// The `iceServers` source for `webrtc-joined`.
fn ice_server_issuer(settings: &Settings, secret: Vec<u8>, relay: Option<&RelayHandle>) -> IceServerIssuer {
    let turn = &settings.turn;
    let endpoints = if let Some(relay) = relay {
        let public_host = Some(turn.public_host.trim().to_string()).filter(|h| !h.is_empty());
        let ipv6 = relay.listen6_addr.map(|addr6| Ipv6Listener {
            ip: crate::turn::relay_ip::public_ipv6(addr6.ip()),
            port: addr6.port(),
            tls_port: relay.tls6_addr.map(|a| a.port()),
        });
        TurnEndpoints::Integrated {
            secret,
            public_host,
            port: relay.udp_addr.port(),
            tls_port: relay.tls_addr.map(|a| a.port()),
            ipv6,
        }
    } else if !turn.external_servers.is_empty() {
        TurnEndpoints::External(
            turn.external_servers.iter().map(|s| (s.urls.clone(), s.secret.as_bytes().to_vec())).collect(),
        )
    } else {
        TurnEndpoints::None
    };
    IceServerIssuer { endpoints, ttl_s: turn.credential_ttl_s }
}

/// Says at start-up exactly which TURN URLs clients will be given: the first thing to compare
/// when calls work locally but not from outside.
fn log_handed_out_urls(ice: &IceServerIssuer) {
    match &ice.endpoints {
        TurnEndpoints::Integrated { public_host, port, tls_port, ipv6, .. } => {
            let host =
                public_host.clone().unwrap_or_else(|| "<the host name each client connected to>".into());
            let tls = tls_port.map(|p| format!(", turns:{host}:{p}?transport=tcp")).unwrap_or_default();
            tracing::info!(
                "TURN URLs handed out: turn:{host}:{port}?transport=udp, turn:{host}:{port}?transport=tcp{tls}"
            );
            match ipv6 {
                Some(Ipv6Listener { ip: Some(ip), port, .. }) => tracing::info!(
                    "IPv6 TURN listener on port {port}: turn:[{ip}]:{port} URLs are added when clients \
                     are handed an IPv4 address (a host name covers both families)"
                ),
                Some(Ipv6Listener { ip: None, port, .. }) => tracing::warn!(
                    "IPv6 TURN listener on port {port}, but this machine has no IPv6 address towards \
                     the Internet: only a public_host name with an AAAA record leads clients to it"
                ),
                None => {}
            }
        }
        TurnEndpoints::External(servers) => {
            let urls: Vec<&str> =
                servers.iter().flat_map(|(urls, _)| urls.iter().map(String::as_str)).collect();
            tracing::info!("TURN URLs handed out (external servers): {}", urls.join(", "));
        }
        TurnEndpoints::None => {
            tracing::info!("no TURN server is handed out (turn disabled, no external servers)")
        }
    }
}

/// The addresses a relay candidate may name under force_relay: the integrated relay's relay and
/// advertised addresses, and for external TURN servers their configured `relay_addresses` plus
/// what their URLs' hosts resolve to now (a name that does not resolve is logged and skipped;
/// its candidates will then be dropped, which fails closed).
async fn relay_addresses(settings: &Settings, relay: Option<&RelayHandle>) -> RelayAddresses {
    let mut addresses: Vec<IpAddr> = Vec::new();
    if let Some(relay) = relay {
        addresses.extend(relay.relayed_ips());
    }
    for server in &settings.turn.external_servers {
        addresses.extend(server.relay_addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()));
        for url in &server.urls {
            let Some(host) = turn_url_host(url) else {
                tracing::warn!("turn.external_servers: cannot read the host of {url:?}");
                continue;
            };
            let resolved = tokio::net::lookup_host((host.as_str(), 0)).await;
            match resolved {
                Ok(found) => addresses.extend(found.map(|a| a.ip())),
                Err(e) => tracing::warn!("turn.external_servers: cannot resolve {host}: {e}"),
            }
        }
    }
    RelayAddresses::new(addresses)
}

/// The host of a `turn:`/`turns:` URL (RFC 7065): `turn:host[:port][?transport=...]`, IPv6 in
/// brackets.
fn turn_url_host(url: &str) -> Option<String> {
    let rest = url.strip_prefix("turns:").or_else(|| url.strip_prefix("turn:"))?;
    let authority = rest.split('?').next()?;
    let host = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next()?,
        None => authority.split(':').next()?,
    };
    (!host.is_empty()).then(|| host.to_string())
}

impl RunningServer {
    /// Announces the shutdown to every user, closes every socket, flushes the store.
    pub async fn shutdown(self) {
        if let Some(stop_admin) = self.stop_admin {
            let _ = stop_admin.send(());
        }
        self.hub.shutdown().await;
        let _ = self.hub_task.await;
        let _ = self.stop_http.send(());
        // Sessions end once their sockets are closed; don't wait on a stuck peer forever.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.http_task).await;
        drop(self.chat_writers);
        self.memory_trim.abort();
        if let Some(relay) = self.relay {
            relay.close().await;
        }
        drop(self.hub);
        self.store_thread.close();
    }
}

#[cfg(test)]
mod tests {
    use super::turn_url_host;

    #[test]
    fn turn_url_hosts() {
        assert_eq!(
            turn_url_host("turn:turn.example.org:3478?transport=udp").as_deref(),
            Some("turn.example.org")
        );
        assert_eq!(turn_url_host("turns:203.0.113.5:5349?transport=tcp").as_deref(), Some("203.0.113.5"));
        assert_eq!(turn_url_host("turn:[2001:db8::5]:3478").as_deref(), Some("2001:db8::5"));
        assert_eq!(turn_url_host("turn:example.org").as_deref(), Some("example.org"));
        assert_eq!(turn_url_host("stun:example.org"), None);
        assert_eq!(turn_url_host("turn:"), None);
    }
}
