//! What one allocation was granted: permissions (per peer IP) and channel bindings, with caps.
//!
//! The crate keeps its permission and channel maps private and unbounded (a client could
//! install thousands of permissions on one allocation, each with its own timer task), so we
//! mirror what we let through and refuse beyond `[turn] max_permissions_per_allocation` /
//! `max_channels_per_allocation` (508 Insufficient Capacity). Entries age out on the same
//! lifetimes as the crate's (RFC 8656: permissions 5 minutes, channels 10), refreshed by the
//! same requests, so a long call never runs into the cap with stale entries; and the whole set
//! is dropped with its allocation. Pure: time is passed in (Unix seconds).
//!
//! A ChannelBind also installs a permission for its peer (the crate does so), so it needs room
//! in both sets.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// The crate's permission lifetime (RFC 8656 section 9).
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// The channel-binding lifetime we hand the crate (RFC 8656 section 12: 10 minutes).
pub const CHANNEL_BIND_LIFETIME: Duration = Duration::from_secs(600);
/// Our clock is whole seconds, the crate's timers are not: keep entries one second longer so
/// that ours never expires before the crate's (which would let the cap be exceeded briefly).
const CLOCK_SLACK_S: u64 = 1;

/// `[turn] max_permissions_per_allocation`, `max_channels_per_allocation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantCaps {
    pub permissions: usize,
    pub channels: usize,
}

/// Which cap a request ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapReached {
    Permissions,
    Channels,
}

/// One allocation's live permissions and channels, each with its expiry (Unix seconds).
#[derive(Debug, Default)]
pub struct Grants {
    permissions: HashMap<IpAddr, u64>,
    channels: HashMap<u16, (SocketAddr, u64)>,
}

fn expiry(now: u64, lifetime: Duration) -> u64 {
    now.saturating_add(lifetime.as_secs()).saturating_add(CLOCK_SLACK_S)
}

impl Grants {
    fn forget_expired(&mut self, now: u64) {
        self.permissions.retain(|_, expires| *expires > now);
        self.channels.retain(|_, (_, expires)| *expires > now);
    }

    /// CreatePermission for `peers`: all of them fit under the cap (installed or refreshed), or
    /// none is recorded.
    pub fn grant_permissions(
        &mut self,
        peers: &[SocketAddr],
        now: u64,
        caps: GrantCaps,
    ) -> Result<(), CapReached> {
        self.forget_expired(now);
        let mut new_ips: Vec<IpAddr> =
            peers.iter().map(|p| p.ip()).filter(|ip| !self.permissions.contains_key(ip)).collect();
        new_ips.sort_unstable();
        new_ips.dedup();
        if self.permissions.len() + new_ips.len() > caps.permissions {
            return Err(CapReached::Permissions);
        }
        for peer in peers {
            self.permissions.insert(peer.ip(), expiry(now, PERMISSION_LIFETIME));
        }
        Ok(())
    }

    /// May channel `number` be bound (or refreshed) to `peer`? Records nothing: the crate may
    /// still refuse (a number bound to another peer), so [`Self::record_channel`] follows its
    /// success.
    pub fn check_channel(
        &mut self,
        number: u16,
        peer: SocketAddr,
        now: u64,
        caps: GrantCaps,
    ) -> Result<(), CapReached> {
        self.forget_expired(now);
        if !self.channels.contains_key(&number) && self.channels.len() >= caps.channels {
            return Err(CapReached::Channels);
        }
        if !self.permissions.contains_key(&peer.ip()) && self.permissions.len() >= caps.permissions {
            return Err(CapReached::Permissions);
        }
        Ok(())
    }

    /// The crate bound (or refreshed) channel `number` to `peer`, and the peer's permission.
    pub fn record_channel(&mut self, number: u16, peer: SocketAddr, now: u64) {
        self.channels.insert(number, (peer, expiry(now, CHANNEL_BIND_LIFETIME)));
        self.permissions.insert(peer.ip(), expiry(now, PERMISSION_LIFETIME));
    }

    /// Live permissions and channels (after expiring what is due at `now`).
    pub fn counts(&mut self, now: u64) -> (usize, usize) {
        self.forget_expired(now);
        (self.permissions.len(), self.channels.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;
    const CAPS: GrantCaps = GrantCaps { permissions: 3, channels: 2 };

    fn peer(i: u8) -> SocketAddr {
        SocketAddr::from(([198, 51, 100, i], 5000 + u16::from(i)))
    }

    #[test]
    fn permissions_beyond_the_cap_are_refused_all_or_nothing() {
        let mut g = Grants::default();
        assert_eq!(g.grant_permissions(&[peer(1), peer(2)], NOW, CAPS), Ok(()));
        // Two new ones would make four: refused, and neither is recorded.
        assert_eq!(g.grant_permissions(&[peer(3), peer(4)], NOW, CAPS), Err(CapReached::Permissions));
        assert_eq!(g.counts(NOW), (2, 0));
        assert_eq!(g.grant_permissions(&[peer(3)], NOW, CAPS), Ok(()));
        // Refreshing installed peers (another port on the same IP too) needs no room.
        let same_ip_other_port = SocketAddr::new(peer(1).ip(), 9);
        assert_eq!(g.grant_permissions(&[peer(1), same_ip_other_port, peer(3)], NOW, CAPS), Ok(()));
        assert_eq!(g.grant_permissions(&[peer(4)], NOW, CAPS), Err(CapReached::Permissions));
    }

    #[test]
    fn expired_permissions_free_their_slot() {
        let mut g = Grants::default();
        g.grant_permissions(&[peer(1), peer(2), peer(3)], NOW, CAPS).unwrap();
        let later = NOW + PERMISSION_LIFETIME.as_secs();
        assert_eq!(g.grant_permissions(&[peer(4)], later, CAPS), Err(CapReached::Permissions), "not yet");
        // Refreshed ones stay; the others expire.
        g.grant_permissions(&[peer(1)], later, CAPS).unwrap();
        let after = later + CLOCK_SLACK_S;
        assert_eq!(g.grant_permissions(&[peer(4), peer(5)], after, CAPS), Ok(()));
        assert_eq!(g.counts(after), (3, 0));
    }

    #[test]
    fn channels_need_a_channel_slot_and_a_permission_slot() {
        let mut g = Grants::default();
        for (number, i) in [(0x4000, 1), (0x4001, 2)] {
            assert_eq!(g.check_channel(number, peer(i), NOW, CAPS), Ok(()));
            g.record_channel(number, peer(i), NOW);
        }
        assert_eq!(g.check_channel(0x4002, peer(3), NOW, CAPS), Err(CapReached::Channels));
        // Refreshing a bound channel is always possible.
        assert_eq!(g.check_channel(0x4000, peer(1), NOW, CAPS), Ok(()));
        assert_eq!(g.counts(NOW), (2, 2));
        // The channels' peers hold permissions: one slot is left.
        g.grant_permissions(&[peer(3)], NOW, CAPS).unwrap();
        let roomy = GrantCaps { permissions: 3, channels: 8 };
        assert_eq!(g.check_channel(0x4003, peer(4), NOW, roomy), Err(CapReached::Permissions));
        assert_eq!(g.check_channel(0x4003, peer(3), NOW, roomy), Ok(()));
        let gone = NOW + CHANNEL_BIND_LIFETIME.as_secs() + CLOCK_SLACK_S;
        assert_eq!(g.counts(gone), (0, 0));
    }
}
