//! Relay-only enforcement against the real binary (PROTOCOL.md section 6, "forceRelay"): under
//! force_relay every candidate, candidate object and SDP a peer receives is rebuilt so that it
//! names no address but our relay's, each drop is counted in `/metrics`; without it, offers,
//! answers and candidates reach the target exactly as sent.

mod common;

use common::sdp::{LEAKY_SDP, NON_RELAY_CANDIDATES, PLAIN_SDP, REBUILT_SDP, RELAY_CANDIDATES};
use common::voice::{
    answer, candidate, expect_candidate, expect_peer_joined, expect_peer_left, join_voice, offer, relay,
    room, send_candidate,
};
use common::{expect_only_pong, Server};
use serde_json::json;

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
