//! Voice in cluster mode: seats taken through the cluster store, and the room as the log
//! tells it (members on other nodes, their media, a node gone).

use super::Seat;
use crate::cluster::event::ClusterEvent;
use crate::hub::{ConnId, Effect, Hub, Now, Out};
use crate::protocol::{iso_timestamp, ServerMessage};

/// Cluster mode: the one voice room spans the nodes. Seats are taken with the `voice_join`
/// script (the room's size holds cluster-wide) and come and go on every node as the log says;
/// signaling for a member on another node goes to that node's inbox.
impl Hub {
    pub(in crate::hub) fn join_voice_clustered(
        &mut self,
        out: &mut Out,
        conn: ConnId,
        name: String,
        turn_user: String,
        media_types: Vec<String>,
        now: Now,
    ) {
        if self.cluster_store_down() {
            self.webrtc_error(out, conn, crate::hub::cluster::STORE_DOWN_VOICE, now);
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
            text: crate::hub::voice_notice(&name, true),
            timestamp: iso_timestamp(now.wall),
        };
        let owner = crate::cluster::event::Owner { node: replica.node.clone(), conn };
        let live_only = !self.voice_notice_allowed(&name, true, now);
        let event = ClusterEvent::VoiceJoined {
            name: name.clone(),
            owner,
            turn_user,
            media: media_types,
            entry,
            live_only,
        };
        out.push(Effect::JoinVoice { conn, name, max: self.settings.webrtc.max_participants, event });
    }

    /// The store answered a `JoinVoice`.
    pub fn voice_seated(
        &mut self,
        conn: ConnId,
        name: String,
        outcome: crate::hub::VoiceOutcome,
        now: Now,
    ) -> Vec<Effect> {
        let mut out = Out::default();
        let max = self.settings.webrtc.max_participants;
        let error = match outcome {
            // `VoiceJoined`, read back from the log, seats the user.
            crate::hub::VoiceOutcome::Seated => return out.effects,
            crate::hub::VoiceOutcome::Full => format!("Voice chat is full ({max} maximum)"),
            crate::hub::VoiceOutcome::AlreadySeated => "Already in voice chat".to_string(),
            crate::hub::VoiceOutcome::StoreDown => crate::hub::cluster::STORE_DOWN_VOICE.to_string(),
        };
        let Some(connection) = self.connections.get_mut(&conn) else { return out.effects };
        if connection.name.as_deref() != Some(name.as_str()) {
            return out.effects;
        }
        connection.voice_pending = None;
        self.webrtc_error(&mut out, conn, &error, now);
        out.effects
    }

    pub(in crate::hub) fn apply_voice_joined(
        &mut self,
        out: &mut Out,
        event: (String, crate::cluster::event::Owner, String, Vec<String>),
        notice: (crate::protocol::HistoryEntry, bool),
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
            self.show_voice_notice(out, notice);
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
        self.show_voice_notice(out, notice);
    }

    pub(in crate::hub) fn apply_voice_left(
        &mut self,
        out: &mut Out,
        name: &str,
        turn_user: &str,
        notice: (crate::protocol::HistoryEntry, bool),
    ) {
        let index = self.voice.seats.iter().position(|s| s.name == name && s.turn_user == turn_user);
        if let Some(index) = index {
            self.remove_seat(out, index);
        }
        self.show_voice_notice(out, notice);
    }

    pub(in crate::hub) fn apply_media_changed(
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
    pub(in crate::hub) fn drop_node_seats(
        &mut self,
        out: &mut Out,
        node: &str,
        seats: &[String],
        timestamp: &str,
    ) {
        for name in seats {
            let index =
                self.voice.seats.iter().position(|s| &s.name == name && s.remote.as_deref() == Some(node));
            let Some(index) = index else { continue };
            self.remove_seat(out, index);
            let entry = crate::protocol::HistoryEntry {
                kind: crate::protocol::HistoryKind::System,
                username: None,
                text: crate::hub::voice_notice(name, false),
                timestamp: timestamp.to_string(),
            };
            self.show_cluster_entry(out, entry);
        }
    }

    /// This node was reaped while alive (cut off from Redis, or paused, longer than the
    /// presence TTL): the store and every other node dropped its seats. Its users here leave the
    /// room too, told so they can join again (their names come back with the next heartbeat).
    pub(in crate::hub) fn drop_own_seats(&mut self, out: &mut Out, seats: &[String], now: Now) {
        for name in seats {
            let index = self.voice.seats.iter().position(|s| &s.name == name && s.remote.is_none());
            let Some(index) = index else { continue };
            let seat = self.remove_seat(out, index);
            self.webrtc_error(out, seat.conn, super::VOICE_INTERRUPTED, now);
        }
    }

    /// The seats of a snapshot: other nodes' seats replace what we knew of them (ours stay).
    pub(in crate::hub) fn replace_remote_seats(
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
}
