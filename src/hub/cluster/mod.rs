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
//!
//! Children: `claims` (what the hub asks of the store and how it takes the answers: name
//! claims and releases, publishes, failures, names lost), `apply` (the log's events and
//! snapshots applied to the replica and shown to this node's users).

mod apply;
mod claims;

use std::collections::HashMap;

use super::admin::Until;
use super::relay_only::RelayAddresses;
use super::{ConnId, Hub, Now};
use crate::cluster::event::Owner;
use crate::protocol::{iso_timestamp, HistoryEntry, HistoryKind};

/// Close code for "the cluster store is unreachable, come back soon": RFC 6455's registry has
/// 1013 "Try Again Later" for exactly that (a client may reconnect, maybe to another node).
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;

pub const STORE_DOWN_CONNECT: &str =
    "This server cannot reach the chat cluster's store right now. Please try again in a moment.";
pub const STORE_DOWN_NOT_SENT: &str =
    "Message not sent: the chat cluster's store is unreachable. Try again in a moment.";
pub const STORE_SLOW_MAYBE_SENT: &str =
    "Your message may not have been sent: the chat cluster's store did not \
     answer in time. If it was saved it appears in the chat shortly; if it does not, send it again.";
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

/// Why a change from a user is not known to be in the shared log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishFailure {
    /// Redis did not run it (the writer's queue was full, no connection, Redis refused it).
    NotWritten,
    /// Redis did not answer in time or the connection broke mid-call: it may have been
    /// written. If it was, its echo comes from the log like any other.
    MaybeWritten,
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

pub(super) fn system_entry(text: String, now: Now) -> HistoryEntry {
    HistoryEntry { kind: HistoryKind::System, username: None, text, timestamp: iso_timestamp(now.wall) }
}

/// A moment given as Unix ms, on both clocks.
pub(super) fn until_unix_ms(ms: u64, now: Now) -> Until {
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

    pub(super) fn local_owner(&self, conn: ConnId) -> Option<Owner> {
        self.cluster.as_ref().map(|replica| Owner { node: replica.node.clone(), conn })
    }

    /// The local connection an owner stands for, if it is one of ours.
    pub(super) fn local_conn(&self, owner: &Owner) -> Option<ConnId> {
        let replica = self.cluster.as_ref()?;
        (owner.node == replica.node && self.connections.contains_key(&owner.conn)).then_some(owner.conn)
    }
}
