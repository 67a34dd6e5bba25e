//! Appending changes to the shared log. Every run of consecutive publishes the writer found
//! queued goes to Redis as one `publish` script call (see `super`); a voice leave has its own,
//! conditional script. A failure is told to the users whose changes it carried, as exactly as
//! the writer knows it: "not sent" only when Redis provably did not run the change.

use std::sync::atomic::Ordering;

use super::Writer;
use crate::cluster::event::ClusterEvent;
use crate::hub::runner::HubEvent;
use crate::hub::{ConnId, PublishFailure};
use crate::protocol::HistoryEntry;

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
        | ClusterEvent::VoiceJoined { entry, live_only: false, .. }
        | ClusterEvent::VoiceLeft { entry, live_only: false, .. } => Some(entry),
        ClusterEvent::VoiceJoined { live_only: true, .. }
        | ClusterEvent::VoiceLeft { live_only: true, .. } => None,
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

pub(super) fn entry_json(event: &ClusterEvent) -> String {
    history_entry(event).map(|entry| serde_json::to_string(entry).unwrap_or_default()).unwrap_or_default()
}

/// Publishes the `publish` script carries (a voice leave goes through `voice_leave`).
pub(super) fn is_batchable(event: &ClusterEvent) -> bool {
    !matches!(event, ClusterEvent::VoiceLeft { .. })
}

/// What a failed call means for the changes it carried.
pub(super) fn failure_of(e: &redis::RedisError) -> PublishFailure {
    // Redis answered with an error (a script is refused before it writes anything) or no
    // connection could be opened: the change is not in the store. Anything else (no answer in
    // time, the connection lost mid-call) may have come after Redis ran it.
    if matches!(e.kind(), redis::ErrorKind::Server(_)) || e.is_connection_refusal() {
        PublishFailure::NotWritten
    } else {
        PublishFailure::MaybeWritten
    }
}

impl Writer {
    /// Logs `publishes` in their order with one script call (nothing for an empty run).
    pub(super) async fn publish_all(&mut self, publishes: Vec<(Option<ConnId>, ClusterEvent)>) {
        if publishes.is_empty() {
            return;
        }
        let result = if self.ensure_connected().await {
            let keys = [self.ctx.keys.bans(), self.ctx.keys.mutes(), self.ctx.keys.turn_secret()];
            let mut invocation = self.invocation(&self.scripts.publish, &keys);
            for (_, event) in &publishes {
                let (op, name, until) = stored_change(event);
                invocation.arg(event.to_json()).arg(entry_json(event)).arg(op).arg(name).arg(until);
            }
            let result: redis::RedisResult<i64> = invocation.invoke_async(&mut self.conn.clone()).await;
            self.settle(result, "cluster publish").map(drop).map_err(|e| failure_of(&e))
        } else {
            Err(PublishFailure::NotWritten)
        };
        let Err(failure) = result else { return };
        self.ctx.status.publish_failures.fetch_add(publishes.len() as u64, Ordering::Relaxed);
        for conn in publishes.into_iter().filter_map(|(origin, _)| origin) {
            self.hub.send(HubEvent::PublishFailed { conn, failure }).await;
        }
    }

    /// A `VoiceLeft`: frees the seat only if it is still that turn user's (so a retry after
    /// an unknown outcome changes nothing twice).
    pub(super) async fn leave_voice_seat(&mut self, event: &ClusterEvent) -> Result<(), PublishFailure> {
        let ClusterEvent::VoiceLeft { name, turn_user, .. } = event else { return Ok(()) };
        if !self.ensure_connected().await {
            return Err(PublishFailure::NotWritten);
        }
        let mut invocation = self.invocation(&self.scripts.voice_leave, &[self.ctx.keys.voice()]);
        invocation.arg(name).arg(turn_user).arg(event.to_json()).arg(entry_json(event));
        let result: redis::RedisResult<i64> = invocation.invoke_async(&mut self.conn.clone()).await;
        self.settle(result, "cluster voice leave").map(drop).map_err(|e| failure_of(&e))
    }
}
