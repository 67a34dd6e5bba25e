//! Black-box tests of the chat protocol (PROTOCOL.md sections 1-3, 5 and 6) against the real
//! binary: connection sequence, chat rules, commands, auth mode, limits, persistence, shutdown
//! and bad input.

mod common;

use common::{is_iso_timestamp, Client, Event, Server};
use serde_json::json;

#[tokio::test]
async fn open_mode_connection_sequence() {
    let server = Server::start("");
    let mut alice = Client::connect(&server.url(Some("Alice"))).await;
    assert_eq!(alice.token.len(), 64);
    assert!(alice.token.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(alice.recv().await, json!({"type":"heartbeat-config","interval":30000,"timeout":120000}));
    assert_eq!(alice.recv().await, json!({"type":"history","messages":[]}));
    alice.next_system("MOTD: Welcome").await;
    alice.next_system("Alice has joined.").await;

    let mut bob = Client::connect(&server.url(Some("Bob"))).await;
    assert_ne!(bob.token, alice.token);
    bob.recv_type("heartbeat-config").await;
    let history = bob.recv().await;
    assert_eq!(history["type"], "history");
    let entry = &history["messages"][0];
    assert_eq!(entry["type"], "system");
    assert_eq!(entry["username"], serde_json::Value::Null);
    assert_eq!(entry["text"], "Alice has joined.");
    assert!(is_iso_timestamp(&entry["timestamp"]), "{entry}");
    bob.next_system("MOTD: Welcome").await;
    bob.next_system("Bob has joined.").await;
    alice.next_system("Bob has joined.").await;

    drop(bob);
    alice.next_system("Bob has left.").await;
}

#[tokio::test]
async fn a_long_history_arrives_whole() {
    // Over the server's 4 KiB fragment size, with multi-byte characters across the boundaries.
    let server = Server::start("[chat]\nmax_messages_per_second = 1000\n");
    let mut alice = server.join("Alice").await;
    let texts: Vec<String> = (0..20).map(|i| format!("{i} {}", "é€😀".repeat(150))).collect();
    for text in &texts {
        alice.chat(text).await;
        alice.recv_type("chat").await;
    }
    let mut bob = Client::connect(&server.url(Some("Bob"))).await;
    let history = bob.recv_type("history").await;
    let chats: Vec<&str> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["type"] == "chat")
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(chats, texts.iter().map(String::as_str).collect::<Vec<_>>());
    bob.expect_system("Bob has joined.").await;
}

#[tokio::test]
async fn usernames_are_validated_generated_clamped_and_unique() {
    let server = Server::start("");
    let mut bad = Client::connect(&server.url(Some("a%21b"))).await;
    bad.recv_type("heartbeat-config").await;
    bad.next_system("Illegal username.").await;
    bad.next_system("Requirement: 3-20 characters alphanumeric.").await;
    bad.expect_close().await;

    let mut anonymous = Client::connect(&server.url(None)).await;
    let joined = loop {
        let m = anonymous.recv().await;
        if m["type"] == "system" && m["text"].as_str().unwrap().ends_with(" has joined.") {
            break m["text"].as_str().unwrap().to_string();
        }
    };
    let name = joined.trim_end_matches(" has joined.");
    assert!(name.starts_with("Anonymous") && name.len() == 13, "{name}");
    assert!(name[9..].bytes().all(|b| b.is_ascii_digit()));

    let long = "abcdefghijklmnopqrstuvwxyz";
    let mut clamped = Client::connect(&server.url(Some(long))).await;
    clamped.expect_system("abcdefghijklmnopqrst has joined.").await;

    let _first = server.join("Carol").await;
    let mut second = Client::connect(&server.url(Some("Carol"))).await;
    second.recv_type("heartbeat-config").await;
    second.next_system("Username taken.").await;
    second.expect_close().await;
}

