//! Clients written from the original server's WebRTC client guide, against the real binary:
//! the guide's join, offer/answer, trickled candidates, media change and leave, step by step, as
//! a client that knows nothing of this server's extras would do them.

mod common;

use common::ice::{check_ice_servers, secret_config, turn_port};
use common::sdp::{LEAKY_SDP, NON_RELAY_CANDIDATES, REBUILT_SDP};
use common::voice::{
    answer, candidate, expect_candidate, expect_peer_joined, expect_peer_left, expect_voice_participants,
    join_voice, offer, relay, send_candidate,
};
use common::{expect_only_pong, Client, Server};
use serde_json::json;

/// A client written from the seed guide: join with media, newcomer offers to everyone listed in
/// `webrtc-joined`, the other answers, both trickle candidates (some buffered, ending with the
/// empty end-of-candidates), media change, leave.
#[tokio::test]
async fn seed_guide_client_flow_end_to_end() {
    let server = Server::start(&secret_config(""));
    let port = turn_port(&server);
    let mut alice = server.join("Alice").await;
    let mut bob = server.join("Bob").await;
    alice.next_system("Bob has joined.").await;

    let joined = join_voice(&mut alice, "Alice", Some(json!(["audio", "video"]))).await;
    bob.next_system("Alice joined voice chat").await;
    check_ice_servers(&joined["config"]["iceServers"], "127.0.0.1", port, "Alice", 600);
    assert_eq!(joined["config"]["iceTransportPolicy"], "relay");

    let joined = join_voice(&mut bob, "Bob", Some(json!(["audio"]))).await;
    expect_peer_joined(&mut alice, "Bob", json!(["audio"])).await;
    // The newcomer offers to every participant already there.
    let others: Vec<String> = joined["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["username"].as_str().unwrap().to_string())
        .filter(|name| name != "Bob")
        .collect();
    assert_eq!(others, ["Alice"]);
    for target in &others {
        bob.send("webrtc-offer", json!({"targetUsername": target, "offer": offer(LEAKY_SDP)})).await;
        // Candidates gathered before the answer: buffered by the server.
        send_candidate(&mut bob, target, &candidate(&relay(50001)), true).await;
        send_candidate(&mut bob, target, &candidate(NON_RELAY_CANDIDATES[0]), true).await;
    }
    // (A real client races here too: a candidate the server handles after the answer is held
    // until the next answer. Wait until ours are handled.)
    expect_only_pong(&mut bob).await;

    // Alice handles the offer and answers.
    let incoming = alice.recv().await;
    assert_eq!(incoming["type"], "webrtc-offer");
    assert_eq!(incoming["fromUsername"], "Bob");
    assert_eq!(incoming["offer"]["sdp"], REBUILT_SDP);
    let from = incoming["fromUsername"].as_str().unwrap().to_string();
    alice.send("webrtc-answer", json!({"targetUsername": from, "answer": answer(LEAKY_SDP)})).await;
    send_candidate(&mut alice, &from, &candidate(&relay(50002)), false).await;
    send_candidate(&mut alice, &from, &json!({"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0}), false)
        .await;

    let incoming = bob.recv().await;
    assert_eq!(incoming["type"], "webrtc-answer");
    assert_eq!(incoming["fromUsername"], "Alice");
    assert_eq!(incoming["answer"]["sdp"], REBUILT_SDP);
    expect_candidate(&mut bob, "Alice", &candidate(&relay(50002))).await;
    expect_candidate(&mut bob, "Alice", &json!({"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0})).await;
    expect_candidate(&mut alice, "Bob", &candidate(&relay(50001))).await; // flushed after the answer
    send_candidate(&mut bob, "Alice", &json!({"candidate": ""}), false).await;
    expect_candidate(&mut alice, "Bob", &json!({"candidate": ""})).await;
    expect_voice_participants(&server, 2).await;

    // Camera off.
    alice.send("webrtc-media-change", json!({"mediaTypes": ["audio"]})).await;
    assert_eq!(
        bob.recv().await,
        json!({"type": "webrtc-media-changed", "username": "Alice", "mediaTypes": ["audio"]})
    );

    // Hang up.
    bob.send("webrtc-leave", json!({})).await;
    expect_peer_left(&mut alice, "Bob").await;
    bob.next_system("Bob left voice chat").await;
    alice.send("webrtc-leave", json!({})).await;
    alice.next_system("Alice left voice chat").await;
    bob.next_system("Alice left voice chat").await;
    for client in [&mut alice, &mut bob] {
        expect_only_pong(client).await;
    }
    expect_voice_participants(&server, 0).await;
    drop(bob);
    alice.expect_system("Bob has left.").await;
}

/// The guide's mesh: each newcomer offers to every participant `webrtc-joined` lists, each of
/// them answers, and both sides trickle candidates, so four users end with six negotiated pairs
/// (N × (N-1) / 2), every one of them through the relay.
#[tokio::test]
async fn seed_guide_mesh_of_four_negotiates_six_pairs() {
    let server = Server::start("");
    let names = ["Alice", "Bob", "Carol", "Dave"];
    let mut clients: Vec<Client> = Vec::new();
    for name in names {
        let client = server.join(name).await;
        for other in clients.iter_mut() {
            other.next_system(&format!("{name} has joined.")).await;
        }
        clients.push(client);
    }
    let mut pairs = Vec::new();
    for (i, name) in names.iter().copied().enumerate() {
        let joined = join_voice(&mut clients[i], name, Some(json!(["audio"]))).await;
        for (j, other) in clients.iter_mut().enumerate() {
            if j < i {
                expect_peer_joined(other, name, json!(["audio"])).await;
            } else if j > i {
                other.next_system(&format!("{name} joined voice chat")).await;
            }
        }
        let listed: Vec<String> = joined["participants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["username"].as_str().unwrap().to_string())
            .filter(|listed| listed != name)
            .collect();
        assert_eq!(listed, names[..i], "everyone already there, in join order");
        for (j, target) in listed.iter().enumerate() {
            let sdp = format!("v=0\r\no=- {i}{j} 1 IN IP4 0.0.0.0\r\n");
            clients[i].send("webrtc-offer", json!({"targetUsername": target, "offer": offer(&sdp)})).await;
            assert_eq!(
                clients[j].recv().await,
                json!({"type": "webrtc-offer", "fromUsername": name, "offer": offer(&sdp)})
            );
            clients[j].send("webrtc-answer", json!({"targetUsername": name, "answer": answer(&sdp)})).await;
            assert_eq!(
                clients[i].recv().await,
                json!({"type": "webrtc-answer", "fromUsername": target, "answer": answer(&sdp)})
            );
            let port = 50_000 + 10 * i as u32 + j as u32;
            send_candidate(&mut clients[i], target, &candidate(&relay(port)), false).await;
            expect_candidate(&mut clients[j], name, &candidate(&relay(port))).await;
            send_candidate(&mut clients[j], name, &candidate(&relay(port + 5)), false).await;
            expect_candidate(&mut clients[i], target, &candidate(&relay(port + 5))).await;
            pairs.push((target.clone(), name));
        }
    }
    assert_eq!(pairs.len(), 6, "{pairs:?}");
    for client in clients.iter_mut() {
        expect_only_pong(client).await; // nothing went to anyone it was not meant for
    }
    expect_voice_participants(&server, 4).await;
}
