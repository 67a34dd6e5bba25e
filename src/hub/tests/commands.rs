//! Slash commands: their reply texts (the original server's), the nick cooldown, and that
//! unknown `/words` are plain chat.

use std::time::Duration;

use serde_json::json;

use super::*;

#[test]
fn nick_cooldown_uses_the_clock() {
    let mut h = Harness::new(|s| s.chat.nick_change_cooldown_ms = 10_000);
    let alice = h.connect(Some("Alice"));
    h.chat(alice, "/nick Alicia");
    assert_eq!(h.texts_to(alice), ["Alice is now Alicia"]);
    h.advance(Duration::from_secs(4));
    h.chat(alice, "/nick Ally");
    assert_eq!(
        h.texts_to(alice),
        ["You can only change your nickname once every 10 seconds. Please wait 6 more seconds."]
    );
    h.advance(Duration::from_secs(6));
    h.chat(alice, "/nick Ally");
    assert_eq!(h.texts_to(alice), ["Alicia is now Ally"]);
}

#[test]
fn unknown_slash_commands_are_chat_for_everyone() {
    let mut h = Harness::new(|s| s.chat.max_messages_per_second = 100);
    let alice = h.connect(Some("Alice"));
    let bob = h.connect(Some("Bob"));
    for text in ["/roll 2d6", "/list everyone", "/help me", "/nickname"] {
        h.chat(alice, text);
        for conn in [alice, bob] {
            let frames = h.frames_to(conn);
            assert_eq!(frames.len(), 1, "{text}: {frames:?}");
            assert_eq!(
                (&frames[0]["type"], &frames[0]["username"], &frames[0]["text"]),
                (&json!("chat"), &json!("Alice"), &json!(text))
            );
        }
        assert!(h.effects.iter().any(|e| matches!(e, Effect::Persist(entry) if entry.text == text)));
    }
    // Built-ins are still commands, and a logged-in "/login" is never broadcast (a password).
    h.chat(alice, "/login Alice secret123");
    assert_eq!(h.texts_to(alice), ["You are already logged in."]);
    assert!(h.frames_to(bob).is_empty());
}

#[test]
fn nick_texts_are_the_originals() {
    let mut h = Harness::new(|s| {
        s.chat.nick_change_cooldown_ms = 1500;
        s.chat.max_messages_per_second = 100;
    });
    let alice = h.connect(Some("Alice"));
    let _bob = h.connect(Some("Bob"));
    for (command, reply) in [
        ("/nick Bob", "Username \"Bob\" is already taken."),
        ("/nick Alice", "Username \"Alice\" is already taken."),
        ("/nick a!", "Illegal username. Must be 3-20 characters, only letters, digits, underscore, dash."),
        (
            "/nick Foo Bar",
            "Illegal username. Must be 3-20 characters, only letters, digits, underscore, dash.",
        ),
        ("/nick ThisNameIsWayTooLongForUs", "Alice is now ThisNameIsWayTooLong"),
        (
            "/nick Other",
            "You can only change your nickname once every 1.5 seconds. Please wait 2 more seconds.",
        ),
    ] {
        h.chat(alice, command);
        assert_eq!(h.texts_to(alice), [reply], "{command}");
    }
}

#[test]
fn block_and_unblock_texts_are_the_originals() {
    let mut h = Harness::new(|s| s.chat.max_messages_per_second = 100);
    let alice = h.connect(Some("Alice"));
    let bob = h.connect(Some("Bob"));
    for (command, reply) in [
        ("/block", "Usage: /block <username>"),
        ("/block ALICE", "You cannot block yourself."),
        ("/block Nobody", "User \"nobody\" not found."),
        ("/block BOB", "You have blocked Bob for 12 hours."),
        ("/list", "Online users: Alice, [B]Bob"),
        ("/unblock", "Usage: /unblock <username>"),
        ("/unblock Nobody", "nobody was not blocked."),
        ("/unblock bob", "You have unblocked Bob."),
        ("/unblock bob", "bob was not blocked."),
    ] {
        h.chat(alice, command);
        assert_eq!(h.texts_to(alice), [reply], "{command}");
    }
    // A block outlives the blocked user's connection and can still be lifted.
    h.chat(alice, "/block Bob");
    h.effects = h.hub.disconnect(bob, h.now);
    h.chat(alice, "/unblock bob");
    assert_eq!(h.texts_to(alice), ["You have unblocked Bob."]);
}

