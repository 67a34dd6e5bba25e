//! Wire types: what clients send (`Inbound`, parsed once at the edge) and what the server sends
//! (`ServerMessage`, serialized once per broadcast).
//!
//! Parsing never fails loudly: anything a client can send maps to some `Inbound` value, including
//! the malformed cases, so the hub can answer each with the exact text js-chat-server clients
//! expect ("Invalid message format.", "Invalid message structure.", ...). After this module the
//! rest of the code never looks at raw JSON again, except the SDP/candidate objects that are
//! relayed to peers as given when force_relay is off (the original behaviour); with force_relay
//! they are rebuilt from the validated fields parsed here.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ice_servers::IceServer;

/// The largest SDP relayed in an offer or answer.
pub const MAX_SDP_BYTES: usize = 64 * 1024;
/// The largest ICE candidate string relayed.
pub const MAX_CANDIDATE_BYTES: usize = 1024;

/// A serialized server message, shared by every recipient of a broadcast (reference-counted
/// bytes: handing it to a thousand sockets copies nothing).
pub type Frame = tokio_tungstenite::tungstenite::Utf8Bytes;

/// Which of a session's two outbound queues a frame takes. Everything that sets up or keeps a
/// call going (`webrtc-*`, credential pushes included) is `Call` and is written before any `Chat`
/// frame already waiting, so a chat fan-out cannot delay call setup. Order holds within a lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Call,
    Chat,
}

/// One text frame from a client, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// Not JSON, or JSON that is not an object.
    Malformed,
    Message {
        token: Option<String>,
        message: ClientMessage,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    Ping,
    Typing,
    /// `content` is `None` when missing or not a string.
    Chat {
        content: Option<String>,
    },
    WebrtcJoin {
        media_types: Option<Vec<String>>,
    },
    WebrtcLeave,
    WebrtcOffer {
        target: Option<String>,
        description: Option<SessionDescription>,
    },
    WebrtcAnswer {
        target: Option<String>,
        description: Option<SessionDescription>,
    },
    WebrtcIceCandidate {
        target: Option<String>,
        /// Boxed: the largest message, and candidates are a small share of the traffic.
        candidate: Option<Box<IceCandidate>>,
        buffer: bool,
    },
    WebrtcMediaChange {
        media_types: Option<Vec<String>>,
    },
    /// A `webrtc-*` type we do not know.
    WebrtcUnknown,
    /// Any other type, or no type at all.
    Unknown,
}

impl ClientMessage {
    /// WebRTC messages answer errors with `webrtc-error` instead of `system`.
    pub fn is_webrtc(&self) -> bool {
        matches!(
            self,
            Self::WebrtcJoin { .. }
                | Self::WebrtcLeave
                | Self::WebrtcOffer { .. }
                | Self::WebrtcAnswer { .. }
                | Self::WebrtcIceCandidate { .. }
                | Self::WebrtcMediaChange { .. }
                | Self::WebrtcUnknown
        )
    }
}

/// The `type` of an RTCSessionDescriptionInit that may be relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DescriptionKind {
    Offer,
    Answer,
    /// A provisional answer (renegotiation), relayed as a `webrtc-answer`.
    Pranswer,
}

impl DescriptionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Offer => "offer",
            Self::Answer => "answer",
            Self::Pranswer => "pranswer",
        }
    }
}

/// An RTCSessionDescriptionInit: the object as the client sent it (relayed as is without
/// force_relay, the original behaviour), and its validated parts (what force_relay rebuilds).
#[derive(Debug, Clone, PartialEq)]
pub struct SessionDescription {
    pub raw: Map<String, Value>,
    pub kind: DescriptionKind,
    pub sdp: String,
    /// Keys other than `type` and `sdp`.
    pub discarded_keys: usize,
}

/// An RTCIceCandidateInit: the object as sent, and its four fields type- and length-checked.
/// A field of the wrong type or shape is `None` and counted in `discarded_keys`, as is any key
/// a browser does not send.
#[derive(Debug, Clone, PartialEq)]
pub struct IceCandidate {
    pub raw: Map<String, Value>,
    /// "" = end of candidates.
    pub candidate: String,
    pub sdp_mid: Option<String>,
    pub sdp_m_line_index: Option<u16>,
    pub username_fragment: Option<String>,
    pub discarded_keys: usize,
}

