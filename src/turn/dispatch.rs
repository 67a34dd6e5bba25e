//! The read loops' shared core: [`Dispatcher`] takes one datagram or TCP frame from a client,
//! asks the gate, and carries the decision out against the allocation table.
//!
//! ChannelData is the hot path: its allocation is found by the client's 5-tuple (over UDP in
//! the read loop's `table_view`, else under a read lock held for the lookup), its peer by the
//! channel number, and the payload leaves from the relay socket on this same task, from the
//! buffer it arrived in. STUN messages are decoded; Binding
//! requests are answered, Send indications relayed (to permitted peers), and the four
//! authenticated requests (Allocate, Refresh, CreatePermission, ChannelBind) are judged by
//! [`crate::turn::gate::decide`] first, then carried out here: `requests` reads what an Allocate
//! or Refresh asks for, `relay_socket` binds the relayed addresses, `grants` holds permissions
//! and channels, `relay_loop` relays the peers' answers.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use stun::error_code::{
    ErrorCode, CODE_ADDR_FAMILY_NOT_SUPPORTED, CODE_ALLOC_MISMATCH, CODE_BAD_REQUEST,
    CODE_INSUFFICIENT_CAPACITY, CODE_PEER_ADDR_FAMILY_MISMATCH, CODE_UNAUTHORIZED,
};
use stun::message::{
    Getter, Message, CLASS_INDICATION, CLASS_REQUEST, METHOD_ALLOCATE, METHOD_BINDING, METHOD_SEND,
};
use turn::proto::data::Data;
use turn::proto::peeraddr::PeerAddress;

use crate::addr::canonical_addr;
use crate::presence::VoicePresence;
use crate::time::unix_now;
use crate::turn::allocation::{Allocation, AllocationParts};
use crate::turn::allocations::{AllocationTable, InsertRefusal, Transport};
use crate::turn::auth::{AuthFailure, Authenticator};
use crate::turn::channel_data::parse_channel_data;
use crate::turn::counters::RelayCounters;
use crate::turn::credentials::parse_username;
use crate::turn::datagram_batch::{BatchSender, MAX_BATCH};
use crate::turn::gate::{self, AddressFamilies, Authorized, Decision, GateContext, Refusal, Tally};
use crate::turn::grants::{BindRefusal, CapReached};
use crate::turn::handoff::{hand_over, HandoffSlots, Hop};
use crate::turn::link::{ClientLink, ClientPath, DatagramSenders};
use crate::turn::nonce::NonceMinter;
use crate::turn::packet::{classify, PacketKind};
use crate::turn::relay_loop::relay_to_client;
use crate::turn::relay_socket::{BindFailure, PeerGuard, RelayBinder, RelaySocket};
use crate::turn::reply::{self, AddressError};
use crate::turn::requests::{allocate_request, refresh_request, AllocateRequest, Families, Invalid};
use crate::turn::table_view::TableView;

/// Everything the read loops share.
pub struct Dispatcher {
    pub(crate) auth: Authenticator,
    pub(crate) nonces: NonceMinter,
    pub(crate) guard: Arc<PeerGuard>,
    pub(crate) allocations: AllocationTable,
    pub(crate) counters: Arc<RelayCounters>,
    pub(crate) presence: Arc<VoicePresence>,
    pub(crate) require_live_session: bool,
    pub(crate) binder: RelayBinder,
    pub(crate) senders: DatagramSenders,
    /// `[turn] allocation_bandwidth_bytes_per_s`.
    pub(crate) bandwidth_bytes_per_s: u64,
    /// `[turn] allocation_default_family = "keep"`: an Allocate that names no family gets the
    /// family the client came over (browsers never name one), when the relay has it.
    pub(crate) keep_client_family: bool,
    /// Relay to relay on this server in-process (`handoff::configured`).
    pub(crate) handoff: bool,
}

impl Dispatcher {
    pub(crate) fn counters(&self) -> &Arc<RelayCounters> {
        &self.counters
    }

    /// The family an Allocate from `link` that names none gets (see `keep_client_family`).
    fn default_ipv6(&self, link: &ClientLink<'_>) -> bool {
        self.keep_client_family && link.client.is_ipv6() && self.binder.serves(true)
    }

    pub(crate) fn has_allocation(&self, transport: Transport, client: SocketAddr) -> bool {
        self.allocations.get((transport, client)).is_some()
    }

