//! Cluster mode, voice: one voice room across three nodes (real processes, one private
//! redis-server). `max_participants` holds cluster-wide under concurrent joins on every node;
//! offers, answers and candidates reach members on other nodes; a kick given on node A ends
//! the kicked user's TURN allocation on node B's relay within a second; relay-to-relay works
//! between nodes; a secret rotation on one node reaches every node's relay and voice member.

mod admin_support;
mod cluster_support;
mod common;
mod turn_support;

use std::time::{Duration, Instant};

use cluster_support::{start_node, start_nodes, Redis};
use common::sdp::PLAIN_SDP;
use common::voice::{answer, candidate, offer, relay, send_candidate};
use common::{login_admin, Client, Server};
use serde_json::{json, Value};
use turn_support::TurnClient;

/// Reads until a frame of `kind` arrives; panics on a webrtc-error first.
async fn recv_kind(client: &mut Client, kind: &str) -> Value {
    loop {
        let message = client.recv().await;
        if message["type"] == kind {
            return message;
        }
        assert_ne!(message["type"], "webrtc-error", "while waiting for {kind}: {message}");
    }
}

/// The answer to a join: `webrtc-joined` or the `webrtc-error`.
async fn join_answer(client: &mut Client) -> Value {
    loop {
        let message = client.recv().await;
        if message["type"] == "webrtc-joined" || message["type"] == "webrtc-error" {
            return message;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_participants_holds_cluster_wide_and_signaling_crosses_nodes() {
    let redis = Redis::start();
    let nodes = start_nodes(&redis, 3, "[webrtc]\nmax_participants = 3\n").await;
    // Two users per node, all asking to join at once.
    let mut clients = Vec::new();
    for i in 0..6 {
        clients.push((format!("user{i}"), nodes[i % 3].join(&format!("user{i}")).await));
    }
    let joins = clients.into_iter().map(|(name, mut client)| {
        tokio::spawn(async move {
            client.send("webrtc-join", json!({"mediaTypes": ["audio"]})).await;
            let answer = join_answer(&mut client).await;
            (name, client, answer)
        })
    });
    let mut seated = Vec::new();
    let mut refused = 0;
    for join in joins.collect::<Vec<_>>() {
        let (name, client, answer) = join.await.expect("join task");
        if answer["type"] == "webrtc-joined" {
            seated.push((name, client, answer));
        } else {
            assert_eq!(answer["error"], "Voice chat is full (3 maximum)", "{answer}");
            refused += 1;
        }
    }
    assert_eq!((seated.len(), refused), (3, 3), "exactly max_participants seats, cluster-wide");

    // The seated may sit on the same node; find two on different nodes (retrying the room
    // would be a different test), else any two.
    let node_of = |name: &str| name.trim_start_matches("user").parse::<usize>().unwrap() % 3;
    let (a, b) = {
        let mut pair = (0, 1);
        'outer: for i in 0..seated.len() {
            for j in i + 1..seated.len() {
                if node_of(&seated[i].0) != node_of(&seated[j].0) {
                    pair = (i, j);
                    break 'outer;
                }
            }
        }
        pair
    };
    let (b_name, mut b_client, _) = seated.remove(b);
    let (a_name, mut a_client, _) = seated.remove(a);
    println!(
        "signaling between {a_name} (node {}) and {b_name} (node {})",
        node_of(&a_name) + 1,
        node_of(&b_name) + 1
    );
    a_client.send("webrtc-offer", json!({"targetUsername": b_name, "offer": offer(PLAIN_SDP)})).await;
    let got = recv_kind(&mut b_client, "webrtc-offer").await;
    assert_eq!(got["fromUsername"], a_name.as_str());
    assert_eq!(got["offer"]["type"], "offer");
    b_client.send("webrtc-answer", json!({"targetUsername": a_name, "answer": answer(PLAIN_SDP)})).await;
    let got = recv_kind(&mut a_client, "webrtc-answer").await;
    assert_eq!(got["fromUsername"], b_name.as_str());
    let line = candidate(&relay(50123));
    send_candidate(&mut a_client, &b_name, &line, false).await;
    let got = recv_kind(&mut b_client, "webrtc-ice-candidate").await;
    assert_eq!(got["fromUsername"], a_name.as_str());
    assert_eq!(
        got["candidate"]["candidate"], line["candidate"],
        "a relay candidate through our relay passes"
    );
}

fn ice_credentials(joined: &Value) -> (String, String) {
    let server = &joined["config"]["iceServers"][0];
    (server["username"].as_str().unwrap().to_string(), server["credential"].as_str().unwrap().to_string())
}

async fn allocations_active(node: &Server) -> u64 {
    let (_, body) = common::http_get(node.http, "/metrics").await;
    body.lines()
        .find_map(|line| line.strip_prefix("relaychat_turn_allocations_active "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kick_on_node_a_ends_the_allocation_on_node_b_within_a_second() {
    let redis = Redis::start();
    let nodes = start_nodes(&redis, 2, "[chat]\nauthentication = true\n").await;
    let mut boss = login_admin(&nodes[0], "boss").await;
    let mut bob = common::login(&nodes[1], "bob").await;
    bob.send("webrtc-join", json!({"mediaTypes": ["audio"]})).await;
    let joined = join_answer(&mut bob).await;
    assert_eq!(joined["type"], "webrtc-joined", "{joined}");
    // Bob's client allocates on its own node's relay with the credentials it was handed.
    let (user, credential) = ice_credentials(&joined);
    let mut turn = TurnClient::udp(nodes[1].turn_udp.expect("node 2 relay"), &user, &credential).await;
    turn.allocate().await.expect("allocation on node 2");
    assert_eq!(allocations_active(&nodes[1]).await, 1);
    // The credential verifies on node 1's relay too (one shared secret).
    let mut elsewhere = TurnClient::udp(nodes[0].turn_udp.expect("node 1 relay"), &user, &credential).await;
    elsewhere.allocate().await.expect("the same credential works on node 1");
    elsewhere.refresh(Duration::ZERO).await.expect("released");

    boss.expect_system("bob joined voice chat").await;
    let kicked_at = Instant::now();
    boss.chat("/kick bob").await;
    loop {
        if allocations_active(&nodes[1]).await == 0 {
            break;
        }
        assert!(kicked_at.elapsed() < Duration::from_secs(1), "node 2 still holds bob's allocation");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = kicked_at.elapsed();
    println!("kick on node 1 -> allocation on node 2 gone after {took:?}");
    assert!(turn.refresh(Duration::from_secs(600)).await.is_err(), "the allocation is gone");
    bob.expect_system("You have been kicked by an admin.").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_to_relay_works_between_nodes_and_nothing_else_opens() {
    let redis = Redis::start();
    let relay_range = "[turn]\nmin_port = 51000\nmax_port = 51999\n";
    let nodes = start_nodes(&redis, 2, relay_range).await;
    let mut alice = nodes[0].join("alice").await;
    let mut bob = nodes[1].join("bob").await;
    let mut turn = Vec::new();
    for (client, node) in [(&mut alice, &nodes[0]), (&mut bob, &nodes[1])] {
        client.send("webrtc-join", json!({"mediaTypes": ["audio"]})).await;
        let joined = join_answer(client).await;
        assert_eq!(joined["type"], "webrtc-joined", "{joined}");
        let (user, credential) = ice_credentials(&joined);
        turn.push(TurnClient::udp(node.turn_udp.expect("relay"), &user, &credential).await);
    }
    let alice_relayed = turn[0].allocate().await.expect("alice allocates on node 1");
    let bob_relayed = turn[1].allocate().await.expect("bob allocates on node 2");
    // The nodes learn each other's relay addresses from the registry with the next heartbeat;
    // a peer outside the registry's relays stays refused meanwhile and after.
    let stranger = loop {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        if !(51000..=51999).contains(&socket.local_addr().unwrap().port()) {
            break socket;
        }
    };
    let stranger_addr = stranger.local_addr().unwrap();
    assert!(turn[0].create_permission(&[stranger_addr]).await.is_err(), "a non-relay peer is refused");
    turn[0].create_permission(&[bob_relayed]).await.expect("node 2's relay is a peer for node 1's");
    turn[1].create_permission(&[alice_relayed]).await.expect("node 1's relay is a peer for node 2's");
    turn[0].channel_bind(0x4000, bob_relayed).await.unwrap();
    turn[1].channel_bind(0x4001, alice_relayed).await.unwrap();
    turn[0].send_channel_data(0x4000, b"from alice via node 1").await;
    assert_eq!(
        turn[1].recv_data(Duration::from_secs(2)).await.as_deref(),
        Some(&b"from alice via node 1"[..])
    );
    turn[1].send_channel_data(0x4001, b"from bob via node 2").await;
    assert_eq!(turn[0].recv_data(Duration::from_secs(2)).await.as_deref(), Some(&b"from bob via node 2"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_secret_rotated_on_one_node_reaches_every_nodes_relay_and_voice_members() {
    let redis = Redis::start();
    let node1 = start_node(&redis, "node-1", &admin_support::admin_config(false)).await;
    let node2 = start_node(&redis, "node-2", "").await;
    let mut bob = node2.join("bob").await;
    bob.send("webrtc-join", json!({"mediaTypes": ["audio"]})).await;
    let joined = join_answer(&mut bob).await;
    let (old_user, old_credential) = ice_credentials(&joined);

    let api = admin_support::AdminApi::of(&node1, None);
    let reply = api.ok(hyper::Method::POST, "/api/v1/turn/rotate-secret", None).await;
    assert_eq!(reply["announced_to_cluster"], true, "{reply}");
    // Bob, on the other node, is handed credentials signed with the new secret at once.
    let pushed = recv_kind(&mut bob, "webrtc-credentials").await;
    let server = &pushed["iceServers"][0];
    let (user, credential) = (
        server["username"].as_str().unwrap().to_string(),
        server["credential"].as_str().unwrap().to_string(),
    );
    assert_ne!(credential, old_credential);
    // They verify on both nodes' relays, and on a node started after the rotation.
    let node3 = start_node(&redis, "node-3", "").await;
    for node in [&node1, &node2, &node3] {
        let mut turn = TurnClient::udp(node.turn_udp.expect("relay"), &user, &credential).await;
        turn.allocate().await.unwrap_or_else(|e| panic!("new credential refused on {}: {e:?}", node.http));
    }
    // The old one still works on the nodes that knew it, for the grace period.
    let mut old = TurnClient::udp(node2.turn_udp.expect("relay"), &old_user, &old_credential).await;
    old.allocate().await.expect("old credential accepted during the grace period");
}
