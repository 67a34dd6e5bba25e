//! The `/` commands: /help /list /nick /block /unblock /kick /ban /unban, with the original's
//! reply texts. Anything else that starts with `/` is not a command here: it goes out as chat.

use std::time::Duration;

use super::cluster::{ClaimPurpose, STORE_DOWN_NICK, STORE_DOWN_NOT_SENT};
use super::limits::js_seconds;
use super::{is_valid_username, ConnId, Effect, Hub, Now, Out, CLOSE_POLICY};
use crate::cluster::event::ClusterEvent;
use crate::protocol::{iso_timestamp, HistoryEntry, HistoryKind};

/// A persisted notice stamped now.
fn notice(text: String, now: Now) -> HistoryEntry {
    HistoryEntry { kind: HistoryKind::System, username: None, text, timestamp: iso_timestamp(now.wall) }
}

pub const HELP_TEXT: &str = "/nick <name> - Change your nickname (disabled if authentication is enabled).\n\
/list - List online users.\n\
/kick <username> - Kick a user (admins only).\n\
/ban <username> - Ban a user (admins only).\n\
/unban <username> - Unban a user (admins only).\n\
/block <username> - Block a user for 12 hours.\n\
/unblock <username> - Unblock a user.\n\
/help - Show this help message.";

const BLOCK_DURATION: Duration = Duration::from_secs(12 * 3600);
/// Names one connection may have blocked at once. Every target must be online when blocked, but
/// over 12 hours a busy server shows many names; at the cap the block closest to expiring goes.
pub const MAX_BLOCKED: usize = 256;

/// The original cuts names to 20 characters before checking them (`clampUsername`).
const USERNAME_MAX_CHARS: usize = 20;

impl Hub {
    /// Runs a built-in command; false when `text` is not one, so that the caller broadcasts it
    /// as ordinary chat like the original does (bots implement `/roll` and friends that way).
    pub(super) fn on_command(
        &mut self,
        out: &mut Out,
        conn: ConnId,
        name: &str,
        text: &str,
        now: Now,
    ) -> bool {
        let (command, rest) = match text.split_once(char::is_whitespace) {
            Some((command, rest)) => (command, rest.trim()),
            None => (text, ""),
        };
        match command {
            // The original matches these two only as the whole message: "/help me" is chat.
            "/help" if rest.is_empty() => out.system(conn, HELP_TEXT),
            "/list" if rest.is_empty() => self.list_users(out, conn, now),
            "/nick" => self.change_nick(out, conn, name, rest, now),
            "/block" => self.block(out, conn, name, rest, now),
            "/unblock" => self.unblock(out, conn, rest),
            "/kick" => self.kick(out, conn, name, rest, now),
            "/ban" => self.ban(out, conn, name, rest, now),
            "/unban" => self.unban(out, conn, name, rest, now),
            // Never broadcast: the rest of the line is a password.
            "/register" | "/login" => out.system(conn, "You are already logged in."),
            _ => return false,
        }
        true
    }

    fn list_users(&self, out: &mut Out, conn: ConnId, now: Now) {
        let names: Vec<String> = self
            .arrival_order
            .iter()
            .map(|n| if self.has_blocked(conn, n, now) { format!("[B]{n}") } else { n.clone() })
            .collect();
        out.system(conn, &format!("Online users: {}", names.join(", ")));
    }

