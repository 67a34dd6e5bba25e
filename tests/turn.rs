//! The integrated TURN relay on real loopback sockets: two TURN clients (our raw-STUN client over
//! UDP and TCP, and the `turn` crate's client) relay to each other through it; refusals carry
//! the codes a browser acts on; leaving voice stops traffic; the peer policy keeps private
//! listeners unreachable; coturn's `turnutils_uclient` interoperates.

mod turn_support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use relaychat::turn::RelayCounters;
use tokio::net::UdpSocket;
use turn_support::*;
use webrtc_util::Conn;

const SHORT: Duration = Duration::from_millis(300);
const WAIT: Duration = Duration::from_secs(2);

/// Two allocated clients that exchange data both ways through channels.
async fn relay_to_relay(server: SocketAddr, alice_tcp: bool, bob_tcp: bool, relay: &TestRelay) {
    relay.presence.joined("alice");
    relay.presence.joined("bob");
    let mut alice = TurnClient::for_user(server, alice_tcp, "alice", 600).await;
    let mut bob = TurnClient::for_user(server, bob_tcp, "bob", 600).await;
    let alice_relay = alice.allocate().await.expect("alice allocates");
    let bob_relay = bob.allocate().await.expect("bob allocates");
    assert_eq!(alice_relay.ip().to_string(), "127.0.0.1");
    assert_ne!(alice_relay, bob_relay);

    alice.create_permission(&[bob_relay]).await.unwrap();
    bob.create_permission(&[alice_relay]).await.unwrap();
    alice.channel_bind(0x4000, bob_relay).await.unwrap();
    bob.channel_bind(0x4001, alice_relay).await.unwrap();

    for i in 0..20u8 {
        // Odd lengths exercise ChannelData padding over TCP.
        let payload = vec![i; 101 + i as usize];
        alice.send_channel_data(0x4000, &payload).await;
        assert_eq!(bob.recv_data(WAIT).await.as_deref(), Some(&payload[..]), "alice -> bob #{i}");
        bob.send_channel_data(0x4001, &payload).await;
        assert_eq!(alice.recv_data(WAIT).await.as_deref(), Some(&payload[..]), "bob -> alice #{i}");
    }
    // Send indications work too (Data indications or ChannelData on the other side).
    alice.send_indication(bob_relay, b"indicated").await;
    assert_eq!(bob.recv_data(WAIT).await.as_deref(), Some(&b"indicated"[..]));

    let c = &relay.handle.counters;
    assert_eq!(relay.handle.active_allocations(), 2);
    assert_eq!(RelayCounters::get(&c.allocations_total), 2);
    assert_eq!(RelayCounters::get(&c.relayed_packets_out), 41);
    assert_eq!(RelayCounters::get(&c.relayed_packets_in), 41);
    assert!(RelayCounters::get(&c.relayed_bytes_in) > 2 * 20 * 101);

    // Refresh with lifetime 0 deletes the allocation.
    alice.refresh(Duration::ZERO).await.unwrap();
    assert!(eventually(WAIT, || relay.handle.active_allocations() == 1).await);
}

#[tokio::test]
async fn udp_clients_relay_to_each_other() {
    let relay = start(|_| {}).await;
    relay_to_relay(relay.handle.udp_addr, false, false, &relay).await;
}

#[tokio::test]
async fn tcp_clients_relay_to_each_other() {
    let relay = start(|_| {}).await;
    assert_eq!(relay.handle.udp_addr.port(), relay.handle.tcp_addr.port(), "one port for both");
    relay_to_relay(relay.handle.tcp_addr, true, true, &relay).await;
}

#[tokio::test]
async fn tcp_and_udp_clients_relay_to_each_other() {
    let relay = start(|_| {}).await;
    relay_to_relay(relay.handle.udp_addr, true, false, &relay).await;
}