    /// Deletes the allocation of a client whose TCP connection ended.
    pub(crate) async fn client_gone(&self, link: &ClientLink<'_>) {
        if let Some(allocation) = self.allocations.get(link.key()) {
            self.end_allocation(&allocation).await;
        }
    }

    /// Ends `allocation` (removes it, stops its relay loops, closes a TCP/TLS client's
    /// connection); false if something else ended it first.
    pub(crate) async fn end_allocation(&self, allocation: &Arc<Allocation>) -> bool {
        if !self.allocations.remove(allocation) {
            return false;
        }
        self.counters.allocations_active.fetch_sub(1, Ordering::Relaxed);
        allocation.close();
        allocation.client.close().await;
        true
    }

    /// Handles one datagram (UDP) or frame (TCP) from `link`.
    pub(crate) async fn dispatch(&self, link: &ClientLink<'_>, packet: &[u8]) {
        match classify(packet) {
            PacketKind::ChannelData => return self.channel_data(link, packet).await,
            PacketKind::Stun => {}
            PacketKind::Other => {
                tracing::trace!("dropped a datagram that is neither STUN nor ChannelData");
                return;
            }
        }
        let mut m = Message { raw: packet.to_vec(), ..Default::default() };
        if m.decode().is_err() {
            tracing::trace!("dropped a datagram that is not a STUN message");
            return;
        }
        if !gate::is_gated(&m) {
            return self.ungated(link, &m).await;
        }
        let now = unix_now();
        let key = link.key();
        let allocation = self.allocations.get(key);
        let allocation_username = allocation.as_ref().map(|a| a.username.clone());
        // An Allocate is judged by what the relay can offer, the rest by what the 5-tuple holds.
        let relay_families = match &allocation {
            Some(held) if m.typ.method != METHOD_ALLOCATE => families_of(held),
            _ => AddressFamilies { ipv4: self.binder.serves(false), ipv6: self.binder.serves(true) },
        };
        drop(allocation);
        let in_voice = |user: &str| self.presence.is_in_voice(user);
        let peer_allowed = |peer: SocketAddr| self.guard.permits(peer);
        let decision = gate::decide(
            &m,
            &GateContext {
                now_unix: now,
                client: link.client,
                auth: &self.auth,
                nonces: &self.nonces,
                in_voice: &in_voice,
                holds_allocation: allocation_username.is_some(),
                allocation_username: allocation_username.as_deref(),
                relay_families,
                default_ipv6: self.default_ipv6(link),
                peer_allowed: &peer_allowed,
            },
        );
        self.carry_out(link, &m, decision, now).await;
    }

    /// Client -> peer over a channel: the hot path.
    async fn channel_data(&self, link: &ClientLink<'_>, packet: &[u8]) {
        let Some((number, payload)) = parse_channel_data(packet) else { return };
        let Some(allocation) = self.allocations.get(link.key()) else { return };
        let peer = {
            // A binding outlives its permission unless the client refreshes either (RFC 8656
            // section 9: data to a peer needs a live permission for its IP).
            let now = unix_now();
            let grants = allocation.grants();
            grants.channel_peer(number, now).filter(|peer| grants.permits(peer.ip(), now))
        };
        let Some(peer) = peer else { return };
        allocation.send_to_peer(payload, peer, &self.counters).await;
    }

