//! Relay to relay on this server, in-process: a client's ChannelData whose peer is another
//! allocation's relayed address here is handed to that allocation's client directly, instead of
//! leaving through one relay socket and arriving on the other through the kernel.
//!
//! This is relaychat's common case, not a corner: under `force_relay` both ends of a call
//! relay, usually through this one server, so every media packet crossed the loopback between
//! two of our own sockets (a send, a receive, and a wake-up of the thread reading the second
//! socket). The hand-off applies the rules the kernel path applies, in the same order, so what
//! a client sees is the same: the sender's bandwidth cap and peer policy (its datagram counted
//! as sent to the peer), then the receiving allocation's peer policy for the sender's relayed
//! address, its permission for that address's IP, its bandwidth cap, and its framing
//! (ChannelData if a channel is bound to the sender's relayed address, a Data indication from
//! it otherwise). The payload is copied once, into a slot with room for the header in front;
//! the kernel path copies it twice. Datagrams too large for a relay socket's receive slot are
//! dropped and counted as they would have been there.
//!
//! `RELAYCHAT_TURN_HANDOFF=off` sends through the kernel anyway (to compare, and for tests).

use std::net::SocketAddr;
use std::ops::Range;

use crate::time::unix_now;
use crate::turn::allocation::{Allocation, Direction};
use crate::turn::channel_data::{channel_data_in_place, data_indication_in_place, HEADROOM, TAILROOM};
use crate::turn::counters::RelayCounters;
use crate::turn::datagram_batch::{BatchSender, MAX_BATCH};
use crate::turn::grants::Grants;
use crate::turn::relay_loop::MAX_RELAYED_DATAGRAM;

/// Bytes of one slot: a relayed datagram with room for the largest header and padding.
const SLOT: usize = HEADROOM + MAX_RELAYED_DATAGRAM + TAILROOM;

/// Whether the hand-off is on (`RELAYCHAT_TURN_HANDOFF=off` turns it off).
pub fn configured() -> bool {
    std::env::var("RELAYCHAT_TURN_HANDOFF").map_or(true, |v| v != "off")
}

/// Where a listener read loop frames handed-over datagrams: [`MAX_BATCH`] slots, allocated once
/// per read loop.
pub struct HandoffSlots {
    buf: Vec<u8>,
}

impl Default for HandoffSlots {
    fn default() -> Self {
        HandoffSlots { buf: vec![0; SLOT * MAX_BATCH] }
    }
}

/// One hop between two of our allocations: `from`'s client sends to `to_addr`, `to`'s relayed
/// address; `to_grants` are `to`'s grants as they are now (the caller's copy, see `table_view`).
pub struct Hop<'a> {
    pub from: &'a Allocation,
    pub to: &'a Allocation,
    pub to_grants: &'a Grants,
    pub to_addr: SocketAddr,
}

/// Client -> peer over `hop`: delivers the `payloads` (consecutive, from `hop.from`'s client)
/// to `hop.to`'s client in order, as if they had left `from`'s relay socket and arrived on
/// `to`'s.
pub async fn hand_over(
    hop: Hop<'_>,
    payloads: &[&[u8]],
    counters: &RelayCounters,
    sender: &BatchSender,
    slots: &mut HandoffSlots,
) {
    let Hop { from, to, to_grants: grants, to_addr } = hop;
    let Some(from_relay) = from.relay_for(to_addr) else { return };
    // `to_addr` is `to`'s relayed address (the caller found `to` by it): both policies judge
    // it, and `from`'s below, as one of this server's own relays.
    if payloads.is_empty() || !from_relay.guard().allows_own_relay(to_addr) {
        // The check counted one denied datagram; the others of the run are denied too.
        RelayCounters::add(&counters.denied_peers, payloads.len().saturating_sub(1) as u64);
        return;
    }
    // What `to`'s relay socket would have seen: a datagram from `from`'s relayed address.
    let from_addr = from_relay.advertised();
    let Some(to_relay) = to.relay_for(from_addr) else { return };
    let mut framed: [Range<usize>; MAX_BATCH] = std::array::from_fn(|_| 0..0);
    let mut count = 0;
    {
        let now = unix_now();
        for (index, payload) in payloads.iter().take(MAX_BATCH).enumerate() {
            let n = payload.len();
            if !from.within_bandwidth(n, counters) {
                continue;
            }
            from.count_relayed(Direction::ToPeer, n, counters);
            if to.is_closed() {
                continue;
            }
            if n > MAX_RELAYED_DATAGRAM {
                RelayCounters::bump(&counters.oversize_drops);
                continue;
            }
            if !to_relay.guard().allows_own_relay(from_addr) {
                continue;
            }
            let peer = from_addr;
            if !grants.permits(peer.ip(), now) || !to.within_bandwidth(n, counters) {
                continue;
            }
            to.count_relayed(Direction::FromPeer, n, counters);
            let slot_start = index * SLOT;
            let slot = &mut slots.buf[slot_start..slot_start + SLOT];
            slot[HEADROOM..HEADROOM + n].copy_from_slice(payload);
            let message = match grants.channel_to(peer, now) {
                Some(number) => channel_data_in_place(slot, n, number)..HEADROOM + n,
                None => data_indication_in_place(slot, n, peer, rand::random()),
            };
            framed[count] = slot_start + message.start..slot_start + message.end;
            count += 1;
        }
    }
    let mut messages: [&[u8]; MAX_BATCH] = [&[]; MAX_BATCH];
    for (message, range) in messages.iter_mut().zip(&framed[..count]) {
        *message = &slots.buf[range.clone()];
    }
    let outcome = to.client.send_relayed(sender, &messages[..count]).await;
    RelayCounters::add(&counters.client_send_failures, outcome.failed as u64);
    counters.add_batched(&outcome);
}
