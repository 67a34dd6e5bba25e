//! Drop-in for js-chat-server, against the real binary: an operator's `settings.json` written in
//! the original's own shape reaches the running server (reported by `/server-info` and visible in
//! behaviour), unknown slash commands go out as chat so bots can answer them, the reply texts are
//! the original's, `HEAD /server-info` answers like `GET`, and the original's
//! Python quickstart client works unchanged.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Client, Event, Server};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A port that was free a moment ago (the settings file names its port, as the original's does).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts relaychat with `settings` as its `--config settings.json`. The original has no keys for
/// these, so the environment keeps the test on loopback and inside its temporary directory.
fn start_with_settings_json(dir: &Path, settings: &Value) -> Server {
    let path = dir.join("settings.json");
    std::fs::write(&path, serde_json::to_string_pretty(settings).unwrap()).unwrap();
    let env = [
        ("RELAYCHAT__SERVER__HOST", "127.0.0.1".to_string()),
        ("RELAYCHAT__SERVER__DATA_DIR", dir.join("data").display().to_string()),
        ("RELAYCHAT__TURN__LISTEN", "127.0.0.1:0".to_string()),
        ("RELAYCHAT__TURN__TLS_LISTEN", "127.0.0.1:0".to_string()),
        ("RELAYCHAT__TURN__RELAY_IP", "127.0.0.1".to_string()),
    ];
    Server::start_with_args_and_env(dir, &["--config", path.to_str().unwrap()], &env)
}

/// Connects without a name and returns the refusal text, asserting the server closes.
async fn refused(server: &Server) -> String {
    let mut client = Client::connect(&server.url(None)).await;
    let text = client.token.strip_prefix("refused:").map(str::to_string).unwrap_or_else(|| {
        panic!("expected a refusal, got a session token");
    });
    client.expect_close().await;
    let frame: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(frame["type"], "system", "{frame}");
    frame["text"].as_str().unwrap().to_string()
}

