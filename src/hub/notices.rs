//! What the whole room is told and what the history keeps: system notices, voice join/leave
//! notices (shown live always, persisted within an allowance per user and interval), and the
//! history itself (in memory, persisted by the runner; through the log in cluster mode).

use std::time::{Duration, Instant};

use super::{Effect, Hub, Now, Out};
use crate::cluster::event::ClusterEvent;
use crate::protocol::{iso_timestamp, HistoryEntry, HistoryKind, ServerMessage};

/// One user's persisted voice notices in the current interval.
#[derive(Debug, Clone, Copy)]
pub(super) struct VoiceNotices {
    since: Instant,
    persisted: u32,
    last_joined: bool,
}

/// "<name> joined voice chat" / "<name> left voice chat" (the original's texts).
pub(super) fn voice_notice(name: &str, joined: bool) -> String {
    if joined {
        format!("{name} joined voice chat")
    } else {
        format!("{name} left voice chat")
    }
}

impl Hub {
    /// A voice join/leave notice: shown live always, persisted up to the allowance per
    /// interval per user (see `settle_voice_notices`).
    pub(super) fn announce_voice(&mut self, out: &mut Out, name: &str, joined: bool, now: Now) {
        let text = voice_notice(name, joined);
        if self.voice_notice_allowed(name, joined, now) {
            self.announce(out, &text, now);
        } else {
            out.broadcast(self.welcomed_connections(), &ServerMessage::System { text: &text });
        }
    }

    /// Counts a voice notice of `name` against their allowance: true if it may be persisted.
    pub(super) fn voice_notice_allowed(&mut self, name: &str, joined: bool, now: Now) -> bool {
        let allowance = self.settings.message_budgets.voice_notices_persisted;
        let notices = self.voice_notice_persisted.entry(name.to_string()).or_insert(VoiceNotices {
            since: now.mono,
            persisted: 0,
            last_joined: joined,
        });
        if notices.persisted >= allowance {
            return false;
        }
        notices.persisted += 1;
        notices.last_joined = joined;
        true
    }

    /// After the interval, persists one notice for a user whose real voice state differs from
    /// the last persisted one (the flapping ended somewhere else than the history says).
    pub(super) fn settle_voice_notices(&mut self, out: &mut Out, now: Now) {
        let interval = Duration::from_secs(self.settings.message_budgets.voice_notice_persist_interval_s);
        let settled: Vec<(String, bool)> = self
            .voice_notice_persisted
            .iter()
            .filter(|(_, notices)| now.mono.duration_since(notices.since) >= interval)
            .map(|(name, notices)| (name.clone(), notices.last_joined))
            .collect();
        for (name, persisted_joined) in settled {
            self.voice_notice_persisted.remove(&name);
            let in_voice = self.voice.contains(&name);
            if in_voice != persisted_joined {
                self.record(out, HistoryKind::System, None, &voice_notice(&name, in_voice), now);
            }
        }
    }

    /// Broadcasts a system notice to every welcomed user and persists it.
    pub(super) fn announce(&mut self, out: &mut Out, text: &str, now: Now) {
        self.record(out, HistoryKind::System, None, text, now);
        if !self.is_clustered() {
            out.broadcast(self.welcomed_connections(), &ServerMessage::System { text });
        }
    }

    /// Appends to the in-memory history and asks the runner to persist it.
    pub(super) fn record(
        &mut self,
        out: &mut Out,
        kind: HistoryKind,
        username: Option<&str>,
        text: &str,
        now: Now,
    ) {
        let entry = HistoryEntry {
            kind,
            username: username.map(str::to_string),
            text: text.to_string(),
            timestamp: iso_timestamp(now.wall),
        };
        if self.is_clustered() {
            // Shown and kept when read back from the log, on every node alike.
            let event = match kind {
                HistoryKind::Chat => ClusterEvent::Chat { entry },
                HistoryKind::System => ClusterEvent::System { entry },
            };
            self.publish(out, None, event);
            return;
        }
        self.history.push_back(entry.clone());
        while self.history.len() > self.settings.chat.history_limit {
            self.history.pop_front();
        }
        out.push(Effect::Persist(entry));
    }
}
