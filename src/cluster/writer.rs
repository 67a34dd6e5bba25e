//! The writer: one task that carries out this node's changes to the cluster store, in the order
//! the hub made them (a claim before the user's first chat, a release after their last), and
//! the heartbeat that keeps the node and its users' names alive and reaps dead nodes.
//!
//! The runner never waits for it: it `try_send`s into a bounded queue (`WRITE_QUEUE`); a full
//! queue or a failed write comes back to the hub as an answer the user sees ("not sent",
//! "try again"). What could not be released while Redis was away is kept (bounded) and
//! released once it is back.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::{Script, ScriptInvocation};
use tokio::sync::{mpsc, oneshot};

use super::event::{ClusterEvent, Owner, RoutedSignal, SeatRecord};
use super::scripts::Scripts;
use super::{ClusterContext, HISTORY_EXACT_TRIM_UP_TO, HISTORY_HARD_CAP, INBOX_MAX_ENTRIES, LOG_MAX_ENTRIES};
use crate::config::HistorySettings;
use crate::hub::runner::{HubEvent, HubHandle};
use crate::hub::{ClaimOutcome, ConnId, VoiceOutcome};
use crate::protocol::{iso_timestamp, HistoryEntry};
use crate::turn::relay_socket::ClusterRelays;

/// Releases kept while Redis is away; beyond, the oldest is dropped (its name key still
/// expires after the presence TTL, but the others keep listing it until this node restarts).
pub const MAX_PENDING_RELEASES: usize = 65_536;
/// Pause between PINGs while the connection manager reconnects.
const RECONNECT_PAUSE: Duration = Duration::from_millis(50);
/// Redis answered and refused the command itself (an `ERR` reply such as a script error, or an
/// answer of the wrong shape): the store is up, and the same command would be refused again.
fn refused(e: &redis::RedisError) -> bool {
    matches!(
        e.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError)
            | redis::ErrorKind::UnexpectedReturnType
    )
}

/// How often ended timed bans and mutes are removed from the store.
const RESTRICTION_PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// Between attempts at start-up to release what a previous run left, while Redis is away.
const START_RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Dead nodes reaped per heartbeat.
const MAX_REAPS_PER_HEARTBEAT: usize = 16;

/// One change for the cluster store.
#[derive(Debug)]
pub enum ClusterCommand {
    /// Claim `name` for `conn` (renaming from `previous`); the hub hears `NameClaimed`.
    Claim { conn: ConnId, name: String, previous: Option<String>, event: ClusterEvent },
    /// Let go of `name` if `owner` still holds it.
    Release { name: String, owner: Owner, event: ClusterEvent },
    /// Log a change (chat, notice, moderation); `origin` hears `PublishFailed` if it fails.
    Publish { origin: Option<ConnId>, event: ClusterEvent },
    /// Renew the node and the names it holds.
    Heartbeat { names: Vec<(String, Owner)> },
    /// Take a voice seat for `conn` (`event` is its `VoiceJoined`); the hub hears `VoiceSeated`.
    JoinVoice { conn: ConnId, name: String, max: usize, event: ClusterEvent },
    /// Signaling for a voice member on another node: into that node's inbox.
    Route(RoutedSignal),
    /// Answered once every command queued before it is done (shutdown).
    Flush(oneshot::Sender<()>),
}

/// The history entry an event stores in `{ns}:history`, if any.
pub fn history_entry(event: &ClusterEvent) -> Option<&HistoryEntry> {
    match event {
        ClusterEvent::UserJoined { entry, .. } => entry.as_ref(),
        ClusterEvent::UserLeft { entry, .. }
        | ClusterEvent::Chat { entry }
        | ClusterEvent::System { entry }
        | ClusterEvent::NickChanged { entry, .. }
        | ClusterEvent::Ban { entry, .. }
        | ClusterEvent::Unban { entry, .. }
        | ClusterEvent::Kick { entry, .. }
        | ClusterEvent::VoiceJoined { entry, .. }
        | ClusterEvent::VoiceLeft { entry, .. } => Some(entry),
        ClusterEvent::Mute { .. }
        | ClusterEvent::Unmute { .. }
        | ClusterEvent::NodeGone { .. }
        | ClusterEvent::MediaChanged { .. }
        | ClusterEvent::SecretRotated { .. } => None,
    }
}

