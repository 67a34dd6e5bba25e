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
//!
//! Both sets are [`InlineList`]s scanned linearly, not hash maps: the data path reads them on
//! every datagram and an allocation holds one or two entries of each (see `inline_list` for
//! what the maps cost). The caps bound the scan.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::turn::inline_list::InlineList;

/// RFC 8656 section 9: a permission lasts 5 minutes unless refreshed.
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// RFC 8656 section 12: a channel binding lasts 10 minutes unless refreshed.
pub const CHANNEL_BIND_LIFETIME: Duration = Duration::from_secs(600);

/// Permissions and channels an allocation keeps inline (a call needs one or two of each: the
/// other end's relayed address, and its host address while ICE tries it); more spill to the
/// heap, up to the caps.
const INLINE_GRANTS: usize = 2;

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

/// A permission for one peer IP, until `expires` (Unix seconds).
#[derive(Debug, Clone, Copy)]
struct Permission {
    ip: IpAddr,
    expires: u64,
}

impl Default for Permission {
    fn default() -> Self {
        Permission { ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED), expires: 0 }
    }
}

/// Channel `number` bound to `peer`, until `expires` (Unix seconds).
#[derive(Debug, Clone, Copy)]
struct Channel {
    number: u16,
    peer: SocketAddr,
    expires: u64,
}

impl Default for Channel {
    fn default() -> Self {
        Channel { number: 0, peer: SocketAddr::from(([0, 0, 0, 0], 0)), expires: 0 }
    }
}

/// One allocation's permissions and channels, each with its expiry (Unix seconds).
///
/// At most one permission per IP and, for channels, one entry per number and per peer (the
/// binding rules keep it a one-to-one map, so one list serves both directions). Entries past
/// their expiry stay until a write or the sweep forgets them; every lookup checks the expiry.
#[derive(Debug, Default, Clone)]
pub struct Grants {
    permissions: InlineList<Permission, INLINE_GRANTS>,
    channels: InlineList<Channel, INLINE_GRANTS>,
}

fn expiry(now: u64, lifetime: Duration) -> u64 {
    now.saturating_add(lifetime.as_secs())
}

impl Grants {
    /// Drops what expired at `now` (called by writers and the allocation sweep); true if
    /// anything was dropped.
    pub fn forget_expired(&mut self, now: u64) -> bool {
        let held = (self.permissions.len(), self.channels.len());
        self.permissions.retain(|p| p.expires > now);
        self.channels.retain(|c| c.expires > now);
        held != (self.permissions.len(), self.channels.len())
    }

    fn permission(&self, ip: IpAddr) -> Option<&Permission> {
        self.permissions.find(|p| p.ip == ip)
    }

    fn channel(&self, number: u16) -> Option<&Channel> {
        self.channels.find(|c| c.number == number)
    }

