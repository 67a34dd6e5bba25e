//! One test per rule of the gate, with requests built and signed as a client would.

use std::net::{IpAddr, SocketAddr};

use stun::agent::TransactionId;
use stun::message::{MessageType, Setter, CLASS_SUCCESS_RESPONSE, METHOD_BINDING, METHOD_SEND};
use stun::textattrs::TextAttribute;
use turn::proto::reqfamily::REQUESTED_FAMILY_IPV6;

use super::*;
use crate::turn::credentials::issue;

const NOW: u64 = 1_800_000_000;
const SECRET: &[u8] = b"gate-secret";
const REALM: &str = "relaychat";

fn client() -> SocketAddr {
    "192.0.2.7:40000".parse().unwrap()
}

fn peer(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The world a request is decided in; tests change one fact at a time.
struct World {
    auth: Authenticator,
    nonces: NonceMinter,
    in_voice: bool,
    holds_allocation: bool,
    allocation_username: Option<String>,
    relay_families: AddressFamilies,
}

impl World {
    fn new() -> World {
        World {
            auth: Authenticator::new(SECRET.to_vec(), REALM.into(), true),
            nonces: NonceMinter::new(),
            in_voice: true,
            holds_allocation: true,
            allocation_username: None,
            relay_families: AddressFamilies { ipv4: true, ipv6: false },
        }
    }

    fn decide(&self, m: &Message) -> Decision {
        let in_voice = |_: &str| self.in_voice;
        // Public peers only, like the `public` policy.
        let peer_allowed = |p: SocketAddr| match p.ip() {
            IpAddr::V4(v4) => !v4.is_private() && !v4.is_loopback(),
            IpAddr::V6(_) => true,
        };
        let cx = GateContext {
            now_unix: NOW,
            client: client(),
            auth: &self.auth,
            nonces: &self.nonces,
            in_voice: &in_voice,
            holds_allocation: self.holds_allocation,
            allocation_username: self.allocation_username.as_deref(),
            relay_families: self.relay_families,
            default_ipv6: false,
            peer_allowed: &peer_allowed,
        };
        decide(m, &cx)
    }

    fn nonce(&self) -> String {
        self.nonces.mint_at(client().ip(), NOW)
    }
}

/// A request signed like a client with `ttl` seconds left on its credential.
struct Request {
    method: stun::message::Method,
    ttl: i64,
    secret: &'static [u8],
    nonce: Option<String>,
    realm: &'static str,
    signed: bool,
    extra: Vec<Box<dyn Setter>>,
}

impl Request {
    fn new(method: stun::message::Method, world: &World) -> Request {
        Request {
            method,
            ttl: 600,
            secret: SECRET,
            nonce: Some(world.nonce()),
            realm: REALM,
            signed: true,
            extra: Vec::new(),
        }
    }

    fn with(mut self, setter: impl Setter + 'static) -> Request {
        self.extra.push(Box::new(setter));
        self
    }

    fn username(&self) -> String {
        issue(self.secret, "alice", (NOW as i64 + self.ttl) as u64).username
    }

    fn build(self) -> Message {
        let credential = issue(self.secret, "alice", (NOW as i64 + self.ttl) as u64);
        let mut setters: Vec<Box<dyn Setter>> =
            vec![Box::new(TransactionId::new()), Box::new(MessageType::new(self.method, CLASS_REQUEST))];
        setters.extend(self.extra);
        setters.push(Box::new(TextAttribute::new(ATTR_USERNAME, credential.username.clone())));
        setters.push(Box::new(TextAttribute::new(ATTR_REALM, self.realm.into())));
        if let Some(nonce) = self.nonce {
            setters.push(Box::new(TextAttribute::new(ATTR_NONCE, nonce)));
        }
        if self.signed {
            let key = turn::auth::generate_auth_key(&credential.username, self.realm, &credential.credential);
            setters.push(Box::new(MessageIntegrity(key)));
        }
        let mut built = Message::new();
        built.build(&setters).unwrap();
        decoded(built.raw)
    }
}

fn decoded(raw: Vec<u8>) -> Message {
    let mut m = Message { raw, ..Default::default() };
    m.decode().unwrap();
    m
}

fn code(decision: &Decision) -> Option<u16> {
    match decision {
        Decision::Challenge(r) | Decision::Refuse { refusal: r, .. } => Some(r.code),
        _ => None,
    }
}

fn tally(decision: &Decision) -> Option<Tally> {
    match decision {
        Decision::Challenge(r) | Decision::Refuse { refusal: r, .. } => r.tally,
        _ => None,
    }
}

#[test]
fn only_the_four_authenticated_requests_are_gated() {
    let world = World::new();
    for method in [METHOD_BINDING, METHOD_SEND] {
        let mut m = Message::new();
        m.build(&[Box::new(TransactionId::new()), Box::new(MessageType::new(method, CLASS_REQUEST))])
            .unwrap();
        assert_eq!(world.decide(&decoded(m.raw)), Decision::Pass);
    }
    let mut answer = Message::new();
    answer
        .build(&[
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_SUCCESS_RESPONSE)),
        ])
        .unwrap();
    assert_eq!(world.decide(&decoded(answer.raw)), Decision::Pass);
}