#[tokio::test]
async fn tls_clients_relay_to_udp_clients() {
    let mut relay = start(|_| {}).await;
    let (config, connector) = self_signed_tls();
    let tls_addr =
        relay.handle.start_tls("127.0.0.1:0".parse().unwrap(), move || config.clone()).await.unwrap();
    assert_eq!(relay.handle.tls_addr, Some(tls_addr));
    relay.presence.joined("alice");
    relay.presence.joined("bob");
    let c = relaychat::turn::credentials::issue(SECRET.as_bytes(), "alice", now_unix() + 600);
    let mut alice = TurnClient::tls(tls_addr, &connector, &c.username, &c.credential).await;
    let mut bob = TurnClient::for_user(relay.handle.udp_addr, false, "bob", 600).await;
    let alice_relay = alice.allocate().await.expect("allocate over TLS");
    let bob_relay = bob.allocate().await.unwrap();
    alice.create_permission(&[bob_relay]).await.unwrap();
    bob.create_permission(&[alice_relay]).await.unwrap();
    alice.channel_bind(0x4000, bob_relay).await.unwrap();
    bob.channel_bind(0x4000, alice_relay).await.unwrap();
    for i in 0..10u8 {
        alice.send_channel_data(0x4000, &[i; 77]).await;
        assert_eq!(bob.recv_data(WAIT).await, Some(vec![i; 77]));
        bob.send_channel_data(0x4000, &[i; 99]).await;
        assert_eq!(alice.recv_data(WAIT).await, Some(vec![i; 99]));
    }
    // Leaving voice closes the TLS connection with the allocation.
    relay.presence.left("alice");
    assert!(eventually(WAIT, || relay.handle.active_allocations() == 1).await);
    let closed = tokio::time::timeout(WAIT, async {
        while alice.recv_raw(Duration::from_secs(30)).await.is_some() {}
    })
    .await;
    assert!(closed.is_ok(), "the TLS connection closes");
}

#[tokio::test]
async fn the_turn_crates_client_allocates_and_relays() {
    let relay = start(|_| {}).await;
    relay.presence.joined("alice");
    relay.presence.joined("bob");
    let server = relay.handle.udp_addr.to_string();
    let client = |user: &str| {
        let c = relaychat::turn::credentials::issue(SECRET.as_bytes(), user, now_unix() + 600);
        let server = server.clone();
        async move {
            let conn = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
            let client = turn::client::Client::new(turn::client::ClientConfig {
                stun_serv_addr: server.clone(),
                turn_serv_addr: server,
                username: c.username,
                password: c.credential,
                realm: REALM.into(),
                software: String::new(),
                rto_in_ms: 0,
                conn,
                vnet: None,
            })
            .await
            .unwrap();
            client.listen().await.unwrap();
            client
        }
    };
    let alice = client("alice").await;
    let bob = client("bob").await;
    let alice_relay = alice.allocate().await.expect("crate client allocates");
    let bob_relay = bob.allocate().await.expect("crate client allocates");
    let alice_addr = alice_relay.local_addr().unwrap();
    let bob_addr = bob_relay.local_addr().unwrap();
    // The crate's client creates the permission (and later a channel) on first send.
    let mut buf = vec![0u8; 1500];
    for i in 0..10u8 {
        bob_relay.send_to(&[i; 50], alice_addr).await.unwrap();
        alice_relay.send_to(&[i; 60], bob_addr).await.unwrap();
    }
    // Early packets may race the permission being installed; at least the later ones arrive.
    let got = tokio::time::timeout(WAIT, alice_relay.recv_from(&mut buf))
        .await
        .expect("data reaches alice")
        .unwrap();
    assert_eq!(got.1, bob_addr);
    let got =
        tokio::time::timeout(WAIT, bob_relay.recv_from(&mut buf)).await.expect("data reaches bob").unwrap();
    assert_eq!(got.1, alice_addr);
    assert_eq!(relay.handle.active_allocations(), 2);
    alice.close().await.unwrap();
    bob.close().await.unwrap();
}

#[tokio::test]
async fn wrong_hmac_is_answered_401_not_400() {
    // The crate answers 400 Bad Request here; RFC 8489 section 9.2.4 says 401, and browsers act
    // on 401. Our read loop checks MESSAGE-INTEGRITY before the crate sees the request.
    let relay = start(|_| {}).await;
    relay.presence.joined("alice");
    let username = format!("{}:alice", now_unix() + 600);
    let mut client = TurnClient::udp(relay.handle.udp_addr, &username, "not-the-password").await;
    let refused = client.allocate().await.unwrap_err();
    assert_eq!(refused, Refused { code: 401, reason: "Unauthorized".into() });
    assert_eq!(RelayCounters::get(&relay.handle.counters.auth_failures_bad_credential), 1);
    // A credential made with another secret is just as wrong.
    let other = relaychat::turn::credentials::issue(b"other-secret", "alice", now_unix() + 600);
    let mut client = TurnClient::tcp(relay.handle.tcp_addr, &other.username, &other.credential).await;
    assert_eq!(client.allocate().await.unwrap_err().code, 401);
    assert_eq!(relay.handle.active_allocations(), 0);
}

