//! Cluster mode, the bounds of what lives in Redis, measured in Redis: the shared log is capped
//! at `LOG_MAX_ENTRIES`, each node's signaling inbox at `INBOX_MAX_ENTRIES` (what other nodes
//! route to a node that stopped reading cannot pile up), the history at `[history]
//! retention_max_messages`. (`~` caps may keep up to one stream node more: Redis trims whole
//! nodes of `stream-node-max-entries`, 100 by default.)

mod cluster_support;
mod common;

use cluster_support::{start_node, Redis};
use common::voice::offer;
use relaychat::cluster::{INBOX_MAX_ENTRIES, LOG_MAX_ENTRIES};
use serde_json::json;

/// Entries Redis may keep beyond a `MAXLEN ~` cap (one stream node).
const APPROXIMATE_SLACK: u64 = 100;

fn xlen(redis: &Redis, key: &str) -> u64 {
    redis.cli(&["XLEN", key]).parse().expect("XLEN answers a number")
}

/// Appends `n` filler entries to the stream `key` (as if written long ago).
fn fill(redis: &Redis, key: &str, n: u64) {
    let script = "for i = 1, tonumber(ARGV[1]) do redis.call('XADD', KEYS[1], '*', 'x', i) end return 1";
    redis.cli(&["EVAL", script, "1", key, &n.to_string()]);
    assert_eq!(xlen(redis, key), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_log_and_a_node_s_inbox_stay_within_their_caps() {
    let redis = Redis::start();
    // Older entries than any node will read: the log already over its cap, and an inbox a
    // previous run of node-2 left (a starting node deletes it with the rest of that run).
    fill(&redis, "relaychat:log", LOG_MAX_ENTRIES + 5 * APPROXIMATE_SLACK);
    fill(&redis, "relaychat:inbox:node-2", 100);
    let node_1 = start_node(&redis, "node-1", "").await;
    let node_2 = start_node(&redis, "node-2", "").await;
    let mut alice = node_1.join("alice").await;
    let mut bob = node_2.join("bob").await;
    alice.expect_system("bob has joined.").await;
    for client in [&mut alice, &mut bob] {
        client.send("webrtc-join", json!({"mediaTypes": ["audio"]})).await;
        client.recv_type("webrtc-joined").await;
    }
    let log = xlen(&redis, "relaychat:log");
    assert!(
        (LOG_MAX_ENTRIES..=LOG_MAX_ENTRIES + APPROXIMATE_SLACK).contains(&log),
        "log holds {log} entries, cap {LOG_MAX_ENTRIES}"
    );
    assert_eq!(xlen(&redis, "relaychat:inbox:node-2"), 0, "the previous run's inbox is gone");
    // Signaling routed to node 2 trims its inbox; bob still gets it (node-2 skips the filler,
    // which is no signaling).
    fill(&redis, "relaychat:inbox:node-2", INBOX_MAX_ENTRIES + 5 * APPROXIMATE_SLACK);
    alice
        .send("webrtc-offer", json!({"targetUsername": "bob", "offer": offer(common::sdp::PLAIN_SDP)}))
        .await;
    let got = bob.recv_type("webrtc-offer").await;
    assert_eq!(got["fromUsername"], "alice");
    let inbox = xlen(&redis, "relaychat:inbox:node-2");
    assert!(
        (INBOX_MAX_ENTRIES..=INBOX_MAX_ENTRIES + APPROXIMATE_SLACK).contains(&inbox),
        "node-2's inbox holds {inbox} entries, cap {INBOX_MAX_ENTRIES}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_history_holds_exactly_retention_max_messages() {
    let redis = Redis::start();
    let extra = "[history]\nretention_max_messages = 30\n[chat]\nmax_messages_per_second = 1000\n";
    let node = start_node(&redis, "node-1", extra).await;
    let mut alice = node.join("alice").await;
    for i in 0..40 {
        let text = format!("line {i}");
        alice.chat(&text).await;
        loop {
            let message = alice.recv().await;
            if message["type"] == "chat" && message["text"] == text.as_str() {
                break;
            }
        }
    }
    assert_eq!(xlen(&redis, "relaychat:history"), 30, "exact MAXLEN up to HISTORY_EXACT_TRIM_UP_TO");
    let newest = redis.cli(&["XREVRANGE", "relaychat:history", "+", "-", "COUNT", "1"]);
    assert!(newest.contains("line 39"), "the newest entry is kept: {newest}");
}
