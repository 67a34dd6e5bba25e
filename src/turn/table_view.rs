//! A UDP listener read loop's own view of the allocation table: the allocations of the clients
//! it hears, the allocations behind the relayed addresses those clients send to, and a copy of
//! each one's grants; valid until the table changes (an allocation inserted or removed) or,
//! for one allocation's copy, until its grants change.
//!
//! Why: relaying one ChannelData message looked up the sender's allocation and the receiving
//! one in the shared table (two read locks), cloned both `Arc`s, and read-locked both
//! allocations' grants. Each of those writes a cache line that the other listener shard writes
//! too (a call's two clients usually sit on different shards, and each relays to the other),
//! so every datagram waited for lines to come back from the other core: 11 % of the relay's
//! samples at the audio-like load (bench/profiles.md). Through the view a datagram reads two
//! version numbers that only change when the table or the grants do, and its own maps.
//!
//! What the data path decides is the same as with the table: the view is checked against the
//! table's version before each run of datagrams and against the grants' version at each use,
//! so it answers as the table and the grants would have at that moment (a change racing with a
//! datagram is seen or not, as it was with the locks). Only allocations that exist are kept,
//! so unknown senders cannot grow it; relayed addresses found to be no allocation's are kept
//! as such (they come from the senders' channel bindings, which the caps bound) up to
//! [`MAX_OTHER_PEERS`]. An idle read loop drops the view as soon as the table changes
//! ([`next_change`]), so it never keeps a deleted allocation's sockets open.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

use crate::turn::allocation::Allocation;
use crate::turn::allocations::AllocationTable;
use crate::turn::grants::Grants;
use crate::turn::transport::ClientKey;

/// Relayed addresses remembered as no allocation's before the view starts that map over.
const MAX_OTHER_PEERS: usize = 16_384;

/// An allocation as the view holds it, with a copy of its grants.
pub struct Held {
    pub allocation: Arc<Allocation>,
    /// The grants' version when the copy was taken.
    version: u64,
    grants: Grants,
}

impl Held {
    fn new(allocation: Arc<Allocation>) -> Self {
        let (version, grants) = allocation.grants_copy();
        Held { allocation, version, grants }
    }

    /// Takes a new copy if the grants changed since the last one.
    fn refresh(&mut self) {
        if self.allocation.grants_version() != self.version {
            (self.version, self.grants) = self.allocation.grants_copy();
        }
    }

    /// The grants as of the last lookup that returned this.
    pub fn grants(&self) -> &Grants {
        &self.grants
    }
}

/// Resolves with `changes` once the table changed: an idle read loop then calls
/// [`TableView::catch_up`], and waits again with what this returned.
pub async fn next_change(mut changes: watch::Receiver<()>) -> watch::Receiver<()> {
    if changes.changed().await.is_err() {
        // The table is gone only when the relay is: nothing will change any more.
        std::future::pending::<()>().await;
    }
    changes
}

/// One read loop's view (see the module docs).
pub struct TableView {
    changes: watch::Receiver<()>,
    clients: HashMap<ClientKey, Held>,
    /// `None`: no allocation holds that address (the datagrams go through the kernel).
    relayed: HashMap<SocketAddr, Option<Held>>,
}

impl TableView {
    pub fn new(table: &AllocationTable) -> Self {
        let mut changes = table.changes();
        changes.borrow_and_update();
        TableView { changes, clients: HashMap::new(), relayed: HashMap::new() }
    }

    /// Starts over if the table changed since the view last looked; call before the lookups
    /// of a run of datagrams.
    pub fn catch_up(&mut self) {
        // An error means the table is gone: starting over each time is what is left to do.
        if self.changes.has_changed().unwrap_or(true) {
            self.forget();
        }
    }

    fn forget(&mut self) {
        self.changes.borrow_and_update();
        self.clients.clear();
        self.relayed.clear();
    }

    /// The allocation of `key` with its grants as they are now, if the table holds one.
    pub fn client(&mut self, table: &AllocationTable, key: ClientKey) -> Option<&Held> {
        match self.clients.entry(key) {
            Entry::Occupied(held) => {
                let held = held.into_mut();
                held.refresh();
                Some(held)
            }
            Entry::Vacant(slot) => Some(slot.insert(Held::new(table.get(key)?))),
        }
    }

