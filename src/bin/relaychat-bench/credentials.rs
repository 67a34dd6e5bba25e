//! TURN REST-API credentials (the coturn `use-auth-secret` convention, PROTOCOL.md section 7):
//! `username = "<unix expiry>:<name>"`, `password = base64(HMAC-SHA1(secret, username))`.
//! The bench mints these itself, exactly as relaychat's signaling hands them to browsers.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use std::time::{SystemTime, UNIX_EPOCH};

/// A username/password pair valid for the long-term credential mechanism.
#[derive(Clone, Debug)]
pub struct RestCredential {
    pub username: String,
    pub password: String,
}

/// Mint a credential for `name` that expires `ttl_secs` from now.
pub fn mint(secret: &str, name: &str, ttl_secs: u64) -> RestCredential {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let username = format!("{}:{}", now + ttl_secs, name);
    let password = password_for(secret, &username);
    RestCredential { username, password }
}

/// `base64(HMAC-SHA1(secret, username))`.
pub fn password_for(secret: &str, username: &str) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_matches_coturn_reference() {
        // Computed with: printf '%s' '1700000000:alice' | openssl dgst -sha1 -hmac secret -binary | base64
        assert_eq!(password_for("secret", "1700000000:alice"), "d8soP47RbdIKLDUOpnJPVQyq5Ts=");
    }
}
