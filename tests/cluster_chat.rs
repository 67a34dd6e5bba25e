//! Cluster mode, chat: three relaychat nodes (real processes) on one private redis-server.
//! Chat crosses nodes in one order that every client sees alike, the history replay agrees with
//! it, and of 100 concurrent claims of one name spread over the nodes exactly one wins.

mod cluster_support;
mod common;

use std::time::Duration;

use cluster_support::{start_nodes, Redis};
use common::{Client, Event};
use serde_json::Value;

/// Reads until `count` chat frames arrived; returns them as "user: text".
async fn collect_chat(client: &mut Client, count: usize) -> Vec<String> {
    let mut seen = Vec::new();
    while seen.len() < count {
        let message = client.recv().await;
        if message["type"] == "chat" {
            seen.push(format!(
                "{}: {}",
                message["username"].as_str().unwrap(),
                message["text"].as_str().unwrap()
            ));
        }
    }
    seen
}

fn chat_lines(history: &Value) -> Vec<String> {
    history["messages"]
        .as_array()
        .expect("history messages")
        .iter()
        .filter(|m| m["type"] == "chat")
        .map(|m| format!("{}: {}", m["username"].as_str().unwrap(), m["text"].as_str().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chat_crosses_nodes_in_one_order_and_the_history_agrees() {
    let redis = Redis::start();
    let nodes = start_nodes(&redis, 3, "[chat]\nmax_messages_per_second = 50\n").await;
    let mut alice = nodes[0].join("alice").await;
    let bob = nodes[1].join("bob").await;
    let carol = nodes[2].join("carol").await;
    // Everyone sees everyone (joins are log entries too): /list on node 1 names all three.
    alice.expect_system("carol has joined.").await;
    alice.chat("/list").await;
    alice.expect_system("Online users: alice, bob, carol").await;

    const PER_SENDER: usize = 20;
    let send = |mut client: Client, name: &'static str| async move {
        for i in 0..PER_SENDER {
            client.chat(&format!("{name} {i}")).await;
            // Interleaved with the other senders, under the chat rate limit.
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        client
    };
    let (alice, bob, carol) = tokio::join!(send(alice, "a"), send(bob, "b"), send(carol, "c"));
    let total = 3 * PER_SENDER;
    let (mut alice, mut bob, mut carol) = (alice, bob, carol);
    let (seen_a, seen_b, seen_c) = tokio::join!(
        collect_chat(&mut alice, total),
        collect_chat(&mut bob, total),
        collect_chat(&mut carol, total)
    );
    assert_eq!(seen_a, seen_b, "node 1 and node 2 clients saw different orders");
    assert_eq!(seen_a, seen_c, "node 1 and node 3 clients saw different orders");
    for (user, tag) in [("alice", "a"), ("bob", "b"), ("carol", "c")] {
        let own: Vec<&String> = seen_a.iter().filter(|line| line.starts_with(&format!("{user}:"))).collect();
        assert_eq!(own.len(), PER_SENDER, "every message of {user} arrived once");
        for (i, line) in own.iter().enumerate() {
            assert_eq!(**line, format!("{user}: {tag} {i}"), "{user}'s messages in its sending order");
        }
    }
    // A newcomer on any node replays the same history (the last history_limit = 100 entries).
    for node in &nodes {
        let mut dave = Client::connect(&node.url(Some("dave"))).await;
        let history = dave.recv_type("history").await;
        assert_eq!(chat_lines(&history), seen_a, "history replay on {} agrees", node.http);
        dave.expect_system("dave has joined.").await;
        drop(dave);
        // Wait until the name is released and every node has read that: a node that has not
        // read the leave from the log yet still sees dave online and refuses the name (each
        // node checks its own replica before it asks Redis). One client per node watches.
        for watcher in [&mut alice, &mut bob, &mut carol] {
            watcher.expect_system("dave has left.").await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_100_concurrent_claims_of_one_name_on_3_nodes_exactly_one_wins() {
    let redis = Redis::start();
    // 34 handshakes at once per node from one address.
    let nodes = start_nodes(&redis, 3, "[network]\nmax_pending_per_ip = 100\n").await;
    let urls: Vec<String> = (0..100).map(|i| nodes[i % 3].url(Some("highlander"))).collect();
    let attempts = urls.into_iter().map(|url| {
        tokio::spawn(async move {
            let mut client = Client::connect(&url).await;
            loop {
                match client.next_event().await {
                    Event::Json(m) if m["type"] == "history" => return (true, client),
                    Event::Json(m) if m["type"] == "system" && m["text"] == "Username taken." => {
                        return (false, client)
                    }
                    Event::Json(_) => continue,
                    other => panic!("claim ended without an answer: {other:?}"),
                }
            }
        })
    });
    let mut winners = Vec::new();
    let mut losers = 0;
    for attempt in attempts.collect::<Vec<_>>() {
        let (won, client) = attempt.await.expect("claim task");
        if won {
            winners.push(client);
        } else {
            losers += 1;
        }
    }
    assert_eq!(winners.len(), 1, "exactly one welcome");
    assert_eq!(losers, 99);
    // Every node lists the name once.
    for node in &nodes {
        let mut observer = Client::connect(&node.url(Some(&format!("obs{}", node.http.port())))).await;
        observer.recv_type("history").await;
        observer.chat("/list").await;
        let list = observer.recv_type("system").await;
        let text = list["text"].as_str().unwrap_or_default().to_string();
        let text = if text.starts_with("Online users:") {
            text
        } else {
            loop {
                let m = observer.recv_type("system").await;
                let t = m["text"].as_str().unwrap_or_default().to_string();
                if t.starts_with("Online users:") {
                    break t;
                }
            }
        };
        assert_eq!(text.matches("highlander").count(), 1, "{text}");
    }
}
