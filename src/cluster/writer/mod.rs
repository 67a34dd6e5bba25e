//! The writer: one task that carries out this node's changes to the cluster store, in the order
//! the hub made them (a claim before the user's first chat, a release after their last), and
//! the heartbeat that keeps the node and its users' names alive and reaps dead nodes.
//!
//! The runner never waits for it: it `try_send`s into a bounded queue (`WRITE_QUEUE`); a full
//! queue or a failed write comes back to the hub as an answer the user sees ("not sent",
//! "may not have been sent", "try again"). What could not be released while Redis was away is
//! kept (bounded) and released once it is back.
//!
//! It takes whatever is queued at once (up to `WRITE_BATCH` commands) and sends each run of
//! consecutive publishes (chat, notices, moderation) as one `publish` script call: one round
//! trip and one AOF fsync for the run instead of one per message, in the same order, still
//! atomic per call and still written before any reader can see it. Without this a node in
//! cluster mode delivered about a tenth of single-node mode's chat rate: every message waited
//! for the previous one's round trip, and every log read brought back about one entry, so the
//! hub fanned out one message per step.
//!
//! The heartbeat has a lane of its own (one slot, taken before the queue): a queue full of
//! claims and chat must not hold it back past the presence TTL.
//!
//! Children: `publish` (the batched log appends and how a failure is told), `presence` (name
//! claims and releases, voice seats, routed signaling), `heartbeat` (node record, renewals,
//! reaping, relay registry, trimming by age).

mod heartbeat;
mod presence;
mod publish;

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::{Script, ScriptInvocation};
use tokio::sync::{mpsc, oneshot};

use super::event::{ClusterEvent, Owner, RoutedSignal};
use super::scripts::Scripts;
use super::{ClusterContext, HISTORY_EXACT_TRIM_UP_TO, HISTORY_HARD_CAP, LOG_MAX_ENTRIES};
use crate::config::HistorySettings;
use crate::hub::runner::{HubEvent, HubHandle};
use crate::hub::ConnId;
use crate::turn::relay_socket::ClusterRelays;

pub use publish::history_entry;

/// Releases kept while Redis is away; beyond, the oldest is dropped (its name key still
/// expires after the presence TTL, but the others keep listing it until this node restarts).
pub const MAX_PENDING_RELEASES: usize = 65_536;
/// Pause between PINGs while the connection manager reconnects.
const RECONNECT_PAUSE: Duration = Duration::from_millis(50);
/// Between attempts at start-up to release what a previous run left, while Redis is away.
const START_RETRY_PAUSE: Duration = Duration::from_millis(500);

/// Redis answered and refused the command itself (an `ERR` reply such as a script error, or an
/// answer of the wrong shape): the store is up, and the same command would be refused again.
fn refused(e: &redis::RedisError) -> bool {
    matches!(
        e.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError)
            | redis::ErrorKind::UnexpectedReturnType
    )
}
/// Commands taken from the queue at once; the publishes among them (up to this many) go to
/// Redis in one script call.
pub const WRITE_BATCH: usize = 256;

