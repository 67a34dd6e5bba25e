//! The sanitizer on what real Chromium sends (tests/fixtures/chromium: policy relay and all,
//! audio and video, TURN over UDP and TCP; the relay on 127.0.0.2, the machine's own addresses
//! listed in each file). Every description and candidate goes through the same path as a client
//! frame: parsing at the edge, then the rebuild.

use serde_json::{json, Value};

use super::audit::names_only_these_addresses;
use super::*;
use crate::protocol::{parse_inbound, ClientMessage, Inbound};

const FIXTURES: [(&str, &str); 8] = [
    ("relay-udp-audio", include_str!("../../../tests/fixtures/chromium/relay-udp-audio.json")),
    ("relay-udp-video", include_str!("../../../tests/fixtures/chromium/relay-udp-video.json")),
    ("relay-tcp-audio", include_str!("../../../tests/fixtures/chromium/relay-tcp-audio.json")),
    ("relay-tcp-video", include_str!("../../../tests/fixtures/chromium/relay-tcp-video.json")),
    ("all-udp-audio", include_str!("../../../tests/fixtures/chromium/all-udp-audio.json")),
    ("all-udp-video", include_str!("../../../tests/fixtures/chromium/all-udp-video.json")),
    ("all-tcp-audio", include_str!("../../../tests/fixtures/chromium/all-tcp-audio.json")),
    ("all-tcp-video", include_str!("../../../tests/fixtures/chromium/all-tcp-video.json")),
];

struct Fixture {
    name: &'static str,
    relay: String,
    machine_addresses: Vec<String>,
    descriptions: Vec<Value>,
    candidates: Vec<Value>,
}

fn fixtures() -> Vec<Fixture> {
    FIXTURES
        .iter()
        .map(|(name, text)| {
            let file: Value = serde_json::from_str(text).expect("fixture is JSON");
            let strings = |v: &Value| -> Vec<String> {
                v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
            };
            let inner = |key: &str, field: &str| -> Vec<Value> {
                file[key].as_array().unwrap().iter().map(|entry| entry[field].clone()).collect()
            };
            Fixture {
                name,
                relay: file["relay_ip"].as_str().unwrap().to_string(),
                machine_addresses: strings(&file["machine_addresses"]),
                descriptions: inner("descriptions", "description"),
                candidates: inner("candidates", "candidate"),
            }
        })
        .collect()
}

fn relays(fixture: &Fixture) -> RelayAddresses {
    RelayAddresses::new([fixture.relay.parse().unwrap()])
}

/// The description as the hub gets it from a client frame.
fn parsed_description(description: &Value) -> SessionDescription {
    let (kind, key) = match description["type"].as_str().unwrap() {
        "offer" => ("webrtc-offer", "offer"),
        _ => ("webrtc-answer", "answer"),
    };
    let frame = json!({"type": kind, "targetUsername": "bob", key: description});
    match parse_inbound(&frame.to_string()) {
        Inbound::Message { message: ClientMessage::WebrtcOffer { description: Some(d), .. }, .. }
        | Inbound::Message { message: ClientMessage::WebrtcAnswer { description: Some(d), .. }, .. } => d,
        other => panic!("not parsed as a description: {other:?}"),
    }
}

fn parsed_candidate(candidate: &Value) -> Box<IceCandidate> {
    let frame = json!({"type": "webrtc-ice-candidate", "targetUsername": "bob", "candidate": candidate});
    match parse_inbound(&frame.to_string()) {
        Inbound::Message {
            message: ClientMessage::WebrtcIceCandidate { candidate: Some(c), .. }, ..
        } => c,
        other => panic!("not parsed as a candidate: {other:?}"),
    }
}

fn relay_lines(sdp: &str, relay: &str) -> usize {
    sdp.lines()
        .filter(|l| {
            l.starts_with("a=candidate:") && l.contains(&format!(" {relay} ")) && l.contains(" typ relay")
        })
        .count()
}

