//! The TURN revocation records at their cap, against the real binary through the admin API
//! (docs/ADMIN.md, "revoke-turn"; `relaychat::turn::auth::MAX_REVOCATIONS`): 4097 users revoked
//! within one credential lifetime. The relay keeps at most 4096 records, so the oldest one goes
//! early; every newer revocation still refuses its credentials, and the user of the dropped
//! record stays off the relay while they are kept out of voice (the default
//! `require_live_session`). Only with `require_live_session = false` does that user's old
//! credential work again, until it expires, as the documentation says.

mod admin_support;
mod common;
mod turn_support;

use std::time::{Duration, Instant};

use admin_support::{admin_config, credential_of, metric, AdminApi};
use common::voice::join_voice;
use common::Server;
use hyper::Method;
use relaychat::turn::auth::MAX_REVOCATIONS;
use relaychat::turn::credentials::issue;
use serde_json::json;
use turn_support::{now_unix, TurnClient, SECRET};

/// Parallel admin API callers: each request is a new connection (as `relaychat admin` makes
/// them), and the listener admits 16 pending connections per IP; a closed one is released a
/// moment after its answer.
const CALLERS: usize = 4;

/// The `index`-th revoked user of a run (valid chat names).
fn user(index: usize) -> String {
    format!("u{index:04}")
}

/// Revokes `users` through the admin API, `CALLERS` requests at a time; how long it took.
async fn revoke_all(api: &AdminApi, users: Vec<String>) -> Duration {
    let started = Instant::now();
    let chunk = users.len().div_ceil(CALLERS);
    let mut callers = Vec::new();
    for part in users.chunks(chunk).map(<[String]>::to_vec) {
        let caller = AdminApi { addr: api.addr, token: api.token.clone() };
        callers.push(tokio::spawn(async move {
            for name in part {
                let path = format!("/api/v1/users/{name}/revoke-turn");
                let reply = caller.ok(Method::POST, &path, Some(json!({"duration_s": 3600}))).await;
                assert_eq!(reply["credentials_revoked"], true, "{reply}");
            }
        }));
    }
    for caller in callers {
        caller.await.expect("an admin caller");
    }
    started.elapsed()
}

/// Revocation records are stamped to the second and the one dropped at the cap is the oldest:
/// waiting past a second boundary makes the first revocation unambiguously the oldest.
async fn next_second() {
    tokio::time::sleep(Duration::from_millis(1100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_cap_the_oldest_record_goes_and_every_newer_one_still_refuses() {
    let server = Server::start(&format!(
        "{}[turn]\nsecret = \"{SECRET}\"\nrequire_live_session = false\n",
        admin_config(false)
    ));
    let api = AdminApi::of(&server, None);
    let turn = server.turn_udp.expect("turn is on");
    // Credentials issued before any revocation, valid for the whole test.
    let expires = now_unix() + 600;
    let credential = |index: usize| issue(SECRET.as_bytes(), &user(index), expires);
    let oldest = credential(0);
    let allocate = |c: &relaychat::turn::credentials::RestCredential| {
        let (username, password) = (c.username.clone(), c.credential.clone());
        async move { TurnClient::udp(turn, &username, &password).await.allocate().await }
    };
    allocate(&oldest).await.expect("the credential works before the revocation");

    api.ok(Method::POST, &format!("/api/v1/users/{}/revoke-turn", user(0)), None).await;
    assert_eq!(allocate(&oldest).await.unwrap_err().reason, "Credential revoked");
    next_second().await;
    // 4096 more users: one past the cap.
    let took = revoke_all(&api, (1..=MAX_REVOCATIONS).map(user).collect()).await;
    eprintln!("{MAX_REVOCATIONS} revocations through the admin API in {took:?}");

    // Every record of the last credential lifetime but the oldest is still held (a spread of
    // them, the second and the newest included)...
    for index in [1, 2, 1024, 2048, 3072, MAX_REVOCATIONS - 1, MAX_REVOCATIONS] {
        let refused = allocate(&credential(index)).await.expect_err(&user(index));
        assert_eq!((refused.code, refused.reason.as_str()), (401, "Credential revoked"), "{}", user(index));
    }
    // ...and the oldest went: with require_live_session off its credential works again.
    allocate(&oldest).await.expect("the oldest record was dropped at the cap");
    assert!(metric(&server, "relaychat_turn_auth_failures_total{reason=\"revoked\"}").await >= 8.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_live_sessions_required_the_user_of_the_dropped_record_stays_off_the_relay() {
    let server = Server::start(&admin_config(false));
    let api = AdminApi::of(&server, None);
    let turn = server.turn_udp.expect("turn is on");
    let mut alice = server.join("alice").await;
    let joined = join_voice(&mut alice, "alice", None).await;
    let (username, credential) = credential_of(&joined["config"]["iceServers"]);
    let mut live = TurnClient::udp(turn, &username, &credential).await;
    live.allocate().await.expect("alice allocates while in voice");

    let reply = api.ok(Method::POST, "/api/v1/users/alice/revoke-turn", None).await;
    assert_eq!(reply["turn_allocations_deleted"], 1, "{reply}");
    alice.expect_system("alice left voice chat").await;
    next_second().await;
    revoke_all(&api, (1..=MAX_REVOCATIONS).map(user).collect()).await;

    // Alice's record is gone, but she is still kept out of voice: her old, unexpired credential
    // allocates nothing, and she cannot rejoin for a new one.
    let mut fresh = TurnClient::udp(turn, &username, &credential).await;
    let refused = fresh.allocate().await.unwrap_err();
    assert_eq!((refused.code, refused.reason.as_str()), (401, "Not in voice chat"));
    let refused = live.refresh(Duration::from_secs(600)).await.unwrap_err();
    assert_eq!((refused.code, refused.reason.as_str()), (401, "Not in voice chat"));
    alice.send("webrtc-join", json!({})).await;
    let error = alice.recv_type("webrtc-error").await;
    assert!(error["error"].as_str().unwrap().starts_with("Your voice chat access was revoked"), "{error}");
}
