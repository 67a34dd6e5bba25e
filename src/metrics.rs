//! Prometheus metrics, encoded by `prometheus-client` at scrape time from the live counters.
//!
//! Nothing is copied on the hot paths: the hub runner and the relay bump plain atomics, and this
//! collector reads them when `/metrics` is scraped. Labels are fixed (direction, reason), never a
//! user name or an IP address, so cardinality stays constant whatever the traffic.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::cluster::ClusterStatus;
use crate::hub::relay_only::{DropReason, SanitizedField};
use crate::hub::runner::SharedStats;
use crate::turn::counters::Count;
use crate::turn::RelayCounters;

#[derive(Debug)]
struct LiveCollector {
    hub: Arc<SharedStats>,
    relay: Option<Arc<RelayCounters>>,
    cluster: Option<Arc<ClusterStatus>>,
}

fn plain_gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> std::fmt::Result {
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
}

/// Cluster mode's gauges: is Redis reachable, how many nodes, how far behind the log this node is.
fn cluster_metrics(encoder: &mut DescriptorEncoder, cluster: &ClusterStatus) -> std::fmt::Result {
    plain_gauge(
        encoder,
        "relaychat_cluster_redis_up",
        "1 if both the writer and the log reader reach the cluster store (Redis).",
        i64::from(cluster.is_up()),
    )?;
    plain_gauge(
        encoder,
        "relaychat_cluster_nodes_alive",
        "Nodes whose record has not expired, as of this node's last heartbeat.",
        cluster.nodes_alive.load(Ordering::Relaxed) as i64,
    )?;
    let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
    let last =
        cluster.last_applied_ms.load(Ordering::Relaxed).max(cluster.caught_up_ms.load(Ordering::Relaxed));
    let lag_s = if last == 0 { 0.0 } else { now_ms.saturating_sub(last) as f64 / 1000.0 };
    let lag = ConstGauge::new(lag_s);
    lag.encode(encoder.encode_descriptor(
        "relaychat_cluster_log_lag_seconds",
        "Seconds since this node last applied a log entry or found the log fully read.",
        None,
        lag.metric_type(),
    )?)?;
    counter(
        encoder,
        "relaychat_cluster_publish_failures",
        "Changes this node could not write to the cluster store (each sender was told).",
        &cluster.publish_failures,
    )?;
    counter(
        encoder,
        "relaychat_cluster_resyncs",
        "Times this node loaded the shared state from a snapshot (start-up, or a gap in the log).",
        &cluster.resyncs,
    )
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: &AtomicUsize) -> std::fmt::Result {
    let gauge = ConstGauge::new(value.load(Ordering::Relaxed) as i64);
    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: &impl Count) -> std::fmt::Result {
    let counter = ConstCounter::new(value.value());
    counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)
}

/// One counter family with a fixed label (e.g. direction="in"/"out").
fn labeled_counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: &[(&str, &dyn Count)],
) -> std::fmt::Result {
    let mut family =
        encoder.encode_descriptor(name, help, None, prometheus_client::metrics::MetricType::Counter)?;
    for (label_value, value) in values {
        let counter = ConstCounter::new(value.value());
        counter.encode(family.encode_family(&[(label, *label_value)])?)?;
    }
    Ok(())
}

/// One counter family from plain values (a snapshot taken under a lock).
fn labeled_values(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'static str, u64)>,
) -> std::fmt::Result {
    let mut family =
        encoder.encode_descriptor(name, help, None, prometheus_client::metrics::MetricType::Counter)?;
    for (label_value, value) in values {
        ConstCounter::new(value).encode(family.encode_family(&[(label, label_value)])?)?;
    }
    Ok(())
}

