//! HTTP: the WebSocket upgrade (on any path, handled in `listener` before routing),
//! `/server-info` and `/info` (GET and HEAD), `/healthz`, `/readyz`, `/metrics`, and the built-in client.

pub mod admission;
pub mod listener;
pub mod server_info;
pub mod static_files;
pub mod websocket;

use std::sync::Arc;

use ipnet::IpNet;
use prometheus_client::registry::Registry;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use crate::config::Settings;
use crate::hub::runner::HubHandle;
use crate::store::Store;

/// What the routes need.
pub struct HttpState {
    pub settings: Arc<Settings>,
    pub hub: HubHandle,
    /// The bound HTTP port (differs from the configured one when that is 0).
    pub port: u16,
    pub trusted_proxies: Vec<IpNet>,
    pub store: Store,
    pub metrics: Registry,
    /// False when `[turn] enabled` but the relay is not running.
    pub relay_ready: bool,
    /// Checks invites when `[chat] invite_only` or `registration = "invite"`.
    pub invites: Option<crate::invite::InviteGate>,
    /// Cluster mode: the link to the cluster store (Redis).
    pub cluster: Option<Arc<crate::cluster::ClusterStatus>>,
    /// Where the sessions' chat writers run (`websocket::ChatWriters`).
    pub chat_writers: tokio::runtime::Handle,
}

pub fn routes(state: Arc<HttpState>) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let with_state = {
        let state = state.clone();
        warp::any().map(move || state.clone())
    };
    // HEAD too: the original answers /server-info whatever the method, and uptime probes use HEAD.
    let info = warp::get()
        .or(warp::head())
        .unify()
        .and(warp::path("server-info").or(warp::path("info")).unify())
        .and(warp::path::end())
        .and(with_state.clone())
        .map(|state: Arc<HttpState>| {
            let body = server_info::server_info(&state.settings, state.port, state.hub.stats.snapshot());
            warp::reply::with_header(warp::reply::json(&body), "Access-Control-Allow-Origin", "*")
        });
    let healthz = warp::get().and(warp::path("healthz")).and(warp::path::end()).map(|| "ok");
    let readyz = warp::get().and(warp::path("readyz")).and(warp::path::end()).and(with_state.clone()).then(
        |state: Arc<HttpState>| async move {
            let mut problems = Vec::new();
            if let Err(e) = state.store.ping().await {
                problems.push(format!("store: {e}"));
            }
            if state.cluster.as_ref().is_some_and(|cluster| !cluster.is_up()) {
                problems.push(
                    "cluster store: Redis is unreachable (no new users, no chat until it is back)"
                        .to_string(),
                );
            }
            if !state.relay_ready {
                problems.push("turn: relay sockets are not bound".to_string());
            }
            if problems.is_empty() {
                warp::reply::with_status("ready".to_string(), StatusCode::OK)
            } else {
                warp::reply::with_status(problems.join("\n"), StatusCode::SERVICE_UNAVAILABLE)
            }
        },
    );
    let metrics = warp::get().and(warp::path("metrics")).and(warp::path::end()).and(with_state.clone()).map(
        |state: Arc<HttpState>| {
            warp::reply::with_header(
                crate::metrics::render(&state.metrics),
                "Content-Type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
        },
    );
    let assets = warp::get().and(warp::path::full()).map(|path: warp::path::FullPath| {
        match static_files::asset(path.as_str()) {
            Some(response) => response.into_response(),
            None => warp::reply::with_status("Not found", StatusCode::NOT_FOUND).into_response(),
        }
    });
    info.or(healthz).or(readyz).or(metrics).or(assets)
}