/// The publish script's stored change for an event: op, name, until (0: no end).
fn stored_change(event: &ClusterEvent) -> (&'static str, &str, u64) {
    match event {
        ClusterEvent::Ban { name, until_ms, .. } => ("ban", name, until_ms.unwrap_or(0)),
        ClusterEvent::Unban { name, .. } => ("unban", name, 0),
        ClusterEvent::Mute { name, until_ms, .. } => ("mute", name, until_ms.unwrap_or(0)),
        ClusterEvent::Unmute { name } => ("unmute", name, 0),
        ClusterEvent::SecretRotated { secret, .. } => ("secret", secret, 0),
        _ => ("", "", 0),
    }
}

fn entry_json(event: &ClusterEvent) -> String {
    history_entry(event).map(|entry| serde_json::to_string(entry).unwrap_or_default()).unwrap_or_default()
}

pub struct Writer {
    ctx: ClusterContext,
    conn: ConnectionManager,
    scripts: Scripts,
    hub: HubHandle,
    /// This node's record (`{ns}:node:{id}`).
    node_record: String,
    history_cap: u64,
    history: HistorySettings,
    /// Since when every command has succeeded (reaping others needs a whole TTL of it).
    up_since: Option<Instant>,
    /// Releases (and voice seat releases) that failed: retried before the next heartbeat.
    pending_releases: VecDeque<ClusterCommand>,
    last_age_trim: Option<Instant>,
    last_restriction_prune: Option<Instant>,
    /// The relay peer policy's set of the cluster's relays (none without a relay).
    relays: Option<Arc<ClusterRelays>>,
    /// The nodes' relay addresses as last learned.
    known_relays: Vec<IpAddr>,
}

impl Writer {
    pub fn new(
        ctx: ClusterContext,
        hub: HubHandle,
        node_record: String,
        history: HistorySettings,
        relays: Option<Arc<ClusterRelays>>,
    ) -> anyhow::Result<Self> {
        let history_cap = match history.retention_max_messages {
            0 => HISTORY_HARD_CAP,
            n => n.min(HISTORY_HARD_CAP),
        };
        Ok(Self {
            conn: ctx.manager()?,
            ctx,
            scripts: Scripts::new(),
            hub,
            node_record,
            history_cap,
            history,
            up_since: None,
            pending_releases: VecDeque::new(),
            last_age_trim: None,
            last_restriction_prune: None,
            relays,
            known_relays: Vec::new(),
        })
    }

    /// Runs until the runner drops its sender.
    pub async fn run(mut self, mut commands: mpsc::Receiver<ClusterCommand>) {
        self.release_previous_run(&commands).await;
        while let Some(command) = commands.recv().await {
            self.carry_out(command).await;
        }
    }

    fn set_up(&mut self, ok: bool) {
        let was = self.ctx.status.writer_up.swap(ok, Ordering::Relaxed);
        if ok && self.up_since.is_none() {
            self.up_since = Some(Instant::now());
        }
        if !ok {
            self.up_since = None;
        }
        if was != ok {
            if ok {
                tracing::info!(node = %self.ctx.node_id, "cluster store reachable again: writing");
            } else {
                tracing::warn!(node = %self.ctx.node_id, "cluster store unreachable: changes are refused");
            }
        }
    }

