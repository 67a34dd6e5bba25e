//! Cluster mode, faults: a node killed with -9 leaves presence within the TTL and its users
//! carry on elsewhere; Redis killed and restarted mid-chat loses nothing anyone saw echoed,
//! `/readyz` says so meanwhile, and sessions chat again afterwards.

mod cluster_support;
mod common;

use std::time::{Duration, Instant};

use cluster_support::{
    alice_and_bob, history_texts, start_nodes, wait_ready, Redis, HEARTBEAT_MS, PRESENCE_TTL_MS,
};
use common::{Client, Event, Server};

fn kill_9(server: &Server) {
    let status = std::process::Command::new("kill").args(["-KILL", &server.pid().to_string()]).status();
    assert!(status.expect("kill").success());
}

/// Sends /list and returns the "Online users: ..." text.
async fn online(client: &mut Client) -> String {
    client.chat("/list").await;
    loop {
        let message = client.recv_type("system").await;
        let text = message["text"].as_str().unwrap_or_default();
        if let Some(list) = text.strip_prefix("Online users: ") {
            return list.to_string();
        }
    }
}

async fn chat_and_see_echo(client: &mut Client, text: &str) {
    client.chat(text).await;
    loop {
        let message = client.recv().await;
        if message["type"] == "chat" && message["text"] == text {
            return;
        }
        assert!(
            !(message["type"] == "system"
                && message["text"].as_str().unwrap_or("").starts_with("Message not sent")),
            "{text} was refused: {message}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_with_9_leaves_within_the_ttl_and_its_users_reconnect_elsewhere() {
    let redis = Redis::start();
    let nodes = start_nodes(&redis, 3, "").await;
    let mut alice = nodes[0].join("alice").await;
    let mut bob = nodes[1].join("bob").await;
    let carol = nodes[2].join("carol").await;
    alice.expect_system("carol has joined.").await;
    bob.expect_system("carol has joined.").await;
    assert_eq!(online(&mut alice).await, "alice, bob, carol");
    // Carol and alice share the voice room across nodes.
    let mut carol = carol;
    for client in [&mut alice, &mut carol] {
        client.send("webrtc-join", serde_json::json!({"mediaTypes": ["audio"]})).await;
        client.recv_type("webrtc-joined").await;
    }
    alice.recv_type("webrtc-peer-joined").await;
    let (voice_members, _) = nodes[0].get_json("/server-info").await;
    assert_eq!(voice_members["currentStats"]["voiceParticipants"], 2, "one room across the nodes");

    let killed_at = Instant::now();
    kill_9(&nodes[2]);
    drop(carol);
    // Her seat goes first (as when a user disconnects), then her name.
    let left = alice.recv_type("webrtc-peer-left").await;
    assert_eq!(left["username"], "carol");
    alice.expect_system("carol left voice chat").await;
    alice.expect_system("carol has left.").await;
    let gone_after = killed_at.elapsed();
    // The record expires after the TTL; a heartbeat of another node notices and reaps it.
    let bound = Duration::from_millis(PRESENCE_TTL_MS + 2 * HEARTBEAT_MS + 1000);
    assert!(gone_after <= bound, "carol left {gone_after:?} after the kill (bound {bound:?})");
    println!("killed node's user gone from presence after {gone_after:?}");
    bob.expect_system("carol has left.").await;
    assert_eq!(online(&mut alice).await, "alice, bob");
    let (_, metrics) = common::http_get(nodes[0].http, "/metrics").await;
    assert!(metrics.contains("relaychat_cluster_nodes_alive 2"), "{metrics}");
    assert!(metrics.contains("relaychat_cluster_redis_up 1"), "{metrics}");

    // Carol reconnects to another node under her name and carries on.
    let mut carol = nodes[1].join("carol").await;
    alice.expect_system("carol has joined.").await;
    carol.chat("back again").await;
    let message = alice.recv_type("chat").await;
    assert_eq!((message["username"].as_str(), message["text"].as_str()), (Some("carol"), Some("back again")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_and_restarted_mid_chat_loses_nothing_acknowledged() {
    let mut redis = Redis::start();
    let (nodes, mut alice, mut bob) = alice_and_bob(&redis, "[chat]\nmax_messages_per_second = 50\n").await;
    let mut echoed = Vec::new();
    for i in 0..20 {
        let text = format!("before {i}");
        chat_and_see_echo(if i % 2 == 0 { &mut alice } else { &mut bob }, &text).await;
        echoed.push(text);
    }
    // Alice has read up to her own last message; bob's last one is still on its way to her.
    loop {
        let message = alice.recv().await;
        if message["type"] == "chat" && message["text"] == "before 19" {
            break;
        }
    }

    redis.kill();
    for node in &nodes {
        let took = wait_ready(node.http, false).await;
        println!("/readyz went 503 {took:?} after the kill");
    }
    let (_, body) = common::http_get(nodes[0].http, "/readyz").await;
    assert!(body.contains("cluster store"), "/readyz names the cluster store: {body}");
    let (_, metrics) = common::http_get(nodes[0].http, "/metrics").await;
    assert!(metrics.contains("relaychat_cluster_redis_up 0"), "{metrics}");
    // Chat now is refused, visibly, with no echo.
    alice.chat("while down").await;
    let refusal = alice.recv().await;
    assert_eq!(refusal["type"], "system", "{refusal}");
    assert!(refusal["text"].as_str().unwrap().starts_with("Message not sent"), "{refusal}");
    // New users are turned away with a reason and 1013 (try again later).
    let mut newcomer = Client::connect(&nodes[1].url(Some("dave"))).await;
    // The first frame (before any session token) says why.
    assert!(
        newcomer.token.contains("This server cannot reach the chat cluster's store right now"),
        "{}",
        newcomer.token
    );
    let close = newcomer.expect_close().await.expect("close frame");
    assert_eq!(u16::from(close.code), 1013);
    // Live sessions stay: /list still answers from the replica.
    assert_eq!(online(&mut bob).await, "alice, bob");
    // Down longer than the presence TTL: every name claim and node record expires in Redis.
    tokio::time::sleep(Duration::from_millis(PRESENCE_TTL_MS + 500)).await;

    redis.restart();
    for node in &nodes {
        let took = wait_ready(node.http, true).await;
        println!("/readyz back to 200 {took:?} after the restart");
    }
    chat_and_see_echo(&mut alice, "after the restart").await;
    loop {
        let message = bob.recv().await;
        if message["type"] == "chat" {
            assert_eq!(message["text"], "after the restart", "nothing unacknowledged shows up: {message}");
            break;
        }
    }
    echoed.push("after the restart".into());
    // The nodes re-claimed their users' names and re-registered; nobody was reaped.
    tokio::time::sleep(Duration::from_millis(PRESENCE_TTL_MS + 1000)).await;
    common::expect_only_pong(&mut alice).await; // no "has left." meanwhile
    common::expect_only_pong(&mut bob).await;
    assert_eq!(online(&mut alice).await, "alice, bob");
    assert_eq!(online(&mut bob).await, "alice, bob");

    // Everything echoed is in the history a newcomer replays.
    let mut dave = Client::connect(&nodes[1].url(Some("dave"))).await;
    let history = dave.recv_type("history").await;
    let texts = history_texts(&history);
    for text in &echoed {
        assert!(texts.contains(text), "{text} missing from the history after the Redis restart: {texts:?}");
    }
    assert!(!texts.contains(&"while down".to_string()));
    match dave.next_event().await {
        Event::Json(_) => {}
        other => panic!("dave was not welcomed: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_shut_down_says_goodbye_and_a_late_node_starts_from_the_shared_state() {
    let redis = Redis::start();
    let (mut nodes, mut alice, bob) = alice_and_bob(&redis, "").await;
    chat_and_see_echo(&mut alice, "hello from before").await;
    // SIGTERM: the node's users leave like on a single server's shutdown, seen on the others.
    let (status, _) = nodes[1].terminate();
    assert!(status.success());
    drop(bob);
    alice.expect_system("bob has left. (Server Shutdown)").await;
    assert_eq!(online(&mut alice).await, "alice");
    // A node started now reads history, who is online and bans from Redis.
    nodes.push(cluster_support::start_node(&redis, "node-3", "").await);
    let mut carol = Client::connect(&nodes[2].url(Some("carol"))).await;
    let history = carol.recv_type("history").await;
    let texts = history_texts(&history);
    assert!(texts.contains(&"hello from before".to_string()), "{texts:?}");
    assert!(texts.contains(&"bob has left. (Server Shutdown)".to_string()), "{texts:?}");
    carol.expect_system("carol has joined.").await;
    assert_eq!(online(&mut carol).await, "alice, carol");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_missed_trimmed_log_entries_notices_the_gap_and_resynchronizes() {
    let redis = Redis::start();
    let (nodes, mut alice, mut bob) = alice_and_bob(&redis, "[chat]\nmax_messages_per_second = 50\n").await;
    // Node 2 stops reading (frozen), the log moves on and is trimmed past where node 2 was.
    let pid = nodes[1].pid().to_string();
    assert!(std::process::Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    chat_and_see_echo(&mut alice, "missed 1").await;
    let carol = nodes[0].join("carol").await;
    chat_and_see_echo(&mut alice, "missed 2").await;
    let trimmed = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "XTRIM", "relaychat:log", "MAXLEN", "0"])
        .output()
        .expect("redis-cli");
    assert!(trimmed.status.success());
    chat_and_see_echo(&mut alice, "after the trim").await;
    assert!(std::process::Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    // Node 2 sees the numbers jump, reloads the shared state, and carries on from there. The
    // reader says "resynchronizing" before it fetches the snapshot; the hub says
    // "resynchronized" once the snapshot is applied, and only then is the answer below defined.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = nodes[1].log_text();
        if log.contains("resynchronizing from a snapshot") && log.contains("replica resynchronized") {
            break;
        }
        assert!(Instant::now() < deadline, "no resync on node 2:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(online(&mut bob).await, "alice, bob, carol", "carol's join, never read, is known");
    chat_and_see_echo(&mut bob, "bob again").await;
    let message = alice.recv_type("chat").await;
    assert_eq!(message["text"], "bob again");
    // A newcomer on node 2 replays the history the others have, missed entries included.
    let mut dave = Client::connect(&nodes[1].url(Some("dave"))).await;
    let texts = history_texts(&dave.recv_type("history").await);
    for text in ["missed 1", "missed 2", "after the trim", "bob again"] {
        assert!(texts.contains(&text.to_string()), "{text} missing: {texts:?}");
    }
    drop(carol);
}
