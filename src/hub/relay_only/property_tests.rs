//! Property tests of the whole boundary: whatever a client writes, with IPv4/IPv6 literals
//! embedded anywhere, what a peer receives names no address but our relays' and the
//! placeholders, rebuilding is idempotent, and nothing panics.

use proptest::prelude::*;
use serde_json::{Map, Value};

use super::audit::names_only_these_addresses;
use super::*;
use crate::protocol::{parse_inbound, ClientMessage, Inbound};

const RELAY_V4: &str = "203.0.113.10";
const RELAY_V6: &str = "2001:db8::10";

fn relays() -> RelayAddresses {
    RelayAddresses::new([RELAY_V4.parse().unwrap(), RELAY_V6.parse().unwrap()])
}

fn names_only_allowed_addresses(text: &str) -> Result<(), String> {
    names_only_these_addresses(text, &[RELAY_V4, RELAY_V6])
}

fn ip_literal() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|o| std::net::Ipv4Addr::from(o).to_string()),
        any::<[u16; 8]>().prop_map(|s| std::net::Ipv6Addr::from(s).to_string()),
        Just("192.168.1.5".to_string()),
        Just("fe80::1%eth0".to_string()),
        Just("::ffff:10.0.0.1".to_string()),
        Just(RELAY_V4.to_string()),
        Just(RELAY_V6.to_string()),
    ]
}

/// Text with address literals spliced in at random places.
fn salted(base: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    (base, proptest::collection::vec((ip_literal(), any::<prop::sample::Index>()), 0..3)).prop_map(
        |(mut text, ips)| {
            for (ip, at) in ips {
                let mut position = at.index(text.len() + 1);
                while !text.is_char_boundary(position) {
                    position -= 1;
                }
                text.insert_str(position, &ip);
            }
            text
        },
    )
}

fn candidate_text() -> impl Strategy<Value = String> {
    let typ =
        prop_oneof![Just("host"), Just("srflx"), Just("prflx"), Just("relay"), Just("relay"), Just("relay")];
    let extensions = prop_oneof![
        Just(String::new()),
        Just(
            " raddr 192.168.1.5 rport 5000 generation 0 ufrag Yx3f network-id 1 network-cost 10".to_string()
        ),
        Just(" raddr 0.0.0.0 rport 0 tcptype passive".to_string()),
        Just(" x-foo 10.1.1.1".to_string()),
        "( [a-z-]{1,8} [ -~&&[^ ]]{1,12}){0,3}",
    ];
    (ip_literal(), typ, 1u16..=65535, extensions, any::<bool>()).prop_map(|(address, typ, port, ext, sdp)| {
        let prefix = if sdp { "a=candidate:" } else { "candidate:" };
        format!("{prefix}842163049 1 udp 41885439 {address} {port} typ {typ}{ext}")
    })
}

