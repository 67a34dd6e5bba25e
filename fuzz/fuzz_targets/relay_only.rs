//! The privacy boundary on arbitrary input: any candidate string, candidate object or SDP a
//! client can send, with addresses anywhere, comes out naming no address but our relay's and
//! the placeholders, and rebuilding what came out changes nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relaychat::hub::relay_only::audit::names_only_these_addresses;
use relaychat::hub::relay_only::{
    candidate_line, candidate_object, description_object, PrivacyTally, RelayAddresses,
};
use relaychat::protocol::{parse_inbound, ClientMessage, Inbound};

const RELAY: &str = "203.0.113.10";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let relays = RelayAddresses::new([RELAY.parse().unwrap()]);
    let mut tally = PrivacyTally::default();

    if let Ok(out) = candidate_line(text, &relays, &mut tally) {
        names_only_these_addresses(&out, &[RELAY]).unwrap();
        assert_eq!(candidate_line(&out, &relays, &mut tally).as_deref(), Ok(out.as_str()));
    }

    // The same text as an SDP and as a candidate, through the real parsing edge.
    let offer = serde_json::json!({"type": "webrtc-offer", "targetUsername": "b", "offer": {"type": "offer", "sdp": text}});
    if let Inbound::Message { message: ClientMessage::WebrtcOffer { description: Some(d), .. }, .. } =
        parse_inbound(&offer.to_string())
    {
        if let Ok(out) = description_object(&d, &relays, &mut tally) {
            let sdp = out["sdp"].as_str().unwrap();
            names_only_these_addresses(sdp, &[RELAY]).unwrap();
            let again = serde_json::json!({"type": "webrtc-offer", "targetUsername": "b", "offer": out});
            if let Inbound::Message {
                message: ClientMessage::WebrtcOffer { description: Some(d2), .. },
                ..
            } = parse_inbound(&again.to_string())
            {
                assert_eq!(description_object(&d2, &relays, &mut tally).unwrap(), out);
            }
        }
    }
    // Raw bytes as a whole candidate frame (object keys and values of any shape).
    if let Inbound::Message {
        message: ClientMessage::WebrtcIceCandidate { candidate: Some(c), .. }, ..
    } = parse_inbound(text)
    {
        if let Ok(out) = candidate_object(&c, &relays, &mut tally) {
            for key in out.as_object().unwrap().keys() {
                assert!(matches!(
                    key.as_str(),
                    "candidate" | "sdpMid" | "sdpMLineIndex" | "usernameFragment"
                ));
            }
            let values: Vec<String> = out
                .as_object()
                .unwrap()
                .values()
                .map(|v| v.as_str().map(str::to_string).unwrap_or(v.to_string()))
                .collect();
            names_only_these_addresses(&values.join("\n"), &[RELAY]).unwrap();
        }
    }
});