    fn change_nick(&mut self, out: &mut Out, conn: ConnId, old: &str, rest: &str, now: Now) {
        if self.settings.chat.authentication {
            out.system(conn, "Nick change is disabled on authentication servers.");
            return;
        }
        // The original renames a bare "/nick" to "Anonymous"; we ask for a name instead.
        if rest.is_empty() {
            out.system(conn, "Usage: /nick <name>");
            return;
        }
        // A new name would shed a mute or a TURN revocation, which hold for the name.
        if self.muted(old, now).is_some() || self.voice_revoked_until(old, now).is_some() {
            out.system(conn, "You cannot change your nickname while restricted by the server operator.");
            return;
        }
        let cooldown_ms = self.settings.chat.nick_change_cooldown_ms;
        let cooldown = Duration::from_millis(cooldown_ms);
        let Some(connection) = self.connections.get(&conn) else { return };
        if let Some(last) = connection.last_nick_change {
            let elapsed = now.mono.duration_since(last);
            if elapsed < cooldown {
                let wait = (cooldown - elapsed).as_secs_f64().ceil() as u64;
                let every = js_seconds(cooldown_ms);
                out.system(
                    conn,
                    &format!(
                        "You can only change your nickname once every {every} seconds. Please wait {wait} more seconds."
                    ),
                );
                return;
            }
        }
        let new = clamp_username(rest);
        if !is_valid_username(&new) {
            out.system(
                conn,
                "Illegal username. Must be 3-20 characters, only letters, digits, underscore, dash.",
            );
            return;
        }
        // Your own name counts as taken, as in the original; a banned name too (the original
        // let anyone take it).
        if self.name_taken(&new) || self.bans.contains(&new) {
            out.system(conn, &format!("Username \"{new}\" is already taken."));
            return;
        }
        // TURN credentials and peers' connections are bound to the name: renaming mid-call
        // would tear the call down, so ask the user to leave first.
        // A seat still being taken counts: it is taken under the old name, and a rename would
        // leave nobody able to free it.
        if self.voice.contains(old) || connection.voice_pending.is_some() {
            out.system(conn, "Leave voice chat before changing your nick.");
            return;
        }
        if self.is_clustered() {
            // Renamed when the log confirms it (`NickChanged`), on every node alike.
            if self.cluster_store_down() {
                out.system(conn, STORE_DOWN_NICK);
            } else if connection.claim.is_some() {
                out.system(conn, "Please wait, your previous request is still being processed.");
            } else {
                self.claim_name(out, conn, new, ClaimPurpose::Nick { old: old.to_string() }, now);
            }
            return;
        }
        if let Some(connection) = self.connections.get_mut(&conn) {
            connection.name = Some(new.clone());
            connection.last_nick_change = Some(now.mono);
        }
        self.names.remove(old);
        self.names.insert(new.clone(), conn);
        for entry in &mut self.arrival_order {
            if entry == old {
                *entry = new.clone();
            }
        }
        self.announce(out, &format!("{old} is now {new}"), now);
    }

    /// The online user `wanted` names, ignoring case like the original's /block and /unblock
    /// (an exact match first: names are case-sensitive, so "bob" and "Bob" may both be online).
    fn find_online_ignoring_case(&self, wanted: &str) -> Option<String> {
        if self.name_taken(wanted) {
            return Some(wanted.to_string());
        }
        let lower = wanted.to_lowercase();
        self.arrival_order.iter().find(|n| n.to_lowercase() == lower).cloned()
    }

    fn block(&mut self, out: &mut Out, conn: ConnId, name: &str, rest: &str, now: Now) {
        if rest.is_empty() {
            out.system(conn, "Usage: /block <username>");
            return;
        }
        let lower = rest.to_lowercase();
        if lower == name.to_lowercase() {
            out.system(conn, "You cannot block yourself.");
            return;
        }
        let Some(target) = self.find_online_ignoring_case(rest) else {
            out.system(conn, &format!("User \"{lower}\" not found."));
            return;
        };
        if let Some(connection) = self.connections.get_mut(&conn) {
            let blocked = &mut connection.blocked;
            blocked.retain(|_, until| *until > now.mono);
            if blocked.len() >= MAX_BLOCKED && !blocked.contains_key(&target) {
                if let Some(oldest) = blocked.iter().min_by_key(|(_, until)| **until).map(|(n, _)| n.clone())
                {
                    blocked.remove(&oldest);
                }
            }
            blocked.insert(target.clone(), now.mono + BLOCK_DURATION);
        }
        out.system(conn, &format!("You have blocked {target} for 12 hours."));
    }

    fn unblock(&mut self, out: &mut Out, conn: ConnId, rest: &str) {
        if rest.is_empty() {
            out.system(conn, "Usage: /unblock <username>");
            return;
        }
        let lower = rest.to_lowercase();
        let Some(connection) = self.connections.get_mut(&conn) else { return };
        // Blocks are by name here (the original blocks an IP), so a blocked user who went
        // offline can still be unblocked.
        let blocked = if connection.blocked.contains_key(rest) {
            Some(rest.to_string())
        } else {
            connection.blocked.keys().find(|n| n.to_lowercase() == lower).cloned()
        };
        match blocked.and_then(|n| connection.blocked.remove(&n).map(|_| n)) {
            Some(target) => out.system(conn, &format!("You have unblocked {target}.")),
            None => out.system(conn, &format!("{lower} was not blocked.")),
        }
    }

    /// The checks /kick, /ban and /unban share; the clamped, valid target name if they pass.
    /// Admins only, and only where names are proven (authentication mode).
    fn moderation_target(
        &self,
        out: &mut Out,
        conn: ConnId,
        admin: &str,
        verb: &str,
        rest: &str,
    ) -> Option<String> {
        // Admin is an operator-set flag on the account, never the config list alone.
        if !self.settings.chat.authentication || !self.admins.contains(admin) {
            out.system(conn, &format!("You do not have permission to use /{verb}."));
            return None;
        }
        if rest.is_empty() {
            out.system(conn, &format!("Please specify a username to {verb}."));
            return None;
        }
        let target = clamp_username(rest);
        if !is_valid_username(&target) {
            out.system(conn, &format!("Illegal username in /{verb} command."));
            return None;
        }
        Some(target)
    }