/// Longest `sdpMid` kept (browsers use "0", "1", ... or short names like "audio").
pub const MAX_SDP_MID_BYTES: usize = 32;
/// Longest `usernameFragment` kept (RFC 8839: at most 256 ice-chars).
pub const MAX_UFRAG_BYTES: usize = 256;

/// Parses one text frame. Never fails: malformed input becomes `Inbound::Malformed`.
pub fn parse_inbound(text: &str) -> Inbound {
    let Ok(Value::Object(mut object)) = serde_json::from_str::<Value>(text) else {
        return Inbound::Malformed;
    };
    let token = match object.remove("token") {
        Some(Value::String(token)) => Some(token),
        _ => None,
    };
    let message = match object.get("type").and_then(Value::as_str) {
        Some("ping") => ClientMessage::Ping,
        Some("typing") => ClientMessage::Typing,
        Some("chat") => ClientMessage::Chat { content: take_string(&mut object, "content") },
        Some("webrtc-join") => ClientMessage::WebrtcJoin { media_types: media_types(&object) },
        Some("webrtc-leave") => ClientMessage::WebrtcLeave,
        Some("webrtc-offer") => ClientMessage::WebrtcOffer {
            target: take_string(&mut object, "targetUsername"),
            description: session_description(object.remove("offer"), "offer"),
        },
        Some("webrtc-answer") => ClientMessage::WebrtcAnswer {
            target: take_string(&mut object, "targetUsername"),
            description: session_description(object.remove("answer"), "answer"),
        },
        Some("webrtc-ice-candidate") => ClientMessage::WebrtcIceCandidate {
            target: take_string(&mut object, "targetUsername"),
            candidate: ice_candidate(object.remove("candidate")),
            buffer: object.get("buffer").and_then(Value::as_bool).unwrap_or(false),
        },
        Some("webrtc-media-change") => ClientMessage::WebrtcMediaChange { media_types: media_types(&object) },
        Some(other) if other.starts_with("webrtc-") => ClientMessage::WebrtcUnknown,
        _ => ClientMessage::Unknown,
    };
    Inbound::Message { token, message }
}

fn take_string(object: &mut Map<String, Value>, key: &str) -> Option<String> {
    match object.remove(key) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

/// `None` when absent (the caller applies the default); non-string entries are dropped.
fn media_types(object: &Map<String, Value>) -> Option<Vec<String>> {
    match object.get("mediaTypes") {
        Some(Value::Array(items)) => {
            Some(items.iter().filter_map(Value::as_str).map(str::to_string).collect())
        }
        Some(_) => Some(Vec::new()),
        None => None,
    }
}

pub(crate) fn session_description(value: Option<Value>, expected_type: &str) -> Option<SessionDescription> {
    let Some(Value::Object(raw)) = value else { return None };
    let sdp = raw.get("sdp")?.as_str()?.to_string();
    // Renegotiation may legitimately use "pranswer"; anything else is not an SDP we relay.
    let kind = match (expected_type, raw.get("type")?.as_str()?) {
        ("offer", "offer") => DescriptionKind::Offer,
        ("answer", "answer") => DescriptionKind::Answer,
        ("answer", "pranswer") => DescriptionKind::Pranswer,
        _ => return None,
    };
    if sdp.is_empty() || sdp.len() > MAX_SDP_BYTES {
        return None;
    }
    let discarded_keys = raw.keys().filter(|k| !matches!(k.as_str(), "type" | "sdp")).count();
    Some(SessionDescription { raw, kind, sdp, discarded_keys })
}

pub(crate) fn ice_candidate(value: Option<Value>) -> Option<Box<IceCandidate>> {
    let Some(Value::Object(raw)) = value else { return None };
    let candidate = raw.get("candidate")?.as_str()?.to_string();
    if candidate.len() > MAX_CANDIDATE_BYTES {
        return None;
    }
    let mut discarded_keys = 0;
    // A key that is absent or null is simply not there; anything else must have the right shape.
    let mut field = |key: &str, valid: fn(&Value) -> bool| -> Option<Value> {
        match raw.get(key) {
            None | Some(Value::Null) => None,
            Some(value) if valid(value) => Some(value.clone()),
            Some(_) => {
                discarded_keys += 1;
                None
            }
        }
    };
    let sdp_mid =
        field("sdpMid", |v| v.as_str().is_some_and(is_token)).and_then(|v| v.as_str().map(str::to_string));
    let sdp_m_line_index = field("sdpMLineIndex", |v| v.as_u64().is_some_and(|i| i <= u64::from(u16::MAX)))
        .and_then(|v| v.as_u64())
        .map(|i| i as u16);
    let username_fragment =
        field("usernameFragment", |v| v.as_str().is_some_and(|t| is_ice_chars(t, MAX_UFRAG_BYTES)))
            .and_then(|v| v.as_str().map(str::to_string));
    discarded_keys += raw
        .keys()
        .filter(|k| !matches!(k.as_str(), "candidate" | "sdpMid" | "sdpMLineIndex" | "usernameFragment"))
        .count();
    Some(Box::new(IceCandidate {
        raw,
        candidate,
        sdp_mid,
        sdp_m_line_index,
        username_fragment,
        discarded_keys,
    }))
}

/// An RFC 5888 identification tag (RFC 4566 token), at most `MAX_SDP_MID_BYTES`.
fn is_token(text: &str) -> bool {
    const SYMBOLS: &[u8] = b"!#$%&'*+-.^_`{|}~";
    !text.is_empty()
        && text.len() <= MAX_SDP_MID_BYTES
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || SYMBOLS.contains(&b))
}

