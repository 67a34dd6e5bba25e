//! The sans-IO hub driven by arbitrary sessions: up to six connections from distinct addresses
//! connect, send frames (protocol messages and raw fuzz text), log in, disconnect, while time
//! passes. Invariants: no panic; no frame to anyone names a client's address; the history
//! stays within its limit.
#![no_main]

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use relaychat::config::Settings;
use relaychat::hub::{ConnectInfo, Effect, Hub, Now};
use relaychat::protocol::parse_inbound;
use relaychat::ice_servers::{IceServerIssuer, TurnEndpoints};

const FRAMES: &[&str] = &[
    r#"{"type":"chat","content":"hello"}"#,
    r#"{"type":"chat","content":"/nick Zed"}"#,
    r#"{"type":"chat","content":"/block u1"}"#,
    r#"{"type":"chat","content":"/list"}"#,
    r#"{"type":"chat","content":"/kick u2"}"#,
    r#"{"type":"chat","content":"/register u1 secret123"}"#,
    r#"{"type":"chat","content":"/login u1 secret123"}"#,
    r#"{"type":"typing"}"#,
    r#"{"type":"ping"}"#,
    r#"{"type":"webrtc-join","mediaTypes":["audio","video"]}"#,
    r#"{"type":"webrtc-leave"}"#,
    r#"{"type":"webrtc-offer","targetUsername":"u1","offer":{"type":"offer","sdp":"v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n"}}"#,
    r#"{"type":"webrtc-answer","targetUsername":"u0","answer":{"type":"answer","sdp":"v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n"}}"#,
    r#"{"type":"webrtc-ice-candidate","targetUsername":"u1","buffer":true,"candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 5 typ relay","sdpMid":"0"}}"#,
    r#"{"type":"webrtc-media-change","mediaTypes":[]}"#,
];

/// The default settings in open and in authentication mode, parsed once: parsing the embedded
/// defaults on every run cost most of each execution.
fn settings(authentication: bool) -> Arc<Settings> {
    static BOTH: std::sync::OnceLock<[Arc<Settings>; 2]> = std::sync::OnceLock::new();
    let both = BOTH.get_or_init(|| {
        let mode = |authentication| {
            let mut settings = Settings::defaults();
            settings.chat.authentication = authentication;
            Arc::new(settings)
        };
        [mode(false), mode(true)]
    });
    both[usize::from(authentication)].clone()
}

fuzz_target!(|data: &[u8]| {
    let settings = settings(data.first().is_some_and(|b| b & 1 == 1));
    let history_limit = settings.chat.history_limit;
    let ice = IceServerIssuer {
        endpoints: TurnEndpoints::Integrated {
            secret: b"s".to_vec(),
            public_host: None,
            port: 3478,
            tls_port: None,
            ipv6: None,
        },
        ttl_s: 600,
    };
    let mut hub =
        Hub::new(settings, ice, Vec::new(), HashSet::new(), rand::rngs::StdRng::seed_from_u64(1));
    let mut now = Now::current();
    let mut connected = [false; 6];
    let mut frames: Vec<String> = Vec::new();
    let mut input = data.get(1..).unwrap_or_default();
    while let Some((&op, rest)) = input.split_first() {
        input = rest;
        let conn = u64::from(op % 6) + 1;
        let effects = match op >> 5 {
            0 => {
                connected[(conn - 1) as usize] = true;
                let info = ConnectInfo {
                    ip: IpAddr::V4(Ipv4Addr::new(10, 9, 9, conn as u8)),
                    requested_name: Some(format!("u{}", conn - 1)),
                    host: "chat.example.org".into(),
                    token: format!("{conn:064}"),
                    member_pass: None,
                };
                hub.connect(conn, info, now)
            }
            1 => {
                connected[(conn - 1) as usize] = false;
                hub.disconnect(conn, now)
            }
            2 => {
                now.mono += Duration::from_secs(u64::from(op & 7) * 5);
                hub.tick(now)
            }
            3 => {
                // Raw fuzz text as a frame, up to the next 0xff byte.
                let end = input.iter().position(|&b| b == 0xff).unwrap_or(input.len());
                let (raw, rest) = input.split_at(end);
                input = rest.get(1..).unwrap_or_default();
                let text = String::from_utf8_lossy(raw);
                if text.contains("10.9.9") || !connected[(conn - 1) as usize] {
                    continue;
                }
                hub.message(conn, parse_inbound(&text), now)
            }
            _ => {
                if !connected[(conn - 1) as usize] {
                    continue;
                }
                let mut frame: serde_json::Value =
                    serde_json::from_str(FRAMES[op as usize % FRAMES.len()]).unwrap();
                frame["token"] = serde_json::Value::String(format!("{conn:064}"));
                hub.message(conn, parse_inbound(&frame.to_string()), now)
            }
        };
        for effect in effects {
            if let Effect::Send { frame, .. } | Effect::Broadcast { frame, .. } = effect {
                frames.push(frame.as_str().to_string());
            }
        }
    }
    for frame in &frames {
        assert!(!frame.contains("10.9.9."), "a client address reached a client: {frame}");
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(frame) {
            if let Some(history) = value["messages"].as_array() {
                assert!(history.len() <= history_limit);
            }
        }
    }
});
