//! The integrated TURN relay on real loopback sockets, relaying: two TURN clients (our raw-STUN
//! client over UDP, TCP and TLS, and the `turn` crate's client) reach each other through it, and
//! coturn's `turnutils_uclient`, an independent implementation, interoperates.

mod turn_support;

use std::net::SocketAddr;
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
    // Counted on the relay's threads, maybe just after the datagram left: allow a moment.
    let counted = || {
        RelayCounters::get(&c.relayed_packets_out) == 41 && RelayCounters::get(&c.relayed_packets_in) == 41
    };
    assert!(eventually(WAIT, counted).await, "41 relayed each way");
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
    let (mut alice, alice_relay) = allocated(&relay, "alice").await;
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
    let mut alice = voice_user(&relay, "alice").await;
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
    let (mut alice, alice_relay) = allocated(&relay, "alice").await;
    let peer = permitted_peer(&mut alice).await;
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
    let (mut alice, _) = allocated(&relay, "alice").await;
    let refused = alice.create_permission(&[relay.handle.udp_addr]).await.unwrap_err();
    assert_eq!(refused.code, 403);
    // Any other port on the same address is an ordinary peer under "any".
    let other =
        SocketAddr::new(relay.handle.udp_addr.ip(), relay.handle.udp_addr.port().wrapping_add(1).max(1));
    alice.create_permission(&[other]).await.unwrap();
}
