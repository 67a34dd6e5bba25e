//! Operator requests: what each one changes, who is told, what the reply says, and that timed
//! limits end on their own.

use std::time::Duration;

use serde_json::json;

use super::*;
use crate::turn::credentials::credential_for;

fn name(n: &str) -> String {
    n.to_string()
}

#[test]
fn sessions_list_names_and_voice_state_and_addresses_only_when_asked() {
    let mut h = Harness::new(|_| {});
    let alice = h.connect(Some("Alice"));
    h.advance(Duration::from_secs(5));
    let _bob = h.connect(Some("Bob"));
    join_voice(&mut h, alice, &["audio"]);
    let reply = h.admin(AdminRequest::Sessions { show_addresses: false }).unwrap();
    let sessions = reply["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    assert_eq!((&sessions[0]["name"], &sessions[0]["in_voice"]), (&json!("Alice"), &json!(true)));
    assert_eq!((&sessions[1]["name"], &sessions[1]["in_voice"]), (&json!("Bob"), &json!(false)));
    assert_eq!(sessions[0]["connected_for_s"], 5);
    assert!(sessions.iter().all(|s| s.get("address").is_none()), "{reply}");
    assert_eq!(reply["not_logged_in"], 0);
    let reply = h.admin(AdminRequest::Sessions { show_addresses: true }).unwrap();
    assert_eq!(reply["sessions"][0]["address"], "10.0.0.1");
    assert!(h.effects.is_empty(), "a listing changes nothing");
}

#[test]
fn rooms_list_voice_members_with_their_media() {
    let mut h = Harness::new(|_| {});
    let alice = h.connect(Some("Alice"));
    let bob = h.connect(Some("Bob"));
    join_voice(&mut h, alice, &["audio", "video"]);
    join_voice(&mut h, bob, &["audio"]);
    let reply = h.admin(AdminRequest::Rooms).unwrap();
    let room = &reply["rooms"][0];
    assert_eq!(room["name"], "voice");
    assert_eq!(room["max_participants"], 8);
    let members: Vec<(&str, &serde_json::Value)> = room["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap(), &m["media_types"]))
        .collect();
    assert_eq!(members, [("Alice", &json!(["audio", "video"])), ("Bob", &json!(["audio"]))]);
}

#[test]
fn kick_closes_the_socket_and_tells_everyone() {
    let mut h = Harness::new(|_| {});
    let alice = h.connect(Some("Alice"));
    let bob = h.connect(Some("Bob"));
    join_voice(&mut h, bob, &["audio"]);
    let reply = h.admin(AdminRequest::Kick { name: name("Bob") }).unwrap();
    assert_eq!(reply, json!({"kicked": "Bob", "was_in_voice": true}));
    assert_eq!(h.texts_to(bob)[0], "You have been kicked by the server operator.");
    assert_eq!(h.closed(bob), Some(CLOSE_POLICY));
    assert!(told_relay(&h, false, "Bob"));
    assert!(h.texts_to(alice).contains(&"Bob was kicked by the server operator.".to_string()));
    assert!(matches!(h.admin(AdminRequest::Kick { name: name("Bob") }), Err(AdminError::NotFound(_))));
    assert!(matches!(h.admin(AdminRequest::Kick { name: name("no") }), Err(AdminError::BadRequest(_))));
}

#[test]
fn a_timed_ban_keeps_the_name_out_until_it_ends_and_is_not_stored() {
    let mut h = Harness::new(|_| {});
    let bob = h.connect(Some("Bob"));
    let reply =
        h.admin(AdminRequest::Ban { name: name("Bob"), duration: Some(Duration::from_secs(60)) }).unwrap();
    assert_eq!(reply["was_online"], true);
    assert!(reply["until"].as_str().is_some());
    assert_eq!(h.closed(bob), Some(CLOSE_POLICY));
    assert!(!h.effects.iter().any(|e| matches!(e, Effect::SaveBan { .. })), "timed bans live in memory");
    assert!(matches!(
        h.admin(AdminRequest::Ban { name: name("Bob"), duration: None }),
        Err(AdminError::Conflict(_))
    ));
    let again = h.connect(Some("Bob"));
    assert_eq!(h.texts_to(again), ["You are banned."]);
    h.advance(Duration::from_secs(60));
    h.tick();
    let later = h.connect(Some("Bob"));
    assert!(h.texts_to(later).contains(&"Bob has joined.".to_string()));
}

#[test]
fn a_ban_without_duration_is_stored_and_unban_lifts_it() {
    let mut h = Harness::new(|_| {});
    let reply = h.admin(AdminRequest::Ban { name: name("Carol"), duration: None }).unwrap();
    assert_eq!(reply, json!({"banned": "Carol", "until": null, "was_online": false}));
    assert!(h.effects.contains(&Effect::SaveBan { name: name("Carol"), banned: true }));
    h.admin(AdminRequest::Unban { name: name("Carol") }).unwrap();
    assert!(h.effects.contains(&Effect::SaveBan { name: name("Carol"), banned: false }));
    assert!(matches!(h.admin(AdminRequest::Unban { name: name("Carol") }), Err(AdminError::NotFound(_))));
}

#[test]
fn a_muted_user_cannot_chat_until_the_mute_ends_but_commands_still_work() {
    let mut h = Harness::new(|_| {});
    let alice = h.connect(Some("Alice"));
    let bob = h.connect(Some("Bob"));
    h.admin(AdminRequest::Mute { name: name("Bob"), duration: Some(Duration::from_secs(30)) }).unwrap();
    assert!(h.texts_to(bob)[0].starts_with("You have been muted by the server operator until "));
    h.advance(Duration::from_secs(1));
    h.chat(bob, "hello");
    assert!(h.frames_to(alice).is_empty());
    assert!(h.texts_to(bob)[0].starts_with("You are muted by the server operator until "));
    assert!(!h.effects.iter().any(|e| matches!(e, Effect::Persist(_))));
    h.chat(bob, "/list");
    assert_eq!(h.texts_to(bob), ["Online users: Alice, Bob"]);
    let listed = h.admin(AdminRequest::Sessions { show_addresses: false }).unwrap();
    assert!(listed["sessions"][1]["muted_until"].is_string());
    h.advance(Duration::from_secs(30));
    h.chat(bob, "back");
    assert_eq!(h.frames_to(alice)[0]["text"], "back");
    // Without duration: until unmuted.
    h.admin(AdminRequest::Mute { name: name("Bob"), duration: None }).unwrap();
    h.advance(Duration::from_secs(3600));
    h.chat(bob, "still?");
    assert_eq!(h.texts_to(bob), ["You are muted by the server operator."]);
    h.admin(AdminRequest::Unmute { name: name("Bob") }).unwrap();
    assert_eq!(h.texts_to(bob), ["You are no longer muted."]);
    h.chat(bob, "free");
    assert_eq!(h.frames_to(alice)[0]["text"], "free");
}

#[test]
fn a_broadcast_reaches_everyone_as_a_stored_system_notice() {
    let mut h = Harness::new(|_| {});
    let alice = h.connect(Some("Alice"));
    let bob = h.connect(Some("Bob"));
    let reply = h.admin(AdminRequest::Broadcast { text: name("  Restart at 22:00  ") }).unwrap();
    assert_eq!(reply, json!({"delivered_to": 2}));
    for conn in [alice, bob] {
        let frames = h.frames_to(conn);
        assert_eq!(
            (&frames[0]["type"], &frames[0]["text"]),
            (&json!("system"), &json!("Server notice: Restart at 22:00"))
        );
    }
    assert!(h
        .effects
        .iter()
        .any(|e| matches!(e, Effect::Persist(entry) if entry.text == "Server notice: Restart at 22:00")));
    assert!(matches!(h.admin(AdminRequest::Broadcast { text: name(" ") }), Err(AdminError::BadRequest(_))));
    let long = "x".repeat(2001);
    assert!(matches!(h.admin(AdminRequest::Broadcast { text: long }), Err(AdminError::BadRequest(_))));
}

#[test]
fn revoking_turn_takes_the_user_out_of_voice_and_keeps_them_out_until_the_given_time() {
    let mut h = Harness::new(|_| {});
    let alice = h.connect(Some("Alice"));
    let bob = h.connect(Some("Bob"));
    join_voice(&mut h, alice, &["audio"]);
    join_voice(&mut h, bob, &["audio"]);
    let reply =
        h.admin(AdminRequest::RevokeTurn { name: name("Bob"), duration: Duration::from_secs(120) }).unwrap();
    assert_eq!(reply["removed_from_voice"], true);
    assert!(told_relay(&h, false, "Bob"), "the relay deletes what Bob holds");
    assert!(h.frames_to(alice).iter().any(|f| f["type"] == "webrtc-peer-left" && f["username"] == "Bob"));
    assert!(
        h.texts_to(bob)[0].starts_with("Your voice chat access was revoked by the server operator until ")
    );
    h.advance(Duration::from_secs(119));
    let frames = join_voice(&mut h, bob, &["audio"]);
    assert_eq!(frames[0]["type"], "webrtc-error");
    assert!(!told_relay(&h, true, "Bob"), "no new credentials while revoked");
    h.advance(Duration::from_secs(1));
    let frames = join_voice(&mut h, bob, &["audio"]);
    assert_eq!(frames[0]["type"], "webrtc-joined");
    // Someone not in voice can be revoked ahead (nothing to remove).
    let reply =
        h.admin(AdminRequest::RevokeTurn { name: name("Carol"), duration: Duration::from_secs(1) }).unwrap();
    assert_eq!(reply["removed_from_voice"], false);
}

#[test]
fn rotating_the_secret_pushes_credentials_signed_with_the_new_one_to_everyone_in_voice() {
    let mut h = Harness::new(|_| {});
    let alice = h.connect(Some("Alice"));
    let bob = h.connect(Some("Bob"));
    join_voice(&mut h, alice, &["audio"]);
    let reply = h.admin(AdminRequest::RotateTurnSecret { secret: b"rotated".to_vec() }).unwrap();
    assert_eq!(reply, json!({"credentials_pushed_to": 1}));
    let push = &h.frames_to(alice)[0];
    assert_eq!(push["type"], "webrtc-credentials");
    let server = &push["iceServers"][0];
    let username = server["username"].as_str().unwrap();
    assert_eq!(server["credential"], credential_for(b"rotated", username));
    assert!(h.frames_to(bob).is_empty(), "only voice participants get credentials");
    // And whoever joins later gets the new secret's too.
    let frames = join_voice(&mut h, bob, &["audio"]);
    let server = &frames[0]["config"]["iceServers"][0];
    assert_eq!(server["credential"], credential_for(b"rotated", server["username"].as_str().unwrap()));
}

#[test]
fn a_rotation_request_never_prints_its_secret() {
    let request = AdminRequest::RotateTurnSecret { secret: b"do-not-print-me".to_vec() };
    assert!(!format!("{request:?}").contains("do-not-print-me"));
    assert!(!format!("{request:?}").contains("100, 111"), "nor as bytes");
}

#[test]
fn rotation_without_the_integrated_relay_is_refused() {
    let mut h = Harness::new(|_| {});
    h.hub.ice.endpoints = TurnEndpoints::None;
    assert!(matches!(
        h.admin(AdminRequest::RotateTurnSecret { secret: b"x".to_vec() }),
        Err(AdminError::Conflict(_))
    ));
}

#[test]
fn a_chat_unban_ends_a_timed_ban_so_its_timer_cannot_lift_a_later_ban() {
    let mut h = Harness::new(|s| {
        s.chat.authentication = true;
        s.chat.admins = vec!["Root".into()];
    });
    h.admin(AdminRequest::Ban { name: name("Bob"), duration: Some(Duration::from_secs(60)) }).unwrap();
    let root = h.connect(None);
    h.chat(root, "/login Root password123");
    h.effects = h.hub.login_checked(root, name("Root"), true, h.now);
    h.chat(root, "/unban Bob");
    assert!(h.texts_to(root).contains(&"Bob has been unbanned.".to_string()), "{:?}", h.texts_to(root));
    h.chat(root, "/ban Bob");
    assert!(h.effects.contains(&Effect::SaveBan { name: name("Bob"), banned: true }));
    h.advance(Duration::from_secs(61));
    h.tick();
    assert!(
        matches!(
            h.admin(AdminRequest::Ban { name: name("Bob"), duration: None }),
            Err(AdminError::Conflict(_))
        ),
        "the stored ban outlived the old timer"
    );
}

#[test]
fn a_muted_or_revoked_user_cannot_shed_it_with_a_new_nick() {
    let mut h = Harness::new(|s| s.chat.nick_change_cooldown_ms = 0);
    let bob = h.connect(Some("Bob"));
    h.admin(AdminRequest::Mute { name: name("Bob"), duration: Some(Duration::from_secs(60)) }).unwrap();
    h.chat(bob, "/nick Robert");
    assert_eq!(h.texts_to(bob), ["You cannot change your nickname while restricted by the server operator."]);
    h.admin(AdminRequest::Unmute { name: name("Bob") }).unwrap();
    h.admin(AdminRequest::RevokeTurn { name: name("Bob"), duration: Duration::from_secs(60) }).unwrap();
    h.chat(bob, "/nick Robert");
    assert_eq!(h.texts_to(bob), ["You cannot change your nickname while restricted by the server operator."]);
    h.advance(Duration::from_secs(60));
    h.chat(bob, "/nick Robert");
    assert_eq!(h.texts_to(bob), ["Bob is now Robert"]);
}

#[test]
fn the_voice_revocation_record_is_capped_and_drops_the_oldest_first() {
    use crate::hub::operator_limits::MAX_VOICE_REVOCATIONS;
    let mut h = Harness::new(|_| {});
    let revoke = |h: &mut Harness, n: &str| {
        h.admin(AdminRequest::RevokeTurn { name: name(n), duration: Duration::from_secs(3600) }).unwrap();
        h.advance(Duration::from_millis(1));
    };
    // Filled directly (the same path the operator request takes, without its reply and
    // notices), into a map sized once: this test then frees next to nothing while it runs,
    // which memory::tests, measuring the process's heap meanwhile, relies on.
    h.hub.voice_revoked.reserve(MAX_VOICE_REVOCATIONS + 1);
    for i in 0..MAX_VOICE_REVOCATIONS {
        let (now, until) = (h.now, Until::after(h.now, Duration::from_secs(3600)));
        h.hub.revoke_voice(format!("user{i}"), until, now);
        h.advance(Duration::from_millis(1));
    }
    assert_eq!(h.hub.voice_revoked.len(), MAX_VOICE_REVOCATIONS);
    // Revoking someone already on record again does not push anyone out.
    revoke(&mut h, "user5");
    assert!(h.hub.voice_revoked.contains_key("user0"));
    // A new name at the cap drops the oldest revocation (user0), nobody else.
    revoke(&mut h, "newcomer");
    assert_eq!(h.hub.voice_revoked.len(), MAX_VOICE_REVOCATIONS);
    assert!(!h.hub.voice_revoked.contains_key("user0"));
    assert!(h.hub.voice_revoked.contains_key("user1") && h.hub.voice_revoked.contains_key("newcomer"));
    // The dropped one may join voice again; the others are still kept out.
    let user0 = h.connect(Some("user0"));
    assert_eq!(join_voice(&mut h, user0, &["audio"])[0]["type"], "webrtc-joined");
    let user1 = h.connect(Some("user1"));
    assert_eq!(join_voice(&mut h, user1, &["audio"])[0]["type"], "webrtc-error");
}
