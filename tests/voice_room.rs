//! The voice room against the real binary (PROTOCOL.md section 6): `webrtc-joined` with the
//! participants in join order and the room's config, what the others see when someone joins,
//! leaves, disconnects or is kicked, the participant cap, media types and their changes, offers
//! crossing (glare), and the voice notices in the persisted history.

mod common;

use common::ice::{check_ice_servers, secret_config, turn_port};
use common::sdp::PLAIN_SDP;
use common::voice::{
    candidate, expect_error, expect_peer_joined, expect_peer_left, expect_voice_participants, join_voice,
    offer, relay, room, send_candidate,
};
use common::{expect_only_pong, is_iso_timestamp, login, Client, Server};
use serde_json::{json, Value};

#[tokio::test]
async fn joined_peer_joined_and_participants_in_join_order() {
    let server = Server::start(&secret_config(""));
    let port = turn_port(&server);
    let mut alice = server.join("Alice").await;
    let mut bob = server.join("Bob").await;
    alice.next_system("Bob has joined.").await;
    let mut carol = server.join("Carol").await;
    for client in [&mut alice, &mut bob] {
        client.next_system("Carol has joined.").await;
    }

    let joined = join_voice(&mut alice, "Alice", Some(json!(["audio", "video"]))).await;
    assert_eq!(joined.as_object().unwrap().len(), 3, "{joined}");
    assert_eq!(joined["participants"], json!([{"username": "Alice", "mediaTypes": ["audio", "video"]}]));
    let config = &joined["config"];
    assert_eq!(config.as_object().unwrap().len(), 6, "{config}");
    assert_eq!(config["allowVideo"], true);
    assert_eq!(config["allowScreenShare"], false);
    assert_eq!(config["forceRelay"], true);
    assert_eq!(config["iceTransportPolicy"], "relay");
    assert_eq!(config["credentialTtl"], 600);
    check_ice_servers(&config["iceServers"], "127.0.0.1", port, "Alice", 600);
    // Not in voice: only the notice.
    bob.next_system("Alice joined voice chat").await;
    carol.next_system("Alice joined voice chat").await;

    // No mediaTypes: audio.
    let joined = join_voice(&mut bob, "Bob", None).await;
    assert_eq!(
        joined["participants"],
        json!([{"username": "Alice", "mediaTypes": ["audio", "video"]}, {"username": "Bob", "mediaTypes": ["audio"]}])
    );
    check_ice_servers(&joined["config"]["iceServers"], "127.0.0.1", port, "Bob", 600);
    expect_peer_joined(&mut alice, "Bob", json!(["audio"])).await;
    carol.next_system("Bob joined voice chat").await;

    // Screen share is off by default and duplicates collapse.
    let joined = join_voice(&mut carol, "Carol", Some(json!(["video", "screen", "audio", "video"]))).await;
    assert_eq!(
        joined["participants"],
        json!([
            {"username": "Alice", "mediaTypes": ["audio", "video"]},
            {"username": "Bob", "mediaTypes": ["audio"]},
            {"username": "Carol", "mediaTypes": ["video", "audio"]}
        ])
    );
    for client in [&mut alice, &mut bob] {
        expect_peer_joined(client, "Carol", json!(["video", "audio"])).await;
    }
    for client in [&mut alice, &mut bob, &mut carol] {
        expect_only_pong(client).await;
    }
}

#[tokio::test]
async fn leave_sends_peer_left_to_the_others_and_a_notice_to_everyone() {
    let server = Server::start("");
    let [mut alice, mut bob, mut carol] = room(&server, ["Alice", "Bob", "Carol"]).await;
    let mut dave = server.join("Dave").await;
    for client in [&mut alice, &mut bob, &mut carol] {
        client.next_system("Dave has joined.").await;
    }

    bob.send("webrtc-leave", json!({})).await;
    bob.next_system("Bob left voice chat").await; // no peer-left about yourself
    for client in [&mut alice, &mut carol] {
        expect_peer_left(client, "Bob").await;
    }
    dave.next_system("Bob left voice chat").await;
    for client in [&mut alice, &mut bob, &mut carol, &mut dave] {
        expect_only_pong(client).await;
    }

    // Leaving twice, or without joining.
    bob.send("webrtc-leave", json!({})).await;
    expect_error(&mut bob, "Not in voice chat").await;
    dave.send("webrtc-leave", json!({})).await;
    expect_error(&mut dave, "Not in voice chat").await;

    // Bob can come back; the room lists the remaining participants in join order.
    let joined = join_voice(&mut bob, "Bob", Some(json!(["audio"]))).await;
    let names: Vec<&str> =
        joined["participants"].as_array().unwrap().iter().map(|p| p["username"].as_str().unwrap()).collect();
    assert_eq!(names, ["Alice", "Carol", "Bob"]);
}

#[tokio::test]
async fn disconnect_leaves_voice() {
    let server = Server::start("");
    let [mut alice, bob, mut carol] = room(&server, ["Alice", "Bob", "Carol"]).await;
    drop(bob);
    for client in [&mut alice, &mut carol] {
        expect_peer_left(client, "Bob").await;
        client.next_system("Bob has left.").await;
    }
    expect_voice_participants(&server, 2).await;
}

