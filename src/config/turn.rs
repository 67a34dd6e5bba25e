//! `[turn]`: the relay's settings as written (strings, as TOML, the environment and
//! settings.json spell them) and as used ([`TurnConfig`]: addresses, networks, an enum).
//!
//! [`TurnSettings::parse`] is the one place these strings become values: `Settings::validate`
//! calls it (so `relaychat check-config` reports one clear error per bad key) and the relay is
//! started from its result, so nothing downstream parses an address, a CIDR or a policy name.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{invalid, parse_net, ConfigError};

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TurnSettings {
    pub enabled: bool,
    pub listen: String,
    pub tls_listen: String,
    pub realm: String,
    pub secret: String,
    pub public_host: String,
    pub relay_ip: String,
    /// An IPv6 address for IPv6 relayed addresses beside an IPv4 `relay_ip` (RFC 6156 / RFC 8656
    /// dual allocations); empty: none.
    #[serde(default)]
    pub relay_ip6: String,
    /// The family of an Allocate that names none: "ipv4" (RFC 6156) or "keep" (the family the
    /// client came over, when the relay has it; browsers never name one).
    #[serde(default = "default_allocation_family")]
    pub allocation_default_family: String,
    pub external_ip: String,
    pub min_port: u16,
    pub max_port: u16,
    pub credential_ttl_s: u64,
    pub require_live_session: bool,
    pub peer_policy: String,
    pub allowed_peer_cidrs: Vec<String>,
    pub denied_peer_cidrs: Vec<String>,
    pub max_allocations_per_user: usize,
    pub max_allocations_total: usize,
    pub allocation_bandwidth_bytes_per_s: u64,
    /// Peers (IP addresses) one allocation may hold permissions for at once.
    pub max_permissions_per_allocation: usize,
    /// Channels one allocation may have bound at once.
    pub max_channels_per_allocation: usize,
    /// TURN-over-TCP/TLS connections one client IP (IPv6: one `limits.ipv6_prefix_len` prefix)
    /// may hold open, authenticated or not.
    pub max_tcp_connections_per_ip: usize,
    /// IPv6 address (and port) of a second UDP/TCP listener; empty: IPv4 only. TURN over TLS
    /// then listens on this IP too, on `tls_listen`'s port.
    #[serde(default)]
    pub listen6: String,
    /// true: TCP and TLS connections from `proxy_protocol_from` start with a PROXY header.
    #[serde(default)]
    pub proxy_protocol: bool,
    #[serde(default)]
    pub proxy_protocol_from: Vec<String>,
    #[serde(default)]
    pub external_servers: Vec<ExternalTurnServer>,
}

fn default_allocation_family() -> String {
    "ipv4".into()
}

/// A TURN server run by someone else (typically an existing coturn with `use-auth-secret`).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ExternalTurnServer {
    pub urls: Vec<String>,
    pub secret: String,
    /// The addresses this server puts in its relay candidates (coturn's `relay-ip` /
    /// `external-ip`), when they differ from what the URLs' host names resolve to. Under
    /// force_relay, a relay candidate naming any other address is dropped.
    #[serde(default)]
    pub relay_addresses: Vec<String>,
}

/// Which peer addresses the relay may exchange data with (see `turn::policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PeerPolicyKind {
    OwnRelays,
    Public,
    Any,
}

/// `[turn]` parsed: every value the relay uses, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnConfig {
    pub listen: SocketAddr,
    pub tls_listen: SocketAddr,
    /// The IPv6 UDP/TCP listener (`[turn] listen6`), when set; TLS adds `tls_listen`'s port.
    pub listen6: Option<SocketAddr>,
    /// Load balancers whose TCP/TLS connections carry a PROXY protocol header; empty: off.
    pub proxy_protocol_from: Vec<IpNet>,
    pub realm: String,
    /// `None`: the listen IP, else the machine's primary address (found at start).
    pub relay_ip: Option<IpAddr>,
    /// `None`: the relay IP.
    pub external_ip: Option<IpAddr>,
    /// `None`: no IPv6 relayed addresses (unless `relay_ip` itself is IPv6).
    pub relay_ip6: Option<Ipv6Addr>,
    /// `allocation_default_family = "keep"`.
    pub keep_client_family: bool,
    pub public_host: Option<String>,
    pub relay_ports: RangeInclusive<u16>,
    pub require_live_session: bool,
    /// Explicit, or derived from `webrtc.force_relay`.
    pub peer_policy: PeerPolicyKind,
    pub allowed_peer_cidrs: Vec<IpNet>,
    pub denied_peer_cidrs: Vec<IpNet>,
    /// Explicit, or derived from `webrtc.max_participants`.
    pub allocations_per_user: usize,
    pub max_allocations_total: usize,
    pub allocation_bandwidth_bytes_per_s: u64,
    pub max_permissions_per_allocation: usize,
    pub max_channels_per_allocation: usize,
    pub max_tcp_connections_per_ip: usize,
    /// `limits.ipv6_prefix_len`: how per-IP limits group IPv6 clients.
    pub ipv6_prefix_len: u8,
}

