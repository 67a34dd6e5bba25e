//! The gate: every admission rule for TURN requests, as one pure function.
//!
//! [`decide`] takes a parsed STUN message and a [`GateContext`] (the facts the read loop looked
//! up: the time, the client's address, whether it holds an allocation, who is in voice, what the
//! peer policy says) and returns a [`Decision`]. No I/O, no clock, no locks held: every rule is a
//! unit test below, and the `turn_gate` fuzz target checks that nothing is let through without
//! a valid MESSAGE-INTEGRITY. The read loop (`dispatch`) carries the decision out.
//!
//! The rules, in order, for Allocate, Refresh, CreatePermission and ChannelBind requests
//! (everything else, ChannelData, Binding and Send included, is handled without credentials:
//! Send is policed by the permissions and the relay socket):
//! 1. no MESSAGE-INTEGRITY: 401 with a stateless nonce (nothing is stored per source);
//! 2. USERNAME, REALM or NONCE missing: 400; a nonce we did not mint for this IP, or too old: 438;
//! 3. a username we could not have issued, another realm, or a wrong HMAC: 401 (not 400, which
//!    the `turn` crate's server answered and browsers do not retry). After a secret rotation the HMAC may be the previous secret's
//!    during the grace period, and after it for the 5-tuple's own allocation (`auth`);
//! 4. expiry and the live-session rule (`auth`), with the method and the 5-tuple's allocation in
//!    view, so refreshes keep working past expiry while the user is in voice: 401;
//! 5. anything but Allocate from a 5-tuple without an allocation: 437;
//! 6. Allocate for an address family we do not relay (REQUESTED-ADDRESS-FAMILY, IPv4 without
//!    it): 440; a dual allocation (ADDITIONAL-ADDRESS-FAMILY) is judged family by family when it
//!    is carried out (one family may fail, RFC 8656 section 7.2);
//! 7. CreatePermission / ChannelBind: XOR-PEER-ADDRESS missing or malformed: 400, of a family
//!    the allocation holds no relayed address of: 443, denied by the peer policy (port 0
//!    included): 403; a ChannelBind needs one peer and a valid channel number: 400. Every peer
//!    is canonical (IPv4-mapped IPv6 unmapped) from here on.
//!
//! Quotas and the per-allocation caps are applied by the allocation table when the decision is
//! carried out (they need its lock); [`quota_refusal`] and [`cap_refusal`] say how they answer.

use std::net::SocketAddr;

use stun::attributes::{
    ATTR_MESSAGE_INTEGRITY, ATTR_NONCE, ATTR_REALM, ATTR_USERNAME, ATTR_XOR_PEER_ADDRESS,
};
use stun::error_code::{
    ErrorCode, CODE_ADDR_FAMILY_NOT_SUPPORTED, CODE_ALLOC_MISMATCH, CODE_ALLOC_QUOTA_REACHED,
    CODE_BAD_REQUEST, CODE_FORBIDDEN, CODE_INSUFFICIENT_CAPACITY, CODE_PEER_ADDR_FAMILY_MISMATCH,
    CODE_STALE_NONCE, CODE_UNAUTHORIZED,
};
use stun::integrity::MessageIntegrity;
use stun::message::{
    Getter, Message, CLASS_REQUEST, METHOD_ALLOCATE, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION,
    METHOD_REFRESH,
};
use stun::textattrs::TextAttribute;
use turn::proto::channum::ChannelNumber;
use turn::proto::peeraddr::PeerAddress;
use turn::proto::reqfamily::{RequestedAddressFamily, REQUESTED_FAMILY_IPV4};

use crate::addr::canonical_addr;
use crate::turn::auth::{Admission, AuthFailure, Authenticator};
use crate::turn::credentials::parse_username;
use crate::turn::grants::CapReached;
use crate::turn::nonce::NonceMinter;
use crate::turn::quota::QuotaRefusal;
use crate::turn::requests::ATTR_ADDITIONAL_ADDRESS_FAMILY;

/// What the read loop knows about the request's surroundings, looked up before deciding.
pub struct GateContext<'a> {
    /// Unix seconds.
    pub now_unix: u64,
    /// The request's source (its transport address on our listener).
    pub client: SocketAddr,
    pub auth: &'a Authenticator,
    pub nonces: &'a NonceMinter,
    /// Whether a user (the part of a REST username after the expiry) is in voice right now.
    pub in_voice: &'a dyn Fn(&str) -> bool,
    /// Whether the 5-tuple holds an allocation.
    pub holds_allocation: bool,
    /// The full REST username that allocation was made with (our table's record).
    pub allocation_username: Option<&'a str>,
    /// For an Allocate, the families the relay has addresses of; for the other requests, the
    /// families of the relayed addresses the 5-tuple's allocation holds.
    pub relay_families: AddressFamilies,
    /// The family an Allocate without REQUESTED-ADDRESS-FAMILY gets: IPv4 (RFC 6156), or IPv6
    /// under `[turn] allocation_default_family = "keep"` for a client that came over IPv6.
    pub default_ipv6: bool,
    /// The peer policy (with our own relayed addresses) for one canonical peer address.
    pub peer_allowed: &'a dyn Fn(SocketAddr) -> bool,
}

