//! Reaching a test server's admin API: its address from the start-up log, requests through the
//! same client `relaychat admin` uses, the `/metrics` values the TURN checks read, and a
//! relayed call between two chat users for the TURN endpoints to act on.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use serde_json::Value;

use crate::common::voice::join_voice;
use crate::common::{http_get, Client, Server};
use crate::turn_support::TurnClient;

pub const TOKEN: &str = "test-admin-token-0123456789";

/// `[admin]` on an ephemeral loopback port, with or without the test token.
pub fn admin_config(with_token: bool) -> String {
    let token = if with_token { format!("token = \"{TOKEN}\"\n") } else { String::new() };
    format!("[admin]\nlisten = \"127.0.0.1:0\"\n{token}")
}

pub struct AdminApi {
    pub addr: SocketAddr,
    pub token: Option<String>,
}

impl AdminApi {
    /// The API of `server`, found in its log ("admin api listening on ADDR").
    pub fn of(server: &Server, token: Option<&str>) -> AdminApi {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = server.log_text();
            let found = log.lines().find_map(|line| {
                let at = line.find("admin api listening on ")?;
                line[at + "admin api listening on ".len()..].split_whitespace().next()?.parse().ok()
            });
            if let Some(addr) = found {
                return AdminApi { addr, token: token.map(str::to_string) };
            }
            assert!(Instant::now() < deadline, "no admin api in the log:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        relaychat::admin::client::call(&self.base(), self.token.as_deref(), method, path, body)
            .await
            .expect("the admin API answers")
    }

    /// A request that must succeed; its JSON reply.
    pub async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (status, reply) = self.call(method.clone(), path, body).await;
        assert_eq!(status, StatusCode::OK, "{method} {path}: {reply}");
        reply
    }
}

/// A metric's value from `/metrics`.
pub async fn metric(server: &Server, name: &str) -> f64 {
    let (_, text) = http_get(server.http, "/metrics").await;
    let value = text
        .lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|value| value.trim().parse::<f64>().ok());
    value.unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
}

/// The TURN credential in `webrtc-joined` (or `webrtc-credentials`): (username, credential).
pub fn credential_of(ice_servers: &Value) -> (String, String) {
    let server = &ice_servers[0];
    (server["username"].as_str().unwrap().to_string(), server["credential"].as_str().unwrap().to_string())
}

/// The channel Bob sends to Alice on in a [`RelayedCall`].
pub const CALL_CHANNEL: u16 = 0x4000;

/// Alice and Bob in a call through the relay, set up as two browsers would: both chat and join
/// voice, each allocates over UDP with the credential the server handed out, each permits the
/// other's relayed address, and Bob binds [`CALL_CHANNEL`] to Alice's.
pub struct RelayedCall {
    pub alice: Client,
    pub bob: Client,
    /// Alice's TURN username and credential, as handed out in `webrtc-joined`.
    pub alice_credential: (String, String),
    pub alice_turn: TurnClient,
    pub bob_turn: TurnClient,
    pub alice_relay: SocketAddr,
}

pub async fn relayed_call(server: &Server) -> RelayedCall {
    let turn = server.turn_udp.expect("turn is on");
    let mut alice = server.join("alice").await;
    let mut bob = server.join("bob").await;
    alice.expect_system("bob has joined.").await;
    let joined = join_voice(&mut alice, "alice", None).await;
    let alice_credential = credential_of(&joined["config"]["iceServers"]);
    bob.expect_system("alice joined voice chat").await;
    let bob_joined = join_voice(&mut bob, "bob", None).await;
    let (bob_user, bob_credential) = credential_of(&bob_joined["config"]["iceServers"]);
    let mut alice_turn = TurnClient::udp(turn, &alice_credential.0, &alice_credential.1).await;
    let alice_relay = alice_turn.allocate().await.expect("alice allocates while in voice");
    let mut bob_turn = TurnClient::udp(turn, &bob_user, &bob_credential).await;
    let bob_relay = bob_turn.allocate().await.expect("bob allocates while in voice");
    alice_turn.create_permission(&[bob_relay]).await.unwrap();
    bob_turn.create_permission(&[alice_relay]).await.unwrap();
    bob_turn.channel_bind(CALL_CHANNEL, alice_relay).await.unwrap();
    RelayedCall { alice, bob, alice_credential, alice_turn, bob_turn, alice_relay }
}
