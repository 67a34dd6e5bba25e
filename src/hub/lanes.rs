//! The hub's inbound lanes: three bounded channels the runner reads in priority order, so that
//! call setup never waits behind a chat flood, and a leave never waits behind chat.
//!
//! - `Signal`: every `webrtc-*` message from a client (call setup; each costs a send or two).
//! - `Presence`: `Connected`, `Disconnected` and heartbeat pings. A connect or disconnect is
//!   announced to everyone ("X has joined."), so a churn storm is heavy; it still goes before
//!   chat, and after signaling. A ping behind a chat backlog would time the connection out, and
//!   would hold back that connection's next `webrtc-join` (see below).
//! - `Chat`: everything else, and every event from inside the server (login and account
//!   answers, admin flags, shutdown).
//!
//! Order per connection: an event never overtakes an earlier event of its own connection.
//! Each session counts its events still waiting in the presence and in the chat lane
//! (`ConnOrder`); its next event takes its own kind's lane, or the lowest lane where one of
//! its earlier events still waits if that is lower, behind it. So a `webrtc-join` sent right
//! after a `/login` is handled after the login, and a leave after the chat sent before it; a
//! client that is not itself flooding (the usual caller) always gets the fast lane. Chosen over a per-connection sequence number because it needs no
//! reordering buffer in the runner: the runner only has to take from the highest lane that
//! holds anything. After it learns that a lower lane has an event it looks at the higher lanes
//! again before handling it, so an event a session put into a higher lane before one into a
//! lower lane is always handled first.
//!
//! Events from the cluster (the log reader's `ClusterApply`/`ClusterSnapshot`, the inbox's
//! `RemoteSignal`) all come from one task, the cluster reader, in the log's order. Chat and
//! notices stay in the chat lane; call signaling routed from another node and the voice
//! entries (a seat taken or freed, media changed, the TURN secret rotated) take the signal
//! lane, so call setup across nodes does not wait behind a chat flood either. The order that
//! matters is kept with one `ConnOrder` for the reader (`ClusterOrdering`): membership entries
//! (joins, leaves, nick changes, kicks, bans, a node gone, a snapshot) and voice entries are
//! counted while they wait in the chat lane, and a voice entry or routed signal goes behind
//! them as long as one waits. So a routed signal never overtakes the `VoiceJoined` that made
//! its sender a member (or a kick that took them out), and a `VoiceJoined` never overtakes the
//! `UserJoined` of its user; only chat and notices, which no call state depends on, are
//! overtaken.
//!
//! The lanes are bounded (`*_LANE_EVENTS`): a session whose lane is full waits before reading
//! more from its socket (and the ingress budget drops a flood before it gets here). Signaling
//! goes first without a fairness cap: every sender of it is held to the ingress budget, and
//! handling a signaling message costs one or two sends.

use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;

use tokio::sync::mpsc;

use super::runner::HubEvent;
use crate::cluster::event::ClusterEvent;
use crate::protocol::{ClientMessage, Inbound};

/// Call signaling waiting for the hub.
pub const SIGNAL_LANE_EVENTS: usize = 1024;
/// Connects and disconnects waiting for the hub.
pub const PRESENCE_LANE_EVENTS: usize = 1024;
/// Everything else waiting for the hub (the one queue there was before the lanes).
pub const CHAT_LANE_EVENTS: usize = 8192;

/// The lanes from the highest priority down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundLane {
    Signal = 0,
    Presence = 1,
    Chat = 2,
}

impl InboundLane {
    /// The lane an event belongs in by its kind (before the per-connection order is applied).
    pub fn of(event: &HubEvent) -> Self {
        match event {
            HubEvent::Message { inbound: Inbound::Message { message, .. }, .. } if message.is_webrtc() => {
                Self::Signal
            }
            HubEvent::Message { inbound: Inbound::Message { message: ClientMessage::Ping, .. }, .. }
            | HubEvent::Connected { .. }
            | HubEvent::Disconnected { .. } => Self::Presence,
            HubEvent::RemoteSignal(_) => Self::Signal,
            HubEvent::ClusterApply { .. } if ClusterOrdering::of(event) == ClusterOrdering::Voice => {
                Self::Signal
            }
            _ => Self::Chat,
        }
    }
}

/// How an event from the cluster reader is ordered against the reader's other events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClusterOrdering {
    /// Not from the cluster, or chat and notices: the chat lane, in order with the rest of
    /// it, overtaken by signaling like any chat.
    Free,
    /// Who is online and under which name: the chat lane, and what follows from the cluster
    /// in the signal lane waits behind it.
    Membership,
    /// Voice seats and TURN credentials: the signal lane, unless a membership or voice event
    /// of the reader still waits in the chat lane (then behind it).
    Voice,
}

