//! The limits the operator puts on users (timed bans, mutes, voice revocations): until when
//! each holds, and their expiry. Set by `admin`, checked where chat and voice are handled.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{Hub, Now};
use crate::protocol::iso_timestamp;

/// Voice revocations the hub remembers at most. Only the operator adds them, but the map would
/// otherwise grow with every distinct name until each expires. Sixteen times the relay's own
/// record of revoked credentials (`turn::auth::MAX_REVOCATIONS`, 4096), on purpose: a user
/// whose relay record that cap dropped early is still kept out of voice here, so with
/// `require_live_session` the relay keeps refusing them (`401 Not in voice chat`). About 100
/// bytes each: 6.5 MB at most.
pub const MAX_VOICE_REVOCATIONS: usize = 65_536;

/// One user kept out of voice: until when, and when the operator said so (the oldest goes
/// first when the record is full).
#[derive(Debug, Clone, Copy)]
pub(super) struct VoiceRevocation {
    pub until: Until,
    pub made: std::time::Instant,
}

/// A moment both clocks agree on: monotonic to expire, wall clock to show.
#[derive(Debug, Clone, Copy)]
pub(super) struct Until {
    pub mono: std::time::Instant,
    pub wall: DateTime<Utc>,
}

/// The longest ban, mute or revocation held: the admin API's maximum (ten years). Cluster mode
/// also reads ends from Redis, where anyone with access may have written any number.
pub(super) const MAX_RESTRICTION: Duration = Duration::from_secs(10 * 365 * 86_400);

impl Until {
    /// `duration` from now, at most [`MAX_RESTRICTION`]; never overflows either clock.
    pub(super) fn after(now: Now, duration: Duration) -> Until {
        let duration = duration.min(MAX_RESTRICTION);
        let wall = chrono::Duration::from_std(duration).ok().and_then(|d| now.wall.checked_add_signed(d));
        Until { mono: now.mono.checked_add(duration).unwrap_or(now.mono), wall: wall.unwrap_or(now.wall) }
    }

    pub(super) fn iso(&self) -> String {
        iso_timestamp(self.wall)
    }
}

impl Hub {
    /// Is `name` muted by the operator right now? Until when (`None`: until unmuted).
    pub(super) fn muted(&self, name: &str, now: Now) -> Option<Option<Until>> {
        match self.mutes.get(name) {
            Some(Some(until)) if until.mono <= now.mono => None,
            Some(until) => Some(*until),
            None => None,
        }
    }

    /// Is `name` kept out of voice (TURN access revoked) right now?
    pub(super) fn voice_revoked_until(&self, name: &str, now: Now) -> Option<Until> {
        self.voice_revoked.get(name).map(|r| r.until).filter(|until| until.mono > now.mono)
    }

    /// Keeps `name` out of voice until `until`, within `MAX_VOICE_REVOCATIONS`: when the record
    /// is full of live revocations, the oldest made is dropped (that user may rejoin voice
    /// early, though the relay still refuses the credentials it revoked until they expire).
    pub(super) fn revoke_voice(&mut self, name: String, until: Until, now: Now) {
        if self.voice_revoked.len() >= MAX_VOICE_REVOCATIONS && !self.voice_revoked.contains_key(&name) {
            self.voice_revoked.retain(|_, r| r.until.mono > now.mono);
            if self.voice_revoked.len() >= MAX_VOICE_REVOCATIONS {
                let oldest = self.voice_revoked.iter().min_by_key(|(_, r)| r.made).map(|(n, _)| n.clone());
                if let Some(oldest) = oldest {
                    self.voice_revoked.remove(&oldest);
                    tracing::warn!(user = %oldest, "voice revocation record full: the oldest was dropped early");
                }
            }
        }
        self.voice_revoked.insert(name, VoiceRevocation { until, made: now.mono });
    }

    /// Lifts timed bans, mutes and voice revocations whose time has come (from `tick` too).
    pub(super) fn expire_operator_limits(&mut self, now: Now) {
        let ended: Vec<String> = self
            .timed_bans
            .iter()
            .filter(|(_, until)| until.mono <= now.mono)
            .map(|(name, _)| name.clone())
            .collect();
        for name in ended {
            self.timed_bans.remove(&name);
            self.bans.remove(&name);
            // Timed bans were never stored, so there is nothing to unstore.
            tracing::info!(user = %name, "timed ban ended");
        }
        self.mutes.retain(|_, until| until.is_none_or(|u| u.mono > now.mono));
        self.voice_revoked.retain(|_, r| r.until.mono > now.mono);
    }
}
