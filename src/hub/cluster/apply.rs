//! The shared log's events and snapshots, applied: the replica first (who is online where,
//! history ring, bans, mutes, voice seats), then the frames for this node's connections.

use std::collections::HashMap;

use super::{until_unix_ms, ClaimPurpose, NAME_LOST};
use crate::cluster::event::{ClusterEvent, Owner, Snapshot};
use crate::hub::{ConnId, Effect, Hub, Now, Out, CLOSE_POLICY};
use crate::protocol::{HistoryEntry, HistoryKind, ServerMessage};

impl Hub {
    /// The shared state as of one log ID (at start, or after a gap): replaces the replica.
    pub fn cluster_snapshot(&mut self, snapshot: Snapshot, now: Now) -> Vec<Effect> {
        let mut out = Out::default();
        let Some(replica) = self.cluster.as_mut() else { return out.effects };
        let mut owners: HashMap<String, Owner> = snapshot.online.into_iter().collect();
        // Our own users stay ours; the next heartbeat re-claims or gives them up.
        for (name, &conn) in &self.names {
            owners.insert(name.clone(), Owner { node: replica.node.clone(), conn });
        }
        self.arrival_order.retain(|name| owners.contains_key(name));
        let mut newcomers: Vec<String> =
            owners.keys().filter(|name| !self.arrival_order.contains(name)).cloned().collect();
        newcomers.sort();
        self.arrival_order.extend(newcomers);
        replica.owners = owners;
        replica.store_up = true;
        self.history = snapshot.history.into();
        while self.history.len() > self.settings.chat.history_limit {
            self.history.pop_front();
        }
        let now_ms = now.wall.timestamp_millis().max(0) as u64;
        self.bans.clear();
        self.timed_bans.clear();
        for (name, until) in snapshot.bans {
            match until {
                Some(ms) if ms <= now_ms => {}
                Some(ms) => {
                    self.timed_bans.insert(name.clone(), until_unix_ms(ms, now));
                    self.bans.insert(name);
                }
                None => {
                    self.bans.insert(name);
                }
            }
        }
        self.mutes = snapshot
            .mutes
            .into_iter()
            .filter(|(_, until)| until.is_none_or(|ms| ms > now_ms))
            .map(|(name, until)| (name, until.map(|ms| until_unix_ms(ms, now))))
            .collect();
        self.replace_remote_seats(&mut out, snapshot.seats, now);
        if snapshot.resync {
            tracing::warn!("cluster replica resynchronized from a snapshot");
        }
        out.effects
    }

    /// Applies events read from the shared log, in order.
    pub fn cluster_events(&mut self, events: Vec<ClusterEvent>, now: Now) -> Vec<Effect> {
        events.into_iter().flat_map(|event| self.cluster_event(event, now)).collect()
    }

