//! The TURN gate (src/turn/gate.rs): arbitrary datagrams and arbitrary context go through
//! packet classification, STUN parsing and `decide`; never a panic, and nothing is let through
//! without a MESSAGE-INTEGRITY that verifies under the key of the request's own username.
//!
//! Input: one byte of flags (context facts, and whether to build a correctly signed request
//! from the rest, so the rules past the HMAC are reached too), four bytes of clock offset,
//! then either the raw datagram or the recipe of a signed request (method, credential lifetime,
//! peers, channel number, address family) followed by an optional byte to corrupt after signing.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use relaychat::turn::auth::Authenticator;
use relaychat::turn::credentials::{issue, parse_username};
use relaychat::turn::gate::{decide, AddressFamilies, Decision, GateContext};
use relaychat::turn::nonce::NonceMinter;
use relaychat::turn::packet::{classify, PacketKind};
use stun::agent::TransactionId;
use stun::attributes::{ATTR_MESSAGE_INTEGRITY, ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
use stun::integrity::MessageIntegrity;
use stun::message::{
    Message, MessageType, Method, Setter, CLASS_REQUEST, METHOD_ALLOCATE, METHOD_BINDING, METHOD_CHANNEL_BIND,
    METHOD_CREATE_PERMISSION, METHOD_REFRESH,
};
use stun::textattrs::TextAttribute;
use turn::proto::channum::ChannelNumber;
use turn::proto::peeraddr::PeerAddress;
use turn::proto::reqfamily::{REQUESTED_FAMILY_IPV4, REQUESTED_FAMILY_IPV6};

const SECRET: &[u8] = b"fuzz-secret";
const REALM: &str = "relaychat";
const BASE_NOW: u64 = 1_800_000_000;

struct Facts {
    in_voice: bool,
    holds_allocation: bool,
    relay_is_ipv4: bool,
    peers_allowed: bool,
    allocation_is_this_users: bool,
    require_live_session: bool,
    signed_recipe: bool,
    now: u64,
}

fn client() -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 7], 40000))
}

/// A correctly signed request from `recipe`, possibly corrupted after signing.
fn signed_request(recipe: &[u8], nonces: &NonceMinter, now: u64) -> Option<(Vec<u8>, bool)> {
    let (&[method, ttl, family, number_hi, number_lo, peer_count], rest) = recipe.split_first_chunk::<6>()?;
    let method: Method = [METHOD_ALLOCATE, METHOD_REFRESH, METHOD_CREATE_PERMISSION, METHOD_CHANNEL_BIND, METHOD_BINDING]
        [usize::from(method) % 5];
    // Lifetimes from expired to valid.
    let expires = (now as i64 + i64::from(ttl as i8) * 10) as u64;
    let credential = issue(SECRET, "alice:tag", expires);
    let mut setters: Vec<Box<dyn Setter>> =
        vec![Box::new(TransactionId::new()), Box::new(MessageType::new(method, CLASS_REQUEST))];
    match family % 3 {
        1 => setters.push(Box::new(REQUESTED_FAMILY_IPV4)),
        2 => setters.push(Box::new(REQUESTED_FAMILY_IPV6)),
        _ => {}
    }
    if number_hi & 1 == 1 {
        setters.push(Box::new(ChannelNumber(u16::from_be_bytes([number_hi >> 1, number_lo]) | 0x4000)));
    }
    let mut chunks = rest.chunks_exact(7);
    for chunk in chunks.by_ref().take(usize::from(peer_count % 4)) {
        let port = u16::from_be_bytes([chunk[5], chunk[6]]);
        let ip = match chunk[0] % 3 {
            0 => IpAddr::V4(Ipv4Addr::new(chunk[1], chunk[2], chunk[3], chunk[4])),
            1 => IpAddr::V6(Ipv4Addr::new(chunk[1], chunk[2], chunk[3], chunk[4]).to_ipv6_mapped()),
            _ => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, u16::from(chunk[1]), u16::from(chunk[2]))),
        };
        setters.push(Box::new(PeerAddress { ip, port }));
    }
    setters.push(Box::new(TextAttribute::new(ATTR_USERNAME, credential.username.clone())));
    setters.push(Box::new(TextAttribute::new(ATTR_REALM, REALM.into())));
    setters.push(Box::new(TextAttribute::new(ATTR_NONCE, nonces.mint_at(client().ip(), now))));
    let key = turn::auth::generate_auth_key(&credential.username, REALM, &credential.credential);
    setters.push(Box::new(MessageIntegrity(key)));
    let mut m = Message::new();
    m.build(&setters).ok()?;
    let mut raw = m.raw;
    // The byte after the peers, if any: which byte to corrupt, and how.
    let corrupted = match chunks.remainder() {
        [at, xor, ..] if *xor != 0 => {
            let i = usize::from(*at) % raw.len();
            raw[i] ^= xor;
            true
        }
        _ => false,
    };
    Some((raw, corrupted))
}