#[tokio::test]
async fn auth_mode_only_logged_in_users_join_and_kick_or_ban_leaves_voice() {
    let server = Server::start("[chat]\nauthentication = true\nadmins = [\"Admin\"]\n");
    let mut stranger = Client::connect(&server.url(Some("Stranger"))).await;
    stranger.recv_type("system").await; // "Authentication required. ..."
                                        // Before login every webrtc-* message gets the original's login handler text.
    let before_login = "Please authenticate first using /register or /login commands in message content.";
    stranger.send("webrtc-join", json!({"mediaTypes": ["audio"]})).await;
    stranger.next_system(before_login).await;
    stranger.send("webrtc-leave", json!({})).await;
    stranger.next_system(before_login).await;
    stranger.send("webrtc-offer", json!({"targetUsername": "Admin", "offer": offer(PLAIN_SDP)})).await;
    stranger.next_system(before_login).await;
    send_candidate(&mut stranger, "Admin", &candidate(&relay(50000)), false).await;
    stranger.next_system(before_login).await;
    expect_only_pong(&mut stranger).await;

    let mut admin = common::login_admin(&server, "Admin").await;
    let mut alice = login(&server, "Alice").await;
    admin.next_system("Alice has joined.").await;
    let mut bob = login(&server, "Bob").await;
    admin.next_system("Bob has joined.").await;
    alice.next_system("Bob has joined.").await;
    join_voice(&mut admin, "Admin", None).await;
    for client in [&mut alice, &mut bob] {
        client.next_system("Admin joined voice chat").await;
    }
    join_voice(&mut alice, "Alice", None).await;
    expect_peer_joined(&mut admin, "Alice", json!(["audio"])).await;
    bob.next_system("Alice joined voice chat").await;
    join_voice(&mut bob, "Bob", None).await;
    for client in [&mut admin, &mut alice] {
        expect_peer_joined(client, "Bob", json!(["audio"])).await;
    }

    admin.chat("/kick Alice").await;
    for client in [&mut admin, &mut bob] {
        client.next_system("Alice was kicked by Admin.").await;
        expect_peer_left(client, "Alice").await;
        client.next_system("Alice has left.").await;
    }
    alice.expect_close().await;

    admin.chat("/ban Bob").await;
    admin.next_system("Bob was banned by Admin.").await;
    expect_peer_left(&mut admin, "Bob").await;
    admin.next_system("Bob has left.").await;
    bob.expect_close().await;
    expect_only_pong(&mut admin).await;
    expect_voice_participants(&server, 1).await;
    // Nothing of all this reached the connection that never logged in.
    expect_only_pong(&mut stranger).await;
}

#[tokio::test]
async fn the_ninth_joiner_is_refused() {
    let server = Server::start("");
    let names = ["User1", "User2", "User3", "User4", "User5", "User6", "User7", "User8", "User9"];
    let mut clients = Vec::new();
    for name in names {
        let client = server.join(name).await;
        clients.push(client);
    }
    let clients_7_token = clients[7].token.clone();
    for (i, name) in names.iter().enumerate().take(8) {
        clients[i].send("webrtc-join", json!({})).await;
        let joined = clients[i].recv_type("webrtc-joined").await;
        assert_eq!(joined["participants"].as_array().unwrap().len(), i + 1);
        clients[i].expect_system(&format!("{name} joined voice chat")).await;
    }
    // Everyone has read everything up to the last notice.
    for client in clients.iter_mut().filter(|c| c.token != clients_7_token) {
        client.expect_system("User8 joined voice chat").await;
    }
    clients[8].send("webrtc-join", json!({"mediaTypes": ["audio"]})).await;
    expect_error(&mut clients[8], "Voice chat is full (8 maximum)").await;
    for client in clients.iter_mut().take(8) {
        expect_only_pong(client).await; // no peer-joined, no notice
    }
    expect_voice_participants(&server, 8).await;

    // A seat frees up: the ninth gets in.
    clients[0].send("webrtc-leave", json!({})).await;
    clients[8].expect_system("User1 left voice chat").await;
    let joined = join_voice(&mut clients[8], "User9", None).await;
    assert_eq!(joined["participants"].as_array().unwrap().len(), 8);
    assert_eq!(joined["participants"][7]["username"], "User9");
}

#[tokio::test]
async fn max_participants_is_configurable() {
    let server = Server::start("[webrtc]\nmax_participants = 2\n");
    let [_alice, _bob] = room(&server, ["Alice", "Bob"]).await;
    let mut carol = server.join("Carol").await;
    carol.send("webrtc-join", json!({})).await;
    expect_error(&mut carol, "Voice chat is full (2 maximum)").await;
}

