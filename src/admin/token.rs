//! The admin bearer token, compared in constant time.
//!
//! Both sides are hashed with SHA-256 first, so the comparison takes the same time whatever
//! the lengths and wherever the first difference is; `subtle` does the byte comparison without
//! an early exit.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The configured token (only its digest is kept).
#[derive(Clone)]
pub struct BearerToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

impl BearerToken {
    pub fn new(token: &str) -> Self {
        BearerToken { digest: Sha256::digest(token.as_bytes()).into() }
    }

    /// True when the `Authorization` header value is `Bearer <our token>`.
    pub fn accepts(&self, authorization: Option<&[u8]>) -> bool {
        let Some(value) = authorization else { return false };
        let given = match value.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => &value[7..],
            _ => return false,
        };
        let given: [u8; 32] = Sha256::digest(given.trim_ascii()).into();
        given.ct_eq(&self.digest).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_as_a_bearer_passes() {
        let token = BearerToken::new("0123456789abcdef-token");
        assert!(token.accepts(Some(b"Bearer 0123456789abcdef-token")));
        assert!(token.accepts(Some(b"bearer 0123456789abcdef-token")));
        assert!(!token.accepts(Some(b"Bearer 0123456789abcdef-tokeN")));
        assert!(!token.accepts(Some(b"Bearer 0123456789abcdef-token2")));
        assert!(!token.accepts(Some(b"Basic 0123456789abcdef-token")));
        assert!(!token.accepts(Some(b"0123456789abcdef-token")));
        assert!(!token.accepts(Some(b"Bearer ")));
        assert!(!token.accepts(Some(b"")));
        assert!(!token.accepts(None));
        assert!(!format!("{token:?}").contains("0123"));
    }
}