#[test]
fn a_block_list_is_bounded_and_forgets_expired_blocks() {
    use crate::hub::commands::MAX_BLOCKED;
    let mut h = Harness::new(|s| s.chat.max_messages_per_second = 100_000);
    let alice = h.connect(Some("Alice"));
    let others: Vec<_> = (0..MAX_BLOCKED + 10).map(|i| h.connect(Some(&format!("User{i}")))).collect();
    for i in 0..MAX_BLOCKED + 10 {
        h.chat(alice, &format!("/block User{i}"));
        h.now.mono += std::time::Duration::from_millis(10);
    }
    h.texts_to(alice);
    let blocked = |h: &Harness| h.hub.connections[&alice].blocked.len();
    assert_eq!(blocked(&h), MAX_BLOCKED);
    // The first blocks (closest to expiring) made room for the last ones.
    h.chat(alice, "/unblock User0");
    assert_eq!(h.texts_to(alice), ["user0 was not blocked."]);
    h.chat(alice, &format!("/unblock User{}", MAX_BLOCKED + 9));
    assert_eq!(h.texts_to(alice), [format!("You have unblocked User{}.", MAX_BLOCKED + 9)]);
    // Twelve hours later the next block sweeps every expired one away.
    h.now.mono += std::time::Duration::from_secs(12 * 3600 + 60);
    h.chat(alice, "/block User5");
    assert_eq!(blocked(&h), 1);
    drop(others);
}

#[test]
fn moderation_texts_are_the_originals() {
    let mut h = Harness::new(|s| {
        s.chat.max_messages_per_second = 100;
        s.chat.authentication = true;
        s.chat.admins = vec!["Admin".into()];
    });
    let admin = h.connect(None);
    h.effects = h.hub.login_checked(admin, "Admin".into(), true, h.now);
    let mallory = h.connect(None);
    h.effects = h.hub.login_checked(mallory, "Mallory".into(), true, h.now);
    for (command, reply) in [
        ("/kick", vec!["Please specify a username to kick."]),
        ("/kick a!", vec!["Illegal username in /kick command."]),
        ("/kick Admin", vec!["User \"Admin\" not found."]),
        ("/kick Nobody", vec!["User \"Nobody\" not found."]),
        ("/ban", vec!["Please specify a username to ban."]),
        ("/ban a!", vec!["Illegal username in /ban command."]),
        ("/ban Ghost", vec!["Ghost was banned by Admin.", "User \"Ghost\" is now banned."]),
        ("/ban Ghost", vec!["Ghost is already banned."]),
        ("/unban", vec!["Please specify a username to unban."]),
        ("/unban a!", vec!["Illegal username in /unban command."]),
        ("/unban Nobody", vec!["Nobody is not banned."]),
        ("/unban Ghost", vec!["Ghost has been unbanned.", "Ghost was unbanned by Admin."]),
    ] {
        h.chat(admin, command);
        assert_eq!(h.texts_to(admin), reply, "{command}");
    }
    h.chat(mallory, "/kick Admin");
    assert_eq!(h.texts_to(mallory), ["You do not have permission to use /kick."]);
    h.chat(admin, "/kick Mallory");
    assert_eq!(h.texts_to(mallory)[0], "You have been kicked by an admin.");
    assert_eq!(h.closed(mallory), Some(CLOSE_POLICY));
    assert_eq!(h.texts_to(admin), ["Mallory was kicked by Admin.", "Mallory has left."]);
}
