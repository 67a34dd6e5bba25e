//! Relay-only enforcement: which ICE candidates may be relayed to a peer when `force_relay` is on.
//!
//! A candidate reveals an address. Only `typ relay` candidates carry our relay's address instead
//! of the sender's, so with `force_relay` everything else is dropped: host, srflx and prflx
//! candidates, mDNS (`.local`) names (they resolve to the sender's LAN address), and anything we
//! cannot parse (fail closed). The end-of-candidates marker (an empty candidate) carries no
//! address and passes. SDP is filtered line by line, keeping every other byte as it was.

use std::borrow::Cow;
use std::net::IpAddr;

/// What a candidate line is, as far as address privacy goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CandidateKind {
    /// Empty candidate: end of candidates.
    EndOfCandidates,
    /// `typ relay` with a literal IP address: our relay's address, safe to share.
    Relay,
    /// Anything that may reveal the sender's address.
    NonRelay,
    /// Not a candidate we can parse: treated as non-relay.
    Malformed,
}

/// Classifies a candidate string, with or without the `candidate:` / `a=candidate:` prefix.
pub fn classify(candidate: &str) -> CandidateKind {
    let line = candidate.trim();
    if line.is_empty() {
        return CandidateKind::EndOfCandidates;
    }
    let line = line.strip_prefix("a=").unwrap_or(line);
    let Some(attribute) = line.strip_prefix("candidate:") else {
        return CandidateKind::Malformed;
    };
    // foundation component transport priority address port "typ" type [extensions...]
    let fields: Vec<&str> = attribute.split_ascii_whitespace().collect();
    if fields.len() < 8 || !fields[6].eq_ignore_ascii_case("typ") {
        return CandidateKind::Malformed;
    }
    let address = fields[4];
    if fields[5].parse::<u16>().is_err() {
        return CandidateKind::Malformed;
    }
    // A relay candidate names our relay by IP. A host name (e.g. an mDNS `.local` name) would
    // be resolved by the peer and may point at the sender itself.
    if fields[7].eq_ignore_ascii_case("relay") && address.parse::<IpAddr>().is_ok() {
        CandidateKind::Relay
    } else if address.parse::<IpAddr>().is_ok() || address.contains('.') || address.contains(':') {
        CandidateKind::NonRelay
    } else {
        CandidateKind::Malformed
    }
}

/// May this candidate be relayed to a peer under `force_relay`?
pub fn may_relay(candidate: &str) -> bool {
    matches!(classify(candidate), CandidateKind::Relay | CandidateKind::EndOfCandidates)
}

