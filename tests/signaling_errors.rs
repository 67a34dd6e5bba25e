//! Every refusal of a `webrtc-*` message against the real binary: the exact `webrtc-error`
//! text (and that the connection stays up and nobody else hears of it), or, for candidates, the
//! silent drop: WebRTC disabled, bad session tokens, unknown types, not or already in the room,
//! invalid offers and answers, targets outside the room, malformed or oversized candidates.

mod common;

use common::sdp::{sdp_of_len, PLAIN_SDP};
use common::voice::{answer, candidate, expect_candidate, expect_error, offer, relay, room, send_candidate};
use common::{expect_only_pong, Server};
use serde_json::{json, Value};

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
