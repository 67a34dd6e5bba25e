//! Signed invite tokens and member passes: what they say, how they are signed and checked.
//! Pure (the time is passed in), so every rule is a unit test.
//!
//! An invite is `i.<id>.<expires>.<uses>.<mac>`; a member pass, handed to a browser that came
//! in with an invite so it can come back, is `m.<invite id>.<expires>.<mac>`. `id` is 16 hex
//! digits, `expires` Unix seconds, `mac` the HMAC-SHA256 (base64url, unpadded) of everything
//! before it, keyed with the server's invite secret. Only characters that need no escaping in
//! a URL query. The kind letter is signed, so a pass can never be replayed as an invite.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Longest token accepted; anything longer is forged without looking further.
const MAX_TOKEN_LEN: usize = 160;

/// What a valid invite grants: up to `uses` new members until `expires`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    pub id: String,
    pub expires: u64,
    pub uses: u32,
}

/// A verified member pass: it came from invite `invite_id` and is good until `expires`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberPass {
    pub invite_id: String,
    pub expires: u64,
}

/// Why a token does not let anyone in (the refusal texts live in `mod.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenProblem {
    /// Malformed, altered, or signed with another key.
    Forged,
    Expired,
}

/// A fresh random invite id (8 bytes, hex).
pub fn new_invite_id() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

/// Signs an invite.
pub fn sign_invite(key: &[u8], invite: &Invite) -> String {
    sign(key, format!("i.{}.{}.{}", invite.id, invite.expires, invite.uses))
}

/// Signs a member pass.
pub fn sign_member_pass(key: &[u8], pass: &MemberPass) -> String {
    sign(key, format!("m.{}.{}", pass.invite_id, pass.expires))
}

/// Checks an invite's signature and expiry (uses and revocation are the ledger's business).
pub fn verify_invite(key: &[u8], token: &str, now_unix: u64) -> Result<Invite, TokenProblem> {
    let fields = verified_fields(key, token, 'i')?;
    let [id, expires, uses] = fields.as_slice() else { return Err(TokenProblem::Forged) };
    let invite = Invite {
        id: parse_id(id)?,
        expires: expires.parse().map_err(|_| TokenProblem::Forged)?,
        uses: uses.parse().map_err(|_| TokenProblem::Forged)?,
    };
    if now_unix >= invite.expires {
        return Err(TokenProblem::Expired);
    }
    Ok(invite)
}

/// Checks a member pass's signature and expiry.
pub fn verify_member_pass(key: &[u8], token: &str, now_unix: u64) -> Result<MemberPass, TokenProblem> {
    let fields = verified_fields(key, token, 'm')?;
    let [id, expires] = fields.as_slice() else { return Err(TokenProblem::Forged) };
    let pass =
        MemberPass { invite_id: parse_id(id)?, expires: expires.parse().map_err(|_| TokenProblem::Forged)? };
    if now_unix >= pass.expires {
        return Err(TokenProblem::Expired);
    }
    Ok(pass)
}

fn sign(key: &[u8], payload: String) -> String {
    let mac = URL_SAFE_NO_PAD.encode(mac_of(key, &payload).finalize().into_bytes());
    format!("{payload}.{mac}")
}

fn mac_of(key: &[u8], payload: &str) -> HmacSha256 {
    // HMAC takes keys of any length; this cannot fail.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!("hmac key"));
    mac.update(payload.as_bytes());
    mac
}

/// The fields between the kind letter and the MAC, once the MAC checks out (in constant time).
fn verified_fields<'t>(key: &[u8], token: &'t str, kind: char) -> Result<Vec<&'t str>, TokenProblem> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenProblem::Forged);
    }
    let (payload, mac) = token.rsplit_once('.').ok_or(TokenProblem::Forged)?;
    let mac = URL_SAFE_NO_PAD.decode(mac).map_err(|_| TokenProblem::Forged)?;
    mac_of(key, payload).verify_slice(&mac).map_err(|_| TokenProblem::Forged)?;
    let mut fields = payload.split('.');
    if fields.next() != Some(kind.encode_utf8(&mut [0; 4])) {
        return Err(TokenProblem::Forged);
    }
    Ok(fields.collect())
}

/// Is `id` shaped like an invite id (16 lower-case hex digits)?
pub fn is_invite_id(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn parse_id(id: &str) -> Result<String, TokenProblem> {
    if is_invite_id(id) {
        Ok(id.to_string())
    } else {
        Err(TokenProblem::Forged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn invite() -> Invite {
        Invite { id: "00112233445566ff".into(), expires: 1_000, uses: 3 }
    }

    #[test]
    fn an_invite_verifies_until_it_expires() {
        let token = sign_invite(KEY, &invite());
        assert!(token.starts_with("i.00112233445566ff.1000.3."), "{token}");
        assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)), "URL-safe: {token}");
        assert_eq!(verify_invite(KEY, &token, 999), Ok(invite()));
        assert_eq!(verify_invite(KEY, &token, 1_000), Err(TokenProblem::Expired));
    }

    #[test]
    fn any_change_to_an_invite_is_forgery() {
        let token = sign_invite(KEY, &invite());
        // More uses, a later expiry, another id, a flipped MAC character: all rejected.
        for altered in [
            token.replacen(".3.", ".300.", 1),
            token.replacen(".1000.", ".9999.", 1),
            token.replacen("00112233445566ff", "00112233445566fe", 1),
            {
                let mut t = token.clone().into_bytes();
                let last = t.len() - 1;
                t[last] = if t[last] == b'A' { b'B' } else { b'A' };
                String::from_utf8(t).unwrap()
            },
        ] {
            assert_eq!(verify_invite(KEY, &altered, 0), Err(TokenProblem::Forged), "{altered}");
        }
        assert_eq!(verify_invite(b"another key", &token, 0), Err(TokenProblem::Forged));
        for garbage in ["", ".", "i", "i.x.1.1.", "i.00112233445566ff.1000.3", &"a".repeat(500)] {
            assert_eq!(verify_invite(KEY, garbage, 0), Err(TokenProblem::Forged), "{garbage}");
        }
    }

    #[test]
    fn passes_and_invites_are_not_interchangeable() {
        let pass = MemberPass { invite_id: "00112233445566ff".into(), expires: 5_000 };
        let token = sign_member_pass(KEY, &pass);
        assert_eq!(verify_member_pass(KEY, &token, 10), Ok(pass));
        assert_eq!(verify_member_pass(KEY, &token, 5_000), Err(TokenProblem::Expired));
        assert_eq!(verify_invite(KEY, &token, 10), Err(TokenProblem::Forged));
        let invite_token = sign_invite(KEY, &invite());
        assert_eq!(verify_member_pass(KEY, &invite_token, 10), Err(TokenProblem::Forged));
    }

    #[test]
    fn ids_are_16_hex_digits_and_differ() {
        let (a, b) = (new_invite_id(), new_invite_id());
        assert!(parse_id(&a).is_ok() && a != b);
    }
}