    /// Applies one event read from the shared log (from any node, this one included).
    pub fn cluster_event(&mut self, event: ClusterEvent, now: Now) -> Vec<Effect> {
        let mut out = Out::default();
        if self.cluster.is_none() {
            return out.effects;
        }
        match event {
            ClusterEvent::UserJoined { name, owner, entry } => {
                self.apply_joined(&mut out, name, owner, entry, now)
            }
            ClusterEvent::UserLeft { name, owner, entry } => {
                let Some(replica) = self.cluster.as_mut() else { return out.effects };
                if replica.owners.get(&name) == Some(&owner) {
                    replica.owners.remove(&name);
                    self.arrival_order.retain(|n| n != &name);
                    self.show_cluster_entry(&mut out, entry);
                }
            }
            ClusterEvent::NickChanged { old, new, owner, entry } => {
                self.apply_nick(&mut out, old, new, owner, entry, now)
            }
            ClusterEvent::Chat { entry } => self.show_chat(&mut out, entry, now),
            ClusterEvent::System { entry } => self.show_cluster_entry(&mut out, entry),
            ClusterEvent::Ban { name, until_ms, notice, entry } => {
                self.bans.insert(name.clone());
                match until_ms {
                    Some(ms) => {
                        self.timed_bans.insert(name.clone(), until_unix_ms(ms, now));
                    }
                    None => {
                        self.timed_bans.remove(&name);
                    }
                }
                self.show_removal(&mut out, &name, &notice, "Banned", entry, now);
            }
            ClusterEvent::Unban { name, entry } => {
                self.bans.remove(&name);
                self.timed_bans.remove(&name);
                self.show_cluster_entry(&mut out, entry);
            }
            ClusterEvent::Mute { name, until_ms, notice } => {
                self.mutes.insert(name.clone(), until_ms.map(|ms| until_unix_ms(ms, now)));
                if let Some(&conn) = self.names.get(&name) {
                    out.system(conn, &notice);
                }
            }
            ClusterEvent::Unmute { name } => {
                if self.mutes.remove(&name).is_some() {
                    if let Some(&conn) = self.names.get(&name) {
                        out.system(conn, "You are no longer muted.");
                    }
                }
            }
            ClusterEvent::Kick { name, notice, entry } => {
                self.show_removal(&mut out, &name, &notice, "Kicked", entry, now)
            }
            ClusterEvent::VoiceJoined { name, owner, turn_user, media, entry, live_only } => {
                self.apply_voice_joined(&mut out, (name, owner, turn_user, media), (entry, live_only), now)
            }
            ClusterEvent::VoiceLeft { name, turn_user, entry, live_only } => {
                self.apply_voice_left(&mut out, &name, &turn_user, (entry, live_only))
            }
            ClusterEvent::MediaChanged { name, turn_user, media } => {
                self.apply_media_changed(&mut out, &name, &turn_user, media)
            }
            ClusterEvent::SecretRotated { secret, grace_s } => {
                self.apply_secret_rotated(&mut out, secret, grace_s, now)
            }
            ClusterEvent::NodeGone { node, names, seats, timestamp } => {
                if self.cluster.as_ref().is_some_and(|replica| replica.node == node) {
                    self.drop_own_seats(&mut out, &seats, now);
                }
                self.drop_node_seats(&mut out, &node, &seats, &timestamp);
                for name in names {
                    let Some(replica) = self.cluster.as_mut() else { break };
                    // This node's own users stay: it was only cut off, and its heartbeat
                    // re-claims their names.
                    if replica.owners.get(&name).is_none_or(|o| o.node != node)
                        || self.names.contains_key(&name)
                    {
                        continue;
                    }
                    replica.owners.remove(&name);
                    self.arrival_order.retain(|n| n != &name);
                    let entry = HistoryEntry {
                        kind: HistoryKind::System,
                        username: None,
                        text: format!("{name} has left."),
                        timestamp: timestamp.clone(),
                    };
                    self.show_cluster_entry(&mut out, entry);
                }
            }
        }
        out.effects
    }

    pub(super) fn apply_joined(
        &mut self,
        out: &mut Out,
        name: String,
        owner: Owner,
        entry: Option<HistoryEntry>,
        now: Now,
    ) {
        let local = self.local_conn(&owner);
        let Some(replica) = self.cluster.as_mut() else { return };
        let previous = replica.owners.insert(name.clone(), owner.clone());
        if previous.as_ref() == Some(&owner) {
            return; // re-claimed after an outage: nothing new
        }
        // Another owner had it: that claim expired while its node was cut off. If it was ours,
        // our user goes (the heartbeat would find the same).
        if let Some(conn) = previous.and_then(|p| self.local_conn(&p)) {
            if self.connections.get(&conn).and_then(|c| c.name.as_deref()) == Some(name.as_str()) {
                out.system(conn, NAME_LOST);
                out.close(conn, CLOSE_POLICY, "Name taken elsewhere");
                self.drop_local_user(out, conn, now);
            }
        }
        let waiting = local.filter(|conn| {
            self.connections.get(conn).and_then(|c| c.claim.as_ref()).is_some_and(|claim| {
                claim.name == name && matches!(claim.purpose, ClaimPurpose::Connect | ClaimPurpose::Login)
            })
        });
        match waiting {
            // Banned meanwhile (the ban was logged while the claim was on its way): the name is
            // released again, as for a banned user who was online.
            Some(conn) if self.bans.contains(&name) => {
                out.system(conn, "You are banned.");
                out.close(conn, CLOSE_POLICY, "Banned");
                self.remove_connection(out, conn, None, now);
            }
            Some(conn) => self.welcome_claimed(out, conn, name, entry),
            None => {
                if !self.arrival_order.contains(&name) {
                    self.arrival_order.push(name);
                }
                if let Some(entry) = entry {
                    self.show_cluster_entry(out, entry);
                }
            }
        }
    }

