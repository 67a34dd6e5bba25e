//! The hub as a pure state machine: events in, effects out, time passed in by hand.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use serde_json::{json, Value};

use super::budget::MessageBudgetSettings;
use super::relay_only::{DropReason, SanitizedField};
use super::*;
use crate::protocol::parse_inbound;
use crate::turn::credentials::{credential_for, TurnEndpoints};

struct Harness {
    hub: Hub,
    now: Now,
    next_conn: ConnId,
    /// Effects of the last call.
    effects: Vec<Effect>,
    tokens: std::collections::HashMap<ConnId, String>,
}

fn settings(edit: impl FnOnce(&mut Settings)) -> Arc<Settings> {
    let mut settings = Settings::defaults();
    settings.server.motd = "Welcome".into();
    edit(&mut settings);
    Arc::new(settings)
}

impl Harness {
    fn new(edit: impl FnOnce(&mut Settings)) -> Self {
        let settings = settings(edit);
        let ice = IceServerIssuer {
            endpoints: TurnEndpoints::Integrated {
                secret: b"secret".to_vec(),
                public_host: None,
                port: 3478,
                tls_port: None,
            },
            ttl_s: settings.turn.credential_ttl_s,
        };
        let hub = Hub::new(settings, ice, Vec::new(), HashSet::new(), rand::rngs::StdRng::seed_from_u64(7))
            .with_relay_addresses(RelayAddresses::new(["127.0.0.1".parse().unwrap()]));
        Harness { hub, now: Now::current(), next_conn: 1, effects: Vec::new(), tokens: Default::default() }
    }

    fn advance(&mut self, by: Duration) {
        self.now.mono += by;
        self.now.wall += chrono::Duration::from_std(by).unwrap();
    }

    fn connect(&mut self, name: Option<&str>) -> ConnId {
        let conn = self.next_conn;
        self.next_conn += 1;
        let token = format!("{conn:064}");
        self.tokens.insert(conn, token.clone());
        let info = ConnectInfo {
            ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, conn as u8)),
            requested_name: name.map(str::to_string),
            host: "chat.example.org:3000".into(),
            token,
        };
        self.effects = self.hub.connect(conn, info, self.now);
        conn
    }

    fn send(&mut self, conn: ConnId, message: Value) {
        let mut message = message;
        message["token"] = json!(self.tokens[&conn]);
        self.effects = self.hub.message(conn, parse_inbound(&message.to_string()), self.now);
    }

    fn chat(&mut self, conn: ConnId, content: &str) {
        self.send(conn, json!({"type": "chat", "content": content}));
    }

    fn tick(&mut self) {
        self.effects = self.hub.tick(self.now);
    }

    /// Frames sent to `conn` by the last call, parsed.
    fn frames_to(&self, conn: ConnId) -> Vec<Value> {
        self.effects
            .iter()
            .filter_map(|e| match e {
                Effect::Send { to, frame } if *to == conn => {
                    Some(serde_json::from_str(frame.as_str()).unwrap())
                }
                _ => None,
            })
            .collect()
    }

    fn texts_to(&self, conn: ConnId) -> Vec<String> {
        self.frames_to(conn).iter().filter_map(|f| f["text"].as_str().map(str::to_string)).collect()
    }

    fn closed(&self, conn: ConnId) -> Option<u16> {
        self.effects.iter().find_map(|e| match e {
            Effect::Close { conn: c, code, .. } if *c == conn => Some(*code),
            _ => None,
        })
    }
}

/// Did the last call tell the relay that `name` (any session of it) joined / left voice?
fn told_relay(h: &Harness, joined: bool, name: &str) -> bool {
    let of_name = |user: &str| user.strip_prefix(name).is_some_and(|tag| tag.starts_with(':'));
    h.effects.iter().any(|e| match e {
        Effect::VoiceJoined { turn_user } if joined => of_name(turn_user),
        Effect::VoiceLeft { turn_user } if !joined => of_name(turn_user),
        _ => false,
    })
}

#[test]
fn open_mode_welcome_sequence_in_order() {
    let mut h = Harness::new(|_| {});
    let alice = h.connect(Some("Alice"));
    let frames = h.frames_to(alice);
    let kinds: Vec<&str> = frames.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["session-token", "heartbeat-config", "history", "system", "system"]);
    assert_eq!(frames[2]["messages"], json!([]));
    assert_eq!(frames[3]["text"], "MOTD: Welcome");
    assert_eq!(frames[4]["text"], "Alice has joined.");
    assert!(
        matches!(&h.effects[..], [.., Effect::Persist(e), Effect::Send { .. }] if e.text == "Alice has joined.")
    );
}

