//! The voice room: who is in it, and the relay of WebRTC signaling between its members.
//!
//! Mesh topology: the server never touches media, it forwards offers, answers and candidates
//! between named participants. With `force_relay` it rebuilds every candidate, candidate object
//! and SDP it relays so that nothing but our relays' addresses reaches a peer (see `relay_only`),
//! hands out TURN credentials in `webrtc-joined`, and refreshes them before they expire.
//!
//! This file holds the room (seats, joining, leaving, media, credentials); `signaling` relays
//! offers, answers and candidates between members, `cluster` is the room across nodes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::Value;

use super::{ConnId, Effect, Hub, Now, Out};
use crate::cluster::event::ClusterEvent;
mod cluster;
mod signaling;

use signaling::Description;

use crate::protocol::{iso_timestamp, ClientMessage, Participant, ServerMessage, VoiceConfig};

/// To a member whose seat the cluster dropped while this node was cut off.
pub const VOICE_INTERRUPTED: &str =
    "Voice chat was interrupted: this server lost contact with the cluster. Please join again.";

/// Buffered candidates held per (sender, receiver) pair; more drops the oldest.
pub const MAX_BUFFERED_CANDIDATES: usize = 64;

#[derive(Debug)]
struct Seat {
    name: String,
    /// The TURN user of this seat, `<name>:<session tag>`: credentials name it, the relay
    /// admits it only while this seat exists. A later holder of the same name gets another
    /// tag, so an earlier holder's unexpired credential never becomes valid again.
    turn_user: String,
    /// The connection holding the seat (on `remote`'s node when that is set).
    conn: ConnId,
    /// Cluster mode: the node holding a seat of another node's user (`None`: ours).
    remote: Option<String>,
    media_types: Vec<String>,
    credentials_refresh_at: Instant,
    joined_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Default)]
pub(super) struct VoiceRoom {
    /// In order of joining.
    seats: Vec<Seat>,
    /// Candidates sent with `buffer: true`, keyed by (from, to), in arrival order.
    buffered: HashMap<(String, String), VecDeque<Value>>,
    /// Pairs (sorted names) whose latest relayed description was an answer: negotiation is
    /// complete, so a candidate marked `buffer: true` has no answer left to wait for.
    answered: HashSet<(String, String)>,
}

impl VoiceRoom {
    pub fn len(&self) -> usize {
        self.seats.len()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.seats.iter().any(|s| s.name == name)
    }

    fn seat_mut(&mut self, name: &str) -> Option<&mut Seat> {
        self.seats.iter_mut().find(|s| s.name == name)
    }

    /// The TURN users of every seat (to tell the relay everyone left, at shutdown).
    pub fn turn_users(&self) -> Vec<String> {
        self.seats.iter().map(|s| s.turn_user.clone()).collect()
    }

    /// Each member's name, media types and joining time, in order of joining.
    pub fn members(&self) -> impl Iterator<Item = (&str, &[String], chrono::DateTime<chrono::Utc>)> {
        self.seats.iter().map(|s| (s.name.as_str(), s.media_types.as_slice(), s.joined_at))
    }

    /// Makes every seat's credential refresh due now (the secret changed).
    pub fn refresh_credentials_now(&mut self, now: Instant) {
        for seat in &mut self.seats {
            seat.credentials_refresh_at = now;
        }
    }

    /// The local connection of `name`'s seat (none for a seat on another node).
    fn conn_of(&self, name: &str) -> Option<ConnId> {
        self.seats.iter().find(|s| s.name == name && s.remote.is_none()).map(|s| s.conn)
    }

    /// The node holding `name`'s seat, when that is another node.
    pub(super) fn remote_node_of(&self, name: &str) -> Option<&str> {
        self.seats.iter().find(|s| s.name == name).and_then(|s| s.remote.as_deref())
    }

    /// The local connections of the seated, in order of joining.
    fn local_conns(&self) -> Vec<ConnId> {
        self.seats.iter().filter(|s| s.remote.is_none()).map(|s| s.conn).collect()
    }

    pub(super) fn turn_user_of(&self, name: &str) -> Option<&str> {
        self.seats.iter().find(|s| s.name == name).map(|s| s.turn_user.as_str())
    }

    fn participants(&self) -> Vec<Participant> {
        self.seats
            .iter()
            .map(|s| Participant { username: s.name.clone(), media_types: s.media_types.clone() })
            .collect()
    }
}

impl Hub {
    pub(super) fn webrtc_error(&self, out: &mut Out, conn: ConnId, error: &str, now: Now) {
        out.send(conn, &ServerMessage::WebrtcError { error, timestamp: &iso_timestamp(now.wall) });
    }

