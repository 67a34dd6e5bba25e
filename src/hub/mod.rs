//! The hub: the single owner of chat and voice state, as a sans-IO state machine.
//!
//! Every input is a method call carrying the time (`Now`); every output is an `Effect` in the
//! returned list (send this frame to that connection, persist this notice, close that socket,
//! tell the relay that someone left voice). No sockets, no `.await`, no clock reads, no disk: the
//! `runner` module carries effects out. That makes each protocol rule a deterministic unit test.
//!
//! - `chat`: connection sequence, authentication, chat, typing, ping, heartbeat.
//! - `commands`: the `/` commands.
//! - `voice`: the WebRTC room and signaling relay.
//! - `effect`: the `Effect`s every method returns, and `Out`, which collects them.
//! - `notices`: system and voice notices to the room, and the history they are kept in.
//! - `limits`: pure rate-limit helpers.
//! - `lanes`: the runner's inbound lanes (signaling before connects/disconnects before chat).
//! - `relay_only`: the privacy boundary (force_relay rebuilds everything a peer receives).
//! - `admin`: operator requests from the admin API (list, kick, ban, mute, revoke, rotate);
//!   `operator_limits`: the bans, mutes and voice revocations they leave behind, and expiry.
//! - `cluster`: cluster mode, where shared changes go through the Redis log and come back as
//!   `ClusterEvent`s every node applies in the same order.

mod admin;
pub mod budget;
mod chat;
mod cluster;
mod commands;
mod effect;
pub mod lanes;
pub mod limits;
mod notices;
mod operator_limits;
pub mod relay_only;
pub mod runner;
mod voice;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;

use crate::config::Settings;
use crate::ice_servers::IceServerIssuer;
use crate::protocol::{HistoryEntry, Inbound};

use limits::{ConnectionLimiter, LoginLimiter, RegisterLimiter, SlidingWindow};
use relay_only::{PrivacyTally, RelayAddresses};
use voice::VoiceRoom;

pub use effect::Effect;
use effect::Out;
use notices::{voice_notice, VoiceNotices};

pub use admin::{AdminError, AdminReply, AdminRequest};
pub use cluster::{ClaimOutcome, PublishFailure, VoiceOutcome, CLOSE_TRY_AGAIN_LATER};
use operator_limits::Until;

pub type ConnId = u64;

/// WebSocket close codes the hub asks for.
pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_POLICY: u16 = 1008;

/// The time of an event: monotonic for timers, wall clock for timestamps and credential expiry.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub mono: Instant,
    pub wall: DateTime<Utc>,
}

impl Now {
    pub fn current() -> Self {
        Self { mono: Instant::now(), wall: Utc::now() }
    }

    pub fn unix(&self) -> u64 {
        self.wall.timestamp().max(0) as u64
    }
}

/// What a new connection brings: who it claims to be and where it comes from.
#[derive(Debug, Clone)]
pub struct ConnectInfo {
    pub ip: IpAddr,
    /// The `username` query parameter, if any.
    pub requested_name: Option<String>,
    /// The Host header the client used (TURN URLs name the same host).
    pub host: String,
    /// 64 hex chars from a CSPRNG, made by the caller.
    pub token: String,
    /// Admitted by the invite gate: the fresh member pass to hand the client.
    pub member_pass: Option<String>,
}

#[derive(Debug)]
struct Connection {
    ip: IpAddr,
    /// When the socket was accepted (shown to the operator).
    connected_at: DateTime<Utc>,
    host: String,
    token: String,
    /// Set once the user is welcomed (open mode at once; auth mode after /login).
    name: Option<String>,
    last_ping: Instant,
    chat_window: SlidingWindow,
    last_nick_change: Option<Instant>,
    /// Names whose chat this user does not want to see, until when.
    blocked: HashMap<String, Instant>,
    login_in_progress: bool,
    /// Came in with an invite or a member pass (may /register when registration = "invite").
    invited: bool,
    /// What this connection may still send, per message type.
    budget: budget::MessageBudget,
    /// Cluster mode: a name asked of the store, not yet confirmed by the log.
    claim: Option<cluster::PendingClaim>,
    /// Cluster mode: the TURN user of a voice seat asked of the store, not yet confirmed.
    voice_pending: Option<String>,
}

/// Server-wide counts for /server-info and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub connected_users: usize,
    pub voice_participants: usize,
}

