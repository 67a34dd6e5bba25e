//! The admin API: an HTTP/1.1 JSON API for the operator on its own listener (`[admin] listen`,
//! never the public port), and the `relaychat admin ...` client that calls it.
//!
//! - `token`: the bearer token check (constant time);
//! - `routes`: one request in, one JSON reply out (the endpoints of docs/ADMIN.md);
//! - `client`: the CLI side (a hyper HTTP/1.1 client, human-readable or raw JSON output).
//!
//! The listener is built like the public one: the accept-time `Admission` caps connections in
//! total and per IP, hyper's header-read timeout closes a peer that sends half a request, and
//! bodies are bounded. Every operator action goes to the hub as a `HubEvent::Admin` (the hub
//! stays sans-IO); what the relay must do goes through its `RelayControl`.

pub mod client;
pub mod routes;
pub mod token;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::config::Settings;
use crate::http::admission::Admission;
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
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, stop: oneshot::Receiver<()>) {
    let admission = Admission::new(&state.settings, Vec::new());
    let header_read_timeout = Duration::from_millis(state.settings.timeouts.header_read_ms);
    let mut stop = std::pin::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!("admin api: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
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
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(header_read_timeout);
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).await {
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
