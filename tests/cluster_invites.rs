//! Cluster mode, invites: one signing key, one use count and one revocation list for every
//! node. A link from `relaychat invite` works on every node and its uses count cluster-wide
//! (of 20 browsers racing for the last use over three nodes exactly one gets in); a revocation
//! made beside one node refuses on all; with Redis down an invite is refused with the clear
//! "cannot check" text and nothing is spent, while a member pass still passes the gate; a node
//! that already had an invite key and ledger brings them into the cluster.

mod cluster_support;
mod common;

use cluster_support::{cluster_config, start_node, start_nodes, wait_ready, Redis};
use common::{run_cli, Client, Event, Server};
use serde_json::json;

const INVITE_ONLY: &str = "[chat]\ninvite_only = true\n";
const USED_UP: &str = "This invite link has already been used. Ask for a new one.";
const REVOKED: &str = "This invite has been revoked by the server's operator.";
const UNAVAILABLE: &str = "The server cannot check invites right now. Try again later.";
const FORGED: &str = "This invite link is not valid (damaged, or not from this server). Ask for a new one.";

/// `relaychat invite ...` with `node`'s configuration; returns the token from the printed link.
fn invite(node: &Server, args: &[&str]) -> String {
    let mut all = vec!["invite", "--base-url", "https://chat.example.org/"];
    all.extend_from_slice(args);
    let output = run_cli(node, &all, "");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let link = String::from_utf8_lossy(&output.stdout).trim().to_string();
    link.strip_prefix("https://chat.example.org/?invite=")
        .unwrap_or_else(|| panic!("link: {link}"))
        .to_string()
}

fn invite_id(token: &str) -> String {
    token.split('.').nth(1).expect("id").to_string()
}

fn url(node: &Server, name: &str, query: &str) -> String {
    format!("ws://{}/?username={name}&{query}", node.http)
}

