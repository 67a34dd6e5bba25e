//! The wire encoding of our answers: error, challenge and success responses to one request.
//!
//! Pure: bytes out, sent by the caller through the client's link. Answers echo the request's
//! transaction ID and method; once a request authenticated, they carry MESSAGE-INTEGRITY under
//! its key (RFC 8489 section 9.2.4), so the client can trust the error.

use std::net::SocketAddr;
use std::time::Duration;

use stun::attributes::{ATTR_NONCE, ATTR_REALM};
use stun::fingerprint::FINGERPRINT;
use stun::xoraddr::XorMappedAddress;
use turn::proto::lifetime::Lifetime;
use turn::proto::relayaddr::RelayedAddress;

use crate::turn::requests::ATTR_ADDRESS_ERROR_CODE;
use stun::error_code::{ErrorCode, ErrorCodeAttribute};
use stun::integrity::MessageIntegrity;
use stun::message::{
    Message, MessageClass, MessageType, Setter, CLASS_ERROR_RESPONSE, CLASS_SUCCESS_RESPONSE,
};
use stun::textattrs::TextAttribute;

/// Encodes an answer (synchronously: `dyn Setter` is not `Send`, so never held over an await).
fn encode(request: &Message, class: MessageClass, attrs: Vec<Box<dyn Setter>>) -> Option<Vec<u8>> {
    let mut setters: Vec<Box<dyn Setter>> =
        vec![Box::new(request.transaction_id), Box::new(MessageType::new(request.typ.method, class))];
    setters.extend(attrs);
    let mut msg = Message::new();
    match msg.build(&setters) {
        Ok(()) => Some(msg.raw),
        Err(err) => {
            tracing::warn!(%err, "cannot build a STUN answer");
            None
        }
    }
}

fn error_code(code: ErrorCode, reason: &str) -> Box<dyn Setter> {
    Box::new(ErrorCodeAttribute { code, reason: reason.as_bytes().to_vec() })
}

/// 401 or 438 with our realm and a fresh nonce (the client retries with credentials).
pub fn challenge(
    request: &Message,
    code: ErrorCode,
    reason: &str,
    realm: &str,
    nonce: String,
) -> Option<Vec<u8>> {
    encode(
        request,
        CLASS_ERROR_RESPONSE,
        vec![
            error_code(code, reason),
            Box::new(TextAttribute::new(ATTR_REALM, realm.to_string())),
            Box::new(TextAttribute::new(ATTR_NONCE, nonce)),
        ],
    )
}

/// An error answer, signed with `key` when the request authenticated.
pub fn error(request: &Message, code: ErrorCode, reason: &str, key: Option<&[u8]>) -> Option<Vec<u8>> {
    let mut attrs = vec![error_code(code, reason)];
    if let Some(key) = key {
        attrs.push(Box::new(MessageIntegrity(key.to_vec())));
    }
    encode(request, CLASS_ERROR_RESPONSE, attrs)
}

/// A success answer with no attributes but MESSAGE-INTEGRITY (CreatePermission, ChannelBind).
pub fn success(request: &Message, key: &[u8]) -> Option<Vec<u8>> {
    encode(request, CLASS_SUCCESS_RESPONSE, vec![Box::new(MessageIntegrity(key.to_vec()))])
}

/// A relayed address family that could not be allocated in a dual allocation (RFC 8656
/// section 18.12: ADDRESS-ERROR-CODE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressError {
    pub ipv6: bool,
    pub code: u16,
    pub reason: &'static str,
}

impl Setter for AddressError {
    fn add_to(&self, m: &mut Message) -> Result<(), stun::Error> {
        let mut value =
            vec![if self.ipv6 { 0x02 } else { 0x01 }, 0, (self.code / 100) as u8, (self.code % 100) as u8];
        value.extend_from_slice(self.reason.as_bytes());
        m.add(ATTR_ADDRESS_ERROR_CODE, &value);
        Ok(())
    }
}

/// The answer to a successful Allocate: the relayed address(es), the lifetime, the client's
/// mapped address, and the family that failed in a dual allocation.
pub fn allocate_success(
    request: &Message,
    key: &[u8],
    relayed: &[SocketAddr],
    lifetime: Duration,
    mapped: SocketAddr,
    address_error: Option<AddressError>,
) -> Option<Vec<u8>> {
    let mut attrs: Vec<Box<dyn Setter>> = relayed
        .iter()
        .map(|r| Box::new(RelayedAddress { ip: r.ip(), port: r.port() }) as Box<dyn Setter>)
        .collect();
    attrs.push(Box::new(Lifetime(lifetime)));
    attrs.push(Box::new(XorMappedAddress { ip: mapped.ip(), port: mapped.port() }));
    if let Some(error) = address_error {
        attrs.push(Box::new(error));
    }
    attrs.push(Box::new(MessageIntegrity(key.to_vec())));
    encode(request, CLASS_SUCCESS_RESPONSE, attrs)
}

/// The answer to a successful Refresh (lifetime 0 after a deletion).
pub fn refresh_success(request: &Message, key: &[u8], lifetime: Duration) -> Option<Vec<u8>> {
    encode(
        request,
        CLASS_SUCCESS_RESPONSE,
        vec![Box::new(Lifetime(lifetime)), Box::new(MessageIntegrity(key.to_vec()))],
    )
}

/// The answer to a Binding request (RFC 8489): the client's address as we see it.
pub fn binding_success(request: &Message, mapped: SocketAddr) -> Option<Vec<u8>> {
    encode(
        request,
        CLASS_SUCCESS_RESPONSE,
        vec![Box::new(XorMappedAddress { ip: mapped.ip(), port: mapped.port() }), Box::new(FINGERPRINT)],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use stun::agent::TransactionId;
    use stun::message::{Getter, CLASS_REQUEST, METHOD_CREATE_PERMISSION};

    fn request() -> Message {
        let mut m = Message::new();
        m.build(&[
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_CREATE_PERMISSION, CLASS_REQUEST)),
        ])
        .unwrap();
        m
    }

    fn decode(raw: Vec<u8>) -> Message {
        let mut m = Message { raw, ..Default::default() };
        m.decode().unwrap();
        m
    }

    #[test]
    fn answers_echo_the_transaction_and_are_signed_with_the_key() {
        let req = request();
        let key = b"long-term key".to_vec();
        let mut answer = decode(error(&req, ErrorCode(508), "Insufficient Capacity", Some(&key)).unwrap());
        assert_eq!(answer.transaction_id, req.transaction_id);
        assert_eq!(answer.typ, MessageType::new(METHOD_CREATE_PERMISSION, CLASS_ERROR_RESPONSE));
        let mut code = ErrorCodeAttribute::default();
        code.get_from(&answer).unwrap();
        assert_eq!((code.code.0, code.reason.as_slice()), (508, &b"Insufficient Capacity"[..]));
        MessageIntegrity(key.clone()).check(&mut answer).unwrap();
        let mut ok = decode(success(&req, &key).unwrap());
        assert_eq!(ok.typ.class, CLASS_SUCCESS_RESPONSE);
        MessageIntegrity(key).check(&mut ok).unwrap();
    }

    #[test]
    fn challenges_carry_realm_and_nonce() {
        let answer = decode(
            challenge(&request(), ErrorCode(401), "Unauthorized", "relaychat", "n0nce".into()).unwrap(),
        );
        assert_eq!(TextAttribute::get_from_as(&answer, ATTR_REALM).unwrap().text, "relaychat");
        assert_eq!(TextAttribute::get_from_as(&answer, ATTR_NONCE).unwrap().text, "n0nce");
    }
}
