//! Peer -> client: the read loop of one relay socket, one task per relayed address.
//!
//! Each wake-up takes every datagram queued on the socket (up to [`RELAY_BATCH`]) with one
//! `recvmmsg`, into slots that keep [`channel_data::HEADROOM`] free in front of each datagram.
//! Each datagram is checked (peer policy, permission, bandwidth cap) and framed in place as
//! ChannelData (a channel is bound to the peer) or a Data indication; then the batch goes to
//! the client in order with as few system calls as the kernel allows (UDP GSO for runs of equal
//! size, `sendmmsg` for the rest; see `datagram_batch`), or through a TCP/TLS connection's queue.
//! Nothing is allocated or copied per datagram. The loop ends when the allocation is closed.

use std::ops::Range;
use std::sync::Arc;

use crate::time::unix_now;
use crate::turn::allocation::{Allocation, Direction};
use crate::turn::channel_data::{channel_data_in_place, data_indication_in_place, HEADROOM, TAILROOM};
use crate::turn::counters::RelayCounters;
use crate::turn::datagram_batch::{BatchMode, BatchSender, RecvBatch, MAX_BATCH};
use crate::turn::relay_socket::RelaySocket;

/// The largest datagram relayed from a peer (a typical path MTU). A larger one is dropped and
/// counted rather than cut short, which would corrupt the media.
pub const MAX_RELAYED_DATAGRAM: usize = 1500;

/// Datagrams taken per wake-up. A relay socket carries one call's media (hundreds of packets a
/// second at most); 32 drains what a busy video call queues while the task waited for a core,
/// and keeps the buffers at 32 x 1.5 KB per relayed address.
pub const RELAY_BATCH: usize = 32;

/// Slots a relay socket starts with (4 x 1.5 KB): an idle allocation or an audio stream (one
/// or two datagrams per wake-up) never needs more, and 32 from the start doubled the RSS per
/// allocation (BENCHMARKS.md (d): 9.0 -> 18.5 KiB). The first call that fills them grows the
/// batch to [`RELAY_BATCH`] for good.
pub const RELAY_BATCH_START: usize = 4;

/// Relays what peers send to `allocation.relays[relay]` until the allocation closes.
pub async fn relay_to_client(allocation: Arc<Allocation>, relay: usize, counters: Arc<RelayCounters>) {
    let Some(socket) = allocation.relays.get(relay) else { return };
    let mode = BatchMode::configured();
    let mut batch = RecvBatch::with_room(RELAY_BATCH_START, MAX_RELAYED_DATAGRAM, HEADROOM, TAILROOM, mode);
    let sender = BatchSender::new(mode);
    // Where each framed message of the current batch lies in the batch's storage.
    let mut framed: [Range<usize>; MAX_BATCH] = std::array::from_fn(|_| 0..0);
    let closed = allocation.closed();
    tokio::pin!(closed);
    closed.as_mut().enable();
    loop {
        if allocation.is_closed() {
            return;
        }
        let received = tokio::select! {
            r = batch.recv(socket.socket()) => r,
            _ = &mut closed => return,
        };
        // ICMP errors and the like must not end the allocation.
        if let Err(err) = received {
            tracing::debug!(%err, "relay socket receive error");
            continue;
        }
        RelayCounters::add(&counters.oversize_drops, batch.truncated() as u64);
        let count = frame_batch(&allocation, socket, &mut batch, &counters, &mut framed);
        let mut messages: [&[u8]; MAX_BATCH] = [&[]; MAX_BATCH];
        for (message, range) in messages.iter_mut().zip(&framed[..count]) {
            *message = batch.bytes(range.clone());
        }
        let outcome = allocation.client.send_relayed(&sender, &messages[..count]).await;
        RelayCounters::add(&counters.client_send_failures, outcome.failed as u64);
        counters.add_batched(&outcome);
        batch.grow_when_full(RELAY_BATCH);
    }
}

/// Checks and frames every datagram of `batch` in place; fills `framed` with the messages to
/// send, in arrival order, and returns how many.
fn frame_batch(
    allocation: &Allocation,
    socket: &RelaySocket,
    batch: &mut RecvBatch,
    counters: &RelayCounters,
    framed: &mut [Range<usize>; MAX_BATCH],
) -> usize {
    let now = unix_now();
    let grants = allocation.grants();
    let mut count = 0;
    for index in 0..batch.len().min(MAX_BATCH) {
        let Some(slot) = batch.framing_slot(index) else { continue };
        let n = slot.len;
        let Some(peer) = socket.guard().admits_from(slot.from) else { continue };
        if !grants.permits(peer.ip(), now) || !allocation.within_bandwidth(n, counters) {
            continue;
        }
        allocation.count_relayed(Direction::FromPeer, n, counters);
        let message = match grants.channel_to(peer, now) {
            Some(number) => channel_data_in_place(slot.buf, n, number)..HEADROOM + n,
            None => data_indication_in_place(slot.buf, n, peer, rand::random()),
        };
        framed[count] = slot.offset + message.start..slot.offset + message.end;
        count += 1;
    }
    count
}
