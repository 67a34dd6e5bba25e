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
//!
//! Two operator actions change what is accepted while the relay runs:
//! - **secret rotation** ([`Authenticator::rotate_secret`]): the new secret signs from now on,
//!   the previous one is accepted for everything until the grace period ends (clients get fresh
//!   credentials pushed meanwhile), and after it only where the expired-credential rule above
//!   applies: Refresh, CreatePermission and ChannelBind from the 5-tuple of an allocation made
//!   with exactly this username. Browsers refresh a live allocation with the credential they
//!   allocated with whatever `setConfiguration` says, so without this every call relayed at the
//!   rotation would drop at the end of the grace period. Nothing new is ever allocated with the
//!   previous secret after the grace period; a second rotation retires it completely;
//! - **revocation** ([`Authenticator::revoke`]): every credential of a chat user issued up to
//!   the revocation is refused, expired or not. A credential issued at `t` expires at
//!   `t + credential_ttl`, so "issued up to `revoked_at`" is "expires at or before
//!   `revoked_at + credential_ttl`"; after that window no such credential can be valid any more
//!   and the record is dropped, which keeps the table bounded by the revocations of one TTL.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

use crate::turn::credentials::{credential_for, parse_username};

/// Revocation records kept at most (each lives one credential TTL); past it the oldest goes.
pub const MAX_REVOCATIONS: usize = 4096;

/// Why a credential was refused; each has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    BadCredential,
    Expired,
    NotInVoice,
    Malformed,
    /// The operator revoked this user's TURN access after the credential was issued.
    Revoked,
}