#[tokio::test]
async fn chat_typing_ping_and_message_rules() {
    let server = Server::start("");
    let mut alice = server.join("Alice").await;
    let mut bob = server.join("Bob").await;
    alice.expect_system("Bob has joined.").await;

    alice.chat("  Hello!  ").await;
    for client in [&mut alice, &mut bob] {
        let m = client.recv().await;
        assert_eq!(m["type"], "chat");
        assert_eq!(m["username"], "Alice");
        assert_eq!(m["text"], "Hello!");
        assert!(is_iso_timestamp(&m["timestamp"]));
    }

    alice.chat("   ").await; // empty after trim: ignored
    alice.send("typing", json!({})).await;
    let typing = bob.recv().await;
    assert_eq!(typing["type"], "typing");
    assert_eq!(typing["username"], "Alice");
    assert!(is_iso_timestamp(&typing["timestamp"]));

    alice.send("ping", json!({})).await;
    let pong = alice.recv().await;
    assert_eq!(pong["type"], "pong");
    assert!(is_iso_timestamp(&pong["timestamp"]));
    alice.expect_silence(300).await; // exactly one pong, no typing echo, nothing for "   "
    bob.expect_silence(50).await;

    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    alice.chat(&"x".repeat(2001)).await;
    alice.next_system("Your message is too long. Max 2000 characters.").await;
    alice.chat(&"é".repeat(1999)).await; // 1999 chars, 3998 bytes: fine
    alice.recv_type("chat").await;
    alice.chat(&"€".repeat(1800)).await; // 1800 chars, 5400 bytes
    alice.next_system("Your message is too large. Max 5KB.").await;

    alice.send_json(json!({"type":"chat","token":"wrong","content":"hi"})).await;
    alice.next_system("Invalid session token.").await;
    alice.send_json(json!({"type":"chat","content":"hi"})).await;
    alice.next_system("Invalid session token.").await;
    alice.send_text("this is not json").await;
    alice.next_system("Invalid message format.").await;
    alice.send_text("[1,2,3]").await;
    alice.next_system("Invalid message format.").await;
    alice.send_text("42").await;
    alice.next_system("Invalid message format.").await;
    alice.send("chat", json!({"content": 5})).await;
    alice.next_system("Invalid message structure.").await;
    alice.send("bogus", json!({})).await;
    alice.next_system("Invalid message structure.").await;
    alice.send_json(json!({"token": alice.token.clone()})).await;
    alice.next_system("Invalid message structure.").await;
}

#[tokio::test]
async fn rate_limit_refuses_the_fourth_message_in_a_second() {
    let server = Server::start("");
    let mut alice = server.join("Alice").await;
    for i in 0..6 {
        alice.chat(&format!("spam{i}")).await;
    }
    let mut chats = 0;
    let mut refusals = 0;
    for _ in 0..6 {
        let m = alice.recv().await;
        if m["type"] == "chat" {
            chats += 1;
        } else {
            assert_eq!(m["text"], "You are sending messages too fast. Limit is 3 per second.");
            refusals += 1;
        }
    }
    assert_eq!((chats, refusals), (3, 3));
}

#[tokio::test]
async fn commands() {
    let server = Server::start("[chat]\nnick_change_cooldown_ms = 60000\nmax_messages_per_second = 50\n");
    let mut alice = server.join("Alice").await;
    let mut bob = server.join("Bob").await;
    alice.expect_system("Bob has joined.").await;

    alice.chat("/help").await;
    let help = alice.recv().await;
    assert_eq!(help["type"], "system");
    let text = help["text"].as_str().unwrap();
    assert_eq!(text.lines().count(), 8);
    for command in ["/nick", "/list", "/kick", "/ban", "/unban", "/block", "/unblock", "/help"] {
        assert!(text.contains(command), "{command} missing from {text}");
    }

    alice.chat("/list").await;
    alice.next_system("Online users: Alice, Bob").await;

    alice.chat("/block Bob").await;
    alice.recv_type("system").await;
    alice.chat("/list").await;
    alice.next_system("Online users: Alice, [B]Bob").await;
    bob.chat("can you hear me").await;
    bob.recv_type("chat").await;
    alice.expect_silence(300).await;
    alice.chat("/unblock Bob").await;
    alice.recv_type("system").await;
    bob.chat("now?").await;
    assert_eq!(alice.recv_type("chat").await["text"], "now?");

    bob.chat("/nick Robert").await;
    alice.expect_system("Bob is now Robert").await;
    bob.expect_system("Bob is now Robert").await;
    bob.chat("/nick Bobby").await;
    let cooldown = bob.recv().await;
    assert!(
        cooldown["text"]
            .as_str()
            .unwrap()
            .starts_with("You can only change your nickname once every 60 seconds. Please wait "),
        "{cooldown}"
    );
    alice.chat("/nick Robert").await;
    alice.next_system("Username \"Robert\" is already taken.").await;
    alice.chat("/nick x!").await;
    alice
        .next_system("Illegal username. Must be 3-20 characters, only letters, digits, underscore, dash.")
        .await;
    alice.chat("/list").await;
    alice.next_system("Online users: Alice, Robert").await;

    alice.chat("/kick Robert").await;
    alice.next_system("You do not have permission to use /kick.").await;
    alice.chat("/ban Robert").await;
    alice.next_system("You do not have permission to use /ban.").await;
    alice.chat("/unban Robert").await;
    alice.next_system("You do not have permission to use /unban.").await;
}

