//! The destinations a GSO send was refused for, and from which segment size: [`GsoRefusals`].
//!
//! Why per destination and not per socket: the kernel refuses a GSO send with `EINVAL` when a
//! segment is larger than the route's MTU allows (or the destination is unusable, such as port
//! 0), and with `EIO` when the route's device cannot checksum the segments. Both depend on where
//! the datagrams go, and a client picks where its datagrams go: one client's peer behind a
//! small-MTU route must not turn GSO off for every other client of the socket. Only a kernel
//! without the feature at all turns it off for the whole sender (`send`).
//!
//! The memory is bounded by [`MAX_GSO_REFUSALS`]: when it is full it is cleared. Forgetting only
//! costs one more refused GSO call per destination (the run then goes by `sendmmsg`, nothing is
//! lost), so a client cycling through many refused destinations cannot grow it or hurt others
//! beyond that.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Most destinations one sender remembers GSO refusals for. A relay socket sends to a handful of
/// peers and a listener to its clients; refusals are rare (an unusual route), so 1024 covers
/// every real case, in about 40 KiB at most.
pub(super) const MAX_GSO_REFUSALS: usize = 1024;

/// No GSO refusal for a destination: every segment size may be tried.
pub(super) const NOT_REFUSED: usize = usize::MAX;

/// Per destination, the smallest GSO segment size the kernel refused (sizes from there up go
/// by `sendmmsg`; 0: every size).
#[derive(Default)]
pub(super) struct GsoRefusals {
    by_destination: Mutex<HashMap<SocketAddr, usize>>,
    /// Whether the map may hold anything: the send path (every batch) reads only this until a
    /// first refusal, so the common case takes no lock.
    any: AtomicBool,
}

impl GsoRefusals {
    /// The smallest segment size refused for `to` ([`NOT_REFUSED`] if none).
    pub fn refused_from(&self, to: SocketAddr) -> usize {
        if !self.any.load(Ordering::Relaxed) {
            return NOT_REFUSED;
        }
        let map = self.by_destination.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        map.get(&to).copied().unwrap_or(NOT_REFUSED)
    }

    /// Remembers that `to` refused GSO segments of `segment` bytes (and so any larger); returns
    /// the smallest size now refused for it.
    pub fn refuse(&self, to: SocketAddr, segment: usize) -> usize {
        let mut map = self.by_destination.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if map.len() >= MAX_GSO_REFUSALS && !map.contains_key(&to) {
            map.clear();
        }
        let from = map.entry(to).or_insert(NOT_REFUSED);
        *from = (*from).min(segment);
        self.any.store(true, Ordering::Relaxed);
        *from
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_destination.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([198, 51, 100, 7], port))
    }

    #[test]
    fn a_refusal_is_kept_for_its_destination_only_and_from_its_smallest_size() {
        let refusals = GsoRefusals::default();
        assert_eq!(refusals.refused_from(addr(1)), NOT_REFUSED);
        assert_eq!(refusals.refuse(addr(1), 1400), 1400);
        assert_eq!(refusals.refuse(addr(1), 1500), 1400, "a larger size refused changes nothing");
        assert_eq!(refusals.refuse(addr(1), 900), 900);
        assert_eq!(refusals.refused_from(addr(1)), 900);
        assert_eq!(refusals.refused_from(addr(2)), NOT_REFUSED, "another destination keeps GSO");
    }

    #[test]
    fn the_memory_is_bounded_and_forgets_when_full() {
        let refusals = GsoRefusals::default();
        for port in 1..=MAX_GSO_REFUSALS as u16 {
            refusals.refuse(addr(port), 0);
        }
        assert_eq!(refusals.len(), MAX_GSO_REFUSALS);
        refusals.refuse(addr(1), 100);
        assert_eq!(refusals.len(), MAX_GSO_REFUSALS, "a known destination is updated in place");
        refusals.refuse(addr(60_000), 0);
        assert_eq!(refusals.len(), 1, "a new one past the cap clears the rest");
        assert_eq!(refusals.refused_from(addr(2)), NOT_REFUSED);
        assert_eq!(refusals.refused_from(addr(60_000)), 0);
    }
}
