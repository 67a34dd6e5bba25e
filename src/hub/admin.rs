//! Operator actions (the admin API, `relaychat admin ...`): pure hub methods like the others.
//!
//! The admin listener turns each HTTP request into an [`AdminRequest`]; the runner hands it to
//! [`Hub::admin`] and sends back the [`AdminReply`]: a JSON body on success, an [`AdminError`]
//! (mapped to an HTTP status) otherwise. What the relay must do (revoke credentials, delete
//! allocations, accept a new secret) is done by the admin layer around the hub, which owns the
//! relay handle; the hub does its part (who is in voice, who may join again, which secret signs
//! the credentials it hands out) and says what it did.
//!
//! Choices an operator should know (docs/ADMIN.md):
//! - the session list shows names, arrival time and voice state; the client address only when
//!   asked for (`show_addresses`), so a listing pasted into a ticket leaks nobody's IP;
//! - a timed ban or mute lives in memory (a restart lifts it); a ban without duration is stored
//!   like `/ban`'s;
//! - mute is chat only: in a mesh call the media never passes through the hub, so a voice
//!   participant is taken out of the call with a TURN revocation instead;
//! - revoking TURN access takes the user out of the voice room and refuses their rejoining
//!   until the given time: a revoked user who could rejoin would just get new credentials.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::chat::MAX_CHAT_CHARS;
use super::{is_valid_username, Hub, Now, Out, CLOSE_POLICY};
use crate::cluster::event::ClusterEvent;
use crate::ice_servers::TurnEndpoints;
use crate::protocol::iso_timestamp;
use crate::protocol::{HistoryEntry, HistoryKind};

/// Who the notices name as the actor of an operator action.
const OPERATOR: &str = "the server operator";

/// A moment both clocks agree on: monotonic to expire, wall clock to show.
#[derive(Debug, Clone, Copy)]
pub(super) struct Until {
    pub mono: std::time::Instant,
    pub wall: DateTime<Utc>,
}

/// The longest ban, mute or revocation held: the admin API's maximum (ten years). Cluster mode
/// also reads ends from Redis, where anyone with access may have written any number.
pub(super) const MAX_RESTRICTION: Duration = Duration::from_secs(10 * 365 * 86_400);

impl Until {
    /// `duration` from now, at most [`MAX_RESTRICTION`]; never overflows either clock.
    pub(super) fn after(now: Now, duration: Duration) -> Until {
        let duration = duration.min(MAX_RESTRICTION);
        let wall = chrono::Duration::from_std(duration).ok().and_then(|d| now.wall.checked_add_signed(d));
        Until { mono: now.mono.checked_add(duration).unwrap_or(now.mono), wall: wall.unwrap_or(now.wall) }
    }

    fn iso(&self) -> String {
        iso_timestamp(self.wall)
    }
}

/// One operator request, already parsed and checked for shape by the admin listener.
#[derive(Clone, PartialEq, Eq)]
pub enum AdminRequest {
    Sessions {
        show_addresses: bool,
    },
    Rooms,
    Kick {
        name: String,
    },
    /// `None`: until unbanned (stored); `Some`: for that long (in memory).
    Ban {
        name: String,
        duration: Option<Duration>,
    },
    Unban {
        name: String,
    },
    Mute {
        name: String,
        duration: Option<Duration>,
    },
    Unmute {
        name: String,
    },
    Broadcast {
        text: String,
    },
    /// Out of the voice room now, no rejoining for `duration`.
    RevokeTurn {
        name: String,
        duration: Duration,
    },
    /// The ICE-server issuer signs with `secret` from now on; everyone in voice gets fresh
    /// credentials at once.
    RotateTurnSecret {
        secret: Vec<u8>,
    },
}