#[test]
fn chromium_descriptions_name_nothing_but_the_relay_and_keep_everything_else() {
    for fixture in fixtures() {
        let relays = relays(&fixture);
        for description in &fixture.descriptions {
            let sent = description["sdp"].as_str().unwrap();
            let mut tally = PrivacyTally::default();
            let out = description_object(&parsed_description(description), &relays, &mut tally)
                .unwrap_or_else(|_| panic!("{}: Chromium's SDP refused", fixture.name));
            assert_eq!(out.as_object().unwrap().len(), 2);
            let sdp = out["sdp"].as_str().unwrap();
            names_only_these_addresses(sdp, &[fixture.relay.as_str()])
                .unwrap_or_else(|leak| panic!("{}: {leak}", fixture.name));
            for machine in fixture.machine_addresses.iter().filter(|a| **a != fixture.relay) {
                assert!(
                    !sdp.split([' ', '\r', '\n']).any(|token| token == machine),
                    "{}: {machine} reached the peer",
                    fixture.name
                );
            }
            // Every relay candidate through our relay survives; the origin is the placeholder.
            assert_eq!(
                relay_lines(sdp, &fixture.relay),
                relay_lines(sent, &fixture.relay),
                "{}",
                fixture.name
            );
            assert!(
                sdp.contains(" IN IP4 0.0.0.0\r\n") && sdp.starts_with("v=0\r\no=- "),
                "{}",
                fixture.name
            );
            // Nothing else changed: every line without an address is still there, in order.
            let untouched = |text: &str| -> Vec<String> {
                text.split("\r\n")
                    .filter(|l| !l.starts_with("o=") && !l.starts_with("c=") && !l.starts_with("a=rtcp:"))
                    .filter(|l| !l.starts_with("a=candidate:"))
                    .map(str::to_string)
                    .collect()
            };
            assert_eq!(untouched(sdp), untouched(sent), "{}", fixture.name);
            assert_eq!(description_object(&parsed_description(&out), &relays, &mut tally).unwrap(), out);
        }
    }
}

#[test]
fn chromium_candidates_reach_the_peer_only_as_relays_with_no_related_address() {
    let mut relayed = 0;
    let mut dropped = 0;
    let mut zeroed = 0;
    for fixture in fixtures() {
        let relays = relays(&fixture);
        for candidate in &fixture.candidates {
            let line = candidate["candidate"].as_str().unwrap();
            let mut tally = PrivacyTally::default();
            match candidate_object(&parsed_candidate(candidate), &relays, &mut tally) {
                Ok(out) => {
                    relayed += 1;
                    let rebuilt = out["candidate"].as_str().unwrap();
                    assert!(line.is_empty() || line.contains(&format!(" {} ", fixture.relay)), "{line}");
                    assert!(
                        rebuilt.is_empty() || rebuilt.contains(" typ relay raddr 0.0.0.0 rport 0"),
                        "{rebuilt}"
                    );
                    names_only_these_addresses(rebuilt, &[fixture.relay.as_str()]).unwrap();
                    assert_eq!(out["sdpMid"], candidate["sdpMid"]);
                    assert_eq!(out["sdpMLineIndex"], candidate["sdpMLineIndex"]);
                    assert_eq!(out["usernameFragment"], candidate["usernameFragment"]);
                    zeroed += tally.sanitized(SanitizedField::RelatedAddress);
                }
                Err(reason) => {
                    dropped += 1;
                    assert!(
                        !line.contains(" typ relay") || !line.contains(&format!(" {} ", fixture.relay)),
                        "{line}"
                    );
                    assert!(
                        matches!(reason, DropReason::NotRelay | DropReason::HostName),
                        "{reason:?}: {line}"
                    );
                }
            }
        }
    }
    // The fixtures exercise every path: relayed, dropped, and a real raddr zeroed.
    assert!(
        relayed > 0 && dropped > 0 && zeroed > 0,
        "relayed {relayed}, dropped {dropped}, zeroed {zeroed}"
    );
}