fn sdp_line() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("v=0".to_string()),
        salted(Just("o=- 4611731400430051336 2 IN IP4 ".to_string())),
        salted(Just("c=IN IP4 ".to_string())),
        salted(Just("c=IN IP6 ".to_string())),
        salted(Just("a=rtcp:9 IN IP4 ".to_string())),
        Just("a=fingerprint:sha-256 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:1A:66:12:A0:4B:92:1C:35:B9:E2:10:9A".to_string()),
        salted(Just("a=fingerprint:sha-256 4A:AD:".to_string())),
        salted(Just("a=remote-candidates:1 ".to_string())),
        Just("m=audio 9 UDP/TLS/RTP/SAVPF 111".to_string()),
        Just("a=rtpmap:111 opus/48000/2".to_string()),
        candidate_text().prop_map(|c| if c.starts_with("a=") { c } else { format!("a={c}") }),
        salted("[ -~]{0,30}"),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn a_rebuilt_candidate_names_only_our_relay_and_is_idempotent(line in prop_oneof![candidate_text(), salted(candidate_text()), "[ -~]{0,60}"]) {
        let mut tally = PrivacyTally::default();
        if let Ok(out) = candidate_line(&line, &relays(), &mut tally) {
            prop_assert!(names_only_allowed_addresses(&out).is_ok(), "{:?} -> {:?}", line, out);
            prop_assert_eq!(candidate_line(&out, &relays(), &mut tally), Ok(out.clone()));
        }
    }

    #[test]
    fn a_rebuilt_sdp_names_only_our_relays_and_is_idempotent(
        lines in proptest::collection::vec(sdp_line(), 0..16),
        crlf in any::<bool>(),
    ) {
        let eol = if crlf { "\r\n" } else { "\n" };
        let sdp: String = lines.iter().map(|l| format!("{l}{eol}")).collect();
        let mut tally = PrivacyTally::default();
        if let Ok(out) = super::sdp::rebuild(&sdp, &relays(), &mut tally) {
            if let Err(leak) = names_only_allowed_addresses(&out) {
                prop_assert!(false, "{} in {:?}", leak, out);
            }
            prop_assert_eq!(super::sdp::rebuild(&out, &relays(), &mut tally), Ok(out.clone()));
            // Line endings are kept: every line of the output ends as the input's did.
            prop_assert!(out.split_inclusive('\n').all(|l| l.ends_with(eol)));
        }
    }

    /// A whole client frame, with arbitrary extra keys and values, through parsing and the
    /// rebuild: the relayed object has only the allowed keys and no foreign address anywhere.
    #[test]
    fn a_rebuilt_candidate_object_has_only_its_four_keys(
        line in prop_oneof![candidate_text(), Just(String::new())],
        mid in prop_oneof![Just(Value::from("0")), Just(Value::from("10.0.0.1")), Just(Value::Null), Just(Value::from(7)), salted("[a-z0-9]{0,5}").prop_map(Value::from)],
        index in prop_oneof![Just(Value::from(0)), Just(Value::from(-1)), Just(Value::from("0")), Just(Value::from(70000))],
        ufrag in prop_oneof![Just(Value::from("Yx3f")), salted("[a-zA-Z0-9+/]{0,8}").prop_map(Value::from)],
        extra in proptest::collection::vec(("[a-zA-Z]{1,10}", salted("[ -~]{0,10}")), 0..4),
    ) {
        let mut object = Map::new();
        object.insert("candidate".into(), Value::from(line));
        object.insert("sdpMid".into(), mid);
        object.insert("sdpMLineIndex".into(), index);
        object.insert("usernameFragment".into(), ufrag);
        for (key, value) in extra {
            object.insert(key, Value::from(value));
        }
        let frame = serde_json::json!({"type": "webrtc-ice-candidate", "targetUsername": "bob", "candidate": object});
        let Inbound::Message { message: ClientMessage::WebrtcIceCandidate { candidate: Some(candidate), .. }, .. } =
            parse_inbound(&frame.to_string())
        else {
            return Ok(());
        };
        let mut tally = PrivacyTally::default();
        if let Ok(Value::Object(out)) = candidate_object(&candidate, &relays(), &mut tally) {
            for key in out.keys() {
                prop_assert!(matches!(key.as_str(), "candidate" | "sdpMid" | "sdpMLineIndex" | "usernameFragment"), "{}", key);
            }
            let text = Value::Object(out).to_string();
            let values: String = text.split('"').collect::<Vec<_>>().join(" ");
            prop_assert!(names_only_allowed_addresses(&values).is_ok(), "{}", text);
        }
    }
}

#[test]
fn description_objects_keep_only_type_and_sdp() {
    let frame = serde_json::json!({
        "type": "webrtc-offer",
        "targetUsername": "bob",
        "offer": {"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 192.168.1.5\r\n", "address": "192.168.1.5", "x": 1}
    });
    let Inbound::Message {
        message: ClientMessage::WebrtcOffer { description: Some(description), .. }, ..
    } = parse_inbound(&frame.to_string())
    else {
        panic!("not an offer");
    };
    let mut tally = PrivacyTally::default();
    let out = description_object(&description, &relays(), &mut tally).unwrap();
    assert_eq!(out, serde_json::json!({"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\n"}));
    assert_eq!(tally.sanitized(SanitizedField::ObjectKey), 2);
    assert_eq!(tally.sanitized(SanitizedField::SdpOrigin), 1);
}
