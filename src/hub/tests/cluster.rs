//! Cluster mode, pure: a clustered hub asks (Publish, ClaimName, ReleaseName) instead of acting,
//! and acts when the log's events come back (`cluster_event`), for its own users and others'.

use super::*;
use crate::cluster::event::{ClusterEvent, Owner, Snapshot};
use crate::hub::cluster::{PublishFailure, STORE_DOWN_CONNECT, STORE_DOWN_NOT_SENT, STORE_SLOW_MAYBE_SENT};

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

fn owner(node: &str, conn: ConnId) -> Owner {
    Owner { node: node.into(), conn }
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
            _ => None,
        })
        .collect()
}

/// The texts of the messages of `kind` in the history `conn` got (its first frame).
fn replayed(h: &Harness, conn: ConnId, kind: &str) -> Vec<String> {
    let frames = h.frames_to(conn);
    let messages = frames[0]["messages"].as_array().expect("a history frame first").clone();
    messages.iter().filter(|m| m["type"] == kind).map(|m| m["text"].as_str().unwrap().to_string()).collect()
}

fn acted_locally(h: &Harness) -> bool {
    h.effects.iter().any(|e| matches!(e, Effect::Persist(_) | Effect::Broadcast { .. }))
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

fn remote_join(h: &mut Harness, name: &str, node: &str, conn: ConnId) {
    let entry = HistoryEntry {
        kind: HistoryKind::System,
        username: None,
        text: format!("{name} has joined."),
        timestamp: "2026-01-01T00:00:00.000Z".into(),
    };
    apply(h, ClusterEvent::UserJoined { name: name.into(), owner: owner(node, conn), entry: Some(entry) });
}

#[test]
fn a_join_is_a_claim_and_the_welcome_comes_back_from_the_log() {
    let mut h = clustered();
    let alice = h.connect(Some("alice"));
    let claim = asked(&h);
    assert!(
        matches!(&claim[..], [ClusterEvent::UserJoined { name, owner: o, entry: Some(e) }]
            if name == "alice" && *o == owner(NODE, alice) && e.text == "alice has joined."),
        "{claim:?}"
    );
    assert!(!h.frames_to(alice).iter().any(|f| f["type"] == "history"), "no welcome before the log says so");
    assert!(!acted_locally(&h));
    let now = h.now;
    assert!(h.hub.name_claimed(alice, "alice".into(), ClaimOutcome::Won, now).is_empty());
    apply(&mut h, claim[0].clone());
    let frames = h.frames_to(alice);
    assert_eq!(frames[0]["type"], "history");
    assert_eq!(h.texts_to(alice), vec!["MOTD: Welcome", "alice has joined."]);
    assert!(!h.effects.iter().any(|e| matches!(e, Effect::Persist(_))), "the log script stored it already");
}

#[test]
fn chat_is_published_and_delivered_only_when_read_back_in_log_order() {
    let mut h = clustered();
    let alice = join(&mut h, "alice");
    remote_join(&mut h, "bob", "node-b", 7);
    assert_eq!(h.texts_to(alice), vec!["bob has joined."]);
    h.chat(alice, "hello");
    let events = asked(&h);
    assert!(matches!(&events[..], [ClusterEvent::Chat { entry }] if entry.text == "hello"), "{events:?}");
    assert!(!acted_locally(&h), "no echo, no persist before the log");
    // Bob's message, logged first elsewhere, arrives first; then alice's.
    let bobs = HistoryEntry {
        kind: HistoryKind::Chat,
        username: Some("bob".into()),
        text: "first".into(),
        timestamp: "2026-01-01T00:00:01.000Z".into(),
    };
    apply(&mut h, ClusterEvent::Chat { entry: bobs });
    assert_eq!(h.frames_to(alice)[0]["username"], "bob");
    apply(&mut h, events[0].clone());
    assert_eq!(h.frames_to(alice)[0]["text"], "hello");
    assert!(h.effects.iter().all(|e| !matches!(e, Effect::Persist(_))));
    // A newcomer replays both, in log order.
    let carol = join(&mut h, "carol");
    assert_eq!(replayed(&h, carol, "chat"), ["first", "hello"]);
}

#[test]
fn users_of_other_nodes_are_listed_and_their_names_are_taken() {
    let mut h = clustered();
    let alice = join(&mut h, "alice");
    remote_join(&mut h, "bob", "node-b", 7);
    h.chat(alice, "/list");
    assert_eq!(h.texts_to(alice), vec!["Online users: alice, bob"]);
    let second_bob = h.connect(Some("bob"));
    assert!(h.texts_to(second_bob).contains(&"Username taken.".to_string()));
    assert!(asked(&h).is_empty(), "known taken: no claim");
    // A claim the store refuses (taken on a node we have not heard from yet).
    let carol = h.connect(Some("carol"));
    let now = h.now;
    h.effects = h.hub.name_claimed(carol, "carol".into(), ClaimOutcome::Taken, now);
    assert_eq!(h.texts_to(carol), vec!["Username taken."]);
    assert_eq!(h.closed(carol), Some(CLOSE_POLICY));
}

#[test]
fn without_the_store_newcomers_are_turned_away_and_chat_is_refused_visibly() {
    let mut h = clustered();
    let alice = join(&mut h, "alice");
    h.hub.set_cluster_store_up(false);
    let bob = h.connect(Some("bob"));
    assert_eq!(h.texts_to(bob), vec![STORE_DOWN_CONNECT]);
    assert_eq!(h.closed(bob), Some(CLOSE_TRY_AGAIN_LATER));
    h.chat(alice, "anyone?");
    assert_eq!(h.texts_to(alice), vec![STORE_DOWN_NOT_SENT]);
    assert!(asked(&h).is_empty());
    // A write Redis refused (or that never reached it) is reported the same way...
    h.hub.set_cluster_store_up(true);
    h.chat(alice, "now?");
    assert_eq!(asked(&h).len(), 1);
    let now = h.now;
    h.effects = h.hub.publish_failed(alice, PublishFailure::NotWritten, now);
    assert_eq!(h.texts_to(alice), vec![STORE_DOWN_NOT_SENT]);
    // ...but one Redis may have run without answering in time is not called "not sent".
    h.chat(alice, "still there?");
    h.effects = h.hub.publish_failed(alice, PublishFailure::MaybeWritten, now);
    assert_eq!(h.texts_to(alice), vec![STORE_SLOW_MAYBE_SENT]);
    // /list is served from the replica meanwhile.
    h.advance(std::time::Duration::from_secs(1));
    h.hub.set_cluster_store_up(false);
    h.chat(alice, "/list");
    assert_eq!(h.texts_to(alice), vec!["Online users: alice"]);
}

#[test]
fn a_leave_is_released_and_announced_when_the_log_says_so_and_stale_leaves_are_ignored() {
    let mut h = clustered();
    let alice = join(&mut h, "alice");
    let bob = join(&mut h, "bob");
    let now = h.now;
    h.effects = h.hub.disconnect(alice, now);
    let events = asked(&h);
    assert!(matches!(&events[..], [ClusterEvent::UserLeft { name, .. }] if name == "alice"), "{events:?}");
    assert!(h.texts_to(bob).is_empty(), "announced when read back");
    // A leave from an owner that no longer holds the name changes nothing.
    let stale = ClusterEvent::UserLeft {
        name: "alice".into(),
        owner: owner("node-z", 1),
        entry: HistoryEntry {
            kind: HistoryKind::System,
            username: None,
            text: "alice has left.".into(),
            timestamp: "2026-01-01T00:00:00.000Z".into(),
        },
    };
    apply(&mut h, stale);
    assert!(h.texts_to(bob).is_empty());
    apply(&mut h, events[0].clone());
    assert_eq!(h.texts_to(bob), vec!["alice has left."]);
    h.chat(bob, "/list");
    assert_eq!(h.texts_to(bob), vec!["Online users: bob"]);
}

#[test]
fn a_dead_nodes_users_leave_and_our_own_stay() {
    let mut h = clustered();
    let alice = join(&mut h, "alice");
    remote_join(&mut h, "carol", "node-c", 3);
    let gone = |node: &str, names: &[&str]| ClusterEvent::NodeGone {
        seats: Vec::new(),
        node: node.into(),
        names: names.iter().map(|n| n.to_string()).collect(),
        timestamp: "2026-01-01T00:00:09.000Z".into(),
    };
    apply(&mut h, gone("node-c", &["carol"]));
    assert_eq!(h.texts_to(alice), vec!["carol has left."]);
    // This node was reaped while cut off: its users stay (the heartbeat re-claims them).
    apply(&mut h, gone(NODE, &["alice"]));
    assert!(h.texts_to(alice).is_empty());
    h.chat(alice, "/list");
    assert_eq!(h.texts_to(alice), vec!["Online users: alice"]);
    assert_eq!(h.hub.owned_names(), vec![("alice".to_string(), owner(NODE, alice))]);
}

#[test]
fn a_kick_is_published_and_carried_out_by_the_node_holding_the_user() {
    let mut h = clustered();
    let alice = join(&mut h, "alice");
    let bob = join(&mut h, "bob");
    let reply = h.admin(AdminRequest::Kick { name: "bob".into() });
    assert!(reply.is_ok(), "{reply:?}");
    let events = asked(&h);
    assert!(matches!(&events[..], [ClusterEvent::Kick { name, .. }] if name == "bob"));
    assert_eq!(h.closed(bob), None, "closed when read back");
    apply(&mut h, events[0].clone());
    // As on a single node: told, closed, and the notice still reaches the socket before it goes.
    assert_eq!(
        h.texts_to(bob),
        vec!["You have been kicked by the server operator.", "bob was kicked by the server operator."]
    );
    assert_eq!(h.closed(bob), Some(CLOSE_POLICY));
    assert_eq!(h.texts_to(alice), vec!["bob was kicked by the server operator."]);
    assert!(asked(&h).iter().any(|e| matches!(e, ClusterEvent::UserLeft { name, .. } if name == "bob")));
}

#[test]
fn a_nick_is_a_claim_and_the_rename_comes_from_the_log() {
    let mut h = clustered();
    let alice = join(&mut h, "alice");
    h.chat(alice, "/nick alicia");
    let events = asked(&h);
    let Some(Effect::ClaimName { previous, .. }) =
        h.effects.iter().find(|e| matches!(e, Effect::ClaimName { .. }))
    else {
        panic!("no claim: {:?}", h.effects)
    };
    assert_eq!(previous.as_deref(), Some("alice"));
    assert!(h.texts_to(alice).is_empty());
    apply(&mut h, events[0].clone());
    assert_eq!(h.texts_to(alice), vec!["alice is now alicia"]);
    h.chat(alice, "/list");
    assert_eq!(h.texts_to(alice), vec!["Online users: alicia"]);
    assert_eq!(h.hub.owned_names(), vec![("alicia".to_string(), owner(NODE, alice))]);
}

#[test]
fn the_store_losing_a_name_to_another_node_disconnects_our_user() {
    let mut h = clustered();
    let alice = join(&mut h, "alice");
    let now = h.now;
    h.effects = h.hub.names_lost(vec!["alice".into()], now);
    assert_eq!(h.closed(alice), Some(CLOSE_POLICY));
    assert!(asked(&h).is_empty(), "not ours any more: nothing to release");
    assert!(h.hub.owned_names().is_empty());
}

fn voice_event(h: &Harness) -> Option<ClusterEvent> {
    h.effects.iter().find_map(|e| match e {
        Effect::JoinVoice { event, .. } => Some(event.clone()),
        _ => None,
    })
}

#[test]
fn a_voice_join_takes_a_seat_in_the_store_and_the_room_spans_nodes() {
    let mut h = clustered();
    let alice = join(&mut h, "alice");
    remote_join(&mut h, "bob", "node-b", 9);
    h.send(alice, json!({"type": "webrtc-join", "mediaTypes": ["audio"]}));
    let event = voice_event(&h).expect("a seat is asked of the store");
    assert!(h.frames_to(alice).is_empty(), "joined when the log says so");
    // Bob, on node b, took a seat first.
    let bobs_seat = ClusterEvent::VoiceJoined {
        name: "bob".into(),
        owner: owner("node-b", 9),
        turn_user: "bob:0000beef".into(),
        media: vec!["audio".into()],
        entry: HistoryEntry {
            kind: HistoryKind::System,
            username: None,
            text: "bob joined voice chat".into(),
            timestamp: "2026-01-01T00:00:00.000Z".into(),
        },
        live_only: false,
    };
    apply(&mut h, bobs_seat);
    assert!(told_relay(&h, true, "bob"), "every node's relay admits every seat");
    apply(&mut h, event);
    let joined = h.frames_to(alice);
    assert_eq!(joined[0]["type"], "webrtc-joined");
    let names: Vec<&str> = joined[0]["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bob", "alice"]);
    // An offer for bob goes to node b's inbox, rebuilt already.
    h.send(
        alice,
        json!({"type": "webrtc-offer", "targetUsername": "bob", "offer": {"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"}}),
    );
    let routed = h.effects.iter().find_map(|e| match e {
        Effect::RouteSignal(signal) => Some(signal.clone()),
        _ => None,
    });
    let routed = routed.expect("routed to bob's node");
    assert_eq!((routed.node.as_str(), routed.from.as_str(), routed.to.as_str()), ("node-b", "alice", "bob"));
    // Bob's answer comes back through our inbox.
    let answer = crate::cluster::event::RoutedSignal {
        node: NODE.into(),
        from: "bob".into(),
        to: "alice".into(),
        kind: crate::cluster::event::SignalKind::Answer,
        payload: json!({"type": "answer", "sdp": "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"}),
    };
    let now = h.now;
    h.effects = h.hub.remote_signal(answer, now);
    assert_eq!(h.frames_to(alice)[0]["type"], "webrtc-answer");
    assert_eq!(h.frames_to(alice)[0]["fromUsername"], "bob");
}

