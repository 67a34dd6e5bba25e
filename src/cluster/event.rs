//! What goes into the shared log: one [`ClusterEvent`] per change every node must see.
//!
//! Each entry of the Redis Stream `{ns}:log` has one field, `e`, holding one event as JSON
//! (`{"kind":"Chat","entry":{...}}`). Events carry everything a node needs to apply them
//! without asking anyone: the history entry exactly as stored in `{ns}:history`, the owner of a
//! name, the text a kicked user is shown. Only the scripts in `super::scripts` append them, each
//! in the same atomic step as the check and the durable write it reports.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::protocol::HistoryEntry;

/// Who holds a name: a connection on a node. Stored in `{ns}:name:{name}` and `{ns}:online` as
/// `node/conn` (node ids cannot contain `/`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Owner {
    pub node: String,
    pub conn: u64,
}

impl Owner {
    /// Parses `node/conn`.
    pub fn parse(text: &str) -> Option<Owner> {
        let (node, conn) = text.rsplit_once('/')?;
        Some(Owner { node: node.to_string(), conn: conn.parse().ok()? })
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.node, self.conn)
    }
}

/// One change every node applies, in log order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum ClusterEvent {
    /// `owner` now holds `name`. `entry` ("<name> has joined.") is `None` when a node re-claims
    /// a name it already held before a Redis outage: nodes that still list it show nothing.
    UserJoined {
        name: String,
        owner: Owner,
        entry: Option<HistoryEntry>,
    },
    /// `owner` let go of `name` ("<name> has left." + why). Ignored by a node that lists
    /// another owner for the name by then.
    UserLeft {
        name: String,
        owner: Owner,
        entry: HistoryEntry,
    },
    Chat {
        entry: HistoryEntry,
    },
    /// A persisted notice ("Server notice: ...", voice notices).
    System {
        entry: HistoryEntry,
    },
    /// `owner`'s user is now called `new` ("<old> is now <new>").
    NickChanged {
        old: String,
        new: String,
        owner: Owner,
        entry: HistoryEntry,
    },
    /// `notice` goes to the banned user if online; `until_ms` (Unix ms) for a timed ban.
    Ban {
        name: String,
        until_ms: Option<u64>,
        notice: String,
        entry: HistoryEntry,
    },
    Unban {
        name: String,
        entry: HistoryEntry,
    },
    /// Chat muted until `until_ms` (`None`: until unmuted); `notice` goes to the user.
    Mute {
        name: String,
        until_ms: Option<u64>,
        notice: String,
    },
    Unmute {
        name: String,
    },
    /// `notice` goes to the kicked user, `entry` ("<name> was kicked by <who>.") to everyone.
    Kick {
        name: String,
        notice: String,
        entry: HistoryEntry,
    },
    /// `node` stopped renewing its record; its users in `names` are gone (and its voice seats
    /// `seats`). Each node shows "<name> has left." stamped `timestamp`, as the reaper stored
    /// them in the history.
    NodeGone {
        node: String,
        names: Vec<String>,
        #[serde(default)]
        seats: Vec<String>,
        timestamp: String,
    },
    /// `owner`'s user took a voice seat (`turn_user` is what the relays admit).
    VoiceJoined {
        name: String,
        owner: Owner,
        turn_user: String,
        media: Vec<String>,
        entry: HistoryEntry,
        /// The user's voice notices are over their allowance (`[message_budgets]
        /// voice_notices_persisted` per interval, counted by the node holding them): `entry` is
        /// shown, not stored.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        live_only: bool,
    },
    /// The seat of `turn_user` is free again (leave, disconnect, kick, ban, revocation).
    VoiceLeft {
        name: String,
        turn_user: String,
        entry: HistoryEntry,
        /// As for `VoiceJoined`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        live_only: bool,
    },
    MediaChanged {
        name: String,
        turn_user: String,
        media: Vec<String>,
    },
    /// The operator rotated the TURN secret (stored in `{ns}:turn_secret` by the same script):
    /// every node's relay accepts it, and the previous one for `grace_s` more seconds; every
    /// node hands out credentials signed with it. The log lives in the same Redis as the
    /// secret's key, so carrying it here exposes it to no one new; nothing logs events.
    SecretRotated {
        secret: String,
        grace_s: u64,
    },
}

/// A voice seat as stored in `{ns}:voice` (name -> this, JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeatRecord {
    pub node: String,
    pub conn: u64,
    pub turn_user: String,
    /// Lua's cjson writes an empty list as `{}`: read either as empty.
    #[serde(default, deserialize_with = "list_or_empty_object")]
    pub media: Vec<String>,
}

fn list_or_empty_object<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Array(items) => {
            Ok(items.into_iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        }
        _ => Ok(Vec::new()),
    }
}

/// Signaling for a voice member on another node, through that node's inbox stream
/// (`{ns}:inbox:{node}`). Already rebuilt under force_relay by the node that received it from
/// its client, so nothing a client wrote crosses Redis unsanitized.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoutedSignal {
    /// The node holding `to`.
    pub node: String,
    pub from: String,
    pub to: String,
    pub kind: SignalKind,
    /// The offer/answer description object or the candidate object, as the target receives it.
    pub payload: serde_json::Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SignalKind {
    Offer,
    Answer,
    Candidate,
}

impl ClusterEvent {
    pub fn to_json(&self) -> String {
        // A derived Serialize of strings and numbers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(text: &str) -> Option<ClusterEvent> {
        serde_json::from_str(text).ok()
    }
}

/// The shared state at one log ID, read atomically: what a node starts from, and what it
/// resynchronizes from after a gap the log cannot fill.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// The newest `history_limit` entries, oldest first.
    pub history: Vec<HistoryEntry>,
    /// Who is online, anywhere.
    pub online: Vec<(String, Owner)>,
    /// Banned names, until when (Unix ms; `None`: no end).
    pub bans: Vec<(String, Option<u64>)>,
    /// Muted names, until when (Unix ms; `None`: no end).
    pub mutes: Vec<(String, Option<u64>)>,
    /// Voice seats, anywhere.
    pub seats: Vec<(String, SeatRecord)>,
    /// After a gap (not the start).
    pub resync: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::HistoryKind;

    #[test]
    fn events_round_trip_and_owners_parse() {
        let owner = Owner { node: "node-1.a".into(), conn: 42 };
        assert_eq!(Owner::parse(&owner.to_string()), Some(owner.clone()));
        assert_eq!(Owner::parse("no-slash"), None);
        let event = ClusterEvent::UserJoined {
            name: "alice".into(),
            owner,
            entry: Some(HistoryEntry {
                kind: HistoryKind::System,
                username: None,
                text: "alice has joined.".into(),
                timestamp: "2026-01-01T00:00:00.000Z".into(),
            }),
        };
        let json = event.to_json();
        assert!(json.starts_with(r#"{"kind":"UserJoined""#), "{json}");
        assert_eq!(ClusterEvent::from_json(&json), Some(event));
        assert_eq!(ClusterEvent::from_json("{\"kind\":\"Nope\"}"), None);
    }
}
