//! The admin API and `relaychat admin` against the real binary: the token rule (check-config and
//! every request), listings, kick / ban / mute as WebSocket clients see them, broadcast, TURN
//! revocation killing a live allocation, and secret rotation keeping calls up across it
//! (docs/ADMIN.md).

mod admin_support;
mod common;
mod turn_support;

use std::process::Command;
use std::time::{Duration, Instant};

use admin_support::{
    admin_config, credential_of, metric, relayed_call, AdminApi, RelayedCall, CALL_CHANNEL, TOKEN,
};
use common::voice::join_voice;
use common::{expect_only_pong, merged_config, run_cli, Client, Server};
use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use turn_support::TurnClient;

/// `relaychat check-config` on `extra` merged over the test base; (success, stderr).
fn check_config(extra: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relaychat.toml");
    std::fs::write(&path, merged_config(extra, &dir.path().join("data"))).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_relaychat"))
        .args(["--config", path.to_str().unwrap(), "check-config"])
        .output()
        .unwrap();
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn check_config_refuses_an_admin_api_off_loopback_without_a_token() {
    let (ok, stderr) = check_config("[admin]\nlisten = \"0.0.0.0:3001\"\n");
    assert!(!ok, "accepted a public admin listener without a token");
    assert!(stderr.contains("admin.token") && stderr.contains("loopback"), "{stderr}");
    let (ok, stderr) = check_config(&format!("[admin]\nlisten = \"0.0.0.0:3001\"\ntoken = \"{TOKEN}\"\n"));
    assert!(ok, "{stderr}");
    let (ok, _) = check_config("[admin]\nlisten = \"127.0.0.1:3001\"\n");
    assert!(ok, "loopback needs no token");
    let (ok, stderr) = check_config("[admin]\nlisten = \"0.0.0.0:3001\"\ntoken = \"short\"\n");
    assert!(!ok && stderr.contains("at least 16"), "{stderr}");
    let (ok, stderr) = check_config("[admin]\nlisten = \"localhost\"\n");
    assert!(!ok && stderr.contains("admin.listen"), "{stderr}");
}

#[tokio::test]
async fn every_request_needs_the_token_and_errors_are_json() {
    let server = Server::start(&admin_config(true));
    let api = AdminApi::of(&server, Some(TOKEN));
    let anonymous = AdminApi { addr: api.addr, token: None };
    let (status, reply) = anonymous.call(Method::GET, "/api/v1/sessions", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(reply["error"].as_str().unwrap().contains("bearer token"), "{reply}");
    let wrong = AdminApi { addr: api.addr, token: Some(format!("{TOKEN}x")) };
    assert_eq!(wrong.call(Method::POST, "/api/v1/users/alice/kick", None).await.0, StatusCode::UNAUTHORIZED);
    let prefix = AdminApi { addr: api.addr, token: Some(TOKEN[..TOKEN.len() - 1].to_string()) };
    assert_eq!(prefix.call(Method::GET, "/api/v1/rooms", None).await.0, StatusCode::UNAUTHORIZED);
    // The right token: in.
    let reply = api.ok(Method::GET, "/api/v1/sessions", None).await;
    assert_eq!(reply, json!({"sessions": [], "not_logged_in": 0}));
    // Clear JSON errors for the rest.
    let (status, reply) = api.call(Method::GET, "/api/v1/nothing", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{reply}");
    let (status, reply) = api.call(Method::DELETE, "/api/v1/sessions", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{reply}");
    let (status, reply) = api.call(Method::POST, "/api/v1/users/alice/ban", Some(json!({"for": 3}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
    let (status, _) = api.call(Method::POST, "/api/v1/users/a/kick", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, reply) = api.call(Method::POST, "/api/v1/users/nobody/kick", None).await;
    assert_eq!((status, reply["error"].as_str().unwrap()), (StatusCode::NOT_FOUND, "nobody is not online"));
    let huge = json!({"text": "x".repeat(20_000)});
    assert_eq!(
        api.call(Method::POST, "/api/v1/broadcast", Some(huge)).await.0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    // The public port knows nothing of the API.
    let (head, _) = common::http_get(server.http, "/api/v1/sessions").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
}

#[tokio::test]
async fn sessions_and_rooms_show_who_is_online_and_in_voice() {
    let server = Server::start(&admin_config(false));
    let api = AdminApi::of(&server, None);
    let mut alice = server.join("alice").await;
    let _bob = server.join("bob").await;
    alice.expect_system("bob has joined.").await;
    join_voice(&mut alice, "alice", Some(json!(["audio", "video"]))).await;
    let reply = api.ok(Method::GET, "/api/v1/sessions", None).await;
    let sessions = reply["sessions"].as_array().unwrap();
    let summary: Vec<(&str, bool)> =
        sessions.iter().map(|s| (s["name"].as_str().unwrap(), s["in_voice"].as_bool().unwrap())).collect();
    assert_eq!(summary, [("alice", true), ("bob", false)]);
    assert!(common::is_iso_timestamp(&sessions[0]["connected_since"]), "{reply}");
    assert!(sessions[0].get("address").is_none(), "addresses only when asked: {reply}");
    let reply = api.ok(Method::GET, "/api/v1/sessions?addresses=true", None).await;
    assert_eq!(reply["sessions"][0]["address"], "127.0.0.1");
    let rooms = api.ok(Method::GET, "/api/v1/rooms", None).await;
    let members = &rooms["rooms"][0]["members"];
    assert_eq!(members.as_array().unwrap().len(), 1, "{rooms}");
    assert_eq!(
        (&members[0]["name"], &members[0]["media_types"]),
        (&json!("alice"), &json!(["audio", "video"]))
    );
    // The CLI shows the same in words.
    let output = run_cli(&server, &["admin", "--url", &api.base(), "sessions"], "");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(text.contains("alice") && text.contains("bob") && text.contains("2 online"), "{text}");
    let output = run_cli(&server, &["admin", "--url", &api.base(), "--json", "rooms"], "");
    let parsed: Value = serde_json::from_slice(&output.stdout).expect("--json prints the reply");
    assert_eq!(parsed["rooms"][0]["members"][0]["name"], "alice");
}

#[tokio::test]
async fn kick_ban_and_mute_reach_the_websocket_clients() {
    let server = Server::start(&admin_config(true));
    let api = AdminApi::of(&server, Some(TOKEN));
    let mut alice = server.join("alice").await;
    let mut bob = server.join("bob").await;
    alice.expect_system("bob has joined.").await;

    // Kick through the CLI (token from the same configuration).
    let output = run_cli(&server, &["admin", "--url", &api.base(), "kick", "bob"], "");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "kicked bob");
    bob.expect_system("You have been kicked by the server operator.").await;
    bob.expect_close().await;
    alice.expect_system("bob was kicked by the server operator.").await;

    // A timed ban: disconnected, refused on return, back after unban.
    let mut carol = server.join("carol").await;
    let reply = api.ok(Method::POST, "/api/v1/users/carol/ban", Some(json!({"duration_s": 600}))).await;
    assert_eq!((reply["banned"].as_str(), reply["was_online"].as_bool()), (Some("carol"), Some(true)));
    carol.expect_system("You have been banned by the server operator.").await;
    carol.expect_close().await;
    let mut again = Client::connect(&server.url(Some("carol"))).await;
    again.expect_system("You are banned.").await;
    api.ok(Method::DELETE, "/api/v1/users/carol/ban", None).await;
    let _carol = server.join("carol").await;

    // Mute: chat refused with a reason, nobody else sees it; unmute: chat flows again.
    let mut dave = server.join("dave").await;
    api.ok(Method::POST, "/api/v1/users/dave/mute", None).await;
    dave.expect_system("You have been muted by the server operator.").await;
    alice.expect_system("dave has joined.").await;
    dave.chat("can anyone hear me").await;
    dave.next_system("You are muted by the server operator.").await;
    expect_only_pong(&mut alice).await;
    api.ok(Method::DELETE, "/api/v1/users/dave/mute", None).await;
    dave.next_system("You are no longer muted.").await;
    dave.chat("now?").await;
    let chat = alice.recv_type("chat").await;
    assert_eq!((&chat["username"], &chat["text"]), (&json!("dave"), &json!("now?")));
}

#[tokio::test]
async fn a_broadcast_reaches_everyone_online() {
    let server = Server::start(&admin_config(false));
    let api = AdminApi::of(&server, None);
    let mut alice = server.join("alice").await;
    let mut bob = server.join("bob").await;
    let output =
        run_cli(&server, &["admin", "--url", &api.base(), "broadcast", "restart", "at", "22:00"], "");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "notice sent to 2 user(s)");
    for client in [&mut alice, &mut bob] {
        client.expect_system("Server notice: restart at 22:00").await;
    }
    // Stored like any notice: a newcomer finds it in the history.
    let mut carol = Client::connect(&server.url(Some("carol"))).await;
    let history = carol.recv_type("history").await;
    assert!(history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["text"] == "Server notice: restart at 22:00"));
}

#[tokio::test]
async fn revocation_kills_a_live_allocation_within_a_second_and_refuses_its_credential() {
    let server = Server::start(&admin_config(false));
    let api = AdminApi::of(&server, None);
    let turn = server.turn_udp.expect("turn is on");
    // A relayed call between them: bob sends to alice's relayed address over a channel.
    let RelayedCall {
        mut alice,
        bob: _bob, // stays in the chat and in the call
        alice_credential,
        alice_turn: mut client,
        bob_turn: mut peer,
        ..
    } = relayed_call(&server).await;
    let (username, credential) = alice_credential;
    peer.send_channel_data(CALL_CHANNEL, b"before").await;
    assert_eq!(client.recv_data(Duration::from_secs(2)).await.as_deref(), Some(&b"before"[..]));
    // (The gauge is bumped once the crate has answered: wait for it.)
    let deadline = Instant::now() + Duration::from_secs(2);
    while metric(&server, "relaychat_turn_allocations_active").await < 2.0 {
        assert!(Instant::now() < deadline, "the allocations never showed in /metrics");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let started = Instant::now();
    let reply =
        api.ok(Method::POST, "/api/v1/users/alice/revoke-turn", Some(json!({"duration_s": 60}))).await;
    assert_eq!(reply["removed_from_voice"], true, "{reply}");
    assert_eq!(reply["credentials_revoked"], true, "{reply}");
    assert!(reply["turn_allocations_deleted"].as_u64().unwrap() >= 1, "{reply}");
    while metric(&server, "relaychat_turn_allocations_active").await > 1.0 {
        assert!(started.elapsed() < Duration::from_secs(1), "the allocation outlived the revocation by 1 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let gone_after = started.elapsed();
    // Media through the relay stops.
    for _ in 0..5 {
        peer.send_channel_data(CALL_CHANNEL, b"after").await;
    }
    assert_eq!(client.recv_data(Duration::from_secs(1)).await, None, "relayed data after the revocation");
    // The credential (unexpired) is refused from now on.
    let refused = client.refresh(Duration::from_secs(600)).await.unwrap_err();
    assert_eq!((refused.code, refused.reason.as_str()), (401, "Credential revoked"), "after {gone_after:?}");
    let mut fresh = TurnClient::udp(turn, &username, &credential).await;
    assert_eq!(fresh.allocate().await.unwrap_err().reason, "Credential revoked");
    assert!(metric(&server, "relaychat_turn_auth_failures_total{reason=\"revoked\"}").await >= 2.0);
    // Bob's side of the call is untouched.
    peer.refresh(Duration::from_secs(600)).await.expect("bob keeps his allocation");
    // And alice was told, and cannot rejoin the call for new credentials.
    alice.expect_system("alice left voice chat").await;
    alice.send("webrtc-join", json!({})).await;
    let error = alice.recv_type("webrtc-error").await;
    assert!(error["error"].as_str().unwrap().starts_with("Your voice chat access was revoked"), "{error}");
    eprintln!("allocation gone {gone_after:?} after the revoke request started");
}

#[tokio::test]
async fn rotation_keeps_calls_up_and_accepts_the_old_secret_for_new_use_only_during_the_grace() {
    let server = Server::start(&format!("{}turn_secret_grace_s = 3\n", admin_config(true)));
    let api = AdminApi::of(&server, Some(TOKEN));
    let turn = server.turn_udp.expect("turn is on");
    let secret_file = server.dir.join("data").join("turn_secret");
    let old_secret = std::fs::read_to_string(&secret_file).unwrap();
    let mut alice = server.join("alice").await;
    let joined = join_voice(&mut alice, "alice", None).await;
    let (old_user, old_credential) = credential_of(&joined["config"]["iceServers"]);
    assert_eq!(old_credential, common::ice::turn_credential(old_secret.trim(), &old_user));
    let mut live = TurnClient::udp(turn, &old_user, &old_credential).await;
    live.allocate().await.unwrap();

    let reply = api.ok(Method::POST, "/api/v1/turn/rotate-secret", None).await;
    assert_eq!(
        (reply["credentials_pushed_to"].as_u64(), reply["grace_s"].as_u64()),
        (Some(1), Some(3)),
        "{reply}"
    );
    let rotated_at = Instant::now();
    let new_secret = std::fs::read_to_string(&secret_file).unwrap();
    assert_ne!(new_secret, old_secret, "a new secret is stored");
    // Everyone in voice gets credentials signed with the new secret at once.
    let pushed = alice.recv_type("webrtc-credentials").await;
    let (new_user, new_credential) = credential_of(&pushed["iceServers"]);
    assert_eq!(new_credential, common::ice::turn_credential(new_secret.trim(), &new_user));
    // During the grace period the old credential works for everything: the live allocation
    // refreshes, and a client that has not applied the push yet can still allocate.
    live.refresh(Duration::from_secs(600)).await.expect("old credential accepted during the grace period");
    let mut late_client = TurnClient::udp(turn, &old_user, &old_credential).await;
    late_client.allocate().await.expect("old credential allocates during the grace period");
    // The new credential works.
    let mut renewed = TurnClient::udp(turn, &new_user, &new_credential).await;
    renewed.allocate().await.expect("new credential accepted");
    // After the grace period the old secret allocates nothing any more...
    tokio::time::sleep(
        Duration::from_secs(3).saturating_sub(rotated_at.elapsed()) + Duration::from_millis(1200),
    )
    .await;
    let mut too_late = TurnClient::udp(turn, &old_user, &old_credential).await;
    let refused = too_late.allocate().await.unwrap_err();
    assert_eq!(
        (refused.code, refused.reason.as_str()),
        (401, "Unauthorized"),
        "old credential after the grace"
    );
    // ...but the calls relayed at the rotation stay up: a browser refreshes its allocation with
    // the credential it allocated with, whatever it was pushed since.
    live.refresh(Duration::from_secs(600)).await.expect("the live allocation keeps refreshing");
    late_client.refresh(Duration::from_secs(600)).await.expect("so does one made during the grace");
    renewed.refresh(Duration::from_secs(600)).await.expect("new credential still accepted");
    assert_eq!(metric(&server, "relaychat_turn_allocations_active").await, 3.0);
}

#[tokio::test]
async fn rotation_is_refused_when_the_secret_comes_from_the_configuration() {
    let server = Server::start(&format!("{}\n{}", admin_config(false), common::ice::secret_config("")));
    let api = AdminApi::of(&server, None);
    let (status, reply) = api.call(Method::POST, "/api/v1/turn/rotate-secret", None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{reply}");
    assert!(reply["error"].as_str().unwrap().contains("[turn] secret"), "{reply}");
}

#[tokio::test]
async fn sessions_show_each_users_turn_allocations_and_traffic() {
    let server = Server::start(&admin_config(false));
    let api = AdminApi::of(&server, None);
    // (Alice and Bob stay in the chat, and so in voice, while `call` lives.)
    let call = relayed_call(&server).await;
    let (client, peer, alice_relay) = (&call.alice_turn, &call.bob_turn, call.alice_relay);
    for _ in 0..3 {
        peer.send_channel_data(CALL_CHANNEL, b"hello").await;
        assert_eq!(client.recv_data(Duration::from_secs(2)).await.as_deref(), Some(&b"hello"[..]));
    }

    let reply = api.ok(Method::GET, "/api/v1/sessions", None).await;
    let turn_of = |name: &str| {
        reply["sessions"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap()["turn"].clone()
    };
    let (alice_turn, bob_turn) = (turn_of("alice"), turn_of("bob"));
    assert_eq!(alice_turn["allocations"].as_array().unwrap().len(), 1, "{reply}");
    assert_eq!(alice_turn["allocations"][0]["relayed"], alice_relay.to_string(), "{reply}");
    assert_eq!(alice_turn["allocations"][0]["transport"], "udp");
    assert_eq!(alice_turn["from_peers"], json!({"bytes": 15, "packets": 3}), "{reply}");
    assert_eq!(bob_turn["to_peers"], json!({"bytes": 15, "packets": 3}), "{reply}");
    assert_eq!(bob_turn["allocations"][0]["channels"], 1, "{reply}");
    assert!(alice_turn["allocations"][0].get("client").is_none(), "addresses only when asked: {reply}");
    let reply = api.ok(Method::GET, "/api/v1/sessions?addresses=true", None).await;
    let client_addr = &reply["sessions"][0]["turn"]["allocations"][0]["client"];
    assert!(client_addr.as_str().unwrap().starts_with("127.0.0.1:"), "{reply}");
}
