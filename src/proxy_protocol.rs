//! The PROXY protocol (haproxy's proxy-protocol.txt, binary v2 and text v1) in front of our TCP
//! listeners, so that behind a TCP load balancer the client's address is the real one for every
//! limit, admission cap, log line and per-IP rule.
//!
//! Only peers in the listener's trusted list (`proxy_protocol_from`) speak it, and from them the
//! header is required: read before TLS or HTTP, within [`HEADER_DEADLINE`] and at most
//! [`MAX_HEADER_BYTES`], exactly up to its last byte (what follows belongs to TLS or HTTP).
//! Anyone else is served as without the option: their bytes are never parsed as a header, so
//! a header sent by an untrusted peer is just a bad TLS or HTTP start. A `LOCAL` header (the
//! balancer's own health check) or an address family we cannot use (UNSPEC, UNIX) keeps the
//! balancer's own address, as the specification says.
//!
//! Parsing is the `ppp` crate's; this module decides how many bytes to read ([`progress`]),
//! reads them and turns the header into the client's address ([`client_address`]); both are
//! sans-IO and fuzzed together (`fuzz/fuzz_targets/proxy_header.rs`).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncReadExt};

/// How long a trusted balancer may take to send its header (it sends it at connect time).
pub const HEADER_DEADLINE: Duration = Duration::from_secs(5);
/// The longest header accepted: the 16-byte v2 preamble plus addresses and TLVs (balancers send
/// a few dozen bytes of TLVs; the format allows 64 KiB, which nobody needs to buffer).
pub const MAX_HEADER_BYTES: usize = 16 + 1024;
/// v2 headers start with these 12 bytes.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// v1 headers start with "PROXY " and are at most 107 bytes, CRLF included.
const V1_PREFIX: &[u8] = b"PROXY ";
const V1_MAX_BYTES: usize = 107;

/// Why a trusted peer's connection was closed before TLS or HTTP.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("no PROXY protocol header within {0:?}")]
    Timeout(Duration),
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
    #[error("the connection does not start with a PROXY protocol header")]
    Missing,
    #[error("the PROXY protocol header is longer than {MAX_HEADER_BYTES} bytes")]
    TooLong,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(String),
}

/// One listener's PROXY protocol setting: which peers must send a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyProtocol {
    trusted: Vec<IpNet>,
}

impl ProxyProtocol {
    /// `None` when `trusted` is empty: the listener does not speak the protocol at all.
    pub fn from_trusted(trusted: Vec<IpNet>) -> Option<Self> {
        (!trusted.is_empty()).then_some(Self { trusted })
    }

    /// True when `peer` is one of the balancers: its connections must start with a header.
    pub fn expects_header_from(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.trusted.iter().any(|net| net.contains(&peer))
    }

    /// Reads the header `peer` (a trusted balancer) sent on `stream` and returns the client's
    /// address; `stream` is left at the first byte after the header.
    pub async fn read_client<S: AsyncRead + Unpin>(
        &self,
        stream: &mut S,
        peer: SocketAddr,
    ) -> Result<SocketAddr, HeaderError> {
        self.read_client_within(stream, peer, HEADER_DEADLINE).await
    }

    async fn read_client_within<S: AsyncRead + Unpin>(
        &self,
        stream: &mut S,
        peer: SocketAddr,
        deadline: Duration,
    ) -> Result<SocketAddr, HeaderError> {
        match tokio::time::timeout(deadline, read_header(stream)).await {
            Ok(header) => client_address(&header?, peer),
            Err(_) => Err(HeaderError::Timeout(deadline)),
        }
    }
}

/// Reads exactly one header, v2 or v1, and not a byte more.
async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Vec<u8>, HeaderError> {
    let mut header = Vec::with_capacity(V1_MAX_BYTES);
    loop {
        match progress(&header)? {
            Progress::Complete => return Ok(header),
            Progress::Need(more) => {
                let start = header.len();
                header.resize(start + more, 0);
                stream.read_exact(&mut header[start..]).await?;
            }
        }
    }
}

/// Where reading a header stands, given the bytes read so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Read exactly this many more bytes (never more than the header has left).
    Need(usize),
    /// `header` is one whole header.
    Complete,
}

