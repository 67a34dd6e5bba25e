//! Chat: the connection sequence, authentication, chat messages, typing, ping and the
//! dispatch of every inbound message to the right rule.

use std::time::Duration;

use rand::Rng;

use super::budget::{Admission, MessageClass};
use super::cluster::{ClaimPurpose, CLOSE_TRY_AGAIN_LATER, STORE_DOWN_CONNECT, STORE_DOWN_NOT_SENT};
use super::{is_valid_username, ConnId, ConnectInfo, Connection, Effect, Hub, Now, Out, CLOSE_POLICY};
use crate::cluster::event::ClusterEvent;
use crate::config::Registration;
use crate::protocol::HistoryEntry;
use crate::protocol::{iso_timestamp, ClientMessage, HistoryKind, Inbound, ServerMessage};

pub const MAX_CHAT_CHARS: usize = 2000;
pub const MAX_CHAT_BYTES: usize = 5120;
const USERNAME_MAX_CHARS: usize = 20;
pub const LOGIN_UNAVAILABLE: &str =
    "Login is unavailable: the account store is unreachable. Try again in a moment.";
pub const REGISTRATION_CLOSED: &str =
    "Registration is closed on this server: ask its operator for an account.";
pub const REGISTRATION_NEEDS_INVITE: &str =
    "Registration on this server needs an invite: open the invite link you were given.";

impl Hub {
    pub(super) fn on_connect(&mut self, out: &mut Out, conn: ConnId, info: ConnectInfo, now: Now) {
        if self.cluster_store_down() {
            out.system(conn, STORE_DOWN_CONNECT);
            out.close(conn, CLOSE_TRY_AGAIN_LATER, "Cluster store unreachable");
            return;
        }
        if let Err(refusal) = self.connection_limiter.admit(info.ip, now.mono) {
            out.system(conn, &refusal.to_string());
            out.close(conn, CLOSE_POLICY, "Connection refused");
            return;
        }
        out.send(conn, &ServerMessage::SessionToken { token: &info.token });
        if let Some(pass) = &info.member_pass {
            out.send(conn, &ServerMessage::MemberPass { pass });
        }
        let chat = &self.settings.chat;
        out.send(
            conn,
            &ServerMessage::HeartbeatConfig {
                interval: chat.heartbeat_interval_ms,
                timeout: chat.heartbeat_timeout_ms,
            },
        );
        self.connections.insert(
            conn,
            Connection {
                ip: info.ip,
                connected_at: now.wall,
                host: info.host,
                token: info.token,
                name: None,
                last_ping: now.mono,
                chat_window: Default::default(),
                last_nick_change: None,
                blocked: Default::default(),
                login_in_progress: false,
                invited: info.member_pass.is_some(),
                budget: Default::default(),
                claim: None,
                voice_pending: None,
            },
        );
        if self.settings.chat.authentication {
            out.system(
                conn,
                "Authentication required. Use /register <username> <password> or /login <username> <password> in message content.",
            );
            return;
        }
        let name = match info.requested_name {
            // Clamp like the original (20 chars), then validate.
            Some(requested) => requested.chars().take(USERNAME_MAX_CHARS).collect(),
            None => self.anonymous_name(),
        };
        if !is_valid_username(&name) {
            out.system(conn, "Illegal username.");
            out.system(conn, "Requirement: 3-20 characters alphanumeric.");
            self.refuse(out, conn, now);
        } else if self.bans.contains(&name) {
            out.system(conn, "You are banned.");
            self.refuse(out, conn, now);
        } else if self.name_taken(&name) {
            out.system(conn, "Username taken.");
            self.refuse(out, conn, now);
        } else if self.is_clustered() {
            self.claim_name(out, conn, name, ClaimPurpose::Connect, now);
        } else {
            self.welcome(out, conn, name, now);
        }
    }