#[tokio::test]
async fn media_types_are_filtered_by_allow_video_and_allow_screen_share() {
    let server = Server::start("[webrtc]\nallow_video = false\nallow_screen_share = true\n");
    let mut alice = server.join("Alice").await;
    for requested in [json!(["video"]), json!(["bogus"]), json!([]), json!("audio"), json!([42])] {
        alice.send("webrtc-join", json!({"mediaTypes": requested})).await;
        expect_error(&mut alice, "No valid media types requested").await;
    }
    let joined = join_voice(&mut alice, "Alice", Some(json!(["audio", "video", "screen", "bogus"]))).await;
    assert_eq!(joined["participants"], json!([{"username": "Alice", "mediaTypes": ["audio", "screen"]}]));
    assert_eq!(joined["config"]["allowVideo"], false);
    assert_eq!(joined["config"]["allowScreenShare"], true);

    // Defaults: video yes, screen no.
    let server = Server::start("");
    let mut bob = server.join("Bob").await;
    bob.send("webrtc-join", json!({"mediaTypes": ["screen"]})).await;
    expect_error(&mut bob, "No valid media types requested").await;
    let joined = join_voice(&mut bob, "Bob", Some(json!(["screen", "video"]))).await;
    assert_eq!(joined["participants"], json!([{"username": "Bob", "mediaTypes": ["video"]}]));
}

#[tokio::test]
async fn media_change_goes_to_the_others_only() {
    let server = Server::start("");
    let [mut alice, mut bob, mut carol] = room(&server, ["Alice", "Bob", "Carol"]).await;
    alice.send("webrtc-media-change", json!({"mediaTypes": ["audio", "video", "screen"]})).await;
    for client in [&mut bob, &mut carol] {
        assert_eq!(
            client.recv().await,
            json!({"type": "webrtc-media-changed", "username": "Alice", "mediaTypes": ["audio", "video"]})
        );
    }
    expect_only_pong(&mut alice).await;

    alice.send("webrtc-media-change", json!({"mediaTypes": ["bogus"]})).await;
    expect_error(&mut alice, "No valid media types requested").await;
    expect_only_pong(&mut bob).await;

    // An explicit empty list is "everything off"; a missing list means audio.
    bob.send("webrtc-media-change", json!({"mediaTypes": []})).await;
    bob.send("webrtc-media-change", json!({})).await;
    for client in [&mut alice, &mut carol] {
        for types in [json!([]), json!(["audio"])] {
            assert_eq!(
                client.recv().await,
                json!({"type": "webrtc-media-changed", "username": "Bob", "mediaTypes": types})
            );
        }
    }
    expect_only_pong(&mut bob).await;

    // A newcomer sees the current media types.
    let mut dave = server.join("Dave").await;
    let joined = join_voice(&mut dave, "Dave", None).await;
    assert_eq!(joined["participants"][0], json!({"username": "Alice", "mediaTypes": ["audio", "video"]}));
}

#[tokio::test]
async fn glare_both_offers_are_relayed() {
    let server = Server::start("");
    let [mut alice, mut bob] = room(&server, ["Alice", "Bob"]).await;
    let from_alice = offer("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n");
    let from_bob = offer("v=0\r\no=- 2 1 IN IP4 0.0.0.0\r\n");
    let (_, _) = tokio::join!(
        alice.send("webrtc-offer", json!({"targetUsername": "Bob", "offer": from_alice})),
        bob.send("webrtc-offer", json!({"targetUsername": "Alice", "offer": from_bob})),
    );
    assert_eq!(alice.recv().await, json!({"type": "webrtc-offer", "fromUsername": "Bob", "offer": from_bob}));
    assert_eq!(
        bob.recv().await,
        json!({"type": "webrtc-offer", "fromUsername": "Alice", "offer": from_alice})
    );
    expect_only_pong(&mut alice).await;
    expect_only_pong(&mut bob).await;
}

#[tokio::test]
async fn voice_notices_are_persisted() {
    let dir = tempfile::tempdir().unwrap();
    let texts = |history: &Value| -> Vec<String> {
        history["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["text"].as_str().unwrap().to_string())
            .collect()
    };
    {
        let server = Server::start_in(dir.path(), "");
        let mut alice = server.join("Alice").await;
        join_voice(&mut alice, "Alice", None).await;
        alice.send("webrtc-leave", json!({})).await;
        alice.next_system("Alice left voice chat").await;

        let mut carol = Client::connect(&server.url(Some("Carol"))).await;
        let history = carol.recv_type("history").await;
        assert_eq!(
            texts(&history),
            ["Alice has joined.", "Alice joined voice chat", "Alice left voice chat"]
        );
        let entry = &history["messages"][1];
        assert_eq!(entry["type"], "system");
        assert_eq!(entry["username"], Value::Null);
        assert!(is_iso_timestamp(&entry["timestamp"]), "{entry}");
    }
    let server = Server::start_in(dir.path(), "");
    let mut dave = Client::connect(&server.url(Some("Dave"))).await;
    let history = texts(&dave.recv_type("history").await);
    assert!(
        history.windows(2).any(|w| w == ["Alice joined voice chat", "Alice left voice chat"]),
        "{history:?}"
    );
}
