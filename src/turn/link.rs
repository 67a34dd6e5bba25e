//! Where answers and relayed frames for one client go: [`ClientLink`].
//!
//! Both listeners hand the crate a `Conn` per client path (the shared UDP listener socket, or
//! one TCP/TLS stream each, see `udp` and `tcp`), and our answers go through the same `Conn`,
//! so the dispatch code has no UDP/TCP special case: it speaks to a link, which knows its
//! transport (to pick the crate's allocation manager), its 5-tuple, and how to send.

use std::net::SocketAddr;
use std::sync::Arc;

use turn::allocation::five_tuple::FiveTuple;
use turn::proto::PROTO_UDP;
use webrtc_util::Conn;

use crate::turn::allocations::{ClientKey, Transport};

/// The crate's view of where a client's packets go (a listener socket or a stream).
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

    /// The 5-tuple the crate keys allocations by (its protocol field is always UDP: the crate
    /// tells transports apart by keeping one allocation manager per listener kind).
    pub fn five_tuple(&self) -> FiveTuple {
        let local = self.conn.local_addr().unwrap_or(self.client);
        FiveTuple { protocol: PROTO_UDP, src_addr: self.client, dst_addr: local }
    }

    /// Sends an encoded answer (a failed encoding was already logged).
    pub async fn send(&self, answer: Option<Vec<u8>>) {
        let Some(raw) = answer else { return };
        if let Err(err) = self.conn.send_to(&raw, self.client).await {
            tracing::debug!(%err, "cannot send a STUN answer");
        }
    }
}