#[test]
fn chat_is_persisted_before_it_is_delivered() {
    let mut h = Harness::new(|_| {});
    let alice = h.connect(Some("Alice"));
    let bob = h.connect(Some("Bob"));
    h.chat(alice, "hello");
    let persist_at = h.effects.iter().position(|e| matches!(e, Effect::Persist(_))).unwrap();
    let first_send = h.effects.iter().position(|e| matches!(e, Effect::Send { .. })).unwrap();
    assert!(persist_at < first_send);
    assert_eq!(h.frames_to(bob)[0]["text"], "hello");
    assert_eq!(h.frames_to(alice)[0]["username"], "Alice");
}

#[test]
fn the_rate_limit_window_slides() {
    let mut h = Harness::new(|_| {});
    let alice = h.connect(Some("Alice"));
    for _ in 0..3 {
        h.chat(alice, "x");
        assert_eq!(h.frames_to(alice)[0]["type"], "chat");
    }
    h.chat(alice, "x");
    assert_eq!(h.texts_to(alice), ["You are sending messages too fast. Limit is 3 per second."]);
    h.advance(Duration::from_millis(1000));
    h.chat(alice, "x");
    assert_eq!(h.frames_to(alice)[0]["type"], "chat");
}

#[test]
fn heartbeat_timeout_closes_with_1008_and_tells_the_others() {
    let mut h = Harness::new(|s| s.chat.heartbeat_timeout_ms = 5000);
    let alice = h.connect(Some("Alice"));
    let bob = h.connect(Some("Bob"));
    h.advance(Duration::from_millis(4000));
    h.send(bob, json!({"type": "ping"}));
    assert_eq!(h.frames_to(bob).len(), 1, "exactly one pong");
    h.advance(Duration::from_millis(1000));
    h.tick();
    assert_eq!(h.texts_to(alice), ["Disconnected: Heartbeat timeout (no ping received)"]);
    assert_eq!(h.closed(alice), Some(CLOSE_POLICY));
    assert_eq!(h.texts_to(bob), ["Alice has left."]);
    assert_eq!(h.closed(bob), None);
}

#[test]
fn nick_cooldown_uses_the_clock() {
    let mut h = Harness::new(|s| s.chat.nick_change_cooldown_ms = 10_000);
    let alice = h.connect(Some("Alice"));
    h.chat(alice, "/nick Alicia");
    assert_eq!(h.texts_to(alice), ["Alice is now Alicia"]);
    h.advance(Duration::from_secs(4));
    h.chat(alice, "/nick Ally");
    assert_eq!(
        h.texts_to(alice),
        ["You can only change your nickname once every 10 seconds. Please wait 6 more seconds."]
    );
    h.advance(Duration::from_secs(6));
    h.chat(alice, "/nick Ally");
    assert_eq!(h.texts_to(alice), ["Alicia is now Ally"]);
}

fn join_voice(h: &mut Harness, conn: ConnId, media: &[&str]) -> Vec<Value> {
    h.send(conn, json!({"type": "webrtc-join", "mediaTypes": media}));
    h.frames_to(conn)
}

#[test]
fn voice_join_hands_out_verifiable_relay_credentials() {
    let mut h = Harness::new(|_| {});
    let alice = h.connect(Some("Alice"));
    let frames = join_voice(&mut h, alice, &["audio", "video", "screen", "audio"]);
    assert!(told_relay(&h, true, "Alice"));
    let joined = &frames[0];
    assert_eq!(joined["participants"], json!([{"username": "Alice", "mediaTypes": ["audio", "video"]}]));
    let config = &joined["config"];
    assert_eq!(config["forceRelay"], true);
    assert_eq!(config["iceTransportPolicy"], "relay");
    assert_eq!(config["credentialTtl"], 600);
    let server = &config["iceServers"][0];
    assert_eq!(
        server["urls"],
        json!(["turn:chat.example.org:3478?transport=udp", "turn:chat.example.org:3478?transport=tcp"])
    );
    let username = server["username"].as_str().unwrap();
    let (expiry, turn_user) = username.split_once(':').unwrap();
    assert_eq!(expiry, (h.now.unix() + 600).to_string());
    let tag = turn_user.strip_prefix("Alice:").expect("<expiry>:<name>:<session tag>");
    assert!(tag.len() == 8 && tag.bytes().all(|b| b.is_ascii_hexdigit()), "{username}");
    assert_eq!(server["credential"], credential_for(b"secret", username));
    assert_eq!(frames[1]["text"], "Alice joined voice chat");
}

