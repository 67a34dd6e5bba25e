//! Cluster mode against a hostile client or a hostile store: the fixes for what an attacker
//! review found (each test fails without its fix).

use super::*;
use crate::cluster::event::{ClusterEvent, Owner, Snapshot};

const NODE: &str = "node-a";

fn clustered() -> Harness {
    let mut h = Harness::new(|_| {});
    let hub = std::mem::replace(
        &mut h.hub,
        Hub::new(
            settings(|_| {}),
            IceServerIssuer { endpoints: TurnEndpoints::None, ttl_s: 60 },
            Vec::new(),
            HashSet::new(),
            rand::rngs::StdRng::seed_from_u64(1),
        ),
    );
    h.hub = hub.clustered(NODE.into());
    let now = h.now;
    h.effects = h.hub.cluster_snapshot(Snapshot::default(), now);
    h
}

fn owner(conn: ConnId) -> Owner {
    Owner { node: NODE.into(), conn }
}

fn apply(h: &mut Harness, event: ClusterEvent) {
    h.effects = h.hub.cluster_event(event, h.now);
}

/// The events the last call asked to publish, claim or release.
fn asked(h: &Harness) -> Vec<ClusterEvent> {
    h.effects
        .iter()
        .filter_map(|e| match e {
            Effect::Publish { event, .. }
            | Effect::ClaimName { event, .. }
            | Effect::ReleaseName { event, .. } => Some(event.clone()),
            Effect::JoinVoice { event, .. } => Some(event.clone()),
            _ => None,
        })
        .collect()
}

/// Connects `name` on this node and plays the log's confirmation back.
fn join(h: &mut Harness, name: &str) -> ConnId {
    let conn = h.connect(Some(name));
    let event = asked(h).pop().expect("a claim");
    let now = h.now;
    h.effects = h.hub.name_claimed(conn, name.into(), ClaimOutcome::Won, now);
    apply(h, event);
    conn
}

fn voice_join_event(h: &Harness) -> Option<ClusterEvent> {
    h.effects.iter().find_map(|e| match e {
        Effect::JoinVoice { event, .. } => Some(event.clone()),
        _ => None,
    })
}

fn entry(text: &str) -> HistoryEntry {
    HistoryEntry {
        kind: HistoryKind::System,
        username: None,
        text: text.into(),
        timestamp: "2026-01-01T00:00:00.000Z".into(),
    }
}

#[test]
fn nick_is_refused_while_a_voice_seat_is_being_taken() {
    let mut h = clustered();
    let eve = join(&mut h, "evilNa");
    h.send(eve, json!({"type": "webrtc-join", "mediaTypes": ["audio"]}));
    let seat = voice_join_event(&h).expect("a seat is asked of the store");
    h.chat(eve, "/nick evilNb");
    assert_eq!(h.texts_to(eve), vec!["Leave voice chat before changing your nick."]);
    assert!(asked(&h).is_empty(), "no rename claimed: {:?}", asked(&h));
    // The seat comes back under the name it was taken for, and a disconnect frees it.
    apply(&mut h, seat);
    assert_eq!(h.frames_to(eve)[0]["type"], "webrtc-joined");
    h.effects = h.hub.disconnect(eve, h.now);
    let left = asked(&h);
    assert!(
        left.iter().any(|e| matches!(e, ClusterEvent::VoiceLeft { name, .. } if name == "evilNa")),
        "{left:?}"
    );
}

#[test]
fn a_voice_join_is_refused_while_a_nick_claim_is_pending() {
    let mut h = clustered();
    let eve = join(&mut h, "evilNa");
    h.chat(eve, "/nick evilNb");
    assert!(matches!(&asked(&h)[..], [ClusterEvent::NickChanged { .. }]));
    h.send(eve, json!({"type": "webrtc-join", "mediaTypes": ["audio"]}));
    assert!(voice_join_event(&h).is_none(), "no seat under a name about to change");
    assert_eq!(h.frames_to(eve)[0]["type"], "webrtc-error");
}

