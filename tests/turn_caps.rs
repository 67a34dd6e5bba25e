//! Per-allocation and per-IP caps of the relay, against the real binary: permissions and
//! channels beyond `[turn] max_permissions_per_allocation` / `max_channels_per_allocation` are
//! answered 508 (and counted), and TCP connections beyond `max_tcp_connections_per_ip` are
//! closed at accept, authenticated or not.

mod common;
mod turn_support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::{http_get, rss_kib, Server};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use turn_support::{TurnClient, SECRET};

/// The relay on, without the live-session rule (no WebSocket needed), peers under `public`.
fn relay_config(extra: &str) -> String {
    format!(
        "[turn]\nenabled = true\nsecret = \"{SECRET}\"\nrequire_live_session = false\npeer_policy = \"public\"\n{extra}"
    )
}

/// The `i`th of many distinct public peer addresses in 11.0.0.0/8 (never contacted:
/// permissions and channel bindings send nothing).
fn peer_at(i: u32) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0B00_0000 + i + 1)), 5000)
}

async fn metric(server: &Server, name: &str) -> u64 {
    let (_, text) = http_get(server.http, "/metrics").await;
    text.lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
}

#[tokio::test]
async fn permissions_beyond_the_cap_are_refused_with_508_and_memory_stays_bounded() {
    let server = Server::start(&relay_config("max_permissions_per_allocation = 64\n"));
    let turn = server.turn_udp.expect("turn is on");
    let mut client = TurnClient::for_user(turn, false, "alice", 600).await;
    client.allocate().await.unwrap();
    let rss_before = rss_kib(server.pid());

    let mut installed = 0;
    let mut refused = 0;
    for i in 0..1000 {
        match client.create_permission(&[peer_at(i)]).await {
            Ok(()) => installed += 1,
            Err(r) => {
                assert_eq!((r.code, r.reason.as_str()), (508, "Insufficient Capacity"), "request {i}");
                refused += 1;
            }
        }
    }
    assert_eq!((installed, refused), (64, 936));
    // Installed peers can still be refreshed at the cap, several in one request too.
    client.create_permission(&[peer_at(0), peer_at(63)]).await.unwrap();
    // A request that would go over is refused whole, even if some of its peers are installed.
    let refused = client.create_permission(&[peer_at(1), peer_at(64)]).await.unwrap_err();
    assert_eq!(refused.code, 508);
    assert_eq!(metric(&server, "relaychat_turn_permission_cap_refusals_total").await, 937);

    let rss_after = rss_kib(server.pid());
    eprintln!("relay RSS: {rss_before} KiB after Allocate, {rss_after} KiB after 1000 CreatePermission");
    assert!(rss_after < rss_before + 8 * 1024, "RSS grew from {rss_before} to {rss_after} KiB");
}

#[tokio::test]
async fn channels_beyond_the_cap_are_refused_with_508() {
    let server = Server::start(&relay_config(
        "max_channels_per_allocation = 8\nmax_permissions_per_allocation = 10\n",
    ));
    let turn = server.turn_udp.expect("turn is on");
    let mut client = TurnClient::for_user(turn, false, "bob", 600).await;
    client.allocate().await.unwrap();
    for i in 0..8u16 {
        client.channel_bind(0x4000 + i, peer_at(u32::from(i))).await.unwrap();
    }
    let refused = client.channel_bind(0x4008, peer_at(8)).await.unwrap_err();
    assert_eq!((refused.code, refused.reason.as_str()), (508, "Insufficient Capacity"));
    // Rebinding (refreshing) a bound channel is not a new one.
    client.channel_bind(0x4003, peer_at(3)).await.unwrap();
    // Each channel's peer holds a permission: two of ten are left, then none.
    client.create_permission(&[peer_at(100), peer_at(101)]).await.unwrap();
    assert_eq!(client.create_permission(&[peer_at(102)]).await.unwrap_err().code, 508);
    assert_eq!(metric(&server, "relaychat_turn_channel_cap_refusals_total").await, 1);
    assert_eq!(metric(&server, "relaychat_turn_permission_cap_refusals_total").await, 1);

    // The caps are per allocation: a second client starts empty.
    let mut other = TurnClient::for_user(turn, false, "bob", 600).await;
    other.allocate().await.unwrap();
    other.channel_bind(0x4008, peer_at(8)).await.unwrap();
}

/// True if the server closed `stream` (EOF or reset) within `wait`; false if it stays open.
async fn closed_by_server(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(wait, stream.read(&mut byte)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => false,
        Err(_) => false,
    }
}

#[tokio::test]
async fn tcp_connections_beyond_the_per_ip_cap_are_closed_at_accept() {
    let server = Server::start(&relay_config("max_tcp_connections_per_ip = 16\n"));
    let turn_tcp = server.turn_tcp.expect("turn tcp is on");
    let mut streams = Vec::new();
    for _ in 0..50 {
        streams.push(TcpStream::connect(turn_tcp).await.unwrap());
    }
    // Checked all at once: well inside the 10 s an idle unauthenticated connection may live.
    let checks = streams.into_iter().map(|mut stream| async move {
        let closed = closed_by_server(&mut stream, Duration::from_millis(500)).await;
        (!closed).then_some(stream)
    });
    let mut open: Vec<TcpStream> =
        futures_util::future::join_all(checks).await.into_iter().flatten().collect();
    assert_eq!(open.len(), 16, "only the cap's worth of connections stays open");
    assert_eq!(metric(&server, "relaychat_turn_tcp_per_ip_refusals_total").await, 34);

    // An accepted connection works: a TURN client over it allocates (nothing else is needed
    // for that, however many are open).
    drop(open.pop());
    let started = Instant::now();
    let mut client = loop {
        // The freed place comes back once the server saw the close.
        let mut probe = TcpStream::connect(turn_tcp).await.unwrap();
        if !closed_by_server(&mut probe, Duration::from_millis(200)).await {
            drop(probe);
            tokio::time::sleep(Duration::from_millis(100)).await;
            break TurnClient::for_user(turn_tcp, true, "carol", 600).await;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "the freed place never came back");
    };
    client.allocate().await.unwrap();
    drop(open);
}
