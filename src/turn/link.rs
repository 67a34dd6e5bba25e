//! Where answers and relayed frames for one client go: [`ClientLink`] while a packet from the
//! client is handled, [`ClientPath`] for as long as its allocation lives.
//!
//! The listeners hand the dispatcher a `Conn` per client path (the shared UDP listener socket,
//! or one TCP/TLS stream each, see `udp` and `tcp`); answers to requests go through it. Relayed
//! media towards a UDP client takes the short way instead: a second handle on the same listener
//! socket ([`DatagramSenders`]), sent to a batch at a time without a boxed future or a copy
//! (`datagram_batch::BatchSender`). Over TCP/TLS it goes through the stream's bounded queue.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::UdpSocket;
use webrtc_util::Conn;

use crate::turn::datagram_batch::{BatchSender, SendOutcome};
use crate::turn::transport::{ClientKey, Transport};

/// A client path as the listeners hold it (a listener socket or a stream).
pub type SharedConn = Arc<dyn Conn + Send + Sync>;

/// One client on one of our listeners.
pub struct ClientLink<'a> {
    pub transport: Transport,
    pub client: SocketAddr,
    pub conn: &'a SharedConn,
}

impl ClientLink<'_> {
    pub fn key(&self) -> ClientKey {
        (self.transport, self.client)
    }

    /// Sends an encoded answer (a failed encoding was already logged).
    pub async fn send(&self, answer: Option<Vec<u8>>) {
        let Some(raw) = answer else { return };
        if let Err(err) = self.conn.send_to(&raw, self.client).await {
            tracing::debug!(%err, "cannot send a STUN answer");
        }
    }
}

/// Second handles on the UDP listener sockets (the same sockets, `dup`ed), by the listener
/// `Conn` they belong to.
#[derive(Default)]
pub struct DatagramSenders {
    by_conn: Vec<(usize, Arc<UdpSocket>)>,
}

fn conn_id(conn: &SharedConn) -> usize {
    Arc::as_ptr(conn) as *const () as usize
}

impl DatagramSenders {
    pub fn add(&mut self, conn: &SharedConn, socket: Arc<UdpSocket>) {
        self.by_conn.push((conn_id(conn), socket));
    }

    fn for_conn(&self, conn: &SharedConn) -> Option<Arc<UdpSocket>> {
        let id = conn_id(conn);
        self.by_conn.iter().find(|(c, _)| *c == id).map(|(_, s)| s.clone())
    }
}

/// How relayed data reaches one allocation's client.
pub enum ClientPath {
    /// From the UDP listener socket the client talks to.
    Datagram { socket: Arc<UdpSocket>, client: SocketAddr },
    /// Through the client's TCP/TLS connection (framed, through its bounded queue).
    Stream { conn: SharedConn, client: SocketAddr },
}

impl ClientPath {
    pub fn new(link: &ClientLink<'_>, senders: &DatagramSenders) -> Self {
        match (link.transport, senders.for_conn(link.conn)) {
            (Transport::Udp, Some(socket)) => ClientPath::Datagram { socket, client: link.client },
            _ => ClientPath::Stream { conn: link.conn.clone(), client: link.client },
        }
    }

    /// Sends ChannelData messages or Data indications to the client, in order (over UDP with
    /// `sender`'s batched system calls); a full or failing path loses them like a congested
    /// network would. Returns how many left and how many were refused (each counted, never the
    /// rest with it).
    pub async fn send_relayed(&self, sender: &BatchSender, messages: &[&[u8]]) -> SendOutcome {
        match self {
            ClientPath::Datagram { socket, client } => sender.send_many(socket, *client, messages).await,
            ClientPath::Stream { conn, client } => {
                let mut outcome = SendOutcome::default();
                for message in messages {
                    match conn.send_to(message, *client).await {
                        Ok(_) => {
                            outcome.sent += 1;
                            outcome.sent_bytes += message.len();
                        }
                        Err(err) => {
                            tracing::trace!(%err, "cannot send relayed data to the client");
                            outcome.failed += 1;
                        }
                    }
                }
                outcome
            }
        }
    }

    /// The allocation ended: a stream is closed (RFC 8656 section 2.1), a listener is not.
    pub async fn close(&self) {
        if let ClientPath::Stream { conn, .. } = self {
            let _ = conn.close().await;
        }
    }
}
