//! One ICE candidate line, parsed (RFC 8839 grammar) and rebuilt as a relay candidate.
//!
//! ```text
//! candidate:<foundation> <component> <transport> <priority> <address> <port> typ <type>
//!           [raddr <address>] [rport <port>] *(<extension-name> <extension-value>)
//! ```
//!
//! The output is written from the parsed fields, never copied from the input: the connection
//! address must be one of our relays, the related address is always the placeholder
//! (`raddr 0.0.0.0 rport 0`, `:: 0` for IPv6; for a relay candidate the browser's related
//! address is its own server-reflexive or host address, which is exactly what must stay
//! hidden), and only the extension attributes a browser needs are kept, with validated values.

use std::net::IpAddr;

use crate::protocol::is_ice_chars;

use super::ip_literal::contains_ip_literal;
use super::tally::{DropReason, PrivacyTally, SanitizedField};
use super::RelayAddresses;

/// The extension attributes that survive, with what their values may be. `ufrag` lets the
/// receiver match a candidate to an ICE generation, `generation`/`network-id`/`network-cost` are
/// what Chromium and Firefox write, `tcptype` is required for TCP candidates (RFC 6544).
fn allowed_extension_value(name: &str, value: &str) -> bool {
    match name {
        "generation" | "network-id" | "network-cost" => is_number(value, 10),
        "ufrag" => is_ice_chars(value, 256),
        "tcptype" => matches!(value, "active" | "passive" | "so"),
        _ => false,
    }
}

/// `1*max DIGIT`.
fn is_number(text: &str, max: usize) -> bool {
    !text.is_empty() && text.len() <= max && text.bytes().all(|b| b.is_ascii_digit())
}

