//! Cluster mode against a hostile client or a hostile store, as real processes with a private
//! redis-server: the fixes for what an attacker review found (each test fails without its fix).

mod cluster_support;
mod common;

use std::time::Duration;

use cluster_support::{readyz, start_node, Redis};

/// Runs one command against the test's Redis and returns its reply as redis-cli prints it.
fn redis_cli(redis: &Redis, args: &[&str]) -> String {
    let output = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    assert!(output.status.success(), "redis-cli {args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_ending_beyond_any_clock_in_the_store_neither_panics_a_node_nor_lets_the_user_in() {
    let redis = Redis::start();
    redis_cli(&redis, &["HSET", "relaychat:bans", "zed", "9000000000000000"]);
    redis_cli(&redis, &["HSET", "relaychat:mutes", "mia", "18446744073709551615"]);
    let node = start_node(&redis, "node-1", "").await;
    let mut zed = common::Client::connect(&node.url(Some("zed"))).await;
    zed.expect_system("You are banned.").await;
    // Still serving: ready, and others get in.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(readyz(node.http).await, 200);
    let mut amy = node.join("amy").await;
    amy.chat("/list").await;
    amy.expect_system("Online users: amy").await;
}

/// Waits (up to 5 s) until `check` holds.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_does_not_bring_back_a_name_given_up_after_it_was_listed() {
    let redis = Redis::start();
    let node = start_node(&redis, "node-1", "").await;
    let _alice = node.join("alice").await;
    let owner = redis_cli(&redis, &["HGET", "relaychat:online", "alice"]);
    assert!(owner.starts_with("node-1/"), "{owner}");
    // What the rename script does, as if a heartbeat listing "alice" were already queued.
    redis_cli(&redis, &["SET", "relaychat:name:alicia", &owner, "PX", "60000"]);
    redis_cli(&redis, &["DEL", "relaychat:name:alice"]);
    redis_cli(&redis, &["HDEL", "relaychat:online", "alice"]);
    redis_cli(&redis, &["HSET", "relaychat:online", "alicia", &owner]);
    // Several heartbeats (every 400 ms) later, "alice" is still not listed nor held.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(redis_cli(&redis, &["HEXISTS", "relaychat:online", "alice"]), "0");
    assert_eq!(redis_cli(&redis, &["EXISTS", "relaychat:name:alice"]), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reaped_node_that_is_alive_claims_its_users_names_again() {
    let redis = Redis::start();
    let node = start_node(&redis, "node-1", "").await;
    let _alice = node.join("alice").await;
    // Another node reaped this one (what REAP removes); its heartbeat brings its users back.
    redis_cli(&redis, &["ZREM", "relaychat:nodes", "node-1"]);
    redis_cli(&redis, &["DEL", "relaychat:name:alice"]);
    redis_cli(&redis, &["HDEL", "relaychat:online", "alice"]);
    eventually("alice listed again", || redis_cli(&redis, &["HEXISTS", "relaychat:online", "alice"]) == "1")
        .await;
    assert_eq!(redis_cli(&redis, &["EXISTS", "relaychat:name:alice"]), "1");
}

fn kill_9(server: &common::Server) {
    let status = std::process::Command::new("kill").args(["-KILL", &server.pid().to_string()]).status();
    assert!(status.expect("kill").success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_under_its_id_after_kill_9_releases_what_its_previous_run_left() {
    let redis = Redis::start();
    let first_run = start_node(&redis, "node-1", "").await;
    let node_2 = start_node(&redis, "node-2", "").await;
    let mut bob = node_2.join("bob").await;
    let mut alice = first_run.join("alice").await;
    alice.send("webrtc-join", serde_json::json!({"mediaTypes": ["audio"]})).await;
    alice.recv_type("webrtc-joined").await;
    bob.expect_system("alice has joined.").await;
    kill_9(&first_run);
    // Restarted at once under the same id (systemd: Restart=on-failure, RestartSec=2).
    let second_run = start_node(&redis, "node-1", "").await;
    bob.expect_system("alice has left.").await;
    eventually("alice's seat freed", || redis_cli(&redis, &["HLEN", "relaychat:voice"]) == "0").await;
    let mut alice = second_run.join("alice").await;
    alice.chat("/list").await;
    alice.expect_system("Online users: bob, alice").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_this_node_has_not_read_yet_still_keeps_the_user_out() {
    let redis = Redis::start();
    let node = start_node(&redis, "node-1", "").await;
    // Stored, and not yet in the log this node reads (the ban racing the join).
    redis_cli(&redis, &["HSET", "relaychat:bans", "zed", "0"]);
    let mut zed = common::Client::connect(&node.url(Some("zed"))).await;
    zed.expect_system("You are banned.").await;
    assert_eq!(redis_cli(&redis, &["HEXISTS", "relaychat:online", "zed"]), "0");
    // An ended timed ban does not.
    redis_cli(&redis, &["HSET", "relaychat:bans", "amy", "1000"]);
    let mut amy = node.join("amy").await;
    amy.chat("/list").await;
    amy.expect_system("Online users: amy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_in_the_voice_hash_neither_stops_a_reap_nor_blocks_a_leave() {
    let redis = Redis::start();
    let node_1 = start_node(&redis, "node-1", "").await;
    let node_2 = start_node(&redis, "node-2", "").await;
    let mut alice = node_1.join("alice").await;
    let mut bob = node_2.join("bob").await;
    alice.expect_system("bob has joined.").await;
    for client in [&mut alice, &mut bob] {
        client.send("webrtc-join", serde_json::json!({"mediaTypes": ["audio"]})).await;
        client.recv_type("webrtc-joined").await;
    }
    redis_cli(&redis, &["HSET", "relaychat:voice", "junk", "not json", "number", "5"]);
    // Alice's own seat record overwritten with junk: her leave still frees the name.
    redis_cli(&redis, &["HSET", "relaychat:voice", "alice", "{broken"]);
    alice.send("webrtc-leave", serde_json::json!({})).await;
    eventually("alice's junk seat freed", || {
        redis_cli(&redis, &["HEXISTS", "relaychat:voice", "alice"]) == "0"
    })
    .await;
    // Node 2 dies: node 1 reaps it despite the junk, and everyone sees bob go.
    kill_9(&node_2);
    alice.expect_system("bob has left.").await;
    assert_eq!(redis_cli(&redis, &["HEXISTS", "relaychat:online", "bob"]), "0");
    assert_eq!(redis_cli(&redis, &["HEXISTS", "relaychat:voice", "bob"]), "0");
    assert_eq!(redis_cli(&redis, &["HEXISTS", "relaychat:voice", "junk"]), "1", "junk is no one's seat");
    // Node 1's heartbeats were never blocked: still ready, and alice may sit down again.
    assert_eq!(readyz(node_1.http).await, 200);
    alice.send("webrtc-join", serde_json::json!({"mediaTypes": ["audio"]})).await;
    alice.recv_type("webrtc-joined").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_restrictions_and_a_dead_nodes_inbox_leave_the_store() {
    let redis = Redis::start();
    let ahead = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
        + 3_600_000)
        .to_string();
    redis_cli(&redis, &["HSET", "relaychat:bans", "ended", "1000", "forever", "0", "later", &ahead]);
    redis_cli(&redis, &["HSET", "relaychat:mutes", "ended", "1000", "later", &ahead]);
    let node_1 = start_node(&redis, "node-1", "").await;
    let node_2 = start_node(&redis, "node-2", "").await;
    eventually("ended ban pruned", || redis_cli(&redis, &["HEXISTS", "relaychat:bans", "ended"]) == "0")
        .await;
    assert_eq!(redis_cli(&redis, &["HEXISTS", "relaychat:mutes", "ended"]), "0");
    assert_eq!(redis_cli(&redis, &["HKEYS", "relaychat:bans"]).lines().count(), 2, "forever and later stay");
    assert_eq!(redis_cli(&redis, &["HEXISTS", "relaychat:mutes", "later"]), "1");
    let mut alice = node_1.join("alice").await;
    let _bob = node_2.join("bob").await;
    alice.expect_system("bob has joined.").await;
    redis_cli(&redis, &["XADD", "relaychat:inbox:node-2", "*", "s", "left for a node that dies"]);
    kill_9(&node_2);
    alice.expect_system("bob has left.").await;
    assert_eq!(redis_cli(&redis, &["EXISTS", "relaychat:inbox:node-2"]), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nick_to_a_name_banned_in_the_store_is_refused_and_a_free_one_works() {
    let redis = Redis::start();
    let node = start_node(&redis, "node-1", "").await;
    let mut alice = node.join("alice").await;
    redis_cli(&redis, &["HSET", "relaychat:bans", "zed", "0"]);
    alice.chat("/nick zed").await;
    alice.expect_system("Username \"zed\" is already taken.").await;
    alice.chat("/nick alicia").await;
    alice.expect_system("alice is now alicia").await;
    assert_eq!(redis_cli(&redis, &["HEXISTS", "relaychat:online", "zed"]), "0");
    assert_eq!(redis_cli(&redis, &["HEXISTS", "relaychat:online", "alicia"]), "1");
}
