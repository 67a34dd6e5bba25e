//! TURN REST credentials (the convention of coturn's `use-auth-secret`, PROTOCOL.md section 7).
//!
//! `username = "<unix expiry seconds>:<user>"` (the hub's user is `<chat name>:<session tag>`,
//! see `hub::voice`), `credential =
//! base64(HMAC-SHA1(secret, username))`. Pure functions: the signaling side issues them, the
//! relay's auth handler verifies them, and both sides agree because they share only the secret.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha1::Sha1;

type HmacSha1 = Hmac<Sha1>;

/// One username/credential pair, as handed to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestCredential {
    pub username: String,
    pub credential: String,
}

/// The credential (the TURN password) for a REST username.
pub fn credential_for(secret: &[u8], username: &str) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha1::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Issues a credential for `user` valid until `expires_at_unix`.
pub fn issue(secret: &[u8], user: &str, expires_at_unix: u64) -> RestCredential {
    let username = format!("{expires_at_unix}:{user}");
    let credential = credential_for(secret, &username);
    RestCredential { username, credential }
}

/// A REST username split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestUsername<'a> {
    pub expires_at_unix: u64,
    pub user: &'a str,
}

/// Parses `"<expiry>:<user>"`. The user part may itself contain no further structure we rely on.
pub fn parse_username(username: &str) -> Option<RestUsername<'_>> {
    let (expiry, user) = username.split_once(':')?;
    let expires_at_unix = expiry.parse().ok()?;
    if user.is_empty() {
        return None;
    }
    Some(RestUsername { expires_at_unix, user })
}

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

    #[test]
    fn matches_the_coturn_rest_vector() {
        // HMAC-SHA1 of "1700000000:alice" under "secret", computed independently with
        // `printf %s 1700000000:alice | openssl dgst -sha1 -hmac secret -binary | base64`.
        let c = issue(b"secret", "alice", 1_700_000_000);
        assert_eq!(c.username, "1700000000:alice");
        assert_eq!(c.credential, "d8soP47RbdIKLDUOpnJPVQyq5Ts=");
        assert_ne!(c.credential, credential_for(b"other", "1700000000:alice"));
    }

    #[test]
    fn rfc2202_hmac_sha1_vector() {
        // RFC 2202 test case 2: key "Jefe", data "what do ya want for nothing?".
        let expected = hex::decode("effcdf6ae5eb2fa2d27416d5f184df9c259a7c79").unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(expected);
        assert_eq!(credential_for(b"Jefe", "what do ya want for nothing?"), b64);
    }

    #[test]
    fn parses_usernames() {
        assert_eq!(parse_username("12:bob"), Some(RestUsername { expires_at_unix: 12, user: "bob" }));
        assert_eq!(parse_username("x:bob"), None);
        assert_eq!(parse_username("12:"), None);
        assert_eq!(parse_username("12"), None);
    }

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
