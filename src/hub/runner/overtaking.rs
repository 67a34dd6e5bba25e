//! Call signaling that goes ahead while a chat step waits for its history commit.
//!
//! A step of chat events commits its history entries before any of its frames go out (a
//! message someone saw is a message on disk). The commit runs on the store thread and takes
//! from well under a millisecond to tens of them when the disk or the CPU is busy (measured
//! 8-40 ms during a chat flood with builds running on the machine), and a `webrtc-offer` that
//! arrived meanwhile used to wait for it. Now, while the commit of a step that only sends chat
//! frames is in flight, the runner keeps taking the signal lane:
//! - a signaling event whose effects hold no history entry and no chat frame (an offer, an
//!   answer, a candidate, an error) is carried out at once: its call frames go out before the
//!   waiting step's chat frames, just as a call frame already overtakes the chat frames queued
//!   earlier in a session's outbound queue;
//! - a signaling event that brings history or a chat frame ("X joined the voice room") ends the
//!   overtaking: it is carried out right after the waiting step, and nothing else is taken
//!   from the signal lane until then, so chat reaches everyone in history order.
//!
//! A step that does anything but commit history and send chat frames (a call frame, a close, an
//! account check) is carried out as before, start to end, so its frames keep their order with
//! the signaling handled after it. The hub handles every event in the same order as before;
//! only the delivery of the waiting step's chat frames moves behind the call frames of the
//! signaling handled meanwhile.
//!
//! One case is left as it is: a call frame that finds a session's urgent queue full disconnects
//! that slow reader, and its "has left." notice (committed after the waiting step's history, as
//! the store runs jobs in order) may reach the others before the waiting step's chat frames.

use super::{LaneReceivers, Runner};
use crate::hub::Effect;
use crate::protocol::{HistoryEntry, Lane};

impl Runner {
    /// Carries out one step's effects, letting signaling through while its history commits
    /// when the step is chat alone (see the module doc).
    pub(super) async fn carry_out_step(&mut self, effects: Vec<Effect>, receiver: &mut LaneReceivers) {
        if !is_chat_with_history(&effects) {
            return self.carry_out(effects).await;
        }
        let (entries, frames) = split_history(effects);
        let commit = self.store.append_queued(entries);
        let mut commit = std::pin::pin!(commit);
        let mut held_back = None;
        let committed = loop {
            tokio::select! {
                biased;
                committed = &mut commit => break committed,
                Some(event) = receiver.next_signal() => {
                    let effects = self.handle(event);
                    if !is_call_only(&effects) {
                        held_back = Some(effects);
                        break (&mut commit).await;
                    }
                    self.publish_stats();
                    self.carry_out(effects).await;
                    if std::mem::take(&mut self.call_frame_queued) {
                        // As in the main loop: let the session that got it write it now.
                        tokio::task::yield_now().await;
                    }
                }
            }
        };
        if let Err(e) = committed {
            tracing::error!("could not persist history entries: {e}");
        }
        self.carry_out(frames).await;
        if let Some(effects) = held_back {
            self.publish_stats();
            self.carry_out(effects).await;
        }
    }
}

/// History entries and chat frames only, at least one entry: a step whose commit signaling
/// may overtake.
fn is_chat_with_history(effects: &[Effect]) -> bool {
    let chat_or_history = |effect: &Effect| match effect {
        Effect::Persist(_) => true,
        Effect::Send { lane, .. } | Effect::Broadcast { lane, .. } => *lane == Lane::Chat,
        _ => false,
    };
    effects.iter().any(|effect| matches!(effect, Effect::Persist(_))) && effects.iter().all(chat_or_history)
}

/// No history entry and no chat frame: effects that may go out before a waiting chat step's.
fn is_call_only(effects: &[Effect]) -> bool {
    effects.iter().all(|effect| match effect {
        Effect::Persist(_) => false,
        Effect::Send { lane, .. } | Effect::Broadcast { lane, .. } => *lane == Lane::Call,
        _ => true,
    })
}

/// The step's history entries (in order) and the rest of its effects (in order).
fn split_history(effects: Vec<Effect>) -> (Vec<HistoryEntry>, Vec<Effect>) {
    let mut entries = Vec::new();
    let mut rest = Vec::with_capacity(effects.len());
    for effect in effects {
        match effect {
            Effect::Persist(entry) => entries.push(entry),
            other => rest.push(other),
        }
    }
    (entries, rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Frame, HistoryKind};

    fn entry() -> Effect {
        Effect::Persist(HistoryEntry {
            kind: HistoryKind::Chat,
            username: Some("alice".into()),
            text: "hello".into(),
            timestamp: "2026-12-06T00:00:00.000Z".into(),
        })
    }

    fn frame(lane: Lane) -> Effect {
        Effect::Broadcast { to: vec![1, 2], frame: Frame::from("{}"), lane }
    }

    #[test]
    fn only_a_step_of_history_and_chat_frames_lets_signaling_overtake_its_commit() {
        assert!(is_chat_with_history(&[entry(), frame(Lane::Chat), entry(), frame(Lane::Chat)]));
        // Nothing to commit: nothing to wait for.
        assert!(!is_chat_with_history(&[frame(Lane::Chat)]));
        // A call frame in the step (a kick's webrtc-peer-left): its order with later
        // signaling must hold.
        assert!(!is_chat_with_history(&[entry(), frame(Lane::Chat), frame(Lane::Call)]));
        assert!(!is_chat_with_history(&[
            entry(),
            Effect::Close { conn: 1, code: 1008, reason: String::new() }
        ]));
    }

    #[test]
    fn only_signaling_without_history_or_chat_goes_ahead() {
        assert!(is_call_only(&[frame(Lane::Call), Effect::VoiceJoined { turn_user: "a:1".into() }]));
        assert!(is_call_only(&[]));
        assert!(!is_call_only(&[frame(Lane::Call), frame(Lane::Chat)]));
        assert!(!is_call_only(&[entry(), frame(Lane::Call)]));
    }

    #[test]
    fn history_is_split_from_the_rest_in_order() {
        let (entries, rest) = split_history(vec![entry(), frame(Lane::Chat), entry(), frame(Lane::Call)]);
        assert_eq!(entries.len(), 2);
        assert_eq!(rest, vec![frame(Lane::Chat), frame(Lane::Call)]);
    }
}
