//! Peer -> client: the read loop of one relay socket, one task per relayed address.
//!
//! Each datagram is relayed on this task, without a copy: it is received at
//! [`channel_data::HEADROOM`] in the task's own buffer, checked (peer policy, permission,
//! bandwidth cap), framed in place as ChannelData (a channel is bound to the peer) or a Data
//! indication, and sent to the client (the UDP listener socket, or the TCP/TLS connection's
//! queue). The loop ends when the allocation is closed.

use std::sync::Arc;

use crate::time::unix_now;
use crate::turn::allocation::{Allocation, Direction};
use crate::turn::channel_data::{channel_data_in_place, data_indication_in_place, HEADROOM, TAILROOM};
use crate::turn::counters::RelayCounters;
use crate::turn::relay_socket::recv_whole_datagram;

/// The largest datagram relayed from a peer (a typical path MTU). A larger one is dropped and
/// counted rather than cut short, which would corrupt the media.
pub const MAX_RELAYED_DATAGRAM: usize = 1500;

/// Relays what peers send to `allocation.relays[relay]` until the allocation closes.
pub async fn relay_to_client(allocation: Arc<Allocation>, relay: usize, counters: Arc<RelayCounters>) {
    let Some(socket) = allocation.relays.get(relay) else { return };
    let mut buf = vec![0u8; HEADROOM + MAX_RELAYED_DATAGRAM + TAILROOM];
    let closed = allocation.closed();
    tokio::pin!(closed);
    closed.as_mut().enable();
    loop {
        if allocation.is_closed() {
            return;
        }
        let received = tokio::select! {
            r = recv_whole_datagram(socket.socket(), &mut buf[HEADROOM..HEADROOM + MAX_RELAYED_DATAGRAM]) => r,
            _ = &mut closed => return,
        };
        let (n, from) = match received {
            Ok(Some(v)) => v,
            Ok(None) => {
                RelayCounters::bump(&counters.oversize_drops);
                continue;
            }
            // ICMP errors and the like must not end the allocation.
            Err(err) => {
                tracing::debug!(%err, "relay socket receive error");
                continue;
            }
        };
        let Some(peer) = socket.guard().admits_from(from) else { continue };
        let now = unix_now();
        let (permitted, channel) = {
            let grants = allocation.grants();
            (grants.permits(peer.ip(), now), grants.channel_to(peer, now))
        };
        if !permitted || !allocation.within_bandwidth(n, &counters) {
            continue;
        }
        allocation.count_relayed(Direction::FromPeer, n, &counters);
        let message = match channel {
            Some(number) => channel_data_in_place(&mut buf, n, number)..HEADROOM + n,
            None => data_indication_in_place(&mut buf, n, peer, rand::random()),
        };
        allocation.client.send_relayed(&buf[message]).await;
    }
}