#[test]
fn a_seat_confirmed_for_a_name_its_user_no_longer_holds_is_given_back() {
    let mut h = clustered();
    let eve = join(&mut h, "evilNa");
    h.send(eve, json!({"type": "webrtc-join", "mediaTypes": ["audio"]}));
    let seat = voice_join_event(&h).expect("a seat is asked of the store");
    // The log renames the user before the seat comes back (a stale or raced entry).
    apply(
        &mut h,
        ClusterEvent::NickChanged {
            old: "evilNa".into(),
            new: "evilNb".into(),
            owner: owner(eve),
            entry: entry("evilNa is now evilNb"),
        },
    );
    apply(&mut h, seat);
    assert!(!h.frames_to(eve).iter().any(|f| f["type"] == "webrtc-joined"));
    let given_back = asked(&h);
    assert!(
        given_back.iter().any(|e| matches!(e, ClusterEvent::VoiceLeft { name, .. } if name == "evilNa")),
        "the orphan seat is released in the store: {given_back:?}"
    );
    // Nothing of it stays here: a disconnect has no seat to leave, and the room is empty.
    assert_eq!(h.hub.voice.len(), 0);
}

#[test]
fn ban_and_mute_ends_far_beyond_any_clock_from_the_store_hold_and_do_not_panic() {
    let mut h = clustered();
    let far = 9_000_000_000_000_000;
    let snapshot = Snapshot {
        bans: vec![("zed".into(), Some(far)), ("max".into(), Some(u64::MAX))],
        mutes: vec![("mia".into(), Some(u64::MAX))],
        ..Snapshot::default()
    };
    let now = h.now;
    h.effects = h.hub.cluster_snapshot(snapshot, now);
    let zed = h.connect(Some("zed"));
    assert_eq!(h.closed(zed), Some(CLOSE_POLICY), "still banned: {:?}", h.texts_to(zed));
    apply(
        &mut h,
        ClusterEvent::Ban {
            name: "bob".into(),
            until_ms: Some(u64::MAX),
            notice: "banned".into(),
            entry: entry("bob was banned"),
        },
    );
    apply(
        &mut h,
        ClusterEvent::Mute { name: "amy".into(), until_ms: Some(u64::MAX), notice: "muted".into() },
    );
    // Held for the longest the admin API gives (ten years), not forever and not never.
    h.advance(Duration::from_secs(9 * 365 * 86_400));
    let bob = h.connect(Some("bob"));
    assert_eq!(h.closed(bob), Some(CLOSE_POLICY), "bob still banned after nine years");
    h.advance(Duration::from_secs(2 * 365 * 86_400));
    h.tick();
    let bob = h.connect(Some("bob"));
    assert_eq!(h.closed(bob), None, "the ban ended: {:?}", h.texts_to(bob));
}

/// Bob, seated on node b, and alice, seated here, under force_relay with our relay 127.0.0.1.
fn alice_here_and_bob_on_node_b() -> (Harness, ConnId) {
    let mut h = clustered();
    h.hub = std::mem::replace(
        &mut h.hub,
        Hub::new(
            settings(|_| {}),
            IceServerIssuer { endpoints: TurnEndpoints::None, ttl_s: 60 },
            Vec::new(),
            HashSet::new(),
            rand::rngs::StdRng::seed_from_u64(1),
        ),
    )
    .with_relay_addresses(RelayAddresses::new(["127.0.0.1".parse().unwrap()]));
    assert!(h.hub.settings.webrtc.force_relay);
    let alice = join(&mut h, "alice");
    h.send(alice, json!({"type": "webrtc-join", "mediaTypes": ["audio"]}));
    let seat = voice_join_event(&h).expect("a seat is asked of the store");
    apply(&mut h, seat);
    apply(
        &mut h,
        ClusterEvent::VoiceJoined {
            name: "bob".into(),
            owner: Owner { node: "node-b".into(), conn: 9 },
            turn_user: "bob:0000beef".into(),
            media: vec!["audio".into()],
            entry: entry("bob joined voice chat"),
            live_only: false,
        },
    );
    (h, alice)
}

