//! Who may use the relay: REST credentials bound to a live voice session.
//!
//! A request passes in two steps, in this order so that someone without the secret learns
//! nothing about who is in a call:
//! 1. [`Authenticator::key`]: the REST username parses and the realm is ours; the long-term key
//!    (MD5 of `user:realm:password`, the password being `credentials::credential_for`) is returned
//!    and the caller checks MESSAGE-INTEGRITY with it (wrong HMAC = bad credential);
//! 2. [`Authenticator::admit`]: the expiry is in the future and the user is in voice right now
//!    (unless `require_live_session = false`, which never lifts the HMAC or the expiry).
//!
//! Long calls: browsers keep refreshing an allocation (and its permissions and channels) with the
//! credential they allocated with, long after its expiry. So an expired credential is still
//! admitted for Refresh, CreatePermission and ChannelBind when (a) its HMAC is right, (b) the user
//! is in voice right now, and (c) the request comes from the 5-tuple of an allocation that was
//! created with exactly this username (so it was valid when the allocation was made). A new
//! Allocate always needs an unexpired credential. When the user leaves voice, (b) fails and the
//! allocations are deleted anyway.

use crate::turn::credentials::{credential_for, parse_username};

/// Why a credential was refused; each has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    BadCredential,
    Expired,
    NotInVoice,
    Malformed,
}

impl AuthFailure {
    /// The reason phrase of the 401 answer (shown in browser and uclient logs).
    pub fn reason(self) -> &'static str {
        match self {
            AuthFailure::BadCredential => "Unauthorized",
            AuthFailure::Expired => "Credential expired",
            AuthFailure::NotInVoice => "Not in voice chat",
            AuthFailure::Malformed => "Malformed credential",
        }
    }
}

/// What the request is, as far as admission cares.
#[derive(Debug, Clone, Copy)]
pub struct Admission<'a> {
    pub now_unix: u64,
    /// True for Allocate (never admitted with an expired credential).
    pub is_allocate: bool,
    /// The full REST username the request's 5-tuple allocated with, if it holds an allocation.
    pub allocation_username: Option<&'a str>,
    /// Whether the user the username names is in voice chat right now.
    pub in_voice: bool,
}

pub struct Authenticator {
    secret: Vec<u8>,
    realm: String,
    require_live_session: bool,
}

impl Authenticator {
    pub fn new(secret: Vec<u8>, realm: String, require_live_session: bool) -> Self {
        Authenticator { secret, realm, require_live_session }
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// Step 1: the long-term key for `username` in `realm`, if the name is one we could have issued.
    pub fn key(&self, username: &str, realm: &str) -> Result<Vec<u8>, AuthFailure> {
        if parse_username(username).is_none() {
            return Err(AuthFailure::Malformed);
        }
        if realm != self.realm {
            return Err(AuthFailure::BadCredential);
        }
        let password = credential_for(&self.secret, username);
        Ok(turn::auth::generate_auth_key(username, realm, &password))
    }

    /// Step 2, after MESSAGE-INTEGRITY verified with [`Self::key`]: may this credential be used now?
    pub fn admit(&self, username: &str, request: Admission<'_>) -> Result<(), AuthFailure> {
        let parsed = parse_username(username).ok_or(AuthFailure::Malformed)?;
        let in_voice = request.in_voice;
        if parsed.expires_at_unix <= request.now_unix {
            let same_live_allocation =
                !request.is_allocate && request.allocation_username == Some(username) && in_voice;
            if !same_live_allocation {
                return Err(AuthFailure::Expired);
            }
        }
        if self.require_live_session && !in_voice {
            return Err(AuthFailure::NotInVoice);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::turn::credentials::issue;

    fn auth(require_live_session: bool) -> Authenticator {
        Authenticator::new(b"s3cret".to_vec(), "relaychat".into(), require_live_session)
    }

    const NOW: u64 = 1_800_000_000;

    fn allocate(in_voice: bool) -> Admission<'static> {
        Admission { now_unix: NOW, is_allocate: true, allocation_username: None, in_voice }
    }

    #[test]
    fn key_matches_what_a_client_derives_from_the_issued_credential() {
        let a = auth(true);
        let c = issue(b"s3cret", "alice", NOW + 600);
        let expected = turn::auth::generate_auth_key(&c.username, "relaychat", &c.credential);
        assert_eq!(a.key(&c.username, "relaychat"), Ok(expected));
        assert_eq!(a.key(&c.username, "other-realm"), Err(AuthFailure::BadCredential));
        assert_eq!(a.key("alice", "relaychat"), Err(AuthFailure::Malformed));
        assert_eq!(a.key("123", "relaychat"), Err(AuthFailure::Malformed));
    }

    #[test]
    fn admission_needs_voice_and_an_unexpired_credential() {
        let a = auth(true);
        let name = format!("{}:alice", NOW + 600);
        assert_eq!(a.admit(&name, allocate(false)), Err(AuthFailure::NotInVoice));
        assert_eq!(a.admit(&name, allocate(true)), Ok(()));
        let expired = format!("{}:alice", NOW);
        assert_eq!(a.admit(&expired, allocate(true)), Err(AuthFailure::Expired));
    }

    #[test]
    fn expired_credentials_keep_refreshing_their_own_allocation_while_in_voice() {
        let a = auth(true);
        let expired = format!("{}:alice", NOW - 10);
        let refresh = Admission {
            now_unix: NOW,
            is_allocate: false,
            allocation_username: Some(&expired),
            in_voice: true,
        };
        assert_eq!(a.admit(&expired, refresh), Ok(()));
        // Not for an allocation made with another credential, nor for a new Allocate.
        let other = format!("{}:alice", NOW - 20);
        let other_alloc = Admission { allocation_username: Some(&other), ..refresh };
        assert_eq!(a.admit(&expired, other_alloc), Err(AuthFailure::Expired));
        assert_eq!(a.admit(&expired, Admission { is_allocate: true, ..refresh }), Err(AuthFailure::Expired));
        // Not once the user left.
        assert_eq!(a.admit(&expired, Admission { in_voice: false, ..refresh }), Err(AuthFailure::Expired));
    }

    #[test]
    fn no_live_session_rule_still_checks_expiry() {
        let a = auth(false);
        assert_eq!(a.admit(&format!("{}:bench", NOW + 1), allocate(false)), Ok(()));
        assert_eq!(a.admit(&format!("{}:bench", NOW), allocate(false)), Err(AuthFailure::Expired));
        // And the HMAC: the key is derived from the secret, whatever the live-session rule.
        let wrong = issue(b"not-the-secret", "bench", NOW + 600);
        let key = a.key(&wrong.username, "relaychat").unwrap();
        assert_ne!(key, turn::auth::generate_auth_key(&wrong.username, "relaychat", &wrong.credential));
    }
}