/// What `[turn]` needs from other sections to be resolved.
#[derive(Debug, Clone, Copy)]
pub struct TurnContext {
    pub force_relay: bool,
    pub max_participants: usize,
    pub ipv6_prefix_len: u8,
}

impl TurnSettings {
    /// Parses and checks every `[turn]` value; the error names the first bad key.
    pub fn parse(&self, context: TurnContext) -> Result<TurnConfig, ConfigError> {
        let listen = self.listen.trim().parse::<SocketAddr>().map_err(|_| {
            invalid("turn.listen", format!("{:?} is not an address like 0.0.0.0:3478", self.listen))
        })?;
        let tls_listen = self.tls_listen.trim().parse::<SocketAddr>().map_err(|_| {
            invalid("turn.tls_listen", format!("{:?} is not an address like 0.0.0.0:5349", self.tls_listen))
        })?;
        let listen6 = match self.listen6.trim() {
            "" => None,
            text => match text.parse::<SocketAddr>() {
                Ok(addr) if addr.is_ipv6() => Some(addr),
                _ => {
                    return Err(invalid("turn.listen6", format!("{text:?} is not an address like [::]:3478")))
                }
            },
        };
        if listen.is_ipv6() && listen6.is_some() {
            return Err(invalid(
                "turn.listen6",
                "is for a second, IPv6 listener; turn.listen is IPv6 already",
            ));
        }
        let proxy_protocol_from = super::server::proxy_protocol_nets(
            "turn.proxy_protocol_from",
            self.proxy_protocol,
            &self.proxy_protocol_from,
        )?;
        let relay_ip = optional_ip("turn.relay_ip", &self.relay_ip)?;
        if relay_ip.is_some_and(|ip| ip.is_unspecified()) {
            return Err(invalid(
                "turn.relay_ip",
                "must name one address (relayed addresses are handed to peers)",
            ));
        }
        let external_ip = optional_ip("turn.external_ip", &self.external_ip)?;
        if let (Some(relay), Some(external)) = (relay_ip, external_ip) {
            if relay.is_ipv4() != external.is_ipv4() {
                return Err(invalid(
                    "turn.external_ip",
                    "must be of the same address family as turn.relay_ip",
                ));
            }
        }
        let relay_ip6 = match optional_ip("turn.relay_ip6", &self.relay_ip6)? {
            None => None,
            Some(IpAddr::V6(ip)) if !ip.is_unspecified() && ip.to_ipv4_mapped().is_none() => Some(ip),
            Some(_) => {
                return Err(invalid("turn.relay_ip6", "must be one IPv6 address of this machine (or empty)"))
            }
        };
        if relay_ip6.is_some() && relay_ip.is_some_and(|ip| ip.is_ipv6()) {
            return Err(invalid("turn.relay_ip6", "turn.relay_ip is IPv6 already: leave relay_ip6 empty"));
        }
        let keep_client_family = match self.allocation_default_family.trim() {
            "ipv4" => false,
            "keep" => true,
            other => {
                return Err(invalid(
                    "turn.allocation_default_family",
                    format!("{other:?} is not one of ipv4, keep"),
                ))
            }
        };
        if self.min_port == 0 || self.min_port > self.max_port {
            return Err(invalid("turn.min_port", "must be between 1 and turn.max_port"));
        }
        if self.realm.is_empty() {
            return Err(invalid("turn.realm", "must not be empty"));
        }
        positive("turn.credential_ttl_s", self.credential_ttl_s)?;
        let explicit_policy = match self.peer_policy.trim() {
            "" => None,
            "own-relays" => Some(PeerPolicyKind::OwnRelays),
            "public" => Some(PeerPolicyKind::Public),
            "any" => Some(PeerPolicyKind::Any),
            _ => {
                return Err(invalid(
                    "turn.peer_policy",
                    format!("{:?} is not one of own-relays, public, any", self.peer_policy),
                ))
            }
        };
        let peer_policy = explicit_policy.unwrap_or(if context.force_relay {
            PeerPolicyKind::OwnRelays
        } else {
            PeerPolicyKind::Public
        });
        let allowed_peer_cidrs = nets("turn.allowed_peer_cidrs", &self.allowed_peer_cidrs)?;
        let denied_peer_cidrs = nets("turn.denied_peer_cidrs", &self.denied_peer_cidrs)?;
        positive("turn.max_allocations_total", self.max_allocations_total as u64)?;
        positive("turn.max_permissions_per_allocation", self.max_permissions_per_allocation as u64)?;
        positive("turn.max_channels_per_allocation", self.max_channels_per_allocation as u64)?;
        positive("turn.max_tcp_connections_per_ip", self.max_tcp_connections_per_ip as u64)?;
        for server in &self.external_servers {
            if server.urls.is_empty() || server.secret.is_empty() {
                return Err(invalid("turn.external_servers", "every entry needs urls and a secret"));
            }
            if let Some(bad) = server.relay_addresses.iter().find(|a| a.trim().parse::<IpAddr>().is_err()) {
                return Err(invalid(
                    "turn.external_servers.relay_addresses",
                    format!("{bad:?} is not an IP address"),
                ));
            }
        }
        Ok(TurnConfig {
            listen,
            tls_listen,
            listen6,
            proxy_protocol_from,
            realm: self.realm.clone(),
            relay_ip,
            external_ip,
            relay_ip6,
            keep_client_family,
            public_host: Some(self.public_host.trim().to_string()).filter(|h| !h.is_empty()),
            relay_ports: self.min_port..=self.max_port,
            require_live_session: self.require_live_session,
            peer_policy,
            allowed_peer_cidrs,
            denied_peer_cidrs,
            allocations_per_user: self.allocations_per_user(context.max_participants),
            max_allocations_total: self.max_allocations_total,
            allocation_bandwidth_bytes_per_s: self.allocation_bandwidth_bytes_per_s,
            max_permissions_per_allocation: self.max_permissions_per_allocation,
            max_channels_per_allocation: self.max_channels_per_allocation,
            max_tcp_connections_per_ip: self.max_tcp_connections_per_ip,
            ipv6_prefix_len: context.ipv6_prefix_len,
        })
    }

