//! TURN over TCP and over TLS (RFC 8656 section 2.1, client to server; relayed transport stays UDP).
//!
//! The crate reads datagrams from packet `Conn`s only. Each accepted stream becomes a
//! [`TcpStreamConn`]: a packet `Conn` with exactly one remote address, whose `send_to` frames a
//! message onto the stream through a bounded queue, and whose frames we read here and hand to
//! the same dispatch as UDP datagrams. Relayed media for a client that does not read fast enough
//! is dropped (like on a congested UDP path) instead of growing memory; answers to the client's
//! own requests wait for room instead (TCP clients do not retransmit). One `Conn` per stream
//! rather than one multiplexing `Conn` per listener, because the crate closes an allocation's
//! client `Conn` when the allocation ends: per stream that closes exactly that client's
//! connection, which is what RFC 8656 wants, instead of the whole listener.
//!
//! Framing is in `framing`. Connections per client IP are capped at accept (`per_ip`); from a
//! load balancer listed in `[turn] proxy_protocol_from`, once its PROXY header named the client
//! (`crate::proxy_protocol`), whose address is then the connection's remote address throughout.
//! Idle timeouts: a connection that holds no allocation is closed after
//! [`UNALLOCATED_IDLE`] without a frame (and [`HANDSHAKE_DEADLINE`] after accept in any case);
//! one that holds an allocation lives as long as the allocation (its expiry closes the stream).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio::time::Instant;
use webrtc_util::Conn;

use crate::proxy_protocol::ProxyProtocol;
use crate::turn::allocations::Transport;
use crate::turn::counters::RelayCounters;
use crate::turn::dispatch::Dispatcher;
pub use crate::turn::framing::{frame_for_tcp, read_frame};
use crate::turn::link::{ClientLink, SharedConn};
use crate::turn::packet::is_relayed_data;
use crate::turn::per_ip::ConnectionsPerIp;

/// Frames queued towards one client before new ones are dropped.
pub const SEND_QUEUE_FRAMES: usize = 512;
/// Concurrent TCP connections accepted (all IPs); beyond this new ones are closed at once.
pub const MAX_CONNECTIONS: usize = 4096;
/// A connection without an allocation may stay silent this long.
pub const UNALLOCATED_IDLE: Duration = Duration::from_secs(10);
/// A connection must hold an allocation this long after accept, or it is closed.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(30);
/// Backstop for a connection with an allocation (longer than the maximum allocation lifetime;
/// the allocation's own expiry normally closes the stream first).
pub const ALLOCATED_IDLE: Duration = Duration::from_secs(3700);
/// How long an answer to a request may wait for room in a full send queue.
const ANSWER_QUEUE_WAIT: Duration = Duration::from_secs(5);
/// After the allocation closed, answers still queued get this long to leave.
const CLOSE_GRACE: Duration = Duration::from_millis(300);

/// One accepted TCP stream as the packet `Conn` the crate expects.
pub struct TcpStreamConn {
    local: SocketAddr,
    remote: SocketAddr,
    queue: mpsc::Sender<Vec<u8>>,
    counters: Arc<RelayCounters>,
    closed: AtomicBool,
    close_signal: Notify,
}

impl TcpStreamConn {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn shut(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            self.close_signal.notify_waiters();
        }
    }
}