    /// A run of ChannelData messages from one client, consecutive in a listener batch (one
    /// alone, or a burst of video): the allocation is looked up once and its grants read once
    /// for the run, and consecutive messages to one peer leave together: in one batched send,
    /// or, when the peer is another allocation's relayed address here, handed to that
    /// allocation's client in-process (`handoff`). Each message passes the same checks as in
    /// [`Self::channel_data`]; one that fails them is dropped alone. The lookups go through the
    /// read loop's `view` of the table, which answers as the table would without touching its
    /// locks (see `table_view`).
    pub(crate) async fn channel_data_run(
        &self,
        link: &ClientLink<'_>,
        packets: &[&[u8]],
        sender: &BatchSender,
        slots: &mut HandoffSlots,
        view: &mut TableView,
    ) {
        view.catch_up();
        let key = link.key();
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        let mut run: [(&[u8], SocketAddr); MAX_BATCH] = [(&[], unspecified); MAX_BATCH];
        let mut count = 0;
        {
            let Some(from) = view.client(&self.allocations, key) else { return };
            let now = unix_now();
            let grants = from.grants();
            for packet in packets.iter().take(MAX_BATCH) {
                let Some((number, payload)) = parse_channel_data(packet) else { continue };
                let peer = grants.channel_peer(number, now).filter(|peer| grants.permits(peer.ip(), now));
                if let Some(peer) = peer {
                    run[count] = (payload, peer);
                    count += 1;
                }
            }
        }
        let mut rest = &run[..count];
        while let Some(&(_, peer)) = rest.first() {
            let same_peer = rest.iter().take_while(|(_, p)| *p == peer).count();
            let (group, later) = rest.split_at(same_peer);
            rest = later;
            if self.handoff {
                view.look_up_relayed(&self.allocations, peer);
            }
            let (Some(from), target) = view.held(key, self.handoff.then_some(peer)) else { return };
            match target {
                Some(to) => {
                    let mut payloads: [&[u8]; MAX_BATCH] = [&[]; MAX_BATCH];
                    for (slot, (payload, _)) in payloads.iter_mut().zip(group) {
                        *slot = payload;
                    }
                    let payloads = &payloads[..group.len()];
                    let hop = Hop {
                        from: &from.allocation,
                        to: &to.allocation,
                        to_grants: to.grants(),
                        to_addr: peer,
                    };
                    hand_over(hop, payloads, &self.counters, sender, slots).await;
                }
                None => from.allocation.send_run_to_peers(group, &self.counters, sender).await,
            }
        }
    }

    /// STUN messages that need no credentials: Binding requests and Send indications.
    async fn ungated(&self, link: &ClientLink<'_>, m: &Message) {
        if m.typ.method == METHOD_BINDING && m.typ.class == CLASS_REQUEST {
            link.send(reply::binding_success(m, link.client)).await;
        } else if m.typ.method == METHOD_SEND && m.typ.class == CLASS_INDICATION {
            self.send_indication(link, m).await;
        } else {
            tracing::trace!("dropped a STUN message the relay does not handle");
        }
    }

    /// Client -> peer in a Send indication: only to a permitted peer (silently dropped else).
    async fn send_indication(&self, link: &ClientLink<'_>, m: &Message) {
        let Some(allocation) = self.allocations.get(link.key()) else { return };
        let (mut peer, mut data) = (PeerAddress::default(), Data::default());
        if peer.get_from(m).is_err() || data.get_from(m).is_err() {
            return;
        }
        let peer = canonical_addr(SocketAddr::new(peer.ip, peer.port));
        if !allocation.grants().permits(peer.ip(), unix_now()) {
            return;
        }
        allocation.send_to_peer(&data.0, peer, &self.counters).await;
    }

    async fn carry_out(&self, link: &ClientLink<'_>, m: &Message, decision: Decision, now: u64) {
        match decision {
            Decision::Pass => self.ungated(link, m).await,
            Decision::Challenge(refusal) => {
                self.tally(refusal.tally);
                let nonce = self.nonces.mint_at(link.client.ip(), now);
                link.send(reply::challenge(
                    m,
                    ErrorCode(refusal.code),
                    refusal.reason,
                    self.auth.realm(),
                    nonce,
                ))
                .await;
            }
            Decision::Refuse { refusal, key } => self.refuse(link, m, refusal, key.as_deref()).await,
            Decision::Allocate(auth) => self.allocate(link, m, auth, now).await,
            Decision::Refresh(auth) => self.refresh(link, m, auth, now).await,
            Decision::CreatePermission { auth, peers } => {
                let Some(allocation) = self.allocations.get(link.key()) else {
                    return self.refuse(link, m, mismatch(), Some(&auth.key)).await;
                };
                if peers.iter().any(|p| allocation.relay_for(*p).is_none()) {
                    return self.refuse(link, m, family_mismatch(), Some(&auth.key)).await;
                }
                let caps = self.allocations.caps();
                let granted = allocation.update_grants(|g| g.grant_permissions(&peers, now, caps));
                if let Err(cap) = granted {
                    return self.refuse(link, m, gate::cap_refusal(cap), Some(&auth.key)).await;
                }
                link.send(reply::success(m, &auth.key)).await;
            }
            Decision::ChannelBind { auth, number, peer } => {
                let Some(allocation) = self.allocations.get(link.key()) else {
                    return self.refuse(link, m, mismatch(), Some(&auth.key)).await;
                };
                if allocation.relay_for(peer).is_none() {
                    return self.refuse(link, m, family_mismatch(), Some(&auth.key)).await;
                }
                let caps = self.allocations.caps();
                let bound = allocation.update_grants(|g| g.bind_channel(number.0, peer, now, caps));
                let refusal = match bound {
                    Ok(()) => return link.send(reply::success(m, &auth.key)).await,
                    Err(BindRefusal::Cap(cap)) => gate::cap_refusal(cap),
                    Err(BindRefusal::Conflict) => Refusal {
                        code: CODE_BAD_REQUEST.0,
                        reason: "Channel already bound differently",
                        tally: None,
                    },
                };
                self.refuse(link, m, refusal, Some(&auth.key)).await;
            }
        }
    }

