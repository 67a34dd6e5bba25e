//! The read loops' shared core: [`Dispatcher`] takes one datagram or TCP frame, asks the gate,
//! and carries the decision out (answers, the allocation table, the crate).
//!
//! The crate's `Server` owns its read loop, keeps nonces forever and speaks UDP only, so we run
//! our own loops (`udp`, `tcp`) and hand each packet to the crate's public
//! `server::request::Request::handle_request`, with the crate's allocation `Manager`s held here,
//! one per listener kind. ChannelData, Binding and Send go straight to the crate; the four
//! authenticated requests are judged by [`crate::turn::gate::decide`] first. CreatePermission and
//! ChannelBind are then handled here entirely, so that every XOR-PEER-ADDRESS is installed (the
//! crate installs only the first), in its canonical form, and within the per-allocation caps.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use stun::error_code::{ErrorCode, CODE_ALLOC_MISMATCH, CODE_BAD_REQUEST};
use stun::message::Message;
use tokio::sync::Mutex as AsyncMutex;
use tokio::time::Instant;
use turn::allocation::allocation_manager::Manager;
use turn::allocation::channel_bind::ChannelBind;
use turn::allocation::permission::Permission;
use turn::auth::AuthHandler;
use turn::server::request::Request;

use crate::presence::VoicePresence;
use crate::time::unix_now;
use crate::turn::allocations::{AllocationTable, GrantRefusal, Reservation, Transport};
use crate::turn::auth::{AuthFailure, Authenticator, CheckedKey};
use crate::turn::counters::RelayCounters;
use crate::turn::credentials::parse_username;
use crate::turn::gate::{self, Authorized, Decision, GateContext, Refusal, Tally};
use crate::turn::grants::{CapReached, CHANNEL_BIND_LIFETIME};
use crate::turn::link::ClientLink;
use crate::turn::nonce::NonceMinter;
use crate::turn::packet::{classify, PacketKind};
use crate::turn::relay_socket::PeerGuard;

/// The crate's allocation managers, one per listener kind (their 5-tuples could collide).
pub struct Managers {
    pub udp: Arc<Manager>,
    pub tcp: Arc<Manager>,
    pub tls: Arc<Manager>,
}

impl Managers {
    pub fn get(&self, transport: Transport) -> &Arc<Manager> {
        match transport {
            Transport::Udp => &self.udp,
            Transport::Tcp => &self.tcp,
            Transport::Tls => &self.tls,
        }
    }

    pub fn all(&self) -> [&Arc<Manager>; 3] {
        [&self.udp, &self.tcp, &self.tls]
    }
}

/// Everything the read loops share.
pub struct Dispatcher {
    pub(crate) auth: Authenticator,
    pub(crate) nonces: NonceMinter,
    pub(crate) guard: Arc<PeerGuard>,
    pub(crate) relay_is_ipv4: bool,
    pub(crate) allocations: AllocationTable,
    pub(crate) counters: Arc<RelayCounters>,
    pub(crate) presence: Arc<VoicePresence>,
    pub(crate) require_live_session: bool,
    pub(crate) managers: Managers,
    pub(crate) unauthenticated: UnauthenticatedPath,
}

/// What the crate is handed for packets that never authenticate, made once (ChannelData is the
/// hot path: no allocation per packet).
pub struct UnauthenticatedPath {
    auth: Arc<dyn AuthHandler + Send + Sync>,
    nonces: Arc<AsyncMutex<HashMap<String, Instant>>>,
}

impl Default for UnauthenticatedPath {
    fn default() -> Self {
        UnauthenticatedPath { auth: Arc::new(DenyAll), nonces: Arc::default() }
    }
}

/// Handed to the crate on paths that never authenticate (ChannelData, Send, Binding): any
/// attempt to authenticate there fails.
struct DenyAll;

impl AuthHandler for DenyAll {
    fn auth_handle(&self, _: &str, _: &str, _: SocketAddr) -> Result<Vec<u8>, turn::Error> {
        Err(turn::Error::Other("not an authenticated path".into()))
    }
}