impl std::fmt::Debug for AdminRequest {
    /// Like the derived one, without the secret of a rotation.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminRequest::Sessions { show_addresses } => {
                f.debug_struct("Sessions").field("show_addresses", show_addresses).finish()
            }
            AdminRequest::Rooms => f.write_str("Rooms"),
            AdminRequest::Kick { name } => f.debug_struct("Kick").field("name", name).finish(),
            AdminRequest::Ban { name, duration } => {
                f.debug_struct("Ban").field("name", name).field("duration", duration).finish()
            }
            AdminRequest::Unban { name } => f.debug_struct("Unban").field("name", name).finish(),
            AdminRequest::Mute { name, duration } => {
                f.debug_struct("Mute").field("name", name).field("duration", duration).finish()
            }
            AdminRequest::Unmute { name } => f.debug_struct("Unmute").field("name", name).finish(),
            AdminRequest::Broadcast { text } => f.debug_struct("Broadcast").field("text", text).finish(),
            AdminRequest::RevokeTurn { name, duration } => {
                f.debug_struct("RevokeTurn").field("name", name).field("duration", duration).finish()
            }
            AdminRequest::RotateTurnSecret { .. } => f.write_str("RotateTurnSecret { secret: <redacted> }"),
        }
    }
}

/// Why a request could not be carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// Cluster mode: the shared store cannot be written right now.
    #[error("{0}")]
    Unavailable(String),
}

pub type AdminReply = Result<Value, AdminError>;

impl Hub {
    /// Carries out one operator request.
    pub fn admin(&mut self, request: AdminRequest, now: Now) -> (Vec<super::Effect>, AdminReply) {
        let mut out = Out::default();
        self.expire_operator_limits(now);
        let changes_shared_state = matches!(
            request,
            AdminRequest::Kick { .. }
                | AdminRequest::Ban { .. }
                | AdminRequest::Unban { .. }
                | AdminRequest::Mute { .. }
                | AdminRequest::Unmute { .. }
                | AdminRequest::Broadcast { .. }
                | AdminRequest::RotateTurnSecret { .. }
        );
        if changes_shared_state && self.cluster_store_down() {
            let reply = Err(AdminError::Unavailable("the cluster store (Redis) is unreachable".into()));
            return (out.effects, reply);
        }
        let reply = match request {
            AdminRequest::Sessions { show_addresses } => Ok(self.sessions(show_addresses, now)),
            AdminRequest::Rooms => Ok(self.rooms(now)),
            AdminRequest::Kick { name } => self.operator_kick(&mut out, &name, now),
            AdminRequest::Ban { name, duration } => self.operator_ban(&mut out, &name, duration, now),
            AdminRequest::Unban { name } => self.operator_unban(&mut out, &name, now),
            AdminRequest::Mute { name, duration } => self.operator_mute(&mut out, &name, duration, now),
            AdminRequest::Unmute { name } => self.operator_unmute(&mut out, &name, now),
            AdminRequest::Broadcast { text } => self.operator_broadcast(&mut out, &text, now),
            AdminRequest::RevokeTurn { name, duration } => {
                self.operator_revoke_turn(&mut out, &name, duration, now)
            }
            AdminRequest::RotateTurnSecret { secret } => self.rotate_turn_secret(&mut out, secret, now),
        };
        (out.effects, reply)
    }

    /// Is `name` muted by the operator right now? Until when (`None`: until unmuted).
    pub(super) fn muted(&self, name: &str, now: Now) -> Option<Option<Until>> {
        match self.mutes.get(name) {
            Some(Some(until)) if until.mono <= now.mono => None,
            Some(until) => Some(*until),
            None => None,
        }
    }

    /// Is `name` kept out of voice (TURN access revoked) right now?
    pub(super) fn voice_revoked_until(&self, name: &str, now: Now) -> Option<Until> {
        self.voice_revoked.get(name).copied().filter(|until| until.mono > now.mono)
    }

