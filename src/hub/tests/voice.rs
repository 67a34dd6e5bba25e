//! The voice room: joining hands out TURN credentials bound to the voice session, they are
//! refreshed before they expire, and every way of leaving tells the peers and the relay.

use std::time::Duration;

use serde_json::{json, Value};

use super::*;
use crate::turn::credentials::credential_for;

#[test]
fn voice_join_hands_out_verifiable_relay_credentials() {
    let mut h = Harness::new(|_| {});
    let alice = h.connect(Some("Alice"));
    let frames = join_voice(&mut h, alice, &["audio", "video", "screen", "audio"]);
    assert!(told_relay(&h, true, "Alice"));
    let joined = &frames[0];
    assert_eq!(joined["participants"], json!([{"username": "Alice", "mediaTypes": ["audio", "video"]}]));
    let config = &joined["config"];
    assert_eq!(config["forceRelay"], true);
    assert_eq!(config["iceTransportPolicy"], "relay");
    assert_eq!(config["credentialTtl"], 600);
    let server = &config["iceServers"][0];
    assert_eq!(
        server["urls"],
        json!(["turn:chat.example.org:3478?transport=udp", "turn:chat.example.org:3478?transport=tcp"])
    );
    let username = server["username"].as_str().unwrap();
    let (expiry, turn_user) = username.split_once(':').unwrap();
    assert_eq!(expiry, (h.now.unix() + 600).to_string());
    let tag = turn_user.strip_prefix("Alice:").expect("<expiry>:<name>:<session tag>");
    assert!(tag.len() == 8 && tag.bytes().all(|b| b.is_ascii_hexdigit()), "{username}");
    assert_eq!(server["credential"], credential_for(b"secret", username));
    assert_eq!(frames[1]["text"], "Alice joined voice chat");
}

#[test]
fn credentials_are_pushed_again_at_80_percent_of_the_ttl() {
    let mut h = Harness::new(|s| s.turn.credential_ttl_s = 100);
    let alice = h.connect(Some("Alice"));
    join_voice(&mut h, alice, &["audio"]);
    h.advance(Duration::from_secs(79));
    h.tick();
    assert!(h.frames_to(alice).is_empty());
    h.advance(Duration::from_secs(1));
    h.tick();
    let push = &h.frames_to(alice)[0];
    assert_eq!(push["type"], "webrtc-credentials");
    assert_eq!(push["credentialTtl"], 100);
    assert!(push["iceServers"][0]["username"]
        .as_str()
        .unwrap()
        .starts_with(&format!("{}:Alice:", h.now.unix() + 100)));
}

/// The expiry is whole unix seconds and the relay refuses a credential from the start of that
/// second, so a short credential issued late in a second lives well under its TTL (here 1.2 s of
/// 2). The push must still come before it dies, every time, and only to voice participants.
#[test]
fn short_credentials_issued_late_in_a_second_are_refreshed_before_they_expire() {
    let mut h = Harness::new(|s| s.turn.credential_ttl_s = 2);
    h.now.wall = chrono::DateTime::from_timestamp_millis(1_800_000_000_800).unwrap();
    let alice = h.connect(Some("Alice"));
    let bob = h.connect(Some("Bob")); // online, not in voice
    let expiry_of = |ice: &Value| -> i64 {
        let username = ice["iceServers"][0]["username"].as_str().unwrap();
        username.split_once(':').unwrap().0.parse().unwrap()
    };
    let joined = join_voice(&mut h, alice, &["audio"]);
    let mut expiry = expiry_of(&joined[0]["config"]);
    assert_eq!(expiry, 1_800_000_002);
    for _ in 0..2 {
        // Tick as the runner does (more often, to see when the push first comes).
        let push = loop {
            assert!(h.now.wall.timestamp() < expiry, "no refresh before the expiry at {expiry}");
            h.advance(Duration::from_millis(50));
            h.tick();
            assert!(h.frames_to(bob).is_empty(), "only voice participants get credentials");
            if let Some(push) = h.frames_to(alice).into_iter().next() {
                break push;
            }
        };
        assert_eq!(push["type"], "webrtc-credentials");
        assert_eq!(push["credentialTtl"], 2);
        let pushed_at = h.now.wall.timestamp_millis();
        assert!(
            pushed_at <= expiry * 1000 - 500,
            "pushed at {pushed_at} ms: less than half a second (two runner ticks) before {expiry}"
        );
        let fresh = expiry_of(&push);
        assert!(fresh > expiry, "fresh credentials: {fresh} after {expiry}");
        expiry = fresh;
    }
    // Out of the room: no more credentials.
    h.send(alice, json!({"type": "webrtc-leave"}));
    for _ in 0..100 {
        h.advance(Duration::from_millis(50));
        h.tick();
        assert!(h.frames_to(alice).is_empty(), "{:?}", h.frames_to(alice));
    }
}

