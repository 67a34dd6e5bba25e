//! What a clustered hub asks of the store (name claims and releases, publishes) and how it
//! takes the answers that are not log entries: a claim lost or refused, a write that failed or
//! may have, names another node took while this one was cut off.

use super::{system_entry, ClaimPurpose, PendingClaim, PublishFailure};
use super::{ClaimOutcome, CLOSE_TRY_AGAIN_LATER, NAME_LOST, STORE_DOWN_CONNECT, STORE_DOWN_NICK};
use super::{STORE_DOWN_NOT_SENT, STORE_SLOW_MAYBE_SENT};
use crate::cluster::event::ClusterEvent;
use crate::hub::{ConnId, Effect, Hub, Now, Out, CLOSE_POLICY};

impl Hub {
    /// Asks the store for `name` on behalf of `conn`.
    pub(in crate::hub) fn claim_name(
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
    pub(in crate::hub) fn release_name(
        &self,
        out: &mut Out,
        conn: ConnId,
        name: &str,
        suffix: &str,
        now: Now,
    ) {
        let Some(owner) = self.local_owner(conn) else { return };
        let entry = system_entry(format!("{name} has left.{suffix}"), now);
        let event = ClusterEvent::UserLeft { name: name.to_string(), owner: owner.clone(), entry };
        out.push(Effect::ReleaseName { name: name.to_string(), owner, event });
    }

    /// Clustered: log a change (the broadcast happens when it is read back).
    pub(in crate::hub) fn publish(&self, out: &mut Out, origin: Option<ConnId>, event: ClusterEvent) {
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

    /// A change from `conn` could not be written, or may not have been.
    pub fn publish_failed(&mut self, conn: ConnId, failure: PublishFailure, _now: Now) -> Vec<Effect> {
        let mut out = Out::default();
        if self.connections.contains_key(&conn) {
            let text = match failure {
                PublishFailure::NotWritten => STORE_DOWN_NOT_SENT,
                PublishFailure::MaybeWritten => STORE_SLOW_MAYBE_SENT,
            };
            out.system(conn, text);
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
    pub(super) fn drop_local_user(&mut self, out: &mut Out, conn: ConnId, now: Now) {
        let Some(connection) = self.connections.remove(&conn) else { return };
        self.connection_limiter.release(connection.ip, now.mono);
        if let Some(name) = connection.name {
            self.leave_voice(out, &name, now);
            self.names.remove(&name);
        }
    }
}