/// Waits until the server has seen every closed connection go (so limits count them).
async fn wait_for_users(server: &Server, users: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (info, _) = server.get_json("/server-info").await;
        if info["currentStats"]["connectedUsers"] == users {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "connectedUsers stayed {}",
            info["currentStats"]["connectedUsers"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn close(mut client: Client) {
    let _ = client.ws.close(None).await;
}

/// The very next frame the client gets, skipping `pong`s (the tests ping to stay alive).
async fn next_non_pong(client: &mut Client) -> Value {
    loop {
        let frame = client.recv().await;
        if frame["type"] != "pong" {
            return frame;
        }
    }
}

#[tokio::test]
async fn an_operators_settings_json_reaches_the_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // The shape of the original's settings.json (what its app.js writes), with every value
    // changed from both servers' defaults so that a dropped key shows.
    let settings = json!({
        "authentication": false,
        "nickChangeCooldown": 1500,
        "maxMessagesPerSecond": 4,
        "connectionWindowMs": 3500,
        "maxConnectionsPerWindow": 5,
        "maxTotalConnections": 2,
        "totalMaxConnections": 50,
        "serverName": "Old Node Chat",
        "port": port,
        "motd": "Welcome back",
        "heartbeatInterval": 1500,
        "heartbeatTimeout": 6000,
        "wss": {"enabled": false, "key": "certs/key.pem", "cert": "certs/cert.pem"},
        "webrtc": {"enabled": true, "maxParticipants": 3, "allowVideo": true, "allowScreenShare": true,
                   "forceRelay": false},
        "churnGuard": {"enabled": true, "windowMs": 300000, "maxCycles": 50, "blockDurationMs": 600000}
    });
    let server = start_with_settings_json(dir.path(), &settings);
    assert_eq!(server.http.port(), port, "`port` is the port served");

    let (mut info, head) = server.get_json("/server-info").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(info["currentStats"], json!({"connectedUsers": 0, "voiceParticipants": 0}));
    info.as_object_mut().unwrap().remove("currentStats");
    assert_eq!(
        info,
        json!({
            "serverName": "Old Node Chat", "motd": "Welcome back", "port": port, "authentication": false,
            "maxMessagesPerSecond": 4, "nickChangeCooldown": 1500,
            "connectionLimits": {"totalMaxConnections": 50, "maxConnectionsPerIP": 2,
                                 "maxConnectionsPerWindow": 5, "connectionWindowMs": 3500},
            "heartbeat": {"interval": 1500, "timeout": 6000},
            "webrtc": {"enabled": true, "maxParticipants": 3, "allowVideo": true, "allowScreenShare": true,
                       "forceRelay": false}
        })
    );

    // The welcome carries the heartbeat and the MOTD.
    let mut alice = Client::connect(&server.url(Some("Alice"))).await;
    assert_eq!(alice.recv().await, json!({"type": "heartbeat-config", "interval": 1500, "timeout": 6000}));
    alice.recv_type("history").await;
    alice.next_system("MOTD: Welcome back").await;
    alice.next_system("Alice has joined.").await;
    let mut bob = server.join("Bob").await;

    // maxTotalConnections is per IP: a third connection from 127.0.0.1 is refused.
    assert_eq!(refused(&server).await, "Too many concurrent connections from this IP. Maximum allowed is 2.");

    // maxMessagesPerSecond.
    alice.send("ping", json!({})).await;
    for i in 0..5 {
        alice.chat(&format!("burst {i}")).await;
    }
    for i in 0..4 {
        assert_eq!(alice.recv_type("chat").await["text"], format!("burst {i}"));
    }
    assert_eq!(
        next_non_pong(&mut alice).await,
        json!({"type": "system", "text": "You are sending messages too fast. Limit is 4 per second."})
    );

    // nickChangeCooldown.
    bob.send("ping", json!({})).await;
    bob.chat("/nick Robert").await;
    bob.expect_system("Bob is now Robert").await;
    bob.chat("/nick Bobby").await;
    assert_eq!(
        next_non_pong(&mut bob).await["text"],
        "You can only change your nickname once every 1.5 seconds. Please wait 2 more seconds."
    );

    // webrtc.*: the call configuration the original's clients read.
    alice.send("webrtc-join", json!({"mediaTypes": ["audio", "video", "screen"]})).await;
    let joined = alice.recv_type("webrtc-joined").await;
    assert_eq!(
        joined["participants"],
        json!([{"username": "Alice", "mediaTypes": ["audio", "video", "screen"]}])
    );
    assert_eq!(joined["config"]["allowVideo"], true);
    assert_eq!(joined["config"]["allowScreenShare"], true);
    assert_eq!(joined["config"]["forceRelay"], false);
    assert_eq!(joined["config"]["iceTransportPolicy"], "all");

    // maxConnectionsPerWindow per connectionWindowMs: let the window empty, then five new
    // connections pass and the sixth is refused, with the window in seconds as the original
    // prints it; once the window has passed, connecting works again.
    close(alice).await;
    close(bob).await;
    wait_for_users(&server, 0).await;
    tokio::time::sleep(Duration::from_millis(3600)).await;
    for _ in 0..5 {
        let client = Client::connect(&server.url(None)).await;
        assert!(!client.token.starts_with("refused:"), "{}", client.token);
        close(client).await;
        wait_for_users(&server, 0).await;
    }
    assert_eq!(refused(&server).await, "Too many connections from this IP. Limit is 5 per 3.5 seconds.");
    tokio::time::sleep(Duration::from_millis(3600)).await;
    let mut silent = Client::connect(&server.url(None)).await;
    assert!(!silent.token.starts_with("refused:"), "{}", silent.token);

    // heartbeatTimeout: a client that never pings is told and closed after 6 s, not before.
    let connected = Instant::now();
    let deadline = connected + Duration::from_secs(20);
    loop {
        match silent.next_event().await {
            Event::Json(frame) if frame["text"] == "Disconnected: Heartbeat timeout (no ping received)" => {
                break
            }
            Event::Json(_) => {}
            Event::Timeout => assert!(Instant::now() < deadline, "no heartbeat timeout"),
            Event::Closed(frame) => panic!("closed without the notice: {frame:?}"),
        }
    }
    let waited = connected.elapsed();
    let frame = silent.expect_close().await.expect("a close frame");
    assert_eq!((u16::from(frame.code), frame.reason.as_str()), (1008, "Heartbeat timeout"));
    assert!(waited >= Duration::from_millis(5900), "closed after {waited:?}");
    assert!(waited < Duration::from_secs(12), "closed after {waited:?}");
}

#[tokio::test]
async fn server_cap_churn_guard_fallbacks_and_unknown_keys() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let settings = json!({
        "port": port,
        "totalMaxConnections": 2,
        "maxTotalConnections": 10,
        "maxConnectionsPerWindow": 100,
        "churnGuard": {"enabled": true, "windowMs": 60000, "maxCycles": 3, "blockDurationMs": 3000},
        "someFutureKey": true,
        "webrtc": {"enabled": false, "allowVideo": true, "stunServers": []}
    });
    let server = start_with_settings_json(dir.path(), &settings);
    let log = server.log_text();
    assert!(log.contains("settings.json: key \"someFutureKey\" has no relaychat equivalent"), "{log}");
    assert!(log.contains("settings.json: key \"webrtc.stunServers\" has no relaychat equivalent"), "{log}");
    // Voice off: no TURN listener either, like the original (only its HTTP port).
    assert!(server.turn_udp.is_none() && !log.contains("turn listening"), "{log}");

    // Absent keys read as the original reads them.
    let (info, _) = server.get_json("/server-info").await;
    assert_eq!(info["maxMessagesPerSecond"], 5);
    assert_eq!(info["nickChangeCooldown"], 60000);
    assert_eq!(info["connectionLimits"]["connectionWindowMs"], 30000);
    assert_eq!(info["heartbeat"], json!({"interval": 30000, "timeout": 120000}));
    assert_eq!(info["webrtc"]["enabled"], false);

    // totalMaxConnections is the whole server's cap.
    let a = server.join("Alice").await;
    let b = server.join("Bob").await;
    assert_eq!(refused(&server).await, "Server is full. Please try again later.");

    // churnGuard: the third quick connect/disconnect cycle blocks the IP for blockDurationMs.
    close(a).await;
    close(b).await;
    wait_for_users(&server, 0).await;
    let c = server.join("Carol").await;
    close(c).await;
    wait_for_users(&server, 0).await;
    let blocked_at = Instant::now();
    assert_eq!(
        refused(&server).await,
        "Your IP is temporarily blocked due to repeated reconnections. Try again in 3s."
    );
    tokio::time::sleep(Duration::from_millis(3100).saturating_sub(blocked_at.elapsed())).await;
    server.join("Dave").await;
}

/// A bot in the original's style: it reads everyone's chat and answers the commands it knows.
async fn dice_bot(mut bot: Client) {
    loop {
        let frame = match bot.next_event().await {
            Event::Json(frame) => frame,
            Event::Timeout => {
                bot.send("ping", json!({})).await;
                continue;
            }
            Event::Closed(_) => return,
        };
        let text = frame["text"].as_str().unwrap_or("");
        if frame["type"] != "chat" || !text.starts_with("/roll") {
            continue;
        }
        let dice = text.split_whitespace().nth(1).unwrap_or("1d6");
        let (count, sides) = dice.split_once('d').unwrap_or(("1", "6"));
        let (count, sides): (u32, u32) = (count.parse().unwrap_or(1), sides.parse().unwrap_or(6));
        let total: u32 = (0..count).map(|_| rand::random_range(1..=sides)).sum();
        let asker = frame["username"].as_str().unwrap_or("?");
        bot.chat(&format!("{asker} rolled {dice}: {total}")).await;
    }
}

#[tokio::test]
async fn a_bot_answers_custom_slash_commands() {
    let server = Server::start("");
    let bot = server.join("DiceBot").await;
    let bot_task = tokio::spawn(dice_bot(bot));
    let mut alice = server.join("Alice").await;

    alice.chat("/roll 2d6").await;
    let echo = alice.recv_type("chat").await;
    assert_eq!((&echo["username"], &echo["text"]), (&json!("Alice"), &json!("/roll 2d6")));
    let answer = alice.recv_type("chat").await;
    assert_eq!(answer["username"], "DiceBot");
    let text = answer["text"].as_str().unwrap();
    let total: u32 = text.strip_prefix("Alice rolled 2d6: ").expect(text).parse().unwrap();
    assert!((2..=12).contains(&total), "{text}");

    // It is ordinary chat: newcomers find it in the history.
    let mut carol = Client::connect(&server.url(Some("Carol"))).await;
    let history = carol.recv_type("history").await;
    let texts: Vec<&str> =
        history["messages"].as_array().unwrap().iter().filter_map(|m| m["text"].as_str()).collect();
    assert!(texts.contains(&"/roll 2d6") && texts.contains(&text), "{texts:?}");

    // The built-ins are still commands, and only the sender sees their answer.
    alice.chat("/help").await;
    loop {
        let frame = alice.recv_type("system").await;
        if frame["text"].as_str().unwrap().starts_with("/nick <name> - ") {
            break;
        }
    }
    bot_task.abort();
}

#[tokio::test]
async fn reply_texts_are_the_originals() {
    let server = Server::start("[chat]\nmax_messages_per_second = 100\nnick_change_cooldown_ms = 30000\n");
    let mut alice = server.join("Alice").await;
    let mut bob = server.join("Bob").await;
    alice.expect_system("Bob has joined.").await;
    for (command, reply) in [
        ("/block nobody", "User \"nobody\" not found."),
        ("/block bob", "You have blocked Bob for 12 hours."),
        ("/unblock bob", "You have unblocked Bob."),
        ("/unblock bob", "bob was not blocked."),
        ("/nick a!", "Illegal username. Must be 3-20 characters, only letters, digits, underscore, dash."),
        ("/nick Bob", "Username \"Bob\" is already taken."),
        ("/nick Alicia", "Alice is now Alicia"),
        (
            "/nick Ally",
            "You can only change your nickname once every 30 seconds. Please wait 30 more seconds.",
        ),
        ("/kick Bob", "You do not have permission to use /kick."),
    ] {
        alice.chat(command).await;
        alice.next_system(reply).await;
    }
    bob.expect_system("Alice is now Alicia").await;
}

#[tokio::test]
async fn head_server_info_answers_200_like_get() {
    let server = Server::start("");
    for path in ["/server-info", "/info"] {
        let mut stream = TcpStream::connect(server.http).await.unwrap();
        let request = format!("HEAD {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", server.http);
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
            .await
            .unwrap()
            .unwrap();
        let response = String::from_utf8(response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        let head = head.to_ascii_lowercase();
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(head.contains("access-control-allow-origin: *"), "{head}");
        assert!(body.is_empty(), "HEAD has no body: {body:?}");
    }
}

#[tokio::test]
async fn wss_in_settings_json_serves_tls_with_the_files_next_to_it() {
    let dir = tempfile::tempdir().unwrap();
    // The original's layout: certs/ beside settings.json, paths relative to it.
    std::fs::create_dir(dir.path().join("certs")).unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.path().join("certs/cert.pem"), certified.cert.pem()).unwrap();
    std::fs::write(dir.path().join("certs/key.pem"), certified.signing_key.serialize_pem()).unwrap();
    let settings = json!({
        "port": free_port(),
        "serverName": "Over TLS",
        "wss": {"enabled": true, "key": "certs/key.pem", "cert": "certs/cert.pem"}
    });
    let server = start_with_settings_json(dir.path(), &settings);

    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = TcpStream::connect(server.http).await.unwrap();
    let domain = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(domain, tcp).await.expect("the chat port speaks TLS");
    tls.write_all(b"GET /server-info HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_string(&mut response)).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"serverName\":\"Over TLS\""), "{response}");
}