/// Which IP address families are relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressFamilies {
    pub ipv4: bool,
    pub ipv6: bool,
}

impl AddressFamilies {
    /// True if addresses of the family of `ipv4` (true: IPv4, false: IPv6) are relayed.
    pub fn has(&self, ipv4: bool) -> bool {
        if ipv4 {
            self.ipv4
        } else {
            self.ipv6
        }
    }
}

/// A request whose MESSAGE-INTEGRITY verified and whose credential is admitted now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorized {
    pub username: String,
    pub nonce: String,
    /// The long-term key: signs our answers.
    pub key: Vec<u8>,
}

/// Which counter a refusal bumps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tally {
    Auth(AuthFailure),
    DeniedPeer,
    Quota,
    Cap(CapReached),
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The STUN error code (stun's `ErrorCode` has no `Debug`).
    pub code: u16,
    pub reason: &'static str,
    pub tally: Option<Tally>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Not an authenticated request: handled without credentials (Binding, Send).
    Pass,
    /// 401 or 438 with our realm and a fresh nonce: the client retries with credentials.
    Challenge(Refusal),
    /// An error answer, signed with `key` once the request authenticated.
    Refuse { refusal: Refusal, key: Option<Vec<u8>> },
    /// Carried out after the quotas (`requests`, `allocations`).
    Allocate(Authorized),
    /// A new lifetime, or 0: the end of the allocation.
    Refresh(Authorized),
    /// Every peer installed, after the cap.
    CreatePermission { auth: Authorized, peers: Vec<SocketAddr> },
    /// Bound by us (to the canonical peer the policy approved), after the caps.
    ChannelBind { auth: Authorized, number: ChannelNumber, peer: SocketAddr },
}

impl Decision {
    /// The credential this decision acts on, if it lets the request through.
    pub fn authorized(&self) -> Option<&Authorized> {
        match self {
            Decision::Allocate(auth) | Decision::Refresh(auth) => Some(auth),
            Decision::CreatePermission { auth, .. } | Decision::ChannelBind { auth, .. } => Some(auth),
            Decision::Pass | Decision::Challenge(_) | Decision::Refuse { .. } => None,
        }
    }
}

/// True for the requests the gate judges; everything else needs no credentials.
pub fn is_gated(m: &Message) -> bool {
    m.typ.class == CLASS_REQUEST
        && [METHOD_ALLOCATE, METHOD_REFRESH, METHOD_CREATE_PERMISSION, METHOD_CHANNEL_BIND]
            .contains(&m.typ.method)
}

fn refusal(code: ErrorCode, reason: &'static str, tally: Option<Tally>) -> Refusal {
    Refusal { code: code.0, reason, tally }
}

fn challenge(code: ErrorCode, reason: &'static str, failure: Option<AuthFailure>) -> Decision {
    Decision::Challenge(refusal(code, reason, failure.map(Tally::Auth)))
}

fn refuse_signed(auth: &Authorized, code: ErrorCode, reason: &'static str, tally: Option<Tally>) -> Decision {
    Decision::Refuse { refusal: refusal(code, reason, tally), key: Some(auth.key.clone()) }
}

