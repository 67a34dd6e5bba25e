//! Stateless nonces: the relay keeps no state for a client that has not authenticated.
//!
//! The crate stores every nonce it hands out in a map that nothing prunes (the same design as
//! pion/turn issue 361): a flood of unauthenticated Allocates, possibly from spoofed sources,
//! grows memory without bound. Instead our read loop answers those requests itself with a nonce
//! that carries its own proof: `<mint time, 16 hex digits><HMAC-SHA1(process key, time || client
//! IP), 32 hex digits>`. A nonce is valid for [`NONCE_LIFETIME`] from the same client IP; nothing
//! is stored, so a flood costs CPU for the answer and no memory at all.

use std::net::IpAddr;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha1::Sha1;

/// Same lifetime as the crate uses (RFC 5766 section 4 suggests about an hour).
pub const NONCE_LIFETIME: Duration = Duration::from_secs(3600);

const TIME_HEX: usize = 16;
const MAC_HEX: usize = 32;

pub struct NonceMinter {
    key: [u8; 32],
}

/// Why a presented nonce is not accepted (both are answered with 438 Stale Nonce).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceError {
    Invalid,
    Expired,
}

impl NonceMinter {
    /// A minter with a fresh random key (nonces do not survive a restart; clients get a 438).
    pub fn new() -> Self {
        NonceMinter { key: rand::random() }
    }

    /// A nonce for `client_ip`, minted at `unix_secs` (the caller reads the clock).
    pub fn mint_at(&self, client_ip: IpAddr, unix_secs: u64) -> String {
        let mut out = format!("{unix_secs:016x}");
        out.push_str(&self.mac_hex(client_ip, unix_secs));
        out
    }

    /// Checks a presented nonce at time `now` (Unix seconds); pure, so the gate can call it.
    pub fn verify_at(&self, nonce: &str, client_ip: IpAddr, now: u64) -> Result<(), NonceError> {
        if nonce.len() != TIME_HEX + MAC_HEX || !nonce.is_ascii() {
            return Err(NonceError::Invalid);
        }
        let (time_hex, mac_hex) = nonce.split_at(TIME_HEX);
        let minted = u64::from_str_radix(time_hex, 16).map_err(|_| NonceError::Invalid)?;
        // Constant-time enough: both sides are fixed-length hex of a MAC the client cannot
        // compute; a timing oracle on a per-process random key gains nothing usable.
        if self.mac_hex(client_ip, minted) != mac_hex {
            return Err(NonceError::Invalid);
        }
        if minted > now + 60 || now.saturating_sub(minted) >= NONCE_LIFETIME.as_secs() {
            return Err(NonceError::Expired);
        }
        Ok(())
    }

    fn mac_hex(&self, client_ip: IpAddr, unix_secs: u64) -> String {
        let mut mac = Hmac::<Sha1>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(&unix_secs.to_be_bytes());
        match client_ip.to_canonical() {
            IpAddr::V4(v4) => mac.update(&v4.octets()),
            IpAddr::V6(v6) => mac.update(&v6.octets()),
        }
        let digest = mac.finalize().into_bytes();
        hex::encode(&digest[..MAC_HEX / 2])
    }
}

impl Default for NonceMinter {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_minted_nonce_verifies_for_the_same_ip_only() {
        let m = NonceMinter::new();
        let n = m.mint_at(ip("192.0.2.1"), NOW);
        assert_eq!(n.len(), 48);
        assert_eq!(m.verify_at(&n, ip("192.0.2.1"), NOW), Ok(()));
        assert_eq!(m.verify_at(&n, ip("::ffff:192.0.2.1"), NOW), Ok(()));
        assert_eq!(m.verify_at(&n, ip("192.0.2.2"), NOW), Err(NonceError::Invalid));
        assert_eq!(NonceMinter::new().verify_at(&n, ip("192.0.2.1"), NOW), Err(NonceError::Invalid));
    }

    #[test]
    fn nonces_expire_and_tampering_is_detected() {
        let m = NonceMinter::new();
        let n = m.mint_at(ip("10.0.0.1"), 1_000_000);
        assert_eq!(m.verify_at(&n, ip("10.0.0.1"), 1_000_000 + 3599), Ok(()));
        assert_eq!(m.verify_at(&n, ip("10.0.0.1"), 1_000_000 + 3600), Err(NonceError::Expired));
        let mut forged = format!("{:016x}", 2_000_000u64);
        forged.push_str(&n[16..]);
        assert_eq!(m.verify_at(&forged, ip("10.0.0.1"), 2_000_000), Err(NonceError::Invalid));
        assert_eq!(m.verify_at("short", ip("10.0.0.1"), NOW), Err(NonceError::Invalid));
        assert_eq!(m.verify_at(&"é".repeat(24), ip("10.0.0.1"), NOW), Err(NonceError::Invalid));
    }
}