#[tokio::test]
async fn expired_credentials_cannot_allocate() {
    let relay = start(|_| {}).await;
    relay.presence.joined("alice");
    let mut client = TurnClient::for_user(relay.handle.udp_addr, false, "alice", -5).await;
    let refused = client.allocate().await.unwrap_err();
    assert_eq!(refused, Refused { code: 401, reason: "Credential expired".into() });
    assert_eq!(RelayCounters::get(&relay.handle.counters.auth_failures_expired), 1);
}

#[tokio::test]
async fn users_not_in_voice_cannot_allocate() {
    let relay = start(|_| {}).await;
    relay.presence.joined("bob");
    let mut client = TurnClient::for_user(relay.handle.udp_addr, false, "alice", 600).await;
    let refused = client.allocate().await.unwrap_err();
    assert_eq!(refused, Refused { code: 401, reason: "Not in voice chat".into() });
    assert_eq!(RelayCounters::get(&relay.handle.counters.auth_failures_not_in_voice), 1);
    assert_eq!(relay.handle.active_allocations(), 0);
}

#[tokio::test]
async fn malformed_usernames_are_refused() {
    let relay = start(|_| {}).await;
    let mut client = TurnClient::udp(relay.handle.udp_addr, "alice", &password_for("alice")).await;
    assert_eq!(
        client.allocate().await.unwrap_err(),
        Refused { code: 401, reason: "Malformed credential".into() }
    );
    assert_eq!(RelayCounters::get(&relay.handle.counters.auth_failures_malformed), 1);
}

#[tokio::test]
async fn without_the_live_session_rule_hmac_and_expiry_still_apply() {
    let relay = start(|s| s.turn.require_live_session = false).await;
    // Nobody is in voice.
    let mut ok = TurnClient::for_user(relay.handle.udp_addr, false, "bench", 600).await;
    ok.allocate().await.expect("no live session needed");
    let mut expired = TurnClient::for_user(relay.handle.udp_addr, false, "bench", -1).await;
    assert_eq!(expired.allocate().await.unwrap_err().reason, "Credential expired");
    let username = format!("{}:bench", now_unix() + 600);
    let mut wrong = TurnClient::udp(relay.handle.udp_addr, &username, "guess").await;
    assert_eq!(wrong.allocate().await.unwrap_err().code, 401);
    assert_eq!(relay.handle.active_allocations(), 1);
}

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

