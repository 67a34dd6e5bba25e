//! Session descriptions and candidate lines as browsers send them, and what a peer must receive
//! of each under relay-only: the fixtures of the privacy boundary's black-box tests.

pub const PLAIN_SDP: &str =
    "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n";

/// A browser-like SDP with every kind of candidate line, a non-ASCII session name, odd spacing,
/// and CRLF line endings.
pub const LEAKY_SDP: &str = "v=0\r\n\
o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n\
s=Zürich ☎ call\r\n\
t=0 0\r\n\
a=group:BUNDLE 0\r\n\
a=msid-semantic: WMS stream\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
c=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\n\
a=candidate:1 1 udp 2122260223 192.168.1.5 54321 typ host generation 0 network-id 1\r\n\
a=candidate:2 1 udp 1686052607 203.0.113.7 40000 typ srflx raddr 192.168.1.5 rport 54321\r\n\
a=candidate:3 1 udp 2122262783 3f5c1e0a-6b7e-4d3e-9a1b-1c2d3e4f5a6b.local 54322 typ host\r\n\
a=candidate:4 1 udp 41885439 127.0.0.1 50000 typ relay raddr 203.0.113.7 rport 40000\r\n\
a=candidate:5 1 tcp 1518280447 192.168.1.5 9 typ host tcptype active\r\n\
a=candidate:6 1 udp 1845501695 198.51.100.2 40001 typ prflx raddr 0.0.0.0 rport 0\r\n\
a=candidate:7 1 udp 2122262783 2001:db8::5 54323 typ host\r\n\
a=candidate:8 1 udp 41885439 2001:db8::1 50001 typ relay raddr :: rport 0\r\n\
a=candidate:garbage\r\n\
a=end-of-candidates\r\n\
a=ice-ufrag:f00d\r\n\
a=ice-pwd:0123456789abcdefghijklmn\r\n\
a=fingerprint:sha-256 AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99\r\n\
a=setup:actpass\r\n\
a=mid:0\r\n\
a=x-odd  spacing\t here \r\n\
a=sendrecv\r\n\
a=rtpmap:111 opus/48000/2\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\n";

/// What a peer receives for `LEAKY_SDP` under force_relay: the origin's address replaced, only
/// the relay candidate through our relay (127.0.0.1 in these tests), its `raddr` zeroed; the
/// IPv6 "relay" is not ours and goes; every other line byte for byte.
pub const REBUILT_SDP: &str = "v=0\r\n\
o=- 4611731400430051336 2 IN IP4 0.0.0.0\r\n\
s=Zürich ☎ call\r\n\
t=0 0\r\n\
a=group:BUNDLE 0\r\n\
a=msid-semantic: WMS stream\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
c=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\n\
a=candidate:4 1 udp 41885439 127.0.0.1 50000 typ relay raddr 0.0.0.0 rport 0\r\n\
a=end-of-candidates\r\n\
a=ice-ufrag:f00d\r\n\
a=ice-pwd:0123456789abcdefghijklmn\r\n\
a=fingerprint:sha-256 AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99\r\n\
a=setup:actpass\r\n\
a=mid:0\r\n\
a=x-odd  spacing\t here \r\n\
a=sendrecv\r\n\
a=rtpmap:111 opus/48000/2\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\n";

/// Candidates that would reveal an address (or cannot be parsed): dropped under force_relay.
pub const NON_RELAY_CANDIDATES: &[&str] = &[
    "candidate:1 1 udp 2122260223 192.168.1.5 54321 typ host generation 0",
    "candidate:2 1 udp 1686052607 203.0.113.7 40000 typ srflx raddr 192.168.1.5 rport 54321",
    "candidate:3 1 udp 1845501695 198.51.100.2 40001 typ prflx raddr 0.0.0.0 rport 0",
    "candidate:4 1 udp 2122262783 2001:db8::5 54322 typ host",
    "candidate:5 1 udp 2122260223 3f5c1e0a-6b7e-4d3e-9a1b-1c2d3e4f5a6b.local 54321 typ host",
    "candidate:6 1 udp 41885439 3f5c1e0a.local 50000 typ relay",
    "candidate:7 1 tcp 1518280447 192.168.1.5 9 typ host tcptype active",
    // A host address dressed up as a relay: not one of the relays this server hands out.
    "candidate:8 1 udp 41885439 192.168.1.5 50000 typ relay",
    "candidate:9 1 udp 41885439 2001:db8::1 50001 typ relay raddr :: rport 0",
    // An address smuggled in an extension attribute.
    "candidate:10 1 udp 41885439 127.0.0.1 50000 typ relay x-local 192.168.1.5",
    "garbage",
    "candidate:11 1 udp 1 1.2.3.4 5 typ",
    "candidate:12 1 udp 1 1.2.3.4 notaport typ relay",
];

/// Relay candidates through our relay as a client sends them, and as the peer receives them:
/// rebuilt from their fields, `raddr`/`rport` zeroed, only allow-listed extensions.
pub const RELAY_CANDIDATES: &[(&str, &str)] = &[
    (
        "candidate:20 1 udp 41885439 127.0.0.1 50000 typ relay raddr 203.0.113.7 rport 40000 generation 0 ufrag f00d network-id 1 network-cost 10",
        "candidate:20 1 udp 41885439 127.0.0.1 50000 typ relay raddr 0.0.0.0 rport 0 generation 0 ufrag f00d network-id 1 network-cost 10",
    ),
    (
        "candidate:21 1 tcp 25108223 127.0.0.1 50002 typ relay tcptype passive x-unknown 7",
        "candidate:21 1 tcp 25108223 127.0.0.1 50002 typ relay raddr 0.0.0.0 rport 0 tcptype passive",
    ),
    ("candidate:22 1 UDP 41885439 127.0.0.1 50003 typ relay", "candidate:22 1 udp 41885439 127.0.0.1 50003 typ relay raddr 0.0.0.0 rport 0"),
    ("a=candidate:23 1 udp 41885439 127.0.0.1 50004 typ relay", "a=candidate:23 1 udp 41885439 127.0.0.1 50004 typ relay raddr 0.0.0.0 rport 0"),
    ("", ""),
];

/// An SDP of exactly `len` bytes.
pub fn sdp_of_len(len: usize) -> String {
    let head = "v=0\r\na=x-pad:";
    let mut sdp = head.to_string();
    sdp.push_str(&"p".repeat(len - head.len() - 2));
    sdp.push_str("\r\n");
    assert_eq!(sdp.len(), len);
    sdp
}
