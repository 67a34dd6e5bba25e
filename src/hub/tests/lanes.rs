//! Lanes: which outbound lane the hub puts each frame in, fan-outs as one shared frame, and
//! the runner's inbound lanes (priority between connections, order within one).

use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot};

use super::*;
use crate::cluster::event::{ClusterEvent, Owner, RoutedSignal, SignalKind};
use crate::hub::lanes::{self, ConnOrder, InboundLane, LaneReceivers, LaneSenders};
use crate::hub::runner::{ConnLink, HubEvent};
use crate::protocol::ClientMessage;

/// The lane of every effect that sends `conn` something, by the frame's `type`.
fn lanes_to(h: &Harness, conn: ConnId) -> Vec<(String, Lane)> {
    let kind = |frame: &Frame| {
        let value: Value = serde_json::from_str(frame.as_str()).unwrap();
        value["type"].as_str().unwrap().to_string()
    };
    h.effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Send { to, frame, lane } if *to == conn => Some((kind(frame), *lane)),
            Effect::Broadcast { to, frame, lane } if to.contains(&conn) => Some((kind(frame), *lane)),
            _ => None,
        })
        .collect()
}

#[test]
fn call_frames_take_the_call_lane_and_everything_else_the_chat_lane() {
    let mut h = Harness::new(|s| s.webrtc.force_relay = false);
    let alice = h.connect(Some("Alice"));
    assert!(lanes_to(&h, alice).iter().all(|(_, lane)| *lane == Lane::Chat));
    let bob = h.connect(Some("Bob"));
    join_voice(&mut h, alice, &["audio"]);
    h.send(bob, json!({"type": "webrtc-join", "mediaTypes": ["audio"]}));
    let to_bob = lanes_to(&h, bob);
    assert!(to_bob.contains(&("webrtc-joined".to_string(), Lane::Call)), "{to_bob:?}");
    // The voice notice is a chat-room message, in order with the chat.
    assert!(to_bob.contains(&("system".to_string(), Lane::Chat)), "{to_bob:?}");
    assert_eq!(lanes_to(&h, alice)[0], ("webrtc-peer-joined".to_string(), Lane::Call));

    h.send(alice, json!({"type": "webrtc-offer", "targetUsername": "Bob", "offer": {"type": "offer", "sdp": "v=0\r\n"}}));
    assert_eq!(lanes_to(&h, bob), [("webrtc-offer".to_string(), Lane::Call)]);
    // An error answering a call message is part of the call too.
    h.send(alice, json!({"type": "webrtc-offer", "targetUsername": "Nobody", "offer": {"type": "offer", "sdp": "v=0\r\n"}}));
    assert_eq!(lanes_to(&h, alice), [("webrtc-error".to_string(), Lane::Call)]);
    h.chat(alice, "hello");
    assert_eq!(lanes_to(&h, bob), [("chat".to_string(), Lane::Chat)]);
}

#[test]
fn a_fan_out_is_one_effect_with_one_shared_frame() {
    let mut h = Harness::new(|_| {});
    let conns: Vec<ConnId> = ["Alice", "Bob", "Carol", "Dave"].iter().map(|n| h.connect(Some(n))).collect();
    h.chat(conns[0], "hello everyone");
    let broadcasts: Vec<&Vec<ConnId>> = h
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::Broadcast { to, .. } => Some(to),
            _ => None,
        })
        .collect();
    assert_eq!(broadcasts, [&conns]);
    assert!(!h.effects.iter().any(|e| matches!(e, Effect::Send { .. })));
    // Someone who blocked the sender is left out of the recipients, not sent a copy.
    h.chat(conns[1], "/block Alice");
    h.chat(conns[0], "still here");
    let recipients = h.effects.iter().find_map(|e| match e {
        Effect::Broadcast { to, .. } => Some(to.clone()),
        _ => None,
    });
    assert_eq!(recipients, Some(vec![conns[0], conns[2], conns[3]]));
}

// The runner's inbound lanes.