pub struct Hub {
    settings: Arc<Settings>,
    ice: IceServerIssuer,
    connections: HashMap<ConnId, Connection>,
    /// Welcomed users of this node by name.
    names: HashMap<String, ConnId>,
    /// Online names in order of arrival (for /list); clustered, those on other nodes too.
    arrival_order: Vec<String>,
    history: VecDeque<HistoryEntry>,
    bans: HashSet<String>,
    /// Bans the operator gave a duration (also in `bans`; kept in memory only).
    timed_bans: HashMap<String, Until>,
    /// Names the operator muted (chat only), until when (`None`: until unmuted).
    mutes: HashMap<String, Option<Until>>,
    /// Names whose TURN access the operator revoked: no voice join until then.
    voice_revoked: HashMap<String, operator_limits::VoiceRevocation>,
    /// Accounts the operator flagged admin (refreshed from the store while running).
    admins: HashSet<String>,
    /// `[chat] admins`: names /register may not take.
    reserved_names: HashSet<String>,
    connection_limiter: ConnectionLimiter,
    login_limiter: LoginLimiter,
    register_limiter: RegisterLimiter,
    voice: VoiceRoom,
    /// The addresses a relayed candidate may carry under force_relay.
    relays: RelayAddresses,
    /// What force_relay removed, by reason.
    privacy: PrivacyTally,
    /// Voice notices persisted per user in the current interval: when the interval started, how
    /// many, and whether the last one said "joined". Past the allowance, notices are shown live
    /// only; once the interval has passed, the history is brought up to the user's real state
    /// (one notice) and the entry dropped.
    voice_notice_persisted: HashMap<String, VoiceNotices>,
    rng: StdRng,
    last_prune: Option<Instant>,
    /// Cluster mode (`None`: single node).
    cluster: Option<cluster::Replica>,
}

impl Hub {
    pub fn new(
        settings: Arc<Settings>,
        ice: IceServerIssuer,
        history: Vec<HistoryEntry>,
        bans: HashSet<String>,
        rng: StdRng,
    ) -> Self {
        let limit = settings.chat.history_limit;
        let mut history: VecDeque<HistoryEntry> = history.into();
        while history.len() > limit {
            history.pop_front();
        }
        Self {
            admins: HashSet::new(),
            reserved_names: settings.chat.admins.iter().cloned().collect(),
            connection_limiter: ConnectionLimiter::new(settings.limits.clone()),
            register_limiter: RegisterLimiter::from_settings(&settings),
            voice: VoiceRoom::default(),
            settings,
            ice,
            connections: HashMap::new(),
            names: HashMap::new(),
            arrival_order: Vec::new(),
            history,
            bans,
            timed_bans: HashMap::new(),
            mutes: HashMap::new(),
            voice_revoked: HashMap::new(),
            login_limiter: LoginLimiter::default(),
            relays: RelayAddresses::default(),
            privacy: PrivacyTally::default(),
            voice_notice_persisted: HashMap::new(),
            rng,
            last_prune: None,
            cluster: None,
        }
    }

    /// The relays this server hands out (integrated and external), known once the relay is up.
    /// Until set, force_relay lets no candidate through (fail closed).
    pub fn with_relay_addresses(mut self, relays: RelayAddresses) -> Self {
        self.relays = relays;
        self
    }

    /// The accounts flagged admin at start.
    pub fn with_admins(mut self, admins: HashSet<String>) -> Self {
        self.admins = admins;
        self
    }

    /// The operator changed who is admin (read again from the store): takes effect at once,
    /// also for admins already logged in.
    pub fn set_admins(&mut self, admins: HashSet<String>) {
        self.admins = admins;
    }

    pub fn stats(&self) -> Stats {
        Stats { connected_users: self.names.len(), voice_participants: self.voice.len() }
    }

    /// What force_relay removed since start-up.
    pub fn privacy_tally(&self) -> PrivacyTally {
        self.privacy
    }

    /// A WebSocket was accepted.
    pub fn connect(&mut self, conn: ConnId, info: ConnectInfo, now: Now) -> Vec<Effect> {
        let mut out = Out::default();
        self.on_connect(&mut out, conn, info, now);
        out.effects
    }

    /// A text frame arrived.
    pub fn message(&mut self, conn: ConnId, inbound: Inbound, now: Now) -> Vec<Effect> {
        let mut out = Out::default();
        self.on_message(&mut out, conn, inbound, now);
        out.effects
    }

    /// The socket is gone (closed by either side). Unknown connections are ignored, so the
    /// runner may report every socket end, including ones the hub already removed.
    pub fn disconnect(&mut self, conn: ConnId, now: Now) -> Vec<Effect> {
        let mut out = Out::default();
        self.remove_connection(&mut out, conn, None, now);
        out.effects
    }

    /// The store answered a `CreateAccount`: `Ok(true)` created, `Ok(false)` name taken.
    pub fn account_created(&mut self, conn: ConnId, result: Result<bool, String>, now: Now) -> Vec<Effect> {
        let mut out = Out::default();
        self.on_account_created(&mut out, conn, result, now);
        out.effects
    }

