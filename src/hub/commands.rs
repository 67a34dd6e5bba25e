//! The `/` commands: /help /list /nick /block /unblock /kick /ban /unban.

use std::time::Duration;

use super::{is_valid_username, ConnId, Effect, Hub, Now, Out, CLOSE_POLICY};

pub const HELP_TEXT: &str = "/nick <name> - Change your nickname (disabled if authentication is enabled).\n\
/list - List online users.\n\
/kick <username> - Kick a user (admins only).\n\
/ban <username> - Ban a user (admins only).\n\
/unban <username> - Unban a user (admins only).\n\
/block <username> - Block a user for 12 hours.\n\
/unblock <username> - Unblock a user.\n\
/help - Show this help message.";

const BLOCK_DURATION: Duration = Duration::from_secs(12 * 3600);

impl Hub {
    pub(super) fn on_command(&mut self, out: &mut Out, conn: ConnId, name: &str, text: &str, now: Now) {
        let mut words = text.split_whitespace();
        let command = words.next().unwrap_or("");
        let argument = words.next();
        match command {
            "/help" => out.system(conn, HELP_TEXT),
            "/list" => self.list_users(out, conn, now),
            "/nick" => self.change_nick(out, conn, name, argument, now),
            "/block" => self.block(out, conn, name, argument, now),
            "/unblock" => self.unblock(out, conn, argument),
            "/kick" | "/ban" | "/unban" => self.moderate(out, conn, name, command, argument, now),
            "/register" | "/login" => out.system(conn, "You are already logged in."),
            _ => out.system(conn, "Unknown command. Type /help for the list of commands."),
        }
    }

    fn list_users(&self, out: &mut Out, conn: ConnId, now: Now) {
        let names: Vec<String> = self
            .arrival_order
            .iter()
            .map(|n| if self.has_blocked(conn, n, now) { format!("[B]{n}") } else { n.clone() })
            .collect();
        out.system(conn, &format!("Online users: {}", names.join(", ")));
    }

    fn change_nick(&mut self, out: &mut Out, conn: ConnId, old: &str, new: Option<&str>, now: Now) {
        if self.settings.chat.authentication {
            out.system(conn, "Nick change is disabled on authentication servers.");
            return;
        }
        let Some(new) = new else {
            out.system(conn, "Usage: /nick <name>");
            return;
        };
        let cooldown = Duration::from_millis(self.settings.chat.nick_change_cooldown_ms);
        let Some(connection) = self.connections.get(&conn) else { return };
        if let Some(last) = connection.last_nick_change {
            let elapsed = now.mono.duration_since(last);
            if elapsed < cooldown {
                let wait = (cooldown - elapsed).as_secs_f64().ceil() as u64;
                out.system(conn, &format!("You can change your nick again in {wait}s."));
                return;
            }
        }
        if !is_valid_username(new) {
            out.system(conn, "Illegal username. Requirement: 3-20 characters alphanumeric.");
            return;
        }
        if new == old {
            out.system(conn, "That is already your name.");
            return;
        }
        if self.names.contains_key(new) || self.bans.contains(new) {
            out.system(conn, "Username taken.");
            return;
        }
        // TURN credentials and peers' connections are bound to the name: renaming mid-call
        // would tear the call down, so ask the user to leave first.
        if self.voice.contains(old) {
            out.system(conn, "Leave voice chat before changing your nick.");
            return;
        }
        if let Some(connection) = self.connections.get_mut(&conn) {
            connection.name = Some(new.to_string());
            connection.last_nick_change = Some(now.mono);
        }
        self.names.remove(old);
        self.names.insert(new.to_string(), conn);
        for entry in &mut self.arrival_order {
            if entry == old {
                *entry = new.to_string();
            }
        }
        self.announce(out, &format!("{old} is now {new}"), now);
    }

    fn block(&mut self, out: &mut Out, conn: ConnId, name: &str, target: Option<&str>, now: Now) {
        let Some(target) = target else {
            out.system(conn, "Usage: /block <username>");
            return;
        };
        if target == name {
            out.system(conn, "You cannot block yourself.");
            return;
        }
        if let Some(connection) = self.connections.get_mut(&conn) {
            connection.blocked.insert(target.to_string(), now.mono + BLOCK_DURATION);
        }
        out.system(conn, &format!("You blocked {target} for 12 hours."));
    }

    fn unblock(&mut self, out: &mut Out, conn: ConnId, target: Option<&str>) {
        let Some(target) = target else {
            out.system(conn, "Usage: /unblock <username>");
            return;
        };
        let removed = self.connections.get_mut(&conn).and_then(|c| c.blocked.remove(target)).is_some();
        if removed {
            out.system(conn, &format!("You unblocked {target}."));
        } else {
            out.system(conn, &format!("{target} is not blocked."));
        }
    }

    /// /kick, /ban, /unban: admins only, and only where names are proven (authentication mode).
    fn moderate(
        &mut self,
        out: &mut Out,
        conn: ConnId,
        admin: &str,
        command: &str,
        target: Option<&str>,
        now: Now,
    ) {
        let verb = &command[1..];
        if !self.settings.chat.authentication || !self.admins.contains(admin) {
            out.system(conn, &format!("You do not have permission to use {command}."));
            return;
        }
        let Some(target) = target else {
            out.system(conn, &format!("Usage: {command} <username>"));
            return;
        };
        if target == admin && verb != "unban" {
            out.system(conn, &format!("You cannot {verb} yourself."));
            return;
        }
        let target_conn = self.names.get(target).copied();
        match verb {
            "kick" => {
                let Some(target_conn) = target_conn else {
                    out.system(conn, &format!("User {target} is not online."));
                    return;
                };
                self.announce(out, &format!("{target} was kicked by {admin}."), now);
                out.close(target_conn, CLOSE_POLICY, "Kicked");
                self.remove_connection(out, target_conn, None, now);
            }
            "ban" => {
                self.bans.insert(target.to_string());
                out.push(Effect::SaveBan { name: target.to_string(), banned: true });
                self.announce(out, &format!("{target} was banned by {admin}."), now);
                if let Some(target_conn) = target_conn {
                    out.system(target_conn, "You are banned.");
                    out.close(target_conn, CLOSE_POLICY, "Banned");
                    self.remove_connection(out, target_conn, None, now);
                }
            }
            _ => {
                if !self.bans.remove(target) {
                    out.system(conn, &format!("User {target} is not banned."));
                    return;
                }
                out.push(Effect::SaveBan { name: target.to_string(), banned: false });
                self.announce(out, &format!("{target} was unbanned by {admin}."), now);
            }
        }
    }
}