fn connected(conn: ConnId) -> HubEvent {
    let (frames, _) = mpsc::channel(1);
    let (urgent, _) = mpsc::channel(1);
    let (close, _) = oneshot::channel();
    let info = ConnectInfo {
        ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        requested_name: None,
        host: "localhost".into(),
        token: String::new(),
        member_pass: None,
    };
    HubEvent::Connected {
        conn,
        info,
        link: ConnLink { frames, urgent, unwritten_calls: Default::default(), close },
    }
}

fn message(conn: ConnId, text: Value) -> HubEvent {
    HubEvent::Message { conn, inbound: parse_inbound(&text.to_string()) }
}

fn chat(conn: ConnId) -> HubEvent {
    message(conn, json!({"type": "chat", "content": "flood"}))
}

fn offer(conn: ConnId) -> HubEvent {
    message(
        conn,
        json!({"type": "webrtc-offer", "targetUsername": "Bob", "offer": {"type": "offer", "sdp": "v=0"}}),
    )
}

/// What an event is, by kind and connection, for comparing orders.
fn describe(event: &HubEvent) -> String {
    match event {
        HubEvent::Connected { conn, .. } => format!("connected {conn}"),
        HubEvent::Disconnected { conn } => format!("disconnected {conn}"),
        HubEvent::Message { conn, inbound } => match inbound {
            Inbound::Message { message, .. } if message.is_webrtc() => format!("webrtc {conn}"),
            Inbound::Message { message: ClientMessage::Ping, .. } => format!("ping {conn}"),
            _ => format!("chat {conn}"),
        },
        HubEvent::ClusterApply { events } => events
            .iter()
            .map(|event| match event {
                ClusterEvent::Chat { .. } => "log chat".to_string(),
                ClusterEvent::UserJoined { name, .. } => format!("log joined {name}"),
                ClusterEvent::Kick { name, .. } => format!("log kick {name}"),
                ClusterEvent::VoiceJoined { name, .. } => format!("log voice-joined {name}"),
                other => format!("log {other:?}"),
            })
            .collect::<Vec<_>>()
            .join(" + "),
        HubEvent::RemoteSignal(signal) => format!("routed from {}", signal.from),
        _ => "internal".to_string(),
    }
}

fn log_entry(text: &str) -> HistoryEntry {
    HistoryEntry {
        kind: HistoryKind::Chat,
        username: Some("Zed".into()),
        text: text.into(),
        timestamp: "2026-01-01T00:00:00.000Z".into(),
    }
}

fn log_chat() -> HubEvent {
    HubEvent::ClusterApply { events: vec![ClusterEvent::Chat { entry: log_entry("flood") }] }
}

fn log_joined(name: &str) -> HubEvent {
    let owner = Owner { node: "node-b".into(), conn: 7 };
    HubEvent::ClusterApply {
        events: vec![ClusterEvent::UserJoined { name: name.into(), owner, entry: None }],
    }
}

fn log_voice_joined(name: &str) -> HubEvent {
    let owner = Owner { node: "node-b".into(), conn: 7 };
    let event = ClusterEvent::VoiceJoined {
        name: name.into(),
        owner,
        turn_user: format!("{name}-turn"),
        media: vec!["audio".into()],
        entry: log_entry("joined voice"),
        live_only: false,
    };
    HubEvent::ClusterApply { events: vec![event] }
}

fn routed_offer(from: &str) -> HubEvent {
    HubEvent::RemoteSignal(RoutedSignal {
        node: "node-a".into(),
        from: from.into(),
        to: "Alice".into(),
        kind: SignalKind::Offer,
        payload: json!({"type": "offer", "sdp": "v=0"}),
    })
}

/// Every event waiting, in the order the runner takes them.
fn drain(receivers: &mut LaneReceivers) -> Vec<String> {
    let mut taken = Vec::new();
    while let Some(Some(event)) = receivers.next().now_or_never() {
        taken.push(describe(&event));
    }
    taken
}

async fn send_all(senders: &LaneSenders, order: &ConnOrder, events: Vec<HubEvent>) {
    for event in events {
        senders.send_from(order, event).await.unwrap();
    }
}

