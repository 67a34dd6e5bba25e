//! The hub runner: one task that owns the `Hub`, feeds it events and carries out its effects.
//!
//! Sessions talk to it through a `HubHandle`, over three inbound lanes read in priority order
//! (`lanes`: call signaling, then connects, disconnects and pings, then chat). Outbound frames go
//! into one of each connection's two bounded queues with `try_send` (call frames into the small
//! urgent one its writer drains first, the rest into the chat one): a reader too slow to keep up
//! with either is disconnected instead of slowing anyone else down. A fan-out is one frame
//! shared by every recipient. Presence and chat events already waiting are handled as one step
//! (their history in one commit, then their frames), so a busy session writes several frames
//! per wake-up. History entries are committed to the store before the frames that follow them are
//! sent, so a message someone saw is a message on disk. Password hashing runs on the blocking
//! pool, never on this task, behind the `PasswordGate` (global concurrency, per-IP pacing).
//!
//! In cluster mode (`ClusterLink`) the runner also hands the hub's `Publish`/`ClaimName`/
//! `ReleaseName` effects to the cluster writer (a bounded queue it never waits on: a full queue
//! is answered at once as a failure), sends the heartbeat with the names this node holds, tells
//! the hub when the store comes or goes, and keeps accounts and admin flags in Redis.
//!
//! This file holds the events, the handle and the loop (lanes drained into steps); `effects`
//! carries out a step's effects (store commit, then frames), `accounts` answers /register and
//! /login off the hub task and refreshes the admin flags.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::lanes::{self, ConnOrder, InboundLane, LaneReceivers, LaneSenders};
use super::relay_only::PrivacyTally;
use super::{AdminReply, AdminRequest, ConnId, ConnectInfo, Effect, Hub, Now, Stats};
use crate::cluster::accounts::ClusterAccounts;
use crate::cluster::event::{ClusterEvent, Snapshot};
use crate::cluster::writer::ClusterCommand;
use crate::cluster::ClusterStatus;
use crate::password_gate::PasswordGate;
use crate::presence::VoicePresence;
use crate::protocol::{Frame, Inbound};
use crate::store::Store;

mod accounts;
mod effects;
mod overtaking;

pub use accounts::{hash_password, verify_password};

/// Chat frames queued per connection before it counts as a slow reader.
pub const OUTBOUND_QUEUE_FRAMES: usize = 512;
/// Call frames (`webrtc-*`) queued per connection before it counts as a slow reader. Small: the
/// writer drains this queue before any chat frame, so it only fills when the client stops
/// reading (a call's setup is a few dozen frames per peer, spread over seconds).
pub const URGENT_QUEUE_FRAMES: usize = 128;
const TICK: Duration = Duration::from_millis(250);
/// Presence and chat events already waiting that the runner handles as one step: their history
/// entries go to the store in one commit, then their frames go out, so a session woken once
/// finds several frames to write in one batch (a churn storm's "has joined." notices, a busy
/// room's chat). Small, because a signaling event that arrives meanwhile waits for the step.
const STEP_EVENTS: usize = 16;
/// How often the admin flags are read again from the store: `relaychat user set-admin` (another
/// process) takes effect within this, also for someone already logged in.
const ADMIN_REFRESH: Duration = Duration::from_secs(3);
/// How long shutdown waits for the cluster writer to log this node's users leaving.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(3);

/// How a session receives what the hub sends it.
pub struct ConnLink {
    /// Chat and everything else that is not a call.
    pub frames: mpsc::Sender<Frame>,
    /// Call signaling: written before anything waiting in `frames`.
    pub urgent: mpsc::Sender<Frame>,
    /// Counts what is in `urgent` and not yet written (the hub adds before it queues).
    pub unwritten_calls: Arc<UnwrittenCalls>,
    /// Close the socket (after the frames already queued) with this code and reason.
    pub close: oneshot::Sender<(u16, String)>,
}

