//! Black-box tests of WebRTC signaling (PROTOCOL.md section 4, issue 3) against the real binary:
//! the voice room, `webrtc-joined` and its TURN credentials, every error text, the relay of
//! offers, answers and candidates, relay-only enforcement, candidate buffering, bounds, media
//! changes, credential refresh, and a client that follows the seed guide end to end.
//!
//! Most "nothing else arrived" checks use a ping as a barrier instead of a sleep: the hub handles
//! messages one at a time and each connection's frames go out in order, so once a client has its
//! pong, everything the server was going to send it before that is already in front of the pong.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use common::{is_iso_timestamp, Client, Server};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha1::Sha1;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SECRET: &str = "signaling-test-secret";

fn secret_config(extra_turn: &str) -> String {
    format!("[turn]\nsecret = \"{SECRET}\"\n{extra_turn}\n")
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn turn_credential(secret: &str, username: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn turn_port(server: &Server) -> u16 {
    let udp = server.turn_udp.expect("integrated TURN relay listening").port();
    if let Some(tcp) = server.turn_tcp {
        // One port in the URLs: `?transport=tcp` must reach the TCP listener on it.
        assert_eq!(tcp.port(), udp, "TURN TCP and UDP listen on the same port");
    }
    udp
}

/// Checks an `iceServers` list from our integrated relay: both URLs naming `host`, a REST
/// username `<expiry>:<name>` with expiry about now + ttl, and a credential that verifies
/// against `SECRET`. Returns the expiry.
fn check_ice_servers(servers: &Value, host: &str, port: u16, name: &str, ttl: u64) -> u64 {
    let list = servers.as_array().expect("iceServers is an array");
    assert_eq!(list.len(), 1, "{servers}");
    let server = &list[0];
    assert_eq!(server.as_object().unwrap().len(), 3, "urls, username, credential only: {server}");
    assert_eq!(
        server["urls"],
        json!([format!("turn:{host}:{port}?transport=udp"), format!("turn:{host}:{port}?transport=tcp")])
    );
    let username = server["username"].as_str().expect("username");
    let (expiry, user) = username.split_once(':').expect("<expiry>:<name>:<session tag>");
    let tag = user.strip_prefix(&format!("{name}:")).expect("<expiry>:<name>:<session tag>");
    assert!(tag.len() == 8 && tag.bytes().all(|b| b.is_ascii_hexdigit()), "{username}");
    let expiry: u64 = expiry.parse().expect("expiry is unix seconds");
    let now = unix_now();
    assert!(expiry + 5 >= now + ttl && expiry <= now + ttl + 1, "expiry {expiry}, now {now}, ttl {ttl}");
    let credential = server["credential"].as_str().expect("credential");
    assert_eq!(
        credential,
        turn_credential(SECRET, username),
        "credential = base64(HMAC-SHA1(secret, username))"
    );
    assert_ne!(credential, turn_credential("some-other-secret", username));
    expiry
}

/// `/server-info` reports `n` voice participants (the counters follow the hub within moments).
async fn expect_voice_participants(server: &Server, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let (info, _) = server.get_json("/server-info").await;
        if info["currentStats"]["voiceParticipants"] == n {
            return;
        }
        assert!(Instant::now() < deadline, "expected {n} voice participants: {info}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends a ping; the very next frame must be the pong. Proves the connection is up and that the
/// server had nothing else queued for this client.
async fn expect_only_pong(client: &mut Client) {
    client.send("ping", json!({})).await;
    let message = client.recv().await;
    assert_eq!(message["type"], "pong", "expected nothing before the pong, got {message}");
}

/// The very next frame is `webrtc-error` with `text` and a timestamp, and the connection stays up.
async fn expect_error(client: &mut Client, text: &str) {
    let message = client.recv().await;
    assert_eq!(message["type"], "webrtc-error", "{message}");
    assert_eq!(message["error"], text, "{message}");
    assert!(is_iso_timestamp(&message["timestamp"]), "{message}");
    assert_eq!(message.as_object().unwrap().len(), 3, "{message}");
    expect_only_pong(client).await;
}

/// Sends `webrtc-join` and returns `webrtc-joined` (the very next frame), then reads the notice.
async fn join_voice(client: &mut Client, name: &str, media_types: Option<Value>) -> Value {
    let fields = match media_types {
        Some(types) => json!({"mediaTypes": types}),
        None => json!({}),
    };
    client.send("webrtc-join", fields).await;
    let joined = client.recv().await;
    assert_eq!(joined["type"], "webrtc-joined", "{joined}");
    client.next_system(&format!("{name} joined voice chat")).await;
    joined
}

/// What a participant sees when `name` joins after it: `webrtc-peer-joined`, then the notice.
async fn expect_peer_joined(client: &mut Client, name: &str, media_types: Value) {
    assert_eq!(
        client.recv().await,
        json!({"type": "webrtc-peer-joined", "username": name, "mediaTypes": media_types})
    );
    client.next_system(&format!("{name} joined voice chat")).await;
}

/// What a participant sees when `name` leaves the room: `webrtc-peer-left`, then the notice.
async fn expect_peer_left(client: &mut Client, name: &str) {
    assert_eq!(client.recv().await, json!({"type": "webrtc-peer-left", "username": name}));
    client.next_system(&format!("{name} left voice chat")).await;
}

/// Connects `names` to the chat, then puts each in the voice room (audio) in order; every
/// client's queue is read up to the last notice.
async fn room<const N: usize>(server: &Server, names: [&str; N]) -> [Client; N] {
    let mut clients: Vec<Client> = Vec::new();
    for name in names {
        let client = server.join(name).await;
        for other in clients.iter_mut() {
            other.next_system(&format!("{name} has joined.")).await;
        }
        clients.push(client);
    }
    for (i, name) in names.iter().enumerate() {
        join_voice(&mut clients[i], name, None).await;
        for (j, other) in clients.iter_mut().enumerate() {
            if j < i {
                expect_peer_joined(other, name, json!(["audio"])).await;
            } else if j > i {
                other.next_system(&format!("{name} joined voice chat")).await;
            }
        }
    }
    clients.try_into().ok().expect("N clients")
}

fn candidate(line: &str) -> Value {
    json!({"candidate": line, "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "f00d"})
}

/// A relay candidate whose port identifies it.
fn relay(port: u32) -> String {
    format!("candidate:{port} 1 udp 41885439 127.0.0.1 {port} typ relay raddr 0.0.0.0 rport 0")
}

async fn send_candidate(client: &mut Client, target: &str, candidate: &Value, buffer: bool) {
    let mut fields = json!({"targetUsername": target, "candidate": candidate});
    if buffer {
        fields["buffer"] = json!(true);
    }
    client.send("webrtc-ice-candidate", fields).await;
}

async fn expect_candidate(client: &mut Client, from: &str, candidate: &Value) {
    assert_eq!(
        client.recv().await,
        json!({"type": "webrtc-ice-candidate", "fromUsername": from, "candidate": candidate})
    );
}

fn offer(sdp: &str) -> Value {
    json!({"type": "offer", "sdp": sdp})
}

fn answer(sdp: &str) -> Value {
    json!({"type": "answer", "sdp": sdp})
}

const PLAIN_SDP: &str =
    "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n";

/// A browser-like SDP with every kind of candidate line, a non-ASCII session name, odd spacing,
/// and CRLF line endings.
const LEAKY_SDP: &str = "v=0\r\n\
o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n\
s=Zürich ☎ call\r\n\
t=0 0\r\n\
a=group:BUNDLE 0\r\n\
a=msid-semantic: WMS stream\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
c=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\n\
a=candidate:1 1 udp 2122260223 192.168.1.5 54321 typ host generation 0 network-id 1\r\n\
a=candidate:2 1 udp 1686052607 203.0.113.7 40000 typ srflx raddr 192.168.1.5 rport 54321\r\n\
a=candidate:3 1 udp 2122262783 3f5c1e0a-6b7e-4d3e-9a1b-1c2d3e4f5a6b.local 54322 typ host\r\n\
a=candidate:4 1 udp 41885439 127.0.0.1 50000 typ relay raddr 203.0.113.7 rport 40000\r\n\
a=candidate:5 1 tcp 1518280447 192.168.1.5 9 typ host tcptype active\r\n\
a=candidate:6 1 udp 1845501695 198.51.100.2 40001 typ prflx raddr 0.0.0.0 rport 0\r\n\
a=candidate:7 1 udp 2122262783 2001:db8::5 54323 typ host\r\n\
a=candidate:8 1 udp 41885439 2001:db8::1 50001 typ relay raddr :: rport 0\r\n\
a=candidate:garbage\r\n\
a=end-of-candidates\r\n\
a=ice-ufrag:f00d\r\n\
a=ice-pwd:0123456789abcdefghijklmn\r\n\
a=fingerprint:sha-256 AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99\r\n\
a=setup:actpass\r\n\
a=mid:0\r\n\
a=x-odd  spacing\t here \r\n\
a=sendrecv\r\n\
a=rtpmap:111 opus/48000/2\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\n";

/// What a peer receives for `LEAKY_SDP` under force_relay: the origin's address replaced, only
/// the relay candidate through our relay (127.0.0.1 in these tests), its `raddr` zeroed; the
/// IPv6 "relay" is not ours and goes; every other line byte for byte.
const REBUILT_SDP: &str = "v=0\r\n\
o=- 4611731400430051336 2 IN IP4 0.0.0.0\r\n\
s=Zürich ☎ call\r\n\
t=0 0\r\n\
a=group:BUNDLE 0\r\n\
a=msid-semantic: WMS stream\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
c=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\n\
a=candidate:4 1 udp 41885439 127.0.0.1 50000 typ relay raddr 0.0.0.0 rport 0\r\n\
a=end-of-candidates\r\n\
a=ice-ufrag:f00d\r\n\
a=ice-pwd:0123456789abcdefghijklmn\r\n\
a=fingerprint:sha-256 AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99\r\n\
a=setup:actpass\r\n\
a=mid:0\r\n\
a=x-odd  spacing\t here \r\n\
a=sendrecv\r\n\
a=rtpmap:111 opus/48000/2\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\n";

/// Candidates that would reveal an address (or cannot be parsed): dropped under force_relay.
const NON_RELAY_CANDIDATES: &[&str] = &[
    "candidate:1 1 udp 2122260223 192.168.1.5 54321 typ host generation 0",
    "candidate:2 1 udp 1686052607 203.0.113.7 40000 typ srflx raddr 192.168.1.5 rport 54321",
    "candidate:3 1 udp 1845501695 198.51.100.2 40001 typ prflx raddr 0.0.0.0 rport 0",
    "candidate:4 1 udp 2122262783 2001:db8::5 54322 typ host",
    "candidate:5 1 udp 2122260223 3f5c1e0a-6b7e-4d3e-9a1b-1c2d3e4f5a6b.local 54321 typ host",
    "candidate:6 1 udp 41885439 3f5c1e0a.local 50000 typ relay",
    "candidate:7 1 tcp 1518280447 192.168.1.5 9 typ host tcptype active",
    // A host address dressed up as a relay: not one of the relays this server hands out.
    "candidate:8 1 udp 41885439 192.168.1.5 50000 typ relay",
    "candidate:9 1 udp 41885439 2001:db8::1 50001 typ relay raddr :: rport 0",
    // An address smuggled in an extension attribute.
    "candidate:10 1 udp 41885439 127.0.0.1 50000 typ relay x-local 192.168.1.5",
    "garbage",
    "candidate:11 1 udp 1 1.2.3.4 5 typ",
    "candidate:12 1 udp 1 1.2.3.4 notaport typ relay",
];

/// Relay candidates through our relay as a client sends them, and as the peer receives them:
/// rebuilt from their fields, `raddr`/`rport` zeroed, only allow-listed extensions.
const RELAY_CANDIDATES: &[(&str, &str)] = &[
    (
        "candidate:20 1 udp 41885439 127.0.0.1 50000 typ relay raddr 203.0.113.7 rport 40000 generation 0 ufrag f00d network-id 1 network-cost 10",
        "candidate:20 1 udp 41885439 127.0.0.1 50000 typ relay raddr 0.0.0.0 rport 0 generation 0 ufrag f00d network-id 1 network-cost 10",
    ),
    (
        "candidate:21 1 tcp 25108223 127.0.0.1 50002 typ relay tcptype passive x-unknown 7",
        "candidate:21 1 tcp 25108223 127.0.0.1 50002 typ relay raddr 0.0.0.0 rport 0 tcptype passive",
    ),
    ("candidate:22 1 UDP 41885439 127.0.0.1 50003 typ relay", "candidate:22 1 udp 41885439 127.0.0.1 50003 typ relay raddr 0.0.0.0 rport 0"),
    ("a=candidate:23 1 udp 41885439 127.0.0.1 50004 typ relay", "a=candidate:23 1 udp 41885439 127.0.0.1 50004 typ relay raddr 0.0.0.0 rport 0"),
    ("", ""),
];

#[tokio::test]
async fn joined_peer_joined_and_participants_in_join_order() {
    let server = Server::start(&secret_config(""));
    let port = turn_port(&server);
    let mut alice = server.join("Alice").await;
    let mut bob = server.join("Bob").await;
    alice.next_system("Bob has joined.").await;
    let mut carol = server.join("Carol").await;
    for client in [&mut alice, &mut bob] {
        client.next_system("Carol has joined.").await;
    }

    let joined = join_voice(&mut alice, "Alice", Some(json!(["audio", "video"]))).await;
    assert_eq!(joined.as_object().unwrap().len(), 3, "{joined}");
    assert_eq!(joined["participants"], json!([{"username": "Alice", "mediaTypes": ["audio", "video"]}]));
    let config = &joined["config"];
    assert_eq!(config.as_object().unwrap().len(), 6, "{config}");
    assert_eq!(config["allowVideo"], true);
    assert_eq!(config["allowScreenShare"], false);
    assert_eq!(config["forceRelay"], true);
    assert_eq!(config["iceTransportPolicy"], "relay");
    assert_eq!(config["credentialTtl"], 600);
    check_ice_servers(&config["iceServers"], "127.0.0.1", port, "Alice", 600);
    // Not in voice: only the notice.
    bob.next_system("Alice joined voice chat").await;
    carol.next_system("Alice joined voice chat").await;

    // No mediaTypes: audio.
    let joined = join_voice(&mut bob, "Bob", None).await;
    assert_eq!(
        joined["participants"],
        json!([{"username": "Alice", "mediaTypes": ["audio", "video"]}, {"username": "Bob", "mediaTypes": ["audio"]}])
    );
    check_ice_servers(&joined["config"]["iceServers"], "127.0.0.1", port, "Bob", 600);
    expect_peer_joined(&mut alice, "Bob", json!(["audio"])).await;
    carol.next_system("Bob joined voice chat").await;

    // Screen share is off by default and duplicates collapse.
    let joined = join_voice(&mut carol, "Carol", Some(json!(["video", "screen", "audio", "video"]))).await;
    assert_eq!(
        joined["participants"],
        json!([
            {"username": "Alice", "mediaTypes": ["audio", "video"]},
            {"username": "Bob", "mediaTypes": ["audio"]},
            {"username": "Carol", "mediaTypes": ["video", "audio"]}
        ])
    );
    for client in [&mut alice, &mut bob] {
        expect_peer_joined(client, "Carol", json!(["video", "audio"])).await;
    }
    for client in [&mut alice, &mut bob, &mut carol] {
        expect_only_pong(client).await;
    }
}

#[tokio::test]
async fn credentials_verify_against_the_configured_secret() {
    let server = Server::start(&secret_config("credential_ttl_s = 900"));
    let port = turn_port(&server);
    let mut alice = server.join("Alice").await;
    let joined = join_voice(&mut alice, "Alice", None).await;
    assert_eq!(joined["config"]["credentialTtl"], 900);
    let servers = &joined["config"]["iceServers"];
    check_ice_servers(servers, "127.0.0.1", port, "Alice", 900);
    // Computed by hand, independently of the helper above.
    let username = servers[0]["username"].as_str().unwrap();
    let mut mac = Hmac::<Sha1>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(username.as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(servers[0]["credential"], expected.as_str());
    // The secret itself is never handed out.
    assert!(!joined.to_string().contains(SECRET));
}

#[tokio::test]
async fn ice_server_urls_name_the_host_the_client_used() {
    let server = Server::start(&secret_config(""));
    let port = turn_port(&server);

    let mut local = Client::connect(&format!("ws://localhost:{}/?username=Local", server.http.port())).await;
    local.expect_system("Local has joined.").await;
    let joined = join_voice(&mut local, "Local", None).await;
    check_ice_servers(&joined["config"]["iceServers"], "localhost", port, "Local", 600);

    // What a browser behind a name (or a proxy) puts in Host: the port is stripped, IPv6 stays
    // bracketed.
    for (name, host, expected) in
        [("Named", "chat.example.org:8443", "chat.example.org"), ("Six", "[::1]:3000", "[::1]")]
    {
        let mut request = server.url(Some(name)).into_client_request().unwrap();
        request.headers_mut().insert("host", host.parse().unwrap());
        let mut client = Client::connect_with_request(request).await;
        client.expect_system(&format!("{name} has joined.")).await;
        client.send("webrtc-join", json!({})).await;
        let joined = client.recv_type("webrtc-joined").await;
        check_ice_servers(&joined["config"]["iceServers"], expected, port, name, 600);
    }
}

#[tokio::test]
async fn public_host_overrides_the_request_host() {
    let server = Server::start(&secret_config("public_host = \"turn.example.org\""));
    let port = turn_port(&server);
    let mut local = Client::connect(&format!("ws://localhost:{}/?username=Alice", server.http.port())).await;
    local.expect_system("Alice has joined.").await;
    let joined = join_voice(&mut local, "Alice", None).await;
    check_ice_servers(&joined["config"]["iceServers"], "turn.example.org", port, "Alice", 600);
}

#[tokio::test]
async fn leave_sends_peer_left_to_the_others_and_a_notice_to_everyone() {
    let server = Server::start("");
    let [mut alice, mut bob, mut carol] = room(&server, ["Alice", "Bob", "Carol"]).await;
    let mut dave = server.join("Dave").await;
    for client in [&mut alice, &mut bob, &mut carol] {
        client.next_system("Dave has joined.").await;
    }

    bob.send("webrtc-leave", json!({})).await;
    bob.next_system("Bob left voice chat").await; // no peer-left about yourself
    for client in [&mut alice, &mut carol] {
        expect_peer_left(client, "Bob").await;
    }
    dave.next_system("Bob left voice chat").await;
    for client in [&mut alice, &mut bob, &mut carol, &mut dave] {
        expect_only_pong(client).await;
    }

    // Leaving twice, or without joining.
    bob.send("webrtc-leave", json!({})).await;
    expect_error(&mut bob, "Not in voice chat").await;
    dave.send("webrtc-leave", json!({})).await;
    expect_error(&mut dave, "Not in voice chat").await;

    // Bob can come back; the room lists the remaining participants in join order.
    let joined = join_voice(&mut bob, "Bob", Some(json!(["audio"]))).await;
    let names: Vec<&str> =
        joined["participants"].as_array().unwrap().iter().map(|p| p["username"].as_str().unwrap()).collect();
    assert_eq!(names, ["Alice", "Carol", "Bob"]);
}

#[tokio::test]
async fn disconnect_leaves_voice() {
    let server = Server::start("");
    let [mut alice, bob, mut carol] = room(&server, ["Alice", "Bob", "Carol"]).await;
    drop(bob);
    for client in [&mut alice, &mut carol] {
        expect_peer_left(client, "Bob").await;
        client.next_system("Bob has left.").await;
    }
    expect_voice_participants(&server, 2).await;
}

#[tokio::test]
async fn heartbeat_timeout_leaves_voice() {
    let server = Server::start("[chat]\nheartbeat_interval_ms = 500\nheartbeat_timeout_ms = 2500\n");
    let [mut alice, _silent] = room(&server, ["Alice", "Silent"]).await;
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut seen = Vec::new();
    while !seen.contains(&json!({"type": "system", "text": "Silent has left."})) {
        assert!(Instant::now() < deadline, "no heartbeat timeout; got {seen:?}");
        alice.send("ping", json!({})).await;
        while let Ok(message) = tokio::time::timeout(Duration::from_millis(250), alice.recv()).await {
            if message["type"] != "pong" {
                seen.push(message);
            }
        }
    }
    assert_eq!(
        seen,
        [
            json!({"type": "webrtc-peer-left", "username": "Silent"}),
            json!({"type": "system", "text": "Silent left voice chat"}),
            json!({"type": "system", "text": "Silent has left."}),
        ]
    );
}

/// Registers and logs in `name` (auth mode); returns the welcomed client.
async fn login(server: &Server, name: &str) -> Client {
    let mut client = Client::connect(&server.url(None)).await;
    client
        .expect_system(
            "Authentication required. Use /register <username> <password> or /login <username> <password> in message content.",
        )
        .await;
    client.chat(&format!("/register {name} password123")).await;
    client.next_system("Registered. Please /login.").await;
    client.chat(&format!("/login {name} password123")).await;
    client.expect_system(&format!("{name} has joined.")).await;
    client
}

#[tokio::test]
async fn auth_mode_only_logged_in_users_join_and_kick_or_ban_leaves_voice() {
    let server = Server::start("[chat]\nauthentication = true\nadmins = [\"Admin\"]\n");
    let mut stranger = Client::connect(&server.url(Some("Stranger"))).await;
    stranger.recv_type("system").await; // "Authentication required. ..."
                                        // Before login every webrtc-* message gets the original's login handler text.
    let before_login = "Please authenticate first using /register or /login commands in message content.";
    stranger.send("webrtc-join", json!({"mediaTypes": ["audio"]})).await;
    stranger.next_system(before_login).await;
    stranger.send("webrtc-leave", json!({})).await;
    stranger.next_system(before_login).await;
    stranger.send("webrtc-offer", json!({"targetUsername": "Admin", "offer": offer(PLAIN_SDP)})).await;
    stranger.next_system(before_login).await;
    send_candidate(&mut stranger, "Admin", &candidate(&relay(50000)), false).await;
    stranger.next_system(before_login).await;
    expect_only_pong(&mut stranger).await;

    let mut admin = login(&server, "Admin").await;
    let mut alice = login(&server, "Alice").await;
    admin.next_system("Alice has joined.").await;
    let mut bob = login(&server, "Bob").await;
    admin.next_system("Bob has joined.").await;
    alice.next_system("Bob has joined.").await;
    join_voice(&mut admin, "Admin", None).await;
    for client in [&mut alice, &mut bob] {
        client.next_system("Admin joined voice chat").await;
    }
    join_voice(&mut alice, "Alice", None).await;
    expect_peer_joined(&mut admin, "Alice", json!(["audio"])).await;
    bob.next_system("Alice joined voice chat").await;
    join_voice(&mut bob, "Bob", None).await;
    for client in [&mut admin, &mut alice] {
        expect_peer_joined(client, "Bob", json!(["audio"])).await;
    }

    admin.chat("/kick Alice").await;
    for client in [&mut admin, &mut bob] {
        client.next_system("Alice was kicked by Admin.").await;
        expect_peer_left(client, "Alice").await;
        client.next_system("Alice has left.").await;
    }
    alice.expect_close().await;

    admin.chat("/ban Bob").await;
    admin.next_system("Bob was banned by Admin.").await;
    expect_peer_left(&mut admin, "Bob").await;
    admin.next_system("Bob has left.").await;
    bob.expect_close().await;
    expect_only_pong(&mut admin).await;
    expect_voice_participants(&server, 1).await;
    // Nothing of all this reached the connection that never logged in.
    expect_only_pong(&mut stranger).await;
}

#[tokio::test]
async fn webrtc_disabled() {
    let server = Server::start("[webrtc]\nenabled = false\n");
    let mut alice = server.join("Alice").await;
    for (kind, fields) in [
        ("webrtc-join", json!({"mediaTypes": ["audio"]})),
        ("webrtc-leave", json!({})),
        ("webrtc-offer", json!({"targetUsername": "Bob", "offer": offer(PLAIN_SDP)})),
        ("webrtc-answer", json!({"targetUsername": "Bob", "answer": answer(PLAIN_SDP)})),
        ("webrtc-media-change", json!({"mediaTypes": ["audio"]})),
        ("webrtc-ice-candidate", json!({"targetUsername": "Bob", "candidate": candidate(&relay(50000))})),
    ] {
        alice.send(kind, fields).await;
        expect_error(&mut alice, "WebRTC is disabled on this server").await;
    }
    // Checked after the token and the type.
    alice.send_json(json!({"type": "webrtc-join", "token": "bad"})).await;
    expect_error(&mut alice, "Invalid session token").await;
    alice.send("webrtc-bogus", json!({})).await;
    expect_error(&mut alice, "Unknown WebRTC message type").await;
    let (info, _) = server.get_json("/server-info").await;
    assert_eq!(info["webrtc"]["enabled"], false);
}

#[tokio::test]
async fn invalid_session_token_and_unknown_types() {
    let server = Server::start("");
    let [mut alice, mut bob] = room(&server, ["Alice", "Bob"]).await;
    let kinds = [
        "webrtc-join",
        "webrtc-leave",
        "webrtc-offer",
        "webrtc-answer",
        "webrtc-ice-candidate",
        "webrtc-media-change",
        "webrtc-bogus",
    ];
    for kind in kinds {
        for token in [json!("bad"), json!(bob.token.clone()), Value::Null] {
            let mut message = json!({
                "type": kind,
                "targetUsername": "Bob",
                "offer": offer(PLAIN_SDP),
                "answer": answer(PLAIN_SDP),
                "candidate": candidate(&relay(50000)),
                "mediaTypes": ["audio"],
            });
            if !token.is_null() {
                message["token"] = token;
            }
            alice.send_json(message).await;
            expect_error(&mut alice, "Invalid session token").await;
        }
    }
    // Nothing reached Bob, and Alice is still in the room.
    expect_only_pong(&mut bob).await;

    alice.send("webrtc-bogus", json!({})).await;
    expect_error(&mut alice, "Unknown WebRTC message type").await;
    alice.send("webrtc-", json!({})).await;
    expect_error(&mut alice, "Unknown WebRTC message type").await;
    alice.send("webrtc-offer", json!({"targetUsername": "Bob", "offer": offer(PLAIN_SDP)})).await;
    assert_eq!(bob.recv().await["fromUsername"], "Alice");
}

#[tokio::test]
async fn not_in_voice_chat_and_already_in_voice_chat() {
    let server = Server::start("");
    let [mut alice] = room(&server, ["Alice"]).await;
    let mut bob = server.join("Bob").await;
    alice.next_system("Bob has joined.").await;
    for (kind, fields) in [
        ("webrtc-leave", json!({})),
        ("webrtc-offer", json!({"targetUsername": "Alice", "offer": offer(PLAIN_SDP)})),
        ("webrtc-answer", json!({"targetUsername": "Alice", "answer": answer(PLAIN_SDP)})),
        ("webrtc-media-change", json!({"mediaTypes": ["audio"]})),
    ] {
        bob.send(kind, fields).await;
        expect_error(&mut bob, "Not in voice chat").await;
    }
    // Candidates from outside the room are dropped silently.
    send_candidate(&mut bob, "Alice", &candidate(&relay(50000)), false).await;
    expect_only_pong(&mut bob).await;
    expect_only_pong(&mut alice).await;

    alice.send("webrtc-join", json!({"mediaTypes": ["audio"]})).await;
    expect_error(&mut alice, "Already in voice chat").await;
    expect_only_pong(&mut bob).await; // no second notice
}

#[tokio::test]
async fn the_ninth_joiner_is_refused() {
    let server = Server::start("");
    let names = ["User1", "User2", "User3", "User4", "User5", "User6", "User7", "User8", "User9"];
    let mut clients = Vec::new();
    for name in names {
        let client = server.join(name).await;
        clients.push(client);
    }
    let clients_7_token = clients[7].token.clone();
    for (i, name) in names.iter().enumerate().take(8) {
        clients[i].send("webrtc-join", json!({})).await;
        let joined = clients[i].recv_type("webrtc-joined").await;
        assert_eq!(joined["participants"].as_array().unwrap().len(), i + 1);
        clients[i].expect_system(&format!("{name} joined voice chat")).await;
    }
    // Everyone has read everything up to the last notice.
    for client in clients.iter_mut().filter(|c| c.token != clients_7_token) {
        client.expect_system("User8 joined voice chat").await;
    }
    clients[8].send("webrtc-join", json!({"mediaTypes": ["audio"]})).await;
    expect_error(&mut clients[8], "Voice chat is full (8 maximum)").await;
    for client in clients.iter_mut().take(8) {
        expect_only_pong(client).await; // no peer-joined, no notice
    }
    expect_voice_participants(&server, 8).await;

    // A seat frees up: the ninth gets in.
    clients[0].send("webrtc-leave", json!({})).await;
    clients[8].expect_system("User1 left voice chat").await;
    let joined = join_voice(&mut clients[8], "User9", None).await;
    assert_eq!(joined["participants"].as_array().unwrap().len(), 8);
    assert_eq!(joined["participants"][7]["username"], "User9");
}

#[tokio::test]
async fn max_participants_is_configurable() {
    let server = Server::start("[webrtc]\nmax_participants = 2\n");
    let [_alice, _bob] = room(&server, ["Alice", "Bob"]).await;
    let mut carol = server.join("Carol").await;
    carol.send("webrtc-join", json!({})).await;
    expect_error(&mut carol, "Voice chat is full (2 maximum)").await;
}

#[tokio::test]
async fn media_types_are_filtered_by_allow_video_and_allow_screen_share() {
    let server = Server::start("[webrtc]\nallow_video = false\nallow_screen_share = true\n");
    let mut alice = server.join("Alice").await;
    for requested in [json!(["video"]), json!(["bogus"]), json!([]), json!("audio"), json!([42])] {
        alice.send("webrtc-join", json!({"mediaTypes": requested})).await;
        expect_error(&mut alice, "No valid media types requested").await;
    }
    let joined = join_voice(&mut alice, "Alice", Some(json!(["audio", "video", "screen", "bogus"]))).await;
    assert_eq!(joined["participants"], json!([{"username": "Alice", "mediaTypes": ["audio", "screen"]}]));
    assert_eq!(joined["config"]["allowVideo"], false);
    assert_eq!(joined["config"]["allowScreenShare"], true);

    // Defaults: video yes, screen no.
    let server = Server::start("");
    let mut bob = server.join("Bob").await;
    bob.send("webrtc-join", json!({"mediaTypes": ["screen"]})).await;
    expect_error(&mut bob, "No valid media types requested").await;
    let joined = join_voice(&mut bob, "Bob", Some(json!(["screen", "video"]))).await;
    assert_eq!(joined["participants"], json!([{"username": "Bob", "mediaTypes": ["video"]}]));
}

#[tokio::test]
async fn offer_answer_and_candidates_are_relayed_intact() {
    let server = Server::start("[webrtc]\nforce_relay = false\n");
    let [mut alice, mut bob, mut carol] = room(&server, ["Alice", "Bob", "Carol"]).await;
    let offer = json!({"type": "offer", "sdp": LEAKY_SDP, "x-extra": {"nested": [1, 2.5, null, "é"]}});
    alice.send("webrtc-offer", json!({"targetUsername": "Bob", "offer": offer})).await;
    assert_eq!(bob.recv().await, json!({"type": "webrtc-offer", "fromUsername": "Alice", "offer": offer}));

    let answer = json!({"sdp": LEAKY_SDP, "type": "answer"});
    bob.send("webrtc-answer", json!({"targetUsername": "Alice", "answer": answer})).await;
    let relayed = alice.recv().await;
    assert_eq!(relayed, json!({"type": "webrtc-answer", "fromUsername": "Bob", "answer": answer}));
    assert_eq!(relayed["answer"]["sdp"].as_str().unwrap(), LEAKY_SDP);

    let pranswer = json!({"type": "pranswer", "sdp": PLAIN_SDP});
    bob.send("webrtc-answer", json!({"targetUsername": "Alice", "answer": pranswer})).await;
    assert_eq!(
        alice.recv().await,
        json!({"type": "webrtc-answer", "fromUsername": "Bob", "answer": pranswer})
    );

    let candidate = json!({"candidate": RELAY_CANDIDATES[0].0, "sdpMid": "audio", "sdpMLineIndex": 3,
                           "usernameFragment": null, "x-extra": true});
    send_candidate(&mut bob, "Alice", &candidate, false).await;
    expect_candidate(&mut alice, "Bob", &candidate).await;

    // Only the target gets anything; the sender gets no echo.
    for client in [&mut alice, &mut bob, &mut carol] {
        expect_only_pong(client).await;
    }
}

#[tokio::test]
async fn force_relay_drops_non_relay_candidates() {
    let server = Server::start("");
    let [mut alice, mut bob] = room(&server, ["Alice", "Bob"]).await;
    // Interleave: every relay candidate after a few that must vanish.
    let mut expected = Vec::new();
    for (i, line) in NON_RELAY_CANDIDATES.iter().enumerate() {
        send_candidate(&mut alice, "Bob", &candidate(line), false).await;
        if let Some((sent, rebuilt)) = RELAY_CANDIDATES.get(i) {
            send_candidate(&mut alice, "Bob", &candidate(sent), false).await;
            expected.push(candidate(rebuilt));
        }
    }
    // Keys a browser does not send are not relayed, whatever they hold.
    let mut extra = candidate(RELAY_CANDIDATES[0].0);
    extra["relatedAddress"] = json!("192.168.1.5");
    extra["address"] = json!("192.168.1.5");
    send_candidate(&mut alice, "Bob", &extra, false).await;
    expected.push(candidate(RELAY_CANDIDATES[0].1));
    // End-of-candidates in its other common forms: no sdpMid/index, or null fields.
    // (Null fields are left out of the rebuilt object.)
    for end in [json!({"candidate": ""}), json!({"candidate": "", "sdpMid": null, "sdpMLineIndex": null})] {
        send_candidate(&mut alice, "Bob", &end, false).await;
        expected.push(json!({"candidate": ""}));
    }
    expect_only_pong(&mut alice).await;
    for relay_candidate in &expected {
        expect_candidate(&mut bob, "Alice", relay_candidate).await;
    }
    expect_only_pong(&mut bob).await;

    // Every drop is counted by reason, and the related addresses that were zeroed by field.
    let (_, metrics) = common::http_get(server.http, "/metrics").await;
    for (series, at_least) in [
        ("relaychat_privacy_candidates_dropped_total{reason=\"not_relay\"}", 6),
        ("relaychat_privacy_candidates_dropped_total{reason=\"not_our_relay\"}", 2),
        ("relaychat_privacy_candidates_dropped_total{reason=\"hostname\"}", 1),
        ("relaychat_privacy_candidates_dropped_total{reason=\"address_in_extension\"}", 1),
        ("relaychat_privacy_candidates_dropped_total{reason=\"unparseable\"}", 3),
        ("relaychat_privacy_fields_sanitized_total{field=\"related_address\"}", 2),
        ("relaychat_privacy_fields_sanitized_total{field=\"object_key\"}", 2),
    ] {
        let value = metrics
            .lines()
            .find_map(|l| l.strip_prefix(series).map(|v| v.trim().parse::<u64>().unwrap()))
            .unwrap_or_else(|| panic!("{series} missing from /metrics"));
        assert!(value >= at_least, "{series} = {value}, expected at least {at_least}");
    }
    assert!(!metrics.contains("192.168.1.5"), "no address in metrics");

    // Buffered candidates are filtered the same way.
    send_candidate(&mut alice, "Bob", &candidate(NON_RELAY_CANDIDATES[0]), true).await;
    send_candidate(&mut alice, "Bob", &candidate(&relay(50005)), true).await;
    expect_only_pong(&mut alice).await; // both handled before the answer
    bob.send("webrtc-answer", json!({"targetUsername": "Alice", "answer": answer(PLAIN_SDP)})).await;
    assert_eq!(alice.recv().await["type"], "webrtc-answer");
    expect_candidate(&mut bob, "Alice", &candidate(&relay(50005))).await;
    expect_only_pong(&mut bob).await;
}

#[tokio::test]
async fn force_relay_rebuilds_the_sdp_and_keeps_every_other_byte() {
    let server = Server::start("");
    let [mut alice, mut bob] = room(&server, ["Alice", "Bob"]).await;
    let sent = json!({"type": "offer", "sdp": LEAKY_SDP, "x-extra": "192.168.1.5"});
    alice.send("webrtc-offer", json!({"targetUsername": "Bob", "offer": sent})).await;
    let relayed = bob.recv().await;
    assert_eq!(
        relayed,
        json!({"type": "webrtc-offer", "fromUsername": "Alice", "offer": {"type": "offer", "sdp": REBUILT_SDP}})
    );

    bob.send("webrtc-answer", json!({"targetUsername": "Alice", "answer": answer(LEAKY_SDP)})).await;
    let relayed = alice.recv().await;
    assert_eq!(relayed["fromUsername"], "Bob");
    assert_eq!(relayed["answer"]["type"], "answer");
    assert_eq!(relayed["answer"]["sdp"].as_str().unwrap(), REBUILT_SDP);

    // LF-only SDP keeps its LF endings; an SDP with nothing to strip passes as is.
    let lf = "v=0\na=candidate:1 1 udp 2122260223 10.1.1.1 5000 typ host\na=mid:0\n";
    alice.send("webrtc-offer", json!({"targetUsername": "Bob", "offer": offer(lf)})).await;
    assert_eq!(bob.recv().await["offer"]["sdp"], "v=0\na=mid:0\n");
    alice.send("webrtc-offer", json!({"targetUsername": "Bob", "offer": offer(REBUILT_SDP)})).await;
    assert_eq!(bob.recv().await["offer"]["sdp"], REBUILT_SDP);
    // A missing final newline stays missing; a last line that goes takes nothing else with it.
    for (sent, expected) in [
        ("v=0\r\na=candidate:1 1 udp 1 10.0.0.1 5 typ host\r\na=mid:0", "v=0\r\na=mid:0"),
        ("v=0\r\na=mid:0\r\na=candidate:1 1 udp 1 10.0.0.1 5 typ host", "v=0\r\na=mid:0\r\n"),
    ] {
        alice.send("webrtc-offer", json!({"targetUsername": "Bob", "offer": offer(sent)})).await;
        assert_eq!(bob.recv().await["offer"]["sdp"], expected);
    }
}

#[tokio::test]
async fn without_force_relay_everything_passes_untouched() {
    let server = Server::start("[webrtc]\nforce_relay = false\n");
    let [mut alice, mut bob] = room(&server, ["Alice", "Bob"]).await;
    alice.send("webrtc-leave", json!({})).await;
    expect_peer_left(&mut bob, "Alice").await;
    alice.next_system("Alice left voice chat").await;
    let joined = join_voice(&mut alice, "Alice", None).await;
    assert_eq!(joined["config"]["forceRelay"], false);
    assert_eq!(joined["config"]["iceTransportPolicy"], "all");
    expect_peer_joined(&mut bob, "Alice", json!(["audio"])).await;

    alice.send("webrtc-offer", json!({"targetUsername": "Bob", "offer": offer(LEAKY_SDP)})).await;
    assert_eq!(bob.recv().await["offer"]["sdp"], LEAKY_SDP);
    let sent = || NON_RELAY_CANDIDATES.iter().copied().chain(RELAY_CANDIDATES.iter().map(|(sent, _)| *sent));
    for line in sent() {
        send_candidate(&mut alice, "Bob", &candidate(line), false).await;
    }
    for line in sent() {
        expect_candidate(&mut bob, "Alice", &candidate(line)).await;
    }
    expect_only_pong(&mut bob).await;
}

#[tokio::test]
async fn buffered_candidates_flush_right_after_the_answer_in_both_directions() {
    let server = Server::start("");
    let [mut alice, mut bob, mut carol] = room(&server, ["Alice", "Bob", "Carol"]).await;
    alice.send("webrtc-offer", json!({"targetUsername": "Bob", "offer": offer(PLAIN_SDP)})).await;
    assert_eq!(bob.recv().await["type"], "webrtc-offer");

    let a_to_b: Vec<Value> = (1..=3).map(|i| candidate(&relay(50000 + i))).collect();
    let b_to_a: Vec<Value> = (1..=2).map(|i| candidate(&relay(51000 + i))).collect();
    for c in &a_to_b {
        send_candidate(&mut alice, "Bob", c, true).await;
    }
    for c in &b_to_a {
        send_candidate(&mut bob, "Alice", c, true).await;
    }
    // Held: nothing delivered yet. An unbuffered one still goes through at once.
    expect_only_pong(&mut alice).await;
    expect_only_pong(&mut bob).await;
    let direct = candidate(&relay(52000));
    send_candidate(&mut alice, "Bob", &direct, false).await;
    expect_candidate(&mut bob, "Alice", &direct).await;
    expect_only_pong(&mut bob).await;

    // An answer between another pair flushes nothing of this pair.
    carol.send("webrtc-answer", json!({"targetUsername": "Alice", "answer": answer(PLAIN_SDP)})).await;
    assert_eq!(alice.recv().await["fromUsername"], "Carol");
    expect_only_pong(&mut alice).await;
    expect_only_pong(&mut bob).await;

    // Nor does an offer between the pair.
    bob.send("webrtc-offer", json!({"targetUsername": "Alice", "offer": offer(PLAIN_SDP)})).await;
    assert_eq!(alice.recv().await["type"], "webrtc-offer");
    expect_only_pong(&mut alice).await;
    expect_only_pong(&mut bob).await;

    // Bob answers Alice: Alice gets the answer, then Bob's held candidates; Bob gets Alice's.
    bob.send("webrtc-answer", json!({"targetUsername": "Alice", "answer": answer(PLAIN_SDP)})).await;
    assert_eq!(
        alice.recv().await,
        json!({"type": "webrtc-answer", "fromUsername": "Bob", "answer": answer(PLAIN_SDP)})
    );
    for c in &b_to_a {
        expect_candidate(&mut alice, "Bob", c).await;
    }
    expect_only_pong(&mut alice).await;
    for c in &a_to_b {
        expect_candidate(&mut bob, "Alice", c).await;
    }
    expect_only_pong(&mut bob).await;
    expect_only_pong(&mut carol).await;

    // Flushed means gone: another answer delivers nothing twice.
    bob.send("webrtc-answer", json!({"targetUsername": "Alice", "answer": answer(PLAIN_SDP)})).await;
    assert_eq!(alice.recv().await["type"], "webrtc-answer");
    expect_only_pong(&mut alice).await;
    expect_only_pong(&mut bob).await;

    // Once the pair's answer went through, a late `buffer: true` candidate (gathered after the
    // answer) has nothing to wait for and is delivered at once.
    let late = candidate(&relay(52500));
    send_candidate(&mut alice, "Bob", &late, true).await;
    expect_candidate(&mut bob, "Alice", &late).await;

    // The other direction of the answer (Alice answers Bob, a renegotiation Bob started).
    bob.send("webrtc-offer", json!({"targetUsername": "Alice", "offer": offer(PLAIN_SDP)})).await;
    assert_eq!(alice.recv().await["type"], "webrtc-offer");
    let later_a_to_b = candidate(&relay(53001));
    let later_b_to_a = candidate(&relay(53002));
    send_candidate(&mut alice, "Bob", &later_a_to_b, true).await;
    send_candidate(&mut bob, "Alice", &later_b_to_a, true).await;
    expect_only_pong(&mut bob).await; // handled before the answer
    alice.send("webrtc-answer", json!({"targetUsername": "Bob", "answer": answer(PLAIN_SDP)})).await;
    assert_eq!(bob.recv().await["fromUsername"], "Alice");
    expect_candidate(&mut bob, "Alice", &later_a_to_b).await;
    expect_only_pong(&mut bob).await;
    expect_candidate(&mut alice, "Bob", &later_b_to_a).await;
    expect_only_pong(&mut alice).await;
}

#[tokio::test]
async fn at_most_64_candidates_are_held_per_pair() {
    let server = Server::start("");
    let [mut alice, mut bob] = room(&server, ["Alice", "Bob"]).await;
    let sent: Vec<Value> = (1..=65).map(|i| candidate(&relay(50000 + i))).collect();
    for c in &sent {
        send_candidate(&mut alice, "Bob", c, true).await;
    }
    expect_only_pong(&mut alice).await; // all handled before the answer
    expect_only_pong(&mut bob).await;
    bob.send("webrtc-answer", json!({"targetUsername": "Alice", "answer": answer(PLAIN_SDP)})).await;
    assert_eq!(alice.recv().await["type"], "webrtc-answer");
    // The oldest was dropped; the newest 64 arrive in order.
    for c in &sent[1..] {
        expect_candidate(&mut bob, "Alice", c).await;
    }
    expect_only_pong(&mut bob).await;
    expect_only_pong(&mut alice).await;
}

#[tokio::test]
async fn held_candidates_are_dropped_when_either_side_leaves() {
    let server = Server::start("");
    let [mut alice, mut bob] = room(&server, ["Alice", "Bob"]).await;

    // The receiver leaves (and comes back).
    send_candidate(&mut alice, "Bob", &candidate(&relay(50001)), true).await;
    send_candidate(&mut bob, "Alice", &candidate(&relay(50002)), true).await;
    expect_only_pong(&mut alice).await; // held before Bob leaves
    bob.send("webrtc-leave", json!({})).await;
    bob.next_system("Bob left voice chat").await;
    expect_peer_left(&mut alice, "Bob").await;
    join_voice(&mut bob, "Bob", None).await;
    expect_peer_joined(&mut alice, "Bob", json!(["audio"])).await;
    bob.send("webrtc-answer", json!({"targetUsername": "Alice", "answer": answer(PLAIN_SDP)})).await;
    assert_eq!(alice.recv().await["type"], "webrtc-answer");
    expect_only_pong(&mut alice).await;
    expect_only_pong(&mut bob).await;

    // The sender disconnects mid-renegotiation; someone else takes the name and joins.
    bob.send("webrtc-offer", json!({"targetUsername": "Alice", "offer": offer(PLAIN_SDP)})).await;
    assert_eq!(alice.recv().await["type"], "webrtc-offer");
    send_candidate(&mut alice, "Bob", &candidate(&relay(50003)), true).await;
    expect_only_pong(&mut alice).await;
    drop(alice);
    expect_peer_left(&mut bob, "Alice").await;
    bob.next_system("Alice has left.").await;
    let mut alice = server.join("Alice").await;
    bob.next_system("Alice has joined.").await;
    join_voice(&mut alice, "Alice", None).await;
    expect_peer_joined(&mut bob, "Alice", json!(["audio"])).await;
    bob.send("webrtc-answer", json!({"targetUsername": "Alice", "answer": answer(PLAIN_SDP)})).await;
    assert_eq!(alice.recv().await["type"], "webrtc-answer");
    expect_only_pong(&mut bob).await;
    expect_only_pong(&mut alice).await;
}

/// An SDP of exactly `len` bytes.
fn sdp_of_len(len: usize) -> String {
    let head = "v=0\r\na=x-pad:";
    let mut sdp = head.to_string();
    sdp.push_str(&"p".repeat(len - head.len() - 2));
    sdp.push_str("\r\n");
    assert_eq!(sdp.len(), len);
    sdp
}

#[tokio::test]
async fn invalid_offer_and_answer_data() {
    let server = Server::start("");
    let [mut alice, mut bob] = room(&server, ["Alice", "Bob"]).await;
    let too_big = sdp_of_len(64 * 1024 + 1);
    let bad = |kind: &str| {
        vec![
            None,
            Some(json!("v=0")),
            Some(json!({})),
            Some(json!({"type": kind})),
            Some(json!({"sdp": PLAIN_SDP})),
            Some(json!({"type": kind, "sdp": ""})),
            Some(json!({"type": kind, "sdp": 5})),
            Some(json!({"type": "bogus", "sdp": PLAIN_SDP})),
            Some(json!({"type": kind, "sdp": too_big})),
        ]
    };
    let pranswer = json!({"type": "pranswer", "sdp": PLAIN_SDP});
    for description in bad("offer").into_iter().chain([Some(answer(PLAIN_SDP)), Some(pranswer)]) {
        let mut fields = json!({"targetUsername": "Bob"});
        if let Some(description) = description {
            fields["offer"] = description;
        }
        alice.send("webrtc-offer", fields).await;
        expect_error(&mut alice, "Invalid offer data").await;
    }
    for description in bad("answer").into_iter().chain([Some(offer(PLAIN_SDP))]) {
        let mut fields = json!({"targetUsername": "Bob"});
        if let Some(description) = description {
            fields["answer"] = description;
        }
        alice.send("webrtc-answer", fields).await;
        expect_error(&mut alice, "Invalid answer data").await;
    }
    expect_only_pong(&mut bob).await; // nothing relayed

    // Exactly 64 KiB is fine.
    let largest = sdp_of_len(64 * 1024);
    alice.send("webrtc-offer", json!({"targetUsername": "Bob", "offer": offer(&largest)})).await;
    assert_eq!(bob.recv().await["offer"]["sdp"].as_str().unwrap(), largest);
    bob.send("webrtc-answer", json!({"targetUsername": "Alice", "answer": answer(&largest)})).await;
    assert_eq!(alice.recv().await["answer"]["sdp"].as_str().unwrap(), largest);
}

#[tokio::test]
async fn targets_must_be_in_the_room() {
    let server = Server::start("");
    let [mut alice, mut bob] = room(&server, ["Alice", "Bob"]).await;
    let mut carol = server.join("Carol").await; // online, not in voice
    for client in [&mut alice, &mut bob] {
        client.next_system("Carol has joined.").await;
    }
    for target in [Some(json!("Carol")), Some(json!("Nobody")), Some(json!("Alice")), Some(json!(7)), None] {
        for (kind, key, description, error) in [
            ("webrtc-offer", "offer", offer(PLAIN_SDP), "Target user not in voice chat"),
            ("webrtc-answer", "answer", answer(PLAIN_SDP), "Target user not in voice chat"),
        ] {
            let mut fields = json!({key: description});
            if let Some(target) = &target {
                fields["targetUsername"] = target.clone();
            }
            alice.send(kind, fields).await;
            expect_error(&mut alice, error).await;
        }
        // Candidates to a bad target vanish silently.
        let mut fields = json!({"candidate": candidate(&relay(50000))});
        if let Some(target) = &target {
            fields["targetUsername"] = target.clone();
        }
        alice.send("webrtc-ice-candidate", fields).await;
        expect_only_pong(&mut alice).await;
    }
    expect_only_pong(&mut bob).await;
    expect_only_pong(&mut carol).await;
}

#[tokio::test]
async fn invalid_candidates_are_dropped_silently() {
    let server = Server::start("[webrtc]\nforce_relay = false\n");
    let [mut alice, mut bob] = room(&server, ["Alice", "Bob"]).await;
    let base = relay(50000);
    let longest = format!("{base} ufrag {}", "x".repeat(1024 - base.len() - 7));
    assert_eq!(longest.len(), 1024);
    let too_long = format!("{longest}x");
    for fields in [
        json!({"targetUsername": "Bob"}),
        json!({"targetUsername": "Bob", "candidate": null}),
        json!({"targetUsername": "Bob", "candidate": "candidate:1 1 udp 1 127.0.0.1 5 typ relay"}),
        json!({"targetUsername": "Bob", "candidate": {}}),
        json!({"targetUsername": "Bob", "candidate": {"candidate": 5}}),
        json!({"targetUsername": "Bob", "candidate": candidate(&too_long)}),
    ] {
        alice.send("webrtc-ice-candidate", fields).await;
        expect_only_pong(&mut alice).await;
    }
    expect_only_pong(&mut bob).await;
    // 1 KiB exactly is fine.
    send_candidate(&mut alice, "Bob", &candidate(&longest), false).await;
    expect_candidate(&mut bob, "Alice", &candidate(&longest)).await;

    // The same bound under force_relay (a relay candidate with a long extension, which is then
    // rebuilt without it: a ufrag is at most 256 characters).
    let server = Server::start("");
    let [mut alice, mut bob] = room(&server, ["Alice", "Bob"]).await;
    send_candidate(&mut alice, "Bob", &candidate(&too_long), false).await;
    send_candidate(&mut alice, "Bob", &candidate(&longest), false).await;
    expect_candidate(&mut bob, "Alice", &candidate(&base)).await;
    expect_only_pong(&mut bob).await;
}

#[tokio::test]
async fn glare_both_offers_are_relayed() {
    let server = Server::start("");
    let [mut alice, mut bob] = room(&server, ["Alice", "Bob"]).await;
    let from_alice = offer("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n");
    let from_bob = offer("v=0\r\no=- 2 1 IN IP4 0.0.0.0\r\n");
    let (_, _) = tokio::join!(
        alice.send("webrtc-offer", json!({"targetUsername": "Bob", "offer": from_alice})),
        bob.send("webrtc-offer", json!({"targetUsername": "Alice", "offer": from_bob})),
    );
    assert_eq!(alice.recv().await, json!({"type": "webrtc-offer", "fromUsername": "Bob", "offer": from_bob}));
    assert_eq!(
        bob.recv().await,
        json!({"type": "webrtc-offer", "fromUsername": "Alice", "offer": from_alice})
    );
    expect_only_pong(&mut alice).await;
    expect_only_pong(&mut bob).await;
}

#[tokio::test]
async fn a_participant_vanishing_mid_negotiation() {
    let server = Server::start("");
    let [mut alice, mut bob, mut carol] = room(&server, ["Alice", "Bob", "Carol"]).await;
    bob.send("webrtc-offer", json!({"targetUsername": "Alice", "offer": offer(PLAIN_SDP)})).await;
    assert_eq!(alice.recv().await["fromUsername"], "Bob");
    send_candidate(&mut bob, "Alice", &candidate(&relay(50001)), true).await;
    expect_only_pong(&mut bob).await;
    drop(bob); // gone before Alice answers
    for client in [&mut alice, &mut carol] {
        expect_peer_left(client, "Bob").await;
        client.next_system("Bob has left.").await;
    }
    alice.send("webrtc-answer", json!({"targetUsername": "Bob", "answer": answer(PLAIN_SDP)})).await;
    expect_error(&mut alice, "Target user not in voice chat").await;
    send_candidate(&mut alice, "Bob", &candidate(&relay(50002)), false).await;
    expect_only_pong(&mut alice).await;

    // The call between the others goes on.
    alice.send("webrtc-offer", json!({"targetUsername": "Carol", "offer": offer(PLAIN_SDP)})).await;
    assert_eq!(carol.recv().await["fromUsername"], "Alice");
    carol.send("webrtc-answer", json!({"targetUsername": "Alice", "answer": answer(PLAIN_SDP)})).await;
    assert_eq!(alice.recv().await["fromUsername"], "Carol");
    expect_only_pong(&mut alice).await;
    expect_only_pong(&mut carol).await;
}

#[tokio::test]
async fn media_change_goes_to_the_others_only() {
    let server = Server::start("");
    let [mut alice, mut bob, mut carol] = room(&server, ["Alice", "Bob", "Carol"]).await;
    alice.send("webrtc-media-change", json!({"mediaTypes": ["audio", "video", "screen"]})).await;
    for client in [&mut bob, &mut carol] {
        assert_eq!(
            client.recv().await,
            json!({"type": "webrtc-media-changed", "username": "Alice", "mediaTypes": ["audio", "video"]})
        );
    }
    expect_only_pong(&mut alice).await;

    alice.send("webrtc-media-change", json!({"mediaTypes": ["bogus"]})).await;
    expect_error(&mut alice, "No valid media types requested").await;
    expect_only_pong(&mut bob).await;

    // An explicit empty list is "everything off"; a missing list means audio.
    bob.send("webrtc-media-change", json!({"mediaTypes": []})).await;
    bob.send("webrtc-media-change", json!({})).await;
    for client in [&mut alice, &mut carol] {
        for types in [json!([]), json!(["audio"])] {
            assert_eq!(
                client.recv().await,
                json!({"type": "webrtc-media-changed", "username": "Bob", "mediaTypes": types})
            );
        }
    }
    expect_only_pong(&mut bob).await;

    // A newcomer sees the current media types.
    let mut dave = server.join("Dave").await;
    let joined = join_voice(&mut dave, "Dave", None).await;
    assert_eq!(joined["participants"][0], json!({"username": "Alice", "mediaTypes": ["audio", "video"]}));
}

#[tokio::test]
async fn credentials_are_refreshed_before_they_expire() {
    let server = Server::start(&secret_config("credential_ttl_s = 2"));
    let port = turn_port(&server);
    let mut alice = server.join("Alice").await;
    let mut bob = server.join("Bob").await; // not in voice: gets no credentials
    alice.next_system("Bob has joined.").await;
    // The relay refuses a credential from the start of its expiry second (`expiry <= now`), and
    // the expiry is whole seconds, so a credential issued late in a second lives less than its
    // TTL. Join about 0.8 s into a second: the first credential then lives about 1.2 s.
    let into_second = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_millis();
    tokio::time::sleep(Duration::from_millis(u64::from((1800 - into_second) % 1000))).await;
    let started = Instant::now();
    let joined = join_voice(&mut alice, "Alice", None).await;
    bob.next_system("Alice joined voice chat").await;
    assert_eq!(joined["config"]["credentialTtl"], 2);
    let first = check_ice_servers(&joined["config"]["iceServers"], "127.0.0.1", port, "Alice", 2);

    let mut previous = first;
    for _ in 0..2 {
        let refresh = alice.recv().await;
        let elapsed = started.elapsed();
        let arrived = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
        assert_eq!(refresh.as_object().unwrap().len(), 3, "{refresh}");
        assert_eq!(refresh["type"], "webrtc-credentials");
        assert_eq!(refresh["credentialTtl"], 2);
        let expiry = check_ice_servers(&refresh["iceServers"], "127.0.0.1", port, "Alice", 2);
        assert!(expiry > previous, "fresh credentials: {expiry} after {previous}");
        assert!(
            arrived < previous as f64,
            "the refresh arrived at {arrived:.3}, after the current credential expired at {previous}"
        );
        if previous == first {
            assert!(elapsed < Duration::from_secs(2), "arrived within the TTL: {elapsed:?}");
        }
        previous = expiry;
    }
    expect_only_pong(&mut bob).await;

    // Out of the room: no more credentials.
    alice.send("webrtc-leave", json!({})).await;
    alice.next_system("Alice left voice chat").await;
    alice.expect_silence(2200).await;
}

#[tokio::test]
async fn voice_notices_are_persisted() {
    let dir = tempfile::tempdir().unwrap();
    let texts = |history: &Value| -> Vec<String> {
        history["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["text"].as_str().unwrap().to_string())
            .collect()
    };
    {
        let server = Server::start_in(dir.path(), "");
        let mut alice = server.join("Alice").await;
        join_voice(&mut alice, "Alice", None).await;
        alice.send("webrtc-leave", json!({})).await;
        alice.next_system("Alice left voice chat").await;

        let mut carol = Client::connect(&server.url(Some("Carol"))).await;
        let history = carol.recv_type("history").await;
        assert_eq!(
            texts(&history),
            ["Alice has joined.", "Alice joined voice chat", "Alice left voice chat"]
        );
        let entry = &history["messages"][1];
        assert_eq!(entry["type"], "system");
        assert_eq!(entry["username"], Value::Null);
        assert!(is_iso_timestamp(&entry["timestamp"]), "{entry}");
    }
    let server = Server::start_in(dir.path(), "");
    let mut dave = Client::connect(&server.url(Some("Dave"))).await;
    let history = texts(&dave.recv_type("history").await);
    assert!(
        history.windows(2).any(|w| w == ["Alice joined voice chat", "Alice left voice chat"]),
        "{history:?}"
    );
}

/// A client written from the seed guide: join with media, newcomer offers to everyone listed in
/// `webrtc-joined`, the other answers, both trickle candidates (some buffered, ending with the
/// empty end-of-candidates), media change, leave.
#[tokio::test]
async fn seed_guide_client_flow_end_to_end() {
    let server = Server::start(&secret_config(""));
    let port = turn_port(&server);
    let mut alice = server.join("Alice").await;
    let mut bob = server.join("Bob").await;
    alice.next_system("Bob has joined.").await;

    let joined = join_voice(&mut alice, "Alice", Some(json!(["audio", "video"]))).await;
    bob.next_system("Alice joined voice chat").await;
    check_ice_servers(&joined["config"]["iceServers"], "127.0.0.1", port, "Alice", 600);
    assert_eq!(joined["config"]["iceTransportPolicy"], "relay");

    let joined = join_voice(&mut bob, "Bob", Some(json!(["audio"]))).await;
    expect_peer_joined(&mut alice, "Bob", json!(["audio"])).await;
    // The newcomer offers to every participant already there.
    let others: Vec<String> = joined["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["username"].as_str().unwrap().to_string())
        .filter(|name| name != "Bob")
        .collect();
    assert_eq!(others, ["Alice"]);
    for target in &others {
        bob.send("webrtc-offer", json!({"targetUsername": target, "offer": offer(LEAKY_SDP)})).await;
        // Candidates gathered before the answer: buffered by the server.
        send_candidate(&mut bob, target, &candidate(&relay(50001)), true).await;
        send_candidate(&mut bob, target, &candidate(NON_RELAY_CANDIDATES[0]), true).await;
    }
    // (A real client races here too: a candidate the server handles after the answer is held
    // until the next answer. Wait until ours are handled.)
    expect_only_pong(&mut bob).await;

    // Alice handles the offer and answers.
    let incoming = alice.recv().await;
    assert_eq!(incoming["type"], "webrtc-offer");
    assert_eq!(incoming["fromUsername"], "Bob");
    assert_eq!(incoming["offer"]["sdp"], REBUILT_SDP);
    let from = incoming["fromUsername"].as_str().unwrap().to_string();
    alice.send("webrtc-answer", json!({"targetUsername": from, "answer": answer(LEAKY_SDP)})).await;
    send_candidate(&mut alice, &from, &candidate(&relay(50002)), false).await;
    send_candidate(&mut alice, &from, &json!({"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0}), false)
        .await;

    let incoming = bob.recv().await;
    assert_eq!(incoming["type"], "webrtc-answer");
    assert_eq!(incoming["fromUsername"], "Alice");
    assert_eq!(incoming["answer"]["sdp"], REBUILT_SDP);
    expect_candidate(&mut bob, "Alice", &candidate(&relay(50002))).await;
    expect_candidate(&mut bob, "Alice", &json!({"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0})).await;
    expect_candidate(&mut alice, "Bob", &candidate(&relay(50001))).await; // flushed after the answer
    send_candidate(&mut bob, "Alice", &json!({"candidate": ""}), false).await;
    expect_candidate(&mut alice, "Bob", &json!({"candidate": ""})).await;
    expect_voice_participants(&server, 2).await;

    // Camera off.
    alice.send("webrtc-media-change", json!({"mediaTypes": ["audio"]})).await;
    assert_eq!(
        bob.recv().await,
        json!({"type": "webrtc-media-changed", "username": "Alice", "mediaTypes": ["audio"]})
    );

    // Hang up.
    bob.send("webrtc-leave", json!({})).await;
    expect_peer_left(&mut alice, "Bob").await;
    bob.next_system("Bob left voice chat").await;
    alice.send("webrtc-leave", json!({})).await;
    alice.next_system("Alice left voice chat").await;
    bob.next_system("Alice left voice chat").await;
    for client in [&mut alice, &mut bob] {
        expect_only_pong(client).await;
    }
    expect_voice_participants(&server, 0).await;
    drop(bob);
    alice.expect_system("Bob has left.").await;
}

#[tokio::test]
async fn external_turn_servers_and_no_turn_at_all() {
    let server = Server::start(
        r#"
[turn]
enabled = false

[[turn.external_servers]]
urls = ["turn:turn1.example.org:3478?transport=udp", "turns:turn1.example.org:5349?transport=tcp"]
secret = "first-secret"

[[turn.external_servers]]
urls = ["turn:turn2.example.net:3478"]
secret = "second-secret"
"#,
    );
    let mut alice = server.join("Alice").await;
    let joined = join_voice(&mut alice, "Alice", None).await;
    let servers = joined["config"]["iceServers"].as_array().unwrap();
    assert_eq!(servers.len(), 2, "{joined}");
    for (entry, (urls, secret)) in servers.iter().zip([
        (
            json!([
                "turn:turn1.example.org:3478?transport=udp",
                "turns:turn1.example.org:5349?transport=tcp"
            ]),
            "first-secret",
        ),
        (json!(["turn:turn2.example.net:3478"]), "second-secret"),
    ]) {
        assert_eq!(entry["urls"], urls);
        let username = entry["username"].as_str().unwrap();
        let (expiry, user) = username.split_once(':').unwrap();
        assert!(user.starts_with("Alice:"), "{username}");
        let expiry: u64 = expiry.parse().unwrap();
        assert!(expiry.abs_diff(unix_now() + 600) <= 5, "{username}");
        assert_eq!(entry["credential"].as_str().unwrap(), turn_credential(secret, username));
    }

    let server = Server::start("[turn]\nenabled = false\n");
    let mut alice = server.join("Alice").await;
    let joined = join_voice(&mut alice, "Alice", None).await;
    assert_eq!(joined["config"]["iceServers"], json!([]));
    assert_eq!(joined["config"]["iceTransportPolicy"], "relay");
}

/// With `[server.tls]` (wss://) the relay is meant to offer TURN over TLS as well, listed as
/// `turns:HOST:PORT?transport=tcp` (issue 3, "Credentials"; `[turn] tls_listen`).
#[tokio::test]
async fn turns_url_is_listed_when_tls_is_configured() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), certified.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), certified.signing_key.serialize_pem()).unwrap();
    let config = format!(
        "[server.tls]\ncert_file = \"{0}/cert.pem\"\nkey_file = \"{0}/key.pem\"\n\n[turn]\ntls_listen = \"127.0.0.1:0\"\n",
        dir.path().display()
    );
    let server = Server::start_in(dir.path(), &config);
    let port = turn_port(&server);

    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls_config));
    let tcp = tokio::net::TcpStream::connect(server.http).await.unwrap();
    let domain = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(domain, tcp).await.unwrap();
    let url = format!("wss://localhost:{}/?username=Alice", server.http.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    let mut token = String::new();
    let joined = loop {
        let Ok(Some(Ok(Message::Text(text)))) = tokio::time::timeout(common::RECV_TIMEOUT, ws.next()).await
        else {
            panic!("no webrtc-joined over wss");
        };
        let message: Value = serde_json::from_str(&text).unwrap();
        if message["type"] == "session-token" {
            token = message["token"].as_str().unwrap().to_string();
        }
        if message["text"] == "Alice has joined." {
            let join = json!({"type": "webrtc-join", "token": token});
            ws.send(Message::Text(join.to_string().into())).await.unwrap();
        }
        if message["type"] == "webrtc-joined" {
            break message;
        }
    };
    let urls: Vec<&str> = joined["config"]["iceServers"][0]["urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert_eq!(
        urls[..2],
        [format!("turn:localhost:{port}?transport=udp"), format!("turn:localhost:{port}?transport=tcp")]
    );
    let turns = urls.get(2).unwrap_or_else(|| panic!("no turns: URL in {urls:?}"));
    let tls_port: u16 = turns
        .strip_prefix("turns:localhost:")
        .and_then(|rest| rest.strip_suffix("?transport=tcp"))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{turns}"));
    assert_ne!(tls_port, 0);
    // Something speaks TLS there.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", tls_port)).await.unwrap();
    let domain = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(domain, tcp).await.expect("TLS handshake on the turns: port");
}
