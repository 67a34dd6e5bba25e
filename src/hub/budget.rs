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
    /// Every frame of a connection together, counted where it arrives (the session task), so
    /// a flood is cut off before it reaches the hub and queues in front of everyone else's
    /// messages. Above every class's own rate: only a flood meets it.
    pub ingress: Rate,
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
            ingress: rate(200.0, 1200.0),
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

impl Bucket {
    /// Refills for the time passed, then spends one token if there is one.
    fn take(slot: &mut Option<Bucket>, rate: Rate, now: Instant) -> bool {
        let bucket = slot.get_or_insert(Bucket { tokens: rate.burst, refilled_at: now });
        let elapsed = now.saturating_duration_since(bucket.refilled_at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate.per_second).min(rate.burst);
        bucket.refilled_at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Drops counted in `DROP_WINDOW`s: too many in one window means the client is not a client.
#[derive(Debug, Clone, Copy, Default)]
struct DropCount {
    in_window: u32,
    window_started: Option<Instant>,
}

impl DropCount {
    fn dropped(&mut self, disconnect_after: u32, now: Instant) -> Admission {
        let window_open =
            self.window_started.is_some_and(|at| now.saturating_duration_since(at) < DROP_WINDOW);
        if !window_open {
            self.window_started = Some(now);
            self.in_window = 0;
        }
        self.in_window += 1;
        if disconnect_after > 0 && self.in_window > disconnect_after {
            Admission::Disconnect
        } else {
            Admission::Dropped
        }
    }
}

/// The ingress budget of one connection: every frame, whatever its type, before it is parsed
/// further or sent to the hub.
#[derive(Debug, Clone, Default)]
pub struct IngressBudget {
    bucket: Option<Bucket>,
    drops: DropCount,
}

impl IngressBudget {
    pub fn admit(&mut self, settings: &MessageBudgetSettings, now: Instant) -> Admission {
        if Bucket::take(&mut self.bucket, settings.ingress, now) {
            Admission::Allowed
        } else {
            self.drops.dropped(settings.disconnect_after_drops, now)
        }
    }
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
    drops: DropCount,
}

impl MessageBudget {
    pub fn new() -> Self {
        Self { buckets: [None; MessageClass::COUNT], drops: DropCount::default() }
    }

    /// Spends one token of `class`, if there is one.
    pub fn admit(
        &mut self,
        class: MessageClass,
        settings: &MessageBudgetSettings,
        now: Instant,
    ) -> Admission {
        if Bucket::take(&mut self.buckets[class as usize], settings.rate(class), now) {
            Admission::Allowed
        } else {
            self.drops.dropped(settings.disconnect_after_drops, now)
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
    fn ingress_admits_its_burst_and_rate_then_a_flood_disconnects() {
        let settings = MessageBudgetSettings::default();
        let mut ingress = IngressBudget::default();
        let start = Instant::now();
        let burst = settings.ingress.burst as usize;
        for _ in 0..burst {
            assert_eq!(ingress.admit(&settings, start), Admission::Allowed);
        }
        assert_eq!(ingress.admit(&settings, start), Admission::Dropped);
        let later = start + Duration::from_millis(100);
        for _ in 0..(settings.ingress.per_second / 10.0) as usize {
            assert_eq!(ingress.admit(&settings, later), Admission::Allowed);
        }
        let mut last = Admission::Allowed;
        for _ in 0..settings.disconnect_after_drops {
            last = ingress.admit(&settings, later);
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