/// Call frames the hub queued for a session that are not on the socket yet. A session's call
/// frames and chat frames are written by two tasks (`http::websocket`); a chat frame is only
/// written once this is zero, so no chat frame reaches the client before a call frame queued
/// ahead of it: `webrtc-joined` comes before that step's "Alice joined voice chat", as in the
/// original, while a call frame still overtakes the chat frames queued before it that are not
/// written yet.
#[derive(Debug, Default)]
pub struct UnwrittenCalls {
    count: AtomicUsize,
    none_left: tokio::sync::Notify,
}

impl UnwrittenCalls {
    /// Before a call frame is queued (so its chat frames queued after it see it).
    pub fn queuing(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    /// `n` call frames are on the socket (or were never queued, or will never be written).
    pub fn done(&self, n: usize) {
        if n > 0 && self.count.fetch_sub(n, Ordering::AcqRel) == n {
            self.none_left.notify_one();
        }
    }

    /// Is a call frame queued and not written yet?
    pub fn any(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0
    }

    /// Waits until every call frame queued so far is written.
    pub async fn all_written(&self) {
        while self.any() {
            self.none_left.notified().await;
        }
    }
}

pub enum HubEvent {
    Connected {
        conn: ConnId,
        info: ConnectInfo,
        link: ConnLink,
    },
    Message {
        conn: ConnId,
        inbound: Inbound,
    },
    Disconnected {
        conn: ConnId,
    },
    AccountCreated {
        conn: ConnId,
        result: Result<bool, String>,
    },
    LoginChecked {
        conn: ConnId,
        name: String,
        ok: bool,
    },
    /// The account store did not answer a login (not a wrong password).
    LoginUnavailable {
        conn: ConnId,
    },
    AdminsLoaded {
        admins: std::collections::HashSet<String>,
    },
    Admin(AdminCall),
    Shutdown {
        done: oneshot::Sender<()>,
    },
    /// Cluster mode: events read from the shared log, in log order (one read's worth: one
    /// step, so each connection gets them in one write).
    ClusterApply {
        events: Vec<ClusterEvent>,
    },
    /// Cluster mode: the shared state to start from (or resynchronize from after a gap).
    ClusterSnapshot(Snapshot),
    /// Cluster mode: the store answered a name claim.
    NameClaimed {
        conn: ConnId,
        name: String,
        outcome: super::ClaimOutcome,
    },
    /// Cluster mode: a change from `conn` could not be written, or may not have been.
    PublishFailed {
        conn: ConnId,
        failure: super::PublishFailure,
    },
    /// Cluster mode: names this node held are now someone else's.
    NamesLost {
        names: Vec<String>,
    },
    /// Cluster mode: the store answered a voice join.
    VoiceSeated {
        conn: ConnId,
        name: String,
        outcome: super::VoiceOutcome,
    },
    /// Cluster mode: signaling from another node for one of this node's voice members.
    RemoteSignal(crate::cluster::event::RoutedSignal),
    /// Cluster mode: the relay addresses of every live node (the node registry).
    ClusterRelays {
        ips: Vec<IpAddr>,
    },
}

/// How the runner reaches the cluster (cluster mode only).
pub struct ClusterLink {
    /// The writer's queue (`cluster::WRITE_QUEUE`).
    pub commands: mpsc::Sender<ClusterCommand>,
    /// The writer's heartbeat slot (one): taken before the queue, so a full queue of chat or
    /// claims never delays the heartbeat past the presence TTL (the node would be reaped alive).
    pub heartbeats: mpsc::Sender<Vec<(String, crate::cluster::event::Owner)>>,
    pub status: Arc<ClusterStatus>,
    pub accounts: ClusterAccounts,
    pub heartbeat: Duration,
    /// The integrated relay, when it runs (secret rotations from the log reach it here).
    pub relay: Option<crate::turn::RelayControl>,
}

/// An operator request (admin API) and where its reply goes; answered once its effects are
/// carried out, so a "kicked" reply means the socket was already told to close.
pub struct AdminCall {
    pub request: AdminRequest,
    pub reply: oneshot::Sender<AdminReply>,
}

/// Counters readable without asking the hub (for /server-info and metrics).
#[derive(Debug, Default)]
pub struct SharedStats {
    pub connected_users: AtomicUsize,
    pub voice_participants: AtomicUsize,
    pub open_sockets: AtomicUsize,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub outbound_queue_drops: AtomicU64,
    /// Events waiting in the hub's inbound queue when it took the last one.
    pub queue_depth: AtomicUsize,
    /// Frames the session tasks dropped over the ingress budget (never reached the hub).
    pub ingress_drops: AtomicU64,
    /// force_relay's work: candidates dropped by reason, fields sanitized by kind.
    pub privacy: std::sync::Mutex<PrivacyTally>,
}

impl SharedStats {
    pub fn snapshot(&self) -> Stats {
        Stats {
            connected_users: self.connected_users.load(Ordering::Relaxed),
            voice_participants: self.voice_participants.load(Ordering::Relaxed),
        }
    }
}

/// What sessions hold to reach the hub. Cheap to clone.
#[derive(Clone)]
pub struct HubHandle {
    events: LaneSenders,
    next_conn: Arc<AtomicU64>,
    pub stats: Arc<SharedStats>,
}

impl HubHandle {
    pub fn next_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends an event from inside the server (the chat lane); false if the hub has stopped.
    pub async fn send(&self, event: HubEvent) -> bool {
        self.events.send(event).await.is_ok()
    }