    /// Lifts timed bans, mutes and voice revocations whose time has come (from `tick` too).
    pub(super) fn expire_operator_limits(&mut self, now: Now) {
        let ended: Vec<String> = self
            .timed_bans
            .iter()
            .filter(|(_, until)| until.mono <= now.mono)
            .map(|(name, _)| name.clone())
            .collect();
        for name in ended {
            self.timed_bans.remove(&name);
            self.bans.remove(&name);
            // Timed bans were never stored, so there is nothing to unstore.
            tracing::info!(user = %name, "timed ban ended");
        }
        self.mutes.retain(|_, until| until.is_none_or(|u| u.mono > now.mono));
        self.voice_revoked.retain(|_, until| until.mono > now.mono);
    }

    fn sessions(&self, show_addresses: bool, now: Now) -> Value {
        let sessions: Vec<Value> = self
            .arrival_order
            .iter()
            .filter_map(|name| {
                let conn = *self.names.get(name)?;
                let connection = self.connections.get(&conn)?;
                let mut session = json!({
                    "name": name,
                    "connected_since": iso_timestamp(connection.connected_at),
                    "connected_for_s": (now.wall - connection.connected_at).num_seconds().max(0),
                    "in_voice": self.voice.contains(name),
                    "admin": self.admins.contains(name),
                    "muted_until": self.muted(name, now).map(|until| until.map(|u| u.iso()).unwrap_or_else(|| "forever".into())),
                });
                if show_addresses {
                    session["address"] = json!(connection.ip.to_string());
                }
                Some(session)
            })
            .collect();
        let not_logged_in = self.connections.values().filter(|c| c.name.is_none()).count();
        json!({ "sessions": sessions, "not_logged_in": not_logged_in })
    }

    fn rooms(&self, now: Now) -> Value {
        let members: Vec<Value> = self
            .voice
            .members()
            .map(|(name, media_types, joined_at)| {
                json!({
                    "name": name,
                    "media_types": media_types,
                    "joined_at": iso_timestamp(joined_at),
                    "in_call_for_s": (now.wall - joined_at).num_seconds().max(0),
                })
            })
            .collect();
        json!({ "rooms": [{
            "name": "voice",
            "max_participants": self.settings.webrtc.max_participants,
            "members": members,
        }]})
    }

    fn operator_kick(&mut self, out: &mut Out, name: &str, now: Now) -> AdminReply {
        let target = checked_name(name)?;
        if self.is_clustered() {
            if !self.online_anywhere(&target) {
                return Err(AdminError::NotFound(format!("{target} is not online")));
            }
            let was_in_voice = self.voice.contains(&target);
            let event = ClusterEvent::Kick {
                name: target.clone(),
                notice: "You have been kicked by the server operator.".into(),
                entry: operator_notice(format!("{target} was kicked by {OPERATOR}."), now),
            };
            self.publish(out, None, event);
            return Ok(json!({ "kicked": target, "was_in_voice": was_in_voice }));
        }
        let Some(conn) = self.names.get(&target).copied() else {
            return Err(AdminError::NotFound(format!("{target} is not online")));
        };
        let was_in_voice = self.voice.contains(&target);
        out.system(conn, "You have been kicked by the server operator.");
        out.close(conn, CLOSE_POLICY, "Kicked");
        self.announce(out, &format!("{target} was kicked by {OPERATOR}."), now);
        self.remove_connection(out, conn, None, now);
        Ok(json!({ "kicked": target, "was_in_voice": was_in_voice }))
    }