/// Removes every `a=candidate:` line that is not a relay candidate. Everything else, including
/// line endings (CRLF or LF), stays byte for byte. Borrowed when nothing had to go.
pub fn strip_non_relay_candidates(sdp: &str) -> Cow<'_, str> {
    let is_dropped = |line: &str| {
        let content = line.trim_end_matches(['\r', '\n']);
        content.starts_with("a=candidate:") && classify(content) != CandidateKind::Relay
    };
    if !sdp.split_inclusive('\n').any(is_dropped) {
        return Cow::Borrowed(sdp);
    }
    Cow::Owned(sdp.split_inclusive('\n').filter(|line| !is_dropped(line)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn classifies_every_form() {
        let cases = [
            ("candidate:1 1 udp 2122260223 192.168.1.5 54321 typ host generation 0", CandidateKind::NonRelay),
            (
                "candidate:2 1 udp 1686052607 203.0.113.7 40000 typ srflx raddr 192.168.1.5 rport 54321",
                CandidateKind::NonRelay,
            ),
            (
                "candidate:3 1 udp 1845501695 198.51.100.2 40001 typ prflx raddr 0.0.0.0 rport 0",
                CandidateKind::NonRelay,
            ),
            (
                "candidate:4 1 udp 41885439 127.0.0.1 50000 typ relay raddr 203.0.113.7 rport 40000",
                CandidateKind::Relay,
            ),
            ("candidate:5 1 udp 41885439 2001:db8::1 50000 typ relay raddr :: rport 0", CandidateKind::Relay),
            ("candidate:6 1 udp 2122262783 2001:db8::5 54322 typ host", CandidateKind::NonRelay),
            (
                "candidate:7 1 udp 2122260223 3f5c1e0a-6b7e-4d3e-9a1b-1c2d3e4f5a6b.local 54321 typ host",
                CandidateKind::NonRelay,
            ),
            ("candidate:8 1 udp 41885439 3f5c1e0a.local 50000 typ relay", CandidateKind::NonRelay),
            ("candidate:9 1 tcp 1518280447 192.168.1.5 9 typ host tcptype active", CandidateKind::NonRelay),
            ("candidate:10 1 tcp 25108223 127.0.0.1 50002 typ relay tcptype passive", CandidateKind::Relay),
            ("a=candidate:11 1 udp 41885439 10.0.0.1 50000 typ relay", CandidateKind::Relay),
            ("", CandidateKind::EndOfCandidates),
            ("   ", CandidateKind::EndOfCandidates),
            ("garbage", CandidateKind::Malformed),
            ("candidate:1 1 udp 1 1.2.3.4 5 typ", CandidateKind::Malformed),
            ("candidate:1 1 udp 1 1.2.3.4 notaport typ relay", CandidateKind::Malformed),
            ("candidate:1 1 udp 1 1.2.3.4 5 type relay", CandidateKind::Malformed),
        ];
        for (candidate, expected) in cases {
            assert_eq!(classify(candidate), expected, "{candidate:?}");
        }
        assert!(may_relay(""));
        assert!(!may_relay("garbage"));
    }

    #[test]
    fn strips_only_non_relay_lines_and_keeps_crlf() {
        let sdp = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
                   a=candidate:1 1 udp 2122260223 192.168.1.5 54321 typ host\r\n\
                   a=candidate:4 1 udp 41885439 127.0.0.1 50000 typ relay raddr 0.0.0.0 rport 0\r\n\
                   a=candidate:7 1 udp 2122260223 abc.local 54321 typ host\r\n\
                   a=end-of-candidates\r\n";
        let filtered = strip_non_relay_candidates(sdp);
        assert_eq!(
            filtered,
            "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
             a=candidate:4 1 udp 41885439 127.0.0.1 50000 typ relay raddr 0.0.0.0 rport 0\r\n\
             a=end-of-candidates\r\n"
        );
        let clean = "v=0\r\na=candidate:4 1 udp 1 127.0.0.1 50000 typ relay\r\n";
        assert!(matches!(strip_non_relay_candidates(clean), Cow::Borrowed(_)));
        let lf_only = "v=0\na=candidate:1 1 udp 1 10.1.1.1 5 typ host\na=x\n";
        assert_eq!(strip_non_relay_candidates(lf_only), "v=0\na=x\n");
    }

    fn candidate_line() -> impl Strategy<Value = String> {
        let typ = prop_oneof![Just("host"), Just("srflx"), Just("prflx"), Just("relay"), Just("bogus")];
        let addr = prop_oneof![
            Just("10.0.0.1".to_string()),
            Just("2001:db8::1".to_string()),
            Just("x.local".to_string()),
            "[a-z0-9:.]{0,12}",
        ];
        let line = (addr, typ, any::<u16>())
            .prop_map(|(addr, typ, port)| format!("a=candidate:1 1 udp 2122260223 {addr} {port} typ {typ}"));
        prop_oneof![line, "[ -~]{0,40}", Just("a=end-of-candidates".to_string())]
    }

    proptest! {
        #[test]
        fn filtering_never_emits_a_non_relay_candidate_and_is_idempotent(
            lines in proptest::collection::vec(candidate_line(), 0..12),
            crlf in any::<bool>(),
        ) {
            let eol = if crlf { "\r\n" } else { "\n" };
            let sdp: String = lines.iter().map(|l| format!("{l}{eol}")).collect();
            let once = strip_non_relay_candidates(&sdp).into_owned();
            for line in once.split_inclusive('\n') {
                let content = line.trim_end_matches(['\r', '\n']);
                if content.starts_with("a=candidate:") {
                    prop_assert_eq!(classify(content), CandidateKind::Relay);
                }
            }
            let twice = strip_non_relay_candidates(&once).into_owned();
            prop_assert_eq!(&once, &twice);
        }
    }
}