    pub(super) fn on_webrtc(&mut self, out: &mut Out, conn: ConnId, message: ClientMessage, now: Now) {
        if matches!(message, ClientMessage::WebrtcUnknown) {
            self.webrtc_error(out, conn, "Unknown WebRTC message type", now);
            return;
        }
        if !self.settings.webrtc.enabled {
            self.webrtc_error(out, conn, "WebRTC is disabled on this server", now);
            return;
        }
        let Some(name) = self.name_of(conn) else {
            let error = if matches!(message, ClientMessage::WebrtcJoin { .. }) {
                "Must be authenticated to join voice chat"
            } else {
                "Not in voice chat"
            };
            // Candidates are dropped silently, whatever is wrong with them.
            if !matches!(message, ClientMessage::WebrtcIceCandidate { .. }) {
                self.webrtc_error(out, conn, error, now);
            }
            return;
        };
        match message {
            ClientMessage::WebrtcJoin { media_types } => self.join_voice(out, conn, name, media_types, now),
            ClientMessage::WebrtcLeave => {
                let was_in_voice = self.leave_voice(out, &name, now);
                if !was_in_voice {
                    self.webrtc_error(out, conn, "Not in voice chat", now);
                }
            }
            ClientMessage::WebrtcOffer { target, description } => {
                self.relay_description(out, conn, &name, target, description, Description::Offer, now)
            }
            ClientMessage::WebrtcAnswer { target, description } => {
                self.relay_description(out, conn, &name, target, description, Description::Answer, now)
            }
            ClientMessage::WebrtcIceCandidate { target, candidate, buffer } => {
                self.relay_candidate(out, &name, target, candidate, buffer)
            }
            ClientMessage::WebrtcMediaChange { media_types } => {
                self.change_media(out, conn, &name, media_types, now)
            }
            _ => {}
        }
    }

    /// Keeps the requested media types the server allows, in order, without duplicates.
    fn allowed_media_types(&self, requested: Option<Vec<String>>) -> Vec<String> {
        let webrtc = &self.settings.webrtc;
        let requested = requested.unwrap_or_else(|| vec!["audio".to_string()]);
        let mut allowed: Vec<String> = Vec::new();
        for kind in requested {
            let permitted = match kind.as_str() {
                "audio" => true,
                "video" => webrtc.allow_video,
                "screen" => webrtc.allow_screen_share,
                _ => false,
            };
            if permitted && !allowed.contains(&kind) {
                allowed.push(kind);
            }
        }
        allowed
    }

    fn voice_config(&self, conn: ConnId, turn_user: &str, now: Now) -> VoiceConfig {
        let webrtc = &self.settings.webrtc;
        let host = self.connections.get(&conn).map(|c| c.host.as_str()).unwrap_or("localhost");
        VoiceConfig {
            allow_video: webrtc.allow_video,
            allow_screen_share: webrtc.allow_screen_share,
            force_relay: webrtc.force_relay,
            ice_servers: self.ice.ice_servers(host, turn_user, now.unix()),
            ice_transport_policy: if webrtc.force_relay { "relay" } else { "all" },
            credential_ttl: self.ice.ttl_s,
        }
    }

    fn credentials_refresh_at(&self, now: Now) -> Instant {
        // Refresh at 80% of the lifetime: early enough to survive a slow client, late enough
        // not to spam. The expiry is whole unix seconds (`now.unix() + ttl`) and the relay
        // refuses it from the start of that second, so what was just issued really lives
        // between ttl - 1 and ttl seconds; count from that, and leave at least half a second
        // (two timer ticks) before the expiry for short TTLs.
        let expires_ms = (now.unix() + self.ice.ttl_s).saturating_mul(1000);
        let now_ms = u64::try_from(now.wall.timestamp_millis()).unwrap_or(0);
        let lifetime_ms = expires_ms.saturating_sub(now_ms);
        now.mono + Duration::from_millis((lifetime_ms * 4 / 5).min(lifetime_ms.saturating_sub(500)))
    }

    fn join_voice(
        &mut self,
        out: &mut Out,
        conn: ConnId,
        name: String,
        requested: Option<Vec<String>>,
        now: Now,
    ) {
        let max = self.settings.webrtc.max_participants;
        if self.voice.contains(&name) {
            self.webrtc_error(out, conn, "Already in voice chat", now);
            return;
        }
        if let Some(until) = self.voice_revoked_until(&name, now) {
            let error = format!(
                "Your voice chat access was revoked by the server operator until {}",
                iso_timestamp(until.wall)
            );
            self.webrtc_error(out, conn, &error, now);
            return;
        }
        if self.voice.len() >= max {
            self.webrtc_error(out, conn, &format!("Voice chat is full ({max} maximum)"), now);
            return;
        }
        let media_types = self.allowed_media_types(requested);
        if media_types.is_empty() {
            self.webrtc_error(out, conn, "No valid media types requested", now);
            return;
        }
        let turn_user = format!("{name}:{:08x}", self.rng.random::<u32>());
        if self.is_clustered() {
            self.join_voice_clustered(out, conn, name, turn_user, media_types, now);
            return;
        }
        let others: Vec<ConnId> = self.voice.local_conns();
        let credentials_refresh_at = self.credentials_refresh_at(now);
        self.voice.seats.push(Seat {
            name: name.clone(),
            turn_user: turn_user.clone(),
            conn,
            remote: None,
            media_types: media_types.clone(),
            credentials_refresh_at,
            joined_at: now.wall,
        });
        // The relay must know before the client can possibly try to allocate.
        out.push(Effect::VoiceJoined { turn_user: turn_user.clone() });
        let config = self.voice_config(conn, &turn_user, now);
        let participants = self.voice.participants();
        out.send(conn, &ServerMessage::WebrtcJoined { participants: &participants, config: &config });
        out.broadcast(
            others,
            &ServerMessage::WebrtcPeerJoined { username: &name, media_types: &media_types },
        );
        self.announce_voice(out, &name, true, now);
    }

