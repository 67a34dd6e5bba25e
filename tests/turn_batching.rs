//! Peer -> client through the relay's batched data path (recvmmsg on the relay socket, headers
//! framed in place, UDP GSO / sendmmsg towards the client): bursts of datagrams of mixed sizes
//! from several peers, some over channels and some as Data indications, must reach the client
//! complete, in order, each framed for the peer it came from; and client -> peer runs, including
//! to another relay of the same server (handed over in-process). Run it with
//! `RELAYCHAT_TURN_BATCHING=off` too, for the one-datagram-per-call path, and with
//! `RELAYCHAT_TURN_HANDOFF=off` for relay to relay through the kernel.

mod turn_support;

use std::net::SocketAddr;
use std::time::Duration;

use relaychat::turn::RelayCounters;
use stun::message::{Getter, Message, MessageType, CLASS_INDICATION, METHOD_DATA};
use tokio::net::UdpSocket;
use turn::proto::data::Data;
use turn::proto::peeraddr::PeerAddress;
use turn_support::*;

const WAIT: Duration = Duration::from_secs(5);

/// What the client received, decoded: the channel (or the Data indication's peer) and payload.
#[derive(Debug, PartialEq, Eq)]
enum Relayed {
    Channel(u16, Vec<u8>),
    Indication(SocketAddr, Vec<u8>),
}

fn decode(raw: Vec<u8>) -> Relayed {
    if raw.first().is_some_and(|b| b >> 6 == 1) {
        assert!(raw.len() >= 4, "a ChannelData header");
        let number = u16::from_be_bytes([raw[0], raw[1]]);
        let len = usize::from(u16::from_be_bytes([raw[2], raw[3]]));
        assert_eq!(
            raw.len(),
            4 + len,
            "over UDP a ChannelData message is its header and payload, nothing else"
        );
        return Relayed::Channel(number, raw[4..].to_vec());
    }
    let mut m = Message { raw, ..Default::default() };
    m.decode().expect("a STUN message");
    assert_eq!(m.typ, MessageType::new(METHOD_DATA, CLASS_INDICATION));
    let (mut data, mut peer) = (Data::default(), PeerAddress::default());
    data.get_from(&m).expect("DATA");
    peer.get_from(&m).expect("XOR-PEER-ADDRESS");
    Relayed::Indication(SocketAddr::new(peer.ip, peer.port), data.0)
}

/// Datagram `i`: its index in the first two bytes, then a pattern that differs per index.
fn numbered(i: usize, len: usize) -> Vec<u8> {
    let mut d: Vec<u8> = (0..len).map(|b| (b * 13 + i * 7) as u8).collect();
    d[..2].copy_from_slice(&(i as u16).to_be_bytes());
    d
}

/// The sequence the peers send: (peer, size). Long runs of one size (GSO runs, longer than a
/// receive batch of 32 and than a GSO send of 64), runs that end in a shorter datagram, sizes
/// that alternate every datagram, equal sizes from different peers (one GSO run holding
/// messages of different channels), the smallest and the largest relayed datagram, odd sizes
/// (Data indication padding).
fn sequence() -> Vec<(usize, usize)> {
    let mut s = Vec::new();
    s.extend((0..70).map(|_| (0, 1000)));
    s.push((0, 999));
    s.extend((0..40).map(|i| (i % 3, 100)));
    s.extend((0..60).map(|i| (i % 2, if i % 2 == 0 { 160 } else { 1201 })));
    s.extend((0..33).map(|_| (2, 1500)));
    s.extend((0..20).map(|i| (1, 2 + i)));
    s.extend((0..50).map(|i| (i % 3, 1 + (i * 37) % 1500)).map(|(p, n)| (p, n.max(2))));
    s.extend((0..64).map(|_| (1, 1400)));
    s.extend((0..10).map(|_| (2, 3)));
    s
}

