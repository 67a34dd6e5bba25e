//! Black box: the real binary hands out TURN credentials in `webrtc-joined`; two TURN clients
//! allocate with exactly those (one over UDP, one over TCP), relay to each other, and lose their
//! allocations when they leave voice or disconnect.

mod common;
mod turn_support;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Client, Server};
use serde_json::{json, Value};
use turn_support::TurnClient;

const WAIT: Duration = Duration::from_secs(2);

/// Joins voice and returns (username, credential, port) from `webrtc-joined`.
async fn join_voice(client: &mut Client) -> (String, String, u16) {
    client.send("webrtc-join", json!({"mediaTypes": ["audio"]})).await;
    let joined: Value = client.recv_type("webrtc-joined").await;
    let ice = &joined["config"]["iceServers"][0];
    let urls: Vec<&str> = ice["urls"].as_array().unwrap().iter().map(|u| u.as_str().unwrap()).collect();
    assert!(urls.iter().any(|u| u.ends_with("?transport=udp")), "{urls:?}");
    assert!(urls.iter().any(|u| u.ends_with("?transport=tcp")), "{urls:?}");
    let port = urls[0].rsplit(':').next().unwrap().split('?').next().unwrap().parse().unwrap();
    (ice["username"].as_str().unwrap().into(), ice["credential"].as_str().unwrap().into(), port)
}

