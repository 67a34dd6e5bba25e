//! Slash commands against the real binary (PROTOCOL.md sections 2 and 5): `/help`, `/list`,
//! `/block`, `/nick` in open mode, and the authentication-mode transcript of the original
//! server: register, login, the login gate, and admins' `/kick`, `/ban`, `/unban`.

mod common;

use common::{expect_only_pong, Client, Server};
use serde_json::json;

#[tokio::test]
async fn commands() {
    let server = Server::start("[chat]\nnick_change_cooldown_ms = 60000\nmax_messages_per_second = 50\n");
    let mut alice = server.join("Alice").await;
    let mut bob = server.join("Bob").await;
    alice.expect_system("Bob has joined.").await;

    alice.chat("/help").await;
    let help = alice.recv().await;
    assert_eq!(help["type"], "system");
    let text = help["text"].as_str().unwrap();
    assert_eq!(text.lines().count(), 8);
    for command in ["/nick", "/list", "/kick", "/ban", "/unban", "/block", "/unblock", "/help"] {
        assert!(text.contains(command), "{command} missing from {text}");
    }

    alice.chat("/list").await;
    alice.next_system("Online users: Alice, Bob").await;

    alice.chat("/block Bob").await;
    alice.recv_type("system").await;
    alice.chat("/list").await;
    alice.next_system("Online users: Alice, [B]Bob").await;
    bob.chat("can you hear me").await;
    bob.recv_type("chat").await; // handled: had it reached Alice, it would be before her pong
    expect_only_pong(&mut alice).await;
    alice.chat("/unblock Bob").await;
    alice.recv_type("system").await;
    bob.chat("now?").await;
    assert_eq!(alice.recv_type("chat").await["text"], "now?");

    bob.chat("/nick Robert").await;
    alice.expect_system("Bob is now Robert").await;
    bob.expect_system("Bob is now Robert").await;
    bob.chat("/nick Bobby").await;
    let cooldown = bob.recv().await;
    assert!(
        cooldown["text"]
            .as_str()
            .unwrap()
            .starts_with("You can only change your nickname once every 60 seconds. Please wait "),
        "{cooldown}"
    );
    alice.chat("/nick Robert").await;
    alice.next_system("Username \"Robert\" is already taken.").await;
    alice.chat("/nick x!").await;
    alice
        .next_system("Illegal username. Must be 3-20 characters, only letters, digits, underscore, dash.")
        .await;
    alice.chat("/list").await;
    alice.next_system("Online users: Alice, Robert").await;

    alice.chat("/kick Robert").await;
    alice.next_system("You do not have permission to use /kick.").await;
    alice.chat("/ban Robert").await;
    alice.next_system("You do not have permission to use /ban.").await;
    alice.chat("/unban Robert").await;
    alice.next_system("You do not have permission to use /unban.").await;
}

/// The reference transcript of the original server in authentication mode.
#[tokio::test]
async fn authentication_mode() {
    let server =
        Server::start("[chat]\nauthentication = true\nmax_messages_per_second = 50\nadmins = [\"Admin\"]\n");
    let mut a = Client::connect(&server.url(Some("ignored"))).await;
    a.recv_type("heartbeat-config").await;
    a.next_system("Authentication required. Use /register <username> <password> or /login <username> <password> in message content.").await;
    a.chat("hi").await;
    a.next_system("Please authenticate first using /register or /login commands.").await;
    a.chat("/register Alice").await;
    a.next_system("Username and password required.").await;
    a.chat("/register A! password123").await;
    a.next_system("Illegal username. Requirement: 3-20 characters alphanumeric.").await;
    a.chat("/register Alice short").await;
    a.next_system("Password length invalid. Must be 8-32 characters.").await;
    a.chat("/register Alice password123").await;
    a.next_system("Registered. Please /login.").await;
    a.chat("/register Alice password123").await;
    a.next_system("Username exists.").await;
    a.chat("/login Alice wrongpass1").await;
    a.next_system("Login failed.").await;
    a.send("webrtc-join", json!({})).await;
    a.next_system("Please authenticate first using /register or /login commands in message content.").await;
    a.chat("/login Alice password123").await;
    assert_eq!(a.recv().await["type"], "history");
    a.next_system("MOTD: Welcome").await;
    a.next_system("Alice has joined.").await;
    a.chat("/nick Bob").await;
    a.next_system("Nick change is disabled on authentication servers.").await;
    a.chat("hello after login").await;
    assert_eq!(a.recv().await["text"], "hello after login");

    // The same name cannot be online twice.
    let mut twin = Client::connect(&server.url(None)).await;
    twin.expect_system(
        "Authentication required. Use /register <username> <password> or /login <username> <password> in message content.",
    )
    .await;
    twin.chat("/login Alice password123").await;
    twin.next_system("Username in use.").await;
    twin.expect_close().await;

    // (Five failures for one ip+name block it: hub::tests::session, with the clock in hand.)

    // Admins kick, ban and unban.
    // A listed name cannot be registered; the operator creates the account, which makes it admin.
    let mut admin = Client::connect(&server.url(None)).await;
    admin.recv_type("system").await;
    admin.chat("/register Admin adminpass1").await;
    admin.next_system("Username exists.").await;
    assert!(common::run_cli(&server, &["user", "add", "Admin"], "adminpass1\n").status.success());
    admin.chat("/login Admin adminpass1").await;
    admin.expect_system("Admin has joined.").await;
    a.expect_system("Admin has joined.").await;
    a.chat("/kick Admin").await;
    a.next_system("You do not have permission to use /kick.").await;
    admin.chat("/ban Alice").await;
    admin.expect_system("Alice was banned by Admin.").await;
    a.next_system("You have been banned by an admin.").await;
    a.expect_close().await;
    admin.expect_system("Alice has left.").await;

    let mut banned = Client::connect(&server.url(None)).await;
    banned.recv_type("system").await;
    banned.chat("/login Alice password123").await;
    banned.next_system("You are banned.").await;
    banned.expect_close().await;

    admin.chat("/unban Alice").await;
    admin.expect_system("Alice was unbanned by Admin.").await;
}