#[tokio::test]
async fn signaling_and_presence_overtake_a_chat_flood_from_others() {
    let (senders, mut receivers) = lanes::channels();
    let (flooder, caller, leaver) = (ConnOrder::default(), ConnOrder::default(), ConnOrder::default());
    send_all(&senders, &flooder, (0..100).map(|_| chat(1)).collect()).await;
    assert_eq!(flooder.waiting(), 100);
    send_all(
        &senders,
        &leaver,
        vec![message(3, json!({"type": "ping"})), HubEvent::Disconnected { conn: 3 }],
    )
    .await;
    send_all(&senders, &caller, vec![offer(2)]).await;
    assert_eq!(receivers.lane_len(InboundLane::Signal), 1);
    assert_eq!(receivers.lane_len(InboundLane::Presence), 2);
    assert_eq!(receivers.waiting(), 103);
    let taken = drain(&mut receivers);
    assert_eq!(taken[..4], ["webrtc 2", "ping 3", "disconnected 3", "chat 1"]);
    assert_eq!(taken.len(), 103);
    assert_eq!(flooder.waiting(), 0, "handled events are counted down");
}

#[tokio::test]
async fn a_connection_never_overtakes_its_own_earlier_events() {
    let (senders, mut receivers) = lanes::channels();
    let alice = ConnOrder::default();
    // A login (chat lane) and at once a webrtc-join: the join waits behind the login.
    send_all(&senders, &alice, vec![connected(1), chat(1), offer(1), HubEvent::Disconnected { conn: 1 }])
        .await;
    assert_eq!(receivers.lane_len(InboundLane::Signal), 0);
    assert_eq!(
        receivers.lane_len(InboundLane::Presence),
        1,
        "only the connect, the leave queues behind the chat"
    );
    assert_eq!(drain(&mut receivers), ["connected 1", "chat 1", "webrtc 1", "disconnected 1"]);

    // Behind a ping (presence lane), signaling waits in the presence lane, not behind chat.
    let carol = ConnOrder::default();
    send_all(&senders, &ConnOrder::default(), (0..10).map(|_| chat(9)).collect()).await;
    send_all(&senders, &carol, vec![message(3, json!({"type": "ping"})), offer(3)]).await;
    assert_eq!(receivers.lane_len(InboundLane::Signal), 0);
    assert_eq!(receivers.lane_len(InboundLane::Presence), 2);
    assert_eq!(drain(&mut receivers)[..3], ["ping 3", "webrtc 3", "chat 9"]);

    // Once everything earlier is handled, signaling takes its fast lane again, and a chat sent
    // after it is handled after it.
    let bob = ConnOrder::default();
    send_all(&senders, &bob, vec![offer(2), chat(2), offer(2)]).await;
    assert_eq!(receivers.lane_len(InboundLane::Signal), 1);
    assert_eq!(drain(&mut receivers), ["webrtc 2", "chat 2", "webrtc 2"]);
}

#[tokio::test]
async fn server_events_take_the_chat_lane_and_the_lanes_end_when_every_sender_is_gone() {
    let (senders, mut receivers) = lanes::channels();
    let caller = ConnOrder::default();
    senders.send(HubEvent::AdminsLoaded { admins: HashSet::new() }).await.unwrap();
    send_all(&senders, &caller, vec![offer(2)]).await;
    assert_eq!(drain(&mut receivers), ["webrtc 2", "internal"]);
    drop(senders);
    assert!(receivers.next().await.is_none());
}

#[tokio::test]
async fn a_waiting_runner_wakes_for_any_lane() {
    let (senders, mut receivers) = lanes::channels();
    let waiting = tokio::spawn(async move {
        let first = receivers.next().await.map(|e| describe(&e));
        (first, receivers)
    });
    tokio::task::yield_now().await;
    senders.send_from(&ConnOrder::default(), offer(5)).await.unwrap();
    let (first, _receivers) = waiting.await.unwrap();
    assert_eq!(first.as_deref(), Some("webrtc 5"));
}