async fn mixed_bursts_arrive_whole_in_order_and_framed_right(burst: usize) {
    let relay = start(|s| s.turn.peer_policy = "any".into()).await;
    relay.presence.joined("alice");
    let mut alice = TurnClient::for_user(relay.handle.udp_addr, false, "alice", 600).await;
    let relayed = alice.allocate().await.unwrap();
    let mut peers = Vec::new();
    for _ in 0..3 {
        peers.push(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    }
    let addrs: Vec<SocketAddr> = peers.iter().map(|p| p.local_addr().unwrap()).collect();
    alice.create_permission(&addrs).await.unwrap();
    alice.channel_bind(0x4000, addrs[0]).await.unwrap();
    alice.channel_bind(0x4abc, addrs[1]).await.unwrap();
    // Peer 2 has no channel: its datagrams arrive as Data indications.
    let expected = |peer: usize, payload: Vec<u8>| match peer {
        0 => Relayed::Channel(0x4000, payload),
        1 => Relayed::Channel(0x4abc, payload),
        _ => Relayed::Indication(addrs[2], payload),
    };

    let sequence = sequence();
    let mut next = 0;
    for chunk in sequence.chunks(burst) {
        // The whole burst is queued on the relay socket before the relay reads it (one task
        // sends them back to back), so the relay takes it in batches; the client reads it all
        // before the next burst, so no socket buffer overflows.
        for (offset, &(peer, size)) in chunk.iter().enumerate() {
            peers[peer].send_to(&numbered(next + offset, size), relayed).await.unwrap();
        }
        for &(peer, size) in chunk {
            let raw = alice
                .recv_raw(WAIT)
                .await
                .unwrap_or_else(|| panic!("datagram {next} of {} arrives", sequence.len()));
            assert_eq!(
                decode(raw),
                expected(peer, numbered(next, size)),
                "datagram {next} (from peer {peer}, {size} bytes)"
            );
            next += 1;
        }
    }
    assert_eq!(alice.recv_raw(Duration::from_millis(200)).await, None, "nothing more, nothing twice");
    let c = &relay.handle.counters;
    assert_eq!(RelayCounters::get(&c.relayed_packets_in), sequence.len() as u64);
    assert_eq!(RelayCounters::get(&c.client_send_failures), 0);
    assert_eq!(RelayCounters::get(&c.oversize_drops), 0);
}

#[tokio::test]
async fn bursts_larger_than_a_batch_arrive_whole_in_order_and_framed_right() {
    mixed_bursts_arrive_whole_in_order_and_framed_right(48).await;
}

#[tokio::test]
async fn bursts_of_a_full_gso_send_arrive_whole_in_order_and_framed_right() {
    mixed_bursts_arrive_whole_in_order_and_framed_right(64).await;
}

#[tokio::test]
async fn datagrams_one_at_a_time_arrive_whole_in_order_and_framed_right() {
    mixed_bursts_arrive_whole_in_order_and_framed_right(1).await;
}

#[tokio::test]
async fn oversize_datagrams_in_a_batch_are_counted_and_their_neighbours_still_go() {
    let relay = start(|s| s.turn.peer_policy = "any".into()).await;
    relay.presence.joined("alice");
    let mut alice = TurnClient::for_user(relay.handle.udp_addr, false, "alice", 600).await;
    let relayed = alice.allocate().await.unwrap();
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    alice.create_permission(&[peer.local_addr().unwrap()]).await.unwrap();
    alice.channel_bind(0x4001, peer.local_addr().unwrap()).await.unwrap();
    let sizes = [500, 1501, 500, 500, 4000, 1500, 1501, 20];
    for (i, &n) in sizes.iter().enumerate() {
        peer.send_to(&numbered(i, n), relayed).await.unwrap();
    }
    for (i, &n) in sizes.iter().enumerate().filter(|(_, &n)| n <= 1500) {
        let raw = alice.recv_raw(WAIT).await.expect("every datagram that fits arrives");
        assert_eq!(decode(raw), Relayed::Channel(0x4001, numbered(i, n)), "datagram {i}");
    }
    assert_eq!(alice.recv_raw(Duration::from_millis(200)).await, None);
    assert_eq!(RelayCounters::get(&relay.handle.counters.oversize_drops), 3);
}

/// Video-like bursts through a relay running in another process, for measuring it (system
/// calls, CPU) from outside: `RELAYCHAT_BURST_RELAY=127.0.0.1:PORT cargo test --release --test
/// turn_batching -- --ignored video_like_bursts` against a relay with `secret = "test-secret"`,
/// `require_live_session = false` and `peer_policy = "any"`. 20 clients, each receiving bursts
/// of 16 x 1200 bytes (a frame of a video call) 30 times a second from its own peer, for
/// `RELAYCHAT_BURST_SECONDS` (default 8); every datagram must arrive, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a load generator for an external relay; see its doc comment"]
async fn video_like_bursts_through_an_external_relay() {
    let load = BurstLoad::from_env();
    let mut tasks = Vec::new();
    for c in 0..BURST_CLIENTS {
        let (client, relayed, peer) = load.client(c).await;
        let receiver = tokio::spawn(async move {
            let mut next = 0usize;
            while next < load.datagrams_per_client() {
                let Some(raw) = client.recv_raw(Duration::from_secs(3)).await else { break };
                assert_eq!(
                    decode(raw),
                    Relayed::Channel(0x4000, numbered(next % 65_536, BURST_SIZE)),
                    "client {c}"
                );
                next += 1;
            }
            next
        });
        let sender = tokio::spawn(async move {
            let mut frames = load.frames_on_schedule();
            while let Some(frame) = frames.next().await {
                for payload in frame {
                    peer.send_to(&payload, relayed).await.unwrap();
                }
            }
        });
        tasks.push((receiver, sender));
    }
    load.all_arrived(tasks).await;
}

/// The external relay and how long to drive it (see the ignored tests' doc comments).
#[derive(Clone, Copy)]
struct BurstLoad {
    relay: SocketAddr,
    frames: usize,
}

/// Frames of [`BurstLoad`], each at its time (see [`FramesOnSchedule::next`]).
struct FramesOnSchedule {
    tick: tokio::time::Interval,
    next: usize,
    frames: usize,
}

impl FramesOnSchedule {
    /// Waits until the next frame is due; its datagrams, numbered on from the previous frame's.
    async fn next(&mut self) -> Option<Vec<Vec<u8>>> {
        if self.next == self.frames {
            return None;
        }
        self.tick.tick().await;
        let first = self.next * BURST;
        self.next += 1;
        Some((first..first + BURST).map(|i| numbered(i % 65_536, BURST_SIZE)).collect())
    }
}

const BURST_CLIENTS: usize = 20;
/// Datagrams per frame, as a video call's keyframe sends them back to back.
const BURST: usize = 16;
const BURST_SIZE: usize = 1200;
const BURST_FRAMES_PER_S: u64 = 30;

impl BurstLoad {
    fn from_env() -> Self {
        let relay: SocketAddr =
            std::env::var("RELAYCHAT_BURST_RELAY").expect("RELAYCHAT_BURST_RELAY").parse().unwrap();
        let seconds: u64 =
            std::env::var("RELAYCHAT_BURST_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(8);
        BurstLoad { relay, frames: (seconds * BURST_FRAMES_PER_S) as usize }
    }

    fn datagrams_per_client(&self) -> usize {
        self.frames * BURST
    }

    /// Client `c` with an allocation, its relayed address, and its own peer (permitted, bound
    /// to channel 0x4000); every socket with buffers for a burst either way.
    async fn client(&self, c: usize) -> (TurnClient, SocketAddr, UdpSocket) {
        let mut client = TurnClient::for_user(self.relay, false, &format!("burst{c}"), 600).await;
        let relayed = client.allocate().await.expect("allocates");
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket2::SockRef::from(&peer).set_send_buffer_size(1 << 20).unwrap();
        socket2::SockRef::from(&peer).set_recv_buffer_size(4 << 20).unwrap();
        if let Wire::Udp { socket, .. } = &client.wire {
            socket2::SockRef::from(socket).set_send_buffer_size(1 << 20).unwrap();
            socket2::SockRef::from(socket).set_recv_buffer_size(4 << 20).unwrap();
        }
        client.create_permission(&[peer.local_addr().unwrap()]).await.unwrap();
        client.channel_bind(0x4000, peer.local_addr().unwrap()).await.unwrap();
        (client, relayed, peer)
    }

    /// The bursts to send, each when its frame is due.
    fn frames_on_schedule(&self) -> FramesOnSchedule {
        let tick = tokio::time::interval(Duration::from_micros(1_000_000 / BURST_FRAMES_PER_S));
        FramesOnSchedule { tick, next: 0, frames: self.frames }
    }

    /// Waits for every sender and receiver; each receiver returns how many datagrams arrived
    /// in order before the first that did not.
    async fn all_arrived(&self, tasks: Vec<(tokio::task::JoinHandle<usize>, tokio::task::JoinHandle<()>)>) {
        let mut received = 0;
        for (receiver, sender) in tasks {
            sender.await.unwrap();
            received += receiver.await.unwrap();
        }
        let expected = BURST_CLIENTS * self.datagrams_per_client();
        eprintln!("received {received} of {expected} datagrams");
        assert_eq!(received, expected, "every datagram of every burst arrived, in order");
    }
}

async fn client_bursts_reach_their_peers_whole_and_in_order(burst: usize) {
    let relay = start(|s| s.turn.peer_policy = "any".into()).await;
    relay.presence.joined("alice");
    let mut alice = TurnClient::for_user(relay.handle.udp_addr, false, "alice", 600).await;
    alice.allocate().await.unwrap();
    let mut peers = Vec::new();
    for _ in 0..3 {
        peers.push(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    }
    let addrs: Vec<SocketAddr> = peers.iter().map(|p| p.local_addr().unwrap()).collect();
    alice.create_permission(&addrs).await.unwrap();
    let channels = [0x4000, 0x4abc, 0x7fff];
    for (number, addr) in channels.iter().zip(&addrs) {
        alice.channel_bind(*number, *addr).await.unwrap();
    }
    // Runs to one peer (GSO), alternating peers (sendmmsg per peer), a channel nobody bound
    // (dropped alone, in the middle of a run).
    let sequence = sequence();
    let mut next = 0;
    let mut unbound = 0;
    for chunk in sequence.chunks(burst) {
        let mut expected: Vec<Vec<Vec<u8>>> = vec![Vec::new(); 3];
        for (offset, &(peer, size)) in chunk.iter().enumerate() {
            let i = next + offset;
            if i % 41 == 40 {
                alice.send_channel_data(0x5000, &numbered(i, size)).await;
                unbound += 1;
                continue;
            }
            alice.send_channel_data(channels[peer], &numbered(i, size)).await;
            expected[peer].push(numbered(i, size));
        }
        for (peer, want) in expected.iter().enumerate() {
            let mut buf = vec![0u8; 2048];
            for (k, payload) in want.iter().enumerate() {
                let (n, from) = tokio::time::timeout(WAIT, peers[peer].recv_from(&mut buf))
                    .await
                    .unwrap_or_else(|_| panic!("peer {peer}: datagram {k} of burst at {next} arrives"))
                    .unwrap();
                assert_eq!(&buf[..n], &payload[..], "peer {peer}: datagram {k} of the burst at {next}");
                assert_eq!(from.ip(), relay.handle.relay_ip);
            }
        }
        next += chunk.len();
    }
    let mut buf = [0u8; 2048];
    for peer in &peers {
        let extra = tokio::time::timeout(Duration::from_millis(100), peer.recv_from(&mut buf)).await;
        assert!(extra.is_err(), "nothing more, nothing twice");
    }
    let c = &relay.handle.counters;
    assert_eq!(RelayCounters::get(&c.relayed_packets_out), (sequence.len() - unbound) as u64);
    assert_eq!(RelayCounters::get(&c.peer_send_failures), 0);
}

#[tokio::test]
async fn client_bursts_larger_than_a_batch_reach_their_peers_whole_and_in_order() {
    client_bursts_reach_their_peers_whole_and_in_order(48).await;
}

#[tokio::test]
async fn client_datagrams_one_at_a_time_reach_their_peers_whole_and_in_order() {
    client_bursts_reach_their_peers_whole_and_in_order(1).await;
}

/// The other direction of [`video_like_bursts_through_an_external_relay`] (same settings and
/// environment): each of the 20 clients sends the bursts as ChannelData to its own peer, which
/// must receive every datagram, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a load generator for an external relay; see its doc comment"]
async fn video_like_bursts_from_clients_through_an_external_relay() {
    let load = BurstLoad::from_env();
    let mut tasks = Vec::new();
    for c in 0..BURST_CLIENTS {
        let (client, _relayed, peer) = load.client(c).await;
        let receiver = tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let mut next = 0usize;
            while next < load.datagrams_per_client() {
                let Ok(Ok((n, _))) =
                    tokio::time::timeout(Duration::from_secs(3), peer.recv_from(&mut buf)).await
                else {
                    break;
                };
                assert_eq!(&buf[..n], &numbered(next % 65_536, BURST_SIZE)[..], "peer of client {c}");
                next += 1;
            }
            next
        });
        let sender = tokio::spawn(async move {
            let mut frames = load.frames_on_schedule();
            while let Some(frame) = frames.next().await {
                for payload in frame {
                    client.send_channel_data(0x4000, &payload).await;
                }
            }
        });
        tasks.push((receiver, sender));
    }
    load.all_arrived(tasks).await;
}

/// Relay to relay on one server (every force_relay call through it): what the receiving client
/// gets follows its own allocation's rules, exactly as if the datagram had crossed the network
/// (the relay hands it over in-process unless RELAYCHAT_TURN_HANDOFF=off; this passes either
/// way). No permission for the sender's relayed address: dropped. A permission: a Data
/// indication naming that address. A channel: ChannelData on the receiver's channel number. A
/// burst sent back to back arrives whole and in order.
#[tokio::test]
async fn relay_to_relay_on_one_server_follows_the_receivers_permissions_and_channels() {
    let relay = start(|_| {}).await;
    relay.presence.joined("alice");
    relay.presence.joined("bob");
    let mut alice = TurnClient::for_user(relay.handle.udp_addr, false, "alice", 600).await;
    let mut bob = TurnClient::for_user(relay.handle.udp_addr, false, "bob", 600).await;
    let alice_relay = alice.allocate().await.unwrap();
    let bob_relay = bob.allocate().await.unwrap();
    alice.create_permission(&[bob_relay]).await.unwrap();
    alice.channel_bind(0x4000, bob_relay).await.unwrap();

    alice.send_channel_data(0x4000, b"before bob permits").await;
    assert_eq!(bob.recv_raw(Duration::from_millis(300)).await, None, "bob never permitted alice");

    bob.create_permission(&[alice_relay]).await.unwrap();
    alice.send_channel_data(0x4000, b"permitted").await;
    let raw = bob.recv_raw(WAIT).await.expect("arrives once permitted");
    assert_eq!(decode(raw), Relayed::Indication(alice_relay, b"permitted".to_vec()));

    bob.channel_bind(0x4abc, alice_relay).await.unwrap();
    let burst: Vec<Vec<u8>> = (0..40).map(|i| numbered(i, 100 + i)).collect();
    for payload in &burst {
        alice.send_channel_data(0x4000, payload).await;
    }
    for (i, payload) in burst.iter().enumerate() {
        let raw = bob.recv_raw(WAIT).await.expect("every datagram of the burst");
        assert_eq!(decode(raw), Relayed::Channel(0x4abc, payload.clone()), "datagram {i}");
    }
    let c = &relay.handle.counters;
    // Alice sent each, permitted or not; bob received all but the first. (Counted on the
    // relay's threads: maybe a moment after the last datagram left.)
    let counted = || {
        RelayCounters::get(&c.relayed_packets_out) == 42 && RelayCounters::get(&c.relayed_packets_in) == 41
    };
    assert!(eventually(WAIT, counted).await, "42 out, 41 in");
}

/// A client cannot make the relay's batched sends fail on purpose. A peer on port 0 (where the
/// kernel refuses every send with `EINVAL`, which the relay once took for "no GSO/`sendmmsg`
/// here" and turned them off for the whole listener) is refused with 403 like any denied peer,
/// even where the client holds a permission for its IP, and a Send indication to it is dropped
/// silently. Another client's bursts, both ways, still leave by GSO and `sendmmsg`.
#[tokio::test]
async fn a_peer_on_port_zero_is_refused_and_other_clients_keep_batched_sends() {
    let relay = start(|s| s.turn.peer_policy = "any".into()).await;
    relay.presence.joined("mallory");
    relay.presence.joined("alice");
    let c = &relay.handle.counters;
    let mut mallory = TurnClient::for_user(relay.handle.udp_addr, false, "mallory", 600).await;
    mallory.allocate().await.unwrap();
    let zero: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let forbidden = Refused { code: 403, reason: "Forbidden".into() };
    assert_eq!(mallory.create_permission(&[zero]).await, Err(forbidden.clone()));
    assert_eq!(mallory.channel_bind(0x4000, zero).await, Err(forbidden.clone()));
    let decoy = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    mallory.create_permission(&[decoy.local_addr().unwrap()]).await.unwrap();
    assert_eq!(mallory.channel_bind(0x4000, zero).await, Err(forbidden), "a permission for the IP");
    mallory.send_indication(zero, b"to nobody").await;
    let denied = || RelayCounters::get(&c.denied_peers) == 4;
    assert!(eventually(WAIT, denied).await, "three 403s and one dropped indication counted");

    let mut alice = TurnClient::for_user(relay.handle.udp_addr, false, "alice", 600).await;
    let relayed = alice.allocate().await.unwrap();
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    alice.create_permission(&[peer.local_addr().unwrap()]).await.unwrap();
    alice.channel_bind(0x4001, peer.local_addr().unwrap()).await.unwrap();
    let batched = relaychat::turn::datagram_batch::BatchMode::configured()
        == relaychat::turn::datagram_batch::BatchMode::Batched;
    let expect_batches = batched && cfg!(target_os = "linux");
    // Bursts both ways, a run of one size (GSO) then growing sizes (no two make a GSO run:
    // `sendmmsg`), until the relay was seen batching (it only can where a burst is queued
    // before it reads).
    let mut buf = vec![0u8; 2048];
    for round in 0..20 {
        let burst: Vec<Vec<u8>> =
            (0..32).map(|i| numbered(i, if i < 16 { 1000 } else { 100 + 10 * i })).collect();
        for payload in &burst {
            peer.send_to(payload, relayed).await.unwrap();
        }
        for (i, payload) in burst.iter().enumerate() {
            let raw = alice.recv_raw(WAIT).await.expect("every datagram from the peer arrives");
            assert_eq!(decode(raw), Relayed::Channel(0x4001, payload.clone()), "round {round}: {i}");
        }
        for payload in &burst {
            alice.send_channel_data(0x4001, payload).await;
        }
        for (i, payload) in burst.iter().enumerate() {
            let (n, _) = tokio::time::timeout(WAIT, peer.recv_from(&mut buf))
                .await
                .expect("every datagram to the peer arrives")
                .unwrap();
            assert_eq!(&buf[..n], &payload[..], "round {round}: {i}");
        }
        if !expect_batches
            || (RelayCounters::get(&c.sent_by_gso) > 0 && RelayCounters::get(&c.sent_by_sendmmsg) > 0)
        {
            break;
        }
    }
    let (gso, mmsg) = (RelayCounters::get(&c.sent_by_gso), RelayCounters::get(&c.sent_by_sendmmsg));
    if expect_batches {
        assert!(gso > 0 && mmsg > 0, "batched sends stayed on: {gso} by GSO, {mmsg} by sendmmsg");
    } else {
        assert_eq!((gso, mmsg), (0, 0), "one datagram per system call");
    }
    assert_eq!(RelayCounters::get(&c.peer_send_failures), 0);
    assert_eq!(RelayCounters::get(&c.client_send_failures), 0);
}
