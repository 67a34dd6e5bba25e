//! What one allocation was granted: permissions (per peer IP) and channel bindings, with caps.
//!
//! This is the state the data path reads: a datagram from a peer reaches the client only if
//! [`Grants::permits`] its IP, and goes as ChannelData if [`Grants::channel_to`] names a channel
//! bound to its exact address; ChannelData from the client goes to [`Grants::channel_peer`].
//! Entries age out (RFC 8656: permissions 5 minutes, channels 10), refreshed by the same
//! requests; lookups check the expiry, writes and the allocation sweep forget what is due.
//! Beyond `[turn] max_permissions_per_allocation` / `max_channels_per_allocation` new entries are
//! refused (508 Insufficient Capacity), so one allocation's memory is bounded. Pure: time is
//! passed in (Unix seconds).
//!
//! A ChannelBind also installs (or refreshes) a permission for its peer, so it needs room in both
//! sets. A channel number is bound to one peer and a peer to one number for the binding's life
//! (RFC 8656 section 12.2): anything else is a conflict, answered 400.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// RFC 8656 section 9: a permission lasts 5 minutes unless refreshed.
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// RFC 8656 section 12: a channel binding lasts 10 minutes unless refreshed.
pub const CHANNEL_BIND_LIFETIME: Duration = Duration::from_secs(600);

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

/// Why a ChannelBind was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindRefusal {
    /// 508, counted.
    Cap(CapReached),
    /// The number is bound to another peer, or the peer to another number: 400.
    Conflict,
}

/// One allocation's live permissions and channels, each with its expiry (Unix seconds).
#[derive(Debug, Default)]
pub struct Grants {
    permissions: HashMap<IpAddr, u64>,
    channels: HashMap<u16, (SocketAddr, u64)>,
    /// The reverse of `channels`, for the peer -> client direction.
    channel_of_peer: HashMap<SocketAddr, u16>,
}

fn expiry(now: u64, lifetime: Duration) -> u64 {
    now.saturating_add(lifetime.as_secs())
}