#[test]
fn heartbeat_timeout_of_a_participant_leaves_voice_before_the_chat() {
    let mut h = Harness::new(|s| s.chat.heartbeat_timeout_ms = 5000);
    let alice = h.connect(Some("Alice"));
    let silent = h.connect(Some("Silent"));
    join_voice(&mut h, alice, &["audio"]);
    join_voice(&mut h, silent, &["audio"]);
    h.advance(Duration::from_millis(4000));
    h.send(alice, json!({"type": "ping"}));
    h.advance(Duration::from_millis(1000));
    h.tick();
    assert_eq!(h.closed(silent), Some(CLOSE_POLICY));
    assert!(told_relay(&h, false, "Silent"));
    assert_eq!(
        h.frames_to(alice),
        [
            json!({"type": "webrtc-peer-left", "username": "Silent"}),
            json!({"type": "system", "text": "Silent left voice chat"}),
            json!({"type": "system", "text": "Silent has left."}),
        ]
    );
    assert_eq!(h.hub.stats(), Stats { connected_users: 1, voice_participants: 1 });
}

#[test]
fn turn_credentials_are_bound_to_the_voice_session_not_the_name() {
    let mut h = Harness::new(|_| {});
    let alice = h.connect(Some("Alice"));
    let user_of = |h: &Harness, conn| -> String {
        let joined = h.frames_to(conn).into_iter().find(|f| f["type"] == "webrtc-joined").unwrap();
        let username = joined["config"]["iceServers"][0]["username"].as_str().unwrap().to_string();
        username.split_once(':').unwrap().1.to_string()
    };
    h.send(alice, json!({"type": "webrtc-join"}));
    let first = user_of(&h, alice);
    assert!(h.effects.contains(&Effect::VoiceJoined { turn_user: first.clone() }));
    // Alice goes; someone else takes the name and joins: another TURN user, and the relay is
    // told the first one left, so the first credential is not live again.
    h.effects = h.hub.disconnect(alice, h.now);
    assert!(h.effects.contains(&Effect::VoiceLeft { turn_user: first.clone() }));
    let mallory = h.connect(Some("Alice"));
    h.send(mallory, json!({"type": "webrtc-join"}));
    let second = user_of(&h, mallory);
    assert!(second.starts_with("Alice:") && second != first, "{first} / {second}");
}

#[test]
fn disconnect_leaves_voice_and_tells_the_relay() {
    let mut h = Harness::new(|_| {});
    let alice = h.connect(Some("Alice"));
    let bob = h.connect(Some("Bob"));
    join_voice(&mut h, alice, &["audio"]);
    join_voice(&mut h, bob, &["audio"]);
    h.effects = h.hub.disconnect(bob, h.now);
    assert!(told_relay(&h, false, "Bob"));
    let frames = h.frames_to(alice);
    assert_eq!(frames[0], json!({"type": "webrtc-peer-left", "username": "Bob"}));
    assert_eq!(frames[1]["text"], "Bob left voice chat");
    assert_eq!(frames[2]["text"], "Bob has left.");
    assert_eq!(h.hub.stats(), Stats { connected_users: 1, voice_participants: 1 });
}

#[test]
fn a_banned_admin_target_leaves_voice_and_is_closed() {
    let mut h = Harness::new(|s| {
        s.chat.authentication = true;
        s.chat.admins = vec!["Admin".into()];
    });
    let admin = h.connect(None);
    h.effects = h.hub.login_checked(admin, "Admin".into(), true, h.now);
    let mallory = h.connect(None);
    h.chat(mallory, "/login Mallory password123");
    assert!(matches!(&h.effects[..], [Effect::CheckLogin { name, .. }] if name == "Mallory"));
    h.effects = h.hub.login_checked(mallory, "Mallory".into(), true, h.now);
    join_voice(&mut h, mallory, &["audio"]);
    join_voice(&mut h, admin, &["audio"]);
    h.chat(admin, "/ban Mallory");
    assert!(h.effects.contains(&Effect::SaveBan { name: "Mallory".into(), banned: true }));
    assert!(told_relay(&h, false, "Mallory"));
    assert_eq!(h.closed(mallory), Some(CLOSE_POLICY));
    assert_eq!(
        h.texts_to(admin),
        ["Mallory was banned by Admin.", "Mallory left voice chat", "Mallory has left."]
    );
    let again = h.connect(None);
    h.effects = h.hub.login_checked(again, "Mallory".into(), true, h.now);
    assert_eq!(h.texts_to(again), ["You are banned."]);
}