    /// Asks the hub to carry out an operator request; `None` if the hub has stopped.
    pub async fn admin(&self, request: AdminRequest) -> Option<AdminReply> {
        let (reply, answer) = oneshot::channel();
        self.events.send(HubEvent::Admin(AdminCall { request, reply })).await.ok()?;
        answer.await.ok()
    }

    /// Sends an event from a session: signaling, connects and disconnects overtake chat, never
    /// an earlier event of the same connection (`order`). False if the hub has stopped.
    pub async fn send_from(&self, order: &ConnOrder, event: HubEvent) -> bool {
        self.events.send_from(order, event).await.is_ok()
    }

    /// Asks the hub to announce shutdown, close every socket and flush the store.
    pub async fn shutdown(&self) {
        let (done, finished) = oneshot::channel();
        if self.events.send(HubEvent::Shutdown { done }).await.is_ok() {
            let _ = finished.await;
        }
    }
}

struct Runner {
    hub: Hub,
    links: HashMap<ConnId, ConnLink>,
    store: Store,
    presence: Arc<VoicePresence>,
    events: LaneSenders,
    stats: Arc<SharedStats>,
    passwords: PasswordGate,
    /// Each connection's address, for the password gate's per-IP pacing.
    ips: HashMap<ConnId, IpAddr>,
    /// A call frame was queued since the runner last yielded.
    call_frame_queued: bool,
    cluster: Option<ClusterLink>,
    /// The store's state as last told to the hub.
    cluster_up: bool,
}

/// Starts the runner task with a default password gate (one hash per core, 20 per minute
/// per address). It ends after a `Shutdown` event has been handled.
pub fn spawn(
    hub: Hub,
    store: Store,
    presence: Arc<VoicePresence>,
) -> (HubHandle, tokio::task::JoinHandle<()>) {
    spawn_with_gate(hub, store, presence, PasswordGate::new(0, 20, 64))
}

/// Like `spawn`, with the password gate from the settings.
pub fn spawn_with_gate(
    hub: Hub,
    store: Store,
    presence: Arc<VoicePresence>,
    passwords: PasswordGate,
) -> (HubHandle, tokio::task::JoinHandle<()>) {
    spawn_with_cluster(hub, store, presence, passwords, None)
}

/// Like `spawn_with_gate`, in cluster mode when `cluster` is given (the hub must be
/// `Hub::clustered`).
pub fn spawn_with_cluster(
    hub: Hub,
    store: Store,
    presence: Arc<VoicePresence>,
    passwords: PasswordGate,
    cluster: Option<ClusterLink>,
) -> (HubHandle, tokio::task::JoinHandle<()>) {
    let (events, receiver) = lanes::channels();
    let stats = Arc::new(SharedStats::default());
    let runner = Runner {
        hub,
        links: HashMap::new(),
        store,
        presence,
        events: events.clone(),
        stats: stats.clone(),
        passwords,
        ips: HashMap::new(),
        call_frame_queued: false,
        cluster,
        cluster_up: false,
    };
    let task = tokio::spawn(runner.run(receiver));
    (HubHandle { events, next_conn: Arc::new(AtomicU64::new(1)), stats }, task)
}

impl Runner {
    async fn run(mut self, mut receiver: LaneReceivers) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut admin_refresh = tokio::time::interval(ADMIN_REFRESH);
        admin_refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let heartbeat_every = self.cluster.as_ref().map_or(Duration::from_secs(3600), |c| c.heartbeat);
        let mut heartbeat = tokio::time::interval(heartbeat_every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let clustered = self.cluster.is_some();
        loop {
            let effects = tokio::select! {
                event = receiver.next() => match event {
                    Some(HubEvent::Shutdown { done }) => return self.shut_down(done).await,
                    Some(HubEvent::Admin(call)) => {
                        self.answer_admin(call).await;
                        Vec::new()
                    }
                    Some(event) => {
                        // Events waiting behind this one: how far the hub is behind its sessions.
                        self.stats.queue_depth.store(receiver.waiting(), Ordering::Relaxed);
                        let signaling = InboundLane::of(&event) == InboundLane::Signal;
                        let mut effects = self.handle(event);
                        let mut shutdown = None;
                        let mut admin = None;
                        if !signaling {
                            for _ in 1..STEP_EVENTS {
                                match receiver.try_next_unless_signaling() {
                                    Some(HubEvent::Shutdown { done }) => {
                                        shutdown = Some(done);
                                        break;
                                    }
                                    // An operator request answers after its own effects:
                                    // it ends the step and runs after the step's effects.
                                    Some(HubEvent::Admin(call)) => {
                                        admin = Some(call);
                                        break;
                                    }
                                    Some(event) => effects.extend(self.handle(event)),
                                    None => break,
                                }
                            }
                        }
                        if shutdown.is_some() || admin.is_some() {
                            self.publish_stats();
                            self.carry_out(std::mem::take(&mut effects)).await;
                        }
                        if let Some(call) = admin {
                            self.answer_admin(call).await;
                        }
                        if let Some(done) = shutdown {
                            return self.shut_down(done).await;
                        }
                        effects
                    }
                    None => return,
                },
                _ = tick.tick() => {
                    self.watch_cluster_store();
                    if !self.cluster_up {
                        // Notice the store's return sooner than the next heartbeat would.
                        self.send_heartbeat();
                    }
                    self.hub.tick(Now::current())
                }
                _ = heartbeat.tick(), if clustered => {
                    self.send_heartbeat();
                    Vec::new()
                }
                _ = admin_refresh.tick() => {
                    self.refresh_admins();
                    Vec::new()
                }
            };
            // Publish the new state before the effects go out, so that anyone who saw a reply
            // (say, webrtc-joined) also sees it counted in /metrics and /server-info.
            self.publish_stats();
            self.carry_out_step(effects, &mut receiver).await;
            self.publish_stats(); // slow readers may have been dropped meanwhile
            if std::mem::take(&mut self.call_frame_queued) {
                // Let the session that got it write it now. The runtime runs the task woken
                // last first (its LIFO slot), but only until something else is woken: the next
                // fan-out would wake a thousand sessions and send this one to the back of
                // their queue, which under load cost tens of milliseconds.
                tokio::task::yield_now().await;
            }
        }
    }

