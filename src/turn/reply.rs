//! The wire encoding of our answers: error, challenge and success responses to one request.
//!
//! Pure: bytes out, sent by the caller through the client's link. Answers echo the request's
//! transaction ID and method; once a request authenticated, they carry MESSAGE-INTEGRITY under
//! its key (RFC 8489 section 9.2.4), so the client can trust the error.

use stun::attributes::{ATTR_NONCE, ATTR_REALM};
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