/// `1*max ice-char`, ice-char = ALPHA / DIGIT / "+" / "/" (RFC 8839): ufrags and foundations,
/// here and in the relay-only rebuild.
pub fn is_ice_chars(text: &str, max: usize) -> bool {
    !text.is_empty()
        && text.len() <= max
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// ISO-8601 UTC with milliseconds, as JavaScript's `Date.toISOString()` prints it.
pub fn iso_timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// One persisted history item, as sent in `history.messages`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    #[serde(rename = "type")]
    pub kind: HistoryKind,
    pub username: Option<String>,
    pub text: String,
    pub timestamp: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HistoryKind {
    Chat,
    System,
}

impl HistoryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::System => "system",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Participant {
    pub username: String,
    #[serde(rename = "mediaTypes")]
    pub media_types: Vec<String>,
}

/// `webrtc-joined.config`: the original three fields, then our extensions.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VoiceConfig {
    pub allow_video: bool,
    pub allow_screen_share: bool,
    pub force_relay: bool,
    pub ice_servers: Vec<IceServer>,
    pub ice_transport_policy: &'static str,
    pub credential_ttl: u64,
}

/// Everything the server sends. Field order follows the original server's frames.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case", rename_all_fields = "camelCase")]
pub enum ServerMessage<'a> {
    SessionToken {
        token: &'a str,
    },
    /// Invite-only mode: what brings this browser back without spending another invite use.
    MemberPass {
        pass: &'a str,
    },
    HeartbeatConfig {
        interval: u64,
        timeout: u64,
    },
    History {
        messages: &'a [HistoryEntry],
    },
    System {
        text: &'a str,
    },
    Chat {
        username: &'a str,
        text: &'a str,
        timestamp: &'a str,
    },
    Pong {
        timestamp: &'a str,
    },
    Typing {
        username: &'a str,
        timestamp: &'a str,
    },
    WebrtcJoined {
        participants: &'a [Participant],
        config: &'a VoiceConfig,
    },
    WebrtcPeerJoined {
        username: &'a str,
        media_types: &'a [String],
    },
    WebrtcPeerLeft {
        username: &'a str,
    },
    WebrtcOffer {
        from_username: &'a str,
        offer: &'a Value,
    },
    WebrtcAnswer {
        from_username: &'a str,
        answer: &'a Value,
    },
    WebrtcIceCandidate {
        from_username: &'a str,
        candidate: &'a Value,
    },
    WebrtcMediaChanged {
        username: &'a str,
        media_types: &'a [String],
    },
    WebrtcCredentials {
        ice_servers: &'a [IceServer],
        credential_ttl: u64,
    },
    WebrtcError {
        error: &'a str,
        timestamp: &'a str,
    },
}