    fn operator_ban(
        &mut self,
        out: &mut Out,
        name: &str,
        duration: Option<Duration>,
        now: Now,
    ) -> AdminReply {
        let target = checked_name(name)?;
        if self.bans.contains(&target) {
            return Err(AdminError::Conflict(format!(
                "{target} is already banned (unban first to change it)"
            )));
        }
        let until = duration.map(|d| Until::after(now, d));
        if self.is_clustered() {
            let was_online = self.online_anywhere(&target);
            let event = ClusterEvent::Ban {
                name: target.clone(),
                until_ms: until.map(|u| u.wall.timestamp_millis().max(0) as u64),
                notice: "You have been banned by the server operator.".into(),
                entry: operator_notice(format!("{target} was banned by {OPERATOR}."), now),
            };
            self.publish(out, None, event);
            return Ok(
                json!({ "banned": target, "until": until.map(|u| u.iso()), "was_online": was_online }),
            );
        }
        self.bans.insert(target.clone());
        match until {
            Some(until) => {
                self.timed_bans.insert(target.clone(), until);
            }
            None => out.push(super::Effect::SaveBan { name: target.clone(), banned: true }),
        }
        let conn = self.names.get(&target).copied();
        if let Some(conn) = conn {
            out.system(conn, "You have been banned by the server operator.");
            out.close(conn, CLOSE_POLICY, "Banned");
        }
        self.announce(out, &format!("{target} was banned by {OPERATOR}."), now);
        if let Some(conn) = conn {
            self.remove_connection(out, conn, None, now);
        }
        Ok(json!({
            "banned": target,
            "until": until.map(|u| u.iso()),
            "was_online": conn.is_some(),
        }))
    }

    fn operator_unban(&mut self, out: &mut Out, name: &str, now: Now) -> AdminReply {
        let target = checked_name(name)?;
        if self.is_clustered() {
            if !self.bans.contains(&target) {
                return Err(AdminError::NotFound(format!("{target} is not banned")));
            }
            let entry = operator_notice(format!("{target} was unbanned by {OPERATOR}."), now);
            self.publish(out, None, ClusterEvent::Unban { name: target.clone(), entry });
            return Ok(json!({ "unbanned": target }));
        }
        if !self.bans.remove(&target) {
            return Err(AdminError::NotFound(format!("{target} is not banned")));
        }
        if self.timed_bans.remove(&target).is_none() {
            out.push(super::Effect::SaveBan { name: target.clone(), banned: false });
        }
        self.announce(out, &format!("{target} was unbanned by {OPERATOR}."), now);
        Ok(json!({ "unbanned": target }))
    }

    fn operator_mute(
        &mut self,
        out: &mut Out,
        name: &str,
        duration: Option<Duration>,
        now: Now,
    ) -> AdminReply {
        let target = checked_name(name)?;
        let until = duration.map(|d| Until::after(now, d));
        if self.is_clustered() {
            let notice = match until {
                Some(until) => format!("You have been muted by the server operator until {}.", until.iso()),
                None => "You have been muted by the server operator.".to_string(),
            };
            let until_ms = until.map(|u| u.wall.timestamp_millis().max(0) as u64);
            self.publish(out, None, ClusterEvent::Mute { name: target.clone(), until_ms, notice });
            return Ok(json!({
                "muted": target,
                "until": until.map(|u| u.iso()),
                "online": self.online_anywhere(&target),
            }));
        }
        self.mutes.insert(target.clone(), until);
        if let Some(conn) = self.names.get(&target).copied() {
            let text = match until {
                Some(until) => format!("You have been muted by the server operator until {}.", until.iso()),
                None => "You have been muted by the server operator.".to_string(),
            };
            out.system(conn, &text);
        }
        Ok(json!({
            "muted": target,
            "until": until.map(|u| u.iso()),
            "online": self.names.contains_key(&target),
        }))
    }

    fn operator_unmute(&mut self, out: &mut Out, name: &str, now: Now) -> AdminReply {
        let target = checked_name(name)?;
        if self.is_clustered() {
            if self.muted(&target, now).is_none() {
                return Err(AdminError::NotFound(format!("{target} is not muted")));
            }
            self.publish(out, None, ClusterEvent::Unmute { name: target.clone() });
            return Ok(json!({ "unmuted": target }));
        }
        if self.mutes.remove(&target).is_none() {
            return Err(AdminError::NotFound(format!("{target} is not muted")));
        }
        if let Some(conn) = self.names.get(&target).copied() {
            out.system(conn, "You are no longer muted.");
        }
        Ok(json!({ "unmuted": target }))
    }