/// The reference transcript of the original server in authentication mode.
#[tokio::test]
async fn authentication_mode() {
    let server =
        Server::start("[chat]\nauthentication = true\nmax_messages_per_second = 50\nadmins = [\"Admin\"]\n");
    let mut a = Client::connect(&server.url(Some("ignored"))).await;
    a.recv_type("heartbeat-config").await;
    a.next_system("Authentication required. Use /register <username> <password> or /login <username> <password> in message content.").await;
    a.chat("hi").await;
    a.next_system("Please authenticate first using /register or /login commands.").await;
    a.chat("/register Alice").await;
    a.next_system("Username and password required.").await;
    a.chat("/register A! password123").await;
    a.next_system("Illegal username. Requirement: 3-20 characters alphanumeric.").await;
    a.chat("/register Alice short").await;
    a.next_system("Password length invalid. Must be 8-32 characters.").await;
    a.chat("/register Alice password123").await;
    a.next_system("Registered. Please /login.").await;
    a.chat("/register Alice password123").await;
    a.next_system("Username exists.").await;
    a.chat("/login Alice wrongpass1").await;
    a.next_system("Login failed.").await;
    a.send("webrtc-join", json!({})).await;
    a.next_system("Please authenticate first using /register or /login commands in message content.").await;
    a.chat("/login Alice password123").await;
    assert_eq!(a.recv().await["type"], "history");
    a.next_system("MOTD: Welcome").await;
    a.next_system("Alice has joined.").await;
    a.chat("/nick Bob").await;
    a.next_system("Nick change is disabled on authentication servers.").await;
    a.chat("hello after login").await;
    assert_eq!(a.recv().await["text"], "hello after login");

    // The same name cannot be online twice.
    let mut twin = Client::connect(&server.url(None)).await;
    twin.expect_system(
        "Authentication required. Use /register <username> <password> or /login <username> <password> in message content.",
    )
    .await;
    twin.chat("/login Alice password123").await;
    twin.next_system("Username in use.").await;
    twin.expect_close().await;

    // Five failures for one ip+name block it.
    let mut guesser = Client::connect(&server.url(None)).await;
    guesser.recv_type("system").await;
    for i in 1..=5 {
        guesser.chat(&format!("/login Alice wrongpass{i}")).await;
        guesser.next_system("Login failed.").await;
        tokio::time::sleep(std::time::Duration::from_millis(350)).await; // stay under the rate limit
    }
    guesser.chat("/login Alice password123").await;
    guesser.next_system("Too many failed attempts. Blocked for 1 hour.").await;

    // Admins kick, ban and unban.
    let mut admin = Client::connect(&server.url(None)).await;
    admin.recv_type("system").await;
    admin.chat("/register Admin adminpass1").await;
    admin.next_system("Registered. Please /login.").await;
    admin.chat("/login Admin adminpass1").await;
    admin.expect_system("Admin has joined.").await;
    a.expect_system("Admin has joined.").await;
    a.chat("/kick Admin").await;
    a.next_system("You do not have permission to use /kick.").await;
    admin.chat("/ban Alice").await;
    admin.expect_system("Alice was banned by Admin.").await;
    a.next_system("You have been banned by an admin.").await;
    a.expect_close().await;
    admin.expect_system("Alice has left.").await;

    let mut banned = Client::connect(&server.url(None)).await;
    banned.recv_type("system").await;
    banned.chat("/login Alice password123").await;
    banned.next_system("You are banned.").await;
    banned.expect_close().await;

    admin.chat("/unban Alice").await;
    admin.expect_system("Alice was unbanned by Admin.").await;
}