#[tokio::test]
async fn quotas_refuse_with_486_per_user_and_508_in_total() {
    let relay = start(|s| {
        s.turn.max_allocations_per_user = 2;
        s.turn.max_allocations_total = 3;
    })
    .await;
    relay.presence.joined("alice");
    relay.presence.joined("bob");
    let server = relay.handle.udp_addr;
    let mut a1 = TurnClient::for_user(server, false, "alice", 600).await;
    let mut a2 = TurnClient::for_user(server, true, "alice", 600).await;
    let mut a3 = TurnClient::for_user(server, false, "alice", 600).await;
    a1.allocate().await.unwrap();
    a2.allocate().await.unwrap();
    assert_eq!(
        a3.allocate().await.unwrap_err(),
        Refused { code: 486, reason: "Allocation Quota Reached".into() }
    );
    let mut b1 = TurnClient::for_user(server, false, "bob", 600).await;
    let mut b2 = TurnClient::for_user(server, false, "bob", 600).await;
    b1.allocate().await.unwrap();
    assert_eq!(b2.allocate().await.unwrap_err().code, 508);
    assert_eq!(RelayCounters::get(&relay.handle.counters.quota_refusals), 2);
    // Freed slots can be used again.
    a1.refresh(Duration::ZERO).await.unwrap();
    assert!(eventually(WAIT, || relay.handle.active_allocations() == 2).await);
    a3.allocate().await.expect("a slot was freed");
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
async fn refresh_after_expiry_works_while_in_voice_and_fails_after_leaving() {
    let relay = start(|_| {}).await;
    relay.presence.joined("alice");
    relay.presence.joined("bob");
    let server = relay.handle.udp_addr;
    let mut alice = TurnClient::for_user(server, false, "alice", 2).await;
    let mut bob = TurnClient::for_user(server, false, "bob", 600).await;
    alice.allocate().await.unwrap();
    let bob_relay = bob.allocate().await.unwrap();
    tokio::time::sleep(Duration::from_millis(3100)).await;
    // The credential has expired; the allocation made with it still refreshes, and permissions
    // and channels (which browsers refresh every few minutes) still work.
    alice.refresh(Duration::from_secs(600)).await.expect("refresh past expiry while in voice");
    alice.create_permission(&[bob_relay]).await.expect("permission past expiry while in voice");
    alice.channel_bind(0x4000, bob_relay).await.expect("channel bind past expiry while in voice");
    // A new allocation needs a fresh credential.
    let mut fresh = TurnClient::udp(server, &alice.username, &alice.password).await;
    assert_eq!(fresh.allocate().await.unwrap_err().reason, "Credential expired");

    relay.presence.left("alice");
    let refused = alice.refresh(Duration::from_secs(600)).await.unwrap_err();
    assert_eq!(refused.code, 401, "{refused:?}");
    assert!(eventually(WAIT, || relay.handle.active_allocations() == 1).await);
}

#[tokio::test]
async fn stale_and_forged_nonces_get_438() {
    let relay = start(|_| {}).await;
    relay.presence.joined("alice");
    let mut client = TurnClient::for_user(relay.handle.udp_addr, false, "alice", 600).await;
    // A made-up nonce (right shape, wrong MAC), then one minted for another client's IP.
    client.force_nonce(&format!("{:016x}{}", now_unix(), "0".repeat(32)));
    client.allocate().await.unwrap();
    assert_eq!(client.challenges, vec![438]);
    let counters = &relay.handle.counters;
    assert_eq!(counters.auth_failures_bad_credential.load(Ordering::Relaxed), 0);
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

/// coturn's own test client, as an independent implementation: `-y` pairs clients that send to
/// each other's relayed addresses, `-W` derives REST credentials from the shared secret.
#[derive(Clone, Copy, PartialEq, Debug)]
enum UclientTransport {
    Udp,
    Tcp,
    Tls,
}

async fn uclient(transport: UclientTransport) {
    let Some(binary) = which("turnutils_uclient") else {
        eprintln!("\n\n!!!!! SKIPPED: turnutils_uclient not found (apt-get install -y coturn) !!!!!\n");
        return;
    };
    let mut relay = start(|_| {}).await;
    relay.presence.joined("uclient");
    let mut port = relay.handle.udp_addr.port().to_string();
    if transport == UclientTransport::Tls {
        let (config, _) = self_signed_tls();
        let addr =
            relay.handle.start_tls("127.0.0.1:0".parse().unwrap(), move || config.clone()).await.unwrap();
        port = addr.port().to_string();
    }
    let mut args = vec![
        "-y", "-c", "-W", SECRET, "-u", "uclient", "-p", &port, "-n", "200", "-m", "4", "-l", "170", "-z",
        "5",
    ];
    match transport {
        UclientTransport::Udp => {}
        UclientTransport::Tcp => args.insert(0, "-t"),
        UclientTransport::Tls => {
            args.insert(0, "-t");
            args.insert(0, "-S");
        }
    }
    args.push("127.0.0.1");
    let args: Vec<String> = args.into_iter().map(String::from).collect();
    let output = tokio::task::spawn_blocking(move || std::process::Command::new(binary).args(&args).output())
        .await
        .unwrap()
        .unwrap();
    let stdout =
        String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    let tail: Vec<&str> = stdout.lines().rev().take(12).collect();
    eprintln!("uclient ({transport:?}) tail:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    let number_after = |label: &str| -> Option<u64> {
        let line = stdout.lines().rev().find(|l| l.contains(label))?;
        let rest = &line[line.find(label)? + label.len()..];
        rest.split(|c: char| !c.is_ascii_digit()).find(|s| !s.is_empty())?.parse().ok()
    };
    let sent = number_after("tot_send_msgs=").expect("uclient reports what it sent");
    let received = number_after("tot_recv_msgs=").expect("uclient reports what it received");
    let lost = number_after("Total lost packets ").expect("uclient reports losses");
    assert!(sent >= 800, "{sent}");
    assert_eq!(lost, 0, "uclient lost packets");
    assert_eq!(sent, received);
    assert!(RelayCounters::get(&relay.handle.counters.allocations_total) >= 4);
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.is_file())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coturn_uclient_interoperates_over_udp() {
    uclient(UclientTransport::Udp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coturn_uclient_interoperates_over_tcp() {
    uclient(UclientTransport::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coturn_uclient_interoperates_over_tls() {
    uclient(UclientTransport::Tls).await;
}

#[tokio::test]
async fn the_bandwidth_cap_drops_what_exceeds_it() {
    // 10 kB/s per allocation, a one-second bucket: of 100 kB sent at once, about 10 kB pass.
    let relay = start(|s| s.turn.allocation_bandwidth_bytes_per_s = 10_000).await;
    relay.presence.joined("alice");
    relay.presence.joined("bob");
    let server = relay.handle.udp_addr;
    let mut alice = TurnClient::for_user(server, false, "alice", 600).await;
    let mut bob = TurnClient::for_user(server, false, "bob", 600).await;
    let alice_relay = alice.allocate().await.unwrap();
    let bob_relay = bob.allocate().await.unwrap();
    alice.create_permission(&[bob_relay]).await.unwrap();
    bob.create_permission(&[alice_relay]).await.unwrap();
    alice.channel_bind(0x4000, bob_relay).await.unwrap();
    for _ in 0..100 {
        alice.send_channel_data(0x4000, &[7; 1000]).await;
    }
    let mut received = 0;
    while bob.recv_data(SHORT).await.is_some() {
        received += 1;
    }
    assert!((5..=12).contains(&received), "{received} of 100 passed a 10 kB/s cap");
    assert!(RelayCounters::get(&relay.handle.counters.bandwidth_drops) >= 88);
}

#[tokio::test]
async fn create_permission_installs_every_peer_address() {
    // The crate installs only the first XOR-PEER-ADDRESS; two peers on two IPs (policy "any",
    // so loopback peers are allowed) must both be able to reach the relay after one request.
    let relay = start(|s| s.turn.peer_policy = "any".into()).await;
    relay.presence.joined("alice");
    let mut alice = TurnClient::for_user(relay.handle.udp_addr, false, "alice", 600).await;
    let alice_relay = alice.allocate().await.unwrap();
    let p2 = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let p3 = UdpSocket::bind("127.0.0.3:0").await.unwrap();
    alice.create_permission(&[p2.local_addr().unwrap(), p3.local_addr().unwrap()]).await.unwrap();
    p2.send_to(b"from .2", alice_relay).await.unwrap();
    assert_eq!(alice.recv_data(WAIT).await.as_deref(), Some(&b"from .2"[..]));
    p3.send_to(b"from .3", alice_relay).await.unwrap();
    assert_eq!(alice.recv_data(WAIT).await.as_deref(), Some(&b"from .3"[..]));
    // A channel to an IPv4-mapped spelling binds the canonical address.
    let mapped: SocketAddr =
        format!("[::ffff:127.0.0.2]:{}", p2.local_addr().unwrap().port()).parse().unwrap();
    alice.channel_bind(0x4000, mapped).await.unwrap();
    alice.send_channel_data(0x4000, b"to .2").await;
    let mut buf = [0u8; 64];
    let (n, from) = tokio::time::timeout(WAIT, p2.recv_from(&mut buf)).await.unwrap().unwrap();
    assert_eq!((&buf[..n], from), (&b"to .2"[..], alice_relay));
}

#[tokio::test]
async fn an_ipv6_relay_request_is_answered_440() {
    let relay = start(|_| {}).await;
    relay.presence.joined("alice");
    let mut alice = TurnClient::for_user(relay.handle.udp_addr, false, "alice", 600).await;
    let refused = alice
        .request(stun::message::METHOD_ALLOCATE, || {
            vec![
                Box::new(turn::proto::reqtrans::RequestedTransport { protocol: turn::proto::PROTO_UDP }),
                Box::new(turn::proto::reqfamily::REQUESTED_FAMILY_IPV6),
            ]
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code, 440);
    assert_eq!(relay.handle.active_allocations(), 0);
}

#[tokio::test]
async fn idle_tcp_connections_without_allocation_are_closed() {
    use tokio::io::AsyncReadExt;
    let relay = start(|_| {}).await;
    let started = std::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(relay.handle.tcp_addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(
        relaychat::turn::tcp::UNALLOCATED_IDLE + Duration::from_secs(5),
        silent.read(&mut buf),
    )
    .await
    .expect("closed by the relay, not by the test's timeout")
    .unwrap_or(0);
    assert_eq!(n, 0, "EOF");
    let waited = started.elapsed();
    assert!(waited >= relaychat::turn::tcp::UNALLOCATED_IDLE - Duration::from_millis(100), "{waited:?}");
}

#[tokio::test]
async fn a_tcp_client_that_does_not_read_loses_frames_not_memory() {
    let relay = start(|_| {}).await;
    relay.presence.joined("alice");
    relay.presence.joined("bob");
    let mut alice = TurnClient::for_user(relay.handle.tcp_addr, true, "alice", 600).await;
    let mut bob = TurnClient::for_user(relay.handle.udp_addr, false, "bob", 600).await;
    let alice_relay = alice.allocate().await.unwrap();
    let bob_relay = bob.allocate().await.unwrap();
    alice.create_permission(&[bob_relay]).await.unwrap();
    bob.create_permission(&[alice_relay]).await.unwrap();
    bob.channel_bind(0x4000, alice_relay).await.unwrap();
    // Alice stops reading; bob sends 40 MB at her.
    let payload = vec![1u8; 1000];
    for i in 0..40_000 {
        bob.send_channel_data(0x4000, &payload).await;
        if i % 500 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let drops = &relay.handle.counters.tcp_send_drops;
    assert!(eventually(WAIT, || RelayCounters::get(drops) > 0).await, "the bounded queue dropped frames");
    // The relay still serves everyone, alice included once she reads again.
    bob.refresh(Duration::from_secs(600)).await.unwrap();
    alice.refresh(Duration::from_secs(600)).await.expect("alice's connection still works");
}

#[tokio::test]
async fn oversize_peer_datagrams_are_dropped_and_counted_not_truncated() {
    let relay = start(|s| s.turn.peer_policy = "any".into()).await;
    relay.presence.joined("alice");
    let mut alice = TurnClient::for_user(relay.handle.udp_addr, false, "alice", 600).await;
    let alice_relay = alice.allocate().await.unwrap();
    let peer = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    alice.create_permission(&[peer.local_addr().unwrap()]).await.unwrap();
    // 1500 bytes is the largest a relayed packet may be; one byte more must not arrive cut.
    peer.send_to(&[1; 1501], alice_relay).await.unwrap();
    peer.send_to(&[2; 1500], alice_relay).await.unwrap();
    peer.send_to(&[3; 100], alice_relay).await.unwrap();
    let summary = |data: Option<Vec<u8>>| data.map(|d| (d.len(), d[0]));
    assert_eq!(summary(alice.recv_data(WAIT).await), Some((1500, 2)));
    assert_eq!(summary(alice.recv_data(WAIT).await), Some((100, 3)));
    assert_eq!(RelayCounters::get(&relay.handle.counters.oversize_drops), 1);
}

#[tokio::test]
async fn the_relay_never_sends_to_its_own_listener_even_under_any() {
    let relay = start(|s| s.turn.peer_policy = "any".into()).await;
    relay.presence.joined("alice");
    let mut alice = TurnClient::for_user(relay.handle.udp_addr, false, "alice", 600).await;
    alice.allocate().await.unwrap();
    let refused = alice.create_permission(&[relay.handle.udp_addr]).await.unwrap_err();
    assert_eq!(refused.code, 403);
    // Any other port on the same address is an ordinary peer under "any".
    let other =
        SocketAddr::new(relay.handle.udp_addr.ip(), relay.handle.udp_addr.port().wrapping_add(1).max(1));
    alice.create_permission(&[other]).await.unwrap();
}
