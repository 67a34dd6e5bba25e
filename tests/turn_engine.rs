//! Our own allocation engine on real loopback sockets: what RFC 8656 asks of Allocate, Refresh
//! and ChannelBind beyond plain relaying (retransmissions, options, conflicts, deletion), and the
//! per-allocation usage the admin API reads.

mod turn_support;

use std::net::SocketAddr;
use std::time::Duration;

use relaychat::turn::allocations::Transport;
use stun::attributes::{ATTR_EVEN_PORT, ATTR_RESERVATION_TOKEN};
use stun::message::{Getter, Message, Setter, CLASS_SUCCESS_RESPONSE, METHOD_ALLOCATE, METHOD_BINDING};
use stun::xoraddr::XorMappedAddress;
use tokio::net::UdpSocket;
use turn::proto::lifetime::Lifetime;
use turn::proto::relayaddr::RelayedAddress;
use turn::proto::reqtrans::RequestedTransport;
use turn::proto::PROTO_UDP;
use turn_support::*;

const WAIT: Duration = Duration::from_secs(2);
const SHORT: Duration = Duration::from_millis(300);

/// A raw attribute (for options the `turn` crate has no public setter for).
struct Raw(stun::attributes::AttrType, Vec<u8>);

impl Setter for Raw {
    fn add_to(&self, m: &mut Message) -> Result<(), stun::Error> {
        m.add(self.0, &self.1);
        Ok(())
    }
}

fn udp() -> Box<dyn Setter> {
    Box::new(RequestedTransport { protocol: PROTO_UDP })
}

fn relayed_of(m: &Message) -> SocketAddr {
    let mut relayed = RelayedAddress::default();
    relayed.get_from(m).unwrap();
    SocketAddr::new(relayed.ip, relayed.port)
}

#[tokio::test]
async fn usage_counts_the_bytes_and_packets_relayed_each_way() {
    let relay = start(|s| s.turn.peer_policy = "any".into()).await;
    let (mut alice, alice_relay) = allocated(&relay, "alice").await;
    let peer = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    alice.channel_bind(0x4000, peer_addr).await.unwrap();
    for size in [100usize, 200, 300] {
        alice.send_channel_data(0x4000, &vec![1; size]).await;
        let mut buf = [0u8; 1500];
        let (n, _) = tokio::time::timeout(WAIT, peer.recv_from(&mut buf)).await.unwrap().unwrap();
        assert_eq!(n, size);
    }
    alice.send_indication(peer_addr, &[2; 50]).await;
    let mut buf = [0u8; 1500];
    tokio::time::timeout(WAIT, peer.recv_from(&mut buf)).await.unwrap().unwrap();
    for size in [1000usize, 10] {
        peer.send_to(&vec![3; size], alice_relay).await.unwrap();
        assert_eq!(alice.recv_data(WAIT).await.map(|d| d.len()), Some(size));
    }
    // A datagram from a peer without a permission is neither relayed nor counted.
    let stranger = UdpSocket::bind("127.0.0.3:0").await.unwrap();
    stranger.send_to(&[4; 77], alice_relay).await.unwrap();
    assert_eq!(alice.recv_data(SHORT).await, None);

    let summaries = relay.handle.allocations();
    assert_eq!(summaries.len(), 1);
    let s = &summaries[0];
    assert_eq!((s.user.as_str(), s.transport), ("alice", Transport::Udp));
    assert_eq!((s.client, s.relayed), (alice.local_addr().await, alice_relay));
    assert_eq!((s.to_peers.bytes, s.to_peers.packets), (650, 4));
    assert_eq!((s.from_peers.bytes, s.from_peers.packets), (1010, 2));
    assert_eq!((s.permissions, s.channels), (1, 1));
    assert!(s.age_secs < 60);
    assert_eq!(relay.handle.control().allocations()[0].to_peers, s.to_peers, "the admin API's view");
    let json = serde_json::to_value(s).unwrap();
    assert_eq!(json["transport"], "udp");
    assert_eq!(json["to_peers"]["bytes"], 650);
}

