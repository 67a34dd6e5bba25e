//! TURN REST credentials (the convention of coturn's `use-auth-secret`, PROTOCOL.md section 7).
//!
//! `username = "<unix expiry seconds>:<user>"` (the hub's user is `<chat name>:<session tag>`,
//! see `hub::voice`), `credential =
//! base64(HMAC-SHA1(secret, username))`. Pure functions: the signaling side issues them (see
//! `crate::ice_servers`), the relay's auth verifies them, and both sides agree because they share
//! only the secret. The test vectors pin the convention to coturn's.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;

type HmacSha1 = Hmac<Sha1>;

/// One username/credential pair, as handed to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestCredential {
    pub username: String,
    pub credential: String,
}

/// The credential (the TURN password) for a REST username.
pub fn credential_for(secret: &[u8], username: &str) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha1::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Issues a credential for `user` valid until `expires_at_unix`.
pub fn issue(secret: &[u8], user: &str, expires_at_unix: u64) -> RestCredential {
    let username = format!("{expires_at_unix}:{user}");
    let credential = credential_for(secret, &username);
    RestCredential { username, credential }
}

/// A REST username split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestUsername<'a> {
    pub expires_at_unix: u64,
    pub user: &'a str,
}

/// Parses `"<expiry>:<user>"`. The user part may itself contain no further structure we rely on.
pub fn parse_username(username: &str) -> Option<RestUsername<'_>> {
    let (expiry, user) = username.split_once(':')?;
    let expires_at_unix = expiry.parse().ok()?;
    if user.is_empty() {
        return None;
    }
    Some(RestUsername { expires_at_unix, user })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_coturn_rest_vector() {
        // HMAC-SHA1 of "1700000000:alice" under "secret", computed independently with
        // `printf %s 1700000000:alice | openssl dgst -sha1 -hmac secret -binary | base64`.
        let c = issue(b"secret", "alice", 1_700_000_000);
        assert_eq!(c.username, "1700000000:alice");
        assert_eq!(c.credential, "d8soP47RbdIKLDUOpnJPVQyq5Ts=");
        assert_ne!(c.credential, credential_for(b"other", "1700000000:alice"));
    }

    #[test]
    fn rfc2202_hmac_sha1_vector() {
        // RFC 2202 test case 2: key "Jefe", data "what do ya want for nothing?".
        let expected = hex::decode("effcdf6ae5eb2fa2d27416d5f184df9c259a7c79").unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(expected);
        assert_eq!(credential_for(b"Jefe", "what do ya want for nothing?"), b64);
    }

    #[test]
    fn parses_usernames() {
        assert_eq!(parse_username("12:bob"), Some(RestUsername { expires_at_unix: 12, user: "bob" }));
        assert_eq!(parse_username("x:bob"), None);
        assert_eq!(parse_username("12:"), None);
        assert_eq!(parse_username("12"), None);
    }
}
