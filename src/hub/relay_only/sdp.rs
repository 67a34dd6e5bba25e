//! An SDP, rebuilt line by line so that no line that can carry an address passes unexamined.
//!
//! | line                 | output                                                           |
//! |----------------------|------------------------------------------------------------------|
//! | `o=`                 | `o=- <sess-id> <sess-version> IN IP4 0.0.0.0` (JSEP's own values) |
//! | `c=`                 | kept if the address is one of our relays, else `0.0.0.0` / `::` |
//! | `a=rtcp:`            | port kept, address (if any) `0.0.0.0` / `::`                     |
//! | `a=candidate:`       | rebuilt as a relay candidate (see `candidate`) or dropped        |
//! | `a=remote-candidates`| dropped (it lists addresses by definition)                       |
//! | `a=fingerprint:`     | rebuilt from a validated hash name and hex pairs; see below      |
//! | anything else        | kept byte for byte unless it contains an address literal         |
//!
//! `a=fingerprint` is the one allow-listed exception to the address-literal rule: a SHA-256
//! fingerprint is 32 colon-separated hex pairs, which is also the shape of an uncompressed IPv6
//! address, and the call cannot work without it. It is rebuilt only from exactly that shape.
//! Line endings are kept as they were (CRLF, or LF from sloppy clients).

use super::candidate;
use super::ip_literal::contains_ip_literal;
use super::tally::{PrivacyTally, SanitizedField};
use super::RelayAddresses;

/// Why a description could not be relayed at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnusableSdp;

/// Rebuilds `sdp` for relaying under force_relay.
pub fn rebuild(sdp: &str, relays: &RelayAddresses, tally: &mut PrivacyTally) -> Result<String, UnusableSdp> {
    let mut out = String::with_capacity(sdp.len());
    for raw in sdp.split_inclusive('\n') {
        let content = raw.trim_end_matches(['\r', '\n']);
        let ending = &raw[content.len()..];
        let rebuilt = rebuild_line(content, relays, tally)?;
        if let Some(line) = rebuilt {
            out.push_str(&line);
            out.push_str(ending);
        }
    }
    Ok(out)
}

/// `Ok(None)`: drop the line. `Err`: the whole description is unusable.
fn rebuild_line(
    line: &str,
    relays: &RelayAddresses,
    tally: &mut PrivacyTally,
) -> Result<Option<String>, UnusableSdp> {
    // SDP text never holds control characters inside a line (RFC 8866); a bare CR in the middle
    // would make this line two lines to a parser that also breaks on CR, with the second one
    // never examined here. Found by the relay_only fuzz target.
    if line.chars().any(|c| c.is_control() && c != '\t') {
        tally.sanitize(SanitizedField::SdpLine);
        return Ok(None);
    }
    if let Some(origin) = line.strip_prefix("o=") {
        let rebuilt = origin_line(origin).ok_or(UnusableSdp)?;
        if rebuilt != line {
            tally.sanitize(SanitizedField::SdpOrigin);
        }
        return Ok(Some(rebuilt));
    }
    if let Some(connection) = line.strip_prefix("c=") {
        let rebuilt = connection_line(connection, relays);
        if rebuilt != line {
            tally.sanitize(SanitizedField::SdpConnection);
        }
        return Ok(Some(rebuilt));
    }
    if let Some(rtcp) = line.strip_prefix("a=rtcp:") {
        let rebuilt = rtcp_line(rtcp);
        if rebuilt.as_deref() != Some(line) {
            tally.sanitize(SanitizedField::SdpRtcp);
        }
        return Ok(rebuilt);
    }
    if line.starts_with("a=candidate:") {
        return Ok(match candidate::rebuild(line, relays, tally) {
            Ok(rebuilt) => Some(rebuilt),
            Err(reason) => {
                tally.drop(reason);
                None
            }
        });
    }
    if line.starts_with("a=remote-candidates") {
        tally.sanitize(SanitizedField::SdpLine);
        return Ok(None);
    }
    if let Some(fingerprint) = line.strip_prefix("a=fingerprint:") {
        let rebuilt = fingerprint_line(fingerprint);
        if rebuilt.is_none() {
            tally.sanitize(SanitizedField::SdpLine);
        }
        return Ok(rebuilt);
    }
    if contains_ip_literal(line) {
        tally.sanitize(SanitizedField::SdpLine);
        return Ok(None);
    }
    Ok(Some(line.to_string()))
}

/// `<username> <sess-id> <sess-version> <nettype> <addrtype> <address>`: only the two numbers
/// carry meaning for the receiver (they must stay stable across renegotiations).
fn origin_line(origin: &str) -> Option<String> {
    let fields: Vec<&str> = origin.split(' ').collect();
    let [_, session_id, session_version, ..] = fields[..] else { return None };
    let number = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    if fields.len() != 6 || !number(session_id) || !number(session_version) {
        return None;
    }
    Some(format!("o=- {session_id} {session_version} IN IP4 0.0.0.0"))
}

/// `IN IP4 <address>[/ttl[/count]]`; a relay address stays (it is the default candidate).
fn connection_line(connection: &str, relays: &RelayAddresses) -> String {
    let mut fields = connection.split(' ');
    let (_, address_type, address) = (fields.next(), fields.next(), fields.next());
    let ipv6 = address_type == Some("IP6");
    match address.and_then(|a| a.parse().ok()) {
        Some(ip) if relays.contains(ip) && fields.next().is_none() => {
            format!("c=IN {} {ip}", if ip.is_ipv4() { "IP4" } else { "IP6" })
        }
        _ if ipv6 => "c=IN IP6 ::".to_string(),
        _ => "c=IN IP4 0.0.0.0".to_string(),
    }
}

