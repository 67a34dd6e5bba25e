//! The hub in cluster mode (`Hub::clustered`): a replica of the shared state, changed only by
//! the shared log.
//!
//! Where a single node changes shared state and broadcasts at once (a join, a leave, chat, a
//! nick, a ban, a mute, a kick, a persisted notice), a clustered hub only asks for the change
//! (`Effect::Publish`, `Effect::ClaimName`, `Effect::ReleaseName`) and does nothing else. The
//! change comes back, from this node or any other, as a `ClusterEvent` read from the log, and
//! `Hub::cluster_event` applies it: replica (who is online where, history ring, bans, mutes),
//! then the frames for this node's connections. It never persists anything: the script that
//! logged the event already stored it. So every node shows the same events in the same order,
//! and a sender who saw its own message echoed knows it was durably written.
//!
//! Local state stays local: connections, their tokens, blocks, budgets, rate limits.

use std::collections::HashMap;

use super::admin::Until;
use super::relay_only::RelayAddresses;
use super::{ConnId, Effect, Hub, Now, Out, CLOSE_POLICY};
use crate::cluster::event::{ClusterEvent, Owner, Snapshot};
use crate::protocol::{iso_timestamp, HistoryEntry, HistoryKind, ServerMessage};

/// Close code for "the cluster store is unreachable, come back soon": RFC 6455's registry has
/// 1013 "Try Again Later" for exactly that (a client may reconnect, maybe to another node).
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;

pub const STORE_DOWN_CONNECT: &str =
    "This server cannot reach the chat cluster's store right now. Please try again in a moment.";
pub const STORE_DOWN_NOT_SENT: &str =
    "Message not sent: the chat cluster's store is unreachable. Try again in a moment.";
pub const STORE_DOWN_NICK: &str =
    "Nick not changed: the chat cluster's store is unreachable. Try again in a moment.";
pub const STORE_DOWN_VOICE: &str =
    "Voice chat is unavailable: the chat cluster's store is unreachable. Try again in a moment.";
pub const NAME_LOST: &str =
    "Your name was taken on another server while this one was cut off from the cluster. Please reconnect.";

/// How a name claim ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// Ours; the log's `UserJoined`/`NickChanged` completes it.
    Won,
    /// Someone holds it.
    Taken,
    /// The store bans it (a ban this node had not read yet).
    Banned,
    /// Redis did not answer.
    StoreDown,
}

/// How a voice join ended (the `voice_join` script's answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoiceOutcome {
    /// Seated; the log's `VoiceJoined` completes it.
    Seated,
    /// `max_participants` seats are taken, cluster-wide.
    Full,
    AlreadySeated,
    StoreDown,
}

/// Why a connection claims a name (what to say if it fails).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ClaimPurpose {
    /// Open mode: the name asked for on connecting.
    Connect,
    /// Authentication mode: a successful /login.
    Login,
    /// /nick from `old`.
    Nick { old: String },
}

#[derive(Debug, Clone)]
pub(super) struct PendingClaim {
    pub name: String,
    pub purpose: ClaimPurpose,
}

/// What a clustered hub knows of the cluster.
#[derive(Debug)]
pub(super) struct Replica {
    /// This node's id (the `node` of its owners).
    pub node: String,
    /// Who holds each name online, anywhere (this node's users too), as the log says.
    pub owners: HashMap<String, Owner>,
    /// The store answers: new users may come in, chat may be sent.
    pub store_up: bool,
    /// This node's own relay addresses (before the registry's were added).
    pub own_relays: Option<Vec<std::net::IpAddr>>,
}

fn system_entry(text: String, now: Now) -> HistoryEntry {
    HistoryEntry { kind: HistoryKind::System, username: None, text, timestamp: iso_timestamp(now.wall) }
}

/// A moment given as Unix ms, on both clocks.
fn until_unix_ms(ms: u64, now: Now) -> Until {
    let now_ms = now.wall.timestamp_millis().max(0) as u64;
    let ahead = std::time::Duration::from_millis(ms.saturating_sub(now_ms));
    Until::after(now, ahead)
}

impl Hub {
    /// Cluster mode: shared state changes go through the log (this module's doc). The store
    /// counts as unreachable until the first snapshot arrives.
    pub fn clustered(mut self, node: String) -> Self {
        self.cluster = Some(Replica { node, owners: HashMap::new(), store_up: false, own_relays: None });
        self
    }

    pub fn is_clustered(&self) -> bool {
        self.cluster.is_some()
    }