    /// Steps 3-5 of the connection sequence for a claim the log confirmed: history (as every
    /// node has it at this point of the log), MOTD, the "has joined." notice.
    pub(super) fn welcome_claimed(
        &mut self,
        out: &mut Out,
        conn: ConnId,
        name: String,
        entry: Option<HistoryEntry>,
    ) {
        let Some(connection) = self.connections.get_mut(&conn) else { return };
        connection.claim = None;
        connection.name = Some(name.clone());
        self.names.insert(name.clone(), conn);
        if !self.arrival_order.contains(&name) {
            self.arrival_order.push(name);
        }
        let history: Vec<_> = self.history.iter().cloned().collect();
        out.send(conn, &ServerMessage::History { messages: &history });
        if !self.settings.server.motd.is_empty() {
            out.system(conn, &format!("MOTD: {}", self.settings.server.motd));
        }
        if let Some(entry) = entry {
            self.show_cluster_entry(out, entry);
        }
    }

    pub(super) fn apply_nick(
        &mut self,
        out: &mut Out,
        old: String,
        new: String,
        owner: Owner,
        entry: HistoryEntry,
        now: Now,
    ) {
        let local = self.local_conn(&owner);
        let Some(replica) = self.cluster.as_mut() else { return };
        if replica.owners.get(&old) == Some(&owner) {
            replica.owners.remove(&old);
        }
        replica.owners.insert(new.clone(), owner);
        if let Some(conn) = local {
            if let Some(connection) = self.connections.get_mut(&conn) {
                connection.claim = None;
                connection.name = Some(new.clone());
                connection.last_nick_change = Some(now.mono);
                self.names.remove(&old);
                self.names.insert(new.clone(), conn);
            }
        }
        match self.arrival_order.iter().position(|n| n == &old) {
            Some(at) if !self.arrival_order.contains(&new) => self.arrival_order[at] = new,
            _ if !self.arrival_order.contains(&new) => self.arrival_order.push(new),
            _ => {}
        }
        self.show_cluster_entry(out, entry);
    }

    /// Kick or ban: the user (if here) is told and closed, everyone sees the notice, then the
    /// user leaves as in single-node mode.
    pub(super) fn show_removal(
        &mut self,
        out: &mut Out,
        name: &str,
        notice: &str,
        reason: &str,
        entry: HistoryEntry,
        now: Now,
    ) {
        let target = self.names.get(name).copied();
        if let Some(conn) = target {
            out.system(conn, notice);
            out.close(conn, CLOSE_POLICY, reason);
        }
        self.show_cluster_entry(out, entry);
        if let Some(conn) = target {
            self.remove_connection(out, conn, None, now);
        }
    }

    /// A voice notice: to every local user; into the ring unless the user's notices are over
    /// their allowance (`live_only`: the script did not store it either).
    pub(in crate::hub) fn show_voice_notice(
        &mut self,
        out: &mut Out,
        (entry, live_only): (HistoryEntry, bool),
    ) {
        if live_only {
            out.broadcast(self.welcomed_connections(), &ServerMessage::System { text: &entry.text });
        } else {
            self.show_cluster_entry(out, entry);
        }
    }

    /// A persisted notice: into the ring, to every local user.
    pub(in crate::hub) fn show_cluster_entry(&mut self, out: &mut Out, entry: HistoryEntry) {
        out.broadcast(self.welcomed_connections(), &ServerMessage::System { text: &entry.text });
        self.push_history(entry);
    }

    pub(super) fn show_chat(&mut self, out: &mut Out, entry: HistoryEntry, now: Now) {
        let name = entry.username.clone().unwrap_or_default();
        let recipients: Vec<ConnId> = self
            .welcomed_connections()
            .into_iter()
            .filter(|&other| !self.has_blocked(other, &name, now))
            .collect();
        out.broadcast(
            recipients,
            &ServerMessage::Chat { username: &name, text: &entry.text, timestamp: &entry.timestamp },
        );
        self.push_history(entry);
    }

    pub(super) fn push_history(&mut self, entry: HistoryEntry) {
        self.history.push_back(entry);
        while self.history.len() > self.settings.chat.history_limit {
            self.history.pop_front();
        }
    }
}
