//! Per-session budgets for every kind of client message (chat has its own limit, with the
//! original's text, in `chat`).
//!
//! One token bucket per message class per connection, refilled by the time passed in. A message
//! over its budget is not acted on (typing is not relayed, a candidate not forwarded, a join not
//! performed); the rates are far above what a real client sends (the built-in client, the seed
//! guide's flow, a js-chat-server bot), so only floods hit them. Sustained flooding closes the
//! connection: more than `disconnect_after_drops` messages over budget within
//! `DROP_WINDOW` means the client is not a client.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::protocol::ClientMessage;

/// Over-budget messages are counted in windows this long.
pub const DROP_WINDOW: Duration = Duration::from_secs(10);

/// The classes a client message is budgeted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageClass {
    Typing,
    Ping,
    /// `webrtc-join` and `webrtc-leave`: each one is a notice to everyone, and persisted.
    VoiceMembership,
    /// `webrtc-offer` and `webrtc-answer`.
    Description,
    Candidate,
    MediaChange,
    /// Unknown types, malformed JSON, wrong tokens: answered with an error each.
    Other,
}

impl MessageClass {
    const COUNT: usize = 7;

    /// `None` for chat, which has its own limit.
    pub fn of(message: &ClientMessage) -> Option<MessageClass> {
        Some(match message {
            ClientMessage::Chat { .. } => return None,
            ClientMessage::Typing => Self::Typing,
            ClientMessage::Ping => Self::Ping,
            ClientMessage::WebrtcJoin { .. } | ClientMessage::WebrtcLeave => Self::VoiceMembership,
            ClientMessage::WebrtcOffer { .. } | ClientMessage::WebrtcAnswer { .. } => Self::Description,
            ClientMessage::WebrtcIceCandidate { .. } => Self::Candidate,
            ClientMessage::WebrtcMediaChange { .. } => Self::MediaChange,
            ClientMessage::WebrtcUnknown | ClientMessage::Unknown => Self::Other,
        })
    }
}

/// A sustained rate and the burst allowed above it.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

/// `[message_budgets]` in the configuration.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct MessageBudgetSettings {
    pub typing: Rate,
    pub ping: Rate,
    pub voice_membership: Rate,
    pub description: Rate,
    pub candidate: Rate,
    pub media_change: Rate,
    pub other: Rate,
    /// Over-budget messages within 10 s that close the connection (1008); 0 never closes.
    pub disconnect_after_drops: u32,
    /// A user's voice join/leave notices are persisted at most `voice_notices_persisted` times
    /// per this many seconds (they are always shown live): a user who flaps does not fill the
    /// history, and the history gets the final state once the interval is over.
    pub voice_notice_persist_interval_s: u64,
    pub voice_notices_persisted: u32,
}

impl Default for MessageBudgetSettings {
    fn default() -> Self {
        let rate = |per_second, burst| Rate { per_second, burst };
        Self {
            // Far above real use: the built-in client sends typing at most every 2 s and pings
            // every 25 s, test harnesses and bots use pings as barriers, and 8 peers
            // renegotiating and trickling at once stay well inside the signaling budgets.
            typing: rate(5.0, 20.0),
            ping: rate(20.0, 200.0),
            voice_membership: rate(1.0, 10.0),
            description: rate(20.0, 100.0),
            candidate: rate(200.0, 1000.0),
            media_change: rate(10.0, 50.0),
            other: rate(20.0, 100.0),
            disconnect_after_drops: 200,
            voice_notice_persist_interval_s: 60,
            voice_notices_persisted: 4,
        }
    }
}

impl MessageBudgetSettings {
    fn rate(&self, class: MessageClass) -> Rate {
        match class {
            MessageClass::Typing => self.typing,
            MessageClass::Ping => self.ping,
            MessageClass::VoiceMembership => self.voice_membership,
            MessageClass::Description => self.description,
            MessageClass::Candidate => self.candidate,
            MessageClass::MediaChange => self.media_change,
            MessageClass::Other => self.other,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    refilled_at: Instant,
}

/// What to do with one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// Over budget: do not act on it.
    Dropped,
    /// Over budget for too long: close the connection.
    Disconnect,
}

/// The budgets of one connection.
#[derive(Debug, Clone)]
pub struct MessageBudget {
    buckets: [Option<Bucket>; MessageClass::COUNT],
    drops_in_window: u32,
    window_started: Option<Instant>,
}

impl MessageBudget {
    pub fn new() -> Self {
        Self { buckets: [None; MessageClass::COUNT], drops_in_window: 0, window_started: None }
    }

    /// Spends one token of `class`, if there is one.
    pub fn admit(
        &mut self,
        class: MessageClass,
        settings: &MessageBudgetSettings,
        now: Instant,
    ) -> Admission {
        let rate = settings.rate(class);
        let bucket =
            self.buckets[class as usize].get_or_insert(Bucket { tokens: rate.burst, refilled_at: now });
        let elapsed = now.saturating_duration_since(bucket.refilled_at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate.per_second).min(rate.burst);
        bucket.refilled_at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Admission::Allowed;
        }
        let window_open =
            self.window_started.is_some_and(|at| now.saturating_duration_since(at) < DROP_WINDOW);
        if !window_open {
            self.window_started = Some(now);
            self.drops_in_window = 0;
        }
        self.drops_in_window += 1;
        if settings.disconnect_after_drops > 0 && self.drops_in_window > settings.disconnect_after_drops {
            Admission::Disconnect
        } else {
            Admission::Dropped
        }
    }
}

impl Default for MessageBudget {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_and_a_flood_disconnects() {
        let settings = MessageBudgetSettings::default();
        let mut budget = MessageBudget::new();
        let start = Instant::now();
        for _ in 0..20 {
            assert_eq!(budget.admit(MessageClass::Typing, &settings, start), Admission::Allowed);
        }
        assert_eq!(budget.admit(MessageClass::Typing, &settings, start), Admission::Dropped);
        // Other classes have their own buckets.
        assert_eq!(budget.admit(MessageClass::Ping, &settings, start), Admission::Allowed);
        // 5 per second come back.
        let later = start + Duration::from_secs(1);
        for _ in 0..5 {
            assert_eq!(budget.admit(MessageClass::Typing, &settings, later), Admission::Allowed);
        }
        assert_eq!(budget.admit(MessageClass::Typing, &settings, later), Admission::Dropped);
        let mut last = Admission::Dropped;
        for _ in 0..settings.disconnect_after_drops {
            last = budget.admit(MessageClass::Typing, &settings, later);
        }
        assert_eq!(last, Admission::Disconnect);
    }

    #[test]
    fn drops_spread_over_time_never_disconnect() {
        let settings = MessageBudgetSettings::default();
        let mut budget = MessageBudget::new();
        let mut now = Instant::now();
        for _ in 0..10 {
            budget.admit(MessageClass::VoiceMembership, &settings, now);
        }
        // A few drops every 11 s, for an hour: each window holds only those.
        for _ in 0..330 {
            now += Duration::from_secs(11);
            for _ in 0..15 {
                assert_ne!(
                    budget.admit(MessageClass::VoiceMembership, &settings, now),
                    Admission::Disconnect
                );
            }
        }
    }
}