#[tokio::test]
async fn a_step_takes_waiting_presence_and_chat_in_order_and_stops_at_signaling() {
    let (senders, mut receivers) = lanes::channels();
    send_all(&senders, &ConnOrder::default(), vec![chat(1), chat(1)]).await;
    send_all(&senders, &ConnOrder::default(), vec![HubEvent::Disconnected { conn: 2 }]).await;
    let step: Vec<String> =
        std::iter::from_fn(|| receivers.try_next_unless_signaling()).map(|e| describe(&e)).collect();
    assert_eq!(step, ["disconnected 2", "chat 1", "chat 1"]);

    send_all(&senders, &ConnOrder::default(), vec![chat(1)]).await;
    send_all(&senders, &ConnOrder::default(), vec![offer(3)]).await;
    assert!(receivers.try_next_unless_signaling().is_none(), "signaling ends a step");
    assert_eq!(drain(&mut receivers), ["webrtc 3", "chat 1"]);
}

#[tokio::test]
async fn routed_signals_and_voice_entries_overtake_cluster_chat_but_never_a_membership_entry() {
    let (senders, mut receivers) = lanes::channels();
    // The log's chat flood stays in the chat lane; a routed offer and a voice entry from a
    // quiet moment of the log overtake it.
    for _ in 0..50 {
        senders.send(log_chat()).await.unwrap();
    }
    senders.send(log_voice_joined("Bob")).await.unwrap();
    senders.send(routed_offer("Bob")).await.unwrap();
    assert_eq!(receivers.lane_len(InboundLane::Signal), 2);
    let taken = drain(&mut receivers);
    assert_eq!(taken[..3], ["log voice-joined Bob", "routed from Bob", "log chat"]);
    assert_eq!(taken.len(), 52);

    // Carol joins the chat (a membership entry), then voice, then calls, all behind chat:
    // her VoiceJoined and her offer wait behind her UserJoined, in the log's order.
    for _ in 0..10 {
        senders.send(log_chat()).await.unwrap();
    }
    senders.send(log_joined("Carol")).await.unwrap();
    senders.send(log_voice_joined("Carol")).await.unwrap();
    senders.send(routed_offer("Carol")).await.unwrap();
    senders.send(log_chat()).await.unwrap();
    assert_eq!(receivers.lane_len(InboundLane::Signal), 0, "nothing may overtake Carol's join");
    let taken = drain(&mut receivers);
    assert_eq!(taken[10..13], ["log joined Carol", "log voice-joined Carol", "routed from Carol"]);
    assert_eq!(taken.len(), 14);

    // Once those are handled, the next routed signal takes the fast lane again, even with
    // chat from the log waiting.
    senders.send(log_chat()).await.unwrap();
    senders.send(routed_offer("Carol")).await.unwrap();
    assert_eq!(drain(&mut receivers), ["routed from Carol", "log chat"]);
}

#[tokio::test]
async fn one_read_of_the_log_is_cut_into_voice_and_other_steps_in_order() {
    let entry = |event: HubEvent| match event {
        HubEvent::ClusterApply { mut events } => events.remove(0),
        _ => unreachable!("the helpers build log entries"),
    };
    let read = vec![
        entry(log_chat()),
        entry(log_chat()),
        entry(log_voice_joined("Bob")),
        entry(log_joined("Carol")),
        entry(log_chat()),
    ];
    let steps: Vec<String> = lanes::cluster_steps(read)
        .into_iter()
        .map(|events| describe(&HubEvent::ClusterApply { events }))
        .collect();
    assert_eq!(steps, ["log chat + log chat", "log voice-joined Bob", "log joined Carol + log chat"]);

    // A step holding a membership entry is counted like one: a voice step behind it waits.
    let (senders, mut receivers) = lanes::channels();
    let mixed = [entry(log_chat()), entry(log_joined("Dave"))];
    senders.send(HubEvent::ClusterApply { events: mixed.into() }).await.unwrap();
    senders.send(log_voice_joined("Dave")).await.unwrap();
    assert_eq!(receivers.lane_len(InboundLane::Signal), 0, "Dave's seat may not overtake his join");
    assert_eq!(drain(&mut receivers), ["log chat + log joined Dave", "log voice-joined Dave"]);
    // A chat-only step is not: the next voice step overtakes it.
    senders.send(log_chat()).await.unwrap();
    senders.send(log_voice_joined("Erin")).await.unwrap();
    assert_eq!(drain(&mut receivers), ["log voice-joined Erin", "log chat"]);
}