#[tokio::test]
async fn js_chat_server_settings_json_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("settings.json");
    std::fs::write(
        &settings,
        json!({"port": 3000, "host": "127.0.0.1", "serverName": "Migrated", "motd": "old motd",
               "dataDir": dir.path().join("data"), "maxMessagesPerSecond": 7,
               "webrtc": {"enabled": true, "maxParticipants": 4}})
        .to_string(),
    )
    .unwrap();
    let server =
        Server::start_with_args(dir.path(), &["--config", settings.to_str().unwrap(), "--port", "0"]);
    let (info, _) = server.get_json("/server-info").await;
    assert_eq!(info["serverName"], "Migrated");
    assert_eq!(info["maxMessagesPerSecond"], 7);
    assert_eq!(info["webrtc"]["maxParticipants"], 4);
    let mut alice = Client::connect(&server.url(Some("Alice"))).await;
    alice.expect_system("MOTD: old motd").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plain_python_quickstart_client_works_unchanged() {
    let server = Server::start("");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/quickstart.py");
    let output = std::process::Command::new("python3")
        .arg(script)
        .arg(server.url(Some("PyBot")))
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "quickstart failed (pip install websockets?)\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("pong"), "{stdout}");
    assert!(stdout.contains("hello from python"), "{stdout}");
}
