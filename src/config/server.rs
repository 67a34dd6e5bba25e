//! `[server]`: where the HTTP/WebSocket listener binds, its TLS files, and whom it believes
//! about client addresses (`trusted_proxies` for X-Forwarded-For, `proxy_protocol_from` for
//! PROXY protocol headers from TCP load balancers).

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{invalid, parse_net, ConfigError};

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    pub server_name: String,
    pub motd: String,
    pub data_dir: PathBuf,
    pub trusted_proxies: Vec<String>,
    /// true: connections from `proxy_protocol_from` must start with a PROXY protocol header.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// TCP load balancers (IPs or CIDRs) that send the PROXY protocol header.
    #[serde(default)]
    pub proxy_protocol_from: Vec<String>,
    pub tls: TlsSettings,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TlsSettings {
    pub cert_file: String,
    pub key_file: String,
}

impl TlsSettings {
    pub fn is_enabled(&self) -> bool {
        !self.cert_file.is_empty() && !self.key_file.is_empty()
    }
}

impl ServerSettings {
    /// `trusted_proxies` parsed; validation guarantees every entry parses.
    pub fn trusted_proxy_nets(&self) -> Vec<IpNet> {
        self.trusted_proxies.iter().filter_map(|s| parse_net(s)).collect()
    }

    /// The HTTP listener's PROXY protocol setting; `None` when off. Validation guarantees the
    /// entries parse.
    pub fn proxy_protocol(&self) -> Option<crate::proxy_protocol::ProxyProtocol> {
        let nets =
            proxy_protocol_nets("server.proxy_protocol_from", self.proxy_protocol, &self.proxy_protocol_from);
        crate::proxy_protocol::ProxyProtocol::from_trusted(nets.unwrap_or_default())
    }

    /// Checks what serde's types cannot: the host is an IP, every proxy entry an IP or CIDR,
    /// the PROXY protocol has its balancers, and the TLS files come as a pair.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.host.parse::<IpAddr>().is_err() {
            return Err(invalid("server.host", format!("{:?} is not an IP address", self.host)));
        }
        for entry in &self.trusted_proxies {
            if parse_net(entry).is_none() {
                return Err(invalid("server.trusted_proxies", format!("{entry:?} is not an IP or CIDR")));
            }
        }
        proxy_protocol_nets("server.proxy_protocol_from", self.proxy_protocol, &self.proxy_protocol_from)?;
        if self.tls.cert_file.is_empty() != self.tls.key_file.is_empty() {
            return Err(invalid("server.tls", "cert_file and key_file must be set together"));
        }
        Ok(())
    }
}

/// A listener's `proxy_protocol_from`, parsed: empty when `proxy_protocol` is off (the list is
/// then ignored), an error when it is on with no balancer listed or with a malformed entry.
pub(super) fn proxy_protocol_nets(
    key: &'static str,
    enabled: bool,
    list: &[String],
) -> Result<Vec<IpNet>, ConfigError> {
    if !enabled {
        return Ok(Vec::new());
    }
    if list.is_empty() {
        return Err(invalid(key, "must list the load balancers' addresses when proxy_protocol is on"));
    }
    list.iter()
        .map(|entry| parse_net(entry).ok_or_else(|| invalid(key, format!("{entry:?} is not an IP or CIDR"))))
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::config::Settings;

    #[test]
    fn the_http_listeners_proxy_protocol_needs_its_balancers() {
        let mut s = Settings::defaults();
        assert!(s.server.proxy_protocol().is_none(), "off by default");
        s.server.proxy_protocol_from = vec!["10.0.0.0/8".into()];
        assert!(s.server.proxy_protocol().is_none(), "a list alone does not turn it on");
        s.server.proxy_protocol = true;
        s.validate().unwrap();
        let proxy = s.server.proxy_protocol().expect("on");
        assert!(proxy.expects_header_from("10.1.2.3".parse().unwrap()));
        assert!(!proxy.expects_header_from("192.0.2.1".parse().unwrap()));
        for bad in [vec![], vec!["10.0.0.0/33".to_string()], vec!["lb.example.org".to_string()]] {
            s.server.proxy_protocol_from = bad;
            let err = s.validate().unwrap_err();
            assert!(err.to_string().contains("server.proxy_protocol_from"), "{err}");
        }
    }
}