#[test]
fn a_request_without_integrity_is_challenged() {
    let world = World::new();
    let m = Request { signed: false, ..Request::new(METHOD_ALLOCATE, &world) }.build();
    let decision = world.decide(&m);
    assert!(matches!(decision, Decision::Challenge(_)), "{decision:?}");
    assert_eq!(code(&decision), Some(401));
    assert_eq!(tally(&decision), None, "an ordinary first request is no failure");
}

#[test]
fn a_missing_nonce_is_a_bad_request_counted_as_malformed() {
    let world = World::new();
    let m = Request { nonce: None, ..Request::new(METHOD_ALLOCATE, &world) }.build();
    let decision = world.decide(&m);
    assert_eq!(code(&decision), Some(400));
    assert_eq!(tally(&decision), Some(Tally::Auth(AuthFailure::Malformed)));
}

#[test]
fn a_nonce_we_did_not_mint_for_this_client_is_stale() {
    let world = World::new();
    let foreign = world.nonces.mint_at("192.0.2.8".parse().unwrap(), NOW);
    for nonce in [foreign, "0".repeat(48), world.nonces.mint_at(client().ip(), NOW - 7200)] {
        let m = Request { nonce: Some(nonce), ..Request::new(METHOD_ALLOCATE, &world) }.build();
        assert_eq!(code(&world.decide(&m)), Some(438));
    }
}

#[test]
fn another_realm_or_a_wrong_hmac_is_unauthorized() {
    let world = World::new();
    let m = Request { realm: "elsewhere", ..Request::new(METHOD_ALLOCATE, &world) }.build();
    assert_eq!(tally(&world.decide(&m)), Some(Tally::Auth(AuthFailure::BadCredential)));
    let m = Request { secret: b"guessed", ..Request::new(METHOD_ALLOCATE, &world) }.build();
    let decision = world.decide(&m);
    assert_eq!(code(&decision), Some(401));
    assert_eq!(tally(&decision), Some(Tally::Auth(AuthFailure::BadCredential)));
    assert!(decision.authorized().is_none());
}

#[test]
fn a_user_not_in_voice_or_an_expired_credential_is_unauthorized() {
    let mut world = World::new();
    world.in_voice = false;
    let m = Request::new(METHOD_ALLOCATE, &world).build();
    assert_eq!(tally(&world.decide(&m)), Some(Tally::Auth(AuthFailure::NotInVoice)));
    world.in_voice = true;
    let m = Request { ttl: -1, ..Request::new(METHOD_ALLOCATE, &world) }.build();
    assert_eq!(tally(&world.decide(&m)), Some(Tally::Auth(AuthFailure::Expired)));
}

#[test]
fn an_expired_credential_still_refreshes_its_own_allocation() {
    let mut world = World::new();
    let request = Request { ttl: -60, ..Request::new(METHOD_REFRESH, &world) };
    world.allocation_username = Some(request.username());
    let decision = world.decide(&request.build());
    assert!(matches!(decision, Decision::Refresh(_)), "{decision:?}");
}

