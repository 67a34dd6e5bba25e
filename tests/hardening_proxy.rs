//! Client addresses behind a trusted proxy, against the real binary: the rightmost untrusted
//! X-Forwarded-For hop is the client (a spoofed leftmost entry changes nothing), and IPv6
//! clients of one /64 share one per-IP limit. Behind a TCP load balancer speaking the PROXY
//! protocol (hand-made v2 headers, sent from 127.0.0.2, the listed balancer), the header's
//! source is the client for the hub's per-IP limit and the TURN per-IP TCP cap, and a header
//! from anyone else is just bad input. A balancer that trickles its header a byte a second is
//! cut off at the header deadline, counted from the connect, not from its latest byte.

mod common;
mod turn_support;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::{http_get, Client, Server};
use stun::agent::TransactionId;
use stun::fingerprint::FINGERPRINT;
use stun::message::{Getter, Message, Setter, BINDING_REQUEST};
use stun::xoraddr::XorMappedAddress;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use turn_support::TurnClient;

const CONFIG: &str = r#"
[server]
trusted_proxies = ["127.0.0.1"]

[limits]
max_connections_per_ip = 1
"#;

async fn connect_via_proxy(server: &Server, name: &str, forwarded_for: &str) -> Client {
    let mut request = server.url(Some(name)).into_client_request().unwrap();
    request.headers_mut().insert("x-forwarded-for", forwarded_for.parse().unwrap());
    Client::connect_with_request(request).await
}

fn refused(client: &Client) -> bool {
    client.token.starts_with("refused:") && client.token.contains("Too many concurrent connections")
}

#[tokio::test]
async fn the_rightmost_untrusted_hop_is_the_client() {
    let server = Server::start(CONFIG);
    let first = connect_via_proxy(&server, "first", "203.0.113.1, 198.51.100.7").await;
    assert!(!first.token.starts_with("refused:"), "{}", first.token);
    // Same real client, different spoofed leftmost entry: still the same address.
    let spoofed = connect_via_proxy(&server, "spoofed", "203.0.113.2, 198.51.100.7").await;
    assert!(refused(&spoofed), "a spoofed X-Forwarded-For entry escaped the per-IP limit: {}", spoofed.token);
    // Hops written by our own (trusted) proxies are skipped.
    let chained = connect_via_proxy(&server, "chained", "198.51.100.7, 127.0.0.1").await;
    assert!(refused(&chained), "{}", chained.token);
    let other = connect_via_proxy(&server, "other", "198.51.100.8").await;
    assert!(!other.token.starts_with("refused:"), "{}", other.token);
}

#[tokio::test]
async fn ipv6_clients_of_one_prefix_share_the_per_ip_limit() {
    let server = Server::start(CONFIG);
    let a = connect_via_proxy(&server, "v6a", "2001:db8:1:2::1").await;
    assert!(!a.token.starts_with("refused:"), "{}", a.token);
    let b = connect_via_proxy(&server, "v6b", "2001:db8:1:2:aaaa::2").await;
    assert!(refused(&b), "a second address of the same /64 was not limited: {}", b.token);
    let c = connect_via_proxy(&server, "v6c", "2001:db8:1:3::1").await;
    assert!(!c.token.starts_with("refused:"), "another /64 is another client: {}", c.token);

    // With prefix 128 every address counts alone.
    let server = Server::start(&format!("{CONFIG}ipv6_prefix_len = 128\n"));
    let a = connect_via_proxy(&server, "v6a", "2001:db8:1:2::1").await;
    let b = connect_via_proxy(&server, "v6b", "2001:db8:1:2:aaaa::2").await;
    assert!(
        !a.token.starts_with("refused:") && !b.token.starts_with("refused:"),
        "{} / {}",
        a.token,
        b.token
    );
}

/// The load balancer's address in these tests (loopback: any 127/8 address reaches the server).
const BALANCER: &str = "127.0.0.2";

/// A PROXY protocol v2 header, laid out by hand as in haproxy's proxy-protocol.txt: signature,
/// version 2 + PROXY command, TCP over IPv4 or IPv6, then source and destination.
fn proxy_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.push(0x21);
    let addresses = match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            header.push(0x11);
            [s.octets().as_slice(), &d.octets()].concat()
        }
        (IpAddr::V6(s), d) => {
            header.push(0x21);
            let d = match d {
                IpAddr::V6(d) => d,
                IpAddr::V4(d) => d.to_ipv6_mapped(), // an IPv6 client of an IPv4 server
            };
            [s.octets().as_slice(), &d.octets()].concat()
        }
        (IpAddr::V4(_), IpAddr::V6(_)) => panic!("an IPv4 client of an IPv6 destination"),
    };
    header.extend_from_slice(&((addresses.len() + 4) as u16).to_be_bytes());
    header.extend_from_slice(&addresses);
    header.extend_from_slice(&source.port().to_be_bytes());
    header.extend_from_slice(&destination.port().to_be_bytes());
    header
}

/// The v2 LOCAL command (a balancer's own health check): no addresses.
const PROXY_V2_LOCAL: &[u8] = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";

