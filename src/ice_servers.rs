//! `iceServers` for `webrtc-joined`: which TURN servers a client is handed, with fresh REST
//! credentials.
//!
//! The hub asks an [`IceServerIssuer`] (built once at start-up from the settings and the relay's
//! ports) when someone joins voice; it needs only the REST credential convention
//! (`turn::credentials`), never the relay itself, so the hub and the wire types do not depend
//! on the relay.

use std::net::{IpAddr, Ipv6Addr};

use serde::Serialize;

use crate::turn::credentials::{issue, RestCredential};

/// One entry of `RTCConfiguration.iceServers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    pub username: String,
    pub credential: String,
}

/// Where the TURN service is reachable, for building `iceServers` URLs.
#[derive(Debug, Clone)]
pub enum TurnEndpoints {
    /// Our integrated relay: ports of the UDP/TCP listener and, when TLS is on, of `turns:`;
    /// `ipv6` when it also listens on IPv6 (`[turn] listen6`).
    Integrated {
        secret: Vec<u8>,
        public_host: Option<String>,
        port: u16,
        tls_port: Option<u16>,
        ipv6: Option<Ipv6Listener>,
    },
    /// Operators who keep an existing coturn: fixed URLs, each with its own shared secret.
    External(Vec<(Vec<String>, Vec<u8>)>),
    /// No TURN at all (clients fall back to whatever their browser does).
    None,
}

/// The relay's IPv6 listener as clients reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6Listener {
    /// The public IPv6 address, when known (a specific `listen6` IP, or the machine's); without
    /// it only a host name or an IPv6 literal the client used can lead clients there.
    pub ip: Option<Ipv6Addr>,
    pub port: u16,
    pub tls_port: Option<u16>,
}

/// Builds `iceServers` for a user: fresh REST credentials, URLs naming the host the client used.
#[derive(Debug, Clone)]
pub struct IceServerIssuer {
    pub endpoints: TurnEndpoints,
    pub ttl_s: u64,
}

impl IceServerIssuer {
    /// `request_host` is the WebSocket request's Host header (any port is stripped).
    pub fn ice_servers(&self, request_host: &str, user: &str, now_unix: u64) -> Vec<IceServer> {
        let expires = now_unix + self.ttl_s;
        match &self.endpoints {
            TurnEndpoints::Integrated { secret, public_host, port, tls_port, ipv6 } => {
                let host = match public_host {
                    Some(host) => bracket_ipv6(host),
                    None => host_without_port(request_host),
                };
                let literal = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().ok();
                let mut urls = Vec::new();
                match (literal, ipv6) {
                    // An IPv6 literal reaches only the IPv6 listener (which may have its own ports).
                    (Some(IpAddr::V6(_)), Some(v6)) => push_urls(&mut urls, &host, v6.port, v6.tls_port),
                    // An IPv4 literal: the IPv4 listener, plus the IPv6 one by its address. (A
                    // host name covers both families through its A and AAAA records.)
                    (
                        Some(IpAddr::V4(_)),
                        Some(Ipv6Listener { ip: Some(ip), port: port6, tls_port: tls6 }),
                    ) => {
                        push_urls(&mut urls, &host, *port, *tls_port);
                        push_urls(&mut urls, &format!("[{ip}]"), *port6, *tls6);
                    }
                    _ => push_urls(&mut urls, &host, *port, *tls_port),
                }
                let RestCredential { username, credential } = issue(secret, user, expires);
                vec![IceServer { urls, username, credential }]
            }
            TurnEndpoints::External(servers) => servers
                .iter()
                .map(|(urls, secret)| {
                    let RestCredential { username, credential } = issue(secret, user, expires);
                    IceServer { urls: urls.clone(), username, credential }
                })
                .collect(),
            TurnEndpoints::None => Vec::new(),
        }
    }
}

/// `turn:` over UDP and TCP on `port`, and `turns:` when TLS is on.
fn push_urls(urls: &mut Vec<String>, host: &str, port: u16, tls_port: Option<u16>) {
    urls.push(format!("turn:{host}:{port}?transport=udp"));
    urls.push(format!("turn:{host}:{port}?transport=tcp"));
    if let Some(tls_port) = tls_port {
        urls.push(format!("turns:{host}:{tls_port}?transport=tcp"));
    }
}

