//! The admin API: an HTTP/1.1 JSON API for the operator on its own listener (`[admin] listen`,
//! never the public port), and the `relaychat admin ...` client that calls it.
//!
//! - `token`: the bearer token check (constant time);
//! - `routes`: one request in, one JSON reply out (the endpoints of docs/ADMIN.md);
//! - `client`: the CLI side (a hyper HTTP/1.1 client, human-readable or raw JSON output);
//! - `turn_usage`: each session's TURN allocations and traffic, from the relay.
//!
//! The listener is built like the public one, from the same parts (`http::listener`'s accept
//! loop step and HTTP/1 builder): the accept-time `Admission` caps connections in
//! total and per IP, hyper's header-read timeout closes a peer that sends half a request, and
//! bodies are bounded. Every operator action goes to the hub as a `HubEvent::Admin` (the hub
//! stays sans-IO); what the relay must do goes through its `RelayControl`.

pub mod client;
pub mod routes;
pub mod token;
pub mod turn_usage;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::config::Settings;
use crate::http::admission::Admission;
use crate::http::listener::{accept_next, http1_builder};
use crate::hub::runner::HubHandle;
use crate::turn::RelayControl;

/// What the admin routes need.
pub struct AdminState {
    pub settings: Arc<Settings>,
    pub hub: HubHandle,
    /// The integrated relay, when it runs.
    pub relay: Option<RelayControl>,
    /// `None`: no token configured (only allowed on loopback, see `AdminSettings`).
    pub token: Option<token::BearerToken>,
}

/// Serves the admin API on `listener` until `stop` fires.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, mut stop: oneshot::Receiver<()>) {
    let admission = Admission::new(&state.settings, Vec::new());
    let header_read_timeout = Duration::from_millis(state.settings.timeouts.header_read_ms);
    while let Some((stream, peer)) = accept_next(&listener, &mut stop).await {
        let Ok(ticket) = admission.admit(peer.ip()) else {
            tracing::debug!("admin api: connection refused at accept (too many)");
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(routes::handle(&state, peer, request).await) }
            });
            let connection =
                http1_builder(header_read_timeout).serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                tracing::debug!("admin api connection ended with an error: {e}");
            }
            drop(ticket);
        });
    }
}

/// Binds `[admin] listen` and logs where the API is; `None` when the API is off.
pub async fn bind(settings: &Settings) -> anyhow::Result<Option<(TcpListener, SocketAddr)>> {
    let Some(addr) = settings.admin.listen_addr()? else { return Ok(None) };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for the admin API ([admin] listen): {e}"))?;
    let bound = listener.local_addr()?;
    Ok(Some((listener, bound)))
}
