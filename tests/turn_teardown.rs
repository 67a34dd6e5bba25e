//! The integrated TURN relay's teardown and peer policy, on real loopback sockets: leaving voice
//! stops traffic and deletes allocations, the policy keeps private listeners unreachable, closing
//! the relay releases everything.

mod turn_support;

use std::net::SocketAddr;
use std::time::Duration;

use relaychat::turn::RelayCounters;
use tokio::net::UdpSocket;
use turn_support::*;

const SHORT: Duration = Duration::from_millis(300);
const WAIT: Duration = Duration::from_secs(2);

/// Leaving voice (the hub calls `presence.left` on leave, disconnect, timeout, kick and ban)
/// deletes the user's allocations at once, and data stops within a second.
async fn leaving_voice_stops_relaying(tcp: bool) {
    let relay = start(|_| {}).await;
    let server = if tcp { relay.handle.tcp_addr } else { relay.handle.udp_addr };
    relay.presence.joined("alice");
    relay.presence.joined("bob");
    let mut alice = TurnClient::for_user(server, tcp, "alice", 600).await;
    // Two allocations for alice under two different credentials: both must go.
    let mut alice2 = TurnClient::for_user(server, tcp, "alice", 500).await;
    let mut bob = TurnClient::for_user(server, false, "bob", 600).await;
    let alice_relay = alice.allocate().await.unwrap();
    alice2.allocate().await.unwrap();
    let bob_relay = bob.allocate().await.unwrap();
    alice.create_permission(&[bob_relay]).await.unwrap();
    bob.create_permission(&[alice_relay]).await.unwrap();
    bob.channel_bind(0x4000, alice_relay).await.unwrap();
    bob.send_channel_data(0x4000, b"before").await;
    assert_eq!(alice.recv_data(WAIT).await.as_deref(), Some(&b"before"[..]));
    assert_eq!(relay.handle.active_allocations(), 3);

    relay.presence.left("alice");
    assert!(
        eventually(Duration::from_secs(1), || relay.handle.active_allocations() == 1).await,
        "alice's allocations are deleted within a second"
    );
    for _ in 0..5 {
        bob.send_channel_data(0x4000, b"after").await;
    }
    if !tcp {
        // (Over TCP the connection is closed with the allocation.)
        assert_eq!(alice.recv_data(Duration::from_secs(1)).await, None, "nothing is delivered after leaving");
    }
    // Her credential no longer works for anything.
    let mut again = TurnClient::for_user(relay.handle.udp_addr, false, "alice", 600).await;
    assert_eq!(again.allocate().await.unwrap_err().reason, "Not in voice chat");
    // Bob is untouched.
    bob.refresh(Duration::from_secs(600)).await.unwrap();
}

#[tokio::test]
async fn leaving_voice_deletes_udp_allocations_and_stops_data() {
    leaving_voice_stops_relaying(false).await;
}

#[tokio::test]
async fn leaving_voice_deletes_tcp_allocations_and_closes_the_connection() {
    leaving_voice_stops_relaying(true).await;
}

/// Listeners a relay must never reach under own-relays and public: 127.0.0.2, and 127.0.0.1
/// spelled as IPv4-mapped IPv6.
async fn peer_policy_case(policy: &str) -> (Option<Vec<u8>>, Option<Vec<u8>>, u64) {
    let relay = start(|s| s.turn.peer_policy = policy.into()).await;
    relay.presence.joined("alice");
    relay.presence.joined("bob");
    let server = relay.handle.udp_addr;
    let private = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let loopback = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let private_addr = private.local_addr().unwrap();
    let mapped: SocketAddr =
        format!("[::ffff:127.0.0.1]:{}", loopback.local_addr().unwrap().port()).parse().unwrap();

    let mut alice = TurnClient::for_user(server, false, "alice", 600).await;
    let mut bob = TurnClient::for_user(server, false, "bob", 600).await;
    let alice_relay = alice.allocate().await.unwrap();
    let bob_relay = bob.allocate().await.unwrap();

    // Relay to relay works whatever the policy.
    alice.create_permission(&[bob_relay]).await.unwrap();
    bob.create_permission(&[alice_relay]).await.unwrap();
    alice.send_indication(bob_relay, b"relay-to-relay").await;
    assert_eq!(bob.recv_data(WAIT).await.as_deref(), Some(&b"relay-to-relay"[..]), "{policy}");

    let private_perm = alice.create_permission(&[private_addr]).await;
    let mapped_perm = alice.create_permission(&[mapped]).await;
    if policy == "any" {
        private_perm.unwrap();
        // Canonicalized, the mapped address is plain 127.0.0.1 and gets its permission.
        mapped_perm.unwrap();
    } else {
        assert_eq!(private_perm.unwrap_err(), Refused { code: 403, reason: "Forbidden".into() }, "{policy}");
        assert_eq!(mapped_perm.unwrap_err().code, 403, "{policy}");
    }
    // The crate's permissions are per IP: alice holds one for 127.0.0.1 (bob's relay), so a Send
    // to another port of 127.0.0.1 passes the crate and must be stopped by the relay socket.
    let plain_loopback = loopback.local_addr().unwrap();
    alice.send_indication(plain_loopback, b"to loopback").await;
    alice.send_indication(mapped, b"to mapped").await;
    alice.send_indication(private_addr, b"to private").await;
    let mut buf = [0u8; 100];
    let at_private = tokio::time::timeout(SHORT, private.recv_from(&mut buf))
        .await
        .ok()
        .map(|r| buf[..r.unwrap().0].to_vec());
    let at_loopback = tokio::time::timeout(SHORT, loopback.recv_from(&mut buf))
        .await
        .ok()
        .map(|r| buf[..r.unwrap().0].to_vec());
    // Peers cannot inject into a relay under a restrictive policy either: the loopback
    // listener (same IP as bob's relay, permitted by IP) sends to alice's relay.
    loopback.send_to(b"injected", alice_relay).await.unwrap();
    if policy != "any" {
        assert_eq!(alice.recv_data(SHORT).await, None, "{policy}: injected datagram must be dropped");
    }
    let denied = RelayCounters::get(&relay.handle.counters.denied_peers);
    (at_private, at_loopback, denied)
}

#[tokio::test]
async fn own_relays_policy_reaches_nothing_but_relays() {
    let (private, loopback, denied) = peer_policy_case("own-relays").await;
    assert_eq!(private, None);
    assert_eq!(loopback, None);
    assert!(denied >= 4, "403s and dropped datagrams are counted: {denied}");
}

#[tokio::test]
async fn public_policy_reaches_nothing_private() {
    let (private, loopback, denied) = peer_policy_case("public").await;
    assert_eq!(private, None);
    assert_eq!(loopback, None);
    assert!(denied >= 4, "{denied}");
}

#[tokio::test]
async fn any_policy_does_reach_private_listeners() {
    // The control case: the same test setup does detect delivery.
    let (private, loopback, _) = peer_policy_case("any").await;
    assert_eq!(private.as_deref(), Some(&b"to private"[..]));
    assert_eq!(loopback.as_deref(), Some(&b"to loopback"[..]));
}

#[tokio::test]
async fn close_releases_everything() {
    let relay = start(|_| {}).await;
    relay.presence.joined("alice");
    let mut client = TurnClient::for_user(relay.handle.udp_addr, false, "alice", 600).await;
    client.allocate().await.unwrap();
    assert_eq!(relay.handle.relay_addresses(), 1);
    let counters = relay.handle.counters.clone();
    relay.handle.close().await;
    assert!(eventually(WAIT, || RelayCounters::get(&counters.allocations_active) == 0).await);
}