/// Sans-IO: how many bytes may be read next without reading past the header, or an error as
/// soon as the bytes cannot start a valid one.
pub fn progress(header: &[u8]) -> Result<Progress, HeaderError> {
    // 12 bytes tell the versions apart and never overrun: the shortest v1 line has 15.
    if header.len() < V2_SIGNATURE.len() {
        return Ok(Progress::Need(V2_SIGNATURE.len() - header.len()));
    }
    if header.starts_with(&V2_SIGNATURE) {
        // Then version/command, family/protocol, and the length of the rest (big endian).
        let Some(length) = header.get(14..16) else {
            return Ok(Progress::Need(16 - header.len()));
        };
        let total = 16 + usize::from(u16::from_be_bytes([length[0], length[1]]));
        return if total > MAX_HEADER_BYTES {
            Err(HeaderError::TooLong)
        } else if header.len() < total {
            Ok(Progress::Need(total - header.len()))
        } else {
            Ok(Progress::Complete)
        };
    }
    if !header.starts_with(V1_PREFIX) {
        return Err(HeaderError::Missing);
    }
    // A v1 line ends at CRLF: byte by byte (at most 95 more), so nothing after it is taken.
    if header.ends_with(b"\r\n") {
        Ok(Progress::Complete)
    } else if header.len() >= V1_MAX_BYTES {
        Err(HeaderError::TooLong)
    } else {
        Ok(Progress::Need(1))
    }
}

