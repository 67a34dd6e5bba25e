//! How the runner carries out a step's effects: the history entries committed to the store
//! first (one commit per step), then every frame into its connection's queue (`try_send`, a
//! full queue is a slow reader and is disconnected), and the rest handed to whoever does it
//! (cluster writer, presence, password gate).

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use super::{ClusterCommand, Runner};
use crate::hub::{ConnId, Effect, Now};
use crate::protocol::{Frame, HistoryEntry, Lane};

impl Runner {
    pub(super) async fn carry_out(&mut self, effects: Vec<Effect>) {
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
                            let failure = super::super::PublishFailure::NotWritten;
                            queue.extend(self.hub.publish_failed(conn, failure, Now::current()));
                        }
                    }
                }
                Effect::ClaimName { conn, name, previous, event } => {
                    let command = ClusterCommand::Claim { conn, name: name.clone(), previous, event };
                    if !self.to_cluster(command) {
                        let outcome = crate::hub::ClaimOutcome::StoreDown;
                        queue.extend(self.hub.name_claimed(conn, name, outcome, Now::current()));
                    }
                }
                Effect::JoinVoice { conn, name, max, event } => {
                    let command = ClusterCommand::JoinVoice { conn, name: name.clone(), max, event };
                    if !self.to_cluster(command) {
                        let outcome = crate::hub::VoiceOutcome::StoreDown;
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
    pub(super) fn deliver(&mut self, to: ConnId, frame: Frame, lane: Lane) -> bool {
        let Some(link) = self.links.get(&to) else { return true };
        let queue = match lane {
            Lane::Call => {
                link.unwritten_calls.queuing();
                &link.urgent
            }
            Lane::Chat => &link.frames,
        };
        let sent = queue.try_send(frame);
        if sent.is_err() && lane == Lane::Call {
            link.unwritten_calls.done(1);
        }
        match sent {
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

    pub(super) async fn persist(&self, entries: Vec<HistoryEntry>) {
        if entries.is_empty() {
            return;
        }
        if let Err(e) = self.store.append(entries).await {
            tracing::error!("could not persist history entries: {e}");
        }
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