    /// The store and the password hash answered a `CheckLogin`.
    pub fn login_checked(&mut self, conn: ConnId, name: String, ok: bool, now: Now) -> Vec<Effect> {
        let mut out = Out::default();
        self.on_login_checked(&mut out, conn, name, ok, now);
        out.effects
    }

    /// Timers: heartbeat timeouts, credential refresh, pruning of limiter state.
    pub fn tick(&mut self, now: Now) -> Vec<Effect> {
        let mut out = Out::default();
        let timeout = Duration::from_millis(self.settings.chat.heartbeat_timeout_ms);
        let mut timed_out: Vec<ConnId> = self
            .connections
            .iter()
            .filter(|(_, c)| now.mono.duration_since(c.last_ping) >= timeout)
            .map(|(&id, _)| id)
            .collect();
        timed_out.sort_unstable();
        for conn in timed_out {
            out.system(conn, "Disconnected: Heartbeat timeout (no ping received)");
            out.close(conn, CLOSE_POLICY, "Heartbeat timeout");
            self.remove_connection(&mut out, conn, None, now);
        }
        self.refresh_due_credentials(&mut out, now);
        self.settle_voice_notices(&mut out, now);
        self.expire_operator_limits(now);
        let prune_due = self.last_prune.is_none_or(|t| now.mono.duration_since(t) >= Duration::from_secs(60));
        if prune_due {
            self.connection_limiter.prune(now.mono);
            self.login_limiter.prune(now.mono);
            self.register_limiter.prune(now.mono);
            self.last_prune = Some(now.mono);
        }
        out.effects
    }

    /// Graceful shutdown: every user sees every named user announced as gone, the relay is
    /// told everyone left voice, every socket is closed.
    pub fn shutdown(&mut self, now: Now) -> Vec<Effect> {
        let mut out = Out::default();
        if self.is_clustered() {
            // The others see this node's users leave; its own closes follow.
            for name in self.arrival_order.clone() {
                if let Some(&conn) = self.names.get(&name) {
                    self.release_name(&mut out, conn, &name, " (Server Shutdown)", now);
                }
            }
        } else {
            for name in self.arrival_order.clone() {
                self.announce(&mut out, &format!("{name} has left. (Server Shutdown)"), now);
            }
        }
        for turn_user in std::mem::take(&mut self.voice).turn_users() {
            out.push(Effect::VoiceLeft { turn_user });
        }
        let mut ids: Vec<ConnId> = self.connections.keys().copied().collect();
        ids.sort_unstable();
        for conn in ids {
            out.close(conn, CLOSE_GOING_AWAY, "Server shutdown");
        }
        self.connections.clear();
        self.names.clear();
        self.arrival_order.clear();
        out.effects
    }

    /// Connections of welcomed users, in arrival order (deterministic output for tests).
    fn welcomed_connections(&self) -> Vec<ConnId> {
        self.arrival_order.iter().filter_map(|name| self.names.get(name).copied()).collect()
    }

    /// Removes a connection and everything hanging off it: voice seat, name, limiter slot.
    /// `suffix` is appended to the "has left." notice (shutdown says why).
    fn remove_connection(&mut self, out: &mut Out, conn: ConnId, suffix: Option<&str>, now: Now) {
        let Some(connection) = self.connections.remove(&conn) else { return };
        self.connection_limiter.release(connection.ip, now.mono);
        if self.is_clustered() {
            // A seat still being taken is freed too (after it, in the writer's order).
            if let (Some(turn_user), Some(name)) = (&connection.voice_pending, &connection.name) {
                self.publish_voice_left(out, name, turn_user.clone(), now);
            }
            // A claim still under way is released too (after it, in the writer's order).
            if let Some(claim) = connection.claim {
                self.release_name(out, conn, &claim.name, suffix.unwrap_or(""), now);
            }
            if let Some(name) = connection.name {
                self.leave_voice(out, &name, now);
                self.names.remove(&name);
                // Listed until the log says it left, like on every other node.
                self.release_name(out, conn, &name, suffix.unwrap_or(""), now);
            }
            return;
        }
        if let Some(name) = connection.name {
            self.leave_voice(out, &name, now);
            self.names.remove(&name);
            self.arrival_order.retain(|n| n != &name);
            self.announce(out, &format!("{name} has left.{}", suffix.unwrap_or("")), now);
        }
    }
}

/// `^[A-Za-z0-9_-]{3,20}$`
pub fn is_valid_username(name: &str) -> bool {
    (3..=20).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests;