    /// The effective per-user allocation limit.
    pub fn allocations_per_user(&self, max_participants: usize) -> usize {
        if self.max_allocations_per_user > 0 {
            self.max_allocations_per_user
        } else {
            2 * max_participants.saturating_sub(1).max(1)
        }
    }
}

fn positive(key: &'static str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        Err(invalid(key, "must be greater than 0"))
    } else {
        Ok(())
    }
}

/// Empty means "not set"; anything else must be an IP address.
fn optional_ip(key: &'static str, text: &str) -> Result<Option<IpAddr>, ConfigError> {
    match text.trim() {
        "" => Ok(None),
        value => value.parse().map(Some).map_err(|_| invalid(key, format!("{text:?} is not an IP address"))),
    }
}

fn nets(key: &'static str, list: &[String]) -> Result<Vec<IpNet>, ConfigError> {
    list.iter()
        .map(|entry| parse_net(entry).ok_or_else(|| invalid(key, format!("{entry:?} is not an IP or CIDR"))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn parse(adjust: impl FnOnce(&mut TurnSettings)) -> Result<TurnConfig, ConfigError> {
        let settings = Settings::defaults();
        let mut turn = settings.turn.clone();
        adjust(&mut turn);
        turn.parse(settings.turn_context())
    }

    fn bad_key(adjust: impl FnOnce(&mut TurnSettings)) -> &'static str {
        match parse(adjust) {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    #[test]
    fn defaults_parse_into_typed_values() {
        let c = parse(|_| {}).unwrap();
        assert_eq!(c.listen, "0.0.0.0:3478".parse::<SocketAddr>().unwrap());
        assert_eq!(c.relay_ip, None);
        assert_eq!(c.external_ip, None);
        assert_eq!(c.relay_ip6, None);
        let dual = parse(|t| t.relay_ip6 = " ::1 ".into()).unwrap();
        assert_eq!(dual.relay_ip6, Some(std::net::Ipv6Addr::LOCALHOST));
        assert!(!dual.keep_client_family, "RFC 6156: IPv4 unless asked");
        assert!(parse(|t| t.allocation_default_family = "keep".into()).unwrap().keep_client_family);
        assert_eq!(c.public_host, None);
        assert_eq!(c.relay_ports, 49152..=65535);
        assert_eq!(c.peer_policy, PeerPolicyKind::OwnRelays, "webrtc.force_relay is on by default");
        assert_eq!(c.allocations_per_user, 14);
        assert_eq!(c.max_permissions_per_allocation, 64);
        assert_eq!(c.max_channels_per_allocation, 64);
        assert_eq!(c.max_tcp_connections_per_ip, 16);
    }

    #[test]
    fn the_policy_is_explicit_or_follows_force_relay() {
        let settings = Settings::defaults();
        let mut context = settings.turn_context();
        context.force_relay = true;
        assert_eq!(settings.turn.parse(context).unwrap().peer_policy, PeerPolicyKind::OwnRelays);
        context.force_relay = false;
        assert_eq!(settings.turn.parse(context).unwrap().peer_policy, PeerPolicyKind::Public);
        let c = parse(|t| t.peer_policy = "any".into()).unwrap();
        assert_eq!(c.peer_policy, PeerPolicyKind::Any);
        let c = parse(|t| t.allowed_peer_cidrs = vec!["10.0.0.1".into(), "10.1.0.0/16".into()]).unwrap();
        assert_eq!(
            c.allowed_peer_cidrs,
            vec!["10.0.0.1/32".parse::<IpNet>().unwrap(), "10.1.0.0/16".parse().unwrap()]
        );
    }

    #[test]
    fn each_bad_value_names_its_key() {
        assert_eq!(bad_key(|t| t.listen = "nope".into()), "turn.listen");
        assert_eq!(bad_key(|t| t.tls_listen = "1.2.3.4".into()), "turn.tls_listen");
        assert_eq!(bad_key(|t| t.relay_ip = "0.0.0.0".into()), "turn.relay_ip");
        assert_eq!(bad_key(|t| t.relay_ip = "x".into()), "turn.relay_ip");
        assert_eq!(bad_key(|t| t.external_ip = "x".into()), "turn.external_ip");
        assert_eq!(bad_key(|t| t.relay_ip6 = "127.0.0.1".into()), "turn.relay_ip6");
        assert_eq!(
            bad_key(|t| t.allocation_default_family = "ipv6".into()),
            "turn.allocation_default_family"
        );
        assert_eq!(bad_key(|t| t.relay_ip6 = "::".into()), "turn.relay_ip6");
        assert_eq!(bad_key(|t| t.relay_ip6 = "::ffff:127.0.0.1".into()), "turn.relay_ip6");
        assert_eq!(
            bad_key(|t| {
                t.relay_ip = "::1".into();
                t.relay_ip6 = "::1".into();
            }),
            "turn.relay_ip6"
        );
        assert_eq!(
            bad_key(|t| {
                t.relay_ip = "127.0.0.1".into();
                t.external_ip = "::1".into();
            }),
            "turn.external_ip"
        );
        assert_eq!(bad_key(|t| t.peer_policy = "open".into()), "turn.peer_policy");
        assert_eq!(bad_key(|t| t.denied_peer_cidrs = vec!["10.0.0.0/33".into()]), "turn.denied_peer_cidrs");
        assert_eq!(bad_key(|t| t.max_permissions_per_allocation = 0), "turn.max_permissions_per_allocation");
        assert_eq!(bad_key(|t| t.max_channels_per_allocation = 0), "turn.max_channels_per_allocation");
        assert_eq!(bad_key(|t| t.max_tcp_connections_per_ip = 0), "turn.max_tcp_connections_per_ip");
        assert_eq!(bad_key(|t| t.listen6 = "0.0.0.0:3478".into()), "turn.listen6");
        assert_eq!(bad_key(|t| t.listen6 = "::".into()), "turn.listen6");
        assert_eq!(
            bad_key(|t| {
                t.listen = "[::1]:3478".into();
                t.listen6 = "[::]:3478".into();
            }),
            "turn.listen6"
        );
        assert_eq!(bad_key(|t| t.proxy_protocol = true), "turn.proxy_protocol_from");
        assert_eq!(
            bad_key(|t| {
                t.proxy_protocol = true;
                t.proxy_protocol_from = vec!["10.0.0.0/33".into()];
            }),
            "turn.proxy_protocol_from"
        );
    }

    #[test]
    fn ipv6_listener_and_proxy_protocol_are_typed() {
        let c = parse(|t| {
            t.listen6 = "[::]:3478".into();
            t.proxy_protocol_from = vec!["10.0.0.1".into()];
        })
        .unwrap();
        assert_eq!(c.listen6, Some("[::]:3478".parse().unwrap()));
        assert!(c.proxy_protocol_from.is_empty(), "the list is ignored while proxy_protocol is off");
        let c = parse(|t| {
            t.proxy_protocol = true;
            t.proxy_protocol_from = vec!["10.0.0.1".into(), "fd00::/8".into()];
        })
        .unwrap();
        assert_eq!(
            c.proxy_protocol_from,
            vec!["10.0.0.1/32".parse::<IpNet>().unwrap(), "fd00::/8".parse().unwrap()]
        );
    }
}
