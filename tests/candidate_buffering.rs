//! Candidate buffering against the real binary: candidates sent with `buffer: true` are held per
//! pair until that pair's answer, then flushed in order in both directions; at most 64 are held;
//! they are dropped when either side leaves or vanishes mid-negotiation.

mod common;

use common::sdp::PLAIN_SDP;
use common::voice::{
    answer, candidate, expect_candidate, expect_error, expect_peer_joined, expect_peer_left, join_voice,
    offer, relay, room, send_candidate,
};
use common::{expect_only_pong, Server};
use serde_json::{json, Value};

#[tokio::test]
async fn buffered_candidates_flush_right_after_the_answer_in_both_directions() {
    let server = Server::start("");
    let [mut alice, mut bob, mut carol] = room(&server, ["Alice", "Bob", "Carol"]).await;
    alice.send("webrtc-offer", json!({"targetUsername": "Bob", "offer": offer(PLAIN_SDP)})).await;
    assert_eq!(bob.recv().await["type"], "webrtc-offer");

    let a_to_b: Vec<Value> = (1..=3).map(|i| candidate(&relay(50000 + i))).collect();
    let b_to_a: Vec<Value> = (1..=2).map(|i| candidate(&relay(51000 + i))).collect();
    for c in &a_to_b {
        send_candidate(&mut alice, "Bob", c, true).await;
    }
    for c in &b_to_a {
        send_candidate(&mut bob, "Alice", c, true).await;
    }
    // Held: nothing delivered yet. An unbuffered one still goes through at once.
    expect_only_pong(&mut alice).await;
    expect_only_pong(&mut bob).await;
    let direct = candidate(&relay(52000));
    send_candidate(&mut alice, "Bob", &direct, false).await;
    expect_candidate(&mut bob, "Alice", &direct).await;
    expect_only_pong(&mut bob).await;

    // An answer between another pair flushes nothing of this pair.
    carol.send("webrtc-answer", json!({"targetUsername": "Alice", "answer": answer(PLAIN_SDP)})).await;
    assert_eq!(alice.recv().await["fromUsername"], "Carol");
    expect_only_pong(&mut alice).await;
    expect_only_pong(&mut bob).await;

    // Nor does an offer between the pair.
    bob.send("webrtc-offer", json!({"targetUsername": "Alice", "offer": offer(PLAIN_SDP)})).await;
    assert_eq!(alice.recv().await["type"], "webrtc-offer");
    expect_only_pong(&mut alice).await;
    expect_only_pong(&mut bob).await;

    // Bob answers Alice: Alice gets the answer, then Bob's held candidates; Bob gets Alice's.
    bob.send("webrtc-answer", json!({"targetUsername": "Alice", "answer": answer(PLAIN_SDP)})).await;
    assert_eq!(
        alice.recv().await,
        json!({"type": "webrtc-answer", "fromUsername": "Bob", "answer": answer(PLAIN_SDP)})
    );
    for c in &b_to_a {
        expect_candidate(&mut alice, "Bob", c).await;
    }
    expect_only_pong(&mut alice).await;
    for c in &a_to_b {
        expect_candidate(&mut bob, "Alice", c).await;
    }
    expect_only_pong(&mut bob).await;
    expect_only_pong(&mut carol).await;

    // Flushed means gone: another answer delivers nothing twice.
    bob.send("webrtc-answer", json!({"targetUsername": "Alice", "answer": answer(PLAIN_SDP)})).await;
    assert_eq!(alice.recv().await["type"], "webrtc-answer");
    expect_only_pong(&mut alice).await;
    expect_only_pong(&mut bob).await;

    // Once the pair's answer went through, a late `buffer: true` candidate (gathered after the
    // answer) has nothing to wait for and is delivered at once.
    let late = candidate(&relay(52500));
    send_candidate(&mut alice, "Bob", &late, true).await;
    expect_candidate(&mut bob, "Alice", &late).await;

    // The other direction of the answer (Alice answers Bob, a renegotiation Bob started).
    bob.send("webrtc-offer", json!({"targetUsername": "Alice", "offer": offer(PLAIN_SDP)})).await;
    assert_eq!(alice.recv().await["type"], "webrtc-offer");
    let later_a_to_b = candidate(&relay(53001));
    let later_b_to_a = candidate(&relay(53002));
    send_candidate(&mut alice, "Bob", &later_a_to_b, true).await;
    send_candidate(&mut bob, "Alice", &later_b_to_a, true).await;
    expect_only_pong(&mut bob).await; // handled before the answer
    alice.send("webrtc-answer", json!({"targetUsername": "Bob", "answer": answer(PLAIN_SDP)})).await;
    assert_eq!(bob.recv().await["fromUsername"], "Alice");
    expect_candidate(&mut bob, "Alice", &later_a_to_b).await;
    expect_only_pong(&mut bob).await;
    expect_candidate(&mut alice, "Bob", &later_b_to_a).await;
    expect_only_pong(&mut alice).await;
}