fuzz_target!(|data: &[u8]| {
    let Some((&[flags, a, b, c, d], rest)) = data.split_first_chunk::<5>() else { return };
    let facts = Facts {
        in_voice: flags & 1 != 0,
        holds_allocation: flags & 2 != 0,
        relay_is_ipv4: flags & 4 != 0,
        peers_allowed: flags & 8 != 0,
        allocation_is_this_users: flags & 16 != 0,
        require_live_session: flags & 32 != 0,
        signed_recipe: flags & 64 != 0,
        now: BASE_NOW + u64::from(u32::from_be_bytes([a, b, c, d]) % 100_000),
    };
    let nonces = NonceMinter::new();
    let (packet, corrupted) = if facts.signed_recipe {
        match signed_request(rest, &nonces, facts.now) {
            Some(v) => v,
            None => return,
        }
    } else {
        (rest.to_vec(), false)
    };
    if classify(&packet) != PacketKind::Stun {
        return;
    }
    let mut m = Message { raw: packet, ..Default::default() };
    if m.decode().is_err() {
        return;
    }
    let auth = Authenticator::new(SECRET.to_vec(), REALM.into(), facts.require_live_session);
    let username = TextAttribute::get_from_as(&m, ATTR_USERNAME).ok().map(|u| u.text);
    let allocation_username = username.clone().filter(|_| facts.allocation_is_this_users);
    let in_voice = |_: &str| facts.in_voice;
    let peer_allowed = |_: SocketAddr| facts.peers_allowed;
    let cx = GateContext {
        now_unix: facts.now,
        client: client(),
        auth: &auth,
        nonces: &nonces,
        in_voice: &in_voice,
        holds_allocation: facts.holds_allocation,
        allocation_username: allocation_username.as_deref(),
        relay_families: AddressFamilies { ipv4: facts.relay_is_ipv4, ipv6: !facts.relay_is_ipv4 },
        default_ipv6: !facts.relay_is_ipv4,
        peer_allowed: &peer_allowed,
    };
    let decision = decide(&m, &cx);

    let Some(granted) = decision.authorized() else { return };
    // Nothing is let through without a MESSAGE-INTEGRITY that verifies under the key of the
    // request's own username, a nonce we minted, and an admitted credential.
    assert!(!corrupted, "a request corrupted after signing was let through: {decision:?}");
    assert!(m.contains(ATTR_MESSAGE_INTEGRITY));
    assert_eq!(username.as_deref(), Some(granted.username.as_str()));
    let realm = TextAttribute::get_from_as(&m, ATTR_REALM).expect("realm").text;
    let key = auth.key(&granted.username, &realm).expect("a key for the admitted username");
    assert_eq!(key, granted.key);
    MessageIntegrity(key).check(&mut m.clone()).expect("integrity verifies");
    assert!(nonces.verify_at(&granted.nonce, client().ip(), facts.now).is_ok());
    let expired = parse_username(&granted.username).expect("a REST username").expires_at_unix <= facts.now;
    if facts.require_live_session || expired {
        assert!(facts.in_voice, "admitted a user who is not in voice");
    }
    if expired {
        assert!(
            !matches!(decision, Decision::Allocate(_)) && facts.allocation_is_this_users,
            "an expired credential was admitted outside its own allocation"
        );
    }
    match &decision {
        Decision::Allocate(_) => {}
        Decision::Refresh(_) => assert!(facts.holds_allocation),
        Decision::CreatePermission { peers, .. } => {
            assert!(facts.holds_allocation && facts.peers_allowed && !peers.is_empty());
            for peer in peers {
                assert_eq!(peer.ip(), peer.ip().to_canonical(), "peers are canonical");
                assert_eq!(peer.is_ipv4(), facts.relay_is_ipv4);
            }
        }
        Decision::ChannelBind { number, peer, .. } => {
            assert!(facts.holds_allocation && facts.peers_allowed);
            assert!(number.valid());
            assert_eq!(peer.ip(), peer.ip().to_canonical());
            assert_eq!(peer.is_ipv4(), facts.relay_is_ipv4);
        }
        Decision::Pass | Decision::Challenge(_) | Decision::Refuse { .. } => unreachable!("authorized"),
    }
});
