//! Does a piece of text contain an IP address literal? Answered conservatively.
//!
//! The sanitizer rebuilds the SDP lines it knows field by field; every other line is kept only
//! if it cannot contain an address. "Cannot" must hold for every textual form a WebRTC stack
//! writes, so this test is a deliberate superset of what `inet_pton` (and `std`) accept:
//! - IPv4: four or more groups of digits joined by single dots (`1.2.3.4`, also `999.1.1.1`);
//! - IPv6: any `::` between hex digits, colons and dots (every compressed form has one), or eight
//!   or more colon-separated groups of hex digits (every uncompressed form has eight; the form
//!   with an embedded IPv4 tail is caught by the IPv4 rule).
//!
//! It looks at runs of the characters an address is made of (`0-9 a-f A-F : .`), so an address
//! glued to other text (`x=10.0.0.1;`, `[fe80::1]`, `fe80::1%eth0`) is still found.
//! A false positive costs one dropped SDP line that no browser writes anyway; a false negative
//! would be a leak, which is why the property tests check this against `std`'s parser.

/// True if `text` may contain an IPv4 or IPv6 address literal.
pub fn contains_ip_literal(text: &str) -> bool {
    text.split(|c: char| !(c.is_ascii_hexdigit() || c == ':' || c == '.'))
        .any(|run| has_dotted_quad(run) || has_ipv6_shape(run))
}

/// Four consecutive non-empty digit groups separated by single dots.
fn has_dotted_quad(run: &str) -> bool {
    // Within a run, anything that is not a digit or a dot (hex letters, colons) ends a group.
    run.split(|c: char| !(c.is_ascii_digit() || c == '.')).any(|digits_and_dots| {
        let mut consecutive = 0;
        for group in digits_and_dots.split('.') {
            if group.is_empty() {
                consecutive = 0;
            } else {
                consecutive += 1;
                if consecutive >= 4 {
                    return true;
                }
            }
        }
        false
    })
}

/// A `::`, or eight or more consecutive non-empty colon-separated groups.
fn has_ipv6_shape(run: &str) -> bool {
    if run.contains("::") {
        return true;
    }
    let mut consecutive = 0;
    for group in run.split(':') {
        // A dot splits a group: what comes before the first dot may end a chain, what comes
        // after the last dot may start one (`.0:0:0:...`).
        let (head, tail) = match (group.find('.'), group.rfind('.')) {
            (Some(first), Some(last)) => (&group[..first], Some(&group[last + 1..])),
            _ => (group, None),
        };
        if head.is_empty() {
            consecutive = 0;
        } else {
            consecutive += 1;
            if consecutive >= 8 {
                return true;
            }
        }
        if let Some(tail) = tail {
            consecutive = usize::from(!tail.is_empty());
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    #[test]
    fn finds_addresses_in_every_usual_form() {
        for text in [
            "192.168.1.5",
            "c=IN IP4 10.0.0.1/127",
            "x=10.0.0.1;",
            "::",
            "::1",
            "[fe80::1]",
            "fe80::1%eth0",
            "2001:db8:0:0:0:0:0:1",
            "2001:0db8:0000:0000:0000:0000:0000:0001",
            "::ffff:192.0.2.1",
            "0:0:0:0:0:ffff:192.0.2.1",
            "64:ff9b::192.0.2.33",
            "abc1:2:3:4:5:6:7:8",
            "999.999.999.999",
        ] {
            assert!(contains_ip_literal(text), "{text:?}");
        }
    }

    #[test]
    fn leaves_ordinary_sdp_lines_alone() {
        for text in [
            "v=0",
            "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
            "a=rtpmap:111 opus/48000/2",
            "a=fmtp:111 minptime=10;useinbandfec=1",
            "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
            "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
            "a=ice-ufrag:Yx3f",
            "a=ice-pwd:aB3+/cD4eF5gH6iJ7kL8mN9o",
            "a=msid:9f2b7c1e-5d4a-4e3b-8c2d-1a0b9c8d7e6f 1d2c3b4a-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
            "a=ssrc:1001 cname:Z4fQ1x0Yb2c3D4e5",
            "a=ssrc-group:FID 1001 1002",
            "a=group:BUNDLE 0 1",
            "a=msid-semantic: WMS",
            "a=sctp-port:5000",
            "o=mozilla...THIS_IS_SDPARTA-99.0 1 0 IN IP4",
            "1.2.3",
            "a:b:c:d:e:f:1",
        ] {
            assert!(!contains_ip_literal(text), "{text:?}");
        }
    }

    fn any_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
            any::<[u16; 8]>().prop_map(|s| IpAddr::V6(Ipv6Addr::from(s))),
            // Shapes that compress differently: mostly zeros, mapped, NAT64.
            (any::<u16>(), any::<u16>(), 0usize..8).prop_map(|(a, b, at)| {
                let mut s = [0u16; 8];
                s[at] = a;
                s[(at + 3) % 8] = b;
                IpAddr::V6(Ipv6Addr::from(s))
            }),
            any::<[u8; 4]>().prop_map(|o| IpAddr::V6(Ipv4Addr::from(o).to_ipv6_mapped())),
        ]
    }

    /// Every textual form of an address that a stack could write: std's canonical form, the
    /// fully expanded IPv6 form (with and without leading zeros), and an IPv4-tail form.
    fn spellings(ip: IpAddr) -> Vec<String> {
        let mut forms = vec![ip.to_string()];
        if let IpAddr::V6(v6) = ip {
            let s = v6.segments();
            forms.push(s.iter().map(|g| format!("{g:x}")).collect::<Vec<_>>().join(":"));
            forms.push(s.iter().map(|g| format!("{g:04X}")).collect::<Vec<_>>().join(":"));
            let o = v6.octets();
            forms.push(format!(
                "{}:{}.{}.{}.{}",
                s[..6].iter().map(|g| format!("{g:x}")).collect::<Vec<_>>().join(":"),
                o[12],
                o[13],
                o[14],
                o[15]
            ));
        }
        forms
    }

    proptest! {
        #[test]
        fn every_spelling_is_found_wherever_it_is_embedded(
            ip in any_ip(),
            prefix in "[ -~]{0,12}",
            suffix in "[ -~]{0,12}",
        ) {
            for form in spellings(ip) {
                prop_assert!(form.parse::<IpAddr>().is_ok(), "not an address: {}", form);
                let text = format!("{prefix}{form}{suffix}");
                prop_assert!(contains_ip_literal(&text), "missed {} in {:?}", form, text);
            }
        }

        /// The oracle: any window of the text that std parses as an address must be flagged.
        #[test]
        fn anything_std_parses_is_flagged(text in "[0-9a-fA-F:. x%]{0,48}") {
            let parses_somewhere = (0..text.len()).any(|start| {
                (start + 2..=text.len().min(start + 45)).any(|end| text[start..end].parse::<IpAddr>().is_ok())
            });
            if parses_somewhere {
                prop_assert!(contains_ip_literal(&text), "missed an address in {:?}", text);
            }
        }
    }
}