    fn operator_broadcast(&mut self, out: &mut Out, text: &str, now: Now) -> AdminReply {
        let text = text.trim();
        if text.is_empty() {
            return Err(AdminError::BadRequest("the notice is empty".into()));
        }
        if text.chars().count() > MAX_CHAT_CHARS {
            return Err(AdminError::BadRequest(format!(
                "the notice is longer than {MAX_CHAT_CHARS} characters"
            )));
        }
        let recipients = if self.is_clustered() { self.arrival_order.len() } else { self.names.len() };
        self.announce(out, &format!("Server notice: {text}"), now);
        Ok(json!({ "delivered_to": recipients }))
    }

    fn operator_revoke_turn(
        &mut self,
        out: &mut Out,
        name: &str,
        duration: Duration,
        now: Now,
    ) -> AdminReply {
        let target = checked_name(name)?;
        let until = Until::after(now, duration);
        self.voice_revoked.insert(target.clone(), until);
        if let Some(conn) = self.names.get(&target).copied() {
            out.system(
                conn,
                &format!("Your voice chat access was revoked by the server operator until {}.", until.iso()),
            );
        }
        let removed_from_voice = self.leave_voice(out, &target, now);
        Ok(json!({
            "revoked": target,
            "removed_from_voice": removed_from_voice,
            "voice_blocked_until": until.iso(),
        }))
    }

    fn rotate_turn_secret(&mut self, out: &mut Out, secret: Vec<u8>, now: Now) -> AdminReply {
        if self.cluster.is_some() && matches!(self.ice.endpoints, TurnEndpoints::Integrated { .. }) {
            // Every node (this one too) switches when `SecretRotated` is read back.
            let grace_s = match self.settings.admin.turn_secret_grace_s {
                0 => self.settings.turn.credential_ttl_s,
                grace => grace,
            };
            let secret = String::from_utf8_lossy(&secret).into_owned();
            self.publish(out, None, ClusterEvent::SecretRotated { secret, grace_s });
            return Ok(json!({ "credentials_pushed_to": self.voice.len(), "announced_to_cluster": true }));
        }
        let TurnEndpoints::Integrated { secret: current, .. } = &mut self.ice.endpoints else {
            return Err(AdminError::Conflict("the integrated TURN relay is not running".into()));
        };
        *current = secret;
        let pushed = self.voice.len();
        self.voice.refresh_credentials_now(now.mono);
        self.refresh_due_credentials(out, now);
        Ok(json!({ "credentials_pushed_to": pushed }))
    }
}

impl Hub {
    /// Cluster mode: a rotation read back from the log, from any node: this node's relay and
    /// the credentials it hands out switch to the new secret.
    pub(super) fn apply_secret_rotated(&mut self, out: &mut Out, secret: String, grace_s: u64, now: Now) {
        let TurnEndpoints::Integrated { secret: current, .. } = &mut self.ice.endpoints else { return };
        *current = secret.clone().into_bytes();
        out.push(super::Effect::RotateRelaySecret { secret: secret.into_bytes(), grace_s });
        self.voice.refresh_credentials_now(now.mono);
        self.refresh_due_credentials(out, now);
        tracing::info!("TURN secret rotated cluster-wide");
    }
}

/// A persisted notice of an operator action, stamped now.
fn operator_notice(text: String, now: Now) -> HistoryEntry {
    HistoryEntry {
        kind: HistoryKind::System,
        username: None,
        text,
        timestamp: crate::protocol::iso_timestamp(now.wall),
    }
}

/// A user name by the name rules (3-20 letters, digits, `_`, `-`), or why not.
fn checked_name(name: &str) -> Result<String, AdminError> {
    let name = name.trim();
    if is_valid_username(name) {
        Ok(name.to_string())
    } else {
        Err(AdminError::BadRequest(format!(
            "{name:?} is not a valid user name (3-20 letters, digits, _ or -)"
        )))
    }
}
