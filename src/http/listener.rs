//! The accept loop in front of warp: plain TCP, or TLS terminated here with tokio-rustls.
//!
//! warp 0.4 has no TLS of its own, and its acceptor trait is private, so we run hyper directly
//! with warp's filter as the service. WebSocket upgrades are taken out before routing and
//! answered by `websocket::accept`, which gets the TCP peer address the same way for both
//! transports.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use warp::filters::BoxedFilter;
use warp::reply::Response;

use super::{websocket, HttpState};
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
    stop: oneshot::Receiver<()>,
) {
    let graceful = GracefulShutdown::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let filter = filter.clone();
        let state = state.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, peer, filter, state, watcher).await,
                Some(tls) => {
                    let handshake = tls.acceptor().accept(stream);
                    match tokio::time::timeout(std::time::Duration::from_secs(10), handshake).await {
                        Ok(Ok(stream)) => serve_connection(stream, peer, filter, state, watcher).await,
                        Ok(Err(e)) => tracing::debug!("TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    // Plain HTTP requests finish; WebSockets were closed by the hub already.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), graceful.shutdown()).await;
}

async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    filter: Routes,
    state: Arc<HttpState>,
    watcher: hyper_util::server::graceful::Watcher,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let service = warp::service(filter);
    let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let mut service = service.clone();
        let state = state.clone();
        async move {
            if websocket::is_upgrade_request(&request) {
                return Ok(websocket::accept(request, peer, &state));
            }
            tower_service::Service::call(&mut service, request).await
        }
    });
    let builder = Builder::new(TokioExecutor::new()).http1_only();
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    if let Err(e) = watcher.watch(connection.into_owned()).await {
        tracing::debug!("http connection ended with an error: {e}");
    }
}