    fn kick(&mut self, out: &mut Out, conn: ConnId, admin: &str, rest: &str, now: Now) {
        let Some(target) = self.moderation_target(out, conn, admin, "kick", rest) else { return };
        if self.is_clustered() {
            // The user may be on any node; the node holding them closes them.
            if !self.online_anywhere(&target) || target == admin {
                out.system(conn, &format!("User \"{target}\" not found."));
            } else if self.cluster_store_down() {
                out.system(conn, STORE_DOWN_NOT_SENT);
            } else {
                let event = ClusterEvent::Kick {
                    name: target.clone(),
                    notice: "You have been kicked by an admin.".into(),
                    entry: notice(format!("{target} was kicked by {admin}."), now),
                };
                self.publish(out, Some(conn), event);
            }
            return;
        }
        // Yourself is "not found", as in the original.
        let Some(target_conn) = self.names.get(&target).copied().filter(|&c| c != conn) else {
            out.system(conn, &format!("User \"{target}\" not found."));
            return;
        };
        out.system(target_conn, "You have been kicked by an admin.");
        out.close(target_conn, CLOSE_POLICY, "Kicked");
        self.announce(out, &format!("{target} was kicked by {admin}."), now);
        self.remove_connection(out, target_conn, None, now);
    }

    fn ban(&mut self, out: &mut Out, conn: ConnId, admin: &str, rest: &str, now: Now) {
        let Some(target) = self.moderation_target(out, conn, admin, "ban", rest) else { return };
        // The original lets an admin ban themselves; that locks the account out for good.
        if target == admin {
            out.system(conn, "You cannot ban yourself.");
            return;
        }
        if self.bans.contains(&target) {
            out.system(conn, &format!("{target} is already banned."));
            return;
        }
        if self.is_clustered() {
            if self.cluster_store_down() {
                out.system(conn, STORE_DOWN_NOT_SENT);
                return;
            }
            let event = ClusterEvent::Ban {
                name: target.clone(),
                until_ms: None,
                notice: "You have been banned by an admin.".into(),
                entry: notice(format!("{target} was banned by {admin}."), now),
            };
            self.publish(out, Some(conn), event);
            if !self.online_anywhere(&target) {
                out.system(conn, &format!("User \"{target}\" is now banned."));
            }
            return;
        }
        self.bans.insert(target.clone());
        out.push(Effect::SaveBan { name: target.clone(), banned: true });
        let target_conn = self.names.get(&target).copied();
        if let Some(target_conn) = target_conn {
            out.system(target_conn, "You have been banned by an admin.");
            out.close(target_conn, CLOSE_POLICY, "Banned");
        }
        self.announce(out, &format!("{target} was banned by {admin}."), now);
        match target_conn {
            Some(target_conn) => self.remove_connection(out, target_conn, None, now),
            None => out.system(conn, &format!("User \"{target}\" is now banned.")),
        }
    }

    fn unban(&mut self, out: &mut Out, conn: ConnId, admin: &str, rest: &str, now: Now) {
        let Some(target) = self.moderation_target(out, conn, admin, "unban", rest) else { return };
        if self.is_clustered() {
            if !self.bans.contains(&target) {
                out.system(conn, &format!("{target} is not banned."));
            } else if self.cluster_store_down() {
                out.system(conn, STORE_DOWN_NOT_SENT);
            } else {
                let entry = notice(format!("{target} was unbanned by {admin}."), now);
                self.publish(out, Some(conn), ClusterEvent::Unban { name: target.clone(), entry });
                out.system(conn, &format!("{target} has been unbanned."));
            }
            return;
        }
        if !self.bans.remove(&target) {
            out.system(conn, &format!("{target} is not banned."));
            return;
        }
        // A timed ban from the admin API ends here too (its timer must not outlive it and lift
        // a later ban).
        self.timed_bans.remove(&target);
        out.push(Effect::SaveBan { name: target.clone(), banned: false });
        out.system(conn, &format!("{target} has been unbanned."));
        self.announce(out, &format!("{target} was unbanned by {admin}."), now);
    }
}

/// The original's `clampUsername`: the first 20 characters.
fn clamp_username(name: &str) -> String {
    name.chars().take(USERNAME_MAX_CHARS).collect()
}
