//! The hub as a pure state machine: events in, effects out, time passed in by hand.
//!
//! This module holds the harness (a hub with a hand-driven clock, connections by number, the
//! effects of the last call); the tests live in one file per concept:
//! - `session`: the connection sequence, persistence order, heartbeat, login gate, shutdown;
//! - `commands`: slash commands and their reply texts, the nick cooldown;
//! - `voice`: the voice room, TURN credentials and their refresh, leaving by any route;
//! - `signaling`: offers, answers and candidates between peers, relay-only rebuilding, buffering;
//! - `budgets`: the chat rate limit and the per-kind message budgets;
//! - `address_privacy`: a property test that no frame ever names a client's address;
//! - `admin`: operator requests (list, kick, ban, mute, broadcast, TURN revocation, rotation);
//! - `lanes`: outbound lanes of frames, fan-outs as one effect, the runner's inbound lanes.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use serde_json::{json, Value};

use super::*;
use crate::ice_servers::TurnEndpoints;
use crate::protocol::{parse_inbound, Frame, HistoryKind, Lane};

mod accounts;
mod address_privacy;
mod admin;
mod budgets;
mod cluster;
mod cluster_attacks;
mod commands;
mod lanes;
mod session;
mod signaling;
mod voice;

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
                ipv6: None,
            },
            ttl_s: settings.turn.credential_ttl_s,
        };
        // The names in `[chat] admins` stand for accounts the operator flagged admin.
        let admins = settings.chat.admins.iter().cloned().collect();
        let hub = Hub::new(settings, ice, Vec::new(), HashSet::new(), rand::rngs::StdRng::seed_from_u64(7))
            .with_admins(admins)
            .with_relay_addresses(RelayAddresses::new(["127.0.0.1".parse().unwrap()]));
        Harness { hub, now: Now::current(), next_conn: 1, effects: Vec::new(), tokens: Default::default() }
    }

    fn advance(&mut self, by: Duration) {
        self.now.mono += by;
        self.now.wall += chrono::Duration::from_std(by).unwrap();
    }

    fn connect(&mut self, name: Option<&str>) -> ConnId {
        self.connect_as(name, None)
    }

    /// A connection the invite gate admitted, handing it `pass`.
    fn connect_with_pass(&mut self, pass: &str) -> ConnId {
        self.connect_as(None, Some(pass.to_string()))
    }

    fn connect_as(&mut self, name: Option<&str>, member_pass: Option<String>) -> ConnId {
        let conn = self.next_conn;
        self.next_conn += 1;
        let token = format!("{conn:064}");
        self.tokens.insert(conn, token.clone());
        let info = ConnectInfo {
            ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, conn as u8)),
            requested_name: name.map(str::to_string),
            host: "chat.example.org:3000".into(),
            token,
            member_pass,
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

    fn admin(&mut self, request: AdminRequest) -> AdminReply {
        let (effects, reply) = self.hub.admin(request, self.now);
        self.effects = effects;
        reply
    }

    fn tick(&mut self) {
        self.effects = self.hub.tick(self.now);
    }

    /// Frames sent to `conn` by the last call, parsed.
    fn frames_to(&self, conn: ConnId) -> Vec<Value> {
        self.effects
            .iter()
            .filter_map(|e| match e {
                Effect::Send { to, frame, .. } if *to == conn => {
                    Some(serde_json::from_str(frame.as_str()).unwrap())
                }
                Effect::Broadcast { to, frame, .. } if to.contains(&conn) => {
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

fn join_voice(h: &mut Harness, conn: ConnId, media: &[&str]) -> Vec<Value> {
    h.send(conn, json!({"type": "webrtc-join", "mediaTypes": media}));
    h.frames_to(conn)
}

const MAX_BUFFERED: usize = crate::hub::voice::MAX_BUFFERED_CANDIDATES;