    async fn refuse(&self, link: &ClientLink<'_>, m: &Message, refusal: Refusal, key: Option<&[u8]>) {
        self.tally(refusal.tally);
        link.send(reply::error(m, ErrorCode(refusal.code), refusal.reason, key)).await;
    }

    async fn refuse_invalid(&self, link: &ClientLink<'_>, m: &Message, invalid: Invalid, key: &[u8]) {
        let refusal = Refusal { code: invalid.code, reason: invalid.reason, tally: None };
        self.refuse(link, m, refusal, Some(key)).await;
    }

    /// Allocate: checks what is asked, the quotas, binds the relayed address(es), starts
    /// relaying, answers.
    async fn allocate(&self, link: &ClientLink<'_>, m: &Message, auth: Authorized, now: u64) {
        if let Some(existing) = self.allocations.get(link.key()) {
            // A retransmission of the Allocate that made it is answered again (RFC 8656 7.2).
            if existing.transaction_id == m.transaction_id.0 {
                let answer = reply::allocate_success(
                    m,
                    &auth.key,
                    &existing.relayed(),
                    existing.remaining(now),
                    link.client,
                    None,
                );
                return link.send(answer).await;
            }
            return self.refuse(link, m, mismatch(), Some(&auth.key)).await;
        }
        let request = match allocate_request(m, self.default_ipv6(link)) {
            Ok(request) => request,
            Err(invalid) => return self.refuse_invalid(link, m, invalid, &auth.key).await,
        };
        let user = parse_username(&auth.username).map_or(auth.username.as_str(), |u| u.user).to_string();
        if let Err(quota) = self.allocations.admits(&user) {
            tracing::info!(user = %user, ?quota, "turn allocation refused by quota");
            return self.refuse(link, m, gate::quota_refusal(quota), Some(&auth.key)).await;
        }
        let (relays, address_error) = match self.bind_relays(request) {
            Ok(bound) => bound,
            Err(refusal) => return self.refuse(link, m, refusal, Some(&auth.key)).await,
        };
        let allocation = Allocation::new(AllocationParts {
            key: link.key(),
            username: auth.username.clone(),
            user: user.clone(),
            transaction_id: m.transaction_id.0,
            relays,
            client: ClientPath::new(link, &self.senders),
            bandwidth_bytes_per_s: self.bandwidth_bytes_per_s,
            expires_at: now.saturating_add(request.lifetime.as_secs()),
        });
        match self.allocations.insert(allocation.clone()) {
            Ok(()) => {}
            Err(InsertRefusal::Quota(quota)) => {
                return self.refuse(link, m, gate::quota_refusal(quota), Some(&auth.key)).await
            }
            Err(InsertRefusal::Occupied) => return self.refuse(link, m, mismatch(), Some(&auth.key)).await,
        }
        RelayCounters::bump(&self.counters.allocations_total);
        RelayCounters::bump(&self.counters.allocations_active);
        for relay in 0..allocation.relays.len() {
            tokio::spawn(relay_to_client(allocation.clone(), relay, self.counters.clone()));
        }
        // The user may have left between the gate's check and now; the departure sweep may have
        // run before the allocation existed, so look again.
        if self.require_live_session && !self.presence.is_in_voice(&user) {
            self.end_allocation(&allocation).await;
            let failure = AuthFailure::NotInVoice;
            let refusal = Refusal {
                code: CODE_UNAUTHORIZED.0,
                reason: failure.reason(),
                tally: Some(Tally::Auth(failure)),
            };
            return self.refuse(link, m, refusal, Some(&auth.key)).await;
        }
        let answer = reply::allocate_success(
            m,
            &auth.key,
            &allocation.relayed(),
            request.lifetime,
            link.client,
            address_error,
        );
        link.send(answer).await;
    }