#[test]
fn requests_other_than_allocate_need_an_allocation() {
    let mut world = World::new();
    world.holds_allocation = false;
    for method in [METHOD_REFRESH, METHOD_CREATE_PERMISSION, METHOD_CHANNEL_BIND] {
        let decision = world.decide(&Request::new(method, &world).build());
        assert_eq!(code(&decision), Some(437));
        assert!(matches!(decision, Decision::Refuse { key: Some(_), .. }), "signed once authenticated");
    }
}

#[test]
fn allocate_is_admitted_for_the_relayed_family_only() {
    let mut world = World::new();
    world.holds_allocation = false;
    let decision = world.decide(&Request::new(METHOD_ALLOCATE, &world).build());
    let Decision::Allocate(auth) = decision else { panic!("{decision:?}") };
    assert_eq!(auth.key, world.auth.key(&auth.username, REALM).unwrap());
    let m = Request::new(METHOD_ALLOCATE, &world).with(REQUESTED_FAMILY_IPV6).build();
    assert_eq!(code(&world.decide(&m)), Some(440));
    world.relay_families = AddressFamilies { ipv4: false, ipv6: true };
    assert_eq!(code(&world.decide(&Request::new(METHOD_ALLOCATE, &world).build())), Some(440));
    assert!(matches!(world.decide(&m), Decision::Allocate(_)), "IPv6 asked of an IPv6 relay");
    world.relay_families = AddressFamilies { ipv4: true, ipv6: true };
    assert!(matches!(world.decide(&m), Decision::Allocate(_)), "IPv6 asked of a dual-stack relay");
    assert!(matches!(world.decide(&Request::new(METHOD_ALLOCATE, &world).build()), Decision::Allocate(_)));
}

#[test]
fn peers_of_either_family_pass_when_the_allocation_holds_both() {
    let mut world = World::new();
    world.relay_families = AddressFamilies { ipv4: true, ipv6: true };
    let m = Request::new(METHOD_CREATE_PERMISSION, &world)
        .with(PeerAddress { ip: "2606:4700::1111".parse().unwrap(), port: 9 })
        .with(PeerAddress { ip: "8.8.8.8".parse().unwrap(), port: 53 })
        .build();
    assert!(matches!(world.decide(&m), Decision::CreatePermission { .. }));
    world.relay_families = AddressFamilies { ipv4: false, ipv6: true };
    assert_eq!(code(&world.decide(&m)), Some(443), "one IPv4 peer on an IPv6-only allocation");
}

#[test]
fn create_permission_installs_every_peer_in_canonical_form() {
    let world = World::new();
    let m = Request::new(METHOD_CREATE_PERMISSION, &world)
        .with(PeerAddress { ip: "8.8.8.8".parse().unwrap(), port: 53 })
        .with(PeerAddress { ip: "::ffff:1.1.1.1".parse().unwrap(), port: 9 })
        .build();
    let Decision::CreatePermission { peers, .. } = world.decide(&m) else { panic!() };
    assert_eq!(peers, vec![peer("8.8.8.8:53"), peer("1.1.1.1:9")]);
}

#[test]
fn permissions_need_a_peer_of_the_relayed_family() {
    let world = World::new();
    assert_eq!(code(&world.decide(&Request::new(METHOD_CREATE_PERMISSION, &world).build())), Some(400));
    let m = Request::new(METHOD_CREATE_PERMISSION, &world)
        .with(PeerAddress { ip: "2606:4700::1111".parse().unwrap(), port: 9 })
        .build();
    assert_eq!(code(&world.decide(&m)), Some(443));
}

#[test]
fn a_peer_denied_by_the_policy_is_forbidden_even_when_mapped() {
    let world = World::new();
    for ip in ["10.0.0.1", "::ffff:127.0.0.1"] {
        let m = Request::new(METHOD_CREATE_PERMISSION, &world)
            .with(PeerAddress { ip: "8.8.8.8".parse().unwrap(), port: 53 })
            .with(PeerAddress { ip: ip.parse().unwrap(), port: 9 })
            .build();
        let decision = world.decide(&m);
        assert_eq!(code(&decision), Some(403), "{ip}");
        assert_eq!(tally(&decision), Some(Tally::DeniedPeer));
    }
}

