//! What an Allocate or a Refresh asks for (RFC 8656 sections 7.1-7.3, RFC 6156), read from
//! the request and checked, pure: the transport, the address families, an even port, the
//! lifetime. The dispatcher acts on the result; every refusal here is answered as it says.
//!
//! Supported and unsupported options, as a server that implements the base protocol answers:
//! REQUESTED-TRANSPORT must be UDP (442 otherwise, 400 if missing); DONT-FRAGMENT is accepted
//! (relay sockets never fragment on their own); EVEN-PORT without its R bit gets an even port,
//! with it (reserve the next port too) 508, as RFC 8656 says when the server cannot satisfy it;
//! RESERVATION-TOKEN is 508 (we never hand out tokens, so none is valid), and 400 together with
//! EVEN-PORT or an address-family attribute. REQUESTED-ADDRESS-FAMILY picks IPv4 or IPv6;
//! ADDITIONAL-ADDRESS-FAMILY (IPv6 only, never together with REQUESTED-ADDRESS-FAMILY) asks for
//! both.

use std::time::Duration;

use stun::attributes::{
    AttrType, ATTR_EVEN_PORT, ATTR_LIFETIME, ATTR_REQUESTED_ADDRESS_FAMILY, ATTR_RESERVATION_TOKEN,
};
use stun::error_code::{
    ErrorCode, CODE_BAD_REQUEST, CODE_INSUFFICIENT_CAPACITY, CODE_UNSUPPORTED_TRANS_PROTO,
};
use stun::message::{Getter, Message};
use turn::proto::lifetime::Lifetime;
use turn::proto::reqtrans::RequestedTransport;
use turn::proto::PROTO_UDP;

/// ADDITIONAL-ADDRESS-FAMILY (RFC 8656 section 18.11).
pub const ATTR_ADDITIONAL_ADDRESS_FAMILY: AttrType = AttrType(0x8000);
/// ADDRESS-ERROR-CODE (RFC 8656 section 18.12).
pub const ATTR_ADDRESS_ERROR_CODE: AttrType = AttrType(0x8001);

/// RFC 8656 section 7.2: the lifetime without a LIFETIME attribute (and the least granted).
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);
/// The most a client may ask for.
pub const MAX_LIFETIME: Duration = Duration::from_secs(3600);

const FAMILY_IPV4: u8 = 0x01;
const FAMILY_IPV6: u8 = 0x02;

/// Which relayed address families an Allocate asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Families {
    Ipv4,
    Ipv6,
    /// ADDITIONAL-ADDRESS-FAMILY: an IPv4 and an IPv6 relayed address.
    Both,
}

/// A checked Allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocateRequest {
    pub families: Families,
    pub even_port: bool,
    pub lifetime: Duration,
}

/// An error answer for a request (code, reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid {
    pub code: u16,
    pub reason: &'static str,
}

fn invalid(code: ErrorCode, reason: &'static str) -> Invalid {
    Invalid { code: code.0, reason }
}

/// The family byte of a REQUESTED- or ADDITIONAL-ADDRESS-FAMILY value.
fn family_of(m: &Message, attr: AttrType) -> Result<Option<u8>, Invalid> {
    match m.get(attr) {
        Ok(v) if v.len() == 4 && (v[0] == FAMILY_IPV4 || v[0] == FAMILY_IPV6) => Ok(Some(v[0])),
        Ok(_) => Err(invalid(CODE_BAD_REQUEST, "Bad address family attribute")),
        Err(_) => Ok(None),
    }
}

/// The lifetime a request asks for: `None` without LIFETIME.
fn requested_lifetime(m: &Message) -> Result<Option<Duration>, Invalid> {
    if !m.contains(ATTR_LIFETIME) {
        return Ok(None);
    }
    let mut lifetime = Lifetime::default();
    lifetime.get_from(m).map_err(|_| invalid(CODE_BAD_REQUEST, "Bad LIFETIME"))?;
    Ok(Some(lifetime.0))
}

/// RFC 8656 section 7.2: the requested lifetime, capped at the maximum, but never less than
/// the default.
pub fn granted_lifetime(requested: Option<Duration>) -> Duration {
    requested.map_or(DEFAULT_LIFETIME, |r| r.min(MAX_LIFETIME).max(DEFAULT_LIFETIME))
}