fn routed(
    from: &str,
    kind: crate::cluster::event::SignalKind,
    payload: Value,
) -> crate::cluster::event::RoutedSignal {
    crate::cluster::event::RoutedSignal {
        node: NODE.into(),
        from: from.into(),
        to: "alice".into(),
        kind,
        payload,
    }
}

#[test]
fn routed_signaling_is_rebuilt_again_under_local_force_relay() {
    use crate::cluster::event::SignalKind;
    let (mut h, alice) = alice_here_and_bob_on_node_b();
    let now = h.now;
    // A host candidate (a node without force_relay, or a tampered inbox entry): never delivered.
    let host =
        json!({"candidate": "candidate:1 1 udp 2122260223 192.168.1.50 54321 typ host", "sdpMid": "0"});
    h.effects = h.hub.remote_signal(routed("bob", SignalKind::Candidate, host), now);
    assert!(h.frames_to(alice).is_empty(), "{:?}", h.frames_to(alice));
    // A relay candidate with extra keys: rebuilt, the keys dropped.
    let relay = json!({"candidate": "candidate:2 1 udp 41885439 127.0.0.1 50000 typ relay raddr 192.168.1.50 rport 1 generation 0",
                       "sdpMid": "0", "address": "192.168.1.50"});
    h.effects = h.hub.remote_signal(routed("bob", SignalKind::Candidate, relay), now);
    assert_eq!(
        h.frames_to(alice)[0]["candidate"],
        json!({"candidate": "candidate:2 1 udp 41885439 127.0.0.1 50000 typ relay raddr 0.0.0.0 rport 0 generation 0", "sdpMid": "0"})
    );
    // An answer naming a private address: the SDP is rebuilt and the extra key dropped.
    let sdp = "v=0\r\no=- 42 2 IN IP4 192.168.1.50\r\nc=IN IP4 192.168.1.50\r\n\
               a=candidate:1 1 udp 2122260223 192.168.1.50 54321 typ host\r\n";
    let answer = json!({"type": "answer", "sdp": sdp, "address": "192.168.1.50"});
    h.effects = h.hub.remote_signal(routed("bob", SignalKind::Answer, answer), now);
    let frames = h.frames_to(alice);
    assert_eq!(
        frames[0]["answer"],
        json!({"type": "answer", "sdp": "v=0\r\no=- 42 2 IN IP4 0.0.0.0\r\nc=IN IP4 0.0.0.0\r\n"})
    );
    // Not a description at all: dropped.
    h.effects = h.hub.remote_signal(routed("bob", SignalKind::Offer, json!({"sdp": 5})), now);
    assert!(h.frames_to(alice).is_empty());
}

#[test]
fn routed_signaling_from_someone_not_seated_on_another_node_is_dropped() {
    use crate::cluster::event::SignalKind;
    let (mut h, alice) = alice_here_and_bob_on_node_b();
    let now = h.now;
    let relay = json!({"candidate": "candidate:2 1 udp 41885439 127.0.0.1 50000 typ relay raddr 0.0.0.0 rport 0", "sdpMid": "0"});
    for from in ["mallory", "alice"] {
        h.effects = h.hub.remote_signal(routed(from, SignalKind::Candidate, relay.clone()), now);
        assert!(h.frames_to(alice).is_empty(), "from {from}: {:?}", h.frames_to(alice));
    }
    h.effects = h.hub.remote_signal(routed("bob", SignalKind::Candidate, relay), now);
    assert_eq!(h.frames_to(alice)[0]["fromUsername"], "bob");
}

#[test]
fn a_name_being_renamed_away_is_not_renewed_by_the_heartbeat() {
    let mut h = clustered();
    let alice = join(&mut h, "alice");
    let bob = join(&mut h, "bob");
    h.chat(alice, "/nick alicia");
    let rename = asked(&h).pop().expect("a rename claim");
    let names: Vec<String> = h.hub.owned_names().into_iter().map(|(name, _)| name).collect();
    assert_eq!(names, ["bob"], "the old name may be gone from the store already");
    apply(&mut h, rename);
    let owned = h.hub.owned_names();
    assert_eq!(owned, [("alicia".to_string(), owner(alice)), ("bob".to_string(), owner(bob))]);
}

