//! TURN over UDP: the listener socket as the crate's `Conn`, and one read loop per socket that
//! takes every queued datagram in one system call (`datagram_batch`).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::watch;
use webrtc_util::Conn;

use crate::turn::allocations::Transport;
use crate::turn::datagram_batch::{BatchMode, BatchSender, RecvBatch, MAX_BATCH};
use crate::turn::dispatch::Dispatcher;
use crate::turn::handoff::HandoffSlots;
use crate::turn::link::{ClientLink, SharedConn};
use crate::turn::packet::{classify, PacketKind};
use crate::turn::table_view::{next_change, TableView};

/// Largest datagram the listener accepts (a STUN message or ChannelData may exceed the MTU);
/// also what a UDP GRO buffer needs, so the listener can take coalesced datagrams.
const MAX_DATAGRAM: usize = crate::turn::datagram_batch::GRO_SLOT_SIZE;
/// Datagrams taken per wake-up. At 32 a loaded shard empties its queue in 1/32 of the system
/// calls; the buffers (2 MiB per shard) are only touched as far as datagrams fill them.
const LISTENER_BATCH: usize = 32;

/// The UDP listener as the crate's `Conn`. The crate asks for `local_addr()` on every packet
/// (to build the 5-tuple); tokio's socket answers with a getsockname system call each time, so
/// the address is kept here. `close()` does nothing: the crate calls it when an allocation ends,
/// and the listener serves every other client. The crate only sends through it: [`read_loop`]
/// is the socket's one reader (it turns UDP GRO on, which only a batch's 64 KiB buffers can
/// take apart).
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

/// Reads datagrams until shutdown, a batch per wake-up; each one is dispatched before the next
/// (so one client's requests are handled in order: the kernel keeps a client on one socket),
/// except that ChannelData messages of one client that arrived back to back are relayed as one
/// run, in their order.
pub async fn read_loop(
    dispatcher: Arc<Dispatcher>,
    listener: Arc<ListenerConn>,
    mut shutdown: watch::Receiver<bool>,
) {
    let conn: SharedConn = listener.clone();
    let mut batch = RecvBatch::new(LISTENER_BATCH, MAX_DATAGRAM, BatchMode::configured());
    let gro = batch.enable_gro(&listener.socket);
    let sender = BatchSender::new(batch.mode());
    let mut slots = HandoffSlots::default();
    let mut view = TableView::new(&dispatcher.allocations);
    // Both waits are made once and kept across wake-ups: a new one each time registered (and
    // dropped) a waiter in a list every read loop shares, two locked writes per wake-up.
    let table_changed = next_change(dispatcher.allocations.changes());
    let stop = shutdown.changed();
    tokio::pin!(table_changed, stop);
    tracing::debug!(gro, "turn udp listener read loop");
    loop {
        tokio::select! {
            r = batch.recv(&listener.socket) => if let Err(err) = r {
                tracing::debug!(%err, "turn udp listener receive error");
                continue;
            },
            // Idle, the view drops what it holds as soon as the table changes.
            changes = &mut table_changed => {
                view.catch_up();
                table_changed.set(next_change(changes));
                continue;
            }
            _ = &mut stop => break,
        }
        let mut datagrams = batch.datagrams().peekable();
        while let Some(first) = datagrams.next() {
            let link = ClientLink { transport: Transport::Udp, client: first.from, conn: &conn };
            if classify(first.payload) != PacketKind::ChannelData {
                dispatcher.dispatch(&link, first.payload).await;
                continue;
            }
            // ChannelData from one client, back to back (or alone): relayed as one run (see
            // `Dispatcher::channel_data_run`), so a burst to one peer leaves in one send.
            let mut run: [&[u8]; MAX_BATCH] = [&[]; MAX_BATCH];
            run[0] = first.payload;
            let mut len = 1;
            while len < MAX_BATCH {
                let Some(next) = datagrams.peek() else { break };
                if next.from != first.from || classify(next.payload) != PacketKind::ChannelData {
                    break;
                }
                run[len] = next.payload;
                len += 1;
                datagrams.next();
            }
            dispatcher.channel_data_run(&link, &run[..len], &sender, &mut slots, &mut view).await;
        }
    }
}