#[tokio::test]
async fn credentials_from_webrtc_joined_allocate_and_relay_until_leave() {
    let server = Server::start("");
    let mut alice_ws = server.join("alice").await;
    let mut bob_ws = server.join("bob").await;
    let (alice_user, alice_pass, port) = join_voice(&mut alice_ws).await;
    let (bob_user, bob_pass, bob_port) = join_voice(&mut bob_ws).await;
    assert_eq!(port, bob_port);
    let turn_addr: SocketAddr = ([127, 0, 0, 1], port).into();

    let mut alice = TurnClient::udp(turn_addr, &alice_user, &alice_pass).await;
    let mut bob = TurnClient::tcp(turn_addr, &bob_user, &bob_pass).await;
    let alice_relay = alice.allocate().await.expect("alice allocates with her webrtc-joined credential");
    let bob_relay = bob.allocate().await.expect("bob allocates over TCP with his");
    alice.create_permission(&[bob_relay]).await.unwrap();
    bob.create_permission(&[alice_relay]).await.unwrap();
    alice.channel_bind(0x4000, bob_relay).await.unwrap();
    bob.channel_bind(0x4000, alice_relay).await.unwrap();
    for i in 0..10u8 {
        alice.send_channel_data(0x4000, &[i; 33]).await;
        assert_eq!(bob.recv_data(WAIT).await, Some(vec![i; 33]));
        bob.send_channel_data(0x4000, &[i; 35]).await;
        assert_eq!(alice.recv_data(WAIT).await, Some(vec![i; 35]));
    }

    // Alice leaves voice: her allocation is deleted and bob's data no longer reaches her.
    alice_ws.send("webrtc-leave", json!({})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..5 {
        bob.send_channel_data(0x4000, b"after leave").await;
    }
    assert_eq!(alice.recv_data(Duration::from_secs(1)).await, None, "nothing after webrtc-leave");
    let refused = alice.refresh(Duration::from_secs(600)).await.unwrap_err();
    assert_eq!(refused.code, 401, "{refused:?}");

    // Bob disconnects: the relay closes his TCP connection with his allocation.
    drop(bob_ws);
    let closed = tokio::time::timeout(Duration::from_secs(3), async {
        while bob.recv_raw(Duration::from_secs(30)).await.is_some() {}
    })
    .await;
    assert!(closed.is_ok(), "bob's TURN TCP connection is closed after he disconnected");
    let mut again = TurnClient::udp(turn_addr, &bob_user, &bob_pass).await;
    assert_eq!(again.allocate().await.unwrap_err().reason, "Not in voice chat");

    // No participant transport address is logged at info level or above (debug may).
    let log = server.log_text();
    for client in [alice.local_addr().await, bob.local_addr().await, again.local_addr().await] {
        let port = format!(":{}", client.port());
        let leaks: Vec<&str> = log
            .lines()
            .filter(|l| !l.contains("DEBUG") && !l.contains("TRACE") && l.contains(&port))
            .collect();
        assert!(leaks.is_empty(), "client address {client} logged: {leaks:#?}");
    }
}

async fn login(server: &Server, name: &str) -> Client {
    let mut client = Client::connect(&server.url(None)).await;
    client.recv_type("system").await; // "Authentication required. ..."
    client.chat(&format!("/register {name} password123")).await;
    client.expect_system("Registered. Please /login.").await;
    client.chat(&format!("/login {name} password123")).await;
    client.expect_system(&format!("{name} has joined.")).await;
    client
}

/// Allocates with `webrtc-joined` credentials over UDP and returns the client and its relay.
async fn allocate_from_joined(ws: &mut Client) -> (TurnClient, SocketAddr) {
    let (user, pass, port) = join_voice(ws).await;
    let mut client = TurnClient::udp(([127, 0, 0, 1], port).into(), &user, &pass).await;
    let relay = client.allocate().await.expect("allocate with webrtc-joined credentials");
    (client, relay)
}

/// Sends from `from` (channel 0x4000 bound to the other's relay) and reports delivery at `to`.
async fn delivered(from: &TurnClient, to: &TurnClient) -> bool {
    while to.recv_raw(Duration::from_millis(100)).await.is_some() {}
    for _ in 0..3 {
        from.send_channel_data(0x4000, b"probe").await;
    }
    let got = to.recv_data(Duration::from_secs(1)).await.is_some();
    while to.recv_raw(Duration::from_millis(100)).await.is_some() {}
    got
}

#[tokio::test]
async fn kick_and_ban_delete_allocations_at_once() {
    let server = Server::start("[chat]\nauthentication = true\nadmins = [\"Admin\"]\n");
    let mut admin_ws = common::login_admin(&server, "Admin").await;
    let mut alice_ws = login(&server, "Alice").await;
    let mut bob_ws = login(&server, "Bob").await;
    let (mut admin, admin_relay) = allocate_from_joined(&mut admin_ws).await;
    let (mut alice, alice_relay) = allocate_from_joined(&mut alice_ws).await;
    let (mut bob, bob_relay) = allocate_from_joined(&mut bob_ws).await;
    admin.create_permission(&[alice_relay, bob_relay]).await.unwrap();
    alice.channel_bind(0x4000, admin_relay).await.unwrap();
    bob.channel_bind(0x4000, admin_relay).await.unwrap();
    admin.channel_bind(0x4000, alice_relay).await.unwrap();
    admin.channel_bind(0x4001, bob_relay).await.unwrap();
    assert!(delivered(&admin, &alice).await, "admin -> alice before the kick");
    assert!(delivered(&alice, &admin).await, "alice -> admin before the kick");

    admin_ws.chat("/kick Alice").await;
    admin_ws.expect_system("Alice was kicked by Admin.").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!delivered(&admin, &alice).await, "nothing reaches a kicked user");
    assert!(!delivered(&alice, &admin).await, "a kicked user relays nothing");
    assert_eq!(alice.refresh(Duration::from_secs(600)).await.unwrap_err().code, 401);

    // Bob still works until he is banned.
    bob.send_channel_data(0x4000, b"bob").await;
    assert_eq!(admin.recv_data(WAIT).await.as_deref(), Some(&b"bob"[..]));
    admin_ws.chat("/ban Bob").await;
    admin_ws.expect_system("Bob was banned by Admin.").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!delivered(&bob, &admin).await, "a banned user relays nothing");
    assert_eq!(bob.refresh(Duration::from_secs(600)).await.unwrap_err().code, 401);
    // The admin's own allocation is untouched.
    admin.refresh(Duration::from_secs(600)).await.unwrap();
}

/// A credential belongs to one stay in voice: once its holder leaves, neither a rejoin of the
/// same user nor another person under the same name makes it valid again.
#[tokio::test]
async fn an_earlier_holders_credential_stays_dead_when_the_name_is_back_in_voice() {
    let server = Server::start("");
    let mut first = server.join("alice").await;
    let (old_user, old_pass, port) = join_voice(&mut first).await;
    let turn_addr: SocketAddr = ([127, 0, 0, 1], port).into();
    // The first alice goes; a second person takes the name and joins the call.
    drop(first);
    for _ in 0..50 {
        let (info, _) = server.get_json("/server-info").await;
        if info["currentStats"]["connectedUsers"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut second = server.join("alice").await;
    let (new_user, new_pass, _) = join_voice(&mut second).await;
    assert_ne!(old_user, new_user);
    let mut stale = TurnClient::udp(turn_addr, &old_user, &old_pass).await;
    assert_eq!(stale.allocate().await.unwrap_err().reason, "Not in voice chat");
    let mut current = TurnClient::udp(turn_addr, &new_user, &new_pass).await;
    current.allocate().await.expect("the current holder's credential works");
}