/// Rebuilds `line` (`candidate:...` or `a=candidate:...`, the prefix is kept) as a relay
/// candidate through one of `relays`, or says why it must be dropped. The caller counts the
/// drop; rewritten fields are counted here.
pub fn rebuild(line: &str, relays: &RelayAddresses, tally: &mut PrivacyTally) -> Result<String, DropReason> {
    let (prefix, attribute) = if let Some(rest) = line.strip_prefix("a=candidate:") {
        ("a=candidate:", rest)
    } else if let Some(rest) = line.strip_prefix("candidate:") {
        ("candidate:", rest)
    } else {
        return Err(DropReason::Unparseable);
    };
    let fields: Vec<&str> = attribute.split(' ').collect();
    if fields.len() < 8 || !fields[6].eq_ignore_ascii_case("typ") {
        return Err(DropReason::Unparseable);
    }
    let [foundation, component, transport, priority, address, port, _, kind] =
        [fields[0], fields[1], fields[2], fields[3], fields[4], fields[5], fields[6], fields[7]];
    let transport = match transport.to_ascii_lowercase().as_str() {
        "udp" => "udp",
        "tcp" => "tcp",
        _ => return Err(DropReason::Unparseable),
    };
    let component =
        component.parse::<u16>().ok().filter(|c| is_number(component, 3) && (1..=256).contains(c));
    let priority = priority.parse::<u32>().ok().filter(|_| is_number(priority, 10));
    let port = port.parse::<u16>().ok().filter(|p| is_number(port, 5) && *p != 0);
    let (Some(component), Some(priority), Some(port)) = (component, priority, port) else {
        return Err(DropReason::Unparseable);
    };
    if !is_ice_chars(foundation, 32) {
        return Err(DropReason::Unparseable);
    }
    let extensions = &fields[8..];
    if extensions.len() % 2 != 0 || extensions.iter().any(|f| f.is_empty()) {
        return Err(DropReason::Unparseable);
    }
    if !kind.eq_ignore_ascii_case("relay") {
        return Err(DropReason::NotRelay);
    }
    let address: IpAddr = match address.parse() {
        Ok(ip) => ip,
        Err(_) if address.contains(':') || address.bytes().all(|b| b.is_ascii_digit() || b == b'.') => {
            return Err(DropReason::Unparseable)
        }
        Err(_) => return Err(DropReason::HostName),
    };
    if !relays.contains(address) {
        return Err(DropReason::NotOurRelay);
    }
    let placeholder = if address.is_ipv4() { "0.0.0.0" } else { "::" };

    let mut kept: Vec<(&str, &str)> = Vec::new();
    for pair in extensions.chunks_exact(2) {
        let (name, value) = (pair[0], pair[1]);
        // ABNF literals (raddr, rport) are case-insensitive; the extension names are not.
        let literal = name.to_ascii_lowercase();
        match literal.as_str() {
            // Whatever the related address was, the placeholder replaces it below.
            "raddr" if !matches!(value, "0.0.0.0" | "::") => tally.sanitize(SanitizedField::RelatedAddress),
            "raddr" | "rport" => {}
            _ if allowed_extension_value(name, value) && !kept.iter().any(|(kept, _)| *kept == name) => {
                kept.push((name, value));
            }
            _ if contains_ip_literal(name) || contains_ip_literal(value) => {
                return Err(DropReason::AddressInExtension);
            }
            _ => tally.sanitize(SanitizedField::CandidateExtension),
        }
    }

    let mut out = format!(
        "{prefix}{foundation} {component} {transport} {priority} {address} {port} typ relay raddr {placeholder} rport 0"
    );
    for (name, value) in kept {
        out.push(' ');
        out.push_str(name);
        out.push(' ');
        out.push_str(value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relays() -> RelayAddresses {
        RelayAddresses::new(["203.0.113.10".parse().unwrap(), "2001:db8::10".parse().unwrap()])
    }

    fn rebuilt(line: &str) -> Result<String, DropReason> {
        rebuild(line, &relays(), &mut PrivacyTally::default())
    }

    #[test]
    fn a_relay_candidate_is_rewritten_from_its_fields_with_the_related_address_zeroed() {
        let mut tally = PrivacyTally::default();
        let line = "candidate:1467250027 1 udp 41885439 203.0.113.10 50000 typ relay raddr 192.168.1.5 rport 54321 generation 0 ufrag Yx3f network-id 1 network-cost 10";
        assert_eq!(
            rebuild(line, &relays(), &mut tally).unwrap(),
            "candidate:1467250027 1 udp 41885439 203.0.113.10 50000 typ relay raddr 0.0.0.0 rport 0 generation 0 ufrag Yx3f network-id 1 network-cost 10"
        );
        assert_eq!(tally.sanitized(SanitizedField::RelatedAddress), 1);
    }

    #[test]
    fn ipv6_relays_get_the_ipv6_placeholder_and_the_sdp_prefix_is_kept() {
        assert_eq!(
            rebuilt("a=candidate:2 1 UDP 41885439 2001:db8::10 50000 typ relay raddr 2001:db8::5 rport 1")
                .unwrap(),
            "a=candidate:2 1 udp 41885439 2001:db8::10 50000 typ relay raddr :: rport 0"
        );
    }

    #[test]
    fn abnf_literals_are_case_insensitive_and_written_in_lower_case() {
        assert_eq!(
            rebuilt("candidate:4 1 UDP 1 203.0.113.10 5 TYP RELAY RADDR 10.0.0.1 RPORT 9").unwrap(),
            "candidate:4 1 udp 1 203.0.113.10 5 typ relay raddr 0.0.0.0 rport 0"
        );
    }

    #[test]
    fn tcp_relay_keeps_its_tcptype() {
        assert_eq!(
            rebuilt("candidate:3 1 tcp 25108223 203.0.113.10 50002 typ relay raddr 0.0.0.0 rport 0 tcptype passive")
                .unwrap(),
            "candidate:3 1 tcp 25108223 203.0.113.10 50002 typ relay raddr 0.0.0.0 rport 0 tcptype passive"
        );
    }

    #[test]
    fn every_non_relay_or_foreign_candidate_is_dropped_with_its_reason() {
        use DropReason::*;
        let cases = [
            ("candidate:1 1 udp 2122260223 192.168.1.5 54321 typ host generation 0", NotRelay),
            (
                "candidate:2 1 udp 1686052607 198.51.100.7 40000 typ srflx raddr 192.168.1.5 rport 54321",
                NotRelay,
            ),
            ("candidate:3 1 udp 1845501695 198.51.100.2 40001 typ prflx", NotRelay),
            ("candidate:4 1 udp 2122260223 3f5c1e0a-6b7e-4d3e.local 54321 typ host", NotRelay),
            ("candidate:5 1 udp 41885439 3f5c1e0a-6b7e-4d3e.local 50000 typ relay", HostName),
            ("candidate:6 1 udp 41885439 relay.example.org 50000 typ relay", HostName),
            // A host address presented as a relay: the disguise the relay set exists for.
            ("candidate:7 1 udp 41885439 192.168.1.5 50000 typ relay", NotOurRelay),
            (
                "candidate:8 1 udp 41885439 203.0.113.10 50000 typ relay x-addr 192.168.1.5",
                AddressInExtension,
            ),
            ("candidate:9 1 udp 41885439 203.0.113.10 50000 typ relay ufrag 10.0.0.1", AddressInExtension),
            ("candidate:10 1 udp 41885439 203.0.113.10 50000 typ relay generation", Unparseable),
            ("candidate:11 1 sctp 41885439 203.0.113.10 50000 typ relay", Unparseable),
            ("candidate:12 1 udp 41885439 203.0.113.10 0 typ relay", Unparseable),
            ("candidate:13 1 udp 99999999999 203.0.113.10 5 typ relay", Unparseable),
            ("candidate:14 0 udp 1 203.0.113.10 5 typ relay", Unparseable),
            ("candidate:bad! 1 udp 1 203.0.113.10 5 typ relay", Unparseable),
            ("candidate:15 1 udp 1 203.0.113.10 5  typ relay", Unparseable),
            ("candidate:16 1 udp 1 999.1.1.1 5 typ relay", Unparseable),
            ("candidate:1 1 udp 1 203.0.113.10 5 type relay", Unparseable),
            ("candidate:17 1 udp 1 192.168.1.5 5 TYP HOST", NotRelay),
            ("garbage", Unparseable),
            ("candidate:1 1 udp 1 203.0.113.10 5 typ", Unparseable),
        ];
        for (line, reason) in cases {
            assert_eq!(rebuilt(line), Err(reason), "{line}");
        }
    }

    #[test]
    fn unknown_or_invalid_extensions_without_addresses_are_dropped_and_counted() {
        let mut tally = PrivacyTally::default();
        let out = rebuild(
            "candidate:1 1 udp 41885439 203.0.113.10 50000 typ relay generation x network-cost 10 foo bar network-cost 999",
            &relays(),
            &mut tally,
        )
        .unwrap();
        assert_eq!(
            out,
            "candidate:1 1 udp 41885439 203.0.113.10 50000 typ relay raddr 0.0.0.0 rport 0 network-cost 10"
        );
        assert_eq!(tally.sanitized(SanitizedField::CandidateExtension), 3);
    }

    #[test]
    fn rebuilding_is_idempotent() {
        let once = rebuilt(
            "candidate:1 1 udp 41885439 203.0.113.10 50000 typ relay raddr 10.1.1.1 rport 9 ufrag ab+/",
        )
        .unwrap();
        assert_eq!(rebuilt(&once).unwrap(), once);
    }
}