    /// Carries out an operator request, then answers it (so the reply describes a done deed).
    async fn answer_admin(&mut self, AdminCall { request, reply }: AdminCall) {
        let (effects, answer) = self.hub.admin(request, Now::current());
        self.publish_stats();
        self.carry_out(effects).await;
        let _ = reply.send(answer);
    }

    /// Announces shutdown, closes every socket, and tells the caller once the store has it all.
    async fn shut_down(&mut self, done: oneshot::Sender<()>) {
        let effects = self.hub.shutdown(Now::current());
        self.carry_out(effects).await;
        if let Some(cluster) = &self.cluster {
            // The others should see this node's users leave: wait (briefly) for the writer.
            let (flushed, written) = oneshot::channel();
            if cluster.commands.try_send(ClusterCommand::Flush(flushed)).is_ok() {
                let _ = tokio::time::timeout(SHUTDOWN_FLUSH, written).await;
            }
        }
        let _ = done.send(());
    }

    /// Tells the hub when the cluster store comes or goes (new users and chat depend on it).
    fn watch_cluster_store(&mut self) {
        let Some(cluster) = &self.cluster else { return };
        let up = cluster.status.is_up();
        if up != self.cluster_up {
            self.cluster_up = up;
            self.hub.set_cluster_store_up(up);
        }
    }