    /// Looks up the allocation holding the relayed address `peer` (as advertised, canonical)
    /// and brings its grants up to date; [`Self::held`] then returns it.
    pub fn look_up_relayed(&mut self, table: &AllocationTable, peer: SocketAddr) {
        if self.relayed.len() >= MAX_OTHER_PEERS && !self.relayed.contains_key(&peer) {
            self.relayed.clear();
        }
        match self.relayed.entry(peer) {
            Entry::Occupied(held) => {
                if let Some(held) = held.into_mut() {
                    held.refresh();
                }
            }
            Entry::Vacant(slot) => {
                slot.insert(table.by_relayed(peer).map(Held::new));
            }
        }
    }

    /// What [`Self::client`] found for `key` and, if it was looked up, what
    /// [`Self::look_up_relayed`] found for `relayed`, as of those calls.
    pub fn held(&self, key: ClientKey, relayed: Option<SocketAddr>) -> (Option<&Held>, Option<&Held>) {
        let target = relayed.and_then(|peer| self.relayed.get(&peer)).and_then(Option::as_ref);
        (self.clients.get(&key), target)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::PeerPolicyKind;
    use crate::turn::allocation::AllocationParts;
    use crate::turn::counters::RelayCounters;
    use crate::turn::grants::{GrantCaps, PERMISSION_LIFETIME};
    use crate::turn::link::ClientPath;
    use crate::turn::policy::PeerPolicy;
    use crate::turn::quota::QuotaLimits;
    use crate::turn::relay_socket::{ClusterRelays, OwnRelays, PeerGuard, RelayAddress, RelayBinder};
    use crate::turn::transport::Transport;

    const NOW: u64 = 1_800_000_000;
    const CAPS: GrantCaps = GrantCaps { permissions: 4, channels: 4 };

    fn key(port: u16) -> ClientKey {
        (Transport::Udp, SocketAddr::from(([127, 0, 0, 1], port)))
    }

    fn binder() -> RelayBinder {
        let loopback = RelayAddress { bind: [127, 0, 0, 1].into(), advertised: [127, 0, 0, 1].into() };
        RelayBinder {
            ipv4: Some(loopback),
            ipv6: None,
            min_port: 61000,
            max_port: 61999,
            guard: Arc::new(PeerGuard {
                policy: PeerPolicy::new(PeerPolicyKind::Any, &[], &[]),
                own: Arc::new(OwnRelays::default()),
                cluster: Arc::new(ClusterRelays::new(61000..=61999)),
                counters: Arc::new(RelayCounters::default()),
                bandwidth_bytes_per_s: 0,
            }),
        }
    }

    /// An allocation of `key` holding one relayed address, in `table`.
    async fn allocated(table: &AllocationTable, binder: &RelayBinder, key: ClientKey) -> Arc<Allocation> {
        let socket = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let allocation = Allocation::new(AllocationParts {
            key,
            username: "9:alice".into(),
            user: "alice".into(),
            transaction_id: [0; 12],
            relays: vec![binder.bind(false, false).unwrap()],
            client: ClientPath::Datagram { socket, client: key.1 },
            bandwidth_bytes_per_s: 0,
            expires_at: NOW + 600,
        });
        table.insert(allocation.clone()).unwrap();
        allocation
    }

    fn table() -> AllocationTable {
        AllocationTable::new(QuotaLimits { per_user: 10, total: 10 }, CAPS)
    }

    #[tokio::test]
    async fn the_view_answers_as_the_table_and_the_grants_do_after_every_change() {
        let (table, binder) = (table(), binder());
        let a = allocated(&table, &binder, key(1)).await;
        let b = allocated(&table, &binder, key(2)).await;
        let (a_addr, b_addr) = (a.relayed()[0], b.relayed()[0]);
        let mut view = TableView::new(&table);
        view.catch_up();
        let from = view.client(&table, key(1)).unwrap();
        assert!(Arc::ptr_eq(&from.allocation, &a));
        assert_eq!(from.grants().channel_peer(0x4000, NOW), None);
        assert!(view.client(&table, key(3)).is_none(), "no allocation, nothing found");
        assert!(!view.clients.contains_key(&key(3)), "and nothing kept for an unknown sender");

        // A ChannelBind is seen at the next lookup (the copy follows the grants' version).
        a.update_grants(|g| g.bind_channel(0x4000, b_addr, NOW, CAPS)).unwrap();
        let from = view.client(&table, key(1)).unwrap();
        assert_eq!(from.grants().channel_peer(0x4000, NOW), Some(b_addr));
        assert!(from.grants().permits(b_addr.ip(), NOW));

        // The receiving end, by its relayed address.
        view.look_up_relayed(&table, b_addr);
        let (from, to) = view.held(key(1), Some(b_addr));
        assert!(from.is_some_and(|h| Arc::ptr_eq(&h.allocation, &a)));
        assert!(to.is_some_and(|h| Arc::ptr_eq(&h.allocation, &b)));
        b.update_grants(|g| g.grant_permissions(&[a_addr], NOW, CAPS)).unwrap();
        view.look_up_relayed(&table, b_addr);
        let (_, to) = view.held(key(1), Some(b_addr));
        assert!(to.is_some_and(|h| h.grants().permits(a_addr.ip(), NOW)), "B's new permission seen");

        // A sweep that forgets nothing leaves the copies be; one that forgets is seen.
        let version = b.grants_version();
        b.forget_expired_grants(NOW + 1);
        assert_eq!(b.grants_version(), version);
        let expired = NOW + PERMISSION_LIFETIME.as_secs();
        b.forget_expired_grants(expired);
        view.look_up_relayed(&table, b_addr);
        let (_, to) = view.held(key(1), Some(b_addr));
        assert!(to.is_some_and(|h| h.grants().counts(NOW) == (0, 0)), "the sweep's work is seen");

        // B deleted: after catching up, its address is no allocation's, and the view lets go.
        assert!(table.remove(&b));
        view.catch_up();
        view.look_up_relayed(&table, b_addr);
        assert!(view.held(key(1), Some(b_addr)).1.is_none());
        assert_eq!(Arc::strong_count(&b), 1, "only this test holds B now");

        // An address that was no allocation's becomes one: found once the table says so.
        let c = allocated(&table, &binder, key(3)).await;
        let c_addr = c.relayed()[0];
        view.catch_up();
        view.look_up_relayed(&table, c_addr);
        assert!(view.held(key(1), Some(c_addr)).1.is_some_and(|h| Arc::ptr_eq(&h.allocation, &c)));
    }

    #[tokio::test]
    async fn an_idle_view_lets_a_deleted_allocation_go_at_once() {
        let (table, binder) = (table(), binder());
        let a = allocated(&table, &binder, key(1)).await;
        let mut view = TableView::new(&table);
        // What an idle read loop waits on, besides datagrams.
        let waiting = tokio::spawn(next_change(table.changes()));
        assert!(view.client(&table, key(1)).is_some());
        assert_eq!(
            Arc::strong_count(&a),
            4,
            "the table (by 5-tuple and by relayed address), the view, this test"
        );
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "nothing changed yet");
        assert!(table.remove(&a));
        let woke = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert!(woke.is_ok_and(|joined| joined.is_ok()), "the removal ends the wait");
        view.catch_up();
        assert_eq!(Arc::strong_count(&a), 1, "the relay sockets close with the last handle");
    }

    #[tokio::test]
    async fn relayed_addresses_that_are_no_allocations_are_remembered_within_a_bound() {
        let table = table();
        let mut view = TableView::new(&table);
        for port in 0..(MAX_OTHER_PEERS as u16 + 10) {
            view.look_up_relayed(&table, SocketAddr::from(([192, 0, 2, 1], port)));
        }
        assert!(view.relayed.len() <= MAX_OTHER_PEERS);
        assert!(view.held(key(1), Some(SocketAddr::from(([192, 0, 2, 1], 3)))).1.is_none());
    }
}