impl ClusterOrdering {
    fn of(event: &HubEvent) -> Self {
        match event {
            HubEvent::ClusterApply { events } => Self::of_step(events),
            HubEvent::ClusterSnapshot(_) => Self::Membership,
            HubEvent::RemoteSignal(_) => Self::Voice,
            _ => Self::Free,
        }
    }

    /// A step of log entries takes the signal lane only if every entry in it is a voice entry
    /// (`cluster_steps` cuts a read that way); one with any membership or voice entry in the
    /// chat lane is counted, so a later voice step still waits behind it.
    fn of_step(events: &[ClusterEvent]) -> Self {
        let kinds: Vec<Self> = events.iter().map(Self::of_entry).collect();
        if !kinds.is_empty() && kinds.iter().all(|kind| *kind == Self::Voice) {
            Self::Voice
        } else if kinds.iter().any(|kind| *kind != Self::Free) {
            Self::Membership
        } else {
            Self::Free
        }
    }

    fn of_entry(event: &ClusterEvent) -> Self {
        match event {
            ClusterEvent::Chat { .. }
            | ClusterEvent::System { .. }
            | ClusterEvent::Mute { .. }
            | ClusterEvent::Unmute { .. }
            | ClusterEvent::Unban { .. } => Self::Free,
            ClusterEvent::UserJoined { .. }
            | ClusterEvent::UserLeft { .. }
            | ClusterEvent::NickChanged { .. }
            | ClusterEvent::Ban { .. }
            | ClusterEvent::Kick { .. }
            | ClusterEvent::NodeGone { .. } => Self::Membership,
            ClusterEvent::VoiceJoined { .. }
            | ClusterEvent::VoiceLeft { .. }
            | ClusterEvent::MediaChanged { .. }
            | ClusterEvent::SecretRotated { .. } => Self::Voice,
        }
    }
}

/// Cuts one read of the log into hub steps, in order: each run of voice entries is a step of
/// its own (the signal lane), each run of anything else another (the chat lane). A read of
/// chat alone stays one step, so each connection still gets it in one write.
pub fn cluster_steps(events: Vec<ClusterEvent>) -> Vec<Vec<ClusterEvent>> {
    let mut steps: Vec<Vec<ClusterEvent>> = Vec::new();
    let mut last_voice = None;
    for event in events {
        let voice = ClusterOrdering::of_entry(&event) == ClusterOrdering::Voice;
        match steps.last_mut() {
            Some(step) if last_voice == Some(voice) => step.push(event),
            _ => steps.push(vec![event]),
        }
        last_voice = Some(voice);
    }
    steps
}

/// An event in a lane. Holds its connection's "waiting" mark until the runner is done with it.
pub struct Queued {
    pub event: HubEvent,
    _waiting: Option<Waiting>,
}

/// One event of a connection waiting in the presence or chat lane (the counter of that lane);
/// counted down when dropped (handled, or thrown away with the channel).
struct Waiting(Arc<[AtomicUsize; 2]>, usize);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0[self.1].fetch_sub(1, Ordering::AcqRel);
    }
}

/// One session's events waiting in the presence and in the chat lane. Held by the session task.
#[derive(Debug, Default)]
pub struct ConnOrder {
    /// Indexed by lane - 1 (signaling needs no count: nothing can be queued ahead of it).
    waiting: Arc<[AtomicUsize; 2]>,
}

impl ConnOrder {
    /// Events of this connection not yet handled in the presence and chat lanes together.
    pub fn waiting(&self) -> usize {
        self.waiting.iter().map(|count| count.load(Ordering::Acquire)).sum()
    }

    /// The lane for this connection's next event of kind `wanted`: that lane, or the lowest
    /// one where an earlier event of the connection still waits.
    fn lane_for(&self, wanted: InboundLane) -> InboundLane {
        let waits_in = |lane: InboundLane| self.waiting[lane as usize - 1].load(Ordering::Acquire) > 0;
        match wanted {
            _ if waits_in(InboundLane::Chat) => InboundLane::Chat,
            InboundLane::Signal if waits_in(InboundLane::Presence) => InboundLane::Presence,
            lane => lane,
        }
    }

    fn mark(&self, lane: InboundLane) -> Option<Waiting> {
        let index = (lane as usize).checked_sub(1)?;
        self.waiting[index].fetch_add(1, Ordering::AcqRel);
        Some(Waiting(self.waiting.clone(), index))
    }
}

/// The hub stopped: nothing reads the lanes any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubGone;

/// The sending side of the three lanes. Cheap to clone.
#[derive(Clone)]
pub struct LaneSenders {
    lanes: [mpsc::Sender<Queued>; 3],
    /// The cluster reader's events waiting in the chat lane that its later voice events must
    /// not overtake (module doc). One for every clone: there is one cluster reader.
    cluster: Arc<ConnOrder>,
}