    /// Closes a connection that never became a user.
    pub(super) fn refuse(&mut self, out: &mut Out, conn: ConnId, now: Now) {
        out.close(conn, CLOSE_POLICY, "Refused");
        self.remove_connection(out, conn, None, now);
    }

    /// `Anonymous` + 4 random digits, like the original; with thousands of anonymous users
    /// online (all 4-digit names nearly taken) it widens to more digits instead of looping.
    fn anonymous_name(&mut self) -> String {
        for digits in [4u32, 4, 4, 4, 6, 8, 11] {
            let name = format!(
                "Anonymous{:0width$}",
                self.rng.random_range(0..10u64.pow(digits)),
                width = digits as usize
            );
            if !self.name_taken(&name) {
                return name;
            }
        }
        format!("Anonymous{}", self.rng.random_range(10u64.pow(10)..10u64.pow(11)))
    }

    /// Steps 3-5 of the connection sequence: history, MOTD, the "has joined." broadcast.
    pub(super) fn welcome(&mut self, out: &mut Out, conn: ConnId, name: String, now: Now) {
        let Some(connection) = self.connections.get_mut(&conn) else { return };
        connection.name = Some(name.clone());
        self.names.insert(name.clone(), conn);
        self.arrival_order.push(name.clone());
        let history: Vec<_> = self.history.iter().cloned().collect();
        out.send(conn, &ServerMessage::History { messages: &history });
        if !self.settings.server.motd.is_empty() {
            out.system(conn, &format!("MOTD: {}", self.settings.server.motd));
        }
        self.announce(out, &format!("{name} has joined."), now);
    }

    pub(super) fn on_message(&mut self, out: &mut Out, conn: ConnId, inbound: Inbound, now: Now) {
        let Some(connection) = self.connections.get_mut(&conn) else { return };
        let class = match &inbound {
            Inbound::Malformed => Some(MessageClass::Other),
            Inbound::Message { message, .. } => MessageClass::of(message),
        };
        if let Some(class) = class {
            match connection.budget.admit(class, &self.settings.message_budgets, now.mono) {
                Admission::Allowed => {}
                Admission::Dropped => {
                    // A join that gets no answer would leave a client waiting; everything else
                    // over budget is simply not acted on.
                    if class == MessageClass::VoiceMembership {
                        self.webrtc_error(
                            out,
                            conn,
                            "Too many voice join/leave requests. Please wait a moment.",
                            now,
                        );
                    }
                    return;
                }
                Admission::Disconnect => {
                    out.close(conn, CLOSE_POLICY, "Too many messages");
                    return;
                }
            }
        }
        let Some(connection) = self.connections.get(&conn) else { return };
        // Before login (authentication mode) the original answers with its login handler's texts.
        let before_login = self.settings.chat.authentication && connection.name.is_none();
        let Inbound::Message { token, message } = inbound else {
            let text = if before_login {
                "Invalid message format. Must be JSON."
            } else {
                "Invalid message format."
            };
            out.system(conn, text);
            return;
        };
        if token.as_deref() != Some(connection.token.as_str()) {
            if message.is_webrtc() {
                self.webrtc_error(out, conn, "Invalid session token", now);
            } else {
                out.system(conn, "Invalid session token.");
            }
            return;
        }
        if before_login && !matches!(message, ClientMessage::Ping | ClientMessage::Chat { content: Some(_) })
        {
            out.system(
                conn,
                "Please authenticate first using /register or /login commands in message content.",
            );
            return;
        }
        match message {
            ClientMessage::Ping => self.on_ping(out, conn, now),
            ClientMessage::Typing => self.on_typing(out, conn, now),
            ClientMessage::Chat { content: Some(content) } => self.on_chat(out, conn, &content, now),
            ClientMessage::Chat { content: None } | ClientMessage::Unknown => {
                out.system(conn, "Invalid message structure.");
            }
            webrtc => self.on_webrtc(out, conn, webrtc, now),
        }
    }