/// Connects and expects the refusal: the text as a system frame, then close with it: 1013 (try
/// again later) when the ledger did not answer, 1008 (policy) otherwise.
async fn expect_refused(url: &str, text: &str) {
    let mut client = Client::connect(url).await;
    assert_eq!(client.token, format!("refused:{}", json!({"type": "system", "text": text})));
    match client.next_event().await {
        Event::Closed(Some(frame)) => {
            assert_eq!(u16::from(frame.code), if text == UNAVAILABLE { 1013 } else { 1008 });
            assert_eq!(frame.reason.as_str(), text);
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
}

/// Connects with `query` and reads the welcome up to "<name> has joined."; returns the client
/// and the member pass it was handed.
async fn join_with(node: &Server, name: &str, query: &str) -> (Client, String) {
    let mut client = Client::connect(&url(node, name, query)).await;
    assert!(!client.token.starts_with("refused"), "{name}: {}", client.token);
    let pass = client.recv().await;
    assert_eq!(pass["type"], "member-pass", "{pass}");
    let pass = pass["pass"].as_str().expect("pass").to_string();
    client.expect_system(&format!("{name} has joined.")).await;
    (client, pass)
}

fn ttl_seconds(redis: &Redis, key: &str) -> i64 {
    redis.cli(&["TTL", key]).parse().expect("TTL is a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cli_invite_works_on_every_node_counts_cluster_wide_and_a_revoke_acts_everywhere() {
    let redis = Redis::start();
    let nodes = start_nodes(&redis, 3, INVITE_ONLY).await;

    // Made beside node 1, for three people: one comes in on each node.
    let token = invite(&nodes[0], &["--expires", "1h", "--uses", "3"]);
    let id = invite_id(&token);
    let record = format!("relaychat:invite:{id}");
    // Unused, its record ends with the invite.
    let ttl = ttl_seconds(&redis, &record);
    assert!((3500..=3600).contains(&ttl), "an unused invite's record expires with it: TTL {ttl}");
    let mut passes = Vec::new();
    let mut members = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let (client, pass) = join_with(node, &format!("member{i}"), &format!("invite={token}")).await;
        members.push(client);
        passes.push(pass);
    }
    // Three uses in all, not three per node.
    for node in &nodes {
        expect_refused(&url(node, "fourth", &format!("invite={token}")), USED_UP).await;
    }
    let listed = run_cli(&nodes[2], &["invite", "--list"], "");
    let listed_text = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        listed_text.contains(&format!("{id}  used 3/3")),
        "--list reads the cluster store: {listed_text}"
    );
    // Used, it is kept as long as the member passes it handed out (90 days) can come back.
    let ttl = ttl_seconds(&redis, &record);
    assert!(ttl > 90 * 86_400, "a used invite's record outlives its passes: TTL {ttl}");

    // A member pass from node 1 brings its browser back on node 3.
    drop(members);
    let (back, _) = join_with(&nodes[2], "returning0", &format!("pass={}", passes[0])).await;
    drop(back);

    // Revoked beside node 2: the link and every pass it led to are refused on every node.
    let revoked = run_cli(&nodes[1], &["invite", "--revoke", &id], "");
    assert!(revoked.status.success(), "{}", String::from_utf8_lossy(&revoked.stderr));
    for (i, node) in nodes.iter().enumerate() {
        expect_refused(&url(node, "again", &format!("pass={}", passes[i])), REVOKED).await;
        expect_refused(&url(node, "again", &format!("invite={token}")), REVOKED).await;
    }
    let listed = run_cli(&nodes[0], &["invite", "--list"], "");
    let listed_text = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        listed_text.contains(&format!("{id}  used 3/3")) && listed_text.contains("revoked"),
        "{listed_text}"
    );
    let unknown = run_cli(&nodes[0], &["invite", "--revoke", "ffffffffffffffff"], "");
    assert!(!unknown.status.success(), "an unknown id is an error");
    let garbage = run_cli(&nodes[0], &["invite", "--revoke", "relaychat:*"], "");
    assert!(!garbage.status.success(), "a malformed id is an error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_browsers_on_three_nodes_race_for_one_use_and_exactly_one_gets_in() {
    let redis = Redis::start();
    let nodes = start_nodes(&redis, 3, INVITE_ONLY).await;
    let token = invite(&nodes[1], &["--uses", "1"]);
    let urls: Vec<String> =
        (0..20).map(|i| url(&nodes[i % 3], &format!("racer{i}"), &format!("invite={token}"))).collect();
    let racers = urls.into_iter().map(|u| tokio::spawn(async move { Client::connect(&u).await }));
    let mut admitted = Vec::new();
    let mut refused = 0;
    for racer in racers {
        let mut client = racer.await.expect("racer");
        if client.token.starts_with("refused") {
            assert_eq!(client.token, format!("refused:{}", json!({"type": "system", "text": USED_UP})));
            refused += 1;
        } else {
            assert_eq!(client.recv().await["type"], "member-pass");
            admitted.push(client);
        }
    }
    assert_eq!((admitted.len(), refused), (1, 19), "exactly one of 20 gets the last use");
    let listed = run_cli(&nodes[0], &["invite", "--list"], "");
    let listed_text = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed_text.contains("used 1/1"), "{listed_text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_redis_down_invites_and_member_passes_are_refused_clearly_and_nothing_is_spent() {
    let mut redis = Redis::start();
    let nodes = start_nodes(&redis, 2, INVITE_ONLY).await;
    let token = invite(&nodes[0], &["--uses", "2"]);
    let (alice, alice_pass) = join_with(&nodes[0], "alice", &format!("invite={token}")).await;
    drop(alice);

    redis.kill();
    for node in &nodes {
        wait_ready(node.http, false).await;
    }
    // The invite cannot be counted: refused with the invite gate's own text, nothing spent.
    expect_refused(&url(&nodes[1], "bob", &format!("invite={token}")), UNAVAILABLE).await;
    // The member pass is genuine, but whether its invite was revoked is in Redis: it waits
    // too, told the same (with 1013, try again later), on every node.
    for node in &nodes {
        expect_refused(&url(node, "alice", &format!("pass={alice_pass}")), UNAVAILABLE).await;
    }

    redis.restart();
    for node in &nodes {
        wait_ready(node.http, true).await;
    }
    // Nothing was lost: the pass admits, and the invite still has its second use.
    let (_alice, _) = join_with(&nodes[1], "aliceback", &format!("pass={alice_pass}")).await;
    let (_bob, _) = join_with(&nodes[1], "bob", &format!("invite={token}")).await;
    expect_refused(&url(&nodes[0], "carol", &format!("invite={token}")), USED_UP).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_with_an_invite_key_and_ledger_brings_them_into_the_cluster() {
    // Single-node days: two invites, one used once of two, one used and then revoked.
    let old = tempfile::tempdir().expect("tempdir");
    let mut single = Server::start_in(old.path(), INVITE_ONLY);
    let kept = invite(&single, &["--uses", "2"]);
    let (member, kept_pass) = join_with(&single, "old1", &format!("invite={kept}")).await;
    drop(member);
    let gone = invite(&single, &["--uses", "1"]);
    let (member, gone_pass) = join_with(&single, "old2", &format!("invite={gone}")).await;
    drop(member);
    let revoked = run_cli(&single, &["invite", "--revoke", &invite_id(&gone)], "");
    assert!(revoked.status.success(), "{}", String::from_utf8_lossy(&revoked.stderr));
    single.terminate();
    drop(single);

    // That node joins a new cluster first: its key becomes the cluster's, its ledger is merged.
    let redis = Redis::start();
    let veteran = Server::start_in(old.path(), &cluster_config(&redis, "node-1", INVITE_ONLY));
    wait_ready(veteran.http, true).await;
    let newcomer = start_node(&redis, "node-2", INVITE_ONLY).await;
    // A third node brings a key of its own: the cluster's wins, and its log says so.
    let other = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(other.path().join("data")).expect("data dir");
    std::fs::write(other.path().join("data/invite_secret"), "a-key-of-its-own").expect("secret");
    let third = Server::start_in(other.path(), &cluster_config(&redis, "node-3", INVITE_ONLY));
    wait_ready(third.http, true).await;
    assert!(third.log_text().contains("differs from the cluster's invite key"), "{}", third.log_text());

    // On the node that never saw them: the old link has exactly its one use left cluster-wide,
    // the old passes come back, the revoked invite's pass stays out.
    let (_new1, _) = join_with(&newcomer, "new1", &format!("invite={kept}")).await;
    expect_refused(&url(&third, "new2", &format!("invite={kept}")), USED_UP).await;
    let (_old1, _) = join_with(&third, "old1", &format!("pass={kept_pass}")).await;
    expect_refused(&url(&newcomer, "old2", &format!("pass={gone_pass}")), REVOKED).await;
    // What the third node's own file signs is not from this cluster, on that node too; what
    // the CLI beside it makes is (it signs with the cluster's key).
    let own_key_link = relaychat::invite::token::sign_invite(
        b"a-key-of-its-own",
        &relaychat::invite::token::Invite {
            id: relaychat::invite::token::new_invite_id(),
            expires: relaychat::time::unix_now() + 3600,
            uses: 1,
        },
    );
    expect_refused(&url(&third, "new3", &format!("invite={own_key_link}")), FORGED).await;
    let cli_link = invite(&third, &["--uses", "1"]);
    let (_new3, _) = join_with(&veteran, "new3", &format!("invite={cli_link}")).await;
}