/// `<port>[ IN IP4 <address>]` (RFC 3605).
fn rtcp_line(rtcp: &str) -> Option<String> {
    let mut fields = rtcp.split(' ');
    let port = fields.next().filter(|p| p.parse::<u16>().is_ok() && p.len() <= 5)?;
    match (fields.next(), fields.next()) {
        (None, _) => Some(format!("a=rtcp:{port}")),
        (Some(_), Some("IP6")) => Some(format!("a=rtcp:{port} IN IP6 ::")),
        (Some(_), _) => Some(format!("a=rtcp:{port} IN IP4 0.0.0.0")),
    }
}

/// `<hash-function> <hex>:<hex>:...` (RFC 8122), two hex digits per byte, 16 to 64 bytes.
fn fingerprint_line(fingerprint: &str) -> Option<String> {
    let (hash, digest) = fingerprint.split_once(' ')?;
    let hash_ok =
        !hash.is_empty() && hash.len() <= 16 && hash.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let bytes: Vec<&str> = digest.split(':').collect();
    let digest_ok = (16..=64).contains(&bytes.len())
        && bytes.iter().all(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit()));
    (hash_ok && digest_ok).then(|| format!("a=fingerprint:{hash} {digest}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::relay_only::tally::DropReason;

    fn relays() -> RelayAddresses {
        RelayAddresses::new(["203.0.113.10".parse().unwrap()])
    }

    const FINGERPRINT: &str = "a=fingerprint:sha-256 \
        4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:1A:66:12:A0:4B:92:1C:35:B9:E2:10:9A";

    #[test]
    fn every_address_bearing_line_is_rewritten_and_crlf_kept() {
        let sdp = format!(
            "v=0\r\no=alice-laptop 4611731400430051336 2 IN IP4 192.168.1.5\r\ns=-\r\nt=0 0\r\n\
             m=audio 50000 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 192.168.1.5\r\n\
             a=rtcp:9 IN IP4 192.168.1.5\r\n\
             a=candidate:1 1 udp 2122260223 192.168.1.5 54321 typ host generation 0\r\n\
             a=candidate:4 1 udp 41885439 203.0.113.10 50000 typ relay raddr 198.51.100.7 rport 40000 generation 0\r\n\
             a=remote-candidates:1 192.168.1.6 5000\r\n\
             a=x-my-address:10.0.0.1\r\n\
             {FINGERPRINT}\r\n\
             a=end-of-candidates\r\n"
        );
        let mut tally = PrivacyTally::default();
        let out = rebuild(&sdp, &relays(), &mut tally).unwrap();
        assert_eq!(
            out,
            format!(
                "v=0\r\no=- 4611731400430051336 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
                 m=audio 50000 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n\
                 a=rtcp:9 IN IP4 0.0.0.0\r\n\
                 a=candidate:4 1 udp 41885439 203.0.113.10 50000 typ relay raddr 0.0.0.0 rport 0 generation 0\r\n\
                 {FINGERPRINT}\r\n\
                 a=end-of-candidates\r\n"
            )
        );
        assert_eq!(tally.sanitized(SanitizedField::SdpOrigin), 1);
        assert_eq!(tally.sanitized(SanitizedField::SdpConnection), 1);
        assert_eq!(tally.sanitized(SanitizedField::SdpRtcp), 1);
        assert_eq!(tally.sanitized(SanitizedField::SdpLine), 2);
        assert_eq!(tally.sanitized(SanitizedField::RelatedAddress), 1);
        assert_eq!(tally.dropped(DropReason::NotRelay), 1);
        assert_eq!(rebuild(&out, &relays(), &mut tally).unwrap(), out, "idempotent");
    }

    #[test]
    fn a_relay_connection_address_stays_and_lf_endings_survive() {
        let sdp = "v=0\no=- 1 1 IN IP4 0.0.0.0\nc=IN IP4 203.0.113.10\nc=IN IP6 2001:db8::1\na=rtcp:50001\n";
        let out = rebuild(sdp, &relays(), &mut PrivacyTally::default()).unwrap();
        assert_eq!(out, "v=0\no=- 1 1 IN IP4 0.0.0.0\nc=IN IP4 203.0.113.10\nc=IN IP6 ::\na=rtcp:50001\n");
    }

    #[test]
    fn a_broken_origin_makes_the_description_unusable() {
        for origin in ["o=- x 1 IN IP4 0.0.0.0", "o=- 1", "o=", "o=- 1 2 IN IP4 0.0.0.0 extra"] {
            assert_eq!(
                rebuild(&format!("v=0\r\n{origin}\r\n"), &relays(), &mut PrivacyTally::default()),
                Err(UnusableSdp)
            );
        }
    }

    #[test]
    fn a_line_with_a_control_character_inside_is_dropped_whole() {
        // Regression (fuzzing): a bare CR hid a second "line" from the rebuild.
        let sdp = "v=0\r\nx=1\ra=candidate:1 1 udp 1 abc.local 5 typ host\r\na=mid:0\u{0}\r\na=mid:1\r\n";
        let out = rebuild(sdp, &relays(), &mut PrivacyTally::default()).unwrap();
        assert_eq!(out, "v=0\r\na=mid:1\r\n");
    }

    #[test]
    fn fingerprints_of_the_wrong_shape_are_dropped() {
        for bad in
            ["a=fingerprint:sha-256 2001:db8::1", "a=fingerprint:sha-256 ABC:DE", "a=fingerprint:sha-256"]
        {
            let out = rebuild(&format!("{bad}\r\n"), &relays(), &mut PrivacyTally::default()).unwrap();
            assert_eq!(out, "", "{bad}");
        }
    }
}