    fn on_ping(&mut self, out: &mut Out, conn: ConnId, now: Now) {
        if let Some(connection) = self.connections.get_mut(&conn) {
            connection.last_ping = now.mono;
        }
        out.send(conn, &ServerMessage::Pong { timestamp: &iso_timestamp(now.wall) });
    }

    fn on_typing(&mut self, out: &mut Out, conn: ConnId, now: Now) {
        let Some(name) = self.name_of(conn) else { return };
        let recipients: Vec<ConnId> = self
            .welcomed_connections()
            .into_iter()
            .filter(|&other| other != conn && !self.has_blocked(other, &name, now))
            .collect();
        out.broadcast(
            recipients,
            &ServerMessage::Typing { username: &name, timestamp: &iso_timestamp(now.wall) },
        );
    }

    pub(super) fn name_of(&self, conn: ConnId) -> Option<String> {
        self.connections.get(&conn).and_then(|c| c.name.clone())
    }

    /// Does the user on `conn` currently hide `name`'s chat?
    pub(super) fn has_blocked(&self, conn: ConnId, name: &str, now: Now) -> bool {
        self.connections.get(&conn).and_then(|c| c.blocked.get(name)).is_some_and(|&until| until > now.mono)
    }

    fn on_chat(&mut self, out: &mut Out, conn: ConnId, content: &str, now: Now) {
        let limit = self.settings.chat.max_messages_per_second;
        let Some(connection) = self.connections.get_mut(&conn) else { return };
        if !connection.chat_window.try_record(now.mono, limit as usize, Duration::from_secs(1)) {
            out.system(conn, &format!("You are sending messages too fast. Limit is {limit} per second."));
            return;
        }
        let text = content.trim();
        if text.chars().count() > MAX_CHAT_CHARS {
            out.system(conn, "Your message is too long. Max 2000 characters.");
            return;
        }
        if text.len() > MAX_CHAT_BYTES {
            out.system(conn, "Your message is too large. Max 5KB.");
            return;
        }
        let Some(name) = connection.name.clone() else {
            self.on_unauthenticated_chat(out, conn, text, now);
            return;
        };
        if text.is_empty() {
            return;
        }
        if text.starts_with('/') && self.on_command(out, conn, &name, text, now) {
            return;
        }
        if let Some(until) = self.muted(&name, now) {
            let text = match until {
                Some(until) => {
                    format!("You are muted by the server operator until {}.", iso_timestamp(until.wall))
                }
                None => "You are muted by the server operator.".to_string(),
            };
            out.system(conn, &text);
            return;
        }
        if self.is_clustered() {
            // Delivered (to the sender too) when read back from the log.
            if self.cluster_store_down() {
                out.system(conn, STORE_DOWN_NOT_SENT);
                return;
            }
            let entry = HistoryEntry {
                kind: HistoryKind::Chat,
                username: Some(name),
                text: text.to_string(),
                timestamp: iso_timestamp(now.wall),
            };
            self.publish(out, Some(conn), ClusterEvent::Chat { entry });
            return;
        }
        self.record(out, HistoryKind::Chat, Some(&name), text, now);
        let timestamp = iso_timestamp(now.wall);
        let recipients: Vec<ConnId> = self
            .welcomed_connections()
            .into_iter()
            .filter(|&other| !self.has_blocked(other, &name, now))
            .collect();
        out.broadcast(recipients, &ServerMessage::Chat { username: &name, text, timestamp: &timestamp });
    }

