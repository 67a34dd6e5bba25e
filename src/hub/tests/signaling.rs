//! Offers, answers and candidates between peers: rebuilt under relay-only, relayed as sent
//! without it, and candidates sent with `buffer: true` held until the pair's answer.

use serde_json::json;

use super::*;
use crate::hub::relay_only::{DropReason, SanitizedField};

#[test]
fn force_relay_rebuilds_candidates_objects_and_sdp() {
    let mut h = Harness::new(|_| {});
    let alice = h.connect(Some("Alice"));
    let bob = h.connect(Some("Bob"));
    join_voice(&mut h, alice, &["audio"]);
    join_voice(&mut h, bob, &["audio"]);
    let candidate = |c: &str| json!({"type": "webrtc-ice-candidate", "targetUsername": "Bob", "candidate": {"candidate": c, "sdpMid": "0"}});
    // Host, and a host address disguised as a relay: nothing reaches Bob.
    h.send(alice, candidate("candidate:1 1 udp 2122260223 192.168.1.5 54321 typ host"));
    h.send(alice, candidate("candidate:3 1 udp 41885439 192.168.1.5 50000 typ relay"));
    assert!(h.frames_to(bob).is_empty());
    // Our relay, from a client that ignored the relay-only policy: its raddr is its own address.
    let leaky =
        "candidate:2 1 udp 41885439 127.0.0.1 50000 typ relay raddr 192.168.1.5 rport 54321 generation 0";
    h.send(
        alice,
        json!({"type": "webrtc-ice-candidate", "targetUsername": "Bob",
               "candidate": {"candidate": leaky, "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "Yx3f",
                             "relatedAddress": "192.168.1.5", "address": "192.168.1.5"}}),
    );
    let rebuilt = "candidate:2 1 udp 41885439 127.0.0.1 50000 typ relay raddr 0.0.0.0 rport 0 generation 0";
    assert_eq!(
        h.frames_to(bob),
        [json!({"type": "webrtc-ice-candidate", "fromUsername": "Alice",
                "candidate": {"candidate": rebuilt, "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "Yx3f"}})]
    );
    let sdp = format!(
        "v=0\r\no=- 42 2 IN IP4 192.168.1.5\r\nc=IN IP4 192.168.1.5\r\na=rtcp:9 IN IP4 192.168.1.5\r\n\
         a=candidate:1 1 udp 2122260223 192.168.1.5 54321 typ host\r\na={leaky}\r\n"
    );
    h.send(
        alice,
        json!({"type": "webrtc-offer", "targetUsername": "Bob", "offer": {"type": "offer", "sdp": sdp, "address": "192.168.1.5"}}),
    );
    assert_eq!(
        h.frames_to(bob)[0]["offer"],
        json!({"type": "offer", "sdp": format!(
            "v=0\r\no=- 42 2 IN IP4 0.0.0.0\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\na={rebuilt}\r\n")})
    );
    // An SDP whose origin cannot be rebuilt is refused like any invalid offer.
    h.send(
        alice,
        json!({"type": "webrtc-offer", "targetUsername": "Bob", "offer": {"type": "offer", "sdp": "v=0\r\no=x\r\n"}}),
    );
    assert!(h.frames_to(bob).is_empty());
    assert_eq!(h.frames_to(alice)[0]["error"], "Invalid offer data");
    let tally = h.hub.privacy_tally();
    assert_eq!(tally.dropped(DropReason::NotRelay), 2);
    assert_eq!(tally.dropped(DropReason::NotOurRelay), 1);
    assert_eq!(tally.sanitized(SanitizedField::RelatedAddress), 2);
    assert_eq!(tally.sanitized(SanitizedField::ObjectKey), 3);
}

#[test]
fn without_force_relay_signaling_is_relayed_as_sent() {
    let mut h = Harness::new(|s| s.webrtc.force_relay = false);
    let alice = h.connect(Some("Alice"));
    let bob = h.connect(Some("Bob"));
    join_voice(&mut h, alice, &["audio"]);
    join_voice(&mut h, bob, &["audio"]);
    let object = json!({"candidate": "candidate:1 1 udp 2122260223 192.168.1.5 54321 typ host", "sdpMid": "0", "x": 1});
    h.send(alice, json!({"type": "webrtc-ice-candidate", "targetUsername": "Bob", "candidate": object}));
    assert_eq!(h.frames_to(bob)[0]["candidate"], object);
    assert_eq!(h.hub.privacy_tally(), Default::default());
}

#[test]
fn buffered_candidates_flush_both_ways_after_an_answer_and_are_capped() {
    let mut h = Harness::new(|s| s.webrtc.force_relay = false);
    let alice = h.connect(Some("Alice"));
    let bob = h.connect(Some("Bob"));
    join_voice(&mut h, alice, &["audio"]);
    join_voice(&mut h, bob, &["audio"]);
    let candidate = |i: usize| json!({"candidate": format!("candidate:{i} 1 udp 1 10.0.0.1 {i} typ host")});
    for i in 0..(MAX_BUFFERED + 1) {
        h.send(bob, json!({"type": "webrtc-ice-candidate", "targetUsername": "Alice", "candidate": candidate(i), "buffer": true}));
        assert!(h.frames_to(alice).is_empty());
    }
    h.send(alice, json!({"type": "webrtc-ice-candidate", "targetUsername": "Bob", "candidate": candidate(999), "buffer": true}));
    h.send(
        alice,
        json!({"type": "webrtc-answer", "targetUsername": "Bob", "answer": {"type": "answer", "sdp": "v=0"}}),
    );
    let to_alice = h.frames_to(alice);
    assert_eq!(to_alice.len(), MAX_BUFFERED);
    assert_eq!(to_alice[0]["candidate"], candidate(1), "the oldest was dropped");
    assert_eq!(to_alice[MAX_BUFFERED - 1]["candidate"], candidate(MAX_BUFFERED));
    let to_bob = h.frames_to(bob);
    assert_eq!(to_bob[0]["type"], "webrtc-answer");
    assert_eq!(to_bob[1]["candidate"], candidate(999));
}

#[test]
fn a_buffered_candidate_after_the_answer_is_delivered_at_once() {
    let mut h = Harness::new(|s| s.webrtc.force_relay = false);
    let alice = h.connect(Some("Alice"));
    let bob = h.connect(Some("Bob"));
    join_voice(&mut h, alice, &["audio"]);
    join_voice(&mut h, bob, &["audio"]);
    let candidate = json!({"candidate": "candidate:1 1 udp 1 10.0.0.1 5 typ host"});
    h.send(
        bob,
        json!({"type": "webrtc-offer", "targetUsername": "Alice", "offer": {"type": "offer", "sdp": "v=0"}}),
    );
    h.send(
        alice,
        json!({"type": "webrtc-answer", "targetUsername": "Bob", "answer": {"type": "answer", "sdp": "v=0"}}),
    );
    h.send(bob, json!({"type": "webrtc-ice-candidate", "targetUsername": "Alice", "candidate": candidate, "buffer": true}));
    assert_eq!(h.frames_to(alice)[0]["candidate"], candidate);
    // A new offer (renegotiation, ICE restart) makes buffering hold again until its answer.
    h.send(
        alice,
        json!({"type": "webrtc-offer", "targetUsername": "Bob", "offer": {"type": "offer", "sdp": "v=0"}}),
    );
    h.send(bob, json!({"type": "webrtc-ice-candidate", "targetUsername": "Alice", "candidate": candidate, "buffer": true}));
    assert!(h.frames_to(alice).is_empty());
    h.send(bob, json!({"type": "webrtc-answer", "targetUsername": "Alice", "answer": {"type": "answer", "sdp": "v=0"}}));
    assert_eq!(h.frames_to(alice).len(), 2);
}
