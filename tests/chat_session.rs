//! A chat session against the real binary (PROTOCOL.md sections 1-4 and 8): the connection
//! sequence, username rules, chat, typing and ping, every bad-input reply, the heartbeat timeout,
//! and the `/server-info` a client reads first.

mod common;

use common::{expect_only_pong, is_iso_timestamp, Client, Event, Server};
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
    // Room for every chat below in one second (the rate limit has its own tests).
    let server = Server::start("[chat]\nmax_messages_per_second = 50\n");
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

    // The hub handles a connection's messages in order: no typing echo and nothing for "   "
    // came before the pong.
    alice.send("ping", json!({})).await;
    let pong = alice.recv().await;
    assert_eq!(pong["type"], "pong");
    assert!(is_iso_timestamp(&pong["timestamp"]));
    expect_only_pong(&mut alice).await; // one pong per ping
    expect_only_pong(&mut bob).await; // the typing frame was all

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

#[tokio::test]
async fn heartbeat_timeout_disconnects_silent_clients() {
    let server = Server::start("[chat]\nheartbeat_interval_ms = 300\nheartbeat_timeout_ms = 1000\n");
    let mut silent = server.join("Silent").await;
    let mut pinger = server.join("Pinger").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut got_notice = false;
    // The pinger pings every 250 ms (well inside the timeout) until the silent one is cut off.
    loop {
        pinger.send("ping", json!({})).await;
        let Ok(event) =
            tokio::time::timeout(std::time::Duration::from_millis(250), silent.next_event()).await
        else {
            assert!(std::time::Instant::now() < deadline, "no heartbeat timeout");
            continue;
        };
        match event {
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