#[tokio::test]
async fn a_retransmitted_allocate_gets_the_same_answer_and_a_new_one_437() {
    let relay = start(|_| {}).await;
    let mut alice = voice_user(&relay, "alice").await;
    // The first attempt fetches the nonce; then one signed request sent twice.
    alice.allocate().await.unwrap();
    alice.refresh(Duration::ZERO).await.unwrap();
    assert!(eventually(WAIT, || relay.handle.active_allocations() == 0).await);
    let request = alice.build(METHOD_ALLOCATE, vec![udp()], true);
    let answer = alice.transact(&request).await.unwrap();
    assert_eq!(answer.typ.class, CLASS_SUCCESS_RESPONSE);
    let again = alice.transact(&request).await.unwrap();
    assert_eq!(again.typ.class, CLASS_SUCCESS_RESPONSE, "{:?}", error_of(&again));
    assert_eq!(relayed_of(&again), relayed_of(&answer));
    assert_eq!(relay.handle.active_allocations(), 1);
    assert_eq!(alice.allocate().await.unwrap_err().code, 437);
}

#[tokio::test]
async fn refresh_zero_deletes_the_allocation_and_its_relayed_address() {
    let relay = start(|s| s.turn.peer_policy = "any".into()).await;
    let (mut alice, alice_relay) = allocated(&relay, "alice").await;
    let peer = permitted_peer(&mut alice).await;
    alice.refresh(Duration::ZERO).await.unwrap();
    assert!(eventually(WAIT, || relay.handle.relay_addresses() == 0).await, "the relay socket closed");
    assert_eq!(relay.handle.active_allocations(), 0);
    peer.send_to(b"too late", alice_relay).await.unwrap();
    assert_eq!(alice.recv_data(SHORT).await, None);
    assert_eq!(alice.refresh(Duration::from_secs(600)).await.unwrap_err().code, 437);
    assert_eq!(alice.create_permission(&[peer.local_addr().unwrap()]).await.unwrap_err().code, 437);
}

#[tokio::test]
async fn lifetimes_are_granted_between_the_default_and_an_hour() {
    let relay = start(|_| {}).await;
    let mut alice = voice_user(&relay, "alice").await;
    let lifetime_of = |m: &Message| {
        let mut l = Lifetime::default();
        l.get_from(m).unwrap();
        l.0.as_secs()
    };
    let answer = alice
        .request(METHOD_ALLOCATE, || vec![udp(), Box::new(Lifetime(Duration::from_secs(86_400)))])
        .await
        .unwrap();
    assert_eq!(lifetime_of(&answer), 3600);
    let refreshed = alice
        .request(stun::message::METHOD_REFRESH, || vec![Box::new(Lifetime(Duration::from_secs(60)))])
        .await
        .unwrap();
    assert_eq!(lifetime_of(&refreshed), 600);
}

#[tokio::test]
async fn allocate_options_even_port_reservation_and_transport() {
    let relay = start(|s| s.turn.peer_policy = "any".into()).await;
    relay.presence.joined("alice");
    let server = relay.handle.udp_addr;
    let mut alice = TurnClient::for_user(server, false, "alice", 600).await;
    let tcp = || vec![Box::new(RequestedTransport { protocol: turn::proto::Protocol(6) }) as Box<dyn Setter>];
    assert_eq!(alice.request(METHOD_ALLOCATE, tcp).await.unwrap_err().code, 442);
    let reserve = || vec![udp(), Box::new(Raw(ATTR_EVEN_PORT, vec![0x80])) as Box<dyn Setter>];
    assert_eq!(alice.request(METHOD_ALLOCATE, reserve).await.unwrap_err().code, 508);
    let token = || vec![udp(), Box::new(Raw(ATTR_RESERVATION_TOKEN, vec![7; 8])) as Box<dyn Setter>];
    assert_eq!(alice.request(METHOD_ALLOCATE, token).await.unwrap_err().code, 508);
    assert_eq!(relay.handle.active_allocations(), 0);
    for _ in 0..3 {
        let mut client = TurnClient::for_user(server, false, "alice", 600).await;
        let even = || vec![udp(), Box::new(Raw(ATTR_EVEN_PORT, vec![0])) as Box<dyn Setter>];
        let answer = client.request(METHOD_ALLOCATE, even).await.unwrap();
        assert_eq!(relayed_of(&answer).port() % 2, 0);
        client.refresh(Duration::ZERO).await.unwrap();
    }
}