#[tokio::test]
async fn history_and_bans_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[chat]\nhistory_limit = 5\nauthentication = true\nadmins = [\"Admin\"]\n";
    let mut server = Server::start_in(dir.path(), config);
    let mut admin = Client::connect(&server.url(None)).await;
    admin.recv_type("system").await;
    admin.chat("/register Admin adminpass1").await;
    admin.next_system("Registered. Please /login.").await;
    admin.chat("/login Admin adminpass1").await;
    admin.expect_system("Admin has joined.").await;
    for i in 0..6 {
        admin.chat(&format!("message {i}")).await;
        admin.recv_type("chat").await;
        tokio::time::sleep(std::time::Duration::from_millis(350)).await;
    }
    admin.chat("/ban Mallory").await;
    admin.expect_system("Mallory was banned by Admin.").await;
    let (status, _) = server.terminate();
    assert!(status.success());

    let server = Server::start_in(dir.path(), config);
    let mut admin = Client::connect(&server.url(None)).await;
    admin.recv_type("system").await;
    admin.chat("/login Admin adminpass1").await;
    let history = admin.recv_type("history").await;
    let texts: Vec<&str> =
        history["messages"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(
        texts,
        [
            "message 3",
            "message 4",
            "message 5",
            "Mallory was banned by Admin.",
            "Admin has left. (Server Shutdown)"
        ]
    );
    assert!(history["messages"].as_array().unwrap().iter().all(|m| is_iso_timestamp(&m["timestamp"])));
    assert_eq!(history["messages"][0]["username"], "Admin");
    assert_eq!(history["messages"][0]["type"], "chat");
    // Mallory's ban was persisted: the account cannot even be registered.
    admin.chat("/unban Mallory").await;
    admin.expect_system("Mallory was unbanned by Admin.").await;
}

#[tokio::test]
async fn sigterm_announces_flushes_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(dir.path(), "");
    let mut alice = server.join("Alice").await;
    let mut bob = server.join("Bob").await;
    alice.expect_system("Bob has joined.").await;
    let (status, took) = server.terminate();
    assert!(status.success(), "{status:?}");
    assert!(took < std::time::Duration::from_secs(5), "took {took:?}");
    for client in [&mut alice, &mut bob] {
        client.expect_system("Alice has left. (Server Shutdown)").await;
        client.expect_system("Bob has left. (Server Shutdown)").await;
        client.expect_close().await;
    }
    let server = Server::start_in(dir.path(), "");
    let mut carol = Client::connect(&server.url(Some("Carol"))).await;
    let history = carol.recv_type("history").await;
    let texts: Vec<&str> =
        history["messages"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert!(
        texts.ends_with(&["Alice has left. (Server Shutdown)", "Bob has left. (Server Shutdown)"]),
        "{texts:?}"
    );
}

#[tokio::test]
async fn heartbeat_timeout_disconnects_silent_clients() {
    let server = Server::start("[chat]\nheartbeat_interval_ms = 300\nheartbeat_timeout_ms = 1000\n");
    let mut silent = server.join("Silent").await;
    let mut pinger = server.join("Pinger").await;
    let started = std::time::Instant::now();
    let mut got_notice = false;
    loop {
        pinger.send("ping", json!({})).await;
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        if started.elapsed() > std::time::Duration::from_millis(2500) {
            break;
        }
    }
    loop {
        match silent.next_event().await {
            Event::Json(m) if m["text"] == "Disconnected: Heartbeat timeout (no ping received)" => {
                got_notice = true
            }
            Event::Json(_) => {}
            Event::Closed(frame) => {
                assert_eq!(u16::from(frame.expect("close frame").code), 1008);
                break;
            }
            Event::Timeout => panic!("no heartbeat timeout"),
        }
    }
    assert!(got_notice);
    pinger.expect_system("Silent has left.").await;
    // The pinging client is still connected.
    pinger.send("ping", json!({})).await;
    assert_eq!(pinger.recv_type("pong").await["type"], "pong");
}

#[tokio::test]
async fn connection_limits() {
    let server = Server::start("[limits]\ntotal_max_connections = 3\nmax_connections_per_ip = 2\n");
    let _a = server.join("UserA").await;
    let _b = server.join("UserB").await;
    let mut c = Client::connect(&server.url(Some("UserC"))).await;
    assert!(
        c.token.contains("Too many concurrent connections from this IP. Maximum allowed is 2."),
        "{}",
        c.token
    );
    c.expect_close().await;

    let server = Server::start("[limits]\ntotal_max_connections = 1\n");
    let _a = server.join("UserA").await;
    let b = Client::connect(&server.url(Some("UserB"))).await;
    assert!(b.token.contains("Server is full. Please try again later."), "{}", b.token);

    let server = Server::start("[limits]\nmax_connections_per_window = 2\nconnection_window_ms = 60000\n");
    for name in ["UserA", "UserB"] {
        drop(server.join(name).await);
    }
    let c = Client::connect(&server.url(Some("UserC"))).await;
    assert!(c.token.contains("Too many connections from this IP. Limit is 2 per 60 seconds."), "{}", c.token);
}

#[tokio::test]
async fn churn_guard_blocks_reconnect_loops() {
    let server = Server::start(
        "[limits.churn_guard]\nenabled = true\nwindow_ms = 10000\nmax_cycles = 3\nblock_duration_ms = 30000\n",
    );
    // Like the original, the max_cycles-th quick cycle starts the block.
    for i in 0..3 {
        let mut c = server.join(&format!("Loop{i}")).await;
        c.ws.close(None).await.unwrap();
        let _ = c.expect_close().await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut blocked = Client::connect(&server.url(Some("Again"))).await;
    assert!(
        blocked
            .token
            .contains("Your IP is temporarily blocked due to repeated reconnections. Try again in 30s."),
        "{}",
        blocked.token
    );
    let frame = blocked.expect_close().await.expect("close frame");
    assert_eq!(u16::from(frame.code), 1008);
}

#[tokio::test]
async fn forwarded_for_is_trusted_only_from_configured_proxies() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let server =
        Server::start("[server]\ntrusted_proxies = [\"127.0.0.1\"]\n[limits]\nmax_connections_per_ip = 1\n");
    let request = |ip: &str| {
        let mut request = server.url(Some("Proxied")).into_client_request().unwrap();
        request.headers_mut().insert("X-Forwarded-For", ip.parse().unwrap());
        request
    };
    let _first = Client::connect_with_request(request("198.51.100.1")).await;
    // A different forwarded client is not limited by the first one's connection...
    let mut second = Client::connect_with_request(request("198.51.100.2")).await;
    assert_eq!(second.token.len(), 64, "{}", second.token);
    second.recv_type("heartbeat-config").await;
    // ...but the same forwarded client is.
    let third = Client::connect_with_request(request("198.51.100.1")).await;
    assert!(third.token.contains("Too many concurrent connections"), "{}", third.token);

    let untrusted = Server::start("[limits]\nmax_connections_per_ip = 1\n");
    let with_header = |ip: &str| {
        let mut request = untrusted.url(None).into_client_request().unwrap();
        request.headers_mut().insert("X-Forwarded-For", ip.parse().unwrap());
        request
    };
    let _one = Client::connect_with_request(with_header("198.51.100.1")).await;
    let two = Client::connect_with_request(with_header("198.51.100.2")).await;
    assert!(two.token.contains("Too many concurrent connections"), "header must be ignored: {}", two.token);
}

#[tokio::test]
async fn server_info_and_info() {
    let server = Server::start("[server]\nserver_name = \"Test Server\"\n[turn]\nsecret = \"topsecret\"\n");
    let _alice = server.join("Alice").await;
    for path in ["/server-info", "/info"] {
        let (info, head) = server.get_json(path).await;
        assert!(head.to_ascii_lowercase().contains("access-control-allow-origin: *"), "{head}");
        assert_eq!(info["serverName"], "Test Server");
        assert_eq!(info["motd"], "Welcome");
        assert_eq!(info["port"], server.http.port());
        assert_eq!(info["authentication"], false);
        assert_eq!(info["maxMessagesPerSecond"], 3);
        assert_eq!(info["nickChangeCooldown"], 60000);
        assert_eq!(info["connectionLimits"]["maxConnectionsPerIP"], 200);
        assert_eq!(info["heartbeat"], json!({"interval": 30000, "timeout": 120000}));
        assert_eq!(info["webrtc"]["maxParticipants"], 8);
        assert_eq!(info["webrtc"]["forceRelay"], true);
        assert_eq!(info["currentStats"], json!({"connectedUsers": 1, "voiceParticipants": 0}));
        assert!(!info.to_string().contains("topsecret"));
    }
}

#[tokio::test]
async fn bad_input_never_hurts_anyone_else() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::Message;

    let server = Server::start("");
    let mut bystander = server.join("Bystander").await;

    let mut binary = server.join("Binary").await;
    binary.ws.send(Message::Binary(vec![0xff, 0x00, 0x01].into())).await.unwrap();
    binary.next_system("Invalid message format.").await;

    let mut utf8 = server.join("BadUtf8").await;
    let raw = Frame::message(vec![0x7b, 0xff, 0xfe, 0x7d], OpCode::Data(Data::Text), true);
    utf8.ws.send(Message::Frame(raw)).await.unwrap();
    let frame = utf8.expect_close().await;
    assert_eq!(frame.map(|f| u16::from(f.code)), Some(1007));

    let mut huge = server.join("Huge").await;
    huge.send_text(&format!("{{\"type\":\"chat\",\"content\":\"{}\"}}", "a".repeat(200_000))).await;
    let frame = huge.expect_close().await.expect("close frame");
    assert_eq!(u16::from(frame.code), 1009);
    assert!(frame.reason.contains("too big"), "{}", frame.reason);

    for name in ["BadUtf8", "Huge"] {
        bystander.expect_system(&format!("{name} has left.")).await;
    }
    binary.chat("still here").await;
    assert_eq!(bystander.recv_type("chat").await["text"], "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_disconnected_without_slowing_others() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    const TOTAL: usize = 6000;
    const BATCH: usize = 100;
    let server = Server::start("[chat]\nmax_messages_per_second = 100000\n");
    let mut fast = server.join("Fast").await;
    let slow = server.join("Slow").await; // never reads again
    fast.expect_system("Slow has joined.").await;
    let sender = server.join("Sender").await;
    fast.expect_system("Sender has joined.").await;
    let token = sender.token.clone();
    let (mut sink, mut stream) = sender.ws.split();
    let drain = tokio::spawn(async move { while stream.next().await.is_some() {} });
    // The reader reports progress; the sender never runs more than one batch ahead of it, so
    // a client that keeps reading is never the one that falls behind.
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0usize);
    let payload = "€".repeat(1700); // 5100 bytes, just under the 5 KB limit
    let sending = tokio::spawn(async move {
        for batch in 0..TOTAL / BATCH {
            for _ in 0..BATCH {
                let message = json!({"type": "chat", "token": token, "content": payload}).to_string();
                sink.send(Message::Text(message.into())).await.unwrap();
            }
            progress.wait_for(|&n| n >= batch * BATCH).await.unwrap();
        }
        sink
    });
    let mut received = 0;
    let mut slow_left = false;
    while received < TOTAL || !slow_left {
        let m = fast.recv().await;
        if m["type"] == "chat" {
            received += 1;
            progress_tx.send_replace(received);
        } else if m["text"] == "Slow has left." {
            slow_left = true;
        }
    }
    assert_eq!(received, TOTAL);
    let _sink = sending.await.unwrap();
    drop(slow);
    drain.abort();
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