/// Decides what to do with one STUN message from `cx.client`.
pub fn decide(m: &Message, cx: &GateContext<'_>) -> Decision {
    if !is_gated(m) {
        return Decision::Pass;
    }
    let method = m.typ.method;
    if !m.contains(ATTR_MESSAGE_INTEGRITY) {
        return challenge(CODE_UNAUTHORIZED, "Unauthorized", None);
    }
    let (Ok(nonce), Ok(realm), Ok(username)) = (
        TextAttribute::get_from_as(m, ATTR_NONCE),
        TextAttribute::get_from_as(m, ATTR_REALM),
        TextAttribute::get_from_as(m, ATTR_USERNAME),
    ) else {
        let malformed = refusal(
            CODE_BAD_REQUEST,
            "Missing USERNAME, REALM or NONCE",
            Some(Tally::Auth(AuthFailure::Malformed)),
        );
        return Decision::Refuse { refusal: malformed, key: None };
    };
    if cx.nonces.verify_at(&nonce.text, cx.client.ip(), cx.now_unix).is_err() {
        return challenge(CODE_STALE_NONCE, "Stale Nonce", None);
    }
    // The current secret's key, or the previous secret's during a rotation's grace period (and
    // after it for the allocation this username made: live calls survive a rotation).
    let verifies = |key: &[u8]| MessageIntegrity(key.to_vec()).check(&mut m.clone()).is_ok();
    let keeps_own_allocation =
        method != METHOD_ALLOCATE && cx.allocation_username == Some(username.text.as_str());
    let key = match cx.auth.verified_key(
        &username.text,
        &realm.text,
        cx.now_unix,
        keeps_own_allocation,
        verifies,
    ) {
        Ok(key) => key,
        Err(failure) => return challenge(CODE_UNAUTHORIZED, failure.reason(), Some(failure)),
    };
    let admission = Admission {
        now_unix: cx.now_unix,
        is_allocate: method == METHOD_ALLOCATE,
        allocation_username: cx.allocation_username,
        in_voice: parse_username(&username.text).is_some_and(|u| (cx.in_voice)(u.user)),
    };
    if let Err(failure) = cx.auth.admit(&username.text, admission) {
        return challenge(CODE_UNAUTHORIZED, failure.reason(), Some(failure));
    }
    let auth = Authorized { username: username.text, nonce: nonce.text, key };

    if method != METHOD_ALLOCATE && !cx.holds_allocation {
        return refuse_signed(&auth, CODE_ALLOC_MISMATCH, "Allocation Mismatch", None);
    }
    if method == METHOD_ALLOCATE {
        // Without REQUESTED-ADDRESS-FAMILY a client asks for IPv4 (RFC 6156 section 4.2), or
        // for its own family when the operator chose "keep".
        let mut family = RequestedAddressFamily::default();
        let wants_ipv4 =
            family.get_from(m).map(|_| family == REQUESTED_FAMILY_IPV4).unwrap_or(!cx.default_ipv6);
        if !m.contains(ATTR_ADDITIONAL_ADDRESS_FAMILY) && !cx.relay_families.has(wants_ipv4) {
            return refuse_signed(
                &auth,
                CODE_ADDR_FAMILY_NOT_SUPPORTED,
                "Address Family not Supported",
                None,
            );
        }
        return Decision::Allocate(auth);
    }
    let Ok(peers) = peer_addresses(m) else {
        return refuse_signed(&auth, CODE_BAD_REQUEST, "Bad XOR-PEER-ADDRESS", None);
    };
    if method == METHOD_REFRESH {
        return Decision::Refresh(auth);
    }
    // CreatePermission or ChannelBind.
    if peers.is_empty() {
        return refuse_signed(&auth, CODE_BAD_REQUEST, "Missing XOR-PEER-ADDRESS", None);
    }
    if peers.iter().any(|p| !cx.relay_families.has(p.is_ipv4())) {
        return refuse_signed(&auth, CODE_PEER_ADDR_FAMILY_MISMATCH, "Peer Address Family Mismatch", None);
    }
    if peers.iter().any(|p| !(cx.peer_allowed)(*p)) {
        return refuse_signed(&auth, CODE_FORBIDDEN, "Forbidden", Some(Tally::DeniedPeer));
    }
    if method == METHOD_CREATE_PERMISSION {
        return Decision::CreatePermission { auth, peers };
    }
    let mut number = ChannelNumber::default();
    if number.get_from(m).is_err() || !number.valid() || peers.len() != 1 {
        return refuse_signed(&auth, CODE_BAD_REQUEST, "Bad CHANNEL-NUMBER or XOR-PEER-ADDRESS", None);
    }
    Decision::ChannelBind { auth, number, peer: peers[0] }
}

/// How a quota refusal is answered (RFC 8656: 486 per user, 508 when the server is full).
pub fn quota_refusal(quota: QuotaRefusal) -> Refusal {
    match quota {
        QuotaRefusal::PerUser => {
            refusal(CODE_ALLOC_QUOTA_REACHED, "Allocation Quota Reached", Some(Tally::Quota))
        }
        QuotaRefusal::Total => {
            refusal(CODE_INSUFFICIENT_CAPACITY, "Insufficient Capacity", Some(Tally::Quota))
        }
    }
}

/// How a permission or channel beyond the per-allocation cap is answered.
pub fn cap_refusal(cap: CapReached) -> Refusal {
    refusal(CODE_INSUFFICIENT_CAPACITY, "Insufficient Capacity", Some(Tally::Cap(cap)))
}

/// Every XOR-PEER-ADDRESS of `m`, canonicalized (IPv4-mapped IPv6 becomes IPv4).
fn peer_addresses(m: &Message) -> Result<Vec<SocketAddr>, ()> {
    let mut peers = Vec::new();
    for attr in m.attributes.0.iter().filter(|a| a.typ == ATTR_XOR_PEER_ADDRESS) {
        // The crate's getter reads the first attribute of its type: give it each one alone.
        let mut one = Message::new();
        one.transaction_id = m.transaction_id;
        one.add(ATTR_XOR_PEER_ADDRESS, &attr.value);
        let mut peer = PeerAddress::default();
        peer.get_from(&one).map_err(|_| ())?;
        peers.push(canonical_addr(SocketAddr::new(peer.ip, peer.port)));
    }
    Ok(peers)
}

#[cfg(test)]
mod tests;