impl Collector for LiveCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let hub = &self.hub;
        gauge(&mut encoder, "relaychat_connections", "Open WebSocket connections.", &hub.open_sockets)?;
        gauge(&mut encoder, "relaychat_users", "Users online (named or logged in).", &hub.connected_users)?;
        gauge(&mut encoder, "relaychat_voice_participants", "Users in voice chat.", &hub.voice_participants)?;
        gauge(
            &mut encoder,
            "relaychat_hub_queue_depth",
            "Events waiting for the hub when it took its last one (how far it is behind).",
            &hub.queue_depth,
        )?;
        // Scrapes run on the server's runtime; a task that outlives its connection shows here.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let tasks = ConstGauge::new(runtime.metrics().num_alive_tasks() as i64);
            let help = "Tasks alive on the server's async runtime (sessions, relay loops, timers).";
            tasks.encode(encoder.encode_descriptor(
                "relaychat_runtime_tasks",
                help,
                None,
                tasks.metric_type(),
            )?)?;
        }
        if let Some(bytes) = crate::memory::heap_in_use_bytes() {
            let heap = ConstGauge::new(bytes as i64);
            let help = "Heap bytes the allocator has handed out and not yet had back (leak watch).";
            heap.encode(encoder.encode_descriptor(
                "relaychat_heap_in_use_bytes",
                help,
                None,
                heap.metric_type(),
            )?)?;
        }
        counter(
            &mut encoder,
            "relaychat_messages_in",
            "WebSocket messages received from clients.",
            &hub.frames_in,
        )?;
        counter(
            &mut encoder,
            "relaychat_messages_out",
            "WebSocket messages queued to clients.",
            &hub.frames_out,
        )?;
        counter(
            &mut encoder,
            "relaychat_outbound_queue_drops",
            "Clients disconnected because their outbound queue was full.",
            &hub.outbound_queue_drops,
        )?;
        counter(
            &mut encoder,
            "relaychat_ingress_drops",
            "Client frames dropped on arrival over the ingress budget (floods; never reached the hub).",
            &hub.ingress_drops,
        )?;
        let privacy = hub.privacy.lock().map(|t| *t).unwrap_or_default();
        labeled_values(
            &mut encoder,
            "relaychat_privacy_candidates_dropped",
            "Candidates (messages and SDP lines) not relayed under force_relay, by reason.",
            "reason",
            DropReason::ALL.map(|r| (r.label(), privacy.dropped(r))),
        )?;
        labeled_values(
            &mut encoder,
            "relaychat_privacy_fields_sanitized",
            "Signaling fields rewritten or removed under force_relay, by field.",
            "field",
            SanitizedField::ALL.map(|f| (f.label(), privacy.sanitized(f))),
        )?;
        if let Some(cluster) = &self.cluster {
            cluster_metrics(&mut encoder, cluster)?;
        }
        let Some(relay) = &self.relay else { return Ok(()) };
        let active = ConstGauge::new(relay.allocations_active.load(Ordering::Relaxed) as i64);
        active.encode(encoder.encode_descriptor(
            "relaychat_turn_allocations_active",
            "TURN allocations alive now.",
            None,
            active.metric_type(),
        )?)?;
        counter(
            &mut encoder,
            "relaychat_turn_allocations",
            "TURN allocations created.",
            &relay.allocations_total,
        )?;
        let directions =
            |bytes_in, bytes_out| -> [(&str, &dyn Count); 2] { [("in", bytes_in), ("out", bytes_out)] };
        labeled_counters(
            &mut encoder,
            "relaychat_turn_relayed_bytes",
            "Bytes relayed: in = from peers to clients, out = from clients to peers.",
            "direction",
            &directions(&relay.relayed_bytes_in, &relay.relayed_bytes_out),
        )?;
        labeled_counters(
            &mut encoder,
            "relaychat_turn_relayed_packets",
            "Packets relayed: in = from peers to clients, out = from clients to peers.",
            "direction",
            &directions(&relay.relayed_packets_in, &relay.relayed_packets_out),
        )?;
        labeled_counters(
            &mut encoder,
            "relaychat_turn_auth_failures",
            "TURN requests refused by authentication, by reason.",
            "reason",
            &[
                ("bad_credential", &relay.auth_failures_bad_credential),
                ("expired", &relay.auth_failures_expired),
                ("not_in_voice", &relay.auth_failures_not_in_voice),
                ("malformed", &relay.auth_failures_malformed),
                ("revoked", &relay.auth_failures_revoked),
            ],
        )?;
        counter(
            &mut encoder,
            "relaychat_turn_denied_peers",
            "Datagrams and requests refused by the peer policy.",
            &relay.denied_peers,
        )?;
        counter(
            &mut encoder,
            "relaychat_turn_quota_refusals",
            "Allocations refused by quotas.",
            &relay.quota_refusals,
        )?;
        counter(
            &mut encoder,
            "relaychat_turn_permission_cap_refusals",
            "CreatePermission/ChannelBind refused: the allocation holds turn.max_permissions_per_allocation peers.",
            &relay.permission_cap_refusals,
        )?;
        counter(
            &mut encoder,
            "relaychat_turn_channel_cap_refusals",
            "ChannelBind refused: the allocation holds turn.max_channels_per_allocation channels.",
            &relay.channel_cap_refusals,
        )?;
        counter(
            &mut encoder,
            "relaychat_turn_tcp_per_ip_refusals",
            "TURN TCP/TLS connections closed at accept: their IP holds turn.max_tcp_connections_per_ip.",
            &relay.tcp_per_ip_refusals,
        )?;
        counter(
            &mut encoder,
            "relaychat_turn_oversize_drops",
            "Peer datagrams dropped for being larger than the relay's 1500-byte packet buffer.",
            &relay.oversize_drops,
        )?;
        counter(
            &mut encoder,
            "relaychat_turn_bandwidth_drops",
            "Datagrams dropped by the per-allocation bandwidth cap.",
            &relay.bandwidth_drops,
        )?;
        counter(
            &mut encoder,
            "relaychat_turn_client_send_failures",
            "Relayed datagrams the kernel refused to send to the client (the rest of their batch still went).",
            &relay.client_send_failures,
        )?;
        counter(
            &mut encoder,
            "relaychat_turn_peer_send_failures",
            "Relayed datagrams the kernel refused to send to a peer in a batched send (the rest still went).",
            &relay.peer_send_failures,
        )?;
        counter(
            &mut encoder,
            "relaychat_turn_sent_by_gso",
            "Relayed UDP datagrams that left in UDP GSO sends (many per system call; 0 without kernel GSO or with batching off).",
            &relay.sent_by_gso,
        )?;
        counter(
            &mut encoder,
            "relaychat_turn_sent_by_sendmmsg",
            "Relayed UDP datagrams that left in sendmmsg calls (0 with batching off).",
            &relay.sent_by_sendmmsg,
        )?;
        Ok(())
    }
}

/// The registry served at `/metrics`.
pub fn registry(
    hub: Arc<SharedStats>,
    relay: Option<Arc<RelayCounters>>,
    cluster: Option<Arc<ClusterStatus>>,
) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(LiveCollector { hub, relay, cluster }));
    registry
}

/// The Prometheus text exposition of `registry`.
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, registry) {
        tracing::error!("cannot encode metrics: {e}");
    }
    text
}
