//! Cluster mode, accounts and moderation: one set of accounts, admins and bans for all nodes.
//! The operator's `relaychat user add` writes to the cluster store; an account registered on
//! one node logs in on another; of two nodes registering one name at once exactly one wins; an
//! admin's /ban on one node closes the user on another and keeps them out everywhere.

mod cluster_support;
mod common;

use cluster_support::{start_nodes, Redis};
use common::{login, run_cli, Client};

const AUTH: &str = "[chat]\nauthentication = true\n";

async fn authenticated_client(node: &common::Server) -> Client {
    let mut client = Client::connect(&node.url(None)).await;
    client
        .expect_system(
            "Authentication required. Use /register <username> <password> or /login <username> <password> in message content.",
        )
        .await;
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn accounts_admins_and_bans_are_shared_by_every_node() {
    let redis = Redis::start();
    let nodes = start_nodes(&redis, 3, AUTH).await;

    // The operator adds an admin beside node 1; it can log in on node 3.
    let added = run_cli(&nodes[0], &["user", "add", "boss", "--admin"], "password123\n");
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    let listed = run_cli(&nodes[1], &["user", "list"], "");
    assert!(String::from_utf8_lossy(&listed.stdout).contains("boss"), "user list reads the cluster store");
    let mut boss = authenticated_client(&nodes[2]).await;
    boss.chat("/login boss password123").await;
    boss.expect_system("boss has joined.").await;

    // Registered on node 1, logged in on node 2.
    let mut first = authenticated_client(&nodes[0]).await;
    first.chat("/register mallory password123").await;
    first.next_system("Registered. Please /login.").await;
    drop(first);
    let mut mallory = authenticated_client(&nodes[1]).await;
    mallory.chat("/login mallory password123").await;
    mallory.expect_system("mallory has joined.").await;
    boss.expect_system("mallory has joined.").await;

    // The admin on node 3 bans the user on node 2: closed there, announced everywhere.
    boss.chat("/ban mallory").await;
    mallory.expect_system("You have been banned by an admin.").await;
    mallory.expect_close().await;
    boss.expect_system("mallory was banned by boss.").await;
    boss.expect_system("mallory has left.").await;
    // And kept out on every node.
    let mut again = authenticated_client(&nodes[0]).await;
    again.chat("/login mallory password123").await;
    again.expect_system("You are banned.").await;

    // Two nodes register one name at once: exactly one succeeds.
    let mut a = authenticated_client(&nodes[0]).await;
    let mut b = authenticated_client(&nodes[2]).await;
    tokio::join!(a.chat("/register twin password123"), b.chat("/register twin password456"));
    let (ra, rb) = tokio::join!(a.recv_type("system"), b.recv_type("system"));
    let mut answers =
        vec![ra["text"].as_str().unwrap().to_string(), rb["text"].as_str().unwrap().to_string()];
    answers.sort();
    assert_eq!(answers, ["Registered. Please /login.", "Username exists."]);

    // A name registered on one node cannot be registered on another.
    let _ = login(&nodes[0], "carol").await;
    let mut dup = authenticated_client(&nodes[1]).await;
    dup.chat("/register carol password123").await;
    dup.next_system("Username exists.").await;
}