/// Reads and checks an Allocate. `default_ipv6`: the family of an Allocate that names none
/// (see `GateContext::default_ipv6`).
pub fn allocate_request(m: &Message, default_ipv6: bool) -> Result<AllocateRequest, Invalid> {
    let mut transport = RequestedTransport::default();
    if transport.get_from(m).is_err() {
        return Err(invalid(CODE_BAD_REQUEST, "Missing REQUESTED-TRANSPORT"));
    }
    if transport.protocol != PROTO_UDP {
        return Err(invalid(CODE_UNSUPPORTED_TRANS_PROTO, "Unsupported Transport Protocol"));
    }
    let requested = family_of(m, ATTR_REQUESTED_ADDRESS_FAMILY)?;
    let additional = family_of(m, ATTR_ADDITIONAL_ADDRESS_FAMILY)?;
    let even_port = m.get(ATTR_EVEN_PORT).ok();
    if m.contains(ATTR_RESERVATION_TOKEN) {
        if even_port.is_some() || requested.is_some() || additional.is_some() {
            return Err(invalid(CODE_BAD_REQUEST, "RESERVATION-TOKEN with another port option"));
        }
        return Err(invalid(CODE_INSUFFICIENT_CAPACITY, "Insufficient Capacity (no reservations)"));
    }
    let families = match (requested, additional) {
        (Some(_), Some(_)) => {
            return Err(invalid(CODE_BAD_REQUEST, "REQUESTED- and ADDITIONAL-ADDRESS-FAMILY together"))
        }
        (None, Some(FAMILY_IPV6)) => Families::Both,
        (None, Some(_)) => return Err(invalid(CODE_BAD_REQUEST, "ADDITIONAL-ADDRESS-FAMILY must be IPv6")),
        (Some(FAMILY_IPV6), None) => Families::Ipv6,
        (None, None) if default_ipv6 => Families::Ipv6,
        (Some(_), None) | (None, None) => Families::Ipv4,
    };
    let even_port = match even_port {
        None => false,
        Some(v) if v.len() == 1 => {
            if v[0] & 0x80 != 0 {
                return Err(invalid(
                    CODE_INSUFFICIENT_CAPACITY,
                    "Insufficient Capacity (no port reservations)",
                ));
            }
            true
        }
        Some(_) => return Err(invalid(CODE_BAD_REQUEST, "Bad EVEN-PORT")),
    };
    let lifetime = granted_lifetime(requested_lifetime(m)?);
    Ok(AllocateRequest { families, even_port, lifetime })
}

/// A checked Refresh: the new lifetime (zero deletes), and the family it names, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshRequest {
    pub lifetime: Duration,
    /// REQUESTED-ADDRESS-FAMILY: true for IPv6.
    pub family_ipv6: Option<bool>,
}

