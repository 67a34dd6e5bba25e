//! Invite-only mode against the real binary: links from `relaychat invite`, member passes,
//! refusals with their texts, and the default (off) leaving clients of the original unchanged.

mod common;

use common::{run_cli, Client, Event, Server};
use serde_json::json;

const INVITE_ONLY: &str = "[chat]\ninvite_only = true\n";

/// `relaychat invite ...` beside the running server; returns the token from the printed link.
fn invite(server: &Server, args: &[&str]) -> String {
    let mut all = vec!["invite", "--base-url", "https://chat.example.org/"];
    all.extend_from_slice(args);
    let output = run_cli(server, &all, "");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let link = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let token =
        link.strip_prefix("https://chat.example.org/?invite=").unwrap_or_else(|| panic!("link: {link}"));
    token.to_string()
}

fn url(server: &Server, name: &str, query: &str) -> String {
    format!("ws://{}/?username={name}&{query}", server.http)
}

/// Connects and expects the refusal: the text as a system frame, then close 1008 with it.
async fn expect_refused(url: &str, text: &str) {
    let mut client = Client::connect(url).await;
    assert_eq!(client.token, format!("refused:{}", json!({"type": "system", "text": text})));
    match client.next_event().await {
        Event::Closed(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 1008);
            assert_eq!(frame.reason.as_str(), text);
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
}

/// Connects with `query` and reads the welcome up to "<name> has joined."; returns the client
/// and the member pass it was handed.
async fn join_with(server: &Server, name: &str, query: &str) -> (Client, String) {
    let mut client = Client::connect(&url(server, name, query)).await;
    assert!(!client.token.starts_with("refused"), "{}", client.token);
    let pass = client.recv().await;
    assert_eq!(pass["type"], "member-pass", "{pass}");
    let pass = pass["pass"].as_str().expect("pass").to_string();
    client.expect_system(&format!("{name} has joined.")).await;
    (client, pass)
}

#[tokio::test]
async fn without_an_invite_nobody_gets_in_and_nothing_is_seen() {
    let server = Server::start(INVITE_ONLY);
    let missing = "This server is invite-only: open the invite link you were given.";
    expect_refused(&server.url(Some("Stranger")), missing).await;
    expect_refused(&url(&server, "Stranger", "invite="), missing).await;
    let forged = "This invite link is not valid (damaged, or not from this server). Ask for a new one.";
    expect_refused(&url(&server, "Stranger", "invite=i.0011223344556677.99999999999.5.AAAA"), forged).await;
    expect_refused(&url(&server, "Stranger", "pass=m.garbage"), forged).await;
    // A real invite with its allowance raised is forged too.
    let token = invite(&server, &["--uses", "1"]);
    let raised = token.replacen(".1.", ".50.", 1);
    expect_refused(&url(&server, "Stranger", &format!("invite={raised}")), forged).await;
    // The refused never joined: a member who then comes in sees nobody before them.
    let (mut member, _) = join_with(&server, "Member", &format!("invite={token}")).await;
    member.chat("/list").await;
    member.expect_system("Online users: Member").await;
}

#[tokio::test]
async fn an_invite_admits_its_number_of_people_and_passes_bring_them_back() {
    let server = Server::start(INVITE_ONLY);
    let token = invite(&server, &["--expires", "1h", "--uses", "2"]);
    let (alice, alice_pass) = join_with(&server, "Alice", &format!("invite={token}")).await;
    let (mut bob, _) = join_with(&server, "Bob", &format!("invite={token}")).await;
    let used_up = "This invite link has already been used. Ask for a new one.";
    expect_refused(&url(&server, "Carol", &format!("invite={token}")), used_up).await;

    // Alice reconnects (a reload) with her pass, the spent invite still in the URL: the pass
    // wins, no use is spent, and she gets a fresh pass.
    drop(alice);
    bob.expect_system("Alice has left.").await;
    let (_alice, renewed) = join_with(&server, "Alice", &format!("invite={token}&pass={alice_pass}")).await;
    assert_ne!(renewed, "");
    let listed = run_cli(&server, &["invite", "--list"], "");
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.contains("used 2/2"), "{listed}");

    // Revoking the invite shuts out the passes it led to.
    let id = token.split('.').nth(1).expect("id").to_string();
    let revoked = run_cli(&server, &["invite", "--revoke", &id], "");
    assert!(revoked.status.success(), "{}", String::from_utf8_lossy(&revoked.stderr));
    expect_refused(
        &url(&server, "Alice2", &format!("pass={renewed}")),
        "This invite has been revoked by the server's operator.",
    )
    .await;
    let unknown = run_cli(&server, &["invite", "--revoke", "ffffffffffffffff"], "");
    assert!(!unknown.status.success());
}

#[tokio::test]
async fn an_expired_invite_is_refused_with_its_own_text() {
    let server = Server::start(INVITE_ONLY);
    let token = invite(&server, &["--expires", "1s"]);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    expect_refused(
        &url(&server, "Late", &format!("invite={token}")),
        "This invite link has expired. Ask for a new one.",
    )
    .await;
}

#[tokio::test]
async fn with_invite_only_off_clients_of_the_original_are_unchanged() {
    let server = Server::start("");
    // No member-pass frame: the welcome is the original's, even with invite parameters.
    for (name, query) in [("Plain", ""), ("WithParams", "invite=i.x.1.1.AAAA&pass=m.y")] {
        let mut client = Client::connect(&url(&server, name, query)).await;
        assert!(!client.token.starts_with("refused"), "{}", client.token);
        assert_eq!(client.recv().await["type"], "heartbeat-config");
        assert_eq!(client.recv().await["type"], "history");
        client.next_system("MOTD: Welcome").await;
        client.next_system(&format!("{name} has joined.")).await;
    }
}

#[tokio::test]
async fn registration_can_be_closed_or_left_to_invited_browsers() {
    let server = Server::start("[chat]\nauthentication = true\nregistration = \"invite\"\n");
    let mut uninvited = Client::connect(&server.url(None)).await;
    uninvited.recv_type("heartbeat-config").await;
    uninvited.chat("/register Walkin password123").await;
    uninvited
        .expect_system("Registration on this server needs an invite: open the invite link you were given.")
        .await;
    let token = invite(&server, &[]);
    let mut invited = Client::connect(&url(&server, "x", &format!("invite={token}"))).await;
    assert_eq!(invited.recv().await["type"], "member-pass");
    invited.chat("/register Invited password123").await;
    invited.expect_system("Registered. Please /login.").await;

    let closed = Server::start("[chat]\nauthentication = true\nregistration = \"closed\"\n");
    let mut anyone = Client::connect(&closed.url(None)).await;
    anyone.recv_type("heartbeat-config").await;
    anyone.chat("/register Anyone password123").await;
    anyone.expect_system("Registration is closed on this server: ask its operator for an account.").await;
    assert!(run_cli(&closed, &["user", "add", "Anyone"], "password123\n").status.success());
    anyone.chat("/login Anyone password123").await;
    anyone.expect_system("Anyone has joined.").await;
}
