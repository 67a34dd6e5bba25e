//! `iceServers` for `webrtc-joined`: which TURN servers a client is handed, with fresh REST
//! credentials.
//!
//! The hub asks an [`IceServerIssuer`] (built once at start-up from the settings and the relay's
//! ports) when someone joins voice; it needs only the REST credential convention
//! (`turn::credentials`), never the relay itself, so the hub and the wire types do not depend
//! on the relay.

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
    /// Our integrated relay: ports of the UDP/TCP listener and, when TLS is on, of `turns:`.
    Integrated { secret: Vec<u8>, public_host: Option<String>, port: u16, tls_port: Option<u16> },
    /// Operators who keep an existing coturn: fixed URLs, each with its own shared secret.
    External(Vec<(Vec<String>, Vec<u8>)>),
    /// No TURN at all (clients fall back to whatever their browser does).
    None,
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
            TurnEndpoints::Integrated { secret, public_host, port, tls_port } => {
                let host = match public_host {
                    Some(host) => bracket_ipv6(host),
                    None => host_without_port(request_host),
                };
                let mut urls = vec![
                    format!("turn:{host}:{port}?transport=udp"),
                    format!("turn:{host}:{port}?transport=tcp"),
                ];
                if let Some(tls_port) = tls_port {
                    urls.push(format!("turns:{host}:{tls_port}?transport=tcp"));
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
}
