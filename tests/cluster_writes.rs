//! Cluster mode, what a user is told about a chat write matches what the store holds: a write
//! Redis did not answer in time is called "may not have been sent" (never "not sent" when it
//! may well be stored), and a node killed with -9 in the middle of a burst of batched writes
//! loses nothing its users saw echoed.

mod cluster_support;
mod common;

use std::time::{Duration, Instant};

use cluster_support::{history_texts, start_nodes, Redis};
use common::Client;

/// The chat texts (`prefix`...) a newcomer on `server` replays.
async fn replayed(server: &common::Server, newcomer: &str, prefix: &str) -> Vec<String> {
    let mut client = Client::connect(&server.url(Some(newcomer))).await;
    let texts = history_texts(&client.recv_type("history").await);
    texts.into_iter().filter(|text| text.starts_with(prefix)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_the_store_did_not_answer_in_time_is_not_called_unsent() {
    let redis = Redis::start();
    let nodes = start_nodes(&redis, 1, "").await;
    let mut alice = nodes[0].join("alice").await;
    // Redis holds every write for longer than the node's command timeout (2 s), then runs it.
    redis.cli(&["CLIENT", "PAUSE", "3500", "WRITE"]);
    let paused_at = Instant::now();
    alice.chat("slow one").await;
    let notice = alice.recv().await;
    let text = notice["text"].as_str().unwrap_or_default();
    assert_eq!(notice["type"], "system", "{notice}");
    assert!(text.starts_with("Your message may not have been sent"), "{notice}");
    assert!(!text.contains("not sent"), "never a flat 'not sent' for an unknown outcome: {notice}");
    println!("told {:?} after the pause began", paused_at.elapsed());
    // The store comes back: whatever it holds now is what the user sees, either way.
    tokio::time::sleep(Duration::from_millis(3500).saturating_sub(paused_at.elapsed())).await;
    cluster_support::wait_ready(nodes[0].http, true).await;
    let echoed = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            let message = alice.recv().await;
            if message["type"] == "chat" {
                return message["text"].as_str().map(str::to_string);
            }
        }
    })
    .await
    .ok()
    .flatten();
    let stored = replayed(&nodes[0], "bob", "slow").await;
    match &echoed {
        Some(text) => assert_eq!(text, "slow one"),
        None => assert!(stored.is_empty(), "stored but never echoed: {stored:?}"),
    }
    assert_eq!(echoed.is_some(), stored.contains(&"slow one".to_string()), "echo <=> stored: {stored:?}");
    println!("the slow write was {}", if echoed.is_some() { "stored and echoed" } else { "dropped" });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_mid_burst_loses_nothing_its_users_saw_echoed() {
    let redis = Redis::start();
    let nodes =
        start_nodes(&redis, 2, "[chat]\nmax_messages_per_second = 100000\nhistory_limit = 1000\n").await;
    let mut alice = nodes[1].join("alice").await;
    let _watcher = nodes[0].join("watcher").await;
    alice.expect_system("watcher has joined.").await;
    // A burst: the writer on node 2 batches these into few script calls.
    const BURST: usize = 300;
    for i in 0..BURST {
        alice.chat(&format!("burst {i}")).await;
    }
    let mut echoed = Vec::new();
    while echoed.len() < BURST / 3 {
        let message = alice.recv().await;
        if message["type"] == "chat" {
            echoed.push(message["text"].as_str().unwrap().to_string());
        }
    }
    let status = std::process::Command::new("kill").args(["-KILL", &nodes[1].pid().to_string()]).status();
    assert!(status.expect("kill").success());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stored = replayed(&nodes[0], "newcomer", "burst").await;
    // Every echo is stored, in the order it was echoed, and the store holds one order (a
    // prefix of the burst: batches are written whole and in order).
    assert!(stored.len() >= echoed.len(), "{} stored < {} echoed", stored.len(), echoed.len());
    assert_eq!(&stored[..echoed.len()], &echoed[..], "echoed messages stored in echo order");
    let expected: Vec<String> = (0..stored.len()).map(|i| format!("burst {i}")).collect();
    assert_eq!(stored, expected, "the store holds the burst in send order, without holes");
    println!("{} echoed before the kill, {} stored", echoed.len(), stored.len());
}