    /// The runner saw the store come or go.
    pub fn set_cluster_store_up(&mut self, up: bool) {
        if let Some(replica) = self.cluster.as_mut() {
            replica.store_up = up;
        }
    }

    /// The relay addresses of every live node (from the registry): under force_relay a relayed
    /// candidate may name these as well as this node's own relays, nothing else.
    pub fn set_cluster_relays(&mut self, ips: Vec<std::net::IpAddr>) {
        let Some(replica) = self.cluster.as_mut() else { return };
        let own = replica.own_relays.get_or_insert_with(|| self.relays.iter().copied().collect()).clone();
        self.relays = RelayAddresses::new(own.into_iter().chain(ips));
    }

    /// The names this node's users hold, for the heartbeat to renew.
    pub fn owned_names(&self) -> Vec<(String, Owner)> {
        let Some(replica) = &self.cluster else { return Vec::new() };
        let mut names: Vec<(String, Owner)> = self
            .names
            .iter()
            // A name being renamed away may already be gone from the store: renewing it would
            // bring it back after the rename, listed online forever.
            .filter(|(_, conn)| {
                self.connections
                    .get(conn)
                    .and_then(|c| c.claim.as_ref())
                    .is_none_or(|claim| !matches!(claim.purpose, ClaimPurpose::Nick { .. }))
            })
            .map(|(name, &conn)| (name.clone(), Owner { node: replica.node.clone(), conn }))
            .collect();
        names.sort();
        names
    }

    /// Clustered, and the store is unreachable.
    pub(super) fn cluster_store_down(&self) -> bool {
        self.cluster.as_ref().is_some_and(|replica| !replica.store_up)
    }

    /// Someone holds `name`: a local user, or (clustered) anyone in the cluster.
    pub(super) fn name_taken(&self, name: &str) -> bool {
        self.names.contains_key(name)
            || self.cluster.as_ref().is_some_and(|replica| replica.owners.contains_key(name))
    }

    /// Online anywhere (clustered) or here.
    pub(super) fn online_anywhere(&self, name: &str) -> bool {
        self.name_taken(name)
    }

    fn local_owner(&self, conn: ConnId) -> Option<Owner> {
        self.cluster.as_ref().map(|replica| Owner { node: replica.node.clone(), conn })
    }

    /// The local connection an owner stands for, if it is one of ours.
    fn local_conn(&self, owner: &Owner) -> Option<ConnId> {
        let replica = self.cluster.as_ref()?;
        (owner.node == replica.node && self.connections.contains_key(&owner.conn)).then_some(owner.conn)
    }

    /// Asks the store for `name` on behalf of `conn`.
    pub(super) fn claim_name(
        &mut self,
        out: &mut Out,
        conn: ConnId,
        name: String,
        purpose: ClaimPurpose,
        now: Now,
    ) {
        let Some(owner) = self.local_owner(conn) else { return };
        let (previous, event) = match &purpose {
            ClaimPurpose::Connect | ClaimPurpose::Login => (
                None,
                ClusterEvent::UserJoined {
                    name: name.clone(),
                    owner,
                    entry: Some(system_entry(format!("{name} has joined."), now)),
                },
            ),
            ClaimPurpose::Nick { old } => (
                Some(old.clone()),
                ClusterEvent::NickChanged {
                    old: old.clone(),
                    new: name.clone(),
                    owner,
                    entry: system_entry(format!("{old} is now {name}"), now),
                },
            ),
        };
        if let Some(connection) = self.connections.get_mut(&conn) {
            connection.claim = Some(PendingClaim { name: name.clone(), purpose });
        }
        out.push(Effect::ClaimName { conn, name, previous, event });
    }

    /// Asks the store to let go of `name` held by `conn` ("<name> has left.<suffix>").
    pub(super) fn release_name(&self, out: &mut Out, conn: ConnId, name: &str, suffix: &str, now: Now) {
        let Some(owner) = self.local_owner(conn) else { return };
        let entry = system_entry(format!("{name} has left.{suffix}"), now);
        let event = ClusterEvent::UserLeft { name: name.to_string(), owner: owner.clone(), entry };
        out.push(Effect::ReleaseName { name: name.to_string(), owner, event });
    }

    /// Clustered: log a change (the broadcast happens when it is read back).
    pub(super) fn publish(&self, out: &mut Out, origin: Option<ConnId>, event: ClusterEvent) {
        out.push(Effect::Publish { origin, event });
    }