#[test]
fn credentials_are_pushed_again_at_80_percent_of_the_ttl() {
    let mut h = Harness::new(|s| s.turn.credential_ttl_s = 100);
    let alice = h.connect(Some("Alice"));
    join_voice(&mut h, alice, &["audio"]);
    h.advance(Duration::from_secs(79));
    h.tick();
    assert!(h.frames_to(alice).is_empty());
    h.advance(Duration::from_secs(1));
    h.tick();
    let push = &h.frames_to(alice)[0];
    assert_eq!(push["type"], "webrtc-credentials");
    assert_eq!(push["credentialTtl"], 100);
    assert!(push["iceServers"][0]["username"]
        .as_str()
        .unwrap()
        .starts_with(&format!("{}:Alice:", h.now.unix() + 100)));
}

#[test]
fn force_relay_rebuilds_candidates_objects_and_sdp() {
    let mut h = Harness::new(|_| {});
    let alice = h.connect(Some("Alice"));
    let bob = h.connect(Some("Bob"));
    join_voice(&mut h, alice, &["audio"]);
    join_voice(&mut h, bob, &["audio"]);
    let candidate = |c: &str| json!({"type": "webrtc-ice-candidate", "targetUsername": "Bob", "candidate": {"candidate": c, "sdpMid": "0"}});
    // Host, and a host address disguised as a relay: nothing reaches Bob.
    h.send(alice, candidate("candidate:1 1 udp 2122260223 192.168.1.5 54321 typ host"));
    h.send(alice, candidate("candidate:3 1 udp 41885439 192.168.1.5 50000 typ relay"));
    assert!(h.frames_to(bob).is_empty());
    // Our relay, from a client that ignored the relay-only policy: its raddr is its own address.
    let leaky =
        "candidate:2 1 udp 41885439 127.0.0.1 50000 typ relay raddr 192.168.1.5 rport 54321 generation 0";
    h.send(
        alice,
        json!({"type": "webrtc-ice-candidate", "targetUsername": "Bob",
               "candidate": {"candidate": leaky, "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "Yx3f",
                             "relatedAddress": "192.168.1.5", "address": "192.168.1.5"}}),
    );
    let rebuilt = "candidate:2 1 udp 41885439 127.0.0.1 50000 typ relay raddr 0.0.0.0 rport 0 generation 0";
    assert_eq!(
        h.frames_to(bob),
        [json!({"type": "webrtc-ice-candidate", "fromUsername": "Alice",
                "candidate": {"candidate": rebuilt, "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "Yx3f"}})]
    );
    let sdp = format!(
        "v=0\r\no=- 42 2 IN IP4 192.168.1.5\r\nc=IN IP4 192.168.1.5\r\na=rtcp:9 IN IP4 192.168.1.5\r\n\
         a=candidate:1 1 udp 2122260223 192.168.1.5 54321 typ host\r\na={leaky}\r\n"
    );
    h.send(
        alice,
        json!({"type": "webrtc-offer", "targetUsername": "Bob", "offer": {"type": "offer", "sdp": sdp, "address": "192.168.1.5"}}),
    );
    assert_eq!(
        h.frames_to(bob)[0]["offer"],
        json!({"type": "offer", "sdp": format!(
            "v=0\r\no=- 42 2 IN IP4 0.0.0.0\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\na={rebuilt}\r\n")})
    );
    // An SDP whose origin cannot be rebuilt is refused like any invalid offer.
    h.send(
        alice,
        json!({"type": "webrtc-offer", "targetUsername": "Bob", "offer": {"type": "offer", "sdp": "v=0\r\no=x\r\n"}}),
    );
    assert!(h.frames_to(bob).is_empty());
    assert_eq!(h.frames_to(alice)[0]["error"], "Invalid offer data");
    let tally = h.hub.privacy_tally();
    assert_eq!(tally.dropped(DropReason::NotRelay), 2);
    assert_eq!(tally.dropped(DropReason::NotOurRelay), 1);
    assert_eq!(tally.sanitized(SanitizedField::RelatedAddress), 2);
    assert_eq!(tally.sanitized(SanitizedField::ObjectKey), 3);
}

#[test]
fn without_force_relay_signaling_is_relayed_as_sent() {
    let mut h = Harness::new(|s| s.webrtc.force_relay = false);
    let alice = h.connect(Some("Alice"));
    let bob = h.connect(Some("Bob"));
    join_voice(&mut h, alice, &["audio"]);
    join_voice(&mut h, bob, &["audio"]);
    let object = json!({"candidate": "candidate:1 1 udp 2122260223 192.168.1.5 54321 typ host", "sdpMid": "0", "x": 1});
    h.send(alice, json!({"type": "webrtc-ice-candidate", "targetUsername": "Bob", "candidate": object}));
    assert_eq!(h.frames_to(bob)[0]["candidate"], object);
    assert_eq!(h.hub.privacy_tally(), Default::default());
}

#[test]
fn buffered_candidates_flush_both_ways_after_an_answer_and_are_capped() {
    let mut h = Harness::new(|s| s.webrtc.force_relay = false);
    let alice = h.connect(Some("Alice"));
    let bob = h.connect(Some("Bob"));
    join_voice(&mut h, alice, &["audio"]);
    join_voice(&mut h, bob, &["audio"]);
    let candidate = |i: usize| json!({"candidate": format!("candidate:{i} 1 udp 1 10.0.0.1 {i} typ host")});
    for i in 0..(MAX_BUFFERED + 1) {
        h.send(bob, json!({"type": "webrtc-ice-candidate", "targetUsername": "Alice", "candidate": candidate(i), "buffer": true}));
        assert!(h.frames_to(alice).is_empty());
    }
    h.send(alice, json!({"type": "webrtc-ice-candidate", "targetUsername": "Bob", "candidate": candidate(999), "buffer": true}));
    h.send(
        alice,
        json!({"type": "webrtc-answer", "targetUsername": "Bob", "answer": {"type": "answer", "sdp": "v=0"}}),
    );
    let to_alice = h.frames_to(alice);
    assert_eq!(to_alice.len(), MAX_BUFFERED);
    assert_eq!(to_alice[0]["candidate"], candidate(1), "the oldest was dropped");
    assert_eq!(to_alice[MAX_BUFFERED - 1]["candidate"], candidate(MAX_BUFFERED));
    let to_bob = h.frames_to(bob);
    assert_eq!(to_bob[0]["type"], "webrtc-answer");
    assert_eq!(to_bob[1]["candidate"], candidate(999));
}

const MAX_BUFFERED: usize = voice::MAX_BUFFERED_CANDIDATES;

#[test]
fn disconnect_leaves_voice_and_tells_the_relay() {
    let mut h = Harness::new(|_| {});
    let alice = h.connect(Some("Alice"));
    let bob = h.connect(Some("Bob"));
    join_voice(&mut h, alice, &["audio"]);
    join_voice(&mut h, bob, &["audio"]);
    h.effects = h.hub.disconnect(bob, h.now);
    assert!(told_relay(&h, false, "Bob"));
    let frames = h.frames_to(alice);
    assert_eq!(frames[0], json!({"type": "webrtc-peer-left", "username": "Bob"}));
    assert_eq!(frames[1]["text"], "Bob left voice chat");
    assert_eq!(frames[2]["text"], "Bob has left.");
    assert_eq!(h.hub.stats(), Stats { connected_users: 1, voice_participants: 1 });
}

#[test]
fn a_banned_admin_target_leaves_voice_and_is_closed() {
    let mut h = Harness::new(|s| {
        s.chat.authentication = true;
        s.chat.admins = vec!["Admin".into()];
    });
    let admin = h.connect(None);
    h.effects = h.hub.login_checked(admin, "Admin".into(), true, h.now);
    let mallory = h.connect(None);
    h.chat(mallory, "/login Mallory password123");
    assert!(matches!(&h.effects[..], [Effect::CheckLogin { name, .. }] if name == "Mallory"));
    h.effects = h.hub.login_checked(mallory, "Mallory".into(), true, h.now);
    join_voice(&mut h, mallory, &["audio"]);
    join_voice(&mut h, admin, &["audio"]);
    h.chat(admin, "/ban Mallory");
    assert!(h.effects.contains(&Effect::SaveBan { name: "Mallory".into(), banned: true }));
    assert!(told_relay(&h, false, "Mallory"));
    assert_eq!(h.closed(mallory), Some(CLOSE_POLICY));
    assert_eq!(
        h.texts_to(admin),
        ["Mallory was banned by Admin.", "Mallory left voice chat", "Mallory has left."]
    );
    let again = h.connect(None);
    h.effects = h.hub.login_checked(again, "Mallory".into(), true, h.now);
    assert_eq!(h.texts_to(again), ["You are banned."]);
}

#[test]
fn shutdown_announces_everyone_to_everyone() {
    let mut h = Harness::new(|_| {});
    let alice = h.connect(Some("Alice"));
    let bob = h.connect(Some("Bob"));
    join_voice(&mut h, bob, &["audio"]);
    h.effects = h.hub.shutdown(h.now);
    for conn in [alice, bob] {
        assert_eq!(
            h.texts_to(conn),
            ["Alice has left. (Server Shutdown)", "Bob has left. (Server Shutdown)"]
        );
        assert_eq!(h.closed(conn), Some(CLOSE_GOING_AWAY));
    }
    assert!(told_relay(&h, false, "Bob"));
    assert_eq!(h.hub.stats(), Stats::default());
}

#[test]
fn messages_from_unknown_or_refused_connections_are_ignored() {
    let mut h = Harness::new(|s| s.limits.total_max_connections = 1);
    let _alice = h.connect(Some("Alice"));
    let refused = h.connect(Some("Bob"));
    assert_eq!(h.texts_to(refused), ["Server is full. Please try again later."]);
    h.chat(refused, "hello");
    assert!(h.effects.is_empty());
    h.effects = h.hub.disconnect(refused, h.now);
    assert!(h.effects.is_empty());
}

#[test]
fn a_buffered_candidate_after_the_answer_is_delivered_at_once() {
    let mut h = Harness::new(|s| s.webrtc.force_relay = false);
    let alice = h.connect(Some("Alice"));
    let bob = h.connect(Some("Bob"));
    join_voice(&mut h, alice, &["audio"]);
    join_voice(&mut h, bob, &["audio"]);
    let candidate = json!({"candidate": "candidate:1 1 udp 1 10.0.0.1 5 typ host"});
    h.send(
        bob,
        json!({"type": "webrtc-offer", "targetUsername": "Alice", "offer": {"type": "offer", "sdp": "v=0"}}),
    );
    h.send(
        alice,
        json!({"type": "webrtc-answer", "targetUsername": "Bob", "answer": {"type": "answer", "sdp": "v=0"}}),
    );
    h.send(bob, json!({"type": "webrtc-ice-candidate", "targetUsername": "Alice", "candidate": candidate, "buffer": true}));
    assert_eq!(h.frames_to(alice)[0]["candidate"], candidate);
    // A new offer (renegotiation, ICE restart) makes buffering hold again until its answer.
    h.send(
        alice,
        json!({"type": "webrtc-offer", "targetUsername": "Bob", "offer": {"type": "offer", "sdp": "v=0"}}),
    );
    h.send(bob, json!({"type": "webrtc-ice-candidate", "targetUsername": "Alice", "candidate": candidate, "buffer": true}));
    assert!(h.frames_to(alice).is_empty());
    h.send(bob, json!({"type": "webrtc-answer", "targetUsername": "Alice", "answer": {"type": "answer", "sdp": "v=0"}}));
    assert_eq!(h.frames_to(alice).len(), 2);
}

/// No server→client message of any kind names a client's address: every message type a client
/// can send, from four clients on distinctive addresses (10.0.0.1-4), in open and
/// authentication mode, with time passing; every frame to anyone is searched for them.
mod no_frame_names_a_client_address {
    use super::*;
    use proptest::prelude::*;

    fn message() -> impl Strategy<Value = Value> {
        let target = prop_oneof![Just("Alice"), Just("Bob"), Just("Carol"), Just("Dave"), Just("nobody")];
        let text = prop_oneof![
            Just("hello".to_string()),
            Just("/help".to_string()),
            Just("/list".to_string()),
            Just("/nick Eve".to_string()),
            Just("/block Bob".to_string()),
            Just("/unblock Bob".to_string()),
            Just("/kick Bob".to_string()),
            Just("/ban Carol".to_string()),
            Just("/unban Carol".to_string()),
            Just("/register Alice pw123456".to_string()),
            Just("/login Alice pw123456".to_string()),
            Just("/whois Bob".to_string()),
            Just("/ip".to_string()),
            "[ -~]{0,20}",
        ];
        prop_oneof![
            text.prop_map(|t| json!({"type": "chat", "content": t})),
            Just(json!({"type": "typing"})),
            Just(json!({"type": "ping"})),
            Just(json!({"type": "webrtc-join", "mediaTypes": ["audio", "video"]})),
            Just(json!({"type": "webrtc-leave"})),
            target.clone().prop_map(|t| json!({"type": "webrtc-offer", "targetUsername": t,
                "offer": {"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\n"}})),
            target.clone().prop_map(|t| json!({"type": "webrtc-answer", "targetUsername": t,
                "answer": {"type": "answer", "sdp": "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\n"}})),
            (target, any::<bool>()).prop_map(|(t, b)| json!({"type": "webrtc-ice-candidate", "targetUsername": t, "buffer": b,
                "candidate": {"candidate": "candidate:1 1 udp 41885439 127.0.0.1 5000 typ relay", "sdpMid": "0"}})),
            Just(json!({"type": "webrtc-media-change", "mediaTypes": ["audio"]})),
            Just(json!({"type": "webrtc-bogus"})),
            Just(json!({"type": "nonsense"})),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
        #[test]
        fn in_any_sequence_of_client_messages(
            authentication in any::<bool>(),
            steps in proptest::collection::vec((0usize..4, message(), any::<bool>()), 1..40),
        ) {
            let mut h = Harness::new(|s| {
                s.chat.authentication = authentication;
                s.chat.admins = vec!["Alice".into()];
            });
            let names = ["Alice", "Bob", "Carol", "Dave"];
            let mut frames: Vec<String> = Vec::new();
            let mut collect = |h: &Harness| {
                for effect in &h.effects {
                    if let Effect::Send { frame, .. } = effect {
                        frames.push(frame.as_str().to_string());
                    }
                }
            };
            let conns: Vec<ConnId> = names.iter().map(|n| { let c = h.connect(Some(n)); collect(&h); c }).collect();
            for (who, message, tick) in steps {
                h.send(conns[who], message);
                collect(&h);
                if tick {
                    h.advance(Duration::from_secs(7));
                    h.tick();
                    collect(&h);
                }
            }
            for frame in &frames {
                prop_assert!(!frame.contains("10.0.0."), "a client address in {}", frame);
            }
        }
    }
}

#[test]
fn unknown_slash_commands_are_chat_for_everyone() {
    let mut h = Harness::new(|s| s.chat.max_messages_per_second = 100);
    let alice = h.connect(Some("Alice"));
    let bob = h.connect(Some("Bob"));
    for text in ["/roll 2d6", "/list everyone", "/help me", "/nickname"] {
        h.chat(alice, text);
        for conn in [alice, bob] {
            let frames = h.frames_to(conn);
            assert_eq!(frames.len(), 1, "{text}: {frames:?}");
            assert_eq!(
                (&frames[0]["type"], &frames[0]["username"], &frames[0]["text"]),
                (&json!("chat"), &json!("Alice"), &json!(text))
            );
        }
        assert!(h.effects.iter().any(|e| matches!(e, Effect::Persist(entry) if entry.text == text)));
    }
    // Built-ins are still commands, and a logged-in "/login" is never broadcast (a password).
    h.chat(alice, "/login Alice secret123");
    assert_eq!(h.texts_to(alice), ["You are already logged in."]);
    assert!(h.frames_to(bob).is_empty());
}

#[test]
fn nick_texts_are_the_originals() {
    let mut h = Harness::new(|s| {
        s.chat.nick_change_cooldown_ms = 1500;
        s.chat.max_messages_per_second = 100;
    });
    let alice = h.connect(Some("Alice"));
    let _bob = h.connect(Some("Bob"));
    for (command, reply) in [
        ("/nick Bob", "Username \"Bob\" is already taken."),
        ("/nick Alice", "Username \"Alice\" is already taken."),
        ("/nick a!", "Illegal username. Must be 3-20 characters, only letters, digits, underscore, dash."),
        (
            "/nick Foo Bar",
            "Illegal username. Must be 3-20 characters, only letters, digits, underscore, dash.",
        ),
        ("/nick ThisNameIsWayTooLongForUs", "Alice is now ThisNameIsWayTooLong"),
        (
            "/nick Other",
            "You can only change your nickname once every 1.5 seconds. Please wait 2 more seconds.",
        ),
    ] {
        h.chat(alice, command);
        assert_eq!(h.texts_to(alice), [reply], "{command}");
    }
}

#[test]
fn block_and_unblock_texts_are_the_originals() {
    let mut h = Harness::new(|s| s.chat.max_messages_per_second = 100);
    let alice = h.connect(Some("Alice"));
    let bob = h.connect(Some("Bob"));
    for (command, reply) in [
        ("/block", "Usage: /block <username>"),
        ("/block ALICE", "You cannot block yourself."),
        ("/block Nobody", "User \"nobody\" not found."),
        ("/block BOB", "You have blocked Bob for 12 hours."),
        ("/list", "Online users: Alice, [B]Bob"),
        ("/unblock", "Usage: /unblock <username>"),
        ("/unblock Nobody", "nobody was not blocked."),
        ("/unblock bob", "You have unblocked Bob."),
        ("/unblock bob", "bob was not blocked."),
    ] {
        h.chat(alice, command);
        assert_eq!(h.texts_to(alice), [reply], "{command}");
    }
    // A block outlives the blocked user's connection and can still be lifted.
    h.chat(alice, "/block Bob");
    h.effects = h.hub.disconnect(bob, h.now);
    h.chat(alice, "/unblock bob");
    assert_eq!(h.texts_to(alice), ["You have unblocked Bob."]);
}

#[test]
fn moderation_texts_are_the_originals() {
    let mut h = Harness::new(|s| {
        s.chat.max_messages_per_second = 100;
        s.chat.authentication = true;
        s.chat.admins = vec!["Admin".into()];
    });
    let admin = h.connect(None);
    h.effects = h.hub.login_checked(admin, "Admin".into(), true, h.now);
    let mallory = h.connect(None);
    h.effects = h.hub.login_checked(mallory, "Mallory".into(), true, h.now);
    for (command, reply) in [
        ("/kick", vec!["Please specify a username to kick."]),
        ("/kick a!", vec!["Illegal username in /kick command."]),
        ("/kick Admin", vec!["User \"Admin\" not found."]),
        ("/kick Nobody", vec!["User \"Nobody\" not found."]),
        ("/ban", vec!["Please specify a username to ban."]),
        ("/ban a!", vec!["Illegal username in /ban command."]),
        ("/ban Ghost", vec!["Ghost was banned by Admin.", "User \"Ghost\" is now banned."]),
        ("/ban Ghost", vec!["Ghost is already banned."]),
        ("/unban", vec!["Please specify a username to unban."]),
        ("/unban a!", vec!["Illegal username in /unban command."]),
        ("/unban Nobody", vec!["Nobody is not banned."]),
        ("/unban Ghost", vec!["Ghost has been unbanned.", "Ghost was unbanned by Admin."]),
    ] {
        h.chat(admin, command);
        assert_eq!(h.texts_to(admin), reply, "{command}");
    }
    h.chat(mallory, "/kick Admin");
    assert_eq!(h.texts_to(mallory), ["You do not have permission to use /kick."]);
    h.chat(admin, "/kick Mallory");
    assert_eq!(h.texts_to(mallory)[0], "You have been kicked by an admin.");
    assert_eq!(h.closed(mallory), Some(CLOSE_POLICY));
    assert_eq!(h.texts_to(admin), ["Mallory was kicked by Admin.", "Mallory has left."]);
}

#[test]
fn before_login_only_chat_and_ping_are_understood() {
    let mut h = Harness::new(|s| s.chat.authentication = true);
    let guest = h.connect(None);
    for message in [json!({"type": "typing"}), json!({"type": "webrtc-join"}), json!({"type": "chat"})] {
        h.send(guest, message.clone());
        assert_eq!(
            h.texts_to(guest),
            ["Please authenticate first using /register or /login commands in message content."],
            "{message}"
        );
    }
    h.effects = h.hub.message(guest, parse_inbound("not json"), h.now);
    assert_eq!(h.texts_to(guest), ["Invalid message format. Must be JSON."]);
    // The failure that starts the block still says "Login failed."; the next one is refused.
    for _ in 0..5 {
        h.effects = h.hub.login_checked(guest, "Zed".into(), false, h.now);
        assert_eq!(h.texts_to(guest), ["Login failed."]);
    }
    h.chat(guest, "/login Zed password123");
    assert_eq!(h.texts_to(guest), ["Too many failed attempts. Blocked for 1 hour."]);
}

#[test]
fn a_typing_flood_is_not_relayed_past_its_budget_and_a_sustained_flood_disconnects() {
    let mut h = Harness::new(|_| {});
    let alice = h.connect(Some("Alice"));
    let bob = h.connect(Some("Bob"));
    let mut relayed = 0;
    let mut closed = None;
    for _ in 0..1000 {
        h.send(alice, json!({"type": "typing"}));
        relayed += h.frames_to(bob).len();
        closed = closed.or(h.closed(alice));
    }
    let budget = MessageBudgetSettings::default();
    assert_eq!(relayed, budget.typing.burst as usize, "only the burst is relayed at once");
    assert_eq!(closed, Some(CLOSE_POLICY), "a thousand frames at once is a flood");
    // Bob was never affected.
    h.chat(bob, "still here");
    assert_eq!(h.frames_to(bob)[0]["text"], "still here");
}

#[test]
fn join_leave_flapping_is_refused_past_its_budget_and_persisted_once() {
    let mut h = Harness::new(|_| {});
    let alice = h.connect(Some("Alice"));
    let bob = h.connect(Some("Bob"));
    let mut persisted: Vec<String> = Vec::new();
    let mut refusals = 0;
    for i in 0..40 {
        let kind = if i % 2 == 0 { "webrtc-join" } else { "webrtc-leave" };
        h.send(alice, json!({"type": kind, "mediaTypes": ["audio"]}));
        refusals += h
            .frames_to(alice)
            .iter()
            .filter(|f| f["error"] == "Too many voice join/leave requests. Please wait a moment.")
            .count();
        persisted.extend(h.effects.iter().filter_map(|e| match e {
            Effect::Persist(entry) => Some(entry.text.clone()),
            _ => None,
        }));
    }
    let budget = MessageBudgetSettings::default();
    let admitted = budget.voice_membership.burst as usize;
    assert_eq!(refusals, 40 - admitted, "a burst at once, then refused");
    assert_eq!(
        persisted,
        [
            "Alice joined voice chat",
            "Alice left voice chat",
            "Alice joined voice chat",
            "Alice left voice chat"
        ],
        "flapping persists only the allowance"
    );
    // The 10 admitted requests end with Alice out of voice, as the history says: nothing to
    // settle. Make her end up in voice, still within the interval: shown live, not persisted.
    h.advance(Duration::from_secs(2));
    h.send(alice, json!({"type": "webrtc-join", "mediaTypes": ["audio"]}));
    assert!(!h.effects.iter().any(|e| matches!(e, Effect::Persist(_))));
    assert_eq!(h.texts_to(bob), ["Alice joined voice chat"]);
    // Once the interval passes, the history gets her real state, without a second broadcast.
    h.advance(Duration::from_secs(61));
    h.tick();
    let settled: Vec<&HistoryEntry> = h
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::Persist(entry) => Some(entry),
            _ => None,
        })
        .collect();
    assert_eq!(settled.len(), 1);
    assert_eq!(settled[0].text, "Alice joined voice chat");
    assert!(h.frames_to(bob).is_empty());
}

#[test]
fn turn_credentials_are_bound_to_the_voice_session_not_the_name() {
    let mut h = Harness::new(|_| {});
    let alice = h.connect(Some("Alice"));
    let user_of = |h: &Harness, conn| -> String {
        let joined = h.frames_to(conn).into_iter().find(|f| f["type"] == "webrtc-joined").unwrap();
        let username = joined["config"]["iceServers"][0]["username"].as_str().unwrap().to_string();
        username.split_once(':').unwrap().1.to_string()
    };
    h.send(alice, json!({"type": "webrtc-join"}));
    let first = user_of(&h, alice);
    assert!(h.effects.contains(&Effect::VoiceJoined { turn_user: first.clone() }));
    // Alice goes; someone else takes the name and joins: another TURN user, and the relay is
    // told the first one left, so the first credential is not live again.
    h.effects = h.hub.disconnect(alice, h.now);
    assert!(h.effects.contains(&Effect::VoiceLeft { turn_user: first.clone() }));
    let mallory = h.connect(Some("Alice"));
    h.send(mallory, json!({"type": "webrtc-join"}));
    let second = user_of(&h, mallory);
    assert!(second.starts_with("Alice:") && second != first, "{first} / {second}");
}
