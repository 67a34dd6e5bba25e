//! No server→client message of any kind names a client's address: every message type a client
//! can send, from four clients on distinctive addresses (10.0.0.1-4), in open and
//! authentication mode, with time passing; every frame to anyone is searched for them.

use std::time::Duration;

use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;

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
    fn no_frame_names_a_client_address_in_any_sequence_of_client_messages(
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
                match effect {
                    Effect::Send { frame, .. } => frames.push(frame.as_str().to_string()),
                    Effect::Broadcast { to, frame, .. } => {
                        frames.extend(to.iter().map(|_| frame.as_str().to_string()))
                    }
                    _ => {}
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