#[async_trait]
impl Conn for TcpStreamConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(())
    }

    async fn recv(&self, _buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Err(webrtc_util::Error::Other("frames are read by the TCP listener task".into()))
    }

    async fn recv_from(&self, _buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        Err(webrtc_util::Error::Other("frames are read by the TCP listener task".into()))
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.send_to(buf, self.remote).await
    }

    async fn send_to(&self, buf: &[u8], _target: SocketAddr) -> webrtc_util::Result<usize> {
        let frame = frame_for_tcp(buf);
        if is_relayed_data(buf) {
            // Media for a client that does not keep up is dropped, like on a congested UDP path.
            match self.queue.try_send(frame) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => RelayCounters::bump(&self.counters.tcp_send_drops),
                // The connection is gone and its allocation is being deleted: drop quietly (an
                // error here makes the crate log one line per relayed packet until then).
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        } else {
            // Answers to the client's requests are never dropped for a full queue (a TCP client
            // does not retransmit): wait for room, which only holds up this client's own reader.
            match tokio::time::timeout(ANSWER_QUEUE_WAIT, self.queue.send(frame)).await {
                Ok(_) => {}
                Err(_) => RelayCounters::bump(&self.counters.tcp_send_drops),
            }
        }
        Ok(buf.len())
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.remote)
    }

    /// Called by the crate when this client's allocation ends: the stream closes shortly after.
    async fn close(&self) -> webrtc_util::Result<()> {
        self.shut();
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// Produces the TLS configuration for each new handshake (so certificate reloads apply).
pub type TlsConfigFn = Arc<dyn Fn() -> Arc<rustls::ServerConfig> + Send + Sync>;

/// How long a TLS handshake may take before the connection is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts TURN-over-TCP connections, or TURN-over-TLS ones when `tls` is given.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    dispatcher: Arc<Dispatcher>,
    per_ip: Arc<ConnectionsPerIp>,
    tls: Option<TlsConfigFn>,
    proxy_protocol: Option<ProxyProtocol>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%err, "turn tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!("turn tcp connection refused: too many connections");
            continue;
        };
        // A load balancer's connection is capped per IP once its header named the client.
        let balancer = proxy_protocol.clone().filter(|proxy| proxy.expects_header_from(remote.ip()));
        let ip_slot = match balancer {
            Some(_) => None,
            None => match per_ip.try_acquire(remote.ip()) {
                Some(ip_slot) => Some(ip_slot),
                None => {
                    refused_per_ip(&dispatcher, remote);
                    continue;
                }
            },
        };
        let Ok(local) = stream.local_addr() else { continue };
        let _ = stream.set_nodelay(true);
        let dispatcher = dispatcher.clone();
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        let per_ip = per_ip.clone();
        tokio::spawn(async move {
            let (mut stream, mut remote, mut ip_slot) = (stream, remote, ip_slot);
            if let Some(proxy) = balancer {
                remote = match proxy.read_client(&mut stream, remote).await {
                    Ok(client) => client,
                    Err(err) => {
                        tracing::debug!(balancer = %remote, %err, "turn tcp connection from a load balancer closed");
                        return;
                    }
                };
                ip_slot = per_ip.try_acquire(remote.ip());
                if ip_slot.is_none() {
                    refused_per_ip(&dispatcher, remote);
                    return;
                }
            }
            match tls {
                None => serve(stream, Transport::Tcp, local, remote, dispatcher, shutdown).await,
                Some(config) => {
                    let mut config = (*config()).clone();
                    // No ALPN: HTTP's "http/1.1" would make rustls refuse clients that offer
                    // "stun.turn" (RFC 7443); an empty list accepts every client.
                    config.alpn_protocols.clear();
                    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            serve(tls_stream, Transport::Tls, local, remote, dispatcher, shutdown).await
                        }
                        Ok(Err(err)) => tracing::debug!(%err, "turn tls handshake failed"),
                        Err(_) => tracing::debug!("turn tls handshake timed out"),
                    }
                }
            }
            drop(ip_slot);
            drop(slot);
        });
    }
}

/// Counts and logs a connection closed for `max_tcp_connections_per_ip`.
fn refused_per_ip(dispatcher: &Dispatcher, client: SocketAddr) {
    RelayCounters::bump(&dispatcher.counters().tcp_per_ip_refusals);
    tracing::debug!(%client, "turn tcp connection refused: too many from this address");
}

async fn serve<S>(
    stream: S,
    transport: Transport,
    local: SocketAddr,
    remote: SocketAddr,
    dispatcher: Arc<Dispatcher>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read_half, mut write_half) = tokio::io::split(stream);
    let (queue, mut outbound) = mpsc::channel::<Vec<u8>>(SEND_QUEUE_FRAMES);
    let conn = Arc::new(TcpStreamConn {
        local,
        remote,
        queue,
        counters: dispatcher.counters().clone(),
        closed: AtomicBool::new(false),
        close_signal: Notify::new(),
    });
    let writer = tokio::spawn(async move {
        while let Some(frame) = outbound.recv().await {
            if write_half.write_all(&frame).await.is_err() {
                break;
            }
        }
        let _ = write_half.shutdown().await;
    });

    let dyn_conn: SharedConn = conn.clone();
    let link = ClientLink { transport, client: remote, conn: &dyn_conn };
    let mut reader = BufReader::with_capacity(16 * 1024, read_half);
    let accepted = Instant::now();
    loop {
        let allocated = dispatcher.has_allocation(transport, remote);
        if !allocated && accepted.elapsed() > HANDSHAKE_DEADLINE {
            break;
        }
        let idle = if allocated { ALLOCATED_IDLE } else { UNALLOCATED_IDLE };
        let closed = conn.close_signal.notified();
        tokio::pin!(closed);
        closed.as_mut().enable();
        if conn.is_closed() {
            tokio::time::sleep(CLOSE_GRACE).await;
            break;
        }
        let frame = tokio::select! {
            r = tokio::time::timeout(idle, read_frame(&mut reader)) => match r {
                Ok(Ok(Some(frame))) => frame,
                Ok(Ok(None)) | Ok(Err(_)) | Err(_) => break,
            },
            _ = &mut closed => {
                tokio::time::sleep(CLOSE_GRACE).await;
                break;
            }
            _ = shutdown.changed() => break,
        };
        dispatcher.dispatch(&link, &frame).await;
    }
    // The client's connection is gone: so is its allocation (RFC 8656 section 2.1).
    dispatcher.client_gone(&link).await;
    conn.shut();
    drop(dyn_conn);
    drop(conn);
    // The writer ends once every sender is gone (a deleted allocation may still hold one for a
    // moment); give queued answers the grace period, then close the stream regardless.
    let mut writer = writer;
    if tokio::time::timeout(CLOSE_GRACE, &mut writer).await.is_err() {
        writer.abort();
    }
}