impl AuthFailure {
    /// The reason phrase of the 401 answer (shown in browser and uclient logs).
    pub fn reason(self) -> &'static str {
        match self {
            AuthFailure::BadCredential => "Unauthorized",
            AuthFailure::Expired => "Credential expired",
            AuthFailure::NotInVoice => "Not in voice chat",
            AuthFailure::Malformed => "Malformed credential",
            AuthFailure::Revoked => "Credential revoked",
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

/// The secrets credentials may be signed with: the current one, and the one it replaced until
/// the end of its grace period.
#[derive(Debug, Clone)]
struct Secrets {
    current: Vec<u8>,
    previous: Option<(Vec<u8>, u64)>,
}

pub struct Authenticator {
    secrets: RwLock<Secrets>,
    realm: String,
    require_live_session: bool,
    /// Chat user -> unix second of the revocation.
    revocations: Mutex<HashMap<String, u64>>,
    /// How long an issued credential lives (`[turn] credential_ttl_s`): the revocation window.
    credential_ttl_s: u64,
}

/// The chat user a TURN user belongs to: the hub's `<chat name>:<session tag>` names the chat
/// name first (chat names never contain ':'); any other user (bench, `turn-credentials`) is
/// its own chat user.
pub fn chat_user_of(turn_user: &str) -> &str {
    turn_user.split_once(':').map_or(turn_user, |(name, _)| name)
}

impl Authenticator {
    pub fn new(secret: Vec<u8>, realm: String, require_live_session: bool) -> Self {
        Authenticator {
            secrets: RwLock::new(Secrets { current: secret, previous: None }),
            realm,
            require_live_session,
            revocations: Mutex::new(HashMap::new()),
            credential_ttl_s: 600,
        }
    }

    /// The lifetime of the credentials the server issues (the revocation window).
    pub fn with_credential_ttl(mut self, credential_ttl_s: u64) -> Self {
        self.credential_ttl_s = credential_ttl_s;
        self
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    fn secrets(&self) -> Secrets {
        self.secrets.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Step 1: the long-term key for `username` in `realm` under the current secret, if the
    /// name is one we could have issued.
    pub fn key(&self, username: &str, realm: &str) -> Result<Vec<u8>, AuthFailure> {
        self.check_name(username, realm)?;
        Ok(long_term_key(&self.secrets().current, username, realm))
    }

    /// Step 1 with rotation in view: the key under the current secret, or under the previous
    /// one, whichever `verifies` (MESSAGE-INTEGRITY) accepts. The previous secret counts while
    /// its grace period runs, and after it for `keeps_own_allocation` requests (not an Allocate,
    /// from the 5-tuple of an allocation made with exactly this username: a live call).
    pub fn verified_key(
        &self,
        username: &str,
        realm: &str,
        now_unix: u64,
        keeps_own_allocation: bool,
        verifies: impl Fn(&[u8]) -> bool,
    ) -> Result<Vec<u8>, AuthFailure> {
        self.check_name(username, realm)?;
        let secrets = self.secrets();
        let previous = secrets
            .previous
            .as_ref()
            .filter(|(_, until)| now_unix < *until || keeps_own_allocation)
            .map(|(secret, _)| secret);
        std::iter::once(&secrets.current)
            .chain(previous)
            .map(|secret| long_term_key(secret, username, realm))
            .find(|key| verifies(key))
            .ok_or(AuthFailure::BadCredential)
    }

    fn check_name(&self, username: &str, realm: &str) -> Result<(), AuthFailure> {
        if parse_username(username).is_none() {
            return Err(AuthFailure::Malformed);
        }
        if realm != self.realm {
            return Err(AuthFailure::BadCredential);
        }
        Ok(())
    }

    /// Signs with `secret` from now on; the current one stays accepted until `now + grace_s`
    /// (a rotation during a grace period ends the older secret's grace at once).
    pub fn rotate_secret(&self, secret: Vec<u8>, now_unix: u64, grace_s: u64) {
        let mut secrets = self.secrets.write().unwrap_or_else(|e| e.into_inner());
        let old = std::mem::replace(&mut secrets.current, secret);
        secrets.previous = Some((old, now_unix.saturating_add(grace_s)));
    }

    /// Whether a previous secret is still accepted at `now_unix`, and until when.
    pub fn previous_secret_until(&self, now_unix: u64) -> Option<u64> {
        self.secrets().previous.map(|(_, until)| until).filter(|until| now_unix < *until)
    }

    /// Refuses every credential of `chat_user` issued up to `now_unix` (see the module doc).
    pub fn revoke(&self, chat_user: &str, now_unix: u64) {
        let mut revocations = self.revocations.lock().unwrap_or_else(|e| e.into_inner());
        let ttl = self.credential_ttl_s;
        revocations.retain(|_, revoked_at| revoked_at.saturating_add(ttl) >= now_unix);
        if revocations.len() >= MAX_REVOCATIONS && !revocations.contains_key(chat_user) {
            if let Some(oldest) = revocations.iter().min_by_key(|(_, at)| **at).map(|(n, _)| n.clone()) {
                revocations.remove(&oldest);
            }
        }
        revocations.insert(chat_user.to_string(), now_unix);
    }

    /// Revocation records held now (bounded; for tests and diagnostics).
    pub fn revocations(&self) -> usize {
        self.revocations.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn is_revoked(&self, turn_user: &str, expires_at_unix: u64) -> bool {
        let revocations = self.revocations.lock().unwrap_or_else(|e| e.into_inner());
        revocations
            .get(chat_user_of(turn_user))
            .is_some_and(|revoked_at| expires_at_unix <= revoked_at.saturating_add(self.credential_ttl_s))
    }

    /// Step 2, after MESSAGE-INTEGRITY verified with [`Self::key`]: may this credential be used now?
    pub fn admit(&self, username: &str, request: Admission<'_>) -> Result<(), AuthFailure> {
        let parsed = parse_username(username).ok_or(AuthFailure::Malformed)?;
        if self.is_revoked(parsed.user, parsed.expires_at_unix) {
            return Err(AuthFailure::Revoked);
        }
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

fn long_term_key(secret: &[u8], username: &str, realm: &str) -> Vec<u8> {
    turn::auth::generate_auth_key(username, realm, &credential_for(secret, username))
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
    fn a_revoked_user_loses_every_credential_issued_before_and_only_those() {
        let a = auth(false).with_credential_ttl(600);
        let issued_before = format!("{}:alice:0badc0de", NOW + 600);
        let other_user = format!("{}:bob:01234567", NOW + 600);
        a.revoke("alice", NOW);
        assert_eq!(a.admit(&issued_before, allocate(true)), Err(AuthFailure::Revoked));
        // A refresh of a live allocation is refused too, expired or not.
        let refresh = Admission {
            now_unix: NOW + 5,
            is_allocate: false,
            allocation_username: Some(&issued_before),
            in_voice: true,
        };
        assert_eq!(a.admit(&issued_before, refresh), Err(AuthFailure::Revoked));
        assert_eq!(a.admit(&other_user, allocate(true)), Ok(()));
        // Issued after the revocation (expires later than revoked_at + ttl): admitted.
        let issued_after = format!("{}:alice:12345678", NOW + 601);
        assert_eq!(a.admit(&issued_after, allocate(true)), Ok(()));
        // The record goes once no credential it covers can be valid any more.
        assert_eq!(a.revocations(), 1);
        a.revoke("carol", NOW + 601);
        assert_eq!(a.revocations(), 1, "alice's record outlived its window");
    }

    #[test]
    fn revocation_records_are_bounded() {
        let a = auth(false);
        for i in 0..(MAX_REVOCATIONS + 10) {
            a.revoke(&format!("user{i}"), NOW + i as u64 / 1000);
        }
        assert_eq!(a.revocations(), MAX_REVOCATIONS);
        // The newest is kept.
        let newest = format!("{}:user{}", NOW, MAX_REVOCATIONS + 9);
        assert_eq!(a.admit(&newest, allocate(true)), Err(AuthFailure::Revoked));
    }

    #[test]
    fn after_a_rotation_both_secrets_verify_until_the_grace_ends_then_only_for_live_allocations() {
        let a = auth(true);
        let old = issue(b"s3cret", "alice", NOW + 600);
        a.rotate_secret(b"n3w".to_vec(), NOW, 60);
        let new = issue(b"n3w", "alice", NOW + 600);
        let signed_with = |c: &crate::turn::credentials::RestCredential| {
            let expected = turn::auth::generate_auth_key(&c.username, "relaychat", &c.credential);
            move |key: &[u8]| key == expected.as_slice()
        };
        let verify = |c: &crate::turn::credentials::RestCredential, now, live| {
            a.verified_key(&c.username, "relaychat", now, live, signed_with(c))
        };
        assert!(verify(&new, NOW, false).is_ok());
        assert!(verify(&old, NOW, false).is_ok());
        assert!(verify(&old, NOW + 59, false).is_ok());
        assert_eq!(a.previous_secret_until(NOW), Some(NOW + 60));
        // After the grace period: nothing new with the old secret...
        assert_eq!(verify(&old, NOW + 60, false), Err(AuthFailure::BadCredential));
        // ...but a live allocation made with it keeps refreshing.
        assert!(verify(&old, NOW + 3600, true).is_ok());
        assert!(verify(&new, NOW + 60, false).is_ok());
        assert_eq!(a.previous_secret_until(NOW + 60), None);
        // `key` (what signs our answers before the check) is the current secret's.
        let expected = turn::auth::generate_auth_key(&new.username, "relaychat", &new.credential);
        assert_eq!(a.key(&new.username, "relaychat"), Ok(expected));
        // A second rotation retires the first secret completely.
        a.rotate_secret(b"n3w3r".to_vec(), NOW + 100, 60);
        assert_eq!(verify(&old, NOW + 100, true), Err(AuthFailure::BadCredential));
        assert!(verify(&new, NOW + 100, true).is_ok());
    }

    #[test]
    fn chat_users_are_the_name_before_the_session_tag() {
        assert_eq!(chat_user_of("alice:0badc0de"), "alice");
        assert_eq!(chat_user_of("bench"), "bench");
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