/// One change for the cluster store.
#[derive(Debug)]
pub enum ClusterCommand {
    /// Claim `name` for `conn` (renaming from `previous`); the hub hears `NameClaimed`.
    Claim { conn: ConnId, name: String, previous: Option<String>, event: ClusterEvent },
    /// Let go of `name` if `owner` still holds it.
    Release { name: String, owner: Owner, event: ClusterEvent },
    /// Log a change (chat, notice, moderation); `origin` hears `PublishFailed` if it fails.
    Publish { origin: Option<ConnId>, event: ClusterEvent },
    /// Take a voice seat for `conn` (`event` is its `VoiceJoined`); the hub hears `VoiceSeated`.
    JoinVoice { conn: ConnId, name: String, max: usize, event: ClusterEvent },
    /// Signaling for a voice member on another node: into that node's inbox.
    Route(RoutedSignal),
    /// Answered once every command queued before it is done (shutdown).
    Flush(oneshot::Sender<()>),
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
    pending_releases: Retries,
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
            pending_releases: Retries::default(),
            last_age_trim: None,
            last_restriction_prune: None,
            relays,
            known_relays: Vec::new(),
        })
    }

    /// Runs until the runner drops its sender. `heartbeats` (the names to renew) is a lane of
    /// its own, taken before the queue: behind up to `WRITE_QUEUE` claims and chat a heartbeat
    /// could wait past the presence TTL, and the others would reap this node while it is alive.
    /// It overtakes at most what is queued, never a batch under way (at most `WRITE_BATCH`
    /// commands), and nothing it renews depends on their order: the hub lists only names it
    /// holds (none being renamed away), and the script renews only what is still ours.
    pub async fn run(
        mut self,
        mut commands: mpsc::Receiver<ClusterCommand>,
        mut heartbeats: mpsc::Receiver<Vec<(String, Owner)>>,
    ) {
        self.release_previous_run(&commands).await;
        loop {
            match next_work(&mut heartbeats, &mut commands).await {
                Work::Heartbeat(names) => {
                    self.ensure_connected().await;
                    self.heartbeat(names).await;
                }
                Work::Commands(batch) => self.carry_out_in_order(batch).await,
                Work::Stop => return,
            }
        }
    }

    /// Carries out `commands` in their order; each run of consecutive publishes is one call.
    async fn carry_out_in_order(&mut self, commands: Vec<ClusterCommand>) {
        let mut publishes = Vec::new();
        for command in commands {
            match command {
                ClusterCommand::Publish { origin, event } if publish::is_batchable(&event) => {
                    publishes.push((origin, event));
                }
                other => {
                    self.publish_all(std::mem::take(&mut publishes)).await;
                    self.carry_out(other).await;
                }
            }
        }
        self.publish_all(publishes).await;
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
    /// dead connection and never retried after it may have been applied. False if Redis still
    /// does not answer.
    async fn ensure_connected(&mut self) -> bool {
        if self.ctx.status.writer_up.load(Ordering::Relaxed) {
            return true;
        }
        for _ in 0..3 {
            let pong: redis::RedisResult<String> =
                redis::cmd("PING").query_async(&mut self.conn.clone()).await;
            if pong.is_ok() {
                return true;
            }
            tokio::time::sleep(RECONNECT_PAUSE).await;
        }
        false
    }

    /// Notes how a command went (the store is up if Redis answered, even with a refusal) and
    /// logs a failure.
    fn settle<T>(&mut self, result: redis::RedisResult<T>, what: &str) -> redis::RedisResult<T> {
        match &result {
            Ok(_) => self.set_up(true),
            Err(e) => {
                tracing::warn!("{what} failed: {e}");
                self.set_up(refused(e));
            }
        }
        result
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
                    self.pending_releases.keep(ClusterCommand::Release { name, owner, event });
                }
            }
            ClusterCommand::Publish { origin, event } if publish::is_batchable(&event) => {
                self.publish_all(vec![(origin, event)]).await
            }
            ClusterCommand::Publish { origin, event } => {
                if let Err(failure) = self.leave_voice_seat(&event).await {
                    self.ctx.status.publish_failures.fetch_add(1, Ordering::Relaxed);
                    if let Some(conn) = origin {
                        self.hub.send(HubEvent::PublishFailed { conn, failure }).await;
                    }
                    // A seat must not outlive its user: freed once Redis is back.
                    self.pending_releases.keep(ClusterCommand::Publish { origin: None, event });
                }
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
}

/// What the writer does next.
#[derive(Debug)]
enum Work {
    Heartbeat(Vec<(String, Owner)>),
    /// Up to `WRITE_BATCH` commands, in queue order.
    Commands(Vec<ClusterCommand>),
    /// The runner is gone.
    Stop,
}

/// A waiting heartbeat first, else whatever is queued (waiting for either).
async fn next_work(
    heartbeats: &mut mpsc::Receiver<Vec<(String, Owner)>>,
    commands: &mut mpsc::Receiver<ClusterCommand>,
) -> Work {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    tokio::select! {
        biased;
        Some(names) = heartbeats.recv() => Work::Heartbeat(names),
        taken = commands.recv_many(&mut batch, WRITE_BATCH) => {
            if taken == 0 { Work::Stop } else { Work::Commands(batch) }
        }
    }
}