/// The client's address from a complete header (`peer`: the balancer, kept for LOCAL and for
/// families without an IP address).
pub fn client_address(header: &[u8], peer: SocketAddr) -> Result<SocketAddr, HeaderError> {
    let source = if header.starts_with(&V2_SIGNATURE) {
        let parsed = ppp::v2::Header::try_from(header).map_err(|e| HeaderError::Malformed(e.to_string()))?;
        match (parsed.command, parsed.addresses) {
            (ppp::v2::Command::Local, _) => None,
            (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv4(a)) => {
                Some(SocketAddr::new(a.source_address.into(), a.source_port))
            }
            (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv6(a)) => {
                Some(SocketAddr::new(a.source_address.into(), a.source_port))
            }
            (ppp::v2::Command::Proxy, ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_)) => None,
        }
    } else {
        let parsed = ppp::v1::Header::try_from(header).map_err(|e| HeaderError::Malformed(e.to_string()))?;
        match parsed.addresses {
            ppp::v1::Addresses::Tcp4(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
            ppp::v1::Addresses::Tcp6(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
            ppp::v1::Addresses::Unknown => None,
        }
    };
    // IPv4-mapped IPv6 sources are IPv4 clients (a v6 balancer in front of a v4 client).
    Ok(source.map_or(peer, |s| SocketAddr::new(s.ip().to_canonical(), s.port())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "10.0.0.2:40000".parse().unwrap()
    }

    /// A v2 header built by hand, byte by byte as the specification lays it out.
    fn v2(command: u8, family: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&((addresses.len() + tlvs.len()) as u16).to_be_bytes());
        out.extend_from_slice(addresses);
        out.extend_from_slice(tlvs);
        out
    }

    fn v4_addresses() -> Vec<u8> {
        // 203.0.113.7:51000 -> 192.0.2.1:443
        [[203, 0, 113, 7], [192, 0, 2, 1]].concat().into_iter().chain([0xc7, 0x38, 0x01, 0xbb]).collect()
    }

    async fn read(bytes: &[u8]) -> (Result<SocketAddr, HeaderError>, Vec<u8>) {
        let mut stream = bytes;
        let proxy = ProxyProtocol::from_trusted(vec!["10.0.0.0/8".parse().unwrap()]).unwrap();
        let result = proxy.read_client(&mut stream, peer()).await;
        (result, stream.to_vec())
    }

    #[tokio::test]
    async fn a_v2_proxy_header_names_the_client_and_nothing_after_it_is_read() {
        let mut bytes = v2(1, 0x11, &v4_addresses(), &[0x04, 0x00, 0x02, 0xaa, 0xbb]); // a NOOP TLV
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let (client, rest) = read(&bytes).await;
        assert_eq!(client.unwrap(), "203.0.113.7:51000".parse().unwrap());
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn a_v2_ipv6_source_is_used_and_a_mapped_one_is_ipv4() {
        let source: std::net::Ipv6Addr = "2001:db8::7".parse().unwrap();
        let destination: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
        let mut addresses = [source.octets(), destination.octets()].concat();
        addresses.extend_from_slice(&[0x00, 0x50, 0x0d, 0x96]);
        let (client, _) = read(&v2(1, 0x21, &addresses, &[])).await;
        assert_eq!(client.unwrap(), "[2001:db8::7]:80".parse().unwrap());

        let mapped: std::net::Ipv6Addr = "::ffff:198.51.100.9".parse().unwrap();
        addresses[..16].copy_from_slice(&mapped.octets());
        let (client, _) = read(&v2(1, 0x21, &addresses, &[])).await;
        assert_eq!(client.unwrap(), "198.51.100.9:80".parse().unwrap());
    }

    #[tokio::test]
    async fn local_and_unspecified_keep_the_balancers_address() {
        let (client, _) = read(&v2(0, 0x00, &[], &[])).await;
        assert_eq!(client.unwrap(), peer(), "LOCAL");
        let (client, _) = read(&v2(0, 0x11, &v4_addresses(), &[])).await;
        assert_eq!(client.unwrap(), peer(), "LOCAL with addresses");
        let (client, _) = read(&v2(1, 0x00, &[], &[])).await;
        assert_eq!(client.unwrap(), peer(), "PROXY UNSPEC");
    }

    #[tokio::test]
    async fn a_v1_line_is_read_up_to_its_crlf() {
        let (client, rest) = read(b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\r\n\x16\x03\x01").await;
        assert_eq!(client.unwrap(), "203.0.113.7:51000".parse().unwrap());
        assert_eq!(rest, b"\x16\x03\x01");
        let (client, _) = read(b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n").await;
        assert_eq!(client.unwrap(), "[2001:db8::7]:51000".parse().unwrap());
        let (client, _) = read(b"PROXY UNKNOWN\r\n").await;
        assert_eq!(client.unwrap(), peer());
    }

    #[tokio::test]
    async fn anything_else_from_a_balancer_is_refused() {
        assert!(matches!(read(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.0, Err(HeaderError::Missing)));
        assert!(matches!(
            read(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x00").await.0,
            Err(HeaderError::Missing)
        ));
        // Cut short: the stream ends inside the header.
        assert!(matches!(read(&v2(1, 0x11, &v4_addresses(), &[])[..20]).await.0, Err(HeaderError::Io(_))));
        // Length beyond the bound: refused before reading the body.
        let mut long = v2(1, 0x11, &v4_addresses(), &[]);
        long[14..16].copy_from_slice(&2000u16.to_be_bytes());
        assert!(matches!(read(&long).await.0, Err(HeaderError::TooLong)));
        // Bad version nibble, bad family, addresses shorter than the family needs.
        let mut bad_version = v2(1, 0x11, &v4_addresses(), &[]);
        bad_version[12] = 0x31;
        assert!(matches!(read(&bad_version).await.0, Err(HeaderError::Malformed(_))));
        assert!(matches!(read(&v2(1, 0x41, &v4_addresses(), &[])).await.0, Err(HeaderError::Malformed(_))));
        assert!(matches!(read(&v2(1, 0x21, &v4_addresses(), &[])).await.0, Err(HeaderError::Malformed(_))));
        // A v1 line without its CRLF within 107 bytes.
        let endless = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        assert!(matches!(read(&endless).await.0, Err(HeaderError::TooLong)));
        assert!(matches!(read(b"PROXY TCP4 nonsense here\r\n").await.0, Err(HeaderError::Malformed(_))));
    }

    #[tokio::test]
    async fn a_silent_balancer_times_out() {
        let (_keep_open, mut stream) = tokio::io::duplex(64);
        let proxy = ProxyProtocol::from_trusted(vec!["10.0.0.0/8".parse().unwrap()]).unwrap();
        let deadline = Duration::from_millis(50);
        let result = proxy.read_client_within(&mut stream, peer(), deadline).await;
        assert!(matches!(result, Err(HeaderError::Timeout(_))), "{result:?}");
    }

    #[test]
    fn only_listed_peers_are_expected_to_send_a_header() {
        assert!(ProxyProtocol::from_trusted(Vec::new()).is_none());
        let proxy = ProxyProtocol::from_trusted(vec!["10.0.0.0/8".parse().unwrap()]).unwrap();
        assert!(proxy.expects_header_from("10.1.2.3".parse().unwrap()));
        assert!(proxy.expects_header_from("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!proxy.expects_header_from("203.0.113.7".parse().unwrap()));
    }
}