    /// The store answered a `ClaimName`.
    pub fn name_claimed(
        &mut self,
        conn: ConnId,
        name: String,
        outcome: ClaimOutcome,
        now: Now,
    ) -> Vec<Effect> {
        let mut out = Out::default();
        let Some(connection) = self.connections.get_mut(&conn) else { return out.effects };
        let Some(claim) = connection.claim.clone().filter(|claim| claim.name == name) else {
            return out.effects;
        };
        if outcome == ClaimOutcome::Won {
            // The log's entry completes it (it may even have been applied already).
            return out.effects;
        }
        connection.claim = None;
        match (outcome, claim.purpose) {
            (ClaimOutcome::Taken, ClaimPurpose::Connect) => {
                out.system(conn, "Username taken.");
                self.refuse(&mut out, conn, now);
            }
            (ClaimOutcome::Taken, ClaimPurpose::Login) => {
                out.system(conn, "Username in use.");
                out.close(conn, CLOSE_POLICY, "Username in use");
                self.remove_connection(&mut out, conn, None, now);
            }
            (ClaimOutcome::Banned, ClaimPurpose::Connect) => {
                out.system(conn, "You are banned.");
                self.refuse(&mut out, conn, now);
            }
            (ClaimOutcome::Banned, ClaimPurpose::Login) => {
                out.system(conn, "You are banned.");
                out.close(conn, CLOSE_POLICY, "Banned");
                self.remove_connection(&mut out, conn, None, now);
            }
            (ClaimOutcome::Taken | ClaimOutcome::Banned, ClaimPurpose::Nick { .. }) => {
                out.system(conn, &format!("Username \"{name}\" is already taken."));
            }
            (_, ClaimPurpose::Nick { .. }) => out.system(conn, STORE_DOWN_NICK),
            (_, ClaimPurpose::Connect | ClaimPurpose::Login) => {
                out.system(conn, STORE_DOWN_CONNECT);
                out.close(conn, CLOSE_TRY_AGAIN_LATER, "Cluster store unreachable");
                self.remove_connection(&mut out, conn, None, now);
            }
        }
        out.effects
    }

    /// A change from `conn` could not be written.
    pub fn publish_failed(&mut self, conn: ConnId, _now: Now) -> Vec<Effect> {
        let mut out = Out::default();
        if self.connections.contains_key(&conn) {
            out.system(conn, STORE_DOWN_NOT_SENT);
        }
        out.effects
    }

    /// The heartbeat found these names held by someone else now (this node was cut off longer
    /// than the presence TTL and another node's user took them): their users here must go.
    pub fn names_lost(&mut self, names: Vec<String>, now: Now) -> Vec<Effect> {
        let mut out = Out::default();
        for name in names {
            if let Some(&conn) = self.names.get(&name) {
                out.system(conn, NAME_LOST);
                out.close(conn, CLOSE_POLICY, "Name taken elsewhere");
                self.drop_local_user(&mut out, conn, now);
            }
        }
        out.effects
    }

    /// Removes a local user whose name is no longer ours, without releasing it.
    fn drop_local_user(&mut self, out: &mut Out, conn: ConnId, now: Now) {
        let Some(connection) = self.connections.remove(&conn) else { return };
        self.connection_limiter.release(connection.ip, now.mono);
        if let Some(name) = connection.name {
            self.leave_voice(out, &name, now);
            self.names.remove(&name);
        }
    }

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
            ClusterEvent::VoiceJoined { name, owner, turn_user, media, entry } => {
                self.apply_voice_joined(&mut out, (name, owner, turn_user, media), entry, now)
            }
            ClusterEvent::VoiceLeft { name, turn_user, entry } => {
                self.apply_voice_left(&mut out, &name, &turn_user, entry)
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

    fn apply_joined(
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
    fn welcome_claimed(&mut self, out: &mut Out, conn: ConnId, name: String, entry: Option<HistoryEntry>) {
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

    fn apply_nick(
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
    fn show_removal(
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

    /// A persisted notice: into the ring, to every local user.
    pub(super) fn show_cluster_entry(&mut self, out: &mut Out, entry: HistoryEntry) {
        out.broadcast(self.welcomed_connections(), &ServerMessage::System { text: &entry.text });
        self.push_history(entry);
    }

    fn show_chat(&mut self, out: &mut Out, entry: HistoryEntry, now: Now) {
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

    fn push_history(&mut self, entry: HistoryEntry) {
        self.history.push_back(entry);
        while self.history.len() > self.settings.chat.history_limit {
            self.history.pop_front();
        }
    }
}