#[tokio::test]
async fn channel_numbers_and_peers_bind_one_to_one() {
    let relay = start(|s| s.turn.peer_policy = "any".into()).await;
    let (mut alice, _) = allocated(&relay, "alice").await;
    let (p1, p2): (SocketAddr, SocketAddr) =
        ("127.0.0.2:5000".parse().unwrap(), "127.0.0.2:5001".parse().unwrap());
    alice.channel_bind(0x4000, p1).await.unwrap();
    alice.channel_bind(0x4000, p1).await.expect("the same binding again is a refresh");
    assert_eq!(alice.channel_bind(0x4000, p2).await.unwrap_err().code, 400, "number taken");
    assert_eq!(alice.channel_bind(0x4001, p1).await.unwrap_err().code, 400, "peer taken");
    assert_eq!(alice.channel_bind(0x3fff, p2).await.unwrap_err().code, 400, "not a channel number");
    alice.channel_bind(0x4001, p2).await.unwrap();
}

#[tokio::test]
async fn binding_requests_are_answered_with_the_mapped_address() {
    let relay = start(|_| {}).await;
    let client = TurnClient::udp(relay.handle.udp_addr, "x", "y").await;
    let request = client.build(METHOD_BINDING, vec![], false);
    let answer = client.transact(&request).await.unwrap();
    assert_eq!(answer.typ.class, CLASS_SUCCESS_RESPONSE);
    let mut mapped = XorMappedAddress::default();
    mapped.get_from(&answer).unwrap();
    assert_eq!(SocketAddr::new(mapped.ip, mapped.port), client.local_addr().await);
}

/// Every XOR-RELAYED-ADDRESS of an answer (a dual allocation has two).
fn all_relayed(m: &Message) -> Vec<SocketAddr> {
    m.attributes
        .0
        .iter()
        .filter(|a| a.typ == stun::attributes::ATTR_XOR_RELAYED_ADDRESS)
        .map(|a| {
            let mut one = Message::new();
            one.transaction_id = m.transaction_id;
            one.add(a.typ, &a.value);
            relayed_of(&one)
        })
        .collect()
}

fn additional_ipv6() -> Box<dyn Setter> {
    Box::new(Raw(ATTR_ADDITIONAL_ADDRESS_FAMILY, vec![0x02, 0, 0, 0]))
}

const ATTR_ADDITIONAL_ADDRESS_FAMILY: stun::attributes::AttrType = stun::attributes::AttrType(0x8000);
const ATTR_ADDRESS_ERROR_CODE: stun::attributes::AttrType = stun::attributes::AttrType(0x8001);

async fn recv_from(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 1500];
    let (n, from) = tokio::time::timeout(WAIT, socket.recv_from(&mut buf)).await.unwrap().unwrap();
    (buf[..n].to_vec(), from)
}