#[test]
fn a_full_room_answer_from_the_store_is_the_single_node_error() {
    let mut h = clustered();
    let alice = join(&mut h, "alice");
    h.send(alice, json!({"type": "webrtc-join"}));
    assert!(voice_event(&h).is_some());
    let now = h.now;
    h.effects = h.hub.voice_seated(alice, "alice".into(), VoiceOutcome::Full, now);
    let error = &h.frames_to(alice)[0];
    assert_eq!(error["type"], "webrtc-error");
    let max = h.hub.settings.webrtc.max_participants;
    assert_eq!(error["error"], format!("Voice chat is full ({max} maximum)"));
    // The seat request is over: a new join may be asked.
    h.send(alice, json!({"type": "webrtc-join"}));
    assert!(voice_event(&h).is_some());
}

#[test]
fn a_flapping_voice_user_s_notices_beyond_the_allowance_are_shown_but_not_stored() {
    let mut h = clustered();
    let alice = join(&mut h, "alice");
    let bob = join(&mut h, "bob");
    let allowance = h.hub.settings.message_budgets.voice_notices_persisted as usize;
    let mut stored = Vec::new();
    for round in 0..allowance {
        h.advance(std::time::Duration::from_secs(2));
        h.send(alice, json!({"type": "webrtc-join", "mediaTypes": ["audio"]}));
        let joined = voice_event(&h).expect("a seat is asked of the store");
        apply(&mut h, joined.clone());
        assert_eq!(h.texts_to(bob), vec!["alice joined voice chat"], "round {round}: shown live");
        h.advance(std::time::Duration::from_secs(2));
        h.send(alice, json!({"type": "webrtc-leave"}));
        let left = asked(&h).pop().expect("the leave is published");
        apply(&mut h, left.clone());
        assert_eq!(h.texts_to(bob), vec!["alice left voice chat"], "round {round}: shown live");
        for event in [joined, left] {
            match event {
                ClusterEvent::VoiceJoined { live_only, .. } | ClusterEvent::VoiceLeft { live_only, .. } => {
                    stored.push(!live_only)
                }
                other => panic!("not a voice event: {other:?}"),
            }
        }
    }
    let expected: Vec<bool> = (0..2 * allowance).map(|i| i < allowance).collect();
    assert_eq!(stored, expected, "the first {allowance} notices are stored, the rest only shown");
    // What was only shown is not in the history a newcomer replays (nor in the store: the
    // writer gives the script no entry for it).
    let carol = h.connect(Some("carol"));
    let claim = asked(&h).pop().expect("a claim");
    let now = h.now;
    h.effects = h.hub.name_claimed(carol, "carol".into(), ClaimOutcome::Won, now);
    apply(&mut h, claim);
    let voice_lines = replayed(&h, carol, "system").into_iter().filter(|t| t.contains("voice chat"));
    assert_eq!(voice_lines.count(), allowance);
}