/// A TCP connection to `server` from `from` that starts with `header`.
async fn connect_from(from: &str, server: SocketAddr, header: &[u8]) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(server).await.unwrap();
    stream.write_all(header).await.unwrap();
    stream
}

/// A chat client behind the balancer whose header names `client`.
async fn join_via_balancer(server: &Server, name: &str, client: &str, forwarded_for: Option<&str>) -> Client {
    let client: SocketAddr = client.parse().unwrap();
    let stream = connect_from(BALANCER, server.http, &proxy_v2(client, server.http)).await;
    let mut request = server.url(Some(name)).into_client_request().unwrap();
    if let Some(forwarded_for) = forwarded_for {
        request.headers_mut().insert("x-forwarded-for", forwarded_for.parse().unwrap());
    }
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (ws, _) =
        tokio_tungstenite::client_async(request, stream).await.expect("websocket over the balancer");
    let mut client = Client { ws, token: String::new() };
    let first = client.recv().await;
    client.token = match first["type"].as_str() {
        Some("session-token") => first["token"].as_str().unwrap().to_string(),
        _ => format!("refused:{first}"),
    };
    client
}

/// Everything the server answers to `request` sent after `header` from `from`, until it closes.
async fn exchange(from: &str, server: SocketAddr, header: &[u8], request: &[u8]) -> String {
    let mut stream = connect_from(from, server, header).await;
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

const PROXY_PROTOCOL_CONFIG: &str = r#"
[server]
proxy_protocol = true
proxy_protocol_from = ["127.0.0.2"]

[limits]
max_connections_per_ip = 1
"#;

#[tokio::test]
async fn behind_the_balancer_the_per_ip_limit_follows_the_header_source() {
    let server = Server::start(PROXY_PROTOCOL_CONFIG);
    let a = join_via_balancer(&server, "alpha", "203.0.113.1:40001", None).await;
    assert!(!a.token.starts_with("refused:"), "{}", a.token);
    let again = join_via_balancer(&server, "alpha2", "203.0.113.1:40002", None).await;
    assert!(
        refused(&again),
        "a second session from the header's address escaped the per-IP limit: {}",
        again.token
    );
    // X-Forwarded-For counts only from server.trusted_proxies; this client is not one.
    let spoofed = join_via_balancer(&server, "alpha3", "203.0.113.1:40003", Some("198.51.100.50")).await;
    assert!(refused(&spoofed), "{}", spoofed.token);
    // Another client behind the same balancer has its own limit, and so does IPv6.
    let b = join_via_balancer(&server, "bravo", "198.51.100.2:40004", None).await;
    assert!(!b.token.starts_with("refused:"), "the balancer's clients share one limit: {}", b.token);
    let v6 = join_via_balancer(&server, "ipsix", "[2001:db8::9]:40005", None).await;
    assert!(!v6.token.starts_with("refused:"), "{}", v6.token);
    // Direct clients (not the balancer) are served as without the option.
    let direct = Client::connect(&server.url(Some("direct"))).await;
    assert!(!direct.token.starts_with("refused:"), "{}", direct.token);
}

#[tokio::test]
async fn the_header_is_required_from_the_balancer_and_bad_input_from_anyone_else() {
    let server = Server::start(PROXY_PROTOCOL_CONFIG);
    let get = b"GET /server-info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let header = proxy_v2("203.0.113.1:40001".parse().unwrap(), server.http);
    let proxied = exchange(BALANCER, server.http, &header, get).await;
    assert!(proxied.starts_with("HTTP/1.1 200"), "{proxied}");
    // The balancer's own health check (LOCAL) is served with the balancer's address.
    let local = exchange(BALANCER, server.http, PROXY_V2_LOCAL, get).await;
    assert!(local.starts_with("HTTP/1.1 200"), "{local}");
    // From the balancer without a header: closed without an answer.
    let bare = exchange(BALANCER, server.http, b"", get).await;
    assert_eq!(bare, "", "a balancer connection without a header was served");
    // From anyone else a header is not parsed: it is a malformed request.
    let stranger = exchange("127.0.0.1", server.http, &header, get).await;
    assert!(
        stranger.starts_with("HTTP/1.1 400"),
        "a stranger's PROXY header was not a bad request: {stranger}"
    );
    let (plain, _) = http_get(server.http, "/server-info").await;
    assert!(plain.contains("200"), "{plain}");
}

#[tokio::test]
async fn turn_over_tcp_behind_the_balancer_is_capped_by_the_header_source() {
    let server = Server::start(&format!(
        "[turn]\nenabled = true\nsecret = \"{}\"\nrequire_live_session = false\nmax_tcp_connections_per_ip = 1\n\
         proxy_protocol = true\nproxy_protocol_from = [\"{BALANCER}\"]\n",
        turn_support::SECRET
    ));
    let turn = server.turn_tcp.expect("turn tcp is on");
    let a: SocketAddr = "203.0.113.1:40001".parse().unwrap();
    let first = connect_from(BALANCER, turn, &proxy_v2(a, turn)).await;
    let first = TurnClient::over_tcp(first, "unused", "unused");
    assert_eq!(mapped_address(&first).await, Some(a), "the relay saw another address than the header's");

    // The cap is 1 per client IP: another connection from A is closed, one from B is served.
    let mut second =
        connect_from(BALANCER, turn, &proxy_v2("203.0.113.1:40002".parse().unwrap(), turn)).await;
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(2), second.read(&mut byte)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "a second connection from the header's IP stayed open");
    let b: SocketAddr = "198.51.100.2:40003".parse().unwrap();
    let other =
        TurnClient::over_tcp(connect_from(BALANCER, turn, &proxy_v2(b, turn)).await, "unused", "unused");
    assert_eq!(mapped_address(&other).await, Some(b));

    // Direct clients are capped by their own address, and a header from them is not honoured.
    let direct = TurnClient::over_tcp(connect_from("127.0.0.1", turn, b"").await, "unused", "unused");
    assert_eq!(mapped_address(&direct).await.map(|m| m.ip()), Some("127.0.0.1".parse().unwrap()));
    let stranger =
        TurnClient::over_tcp(connect_from("127.0.0.3", turn, &proxy_v2(a, turn)).await, "unused", "unused");
    let answer = mapped_address(&stranger).await;
    assert_ne!(answer, Some(a), "a stranger's PROXY header was honoured");
    let (_, metrics) = http_get(server.http, "/metrics").await;
    assert!(
        metrics.lines().any(|line| line == "relaychat_turn_tcp_per_ip_refusals_total 1"),
        "exactly the second connection from the header's address was refused:\n{metrics}"
    );
}