    /// Binds the relay socket(s) an Allocate asks for. A dual allocation succeeds with one
    /// family if the other fails (ADDRESS-ERROR-CODE says which and why).
    fn bind_relays(
        &self,
        request: AllocateRequest,
    ) -> Result<(Vec<RelaySocket>, Option<AddressError>), Refusal> {
        let bind = |ipv6| self.binder.bind(ipv6, request.even_port).map_err(|f| bind_refusal(&f));
        match request.families {
            Families::Ipv4 => Ok((vec![bind(false)?], None)),
            Families::Ipv6 => Ok((vec![bind(true)?], None)),
            Families::Both => match (bind(false), bind(true)) {
                (Ok(v4), Ok(v6)) => Ok((vec![v4, v6], None)),
                (Ok(v4), Err(e)) => {
                    Ok((vec![v4], Some(AddressError { ipv6: true, code: e.code, reason: e.reason })))
                }
                (Err(e), Ok(v6)) => {
                    Ok((vec![v6], Some(AddressError { ipv6: false, code: e.code, reason: e.reason })))
                }
                (Err(e), Err(_)) => Err(e),
            },
        }
    }

    /// Refresh: a new lifetime, or (lifetime 0) the end of the allocation.
    async fn refresh(&self, link: &ClientLink<'_>, m: &Message, auth: Authorized, now: u64) {
        let Some(allocation) = self.allocations.get(link.key()) else {
            return self.refuse(link, m, mismatch(), Some(&auth.key)).await;
        };
        let request = match refresh_request(m) {
            Ok(request) => request,
            Err(invalid) => return self.refuse_invalid(link, m, invalid, &auth.key).await,
        };
        if let Some(ipv6) = request.family_ipv6 {
            if !allocation.relays.iter().any(|r| r.advertised().is_ipv6() == ipv6) {
                return self.refuse(link, m, family_mismatch(), Some(&auth.key)).await;
            }
        }
        if request.lifetime.is_zero() {
            self.end_allocation(&allocation).await;
        } else {
            allocation.extend(now, request.lifetime);
        }
        link.send(reply::refresh_success(m, &auth.key, request.lifetime)).await;
    }

    fn tally(&self, tally: Option<Tally>) {
        let c = &self.counters;
        let Some(tally) = tally else { return };
        RelayCounters::bump(match tally {
            Tally::Auth(AuthFailure::BadCredential) => &c.auth_failures_bad_credential,
            Tally::Auth(AuthFailure::Expired) => &c.auth_failures_expired,
            Tally::Auth(AuthFailure::NotInVoice) => &c.auth_failures_not_in_voice,
            Tally::Auth(AuthFailure::Malformed) => &c.auth_failures_malformed,
            Tally::Auth(AuthFailure::Revoked) => &c.auth_failures_revoked,
            Tally::DeniedPeer => &c.denied_peers,
            Tally::Quota => &c.quota_refusals,
            Tally::Cap(CapReached::Permissions) => &c.permission_cap_refusals,
            Tally::Cap(CapReached::Channels) => &c.channel_cap_refusals,
        });
        if tally == Tally::DeniedPeer {
            tracing::debug!("turn permission refused by the peer policy");
        }
    }
}

fn families_of(allocation: &Allocation) -> AddressFamilies {
    let held = |ipv4: bool| allocation.relays.iter().any(|r| r.advertised().is_ipv4() == ipv4);
    AddressFamilies { ipv4: held(true), ipv6: held(false) }
}

fn mismatch() -> Refusal {
    Refusal { code: CODE_ALLOC_MISMATCH.0, reason: "Allocation Mismatch", tally: None }
}

fn family_mismatch() -> Refusal {
    Refusal { code: CODE_PEER_ADDR_FAMILY_MISMATCH.0, reason: "Peer Address Family Mismatch", tally: None }
}

fn bind_refusal(failure: &BindFailure) -> Refusal {
    match failure {
        BindFailure::FamilyNotServed => Refusal {
            code: CODE_ADDR_FAMILY_NOT_SUPPORTED.0,
            reason: "Address Family not Supported",
            tally: None,
        },
        BindFailure::NoPort(err) => {
            tracing::warn!(%err, "turn allocation refused: no relay port");
            Refusal { code: CODE_INSUFFICIENT_CAPACITY.0, reason: "Insufficient Capacity", tally: None }
        }
    }
}