impl Grants {
    /// Drops what expired at `now` (called by writers and the allocation sweep).
    pub fn forget_expired(&mut self, now: u64) {
        self.permissions.retain(|_, expires| *expires > now);
        let channel_of_peer = &mut self.channel_of_peer;
        self.channels.retain(|_, (peer, expires)| {
            let live = *expires > now;
            if !live {
                channel_of_peer.remove(peer);
            }
            live
        });
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

    /// ChannelBind: binds `number` to `peer` (or refreshes that binding) and installs or
    /// refreshes the peer's permission; nothing changes if it is refused.
    pub fn bind_channel(
        &mut self,
        number: u16,
        peer: SocketAddr,
        now: u64,
        caps: GrantCaps,
    ) -> Result<(), BindRefusal> {
        self.forget_expired(now);
        match self.channels.get(&number) {
            Some((bound, _)) if *bound != peer => return Err(BindRefusal::Conflict),
            Some(_) => {}
            None => {
                if self.channel_of_peer.contains_key(&peer) {
                    return Err(BindRefusal::Conflict);
                }
                if self.channels.len() >= caps.channels {
                    return Err(BindRefusal::Cap(CapReached::Channels));
                }
            }
        }
        if !self.permissions.contains_key(&peer.ip()) && self.permissions.len() >= caps.permissions {
            return Err(BindRefusal::Cap(CapReached::Permissions));
        }
        self.channels.insert(number, (peer, expiry(now, CHANNEL_BIND_LIFETIME)));
        self.channel_of_peer.insert(peer, number);
        self.permissions.insert(peer.ip(), expiry(now, PERMISSION_LIFETIME));
        Ok(())
    }

    /// True if a live permission covers `ip` (a datagram from or to it may pass).
    pub fn permits(&self, ip: IpAddr, now: u64) -> bool {
        self.permissions.get(&ip).is_some_and(|expires| *expires > now)
    }

    /// The peer channel `number` is bound to, if the binding is live.
    pub fn channel_peer(&self, number: u16, now: u64) -> Option<SocketAddr> {
        self.channels.get(&number).filter(|(_, expires)| *expires > now).map(|(peer, _)| *peer)
    }

    /// The live channel bound to `peer`, if any (its datagrams then go as ChannelData).
    pub fn channel_to(&self, peer: SocketAddr, now: u64) -> Option<u16> {
        let number = *self.channel_of_peer.get(&peer)?;
        self.channel_peer(number, now).map(|_| number)
    }

    /// Live permissions and channels at `now`.
    pub fn counts(&self, now: u64) -> (usize, usize) {
        (
            self.permissions.values().filter(|e| **e > now).count(),
            self.channels.values().filter(|(_, e)| *e > now).count(),
        )
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
        assert!(!g.permits(peer(3).ip(), NOW));
        assert_eq!(g.grant_permissions(&[peer(3)], NOW, CAPS), Ok(()));
        // Refreshing installed peers (another port on the same IP too) needs no room.
        let same_ip_other_port = SocketAddr::new(peer(1).ip(), 9);
        assert_eq!(g.grant_permissions(&[peer(1), same_ip_other_port, peer(3)], NOW, CAPS), Ok(()));
        assert_eq!(g.grant_permissions(&[peer(4)], NOW, CAPS), Err(CapReached::Permissions));
    }

    #[test]
    fn permissions_expire_after_five_minutes_unless_refreshed() {
        let mut g = Grants::default();
        g.grant_permissions(&[peer(1), peer(2), peer(3)], NOW, CAPS).unwrap();
        let last_second = NOW + PERMISSION_LIFETIME.as_secs() - 1;
        assert!(g.permits(peer(1).ip(), last_second));
        assert_eq!(g.grant_permissions(&[peer(4)], last_second, CAPS), Err(CapReached::Permissions));
        g.grant_permissions(&[peer(1)], last_second, CAPS).unwrap();
        let expired = NOW + PERMISSION_LIFETIME.as_secs();
        assert!(!g.permits(peer(2).ip(), expired), "not refreshed: gone");
        assert!(g.permits(peer(1).ip(), expired), "refreshed: still there");
        assert_eq!(g.grant_permissions(&[peer(4), peer(5)], expired, CAPS), Ok(()), "slots freed");
        assert_eq!(g.counts(expired), (3, 0));
    }

    #[test]
    fn channels_map_number_and_peer_both_ways_and_expire_after_ten_minutes() {
        let mut g = Grants::default();
        g.bind_channel(0x4000, peer(1), NOW, CAPS).unwrap();
        assert_eq!(g.channel_peer(0x4000, NOW), Some(peer(1)));
        assert_eq!(g.channel_to(peer(1), NOW), Some(0x4000));
        assert_eq!(g.channel_to(SocketAddr::new(peer(1).ip(), 1), NOW), None, "exact address only");
        assert!(g.permits(peer(1).ip(), NOW), "a binding installs its permission");
        // The permission a binding installs lasts 5 minutes, the binding 10: data needs both.
        let permission_gone = NOW + PERMISSION_LIFETIME.as_secs();
        assert!(!g.permits(peer(1).ip(), permission_gone));
        assert_eq!(g.channel_peer(0x4000, permission_gone), Some(peer(1)));
        let gone = NOW + CHANNEL_BIND_LIFETIME.as_secs();
        assert_eq!(g.channel_peer(0x4000, gone - 1), Some(peer(1)));
        assert_eq!(g.channel_peer(0x4000, gone), None);
        assert_eq!(g.channel_to(peer(1), gone), None);
        g.forget_expired(gone);
        assert_eq!(g.counts(gone), (0, 0));
        // Once expired, the number and the peer are free again.
        g.bind_channel(0x4000, peer(2), gone, CAPS).unwrap();
        g.bind_channel(0x4001, peer(1), gone, CAPS).unwrap();
    }

    #[test]
    fn a_number_binds_one_peer_and_a_peer_one_number() {
        let mut g = Grants::default();
        g.bind_channel(0x4000, peer(1), NOW, CAPS).unwrap();
        assert_eq!(g.bind_channel(0x4000, peer(2), NOW, CAPS), Err(BindRefusal::Conflict));
        assert_eq!(g.bind_channel(0x4001, peer(1), NOW, CAPS), Err(BindRefusal::Conflict));
        assert_eq!(g.channel_to(peer(2), NOW), None, "a refused bind changes nothing");
        // The same pair again is a refresh.
        g.bind_channel(0x4000, peer(1), NOW + 500, CAPS).unwrap();
        assert_eq!(g.channel_peer(0x4000, NOW + 700), Some(peer(1)));
    }

    #[test]
    fn channels_need_a_channel_slot_and_a_permission_slot() {
        let mut g = Grants::default();
        g.bind_channel(0x4000, peer(1), NOW, CAPS).unwrap();
        g.bind_channel(0x4001, peer(2), NOW, CAPS).unwrap();
        assert_eq!(g.bind_channel(0x4002, peer(3), NOW, CAPS), Err(BindRefusal::Cap(CapReached::Channels)));
        // Refreshing a bound channel is always possible.
        assert_eq!(g.bind_channel(0x4000, peer(1), NOW, CAPS), Ok(()));
        assert_eq!(g.counts(NOW), (2, 2));
        // The channels' peers hold permissions: one slot is left.
        g.grant_permissions(&[peer(3)], NOW, CAPS).unwrap();
        let roomy = GrantCaps { permissions: 3, channels: 8 };
        assert_eq!(
            g.bind_channel(0x4003, peer(4), NOW, roomy),
            Err(BindRefusal::Cap(CapReached::Permissions))
        );
        assert_eq!(g.bind_channel(0x4003, peer(3), NOW, roomy), Ok(()));
    }
}