/// Connects from the balancer and sends `header` one byte a second; how long after the connect
/// the server closed the connection (read EOF, a reset, or a refused write), if it did within
/// `give_up`.
async fn trickle(server: SocketAddr, header: &[u8], give_up: Duration) -> Option<Duration> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{BALANCER}:0").parse().unwrap()).unwrap();
    let stream = socket.connect(server).await.unwrap();
    let connected = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    let closed = async {
        let mut byte = [0u8; 1];
        let _ = reader.read(&mut byte).await; // nothing is ever answered: 0 bytes or an error
        connected.elapsed()
    };
    let header = header.to_vec();
    let dribble = async move {
        for byte in header {
            if writer.write_all(&[byte]).await.is_err() {
                return connected.elapsed();
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        std::future::pending().await
    };
    let first = async {
        tokio::select! {
            at = closed => at,
            at = dribble => at,
        }
    };
    tokio::time::timeout(give_up, first).await.ok()
}

#[tokio::test]
async fn a_header_trickled_a_byte_a_second_is_cut_off_at_the_deadline_on_http_and_turn_tcp() {
    let server = Server::start(&format!(
        "{PROXY_PROTOCOL_CONFIG}
[turn]
enabled = true
proxy_protocol = true
         proxy_protocol_from = [\"{BALANCER}\"]
"
    ));
    let (http, turn) = (server.http, server.turn_tcp.expect("turn tcp is on"));
    let deadline = relaychat::proxy_protocol::HEADER_DEADLINE;
    // A v1 line (read byte by byte after its first 12) on HTTP, a v2 header on TURN: both far
    // longer than the deadline in seconds, so only the deadline can end them.
    let v1 = format!("PROXY TCP4 203.0.113.1 127.0.0.1 40001 {}\r\n", http.port());
    let v2 = proxy_v2("203.0.113.1:40001".parse().unwrap(), turn);
    assert!(v1.len() as u64 > 2 * deadline.as_secs() && v2.len() as u64 > 2 * deadline.as_secs());
    let give_up = 3 * deadline;
    let (http_closed, turn_closed) =
        tokio::join!(trickle(http, v1.as_bytes(), give_up), trickle(turn, &v2, give_up));
    eprintln!("trickled header closed after: http {http_closed:?}, turn tcp {turn_closed:?}");
    for (listener, closed) in [("http", http_closed), ("turn tcp", turn_closed)] {
        let closed = closed.unwrap_or_else(|| panic!("{listener}: still open after {give_up:?}"));
        assert!(
            closed >= deadline - Duration::from_millis(200)
                && closed <= deadline + Duration::from_millis(1500),
            "{listener}: closed {closed:?} after the connect, the deadline is {deadline:?}"
        );
    }
    // The listeners still serve everyone else.
    let (plain, _) = http_get(server.http, "/server-info").await;
    assert!(plain.contains("200"), "{plain}");
}

/// XOR-MAPPED-ADDRESS of a Binding request over `client`'s connection: the address the relay
/// believes the client has.
async fn mapped_address(client: &TurnClient) -> Option<SocketAddr> {
    let mut request = Message::new();
    let setters: Vec<Box<dyn Setter>> =
        vec![Box::new(TransactionId::new()), Box::new(BINDING_REQUEST), Box::new(FINGERPRINT)];
    request.build(&setters).unwrap();
    let answer = client.transact(&request).await?;
    let mut mapped = XorMappedAddress::default();
    mapped.get_from(&answer).ok()?;
    Some(SocketAddr::new(mapped.ip, mapped.port))
}