    /// The script with the common keys (log, history, online) and arguments (caps) first.
    fn invocation<'a>(&self, script: &'a Script, keys: &[String]) -> ScriptInvocation<'a> {
        let mode = if self.history_cap <= HISTORY_EXACT_TRIM_UP_TO { "=" } else { "~" };
        let mut invocation = script.key(self.ctx.keys.log());
        invocation.key(self.ctx.keys.history()).key(self.ctx.keys.online());
        for key in keys {
            invocation.key(key);
        }
        invocation.arg(LOG_MAX_ENTRIES).arg(self.history_cap).arg(mode);
        invocation
    }

    /// After a failure (or the reader losing Redis) the connection is suspect: a PING, retried
    /// once the manager has reconnected, comes first, so that a change is never sent into a
    /// dead connection and never retried after it may have been applied.
    async fn ensure_connected(&mut self) {
        if self.ctx.status.writer_up.load(Ordering::Relaxed) {
            return;
        }
        for _ in 0..3 {
            let pong: redis::RedisResult<String> =
                redis::cmd("PING").query_async(&mut self.conn.clone()).await;
            if pong.is_ok() {
                return;
            }
            tokio::time::sleep(RECONNECT_PAUSE).await;
        }
    }

    async fn carry_out(&mut self, command: ClusterCommand) {
        if !matches!(command, ClusterCommand::Flush(_)) {
            self.ensure_connected().await;
        }
        match command {
            ClusterCommand::Claim { conn, name, previous, event } => {
                let outcome = self.claim(conn, &name, previous.as_deref(), &event).await;
                self.hub.send(HubEvent::NameClaimed { conn, name, outcome }).await;
            }
            ClusterCommand::Release { name, owner, event } => {
                if !self.release(&name, &owner, &event).await {
                    self.keep_for_retry(ClusterCommand::Release { name, owner, event });
                }
            }
            ClusterCommand::Publish { origin, event } => {
                if !self.publish(&event).await {
                    self.ctx.status.publish_failures.fetch_add(1, Ordering::Relaxed);
                    if let Some(conn) = origin {
                        self.hub.send(HubEvent::PublishFailed { conn }).await;
                    }
                    if matches!(event, ClusterEvent::VoiceLeft { .. }) {
                        // A seat must not outlive its user: freed once Redis is back.
                        self.keep_for_retry(ClusterCommand::Publish { origin: None, event });
                    }
                }
            }
            ClusterCommand::Heartbeat { names } => {
                self.ctx.status.heartbeat_queued.store(false, Ordering::Relaxed);
                self.heartbeat(names).await
            }
            ClusterCommand::JoinVoice { conn, name, max, event } => {
                let outcome = self.join_voice(&name, max, &event).await;
                self.hub.send(HubEvent::VoiceSeated { conn, name, outcome }).await;
            }
            ClusterCommand::Route(signal) => self.route(signal).await,
            ClusterCommand::Flush(done) => {
                let _ = done.send(());
            }
        }
    }

    async fn claim(
        &mut self,
        conn: ConnId,
        name: &str,
        previous: Option<&str>,
        event: &ClusterEvent,
    ) -> ClaimOutcome {
        let owner = Owner { node: self.ctx.node_id.clone(), conn };
        let ttl = self.ctx.settings.presence_ttl_ms;
        let result: redis::RedisResult<i64> = match previous {
            None => {
                let keys = [self.ctx.keys.name(name), self.ctx.keys.bans()];
                let mut invocation = self.invocation(&self.scripts.claim, &keys);
                invocation
                    .arg(owner.to_string())
                    .arg(ttl)
                    .arg(event.to_json())
                    .arg(entry_json(event))
                    .arg(name);
                invocation.invoke_async(&mut self.conn.clone()).await
            }
            Some(old) => {
                let keys = [self.ctx.keys.name(name), self.ctx.keys.name(old), self.ctx.keys.bans()];
                let mut invocation = self.invocation(&self.scripts.rename, &keys);
                invocation
                    .arg(owner.to_string())
                    .arg(ttl)
                    .arg(event.to_json())
                    .arg(entry_json(event))
                    .arg(name)
                    .arg(old);
                invocation.invoke_async(&mut self.conn.clone()).await
            }
        };
        match result {
            Ok(won) => {
                self.set_up(true);
                match won {
                    1 => ClaimOutcome::Won,
                    -1 => ClaimOutcome::Banned,
                    _ => ClaimOutcome::Taken,
                }
            }
            Err(e) => {
                tracing::warn!(user = name, "cluster name claim failed: {e}");
                self.set_up(false);
                ClaimOutcome::StoreDown
            }
        }
    }

    fn keep_for_retry(&mut self, command: ClusterCommand) {
        if self.pending_releases.len() >= MAX_PENDING_RELEASES {
            self.pending_releases.pop_front();
        }
        self.pending_releases.push_back(command);
    }

    /// True once Redis has answered (whether or not the name was still ours).
    async fn release(&mut self, name: &str, owner: &Owner, event: &ClusterEvent) -> bool {
        let mut invocation = self.invocation(&self.scripts.release, &[self.ctx.keys.name(name)]);
        invocation.arg(owner.to_string()).arg(event.to_json()).arg(entry_json(event)).arg(name);
        let result: redis::RedisResult<i64> = invocation.invoke_async(&mut self.conn.clone()).await;
        match result {
            Ok(_) => {
                self.set_up(true);
                true
            }
            Err(e) => {
                tracing::warn!(user = name, "cluster name release failed (retried later): {e}");
                self.set_up(refused(&e));
                false
            }
        }
    }

    async fn join_voice(&mut self, name: &str, max: usize, event: &ClusterEvent) -> VoiceOutcome {
        let ClusterEvent::VoiceJoined { owner, turn_user, media, .. } = event else {
            return VoiceOutcome::StoreDown;
        };
        let seat = SeatRecord {
            node: owner.node.clone(),
            conn: owner.conn,
            turn_user: turn_user.clone(),
            media: media.clone(),
        };
        let seat = serde_json::to_string(&seat).unwrap_or_default();
        let mut invocation = self.invocation(&self.scripts.voice_join, &[self.ctx.keys.voice()]);
        invocation.arg(name).arg(seat).arg(max).arg(event.to_json()).arg(entry_json(event));
        let result: redis::RedisResult<i64> = invocation.invoke_async(&mut self.conn.clone()).await;
        match result {
            Ok(answer) => {
                self.set_up(true);
                match answer {
                    1 => VoiceOutcome::Seated,
                    0 => VoiceOutcome::Full,
                    _ => VoiceOutcome::AlreadySeated,
                }
            }
            Err(e) => {
                tracing::warn!(user = name, "cluster voice join failed: {e}");
                self.set_up(false);
                VoiceOutcome::StoreDown
            }
        }
    }

    async fn route(&mut self, signal: RoutedSignal) {
        let inbox = self.ctx.keys.inbox(&signal.node);
        let json = serde_json::to_string(&signal).unwrap_or_default();
        let result: redis::RedisResult<String> = redis::cmd("XADD")
            .arg(inbox)
            .arg("MAXLEN")
            .arg("~")
            .arg(INBOX_MAX_ENTRIES)
            .arg("*")
            .arg("s")
            .arg(json)
            .query_async(&mut self.conn.clone())
            .await;
        match result {
            Ok(_) => self.set_up(true),
            Err(e) => {
                // Like a lost UDP packet to WebRTC: the peers' own retries and ICE restarts cover it.
                tracing::warn!(to = %signal.node, "routing signaling to another node failed: {e}");
                self.set_up(false);
            }
        }
    }

    async fn publish(&mut self, event: &ClusterEvent) -> bool {
        if let ClusterEvent::VoiceLeft { name, turn_user, .. } = event {
            let mut invocation = self.invocation(&self.scripts.voice_leave, &[self.ctx.keys.voice()]);
            invocation.arg(name).arg(turn_user).arg(event.to_json()).arg(entry_json(event));
            let result: redis::RedisResult<i64> = invocation.invoke_async(&mut self.conn.clone()).await;
            return match result {
                Ok(_) => {
                    self.set_up(true);
                    true
                }
                Err(e) => {
                    tracing::warn!("cluster voice leave failed: {e}");
                    self.set_up(false);
                    false
                }
            };
        }
        let (op, name, until) = stored_change(event);
        let keys = [self.ctx.keys.bans(), self.ctx.keys.mutes(), self.ctx.keys.turn_secret()];
        let mut invocation = self.invocation(&self.scripts.publish, &keys);
        invocation.arg(event.to_json()).arg(entry_json(event)).arg(op).arg(name).arg(until);
        let result: redis::RedisResult<i64> = invocation.invoke_async(&mut self.conn.clone()).await;
        match result {
            Ok(_) => {
                self.set_up(true);
                true
            }
            Err(e) => {
                tracing::warn!("cluster publish failed: {e}");
                self.set_up(refused(&e));
                false
            }
        }
    }

    async fn heartbeat(&mut self, names: Vec<(String, Owner)>) {
        // Releases that failed while Redis was away go first: the hub has forgotten those.
        while let Some(command) = self.pending_releases.pop_front() {
            let done = match &command {
                ClusterCommand::Release { name, owner, event } => self.release(name, owner, event).await,
                ClusterCommand::Publish { event, .. } => self.publish(event).await,
                _ => true,
            };
            if !done {
                if self.ctx.status.writer_up.load(Ordering::Relaxed) {
                    // Redis answered and refused it (a script error on junk data): it would be
                    // refused again, and block every later heartbeat.
                    tracing::error!(?command, "dropped a parked cluster change Redis refuses");
                    continue;
                }
                self.pending_releases.push_front(command);
                return;
            }
        }
        let node = self.ctx.node_id.clone();
        let keys = [self.ctx.keys.nodes(), self.ctx.keys.node(&node)];
        let mut invocation = self.invocation(&self.scripts.heartbeat, &keys);
        invocation
            .arg(&node)
            .arg(self.ctx.settings.presence_ttl_ms)
            .arg(&self.node_record)
            .arg(self.ctx.keys.name_prefix())
            .arg(self.ctx.keys.node_prefix());
        for (name, owner) in &names {
            let rejoin = ClusterEvent::UserJoined { name: name.clone(), owner: owner.clone(), entry: None };
            invocation.arg(name).arg(owner.to_string()).arg(rejoin.to_json());
        }
        let result: redis::RedisResult<(Vec<String>, Vec<String>, Vec<String>)> =
            invocation.invoke_async(&mut self.conn.clone()).await;
        let (lost, expired, records) = match result {
            Ok(answer) => answer,
            Err(e) => {
                tracing::debug!("cluster heartbeat failed: {e}");
                self.set_up(false);
                return;
            }
        };
        self.set_up(true);
        self.ctx.status.nodes_alive.store(records.len() as u64, Ordering::Relaxed);
        self.learn_relays(&records).await;
        if !lost.is_empty() {
            tracing::warn!(?lost, "names taken by another node while this one was cut off");
            self.hub.send(HubEvent::NamesLost { names: lost }).await;
        }
        // Only a node that has itself been connected for a whole TTL reaps: after a Redis
        // outage every node's record has expired, and the live ones need one heartbeat to renew.
        let ttl = Duration::from_millis(self.ctx.settings.presence_ttl_ms);
        if self.up_since.is_some_and(|since| since.elapsed() >= ttl) {
            for dead in expired.iter().filter(|dead| **dead != node).take(MAX_REAPS_PER_HEARTBEAT) {
                self.reap(dead).await;
            }
        }
        self.trim_by_age().await;
        self.prune_restrictions().await;
    }

    /// Timed bans and mutes that ended leave their hashes (every node lifted them already).
    async fn prune_restrictions(&mut self) {
        if self.last_restriction_prune.is_some_and(|at| at.elapsed() < RESTRICTION_PRUNE_INTERVAL) {
            return;
        }
        self.last_restriction_prune = Some(Instant::now());
        let mut invocation = self.scripts.prune_restrictions.key(self.ctx.keys.bans());
        invocation.key(self.ctx.keys.mutes());
        let result: redis::RedisResult<u64> = invocation.invoke_async(&mut self.conn.clone()).await;
        match result {
            Ok(0) => {}
            Ok(dropped) => tracing::info!(dropped, "removed ended timed bans and mutes from the store"),
            Err(e) => tracing::warn!("pruning ended bans and mutes failed: {e}"),
        }
    }

    /// The relay addresses of every live node (their records): the relay's peer policy and the
    /// hub's force_relay rebuild accept exactly these, plus this node's own.
    async fn learn_relays(&mut self, records: &[String]) {
        let mut ips: Vec<IpAddr> = records
            .iter()
            .filter_map(|record| serde_json::from_str::<serde_json::Value>(record).ok())
            .flat_map(|record| {
                record["relay_addresses"]
                    .as_array()
                    .map(|list| {
                        list.iter().filter_map(|a| a.as_str()?.parse::<IpAddr>().ok()).collect::<Vec<_>>()
                    })
                    .unwrap_or_default()
            })
            .collect();
        ips.sort();
        ips.dedup();
        if ips == self.known_relays {
            return;
        }
        tracing::info!(?ips, "relay addresses of the cluster's nodes");
        self.known_relays = ips.clone();
        if let Some(relays) = &self.relays {
            relays.set(ips.iter().copied());
        }
        self.hub.send(HubEvent::ClusterRelays { ips }).await;
    }

    /// A node restarted under the same id (after kill -9 systemd restarts it within seconds)
    /// would find its previous run's users still online and seated: nobody reaps them (this run
    /// renews the node's record) and connection numbers start again at 1, so they would stay
    /// forever or pass for this run's. Before anything else is written, they go, as `NodeGone`
    /// so that every node announces the leaves. (A per-start suffix in the owner would need
    /// the reaper of a dead run to find it, with no record naming it; this needs nothing new.)
    async fn release_previous_run(&mut self, commands: &mpsc::Receiver<ClusterCommand>) {
        let node = self.ctx.node_id.clone();
        while !commands.is_closed() {
            let keys = [
                self.ctx.keys.nodes(),
                self.ctx.keys.node(&node),
                self.ctx.keys.voice(),
                self.ctx.keys.inbox(&node),
            ];
            let mut invocation = self.invocation(&self.scripts.reap, &keys);
            invocation
                .arg(&node)
                .arg(self.ctx.keys.name_prefix())
                .arg(iso_timestamp(chrono::Utc::now()))
                .arg("own");
            let result: redis::RedisResult<i64> = invocation.invoke_async(&mut self.conn.clone()).await;
            match result {
                Ok(released) => {
                    if released == 1 {
                        tracing::warn!(node, "released the users and seats a previous run of this node left");
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(node, "cannot release what a previous run left yet: {e}");
                    tokio::time::sleep(START_RETRY_PAUSE).await;
                }
            }
        }
    }

    async fn reap(&mut self, dead: &str) {
        let keys = [
            self.ctx.keys.nodes(),
            self.ctx.keys.node(dead),
            self.ctx.keys.voice(),
            self.ctx.keys.inbox(dead),
        ];
        let mut invocation = self.invocation(&self.scripts.reap, &keys);
        invocation.arg(dead).arg(self.ctx.keys.name_prefix()).arg(iso_timestamp(chrono::Utc::now()));
        let result: redis::RedisResult<i64> = invocation.invoke_async(&mut self.conn.clone()).await;
        match result {
            Ok(1) => tracing::warn!(node = dead, "reaped a node that stopped renewing its record"),
            Ok(_) => {}
            Err(e) => tracing::warn!(node = dead, "reaping failed: {e}"),
        }
    }

    /// `[history] retention_max_days`: drops entries older than that (stream IDs are ms times).
    async fn trim_by_age(&mut self) {
        if self.history.retention_max_days == 0 {
            return;
        }
        let interval = Duration::from_secs(self.history.prune_interval_s.max(1));
        if self.last_age_trim.is_some_and(|at| at.elapsed() < interval) {
            return;
        }
        self.last_age_trim = Some(Instant::now());
        let keep_ms = self.history.retention_max_days.min(100_000) * 86_400_000;
        let cutoff = (chrono::Utc::now().timestamp_millis().max(0) as u64).saturating_sub(keep_ms);
        let result: redis::RedisResult<u64> = redis::cmd("XTRIM")
            .arg(self.ctx.keys.history())
            .arg("MINID")
            .arg("~")
            .arg(cutoff)
            .query_async(&mut self.conn.clone())
            .await;
        if let Err(e) = result {
            tracing::warn!("history trim by age failed: {e}");
        }
    }
}