    /// Installs or refreshes the permission for `ip` (the caller checked the cap).
    fn install_permission(&mut self, ip: IpAddr, now: u64) {
        let expires = expiry(now, PERMISSION_LIFETIME);
        match self.permissions.find_mut(|p| p.ip == ip) {
            Some(held) => held.expires = expires,
            None => self.permissions.push(Permission { ip, expires }),
        }
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
            peers.iter().map(|p| p.ip()).filter(|ip| self.permission(*ip).is_none()).collect();
        new_ips.sort_unstable();
        new_ips.dedup();
        if self.permissions.len() + new_ips.len() > caps.permissions {
            return Err(CapReached::Permissions);
        }
        for peer in peers {
            self.install_permission(peer.ip(), now);
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
        match self.channel(number) {
            Some(bound) if bound.peer != peer => return Err(BindRefusal::Conflict),
            Some(_) => {}
            None => {
                if self.channels.find(|c| c.peer == peer).is_some() {
                    return Err(BindRefusal::Conflict);
                }
                if self.channels.len() >= caps.channels {
                    return Err(BindRefusal::Cap(CapReached::Channels));
                }
            }
        }
        if self.permission(peer.ip()).is_none() && self.permissions.len() >= caps.permissions {
            return Err(BindRefusal::Cap(CapReached::Permissions));
        }
        let expires = expiry(now, CHANNEL_BIND_LIFETIME);
        match self.channels.find_mut(|c| c.number == number) {
            // Bound to this same peer (checked above): a refresh.
            Some(bound) => bound.expires = expires,
            None => self.channels.push(Channel { number, peer, expires }),
        }
        self.install_permission(peer.ip(), now);
        Ok(())
    }

    /// True if a live permission covers `ip` (a datagram from or to it may pass).
    pub fn permits(&self, ip: IpAddr, now: u64) -> bool {
        self.permission(ip).is_some_and(|p| p.expires > now)
    }

    /// The peer channel `number` is bound to, if the binding is live.
    pub fn channel_peer(&self, number: u16, now: u64) -> Option<SocketAddr> {
        self.channel(number).filter(|c| c.expires > now).map(|c| c.peer)
    }

    /// The live channel bound to `peer`, if any (its datagrams then go as ChannelData).
    pub fn channel_to(&self, peer: SocketAddr, now: u64) -> Option<u16> {
        self.channels.find(|c| c.peer == peer).filter(|c| c.expires > now).map(|c| c.number)
    }

    /// Live permissions and channels at `now`.
    pub fn counts(&self, now: u64) -> (usize, usize) {
        (
            self.permissions.iter().filter(|p| p.expires > now).count(),
            self.channels.iter().filter(|c| c.expires > now).count(),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

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

    /// The grants as they were kept before [`InlineList`]: three hash maps. The reference the
    /// lists are compared with, operation by operation.
    #[derive(Default)]
    struct MapGrants {
        permissions: HashMap<IpAddr, u64>,
        channels: HashMap<u16, (SocketAddr, u64)>,
        channel_of_peer: HashMap<SocketAddr, u16>,
    }

    impl MapGrants {
        fn forget_expired(&mut self, now: u64) {
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

        fn grant_permissions(
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

        fn bind_channel(
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

        fn permits(&self, ip: IpAddr, now: u64) -> bool {
            self.permissions.get(&ip).is_some_and(|expires| *expires > now)
        }

        fn channel_peer(&self, number: u16, now: u64) -> Option<SocketAddr> {
            self.channels.get(&number).filter(|(_, expires)| *expires > now).map(|(peer, _)| *peer)
        }

        fn channel_to(&self, peer: SocketAddr, now: u64) -> Option<u16> {
            let number = *self.channel_of_peer.get(&peer)?;
            self.channel_peer(number, now).map(|_| number)
        }

        fn counts(&self, now: u64) -> (usize, usize) {
            (
                self.permissions.values().filter(|e| **e > now).count(),
                self.channels.values().filter(|(_, e)| *e > now).count(),
            )
        }
    }

    /// One step of a client's (and the sweep's) life with an allocation.
    #[derive(Debug, Clone)]
    enum Step {
        /// Seconds pass (the clock may also step back a little, as a wall clock can).
        Wait(i64),
        Permit(Vec<SocketAddr>),
        Bind(u16, SocketAddr),
        Sweep,
    }

    /// Few IPs, ports and numbers, so that refreshes, conflicts and caps all happen.
    fn peer_address() -> impl Strategy<Value = SocketAddr> {
        (0u8..4, 0u16..3).prop_map(|(ip, port)| {
            if ip == 3 {
                SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], 6000 + port))
            } else {
                SocketAddr::from(([198, 51, 100, ip], 6000 + port))
            }
        })
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            prop_oneof![(-5i64..5), (0i64..400)].prop_map(Step::Wait),
            proptest::collection::vec(peer_address(), 1..4).prop_map(Step::Permit),
            ((0x4000u16..0x4004), peer_address()).prop_map(|(n, p)| Step::Bind(n, p)),
            Just(Step::Sweep),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
        /// For any sequence of CreatePermissions, ChannelBinds, sweeps and passing time, the
        /// lists answer every request and every lookup as the maps did, and stay within the caps.
        #[test]
        fn lists_give_the_answers_the_maps_gave(
            permissions in 1usize..5,
            channels in 1usize..4,
            steps in proptest::collection::vec(step(), 1..60),
        ) {
            let caps = GrantCaps { permissions, channels };
            let (mut lists, mut maps) = (Grants::default(), MapGrants::default());
            let mut now = NOW;
            for step in steps {
                match step {
                    Step::Wait(secs) => now = now.saturating_add_signed(secs),
                    Step::Permit(peers) => prop_assert_eq!(
                        lists.grant_permissions(&peers, now, caps),
                        maps.grant_permissions(&peers, now, caps)
                    ),
                    Step::Bind(number, peer) => prop_assert_eq!(
                        lists.bind_channel(number, peer, now, caps),
                        maps.bind_channel(number, peer, now, caps)
                    ),
                    Step::Sweep => {
                        let held = maps.permissions.len() + maps.channels.len();
                        maps.forget_expired(now);
                        let dropped = held != maps.permissions.len() + maps.channels.len();
                        prop_assert_eq!(lists.forget_expired(now), dropped, "says whether it dropped any");
                    }
                }
                prop_assert!(lists.permissions.len() <= caps.permissions);
                prop_assert!(lists.channels.len() <= caps.channels);
                // Every lookup the data path makes, now and at the edges of the lifetimes.
                for at in [now, now + 1, now + 299, now + 300, now + 599, now + 600] {
                    prop_assert_eq!(lists.counts(at), maps.counts(at));
                    for number in 0x4000u16..0x4004 {
                        prop_assert_eq!(lists.channel_peer(number, at), maps.channel_peer(number, at));
                    }
                    for ip in 0u8..4 {
                        for port in 0u16..3 {
                            let peer = if ip == 3 {
                                SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], 6000 + port))
                            } else {
                                SocketAddr::from(([198, 51, 100, ip], 6000 + port))
                            };
                            prop_assert_eq!(lists.permits(peer.ip(), at), maps.permits(peer.ip(), at));
                            prop_assert_eq!(lists.channel_to(peer, at), maps.channel_to(peer, at));
                        }
                    }
                }
            }
        }
    }
}