#[tokio::test]
async fn at_most_64_candidates_are_held_per_pair() {
    let server = Server::start("");
    let [mut alice, mut bob] = room(&server, ["Alice", "Bob"]).await;
    let sent: Vec<Value> = (1..=65).map(|i| candidate(&relay(50000 + i))).collect();
    for c in &sent {
        send_candidate(&mut alice, "Bob", c, true).await;
    }
    expect_only_pong(&mut alice).await; // all handled before the answer
    expect_only_pong(&mut bob).await;
    bob.send("webrtc-answer", json!({"targetUsername": "Alice", "answer": answer(PLAIN_SDP)})).await;
    assert_eq!(alice.recv().await["type"], "webrtc-answer");
    // The oldest was dropped; the newest 64 arrive in order.
    for c in &sent[1..] {
        expect_candidate(&mut bob, "Alice", c).await;
    }
    expect_only_pong(&mut bob).await;
    expect_only_pong(&mut alice).await;
}

#[tokio::test]
async fn held_candidates_are_dropped_when_either_side_leaves() {
    let server = Server::start("");
    let [mut alice, mut bob] = room(&server, ["Alice", "Bob"]).await;

    // The receiver leaves (and comes back).
    send_candidate(&mut alice, "Bob", &candidate(&relay(50001)), true).await;
    send_candidate(&mut bob, "Alice", &candidate(&relay(50002)), true).await;
    expect_only_pong(&mut alice).await; // held before Bob leaves
    bob.send("webrtc-leave", json!({})).await;
    bob.next_system("Bob left voice chat").await;
    expect_peer_left(&mut alice, "Bob").await;
    join_voice(&mut bob, "Bob", None).await;
    expect_peer_joined(&mut alice, "Bob", json!(["audio"])).await;
    bob.send("webrtc-answer", json!({"targetUsername": "Alice", "answer": answer(PLAIN_SDP)})).await;
    assert_eq!(alice.recv().await["type"], "webrtc-answer");
    expect_only_pong(&mut alice).await;
    expect_only_pong(&mut bob).await;

    // The sender disconnects mid-renegotiation; someone else takes the name and joins.
    bob.send("webrtc-offer", json!({"targetUsername": "Alice", "offer": offer(PLAIN_SDP)})).await;
    assert_eq!(alice.recv().await["type"], "webrtc-offer");
    send_candidate(&mut alice, "Bob", &candidate(&relay(50003)), true).await;
    expect_only_pong(&mut alice).await;
    drop(alice);
    expect_peer_left(&mut bob, "Alice").await;
    bob.next_system("Alice has left.").await;
    let mut alice = server.join("Alice").await;
    bob.next_system("Alice has joined.").await;
    join_voice(&mut alice, "Alice", None).await;
    expect_peer_joined(&mut bob, "Alice", json!(["audio"])).await;
    bob.send("webrtc-answer", json!({"targetUsername": "Alice", "answer": answer(PLAIN_SDP)})).await;
    assert_eq!(alice.recv().await["type"], "webrtc-answer");
    expect_only_pong(&mut bob).await;
    expect_only_pong(&mut alice).await;
}

#[tokio::test]
async fn a_participant_vanishing_mid_negotiation() {
    let server = Server::start("");
    let [mut alice, mut bob, mut carol] = room(&server, ["Alice", "Bob", "Carol"]).await;
    bob.send("webrtc-offer", json!({"targetUsername": "Alice", "offer": offer(PLAIN_SDP)})).await;
    assert_eq!(alice.recv().await["fromUsername"], "Bob");
    send_candidate(&mut bob, "Alice", &candidate(&relay(50001)), true).await;
    expect_only_pong(&mut bob).await;
    drop(bob); // gone before Alice answers
    for client in [&mut alice, &mut carol] {
        expect_peer_left(client, "Bob").await;
        client.next_system("Bob has left.").await;
    }
    alice.send("webrtc-answer", json!({"targetUsername": "Bob", "answer": answer(PLAIN_SDP)})).await;
    expect_error(&mut alice, "Target user not in voice chat").await;
    send_candidate(&mut alice, "Bob", &candidate(&relay(50002)), false).await;
    expect_only_pong(&mut alice).await;

    // The call between the others goes on.
    alice.send("webrtc-offer", json!({"targetUsername": "Carol", "offer": offer(PLAIN_SDP)})).await;
    assert_eq!(carol.recv().await["fromUsername"], "Alice");
    carol.send("webrtc-answer", json!({"targetUsername": "Alice", "answer": answer(PLAIN_SDP)})).await;
    assert_eq!(alice.recv().await["fromUsername"], "Carol");
    expect_only_pong(&mut alice).await;
    expect_only_pong(&mut carol).await;
}