impl LaneSenders {
    /// An event from inside the server (not from a client): the chat lane; from the cluster
    /// reader, voice entries and routed signals the signal lane, behind any membership or
    /// voice entry of the reader still waiting in the chat lane.
    pub async fn send(&self, event: HubEvent) -> Result<(), HubGone> {
        if ClusterOrdering::of(&event) == ClusterOrdering::Free {
            return self.put(InboundLane::Chat, Queued { event, _waiting: None }).await;
        }
        self.send_from(&self.cluster, event).await
    }

    /// An event from a session: its kind's lane, unless an earlier event of the same connection
    /// is still waiting in a lower one (then that lane, behind it).
    pub async fn send_from(&self, order: &ConnOrder, event: HubEvent) -> Result<(), HubGone> {
        let lane = order.lane_for(InboundLane::of(&event));
        let waiting = order.mark(lane);
        self.put(lane, Queued { event, _waiting: waiting }).await
    }

    async fn put(&self, lane: InboundLane, queued: Queued) -> Result<(), HubGone> {
        self.lanes[lane as usize].send(queued).await.map_err(|_| HubGone)
    }
}

/// The runner's side of the lanes.
pub struct LaneReceivers {
    lanes: [mpsc::Receiver<Queued>; 3],
    /// An event taken off a lane while waiting, not handled yet (the oldest of its lane).
    held: [Option<Queued>; 3],
    open: [bool; 3],
}

/// Three empty lanes with their bounds.
pub fn channels() -> (LaneSenders, LaneReceivers) {
    let (signal, signal_rx) = mpsc::channel(SIGNAL_LANE_EVENTS);
    let (presence, presence_rx) = mpsc::channel(PRESENCE_LANE_EVENTS);
    let (chat, chat_rx) = mpsc::channel(CHAT_LANE_EVENTS);
    (
        LaneSenders { lanes: [signal, presence, chat], cluster: Arc::default() },
        LaneReceivers { lanes: [signal_rx, presence_rx, chat_rx], held: [None, None, None], open: [true; 3] },
    )
}

impl LaneReceivers {
    /// The next event, always from the highest lane that holds one; `None` once every lane is
    /// closed and empty. Cancel-safe (an event taken off a lane is held, never lost).
    pub async fn next(&mut self) -> Option<HubEvent> {
        loop {
            if let Some(queued) = self.take_highest() {
                return Some(queued.event);
            }
            if !self.open.iter().any(|&open| open) {
                return None;
            }
            // Every lane is empty: sleep until one is not, hold that event, then look at every
            // lane again from the top (a higher lane may have been filled meanwhile, before it).
            let (index, received) = poll_fn(|cx| {
                for (index, lane) in self.lanes.iter_mut().enumerate() {
                    if self.open[index] {
                        if let Poll::Ready(received) = lane.poll_recv(cx) {
                            return Poll::Ready((index, received));
                        }
                    }
                }
                Poll::Pending
            })
            .await;
            match received {
                Some(queued) => self.held[index] = Some(queued),
                None => self.open[index] = false,
            }
        }
    }

    /// The next event already waiting, unless it is signaling (nothing is taken then): lets the
    /// runner handle a run of presence and chat events as one step, in the order `next` would
    /// take them, while signaling still goes first.
    pub fn try_next_unless_signaling(&mut self) -> Option<HubEvent> {
        if self.lane_len(InboundLane::Signal) > 0 {
            return None;
        }
        self.take_highest().map(|queued| queued.event)
    }

    /// The next signaling event, waiting for one; the other lanes are left alone. Always in
    /// order: a session puts an event into the signal lane only when none of its earlier events
    /// waits in a lower one. `None` once the signal lane is closed and empty. Cancel-safe.
    pub async fn next_signal(&mut self) -> Option<HubEvent> {
        let index = InboundLane::Signal as usize;
        if let Some(queued) = self.held[index].take() {
            return Some(queued.event);
        }
        if !self.open[index] {
            return None;
        }
        let received = self.lanes[index].recv().await;
        self.open[index] = received.is_some();
        received.map(|queued| queued.event)
    }

    fn take_highest(&mut self) -> Option<Queued> {
        for index in 0..self.lanes.len() {
            if let Some(queued) = self.held[index].take() {
                return Some(queued);
            }
            if self.open[index] {
                match self.lanes[index].try_recv() {
                    Ok(queued) => return Some(queued),
                    Err(mpsc::error::TryRecvError::Disconnected) => self.open[index] = false,
                    Err(mpsc::error::TryRecvError::Empty) => {}
                }
            }
        }
        None
    }

    /// Events waiting in all lanes together (how far the hub is behind its sessions).
    pub fn waiting(&self) -> usize {
        self.lanes.iter().map(mpsc::Receiver::len).sum::<usize>() + self.held.iter().flatten().count()
    }

    /// Events waiting in one lane.
    pub fn lane_len(&self, lane: InboundLane) -> usize {
        self.lanes[lane as usize].len() + usize::from(self.held[lane as usize].is_some())
    }
}
