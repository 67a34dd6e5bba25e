//! Connection sequence, persistence before delivery, heartbeat, the login gate, shutdown.

use std::time::Duration;

use serde_json::json;

use super::*;
use crate::protocol::parse_inbound;

#[test]
fn open_mode_welcome_sequence_in_order() {
    let mut h = Harness::new(|_| {});
    let alice = h.connect(Some("Alice"));
    let frames = h.frames_to(alice);
    let kinds: Vec<&str> = frames.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["session-token", "heartbeat-config", "history", "system", "system"]);
    assert_eq!(frames[2]["messages"], json!([]));
    assert_eq!(frames[3]["text"], "MOTD: Welcome");
    assert_eq!(frames[4]["text"], "Alice has joined.");
    assert!(
        matches!(&h.effects[..], [.., Effect::Persist(e), Effect::Broadcast { .. }] if e.text == "Alice has joined.")
    );
}

#[test]
fn chat_is_persisted_before_it_is_delivered() {
    let mut h = Harness::new(|_| {});
    let alice = h.connect(Some("Alice"));
    let bob = h.connect(Some("Bob"));
    h.chat(alice, "hello");
    let persist_at = h.effects.iter().position(|e| matches!(e, Effect::Persist(_))).unwrap();
    let first_send =
        h.effects.iter().position(|e| matches!(e, Effect::Send { .. } | Effect::Broadcast { .. })).unwrap();
    assert!(persist_at < first_send);
    assert_eq!(h.frames_to(bob)[0]["text"], "hello");
    assert_eq!(h.frames_to(alice)[0]["username"], "Alice");
}

#[test]
fn heartbeat_timeout_closes_with_1008_and_tells_the_others() {
    let mut h = Harness::new(|s| s.chat.heartbeat_timeout_ms = 5000);
    let alice = h.connect(Some("Alice"));
    let bob = h.connect(Some("Bob"));
    h.advance(Duration::from_millis(4000));
    h.send(bob, json!({"type": "ping"}));
    assert_eq!(h.frames_to(bob).len(), 1, "exactly one pong");
    h.advance(Duration::from_millis(1000));
    h.tick();
    assert_eq!(h.texts_to(alice), ["Disconnected: Heartbeat timeout (no ping received)"]);
    assert_eq!(h.closed(alice), Some(CLOSE_POLICY));
    assert_eq!(h.texts_to(bob), ["Alice has left."]);
    assert_eq!(h.closed(bob), None);
}

#[test]
fn before_login_only_chat_and_ping_are_understood() {
    let mut h = Harness::new(|s| s.chat.authentication = true);
    let guest = h.connect(None);
    for message in [json!({"type": "typing"}), json!({"type": "webrtc-join"}), json!({"type": "chat"})] {
        h.send(guest, message.clone());
        assert_eq!(
            h.texts_to(guest),
            ["Please authenticate first using /register or /login commands in message content."],
            "{message}"
        );
    }
    h.effects = h.hub.message(guest, parse_inbound("not json"), h.now);
    assert_eq!(h.texts_to(guest), ["Invalid message format. Must be JSON."]);
    // The failure that starts the block still says "Login failed."; the next one is refused.
    for _ in 0..5 {
        h.effects = h.hub.login_checked(guest, "Zed".into(), false, h.now);
        assert_eq!(h.texts_to(guest), ["Login failed."]);
    }
    h.chat(guest, "/login Zed password123");
    assert_eq!(h.texts_to(guest), ["Too many failed attempts. Blocked for 1 hour."]);
}

#[test]
fn messages_from_unknown_or_refused_connections_are_ignored() {
    let mut h = Harness::new(|s| s.limits.total_max_connections = 1);
    let _alice = h.connect(Some("Alice"));
    let refused = h.connect(Some("Bob"));
    assert_eq!(h.texts_to(refused), ["Server is full. Please try again later."]);
    h.chat(refused, "hello");
    assert!(h.effects.is_empty());
    h.effects = h.hub.disconnect(refused, h.now);
    assert!(h.effects.is_empty());
}

#[test]
fn shutdown_announces_everyone_to_everyone() {
    let mut h = Harness::new(|_| {});
    let alice = h.connect(Some("Alice"));
    let bob = h.connect(Some("Bob"));
    join_voice(&mut h, bob, &["audio"]);
    h.effects = h.hub.shutdown(h.now);
    for conn in [alice, bob] {
        assert_eq!(
            h.texts_to(conn),
            ["Alice has left. (Server Shutdown)", "Bob has left. (Server Shutdown)"]
        );
        assert_eq!(h.closed(conn), Some(CLOSE_GOING_AWAY));
    }
    assert!(told_relay(&h, false, "Bob"));
    assert_eq!(h.hub.stats(), Stats::default());
}