    fn send_heartbeat(&mut self) {
        let Some(cluster) = &self.cluster else { return };
        let Ok(slot) = cluster.heartbeats.try_reserve() else {
            return; // the last one is still waiting: Redis is slow or away
        };
        slot.send(self.hub.owned_names());
    }

    /// Hands a change to the cluster writer; false if its queue is full (or it is gone).
    fn to_cluster(&self, command: ClusterCommand) -> bool {
        match &self.cluster {
            Some(cluster) => match cluster.commands.try_send(command) {
                Ok(()) => true,
                Err(_) => {
                    cluster.status.publish_failures.fetch_add(1, Ordering::Relaxed);
                    false
                }
            },
            None => false,
        }
    }

    fn publish_stats(&self) {
        let stats = self.hub.stats();
        self.stats.connected_users.store(stats.connected_users, Ordering::Relaxed);
        self.stats.voice_participants.store(stats.voice_participants, Ordering::Relaxed);
        self.stats.open_sockets.store(self.links.len(), Ordering::Relaxed);
        let tally = self.hub.privacy_tally();
        if let Ok(mut published) = self.stats.privacy.lock() {
            *published = tally;
        }
    }

    fn handle(&mut self, event: HubEvent) -> Vec<Effect> {
        let now = Now::current();
        // Two atomic loads: the hub sees the store's state as /readyz does, at every event.
        self.watch_cluster_store();
        match event {
            HubEvent::Connected { conn, info, link } => {
                self.links.insert(conn, link);
                self.ips.insert(conn, info.ip);
                self.hub.connect(conn, info, now)
            }
            HubEvent::Message { conn, inbound } => {
                self.stats.frames_in.fetch_add(1, Ordering::Relaxed);
                self.hub.message(conn, inbound, now)
            }
            HubEvent::Disconnected { conn } => {
                self.links.remove(&conn);
                self.ips.remove(&conn);
                self.hub.disconnect(conn, now)
            }
            HubEvent::AccountCreated { conn, result } => self.hub.account_created(conn, result, now),
            HubEvent::LoginChecked { conn, name, ok } => self.hub.login_checked(conn, name, ok, now),
            HubEvent::LoginUnavailable { conn } => self.hub.login_unavailable(conn, now),
            HubEvent::AdminsLoaded { admins } => {
                self.hub.set_admins(admins);
                Vec::new()
            }
            HubEvent::ClusterApply { events } => self.hub.cluster_events(events, now),
            HubEvent::ClusterSnapshot(snapshot) => self.hub.cluster_snapshot(snapshot, now),
            HubEvent::NameClaimed { conn, name, outcome } => self.hub.name_claimed(conn, name, outcome, now),
            HubEvent::PublishFailed { conn, failure } => self.hub.publish_failed(conn, failure, now),
            HubEvent::NamesLost { names } => self.hub.names_lost(names, now),
            HubEvent::VoiceSeated { conn, name, outcome } => self.hub.voice_seated(conn, name, outcome, now),
            HubEvent::RemoteSignal(signal) => self.hub.remote_signal(signal, now),
            HubEvent::ClusterRelays { ips } => {
                self.hub.set_cluster_relays(ips);
                Vec::new()
            }
            HubEvent::Shutdown { .. } | HubEvent::Admin(_) => Vec::new(),
        }
    }

    fn conn_ip(&self, conn: ConnId) -> IpAddr {
        self.ips.get(&conn).copied().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }
}