#[test]
fn a_malformed_peer_address_is_a_bad_request() {
    let world = World::new();
    struct Truncated;
    impl Setter for Truncated {
        fn add_to(&self, m: &mut Message) -> Result<(), stun::Error> {
            m.add(ATTR_XOR_PEER_ADDRESS, &[0, 1, 0]);
            Ok(())
        }
    }
    let m = Request::new(METHOD_CREATE_PERMISSION, &world).with(Truncated).build();
    assert_eq!(code(&world.decide(&m)), Some(400));
}

#[test]
fn channel_bind_needs_a_valid_number_and_one_peer() {
    let world = World::new();
    let public = || PeerAddress { ip: "8.8.8.8".parse().unwrap(), port: 53 };
    let m = Request::new(METHOD_CHANNEL_BIND, &world).with(ChannelNumber(0x4001)).with(public()).build();
    let decision = world.decide(&m);
    assert!(
        matches!(decision, Decision::ChannelBind { number: ChannelNumber(0x4001), peer: p, .. } if p == peer("8.8.8.8:53")),
        "{decision:?}"
    );
    let m = Request::new(METHOD_CHANNEL_BIND, &world).with(ChannelNumber(0x3fff)).with(public()).build();
    assert_eq!(code(&world.decide(&m)), Some(400));
    let m = Request::new(METHOD_CHANNEL_BIND, &world).with(public()).build();
    assert_eq!(code(&world.decide(&m)), Some(400));
}

#[test]
fn quota_and_cap_refusals_answer_486_and_508() {
    assert_eq!(quota_refusal(QuotaRefusal::PerUser).code, 486);
    assert_eq!(quota_refusal(QuotaRefusal::Total).code, 508);
    let cap = cap_refusal(CapReached::Permissions);
    assert_eq!((cap.code, cap.tally), (508, Some(Tally::Cap(CapReached::Permissions))));
}

#[test]
fn after_a_rotation_the_old_secret_keeps_only_live_allocations_once_the_grace_ends() {
    let mut world = World::new();
    // Rotated 100 s ago with a 60 s grace: the grace period is over.
    world.auth.rotate_secret(b"rotated-secret".to_vec(), NOW - 100, 60);
    let old = Request::new(METHOD_REFRESH, &world);
    world.allocation_username = Some(old.username());
    assert!(matches!(world.decide(&old.build()), Decision::Refresh(_)), "the live call keeps refreshing");
    let m = Request::new(METHOD_ALLOCATE, &world).build();
    assert_eq!(tally(&world.decide(&m)), Some(Tally::Auth(AuthFailure::BadCredential)), "no new allocation");
    world.allocation_username = None;
    let m = Request::new(METHOD_REFRESH, &world).build();
    assert_eq!(code(&world.decide(&m)), Some(401), "nor from another 5-tuple");
    let m = Request { secret: b"rotated-secret", ..Request::new(METHOD_ALLOCATE, &world) }.build();
    assert!(matches!(world.decide(&m), Decision::Allocate(_)), "the new secret works");
    // Within the grace period the old secret also allocates.
    let world = World::new();
    world.auth.rotate_secret(b"rotated-secret".to_vec(), NOW - 10, 60);
    let m = Request::new(METHOD_ALLOCATE, &world).build();
    assert!(matches!(world.decide(&m), Decision::Allocate(_)));
}

#[test]
fn a_revoked_user_is_refused_before_anything_else_is_decided() {
    let mut world = World::new();
    world.auth.revoke("alice", NOW);
    // Issued 5 s before the revocation (the TTL is 600 s), unexpired, its own allocation.
    let m = Request { ttl: 595, ..Request::new(METHOD_REFRESH, &world) };
    world.allocation_username = Some(m.username());
    let decision = world.decide(&m.build());
    assert_eq!(code(&decision), Some(401));
    assert_eq!(tally(&decision), Some(Tally::Auth(AuthFailure::Revoked)));
}
