//! TURN over UDP: the listener socket as the crate's `Conn`, and one read loop per socket.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::watch;
use webrtc_util::Conn;

use crate::turn::allocations::Transport;
use crate::turn::dispatch::Dispatcher;
use crate::turn::link::{ClientLink, SharedConn};

/// Largest datagram the listener accepts (a STUN message or ChannelData may exceed the MTU).
const MAX_DATAGRAM: usize = 65_536;

/// The UDP listener as the crate's `Conn`. The crate asks for `local_addr()` on every packet
/// (to build the 5-tuple); tokio's socket answers with a getsockname system call each time, so
/// the address is kept here. `close()` does nothing: the crate calls it when an allocation ends,
/// and the listener serves every other client.
pub struct ListenerConn {
    socket: UdpSocket,
    local: SocketAddr,
}

impl ListenerConn {
    pub fn new(socket: UdpSocket, local: SocketAddr) -> Self {
        ListenerConn { socket, local }
    }
}

#[async_trait::async_trait]
impl Conn for ListenerConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Err(webrtc_util::Error::Other("the TURN listener is not connected".into()))
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.socket.recv(buf).await?)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        Ok(self.socket.recv_from(buf).await?)
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        Ok(self.socket.send(buf).await?)
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        Ok(self.socket.send_to(buf, target).await?)
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// Reads datagrams until shutdown; each one is dispatched before the next is read (so one
/// client's requests are handled in order: the kernel keeps a client on one socket).
pub async fn read_loop(dispatcher: Arc<Dispatcher>, conn: SharedConn, mut shutdown: watch::Receiver<bool>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, from) = tokio::select! {
            r = conn.recv_from(&mut buf) => match r {
                Ok(v) => v,
                Err(err) => {
                    tracing::debug!(%err, "turn udp listener receive error");
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let link = ClientLink { transport: Transport::Udp, client: from, conn: &conn };
        dispatcher.dispatch(&link, &buf[..n]).await;
    }
}