#[test]
fn a_ban_read_while_a_join_claim_is_on_its_way_keeps_the_user_out() {
    let mut h = clustered();
    let zed = h.connect(Some("zed"));
    let claim = asked(&h).pop().expect("a claim");
    apply(
        &mut h,
        ClusterEvent::Ban {
            name: "zed".into(),
            until_ms: None,
            notice: "banned".into(),
            entry: entry("zed was banned"),
        },
    );
    apply(&mut h, claim);
    assert!(!h.frames_to(zed).iter().any(|f| f["type"] == "history"), "not welcomed");
    assert!(h.texts_to(zed).contains(&"You are banned.".to_string()));
    assert_eq!(h.closed(zed), Some(CLOSE_POLICY));
    assert!(
        asked(&h).iter().any(|e| matches!(e, ClusterEvent::UserLeft { name, .. } if name == "zed")),
        "the claimed name is released: {:?}",
        asked(&h)
    );
}

#[test]
fn a_claim_the_store_refuses_as_banned_says_so() {
    let mut h = clustered();
    let zed = h.connect(Some("zed"));
    let now = h.now;
    h.effects = h.hub.name_claimed(zed, "zed".into(), ClaimOutcome::Banned, now);
    assert_eq!(h.texts_to(zed), ["You are banned."]);
    assert_eq!(h.closed(zed), Some(CLOSE_POLICY));
}

#[test]
fn our_own_node_reaped_while_alive_takes_our_users_out_of_voice_and_keeps_them_online() {
    let mut h = clustered();
    let alice = join(&mut h, "alice");
    h.send(alice, json!({"type": "webrtc-join", "mediaTypes": ["audio"]}));
    let seat = voice_join_event(&h).expect("a seat is asked of the store");
    apply(&mut h, seat);
    assert_eq!(h.hub.voice.len(), 1);
    apply(
        &mut h,
        ClusterEvent::NodeGone {
            node: NODE.into(),
            names: vec!["alice".into()],
            seats: vec!["alice".into()],
            timestamp: "2026-01-01T00:00:00.000Z".into(),
        },
    );
    assert_eq!(h.hub.voice.len(), 0, "the store dropped the seat: so does this node");
    assert!(told_relay(&h, false, "alice"), "the relay lets the allocation go");
    let error = &h.frames_to(alice)[0];
    assert_eq!(error["type"], "webrtc-error");
    assert_eq!(error["error"], crate::hub::voice::VOICE_INTERRUPTED);
    assert_eq!(h.closed(alice), None, "still chatting");
    assert_eq!(h.hub.owned_names(), [("alice".to_string(), owner(alice))], "renewed by the heartbeat");
    // And may join again.
    h.send(alice, json!({"type": "webrtc-join", "mediaTypes": ["audio"]}));
    assert!(voice_join_event(&h).is_some());
}

#[test]
fn an_unreachable_account_store_is_no_wrong_password_and_never_blocks_a_login() {
    let mut h = Harness::new(|s| s.chat.authentication = true);
    let alice = h.connect(None);
    for _ in 0..20 {
        h.advance(Duration::from_secs(1));
        h.chat(alice, "/login alice password123");
        assert!(matches!(&h.effects[..], [Effect::CheckLogin { .. }]), "{:?}", h.texts_to(alice));
        let now = h.now;
        h.effects = h.hub.login_unavailable(alice, now);
        assert_eq!(h.texts_to(alice), [crate::hub::chat::LOGIN_UNAVAILABLE]);
    }
    // Real failures still count.
    h.effects = h.hub.login_checked(alice, "alice".into(), false, h.now);
    assert_eq!(h.texts_to(alice), ["Login failed."]);
}
