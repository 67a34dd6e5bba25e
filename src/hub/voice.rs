//! The voice room: who is in it, and the relay of WebRTC signaling between its members.
//!
//! Mesh topology: the server never touches media, it forwards offers, answers and candidates
//! between named participants. With `force_relay` it rebuilds every candidate, candidate object
//! and SDP it relays so that nothing but our relays' addresses reaches a peer (see `relay_only`),
//! hands out TURN credentials in `webrtc-joined`, and refreshes them before they expire.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::Value;

use super::relay_only;
use super::{ConnId, Effect, Hub, Now, Out};
use crate::cluster::event::{ClusterEvent, RoutedSignal, SignalKind};
use crate::protocol::{
    iso_timestamp, ClientMessage, IceCandidate, Participant, ServerMessage, SessionDescription, VoiceConfig,
};

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

/// The unordered pair {a, b} as a key.
fn pair(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
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

enum Description {
    Offer,
    Answer,
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
        let event = ClusterEvent::VoiceLeft { name: name.to_string(), turn_user, entry };
        self.publish(out, None, event);
    }

    #[allow(clippy::too_many_arguments)]
    fn relay_description(
        &mut self,
        out: &mut Out,
        conn: ConnId,
        name: &str,
        target: Option<String>,
        description: Option<SessionDescription>,
        kind: Description,
        now: Now,
    ) {
        if !self.voice.contains(name) {
            self.webrtc_error(out, conn, "Not in voice chat", now);
            return;
        }
        let Some(description) = description else {
            let error = match kind {
                Description::Offer => "Invalid offer data",
                Description::Answer => "Invalid answer data",
            };
            self.webrtc_error(out, conn, error, now);
            return;
        };
        let target = target.filter(|t| t != name && self.voice.contains(t));
        let Some(target) = target else {
            self.webrtc_error(out, conn, "Target user not in voice chat", now);
            return;
        };
        let relayed = if self.settings.webrtc.force_relay {
            match relay_only::description_object(&description, &self.relays, &mut self.privacy) {
                Ok(rebuilt) => rebuilt,
                Err(relay_only::UnusableSdp) => {
                    let error = match kind {
                        Description::Offer => "Invalid offer data",
                        Description::Answer => "Invalid answer data",
                    };
                    self.webrtc_error(out, conn, error, now);
                    return;
                }
            }
        } else {
            Value::Object(description.raw)
        };
        let kind = match kind {
            Description::Offer => SignalKind::Offer,
            Description::Answer => SignalKind::Answer,
        };
        self.deliver_signal(out, name, &target, kind, relayed);
    }

    /// Hands rebuilt signaling to `to`: its connection here, or its node's inbox. An offer
    /// reopens the pair's negotiation, an answer closes it and releases buffered candidates.
    pub(super) fn deliver_signal(
        &mut self,
        out: &mut Out,
        from: &str,
        to: &str,
        kind: SignalKind,
        payload: Value,
    ) {
        if let Some(node) = self.voice.remote_node_of(to) {
            let signal =
                RoutedSignal { node: node.to_string(), from: from.into(), to: to.into(), kind, payload };
            out.push(Effect::RouteSignal(signal));
        } else if let Some(to_conn) = self.voice.conn_of(to) {
            match kind {
                SignalKind::Offer => {
                    out.send(to_conn, &ServerMessage::WebrtcOffer { from_username: from, offer: &payload })
                }
                SignalKind::Answer => {
                    out.send(to_conn, &ServerMessage::WebrtcAnswer { from_username: from, answer: &payload })
                }
                SignalKind::Candidate => out.send(
                    to_conn,
                    &ServerMessage::WebrtcIceCandidate { from_username: from, candidate: &payload },
                ),
            }
        } else {
            return;
        }
        match kind {
            SignalKind::Offer => {
                self.voice.answered.remove(&pair(from, to));
            }
            SignalKind::Answer => {
                self.voice.answered.insert(pair(from, to));
                self.flush_buffered(out, from, to);
            }
            SignalKind::Candidate => {}
        }
    }

    /// After an answer between `a` and `b`, deliver what each buffered for the other, in order.
    fn flush_buffered(&mut self, out: &mut Out, a: &str, b: &str) {
        for (from, to) in [(b, a), (a, b)] {
            let Some(queue) = self.voice.buffered.remove(&(from.to_string(), to.to_string())) else {
                continue;
            };
            for candidate in queue {
                self.deliver_signal(out, from, to, SignalKind::Candidate, candidate);
            }
        }
    }

    /// Invalid candidates are dropped silently (the original's behaviour; clients expect no reply).
    fn relay_candidate(
        &mut self,
        out: &mut Out,
        name: &str,
        target: Option<String>,
        candidate: Option<Box<IceCandidate>>,
        buffer: bool,
    ) {
        let (Some(target), Some(candidate)) = (target, candidate) else { return };
        if !self.voice.contains(name) || target == name || !self.voice.contains(&target) {
            return;
        }
        let candidate = if self.settings.webrtc.force_relay {
            // Dropped candidates are counted (and logged at debug, without the address) there.
            match relay_only::candidate_object(&candidate, &self.relays, &mut self.privacy) {
                Ok(rebuilt) => rebuilt,
                Err(_) => return,
            }
        } else {
            Value::Object(candidate.raw)
        };
        // Hold the candidate until the pair's answer goes through, unless it already has (the
        // candidate was gathered after the answer): waiting for a *next* answer that may never
        // come would lose it.
        if buffer && !self.voice.answered.contains(&pair(name, &target)) {
            let queue = self.voice.buffered.entry((name.to_string(), target)).or_default();
            if queue.len() >= MAX_BUFFERED_CANDIDATES {
                queue.pop_front();
                tracing::warn!(
                    "buffered candidates for one peer pair exceeded {MAX_BUFFERED_CANDIDATES}; dropped the oldest"
                );
            }
            queue.push_back(candidate);
            return;
        }
        self.deliver_signal(out, name, &target, SignalKind::Candidate, candidate);
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

/// Cluster mode: the one voice room spans the nodes. Seats are taken with the `voice_join`
/// script (the room's size holds cluster-wide) and come and go on every node as the log says;
/// signaling for a member on another node goes to that node's inbox.
impl Hub {
    fn join_voice_clustered(
        &mut self,
        out: &mut Out,
        conn: ConnId,
        name: String,
        turn_user: String,
        media_types: Vec<String>,
        now: Now,
    ) {
        if self.cluster_store_down() {
            self.webrtc_error(out, conn, super::cluster::STORE_DOWN_VOICE, now);
            return;
        }
        let Some(connection) = self.connections.get_mut(&conn) else { return };
        if connection.voice_pending.is_some() {
            self.webrtc_error(out, conn, "Already joining voice chat", now);
            return;
        }
        // A name claim (a /nick) under way would rename the user under a seat taken for the
        // old name.
        if connection.claim.is_some() {
            self.webrtc_error(out, conn, "Please wait, your previous request is still being processed.", now);
            return;
        }
        connection.voice_pending = Some(turn_user.clone());
        let Some(replica) = &self.cluster else { return };
        let entry = crate::protocol::HistoryEntry {
            kind: crate::protocol::HistoryKind::System,
            username: None,
            text: super::voice_notice(&name, true),
            timestamp: iso_timestamp(now.wall),
        };
        let owner = crate::cluster::event::Owner { node: replica.node.clone(), conn };
        let event =
            ClusterEvent::VoiceJoined { name: name.clone(), owner, turn_user, media: media_types, entry };
        out.push(Effect::JoinVoice { conn, name, max: self.settings.webrtc.max_participants, event });
    }

    /// The store answered a `JoinVoice`.
    pub fn voice_seated(
        &mut self,
        conn: ConnId,
        name: String,
        outcome: super::VoiceOutcome,
        now: Now,
    ) -> Vec<Effect> {
        let mut out = Out::default();
        let max = self.settings.webrtc.max_participants;
        let error = match outcome {
            // `VoiceJoined`, read back from the log, seats the user.
            super::VoiceOutcome::Seated => return out.effects,
            super::VoiceOutcome::Full => format!("Voice chat is full ({max} maximum)"),
            super::VoiceOutcome::AlreadySeated => "Already in voice chat".to_string(),
            super::VoiceOutcome::StoreDown => super::cluster::STORE_DOWN_VOICE.to_string(),
        };
        let Some(connection) = self.connections.get_mut(&conn) else { return out.effects };
        if connection.name.as_deref() != Some(name.as_str()) {
            return out.effects;
        }
        connection.voice_pending = None;
        self.webrtc_error(&mut out, conn, &error, now);
        out.effects
    }

    pub(super) fn apply_voice_joined(
        &mut self,
        out: &mut Out,
        event: (String, crate::cluster::event::Owner, String, Vec<String>),
        entry: crate::protocol::HistoryEntry,
        now: Now,
    ) {
        let (name, owner, turn_user, media_types) = event;
        if self.voice.turn_user_of(&name) == Some(turn_user.as_str()) {
            return;
        }
        let Some(replica) = &self.cluster else { return };
        let ours = owner.node == replica.node;
        let waiting = ours
            && self
                .connections
                .get(&owner.conn)
                .is_some_and(|c| c.voice_pending.as_deref() == Some(turn_user.as_str()));
        if waiting && self.connections.get(&owner.conn).and_then(|c| c.name.as_deref()) != Some(name.as_str())
        {
            // Renamed while the seat was being taken: no user here holds `name` to use or free
            // the seat, so it is given back at once (every node drops it on `VoiceLeft`).
            if let Some(connection) = self.connections.get_mut(&owner.conn) {
                connection.voice_pending = None;
            }
            self.show_cluster_entry(out, entry);
            self.publish_voice_left(out, &name, turn_user, now);
            return;
        }
        let others = self.voice.local_conns();
        let remote = if waiting { None } else { Some(owner.node.clone()) };
        self.voice.seats.push(Seat {
            name: name.clone(),
            turn_user: turn_user.clone(),
            conn: owner.conn,
            remote,
            media_types: media_types.clone(),
            credentials_refresh_at: self.credentials_refresh_at(now),
            joined_at: now.wall,
        });
        // Every node's relay admits the seat: credentials verify on any node.
        out.push(Effect::VoiceJoined { turn_user: turn_user.clone() });
        if waiting {
            if let Some(connection) = self.connections.get_mut(&owner.conn) {
                connection.voice_pending = None;
            }
            let config = self.voice_config(owner.conn, &turn_user, now);
            let participants = self.voice.participants();
            out.send(
                owner.conn,
                &ServerMessage::WebrtcJoined { participants: &participants, config: &config },
            );
        }
        out.broadcast(
            others,
            &ServerMessage::WebrtcPeerJoined { username: &name, media_types: &media_types },
        );
        self.show_cluster_entry(out, entry);
    }

    pub(super) fn apply_voice_left(
        &mut self,
        out: &mut Out,
        name: &str,
        turn_user: &str,
        entry: crate::protocol::HistoryEntry,
    ) {
        let index = self.voice.seats.iter().position(|s| s.name == name && s.turn_user == turn_user);
        if let Some(index) = index {
            self.remove_seat(out, index);
        }
        self.show_cluster_entry(out, entry);
    }

    pub(super) fn apply_media_changed(
        &mut self,
        out: &mut Out,
        name: &str,
        turn_user: &str,
        media: Vec<String>,
    ) {
        let Some(seat) = self.voice.seats.iter_mut().find(|s| s.name == name && s.turn_user == turn_user)
        else {
            return;
        };
        seat.media_types = media.clone();
        let own = (seat.remote.is_none()).then_some(seat.conn);
        let others = self.voice.local_conns().into_iter().filter(|&c| Some(c) != own).collect();
        out.broadcast(others, &ServerMessage::WebrtcMediaChanged { username: name, media_types: &media });
    }

    /// A dead node's seats: gone, with the notices the reaper stored.
    pub(super) fn drop_node_seats(&mut self, out: &mut Out, node: &str, seats: &[String], timestamp: &str) {
        for name in seats {
            let index =
                self.voice.seats.iter().position(|s| &s.name == name && s.remote.as_deref() == Some(node));
            let Some(index) = index else { continue };
            self.remove_seat(out, index);
            let entry = crate::protocol::HistoryEntry {
                kind: crate::protocol::HistoryKind::System,
                username: None,
                text: super::voice_notice(name, false),
                timestamp: timestamp.to_string(),
            };
            self.show_cluster_entry(out, entry);
        }
    }

    /// This node was reaped while alive (cut off from Redis, or paused, longer than the
    /// presence TTL): the store and every other node dropped its seats. Its users here leave the
    /// room too, told so they can join again (their names come back with the next heartbeat).
    pub(super) fn drop_own_seats(&mut self, out: &mut Out, seats: &[String], now: Now) {
        for name in seats {
            let index = self.voice.seats.iter().position(|s| &s.name == name && s.remote.is_none());
            let Some(index) = index else { continue };
            let seat = self.remove_seat(out, index);
            self.webrtc_error(out, seat.conn, VOICE_INTERRUPTED, now);
        }
    }

    /// The seats of a snapshot: other nodes' seats replace what we knew of them (ours stay).
    pub(super) fn replace_remote_seats(
        &mut self,
        out: &mut Out,
        seats: Vec<(String, crate::cluster::event::SeatRecord)>,
        now: Now,
    ) {
        let Some(replica) = &self.cluster else { return };
        let node = replica.node.clone();
        for seat in std::mem::take(&mut self.voice.seats) {
            if seat.remote.is_some() {
                out.push(Effect::VoiceLeft { turn_user: seat.turn_user });
            } else {
                self.voice.seats.push(seat);
            }
        }
        for (name, record) in seats {
            if record.node == node || self.voice.contains(&name) {
                continue;
            }
            out.push(Effect::VoiceJoined { turn_user: record.turn_user.clone() });
            self.voice.seats.push(Seat {
                name,
                turn_user: record.turn_user,
                conn: record.conn,
                remote: Some(record.node),
                media_types: record.media,
                credentials_refresh_at: now.mono,
                joined_at: now.wall,
            });
        }
    }

    /// Signaling from another node's voice member for one of ours (already rebuilt there).
    pub fn remote_signal(&mut self, signal: RoutedSignal, _now: Now) -> Vec<Effect> {
        let mut out = Out::default();
        if self.voice.conn_of(&signal.to).is_none() {
            return out.effects; // left meanwhile: dropped, as a local target that left would be
        }
        // Only a member seated on another node signals through the inbox: an entry naming
        // anyone else is stale or forged.
        if self.voice.remote_node_of(&signal.from).is_none() {
            tracing::debug!("dropped routed signaling from a sender not seated on another node");
            return out.effects;
        }
        let payload = if self.settings.webrtc.force_relay {
            // Rebuilt again here (idempotent): the sending node may run without force_relay, and
            // anyone who can write to Redis can write an inbox entry.
            match self.rebuild_routed(signal.kind, signal.payload) {
                Some(payload) => payload,
                None => return out.effects,
            }
        } else {
            signal.payload
        };
        self.deliver_signal(&mut out, &signal.from, &signal.to, signal.kind, payload);
        out.effects
    }

    /// A routed payload parsed like a client's and rebuilt with the same relay-only functions:
    /// every field, extra keys dropped. `None`: it is not one we would relay.
    fn rebuild_routed(&mut self, kind: SignalKind, payload: Value) -> Option<Value> {
        let expected = match kind {
            SignalKind::Offer => "offer",
            SignalKind::Answer => "answer",
            SignalKind::Candidate => {
                let candidate = crate::protocol::ice_candidate(Some(payload))?;
                return relay_only::candidate_object(&candidate, &self.relays, &mut self.privacy).ok();
            }
        };
        let description = crate::protocol::session_description(Some(payload), expected)?;
        relay_only::description_object(&description, &self.relays, &mut self.privacy).ok()
    }
}