    /// Takes `name` out of the room (leave, disconnect, kick, ban). False if not in it.
    pub(super) fn leave_voice(&mut self, out: &mut Out, name: &str, now: Now) -> bool {
        let Some(index) = self.voice.seats.iter().position(|s| s.name == name) else { return false };
        if self.is_clustered() {
            if self.voice.seats[index].remote.is_some() {
                // Another node's user (an operator's revocation here): that node frees it.
                let turn_user = self.voice.seats[index].turn_user.clone();
                self.publish_voice_left(out, name, turn_user, now);
                return true;
            }
            let seat = self.remove_seat(out, index);
            self.publish_voice_left(out, name, seat.turn_user, now);
            return true;
        }
        self.remove_seat(out, index);
        self.announce_voice(out, name, false, now);
        true
    }

    /// Frees a seat here: the relay is told, the other local members see the peer leave.
    fn remove_seat(&mut self, out: &mut Out, index: usize) -> Seat {
        let seat = self.voice.seats.remove(index);
        let name = seat.name.as_str();
        self.voice.buffered.retain(|(from, to), _| from != name && to != name);
        self.voice.answered.retain(|(a, b)| a != name && b != name);
        out.push(Effect::VoiceLeft { turn_user: seat.turn_user.clone() });
        let seated = self.voice.local_conns();
        out.broadcast(seated, &ServerMessage::WebrtcPeerLeft { username: name });
        seat
    }

    /// Cluster mode: a seat leaves (the seat record, the notice and every other node's part
    /// happen when `VoiceLeft` is read back).
    pub(super) fn publish_voice_left(&mut self, out: &mut Out, name: &str, turn_user: String, now: Now) {
        let entry = crate::protocol::HistoryEntry {
            kind: crate::protocol::HistoryKind::System,
            username: None,
            text: super::voice_notice(name, false),
            timestamp: iso_timestamp(now.wall),
        };
        let live_only = !self.voice_notice_allowed(name, false, now);
        let event = ClusterEvent::VoiceLeft { name: name.to_string(), turn_user, entry, live_only };
        self.publish(out, None, event);
    }

    fn change_media(
        &mut self,
        out: &mut Out,
        conn: ConnId,
        name: &str,
        requested: Option<Vec<String>>,
        now: Now,
    ) {
        if !self.voice.contains(name) {
            self.webrtc_error(out, conn, "Not in voice chat", now);
            return;
        }
        // An empty list is a legitimate "everything muted" state; unknown or disallowed types
        // are filtered out like on join.
        let media_types = match requested {
            Some(list) if list.is_empty() => Vec::new(),
            other => {
                let allowed = self.allowed_media_types(other);
                if allowed.is_empty() {
                    self.webrtc_error(out, conn, "No valid media types requested", now);
                    return;
                }
                allowed
            }
        };
        if self.is_clustered() {
            // Every node updates the seat and tells its members when this is read back.
            let turn_user = self.voice.turn_user_of(name).unwrap_or_default().to_string();
            let event = ClusterEvent::MediaChanged { name: name.to_string(), turn_user, media: media_types };
            self.publish(out, Some(conn), event);
            return;
        }
        if let Some(seat) = self.voice.seat_mut(name) {
            seat.media_types = media_types.clone();
        }
        let others = self.voice.local_conns().into_iter().filter(|&other| other != conn).collect();
        out.broadcast(
            others,
            &ServerMessage::WebrtcMediaChanged { username: name, media_types: &media_types },
        );
    }

    /// Pushes fresh TURN credentials to participants whose current ones near expiry.
    pub(super) fn refresh_due_credentials(&mut self, out: &mut Out, now: Now) {
        let next = self.credentials_refresh_at(now);
        let due: Vec<(ConnId, String)> = self
            .voice
            .seats
            .iter_mut()
            .filter(|s| s.remote.is_none() && s.credentials_refresh_at <= now.mono)
            .map(|s| {
                s.credentials_refresh_at = next;
                (s.conn, s.turn_user.clone())
            })
            .collect();
        for (conn, turn_user) in due {
            let config = self.voice_config(conn, &turn_user, now);
            out.send(
                conn,
                &ServerMessage::WebrtcCredentials {
                    ice_servers: &config.ice_servers,
                    credential_ttl: config.credential_ttl,
                },
            );
        }
    }
}