impl Dispatcher {
    pub(crate) fn counters(&self) -> &Arc<RelayCounters> {
        &self.counters
    }

    pub(crate) fn has_allocation(&self, transport: Transport, client: SocketAddr) -> bool {
        self.allocations.allocation_username((transport, client)).is_some()
    }

    /// Deletes the allocation of a client whose TCP connection ended.
    pub(crate) async fn client_gone(&self, link: &ClientLink<'_>) {
        self.managers.get(link.transport).delete_allocation(&link.five_tuple()).await;
    }

    /// Handles one datagram (UDP) or frame (TCP) from `link`.
    pub(crate) async fn dispatch(&self, link: &ClientLink<'_>, packet: Vec<u8>) {
        match classify(&packet) {
            // The hot path: straight to the crate.
            PacketKind::ChannelData => return self.pass_unauthenticated(link, packet).await,
            PacketKind::Stun => {}
            PacketKind::Other => {
                tracing::trace!("dropped a datagram that is neither STUN nor ChannelData");
                return;
            }
        }
        let mut m = Message { raw: packet, ..Default::default() };
        if m.decode().is_err() {
            tracing::trace!("dropped a datagram that is not a STUN message");
            return;
        }
        if !gate::is_gated(&m) {
            let raw = std::mem::take(&mut m.raw);
            return self.pass_unauthenticated(link, raw).await;
        }
        let now = unix_now();
        let key = link.key();
        let holds_allocation =
            self.managers.get(link.transport).get_allocation(&link.five_tuple()).await.is_some();
        let allocation_username = self.allocations.allocation_username(key);
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
                holds_allocation,
                allocation_username: allocation_username.as_deref(),
                relay_is_ipv4: self.relay_is_ipv4,
                peer_allowed: &peer_allowed,
            },
        );
        self.carry_out(link, m, decision, now).await;
    }

    async fn carry_out(&self, link: &ClientLink<'_>, m: Message, decision: Decision, now: u64) {
        match decision {
            Decision::Pass => self.pass_unauthenticated(link, m.raw).await,
            Decision::Challenge(refusal) => {
                self.tally(refusal.tally);
                let nonce = self.nonces.mint_at(link.client.ip(), now);
                link.send(crate::turn::reply::challenge(
                    &m,
                    ErrorCode(refusal.code),
                    refusal.reason,
                    self.auth.realm(),
                    nonce,
                ))
                .await;
            }
            Decision::Refuse { refusal, key } => self.refuse(link, &m, refusal, key.as_deref()).await,
            Decision::Allocate(auth) => self.allocate(link, m, auth).await,
            Decision::Refresh(auth) => self.pass_authenticated(link, m.raw, &auth).await,
            Decision::CreatePermission { auth, peers } => {
                let Some(allocation) =
                    self.managers.get(link.transport).get_allocation(&link.five_tuple()).await
                else {
                    return self.refuse(link, &m, mismatch(), Some(&auth.key)).await;
                };
                if let Err(refusal) = self.allocations.grant_permissions(link.key(), &peers, now) {
                    return self.refuse(link, &m, grant_refusal(refusal), Some(&auth.key)).await;
                }
                for peer in peers {
                    allocation.add_permission(Permission::new(peer)).await;
                }
                link.send(crate::turn::reply::success(&m, &auth.key)).await;
            }
            Decision::ChannelBind { auth, number, peer } => {
                let Some(allocation) =
                    self.managers.get(link.transport).get_allocation(&link.five_tuple()).await
                else {
                    return self.refuse(link, &m, mismatch(), Some(&auth.key)).await;
                };
                if let Err(refusal) = self.allocations.check_channel(link.key(), number.0, peer, now) {
                    return self.refuse(link, &m, grant_refusal(refusal), Some(&auth.key)).await;
                }
                if allocation
                    .add_channel_bind(ChannelBind::new(number, peer), CHANNEL_BIND_LIFETIME)
                    .await
                    .is_err()
                {
                    // The number is bound to another peer, or the peer to another number.
                    let conflict = Refusal {
                        code: CODE_BAD_REQUEST.0,
                        reason: "Channel already bound differently",
                        tally: None,
                    };
                    return self.refuse(link, &m, conflict, Some(&auth.key)).await;
                }
                self.allocations.record_channel(link.key(), number.0, peer, now);
                link.send(crate::turn::reply::success(&m, &auth.key)).await;
            }
        }
    }

    async fn refuse(&self, link: &ClientLink<'_>, m: &Message, refusal: Refusal, key: Option<&[u8]>) {
        self.tally(refusal.tally);
        link.send(crate::turn::reply::error(m, ErrorCode(refusal.code), refusal.reason, key)).await;
    }

    /// Reserves a quota slot, lets the crate allocate, then commits or releases the slot.
    async fn allocate(&self, link: &ClientLink<'_>, m: Message, auth: Authorized) {
        let reservation = match self.allocations.reserve(link.key(), &auth.username) {
            Ok(reservation) => reservation,
            Err(quota) => {
                let user = parse_username(&auth.username).map(|u| u.user).unwrap_or_default();
                tracing::info!(user = %user, ?quota, "turn allocation refused by quota");
                return self.refuse(link, &m, gate::quota_refusal(quota), Some(&auth.key)).await;
            }
        };
        self.pass_authenticated(link, m.raw, &auth).await;
        if reservation == Reservation::New {
            self.settle_allocation(link, &auth.username).await;
        }
    }

    /// After the crate handled a new Allocate: commit or release the reservation.
    async fn settle_allocation(&self, link: &ClientLink<'_>, username: &str) {
        let manager = self.managers.get(link.transport);
        let five_tuple = link.five_tuple();
        if manager.get_allocation(&five_tuple).await.is_none() {
            self.allocations.release(link.key());
            return;
        }
        self.allocations.commit(link.key());
        RelayCounters::bump(&self.counters.allocations_total);
        RelayCounters::bump(&self.counters.allocations_active);
        // The user may have left between our admission check and the crate creating the
        // allocation; the departure sweep may have run before it existed, so look again.
        let user = parse_username(username).map(|u| u.user).unwrap_or_default();
        if self.require_live_session && !self.presence.is_in_voice(user) {
            manager.delete_allocation(&five_tuple).await;
        }
    }

    /// To the crate on a path that never authenticates.
    async fn pass_unauthenticated(&self, link: &ClientLink<'_>, packet: Vec<u8>) {
        let path = &self.unauthenticated;
        self.hand_to_crate(link, packet, path.auth.clone(), path.nonces.clone(), String::new()).await;
    }

    /// To the crate with the key the gate verified, and the nonce the request carried (the
    /// crate checks both again; they agree by construction).
    async fn pass_authenticated(&self, link: &ClientLink<'_>, packet: Vec<u8>, auth: &Authorized) {
        let nonces = Arc::new(AsyncMutex::new(HashMap::from([(auth.nonce.clone(), Instant::now())])));
        let checked = Arc::new(CheckedKey(auth.key.clone()));
        self.hand_to_crate(link, packet, checked, nonces, self.auth.realm().to_string()).await;
    }

    async fn hand_to_crate(
        &self,
        link: &ClientLink<'_>,
        packet: Vec<u8>,
        auth_handler: Arc<dyn AuthHandler + Send + Sync>,
        nonces: Arc<AsyncMutex<HashMap<String, Instant>>>,
        realm: String,
    ) {
        let mut request = Request {
            conn: link.conn.clone(),
            src_addr: link.client,
            buff: packet,
            allocation_manager: self.managers.get(link.transport).clone(),
            nonces,
            auth_handler,
            realm,
            channel_bind_timeout: CHANNEL_BIND_LIFETIME,
        };
        if let Err(err) = request.handle_request().await {
            tracing::trace!(%err, "turn request not handled");
        }
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

fn mismatch() -> Refusal {
    Refusal { code: CODE_ALLOC_MISMATCH.0, reason: "Allocation Mismatch", tally: None }
}

fn grant_refusal(refusal: GrantRefusal) -> Refusal {
    match refusal {
        GrantRefusal::NoAllocation => mismatch(),
        GrantRefusal::Cap(cap) => gate::cap_refusal(cap),
    }
}