/// Reads and checks a Refresh (RFC 8656 section 7.3).
pub fn refresh_request(m: &Message) -> Result<RefreshRequest, Invalid> {
    let lifetime = match requested_lifetime(m)? {
        Some(Duration::ZERO) => Duration::ZERO,
        requested => granted_lifetime(requested),
    };
    let family_ipv6 = family_of(m, ATTR_REQUESTED_ADDRESS_FAMILY)?.map(|f| f == FAMILY_IPV6);
    Ok(RefreshRequest { lifetime, family_ipv6 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use stun::agent::TransactionId;
    use stun::message::{MessageType, Setter, CLASS_REQUEST, METHOD_ALLOCATE, METHOD_REFRESH};
    use turn::proto::reqfamily::{REQUESTED_FAMILY_IPV4, REQUESTED_FAMILY_IPV6};

    struct Raw(AttrType, Vec<u8>);
    impl Setter for Raw {
        fn add_to(&self, m: &mut Message) -> Result<(), stun::Error> {
            m.add(self.0, &self.1);
            Ok(())
        }
    }

    fn udp() -> Box<dyn Setter> {
        Box::new(RequestedTransport { protocol: PROTO_UDP })
    }

    fn message(method: stun::message::Method, attrs: Vec<Box<dyn Setter>>) -> Message {
        let mut setters: Vec<Box<dyn Setter>> =
            vec![Box::new(TransactionId::new()), Box::new(MessageType::new(method, CLASS_REQUEST))];
        setters.extend(attrs);
        let mut m = Message::new();
        m.build(&setters).unwrap();
        m
    }

    fn allocate(attrs: Vec<Box<dyn Setter>>) -> Result<AllocateRequest, Invalid> {
        allocate_request(&message(METHOD_ALLOCATE, attrs), false)
    }

    fn code(r: Result<AllocateRequest, Invalid>) -> u16 {
        r.unwrap_err().code
    }

    #[test]
    fn udp_is_the_only_transport() {
        assert_eq!(code(allocate(vec![])), 400);
        assert_eq!(
            code(allocate(vec![Box::new(RequestedTransport { protocol: turn::proto::Protocol(6) })])),
            442
        );
        let plain = allocate(vec![udp()]).unwrap();
        assert_eq!(
            plain,
            AllocateRequest { families: Families::Ipv4, even_port: false, lifetime: DEFAULT_LIFETIME }
        );
        // DONT-FRAGMENT is accepted.
        let dont_fragment = Box::new(Raw(stun::attributes::ATTR_DONT_FRAGMENT, vec![]));
        assert_eq!(allocate(vec![udp(), dont_fragment]).unwrap(), plain);
    }

    #[test]
    fn lifetimes_are_at_least_the_default_and_at_most_an_hour() {
        let with =
            |secs| allocate(vec![udp(), Box::new(Lifetime(Duration::from_secs(secs)))]).unwrap().lifetime;
        assert_eq!(with(30), DEFAULT_LIFETIME);
        assert_eq!(with(1200), Duration::from_secs(1200));
        assert_eq!(with(86_400), MAX_LIFETIME);
        let refresh = |attrs| refresh_request(&message(METHOD_REFRESH, attrs)).unwrap().lifetime;
        assert_eq!(refresh(vec![]), DEFAULT_LIFETIME);
        assert_eq!(refresh(vec![Box::new(Lifetime(Duration::ZERO))]), Duration::ZERO, "zero deletes");
        assert_eq!(refresh(vec![Box::new(Lifetime(Duration::from_secs(7200)))]), MAX_LIFETIME);
    }

    #[test]
    fn even_port_and_reservation_tokens_as_rfc_8656_answers_them() {
        let even = |byte| Box::new(Raw(ATTR_EVEN_PORT, vec![byte])) as Box<dyn Setter>;
        assert!(allocate(vec![udp(), even(0)]).unwrap().even_port);
        assert_eq!(code(allocate(vec![udp(), even(0x80)])), 508, "reserving the next port is not offered");
        let token = || Box::new(Raw(ATTR_RESERVATION_TOKEN, vec![1; 8])) as Box<dyn Setter>;
        assert_eq!(code(allocate(vec![udp(), token()])), 508, "no token of ours is valid");
        assert_eq!(code(allocate(vec![udp(), token(), even(0)])), 400);
        assert_eq!(code(allocate(vec![udp(), token(), Box::new(REQUESTED_FAMILY_IPV4)])), 400);
    }

    #[test]
    fn address_family_rules() {
        let families = |attrs| allocate(attrs).map(|r| r.families);
        assert_eq!(families(vec![udp(), Box::new(REQUESTED_FAMILY_IPV6)]), Ok(Families::Ipv6));
        assert_eq!(families(vec![udp(), Box::new(REQUESTED_FAMILY_IPV4)]), Ok(Families::Ipv4));
        let additional =
            |f| Box::new(Raw(ATTR_ADDITIONAL_ADDRESS_FAMILY, vec![f, 0, 0, 0])) as Box<dyn Setter>;
        assert_eq!(families(vec![udp(), additional(FAMILY_IPV6)]), Ok(Families::Both));
        assert_eq!(code(allocate(vec![udp(), additional(FAMILY_IPV4)])), 400);
        assert_eq!(
            code(allocate(vec![udp(), additional(FAMILY_IPV6), Box::new(REQUESTED_FAMILY_IPV6)])),
            400
        );
        let bad_family = Box::new(Raw(ATTR_REQUESTED_ADDRESS_FAMILY, vec![7, 0, 0, 0]));
        assert_eq!(code(allocate(vec![udp(), bad_family])), 400);
        let refresh =
            refresh_request(&message(METHOD_REFRESH, vec![Box::new(REQUESTED_FAMILY_IPV6)])).unwrap();
        assert_eq!(refresh.family_ipv6, Some(true));
    }
}