#[tokio::test]
async fn a_dual_allocation_relays_ipv4_and_ipv6_peers_each_from_its_own_family() {
    let relay = start(|s| {
        s.turn.peer_policy = "any".into();
        s.turn.relay_ip6 = "::1".into();
    })
    .await;
    let mut alice = voice_user(&relay, "alice").await;
    let answer = alice.request(METHOD_ALLOCATE, || vec![udp(), additional_ipv6()]).await.unwrap();
    let relayed = all_relayed(&answer);
    assert_eq!(relayed.len(), 2, "{relayed:?}");
    assert!(answer.get(ATTR_ADDRESS_ERROR_CODE).is_err(), "both families succeeded");
    let (relay4, relay6) = (relayed[0], relayed[1]);
    assert_eq!((relay4.ip().to_string(), relay6.ip().to_string()), ("127.0.0.1".into(), "::1".into()));

    let peer4 = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let peer6 = UdpSocket::bind("[::1]:0").await.unwrap();
    let (addr4, addr6) = (peer4.local_addr().unwrap(), peer6.local_addr().unwrap());
    alice.create_permission(&[addr4, addr6]).await.unwrap();
    peer4.send_to(b"over ipv4", relay4).await.unwrap();
    assert_eq!(alice.recv_data(WAIT).await.as_deref(), Some(&b"over ipv4"[..]));
    peer6.send_to(b"over ipv6", relay6).await.unwrap();
    assert_eq!(alice.recv_data(WAIT).await.as_deref(), Some(&b"over ipv6"[..]));
    // Each peer is reached from the relayed address of its family.
    alice.channel_bind(0x4000, addr6).await.unwrap();
    alice.send_channel_data(0x4000, b"to ipv6").await;
    assert_eq!(recv_from(&peer6).await, (b"to ipv6".to_vec(), relay6));
    alice.send_indication(addr4, b"to ipv4").await;
    assert_eq!(recv_from(&peer4).await, (b"to ipv4".to_vec(), relay4));
    // Counted once sent, on the relay's own thread: maybe just after the peer got it.
    let counted = || {
        let summary = &relay.handle.allocations()[0];
        (summary.to_peers.packets, summary.from_peers.packets) == (2, 2)
    };
    assert!(eventually(WAIT, counted).await, "{:?}", relay.handle.allocations()[0]);
    alice.refresh(Duration::ZERO).await.unwrap();
    assert!(eventually(WAIT, || relay.handle.relay_addresses() == 0).await, "both relayed addresses closed");
}

#[tokio::test]
async fn an_ipv6_allocation_takes_ipv6_peers_only() {
    let relay = start(|s| {
        s.turn.peer_policy = "any".into();
        s.turn.relay_ip6 = "::1".into();
    })
    .await;
    let mut alice = voice_user(&relay, "alice").await;
    let answer = alice
        .request(METHOD_ALLOCATE, || vec![udp(), Box::new(turn::proto::reqfamily::REQUESTED_FAMILY_IPV6)])
        .await
        .unwrap();
    let relayed = all_relayed(&answer);
    assert_eq!(relayed.len(), 1);
    assert!(relayed[0].is_ipv6());
    let refused = alice.create_permission(&["127.0.0.2:9".parse().unwrap()]).await.unwrap_err();
    assert_eq!(refused.code, 443);
    assert_eq!(alice.channel_bind(0x4000, "127.0.0.2:9".parse().unwrap()).await.unwrap_err().code, 443);
    alice.create_permission(&["[::1]:9".parse().unwrap()]).await.unwrap();
    let refresh_v4 = alice
        .request(stun::message::METHOD_REFRESH, || {
            vec![Box::new(turn::proto::reqfamily::REQUESTED_FAMILY_IPV4)]
        })
        .await
        .unwrap_err();
    assert_eq!(refresh_v4.code, 443, "a Refresh naming the other family");
}

#[tokio::test]
async fn a_dual_allocation_without_an_ipv6_relay_gets_ipv4_and_an_address_error() {
    let relay = start(|_| {}).await;
    let mut alice = voice_user(&relay, "alice").await;
    let answer = alice.request(METHOD_ALLOCATE, || vec![udp(), additional_ipv6()]).await.unwrap();
    let relayed = all_relayed(&answer);
    assert!(relayed.len() == 1 && relayed[0].is_ipv4(), "{relayed:?}");
    let error = answer.get(ATTR_ADDRESS_ERROR_CODE).unwrap();
    assert_eq!(&error[..4], &[0x02, 0, 4, 40], "IPv6: 440");
    assert_eq!(&error[4..], b"Address Family not Supported");
    let refused = alice.create_permission(&["[2001:db8::1]:9".parse().unwrap()]).await.unwrap_err();
    assert_eq!(refused.code, 443);
}