/// "example.org:3000" -> "example.org", "[::1]:3000" -> "[::1]", "::1" -> "[::1]".
pub fn host_without_port(host_header: &str) -> String {
    let host = host_header.trim();
    if let Some(rest) = host.strip_prefix('[') {
        if let Some(end) = rest.find(']') {
            return format!("[{}]", &rest[..end]);
        }
    }
    if host.matches(':').count() > 1 {
        // A bare IPv6 address (no port can be told apart without brackets).
        return format!("[{host}]");
    }
    let name = host.split(':').next().unwrap_or(host);
    if name.is_empty() {
        "localhost".to_string()
    } else {
        name.to_string()
    }
}

fn bracket_ipv6(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::turn::credentials::credential_for;

    #[test]
    fn hosts_are_stripped_and_bracketed() {
        assert_eq!(host_without_port("chat.example.org:3000"), "chat.example.org");
        assert_eq!(host_without_port("chat.example.org"), "chat.example.org");
        assert_eq!(host_without_port("[::1]:3000"), "[::1]");
        assert_eq!(host_without_port("::1"), "[::1]");
        assert_eq!(host_without_port("127.0.0.1:80"), "127.0.0.1");
    }

    #[test]
    fn integrated_ice_servers_list_udp_tcp_and_tls() {
        let issuer = IceServerIssuer {
            endpoints: TurnEndpoints::Integrated {
                secret: b"s".to_vec(),
                public_host: None,
                port: 3478,
                tls_port: Some(5349),
                ipv6: None,
            },
            ttl_s: 600,
        };
        let servers = issuer.ice_servers("chat.example.org:3000", "alice", 1000);
        assert_eq!(
            servers[0].urls,
            vec![
                "turn:chat.example.org:3478?transport=udp",
                "turn:chat.example.org:3478?transport=tcp",
                "turns:chat.example.org:5349?transport=tcp"
            ]
        );
        assert_eq!(servers[0].username, "1600:alice");
        assert_eq!(servers[0].credential, credential_for(b"s", "1600:alice"));
    }

    fn dual_stack(public_host: Option<&str>, ip: Option<&str>) -> IceServerIssuer {
        IceServerIssuer {
            endpoints: TurnEndpoints::Integrated {
                secret: b"s".to_vec(),
                public_host: public_host.map(String::from),
                port: 3478,
                tls_port: Some(5349),
                ipv6: Some(Ipv6Listener {
                    ip: ip.map(|ip| ip.parse().unwrap()),
                    port: 3479,
                    tls_port: Some(5350),
                }),
            },
            ttl_s: 600,
        }
    }

    #[test]
    fn an_ipv4_literal_host_gains_the_ipv6_listeners_urls() {
        let servers = dual_stack(Some("203.0.113.5"), Some("2001:db8::5")).ice_servers("x", "alice", 1000);
        assert_eq!(
            servers[0].urls,
            vec![
                "turn:203.0.113.5:3478?transport=udp",
                "turn:203.0.113.5:3478?transport=tcp",
                "turns:203.0.113.5:5349?transport=tcp",
                "turn:[2001:db8::5]:3479?transport=udp",
                "turn:[2001:db8::5]:3479?transport=tcp",
                "turns:[2001:db8::5]:5350?transport=tcp",
            ]
        );
        // Without a known IPv6 address there is nothing to add.
        let servers = dual_stack(None, None).ice_servers("203.0.113.5:3000", "alice", 1000);
        assert_eq!(servers[0].urls.len(), 3);
    }

    #[test]
    fn a_host_name_covers_both_families_and_an_ipv6_literal_uses_the_ipv6_ports() {
        let servers = dual_stack(Some("turn.example.org"), Some("2001:db8::5")).ice_servers("x", "bob", 1000);
        assert_eq!(
            servers[0].urls,
            vec![
                "turn:turn.example.org:3478?transport=udp",
                "turn:turn.example.org:3478?transport=tcp",
                "turns:turn.example.org:5349?transport=tcp",
            ]
        );
        let servers = dual_stack(None, Some("2001:db8::5")).ice_servers("[2001:db8::7]:3000", "bob", 1000);
        assert_eq!(
            servers[0].urls,
            vec![
                "turn:[2001:db8::7]:3479?transport=udp",
                "turn:[2001:db8::7]:3479?transport=tcp",
                "turns:[2001:db8::7]:5350?transport=tcp",
            ]
        );
    }
}
