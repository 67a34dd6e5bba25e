//! The accept loop in front of warp: plain TCP, or TLS terminated here with tokio-rustls.
//!
//! warp 0.4 has no TLS of its own, and its acceptor trait is private, so we run hyper directly
//! with warp's filter as the service. WebSocket upgrades are taken out before routing and
//! answered by `websocket::accept`, which gets the TCP peer address the same way for both
//! transports.
//!
//! Nothing a peer does can hold a connection open for free: the accept-time `Admission` caps
//! connections in total, per IP and pending (not yet upgraded); hyper's header-read timeout
//! (which needs a timer, hence `TokioTimer`) closes connections that send half a request head,
//! or nothing, including idle keep-alives; the TLS handshake has its own deadline.
//!
//! With `[server] proxy_protocol`, a connection from a listed load balancer is admitted only
//! after its PROXY header named the client (`proxy_protocol`), and that address is the peer
//! from then on: admission caps, the hub's per-IP rules and X-Forwarded-For all start from it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use warp::filters::BoxedFilter;
use warp::reply::Response;

use super::admission::{Admission, Ticket};
use super::{websocket, HttpState};
use crate::proxy_protocol::ProxyProtocol;
use crate::tls::TlsConfigSource;

/// Every route, type-erased (warp's own bounds are private, so the server takes this type).
pub type Routes = BoxedFilter<(Response,)>;

/// Serves `filter` on `listener` until `stop` fires; TLS when `tls` is given.
/// WebSocket upgrades are answered by `websocket::accept`, everything else by the warp routes.
pub async fn serve(
    listener: TcpListener,
    filter: Routes,
    state: Arc<HttpState>,
    tls: Option<TlsConfigSource>,
    mut stop: oneshot::Receiver<()>,
) {
    // Graceful shutdown, mini-redis style: `stopping` tells every connection to finish its
    // request and close; each task holds a clone of `alive`, so `all_done` resolves when the
    // last one ends. (hyper-util's GracefulShutdown only takes its own auto connections.)
    let (stopping_tx, stopping) = watch::channel(false);
    let (alive, mut all_done) = mpsc::channel::<()>(1);
    let admission = Admission::new(&state.settings, state.trusted_proxies.clone());
    let proxy_protocol = state.settings.server.proxy_protocol();
    let handshake_timeout = Duration::from_millis(state.settings.timeouts.tls_handshake_ms);
    while let Some((stream, peer)) = accept_next(&listener, &mut stop).await {
        // A balancer's connection is admitted once its header named the client (in the task).
        let entry = match proxy_protocol.clone().filter(|proxy| proxy.expects_header_from(peer.ip())) {
            Some(proxy) => Entry::FromBalancer(proxy),
            None => match admission.admit(peer.ip()) {
                Ok(ticket) => Entry::Admitted(ticket),
                Err(refused) => {
                    // Closed before a byte is read: no timer, no task, no buffer for this peer.
                    tracing::debug!(?refused, "connection refused at accept");
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let filter = filter.clone();
        let state = state.clone();
        let watcher = Watcher { stopping: stopping.clone(), _alive: alive.clone() };
        let tls = tls.clone();
        let admission = admission.clone();
        tokio::spawn(async move {
            let mut stream = stream;
            let (peer, ticket) = match entry {
                Entry::Admitted(ticket) => (peer, ticket),
                Entry::FromBalancer(proxy) => {
                    match admit_proxied(&proxy, &admission, &mut stream, peer).await {
                        Some(admitted) => admitted,
                        None => return,
                    }
                }
            };
            match tls {
                None => serve_connection(stream, peer, filter, state, watcher, ticket).await,
                Some(tls) => {
                    let handshake = tls.acceptor().accept(stream);
                    match tokio::time::timeout(handshake_timeout, handshake).await {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, peer, filter, state, watcher, ticket).await
                        }
                        Ok(Err(e)) => tracing::debug!("TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    // Plain HTTP requests finish; WebSockets were closed by the hub already.
    let _ = stopping_tx.send(true);
    drop(alive);
    let _ = tokio::time::timeout(Duration::from_secs(1), all_done.recv()).await;
}

/// The next connection on `listener`, or `None` once `stop` fired. A failed accept (typically
/// EMFILE: out of file descriptors) is logged and retried after a pause instead of spinning.
pub async fn accept_next(
    listener: &TcpListener,
    stop: &mut oneshot::Receiver<()>,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => return Some(pair),
                Err(e) => {
                    tracing::warn!(listener = ?listener.local_addr().ok(), "accept failed: {e}");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            },
            _ = &mut *stop => return None,
        }
    }
}

/// How long the accept loop pauses after a failed accept.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// hyper's own HTTP/1 connection builder with the header-read deadline (which needs a timer).
/// Not hyper-util's auto builder: that one first waits for bytes to sniff the protocol
/// version, and a peer that sends nothing would wait there forever, before the header-read
/// timer ever starts.
pub fn http1_builder(header_read_timeout: Duration) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(header_read_timeout);
    builder
}

/// How an accepted connection gets its admission ticket.
enum Entry {
    /// Admitted at accept, by the socket peer's address.
    Admitted(Ticket),
    /// From a load balancer: admitted once its PROXY header named the client.
    FromBalancer(ProxyProtocol),
}

/// Reads a balancer's PROXY header and admits the client it names; `None` closes the connection.
async fn admit_proxied(
    proxy: &ProxyProtocol,
    admission: &std::sync::Arc<Admission>,
    stream: &mut TcpStream,
    balancer: SocketAddr,
) -> Option<(SocketAddr, Ticket)> {
    let client = match proxy.read_client(stream, balancer).await {
        Ok(client) => client,
        Err(e) => {
            tracing::debug!(%balancer, "connection from a load balancer closed: {e}");
            return None;
        }
    };
    match admission.admit(client.ip()) {
        Ok(ticket) => Some((client, ticket)),
        Err(refused) => {
            tracing::debug!(?refused, %client, %balancer, "proxied connection refused");
            None
        }
    }
}

async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    filter: Routes,
    state: Arc<HttpState>,
    mut watcher: Watcher,
    ticket: Ticket,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let header_read_timeout = Duration::from_millis(state.settings.timeouts.header_read_ms);
    let service = warp::service(filter);
    let session_ticket = ticket.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let mut service = service.clone();
        let state = state.clone();
        let ticket = session_ticket.clone();
        async move {
            if websocket::is_upgrade_request(&request) {
                return Ok(websocket::accept(request, peer, &state, ticket));
            }
            tower_service::Service::call(&mut service, request).await
        }
    });
    let connection =
        http1_builder(header_read_timeout).serve_connection(TokioIo::new(stream), service).with_upgrades();
    let mut connection = std::pin::pin!(connection);
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        () = async { let _ = watcher.stopping.wait_for(|stopping| *stopping).await; } => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!("http connection ended with an error: {e}");
    }
    drop(ticket); // the WebSocket session, if any, holds its own clone
}

/// What a connection task holds to take part in the graceful shutdown.
struct Watcher {
    stopping: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
}
