//! Cluster mode, relay-only across nodes (force_relay, the default): a voice member on node B
//! never receives an address of a client on node A, in any field: not in the SDP (`o=`, `c=`,
//! `a=rtcp`, host/srflx/prflx/IPv6/mDNS candidate lines, `raddr`), not in a trickled candidate
//! (its line, `raddr`, extra keys), not in extra keys of the description; and the signaling
//! routed through Redis (node B's inbox stream) holds none either: it is rebuilt on node A, the
//! node the client sent it to, before it leaves. Both directions.

mod cluster_support;
mod common;

use cluster_support::{alice_and_bob, Redis};
use common::sdp::{LEAKY_SDP, NON_RELAY_CANDIDATES, REBUILT_SDP, RELAY_CANDIDATES};
use common::voice::{answer, candidate, send_candidate};
use common::Client;
use serde_json::{json, Value};

/// Every client address the fixtures hold (host, srflx, prflx, IPv6, mDNS, smuggled).
const CLIENT_ADDRESSES: &[&str] =
    &["192.168.1.5", "203.0.113.7", "198.51.100.2", "2001:db8::5", "2001:db8::1", ".local", "1.2.3.4"];

fn assert_no_client_address(what: &str, text: &str) {
    for address in CLIENT_ADDRESSES {
        assert!(!text.contains(address), "{what} reveals {address}: {text}");
    }
}

/// Reads until a frame of `kind` arrives, checking every frame on the way.
async fn recv_kind(client: &mut Client, kind: &str) -> Value {
    loop {
        let message = client.recv().await;
        assert_no_client_address("a frame", &message.to_string());
        if message["type"] == kind {
            return message;
        }
        assert_ne!(message["type"], "webrtc-error", "while waiting for {kind}: {message}");
    }
}

async fn join_voice(client: &mut Client) {
    client.send("webrtc-join", json!({"mediaTypes": ["audio"]})).await;
    recv_kind(client, "webrtc-joined").await;
}

/// Sends everything a leaky browser could from `from` to `to` (on another node) and checks what
/// `to` receives, field by field.
async fn leaky_browser_to_peer(from: &mut Client, from_name: &str, to: &mut Client, to_name: &str) {
    // The description: offer and answer, with an address in an extra key as well.
    let sent = json!({"type": "offer", "sdp": LEAKY_SDP, "x-extra": "192.168.1.5"});
    from.send("webrtc-offer", json!({"targetUsername": to_name, "offer": sent})).await;
    let relayed = recv_kind(to, "webrtc-offer").await;
    assert_eq!(
        relayed,
        json!({"type": "webrtc-offer", "fromUsername": from_name, "offer": {"type": "offer", "sdp": REBUILT_SDP}})
    );
    from.send("webrtc-answer", json!({"targetUsername": to_name, "answer": answer(LEAKY_SDP)})).await;
    let relayed = recv_kind(to, "webrtc-answer").await;
    assert_eq!(relayed["answer"]["sdp"].as_str(), Some(REBUILT_SDP));
    // Trickled candidates: every non-relay kind dropped, relay ones rebuilt (raddr zeroed).
    let mut expected = Vec::new();
    for (i, line) in NON_RELAY_CANDIDATES.iter().enumerate() {
        send_candidate(from, to_name, &candidate(line), false).await;
        if let Some((sent, rebuilt)) = RELAY_CANDIDATES.get(i) {
            send_candidate(from, to_name, &candidate(sent), false).await;
            expected.push(candidate(rebuilt));
        }
    }
    let mut extra = candidate(RELAY_CANDIDATES[0].0);
    extra["relatedAddress"] = json!("192.168.1.5");
    extra["address"] = json!("192.168.1.5");
    send_candidate(from, to_name, &extra, false).await;
    expected.push(candidate(RELAY_CANDIDATES[0].1));
    for want in expected {
        let got = recv_kind(to, "webrtc-ice-candidate").await;
        assert_eq!(
            got,
            json!({"type": "webrtc-ice-candidate", "fromUsername": from_name, "candidate": want})
        );
    }
    common::expect_only_pong(to).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_on_another_node_never_receives_a_client_address_under_force_relay() {
    let redis = Redis::start();
    let (_nodes, mut alice, mut bob) = alice_and_bob(&redis, "").await;
    join_voice(&mut alice).await;
    join_voice(&mut bob).await;
    recv_kind(&mut alice, "webrtc-peer-joined").await;

    leaky_browser_to_peer(&mut alice, "alice", &mut bob, "bob").await;
    leaky_browser_to_peer(&mut bob, "bob", &mut alice, "alice").await;

    // What crossed through Redis was already rebuilt: each node's inbox holds no address.
    for node in ["node-1", "node-2"] {
        let inbox = redis.cli(&["XRANGE", &format!("relaychat:inbox:{node}"), "-", "+"]);
        assert!(inbox.contains("offer") && inbox.contains("candidate"), "{node}'s inbox: {inbox}");
        assert_no_client_address(&format!("{node}'s inbox in Redis"), &inbox);
    }
}
