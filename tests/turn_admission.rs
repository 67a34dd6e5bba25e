//! The integrated TURN relay's admission, on real loopback sockets: refusals carry the codes a
//! browser acts on (401, 438, 486, 508), credentials are bound to a stay in voice, refreshes
//! follow the same rule.

mod turn_support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use relaychat::turn::RelayCounters;
use turn_support::*;

const WAIT: Duration = Duration::from_secs(2);

#[tokio::test]
async fn wrong_hmac_is_answered_401_not_400() {
    // The crate answers 400 Bad Request here; RFC 8489 section 9.2.4 says 401, and browsers act
    // on 401. Our read loop checks MESSAGE-INTEGRITY before the crate sees the request.
    let relay = start(|_| {}).await;
    relay.presence.joined("alice");
    let username = format!("{}:alice", now_unix() + 600);
    let mut client = TurnClient::udp(relay.handle.udp_addr, &username, "not-the-password").await;
    let refused = client.allocate().await.unwrap_err();
    assert_eq!(refused, Refused { code: 401, reason: "Unauthorized".into() });
    assert_eq!(RelayCounters::get(&relay.handle.counters.auth_failures_bad_credential), 1);
    // A credential made with another secret is just as wrong.
    let other = relaychat::turn::credentials::issue(b"other-secret", "alice", now_unix() + 600);
    let mut client = TurnClient::tcp(relay.handle.tcp_addr, &other.username, &other.credential).await;
    assert_eq!(client.allocate().await.unwrap_err().code, 401);
    assert_eq!(relay.handle.active_allocations(), 0);
}

#[tokio::test]
async fn expired_credentials_cannot_allocate() {
    let relay = start(|_| {}).await;
    relay.presence.joined("alice");
    let mut client = TurnClient::for_user(relay.handle.udp_addr, false, "alice", -5).await;
    let refused = client.allocate().await.unwrap_err();
    assert_eq!(refused, Refused { code: 401, reason: "Credential expired".into() });
    assert_eq!(RelayCounters::get(&relay.handle.counters.auth_failures_expired), 1);
}

#[tokio::test]
async fn users_not_in_voice_cannot_allocate() {
    let relay = start(|_| {}).await;
    relay.presence.joined("bob");
    let mut client = TurnClient::for_user(relay.handle.udp_addr, false, "alice", 600).await;
    let refused = client.allocate().await.unwrap_err();
    assert_eq!(refused, Refused { code: 401, reason: "Not in voice chat".into() });
    assert_eq!(RelayCounters::get(&relay.handle.counters.auth_failures_not_in_voice), 1);
    assert_eq!(relay.handle.active_allocations(), 0);
}

#[tokio::test]
async fn malformed_usernames_are_refused() {
    let relay = start(|_| {}).await;
    let mut client = TurnClient::udp(relay.handle.udp_addr, "alice", &password_for("alice")).await;
    assert_eq!(
        client.allocate().await.unwrap_err(),
        Refused { code: 401, reason: "Malformed credential".into() }
    );
    assert_eq!(RelayCounters::get(&relay.handle.counters.auth_failures_malformed), 1);
}

#[tokio::test]
async fn without_the_live_session_rule_hmac_and_expiry_still_apply() {
    let relay = start(|s| s.turn.require_live_session = false).await;
    // Nobody is in voice.
    let mut ok = TurnClient::for_user(relay.handle.udp_addr, false, "bench", 600).await;
    ok.allocate().await.expect("no live session needed");
    let mut expired = TurnClient::for_user(relay.handle.udp_addr, false, "bench", -1).await;
    assert_eq!(expired.allocate().await.unwrap_err().reason, "Credential expired");
    let username = format!("{}:bench", now_unix() + 600);
    let mut wrong = TurnClient::udp(relay.handle.udp_addr, &username, "guess").await;
    assert_eq!(wrong.allocate().await.unwrap_err().code, 401);
    assert_eq!(relay.handle.active_allocations(), 1);
}

#[tokio::test]
async fn quotas_refuse_with_486_per_user_and_508_in_total() {
    let relay = start(|s| {
        s.turn.max_allocations_per_user = 2;
        s.turn.max_allocations_total = 3;
    })
    .await;
    relay.presence.joined("alice");
    relay.presence.joined("bob");
    let server = relay.handle.udp_addr;
    let mut a1 = TurnClient::for_user(server, false, "alice", 600).await;
    let mut a2 = TurnClient::for_user(server, true, "alice", 600).await;
    let mut a3 = TurnClient::for_user(server, false, "alice", 600).await;
    a1.allocate().await.unwrap();
    a2.allocate().await.unwrap();
    assert_eq!(
        a3.allocate().await.unwrap_err(),
        Refused { code: 486, reason: "Allocation Quota Reached".into() }
    );
    let mut b1 = TurnClient::for_user(server, false, "bob", 600).await;
    let mut b2 = TurnClient::for_user(server, false, "bob", 600).await;
    b1.allocate().await.unwrap();
    assert_eq!(b2.allocate().await.unwrap_err().code, 508);
    assert_eq!(RelayCounters::get(&relay.handle.counters.quota_refusals), 2);
    // Freed slots can be used again.
    a1.refresh(Duration::ZERO).await.unwrap();
    assert!(eventually(WAIT, || relay.handle.active_allocations() == 2).await);
    a3.allocate().await.expect("a slot was freed");
}

#[tokio::test]
async fn refresh_after_expiry_works_while_in_voice_and_fails_after_leaving() {
    let relay = start(|_| {}).await;
    relay.presence.joined("alice");
    relay.presence.joined("bob");
    let server = relay.handle.udp_addr;
    let mut alice = TurnClient::for_user(server, false, "alice", 2).await;
    let mut bob = TurnClient::for_user(server, false, "bob", 600).await;
    alice.allocate().await.unwrap();
    let bob_relay = bob.allocate().await.unwrap();
    tokio::time::sleep(Duration::from_millis(3100)).await;
    // The credential has expired; the allocation made with it still refreshes, and permissions
    // and channels (which browsers refresh every few minutes) still work.
    alice.refresh(Duration::from_secs(600)).await.expect("refresh past expiry while in voice");
    alice.create_permission(&[bob_relay]).await.expect("permission past expiry while in voice");
    alice.channel_bind(0x4000, bob_relay).await.expect("channel bind past expiry while in voice");
    // A new allocation needs a fresh credential.
    let mut fresh = TurnClient::udp(server, &alice.username, &alice.password).await;
    assert_eq!(fresh.allocate().await.unwrap_err().reason, "Credential expired");

    relay.presence.left("alice");
    let refused = alice.refresh(Duration::from_secs(600)).await.unwrap_err();
    assert_eq!(refused.code, 401, "{refused:?}");
    assert!(eventually(WAIT, || relay.handle.active_allocations() == 1).await);
}

#[tokio::test]
async fn stale_and_forged_nonces_get_438() {
    let relay = start(|_| {}).await;
    relay.presence.joined("alice");
    let mut client = TurnClient::for_user(relay.handle.udp_addr, false, "alice", 600).await;
    // A made-up nonce (right shape, wrong MAC), then one minted for another client's IP.
    client.force_nonce(&format!("{:016x}{}", now_unix(), "0".repeat(32)));
    client.allocate().await.unwrap();
    assert_eq!(client.challenges, vec![438]);
    let counters = &relay.handle.counters;
    assert_eq!(counters.auth_failures_bad_credential.load(Ordering::Relaxed), 0);
}