    /// Before login only /register and /login are understood.
    fn on_unauthenticated_chat(&mut self, out: &mut Out, conn: ConnId, text: &str, now: Now) {
        let mut words = text.split_whitespace();
        let command = words.next().unwrap_or("");
        if command != "/register" && command != "/login" {
            out.system(conn, "Please authenticate first using /register or /login commands.");
            return;
        }
        let (Some(name), Some(password)) = (words.next(), words.next()) else {
            out.system(conn, "Username and password required.");
            return;
        };
        if !is_valid_username(name) {
            out.system(conn, "Illegal username. Requirement: 3-20 characters alphanumeric.");
            return;
        }
        if !(8..=32).contains(&password.chars().count()) {
            out.system(conn, "Password length invalid. Must be 8-32 characters.");
            return;
        }
        if self.bans.contains(name) {
            out.system(conn, "You are banned.");
            out.close(conn, CLOSE_POLICY, "Banned");
            return;
        }
        let Some(connection) = self.connections.get_mut(&conn) else { return };
        if connection.login_in_progress {
            out.system(conn, "Please wait, your previous request is still being processed.");
            return;
        }
        let (name, password) = (name.to_string(), password.to_string());
        if command == "/register" {
            match self.settings.chat.registration {
                Registration::Open => {}
                Registration::Invite if connection.invited => {}
                Registration::Invite => {
                    out.system(conn, REGISTRATION_NEEDS_INVITE);
                    return;
                }
                Registration::Closed => {
                    out.system(conn, REGISTRATION_CLOSED);
                    return;
                }
            }
            if !self.register_limiter.try_attempt(connection.ip, now.mono) {
                out.system(conn, &self.register_limiter.refusal());
                return;
            }
            connection.login_in_progress = true;
            let reserved = self.reserved_names.contains(&name);
            out.push(Effect::CreateAccount { conn, name, password, reserved });
            return;
        }
        let ip = connection.ip;
        if self.login_limiter.is_blocked(ip, &name, now.mono) {
            out.system(conn, "Too many failed attempts. Blocked for 1 hour.");
            return;
        }
        if let Some(connection) = self.connections.get_mut(&conn) {
            connection.login_in_progress = true;
        }
        out.push(Effect::CheckLogin { conn, name, password });
    }

    pub(super) fn on_account_created(
        &mut self,
        out: &mut Out,
        conn: ConnId,
        result: Result<bool, String>,
        _now: Now,
    ) {
        let Some(connection) = self.connections.get_mut(&conn) else { return };
        connection.login_in_progress = false;
        match result {
            Ok(true) => out.system(conn, "Registered. Please /login."),
            Ok(false) => out.system(conn, "Username exists."),
            Err(problem) => {
                tracing::error!("account store failed: {problem}");
                out.system(
                    conn,
                    "Registration failed: the server could not save the account. Try again later.",
                );
            }
        }
    }

    /// The account store did not answer a `CheckLogin` (cluster mode: Redis unreachable). Not a
    /// wrong password: it must not count towards the 1-hour block.
    pub fn login_unavailable(&mut self, conn: ConnId, _now: Now) -> Vec<Effect> {
        let mut out = Out::default();
        let Some(connection) = self.connections.get_mut(&conn) else { return out.effects };
        connection.login_in_progress = false;
        out.system(conn, LOGIN_UNAVAILABLE);
        out.effects
    }

    pub(super) fn on_login_checked(&mut self, out: &mut Out, conn: ConnId, name: String, ok: bool, now: Now) {
        let Some(connection) = self.connections.get_mut(&conn) else { return };
        connection.login_in_progress = false;
        let ip = connection.ip;
        if !ok {
            // The failure that starts the block still answers "Login failed." (the original's
            // text); the next attempt hears about the block.
            self.login_limiter.record_failure(ip, &name, now.mono);
            out.system(conn, "Login failed.");
            return;
        }
        self.login_limiter.record_success(ip, &name);
        if self.bans.contains(&name) {
            out.system(conn, "You are banned.");
            out.close(conn, CLOSE_POLICY, "Banned");
            self.remove_connection(out, conn, None, now);
            return;
        }
        if self.name_taken(&name) {
            out.system(conn, "Username in use.");
            out.close(conn, CLOSE_POLICY, "Username in use");
            self.remove_connection(out, conn, None, now);
            return;
        }
        if self.is_clustered() {
            self.claim_name(out, conn, name, ClaimPurpose::Login, now);
            return;
        }
        self.welcome(out, conn, name, now);
    }
}