impl ServerMessage<'_> {
    /// The outbound lane: every `webrtc-*` message is call signaling.
    pub fn lane(&self) -> Lane {
        match self {
            Self::WebrtcJoined { .. }
            | Self::WebrtcPeerJoined { .. }
            | Self::WebrtcPeerLeft { .. }
            | Self::WebrtcOffer { .. }
            | Self::WebrtcAnswer { .. }
            | Self::WebrtcIceCandidate { .. }
            | Self::WebrtcMediaChanged { .. }
            | Self::WebrtcCredentials { .. }
            | Self::WebrtcError { .. } => Lane::Call,
            Self::SessionToken { .. }
            | Self::MemberPass { .. }
            | Self::HeartbeatConfig { .. }
            | Self::History { .. }
            | Self::System { .. }
            | Self::Chat { .. }
            | Self::Pong { .. }
            | Self::Typing { .. } => Lane::Chat,
        }
    }

    /// Serializes once; the result is shared by every recipient.
    pub fn frame(&self) -> Frame {
        // Serializing these plain structs cannot fail (no maps with non-string keys).
        serde_json::to_string(self).unwrap_or_default().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_frames() {
        assert_eq!(parse_inbound("not json"), Inbound::Malformed);
        assert_eq!(parse_inbound("[1,2]"), Inbound::Malformed);
        assert_eq!(parse_inbound("\"str\""), Inbound::Malformed);
        assert_eq!(parse_inbound("null"), Inbound::Malformed);
    }

    #[test]
    fn chat_with_wrong_content_type_has_no_content() {
        let Inbound::Message { token, message } = parse_inbound(r#"{"type":"chat","token":"t","content":5}"#)
        else {
            panic!("parsed as malformed")
        };
        assert_eq!(token.as_deref(), Some("t"));
        assert_eq!(message, ClientMessage::Chat { content: None });
    }

    #[test]
    fn unknown_types() {
        let unknown = |text| match parse_inbound(text) {
            Inbound::Message { message, .. } => message,
            Inbound::Malformed => panic!("malformed"),
        };
        assert_eq!(unknown(r#"{"type":"bogus"}"#), ClientMessage::Unknown);
        assert_eq!(unknown(r#"{"type":7}"#), ClientMessage::Unknown);
        assert_eq!(unknown(r#"{}"#), ClientMessage::Unknown);
        assert_eq!(unknown(r#"{"type":"webrtc-bogus"}"#), ClientMessage::WebrtcUnknown);
    }

    #[test]
    fn offers_are_validated() {
        let offer = |text| match parse_inbound(text) {
            Inbound::Message { message: ClientMessage::WebrtcOffer { description, .. }, .. } => description,
            other => panic!("{other:?}"),
        };
        assert!(offer(r#"{"type":"webrtc-offer","offer":{"type":"offer","sdp":"v=0"}}"#).is_some());
        assert!(offer(r#"{"type":"webrtc-offer","offer":{}}"#).is_none());
        assert!(offer(r#"{"type":"webrtc-offer","offer":{"type":"answer","sdp":"v=0"}}"#).is_none());
        let huge =
            format!(r#"{{"type":"webrtc-offer","offer":{{"type":"offer","sdp":"{}"}}}}"#, "a".repeat(70_000));
        assert!(offer(&huge).is_none());
    }

    #[test]
    fn server_frames_match_the_original_shapes() {
        assert_eq!(&*ServerMessage::System { text: "hi" }.frame(), r#"{"type":"system","text":"hi"}"#);
        assert_eq!(
            &*ServerMessage::HeartbeatConfig { interval: 30000, timeout: 120000 }.frame(),
            r#"{"type":"heartbeat-config","interval":30000,"timeout":120000}"#
        );
        assert_eq!(
            &*ServerMessage::WebrtcPeerJoined { username: "Bob", media_types: &["audio".into()] }.frame(),
            r#"{"type":"webrtc-peer-joined","username":"Bob","mediaTypes":["audio"]}"#
        );
        let offer = serde_json::json!({"type":"offer","sdp":"v=0..."});
        assert_eq!(
            &*ServerMessage::WebrtcOffer { from_username: "Bob", offer: &offer }.frame(),
            r#"{"type":"webrtc-offer","fromUsername":"Bob","offer":{"type":"offer","sdp":"v=0..."}}"#
        );
    }
}
