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

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
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
use crate::protocol::{Frame, HistoryEntry, Inbound, Lane};
use crate::store::Store;

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
    /// Close the socket (after the frames already queued) with this code and reason.
    pub close: oneshot::Sender<(u16, String)>,
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
    /// Cluster mode: one event read from the shared log, in log order.
    ClusterApply {
        event: ClusterEvent,
    },
    /// Cluster mode: the shared state to start from (or resynchronize from after a gap).
    ClusterSnapshot(Snapshot),
    /// Cluster mode: the store answered a name claim.
    NameClaimed {
        conn: ConnId,
        name: String,
        outcome: super::ClaimOutcome,
    },
    /// Cluster mode: a change from `conn` could not be written.
    PublishFailed {
        conn: ConnId,
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
            self.carry_out(effects).await;
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
        if cluster.status.heartbeat_queued.swap(true, Ordering::Relaxed) {
            return; // the last one is still waiting: Redis is slow or away
        }
        let names = self.hub.owned_names();
        if cluster.commands.try_send(ClusterCommand::Heartbeat { names }).is_err() {
            cluster.status.heartbeat_queued.store(false, Ordering::Relaxed);
            tracing::warn!("cluster writer queue full: heartbeat skipped");
        }
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
            HubEvent::ClusterApply { event } => self.hub.cluster_event(event, now),
            HubEvent::ClusterSnapshot(snapshot) => self.hub.cluster_snapshot(snapshot, now),
            HubEvent::NameClaimed { conn, name, outcome } => self.hub.name_claimed(conn, name, outcome, now),
            HubEvent::PublishFailed { conn } => self.hub.publish_failed(conn, now),
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

    async fn carry_out(&mut self, effects: Vec<Effect>) {
        let mut step_order = StepOrder::for_effects(&effects);
        // The step's history entries first, in one commit: each must be durable before the
        // frames that follow it, and committing earlier than that is as good.
        let (entries, effects): (Vec<Effect>, Vec<Effect>) =
            effects.into_iter().partition(|effect| matches!(effect, Effect::Persist(_)));
        let entries: Vec<HistoryEntry> = entries
            .into_iter()
            .filter_map(|effect| match effect {
                Effect::Persist(entry) => Some(entry),
                _ => None,
            })
            .collect();
        self.persist(entries).await;
        let mut queue: VecDeque<Effect> = effects.into();
        while let Some(effect) = queue.pop_front() {
            match effect {
                Effect::Send { to, frame, lane } => {
                    let lane = step_order.lane(to, lane);
                    if !self.deliver(to, frame, lane) {
                        queue.extend(self.hub.disconnect(to, Now::current()));
                    }
                }
                Effect::Broadcast { to, frame, lane } => {
                    for conn in to {
                        let lane = step_order.lane(conn, lane);
                        if !self.deliver(conn, frame.clone(), lane) {
                            queue.extend(self.hub.disconnect(conn, Now::current()));
                        }
                    }
                }
                Effect::Close { conn, code, reason } => {
                    if let Some(link) = self.links.remove(&conn) {
                        let _ = link.close.send((code, reason));
                    }
                }
                // Effects of a slow reader's removal, queued meanwhile.
                Effect::Persist(entry) => self.persist(vec![entry]).await,
                Effect::CreateAccount { conn, name, password, reserved } => {
                    self.create_account(conn, name, password, reserved)
                }
                Effect::CheckLogin { conn, name, password } => self.check_login(conn, name, password),
                Effect::SaveBan { name, banned } => {
                    if let Err(e) = self.store.set_ban(name, banned).await {
                        tracing::error!("could not persist a ban change: {e}");
                    }
                }
                Effect::VoiceJoined { turn_user } => self.presence.joined(&turn_user),
                Effect::VoiceLeft { turn_user } => self.presence.left(&turn_user),
                Effect::Publish { origin, event } => {
                    if !self.to_cluster(ClusterCommand::Publish { origin, event }) {
                        if let Some(conn) = origin {
                            queue.extend(self.hub.publish_failed(conn, Now::current()));
                        }
                    }
                }
                Effect::ClaimName { conn, name, previous, event } => {
                    let command = ClusterCommand::Claim { conn, name: name.clone(), previous, event };
                    if !self.to_cluster(command) {
                        let outcome = super::ClaimOutcome::StoreDown;
                        queue.extend(self.hub.name_claimed(conn, name, outcome, Now::current()));
                    }
                }
                Effect::JoinVoice { conn, name, max, event } => {
                    let command = ClusterCommand::JoinVoice { conn, name: name.clone(), max, event };
                    if !self.to_cluster(command) {
                        let outcome = super::VoiceOutcome::StoreDown;
                        queue.extend(self.hub.voice_seated(conn, name, outcome, Now::current()));
                    }
                }
                Effect::RotateRelaySecret { secret, grace_s } => {
                    if let Some(relay) = self.cluster.as_ref().and_then(|c| c.relay.as_ref()) {
                        relay.rotate_secret(secret, grace_s);
                    }
                }
                Effect::RouteSignal(signal) => {
                    if !self.to_cluster(ClusterCommand::Route(signal)) {
                        tracing::warn!(
                            "cluster writer queue full: a signaling message to another node was dropped"
                        );
                    }
                }
                Effect::ReleaseName { name, owner, event } => {
                    if !self.to_cluster(ClusterCommand::Release { name: name.clone(), owner, event }) {
                        tracing::warn!(user = %name, "cluster writer queue full: the name expires with its TTL");
                    }
                }
            }
        }
    }

    /// Queues a frame for a connection in its lane's queue. False if that queue was full: the
    /// reader is too slow, its socket is asked to close and the hub must forget it.
    fn deliver(&mut self, to: ConnId, frame: Frame, lane: Lane) -> bool {
        let Some(link) = self.links.get(&to) else { return true };
        let queue = match lane {
            Lane::Call => &link.urgent,
            Lane::Chat => &link.frames,
        };
        match queue.try_send(frame) {
            Ok(()) => {
                self.stats.frames_out.fetch_add(1, Ordering::Relaxed);
                self.call_frame_queued |= lane == Lane::Call;
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(conn = to, ?lane, "outbound queue full: disconnecting a slow reader");
                self.stats.outbound_queue_drops.fetch_add(1, Ordering::Relaxed);
                if let Some(link) = self.links.remove(&to) {
                    let _ = link.close.send((1008, "Outbound queue full (client too slow)".into()));
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => true,
        }
    }

    async fn persist(&self, entries: Vec<HistoryEntry>) {
        if entries.is_empty() {
            return;
        }
        if let Err(e) = self.store.append(entries).await {
            tracing::error!("could not persist history entries: {e}");
        }
    }

    fn conn_ip(&self, conn: ConnId) -> IpAddr {
        self.ips.get(&conn).copied().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    /// Reads the admin flags off the store thread and hands them to the hub.
    fn refresh_admins(&self) {
        if let Some(cluster) = &self.cluster {
            let (accounts, events) = (cluster.accounts.clone(), self.events.clone());
            tokio::spawn(async move {
                match accounts.admin_names().await {
                    Ok(admins) => {
                        events.send(HubEvent::AdminsLoaded { admins }).await.ok();
                    }
                    Err(e) => tracing::debug!("could not read the admin flags from the cluster store: {e}"),
                }
            });
            return;
        }
        let (store, events) = (self.store.clone(), self.events.clone());
        tokio::spawn(async move {
            match store.admin_names().await {
                Ok(admins) => {
                    events.send(HubEvent::AdminsLoaded { admins }).await.ok();
                }
                Err(e) => tracing::warn!("could not read the admin flags: {e}"),
            }
        });
    }

    /// Hashes first, whatever the name: a taken or reserved name costs the same time as a new
    /// one, so the answer's timing does not tell which names exist.
    fn create_account(&self, conn: ConnId, name: String, password: String, reserved: bool) {
        if let Some(cluster) = &self.cluster {
            let (accounts, events, gate, ip) =
                (cluster.accounts.clone(), self.events.clone(), self.passwords.clone(), self.conn_ip(conn));
            tokio::spawn(async move {
                let hashed = gate.run(ip, move || hash_password(&password)).await;
                let result = match hashed {
                    Some(Ok(_)) if reserved => Ok(false),
                    Some(Ok(hash)) => accounts.create(&name, &hash).await.map_err(|e| e.to_string()),
                    Some(Err(e)) => Err(e),
                    None => Err("password hashing failed".to_string()),
                };
                events.send(HubEvent::AccountCreated { conn, result }).await.ok();
            });
            return;
        }
        let (store, events, gate, ip) =
            (self.store.clone(), self.events.clone(), self.passwords.clone(), self.conn_ip(conn));
        tokio::spawn(async move {
            let hashed = gate.run(ip, move || hash_password(&password)).await;
            let result = match hashed {
                Some(Ok(_)) if reserved => Ok(false),
                Some(Ok(hash)) => store.create_account(name, hash).await.map_err(|e| e.to_string()),
                Some(Err(e)) => Err(e),
                None => Err("password hashing failed".to_string()),
            };
            events.send(HubEvent::AccountCreated { conn, result }).await.ok();
        });
    }

    fn check_login(&self, conn: ConnId, name: String, password: String) {
        if let Some(cluster) = &self.cluster {
            let (accounts, events, gate, ip) =
                (cluster.accounts.clone(), self.events.clone(), self.passwords.clone(), self.conn_ip(conn));
            tokio::spawn(async move {
                let stored = match accounts.password_hash(&name).await {
                    Ok(stored) => stored,
                    Err(e) => {
                        // A Redis blip is no wrong password: "try again", not counted.
                        tracing::error!("account lookup in the cluster store failed: {e}");
                        events.send(HubEvent::LoginUnavailable { conn }).await.ok();
                        return;
                    }
                };
                let ok = gate
                    .run(ip, move || verify_password(&password, stored.as_deref()))
                    .await
                    .unwrap_or(false);
                if ok {
                    if let Ok(admins) = accounts.admin_names().await {
                        events.send(HubEvent::AdminsLoaded { admins }).await.ok();
                    }
                }
                events.send(HubEvent::LoginChecked { conn, name, ok }).await.ok();
            });
            return;
        }
        let (store, events, gate, ip) =
            (self.store.clone(), self.events.clone(), self.passwords.clone(), self.conn_ip(conn));
        tokio::spawn(async move {
            let stored = match store.password_hash(name.clone()).await {
                Ok(stored) => stored,
                Err(e) => {
                    tracing::error!("account lookup failed: {e}");
                    None
                }
            };
            let ok =
                gate.run(ip, move || verify_password(&password, stored.as_deref())).await.unwrap_or(false);
            if ok {
                // An account the operator just created or flagged is admin from its first login,
                // not only after the next periodic refresh.
                if let Ok(admins) = store.admin_names().await {
                    events.send(HubEvent::AdminsLoaded { admins }).await.ok();
                }
            }
            events.send(HubEvent::LoginChecked { conn, name, ok }).await.ok();
        });
    }
}

/// Keeps the frames one hub step sends a connection in the order the hub produced them. A call
/// frame overtakes chat frames queued by earlier steps, but not one queued by the same step just
/// before it: "Alice was kicked by Admin." comes before that step's `webrtc-peer-left`, as in
/// the original. Only a step that sends a call frame after a chat frame needs this (a kick, a
/// ban); for every other step it costs one scan of the effects.
struct StepOrder {
    /// Connections this step sent a chat frame so far; `None` when the step needs no tracking.
    sent_chat: Option<HashSet<ConnId>>,
}

impl StepOrder {
    fn for_effects(effects: &[Effect]) -> Self {
        let lane_of = |effect: &Effect| match effect {
            Effect::Send { lane, .. } | Effect::Broadcast { lane, .. } => Some(*lane),
            _ => None,
        };
        let mut chat_seen = false;
        let mut call_after_chat = false;
        for lane in effects.iter().filter_map(lane_of) {
            match lane {
                Lane::Chat => chat_seen = true,
                Lane::Call => call_after_chat |= chat_seen,
            }
        }
        Self { sent_chat: call_after_chat.then(HashSet::new) }
    }

    /// The lane a frame for `to` takes: a call frame goes behind this step's chat frame to the
    /// same connection.
    fn lane(&mut self, to: ConnId, lane: Lane) -> Lane {
        let Some(sent_chat) = self.sent_chat.as_mut() else { return lane };
        match lane {
            Lane::Chat => {
                sent_chat.insert(to);
                Lane::Chat
            }
            Lane::Call if sent_chat.contains(&to) => Lane::Chat,
            Lane::Call => Lane::Call,
        }
    }
}

/// argon2id with the crate's default (OWASP-recommended) parameters and a random salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Verifies against the stored hash. Without an account it still does the same work, so the
/// reply time does not tell an attacker which names exist.
pub fn verify_password(password: &str, stored: Option<&str>) -> bool {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash_password("not-a-real-password").unwrap_or_default());
    let hash_text = stored.unwrap_or(dummy);
    let Ok(hash) = PasswordHash::new(hash_text) else { return false };
    Argon2::default().verify_password(password.as_bytes(), &hash).is_ok() && stored.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let hash = hash_password("password123").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("password123", Some(&hash)));
        assert!(!verify_password("password124", Some(&hash)));
        assert!(!verify_password("password123", None));
        assert!(!verify_password("password123", Some("garbage")));
    }
}
