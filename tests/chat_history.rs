//! History and persistence against the real binary: a long history arrives whole, history and
//! bans survive a restart, and SIGTERM announces everyone's departure, flushes and exits 0.

mod common;

use common::{is_iso_timestamp, Client, Server};

#[tokio::test]
async fn a_long_history_arrives_whole() {
    // Over the server's 4 KiB fragment size, with multi-byte characters across the boundaries.
    let server = Server::start("[chat]\nmax_messages_per_second = 1000\n");
    let mut alice = server.join("Alice").await;
    let texts: Vec<String> = (0..20).map(|i| format!("{i} {}", "é€😀".repeat(150))).collect();
    for text in &texts {
        alice.chat(text).await;
        alice.recv_type("chat").await;
    }
    let mut bob = Client::connect(&server.url(Some("Bob"))).await;
    let history = bob.recv_type("history").await;
    let chats: Vec<&str> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["type"] == "chat")
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(chats, texts.iter().map(String::as_str).collect::<Vec<_>>());
    bob.expect_system("Bob has joined.").await;
}

#[tokio::test]
async fn history_and_bans_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        "[chat]\nhistory_limit = 5\nauthentication = true\nadmins = [\"Admin\"]\nmax_messages_per_second = 50\n";
    let mut server = Server::start_in(dir.path(), config);
    let mut admin = Client::connect(&server.url(None)).await;
    admin.recv_type("system").await;
    assert!(common::run_cli(&server, &["user", "add", "Admin"], "adminpass1\n").status.success());
    admin.chat("/login Admin adminpass1").await;
    admin.expect_system("Admin has joined.").await;
    for i in 0..6 {
        admin.chat(&format!("message {i}")).await;
        admin.recv_type("chat").await;
    }
    admin.chat("/ban Mallory").await;
    admin.expect_system("Mallory was banned by Admin.").await;
    let (status, _) = server.terminate();
    assert!(status.success());

    let server = Server::start_in(dir.path(), config);
    let mut admin = Client::connect(&server.url(None)).await;
    admin.recv_type("system").await;
    admin.chat("/login Admin adminpass1").await;
    let history = admin.recv_type("history").await;
    let texts: Vec<&str> =
        history["messages"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(
        texts,
        [
            "message 3",
            "message 4",
            "message 5",
            "Mallory was banned by Admin.",
            "Admin has left. (Server Shutdown)"
        ]
    );
    assert!(history["messages"].as_array().unwrap().iter().all(|m| is_iso_timestamp(&m["timestamp"])));
    assert_eq!(history["messages"][0]["username"], "Admin");
    assert_eq!(history["messages"][0]["type"], "chat");
    // Mallory's ban was persisted: the account cannot even be registered.
    admin.chat("/unban Mallory").await;
    admin.expect_system("Mallory was unbanned by Admin.").await;
}

#[tokio::test]
async fn sigterm_announces_flushes_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(dir.path(), "");
    let mut alice = server.join("Alice").await;
    let mut bob = server.join("Bob").await;
    alice.expect_system("Bob has joined.").await;
    let (status, took) = server.terminate();
    assert!(status.success(), "{status:?}");
    assert!(took < std::time::Duration::from_secs(5), "took {took:?}");
    for client in [&mut alice, &mut bob] {
        client.expect_system("Alice has left. (Server Shutdown)").await;
        client.expect_system("Bob has left. (Server Shutdown)").await;
        client.expect_close().await;
    }
    let server = Server::start_in(dir.path(), "");
    let mut carol = Client::connect(&server.url(Some("Carol"))).await;
    let history = carol.recv_type("history").await;
    let texts: Vec<&str> =
        history["messages"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert!(
        texts.ends_with(&["Alice has left. (Server Shutdown)", "Bob has left. (Server Shutdown)"]),
        "{texts:?}"
    );
}
