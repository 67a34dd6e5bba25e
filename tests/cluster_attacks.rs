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