/// Releases (names, voice seats) that failed while Redis was away, oldest first, retried
/// before the next heartbeat; at most `MAX_PENDING_RELEASES`, beyond which the oldest goes.
#[derive(Default)]
struct Retries(VecDeque<ClusterCommand>);

impl Retries {
    fn keep(&mut self, command: ClusterCommand) {
        if self.0.len() >= MAX_PENDING_RELEASES {
            self.0.pop_front();
            tracing::warn!("{MAX_PENDING_RELEASES} releases wait for Redis: the oldest is dropped");
        }
        self.0.push_back(command);
    }

    fn pop_front(&mut self) -> Option<ClusterCommand> {
        self.0.pop_front()
    }

    /// Puts back the one just taken (its retry failed): the bound holds.
    fn push_front(&mut self, command: ClusterCommand) {
        self.0.push_front(command);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{HistoryEntry, HistoryKind};

    fn release(i: usize) -> ClusterCommand {
        let name = format!("user{i}");
        let owner = Owner { node: "n".into(), conn: i as u64 };
        let entry = HistoryEntry {
            kind: HistoryKind::System,
            username: None,
            text: String::new(),
            timestamp: String::new(),
        };
        let event = ClusterEvent::UserLeft { name: name.clone(), owner: owner.clone(), entry };
        ClusterCommand::Release { name, owner, event }
    }

    #[test]
    fn releases_kept_for_redis_s_return_are_bounded_dropping_the_oldest() {
        let mut retries = Retries::default();
        for i in 0..MAX_PENDING_RELEASES + 2 {
            retries.keep(release(i));
        }
        assert_eq!(retries.0.len(), MAX_PENDING_RELEASES);
        let Some(ClusterCommand::Release { name, .. }) = retries.pop_front() else { panic!("a release") };
        assert_eq!(name, "user2", "the two oldest went");
    }

    #[test]
    fn a_voice_leave_kept_as_live_only_stores_no_entry() {
        let entry = HistoryEntry {
            kind: HistoryKind::System,
            username: None,
            text: "a left voice chat".into(),
            timestamp: String::new(),
        };
        let left = |live_only| ClusterEvent::VoiceLeft {
            name: "a".into(),
            turn_user: "a:1".into(),
            entry: entry.clone(),
            live_only,
        };
        assert!(history_entry(&left(false)).is_some());
        assert!(history_entry(&left(true)).is_none(), "over the allowance: shown, not stored");
    }

    #[tokio::test]
    async fn a_waiting_heartbeat_goes_before_a_full_queue() {
        let (commands_tx, mut commands) = mpsc::channel(crate::cluster::WRITE_QUEUE);
        let (heartbeats_tx, mut heartbeats) = mpsc::channel(1);
        for i in 0..crate::cluster::WRITE_QUEUE {
            commands_tx.try_send(release(i)).expect("room in the queue");
        }
        let names = vec![("alice".to_string(), Owner { node: "n".into(), conn: 1 })];
        heartbeats_tx.try_send(names.clone()).expect("the slot is free");
        assert!(heartbeats_tx.try_send(names.clone()).is_err(), "one heartbeat waits at most");
        match next_work(&mut heartbeats, &mut commands).await {
            Work::Heartbeat(renewed) => assert_eq!(renewed, names),
            other => panic!("the heartbeat first, got {other:?}"),
        }
        // Then the queue, a batch at a time, in order.
        let Work::Commands(batch) = next_work(&mut heartbeats, &mut commands).await else {
            panic!("commands next")
        };
        assert_eq!(batch.len(), WRITE_BATCH);
        assert!(matches!(&batch[0], ClusterCommand::Release { name, .. } if name == "user0"));
        // A heartbeat sent meanwhile overtakes the rest of the queue again.
        heartbeats_tx.try_send(names).expect("the slot is free again");
        assert!(matches!(next_work(&mut heartbeats, &mut commands).await, Work::Heartbeat(_)));
        drop((commands_tx, heartbeats_tx));
        let mut left = 0;
        while let Work::Commands(batch) = next_work(&mut heartbeats, &mut commands).await {
            left += batch.len();
        }
        assert_eq!(left, crate::cluster::WRITE_QUEUE - WRITE_BATCH, "nothing lost, then Stop");
    }
}
