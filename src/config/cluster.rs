//! `[cluster]`: several relaychat nodes sharing one Redis (docs/CLUSTER.md).
//!
//! Empty `redis_url` (the default): single-node mode, nothing here is used. Otherwise every
//! shared change goes through the Redis log (`crate::cluster`), names are claimed there, and the
//! node announces itself with a heartbeat.
//!
//! `rediss://` puts the link to Redis under TLS (`crate::cluster::tls`): the server's certificate
//! is checked against `redis_ca_file` (or the system's roots when it is empty), and
//! `redis_cert_file` + `redis_key_file` present a client certificate for Redis's
//! `tls-auth-clients yes`. The files are read and parsed here, at start, so a missing file or a
//! key without its certificate stops the start with the key's name instead of failing at the
//! first connection.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError};

/// Longest node id accepted: it is part of every name owner value and of Redis keys.
pub const MAX_NODE_ID_CHARS: usize = 64;
/// Longest key prefix accepted.
pub const MAX_NAMESPACE_CHARS: usize = 64;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct ClusterSettings {
    /// `redis://host:port/db`, `rediss://` (TLS) or `unix://`; empty: single-node mode.
    pub redis_url: String,
    /// PEM file of the CA(s) that signed Redis's certificate (`rediss://` only); empty: the
    /// system's roots.
    pub redis_ca_file: String,
    /// PEM client certificate (chain) for Redis's `tls-auth-clients yes`; with `redis_key_file`.
    pub redis_cert_file: String,
    /// PEM private key of `redis_cert_file`.
    pub redis_key_file: String,
    /// This node's name in the cluster; empty: a random `node-xxxxxxxx` chosen at each start.
    pub node_id: String,
    /// Prefix of every Redis key (several communities can share one Redis).
    pub namespace: String,
    /// How long a name claim and a node record live without a heartbeat: a node killed with -9
    /// releases its users' names and leaves the node list after this.
    pub presence_ttl_ms: u64,
    /// How often the node renews its record and its users' names; under half the TTL so one
    /// late heartbeat does not lose them.
    pub heartbeat_ms: u64,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            redis_url: String::new(),
            redis_ca_file: String::new(),
            redis_cert_file: String::new(),
            redis_key_file: String::new(),
            node_id: String::new(),
            namespace: "relaychat".into(),
            presence_ttl_ms: 10_000,
            heartbeat_ms: 2_000,
        }
    }
}

impl ClusterSettings {
    /// Cluster mode is on.
    pub fn enabled(&self) -> bool {
        !self.redis_url.trim().is_empty()
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        let url = self.redis_url.trim();
        if !(url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("unix://")) {
            return Err(invalid(
                "cluster.redis_url",
                format!("{url:?} is not a redis://, rediss:// (TLS) or unix:// URL"),
            ));
        }
        self.validate_tls()?;
        let id = self.node_id.trim();
        if !id.is_empty() && !is_valid_token(id, MAX_NODE_ID_CHARS) {
            return Err(invalid(
                "cluster.node_id",
                format!("must be 1-{MAX_NODE_ID_CHARS} letters, digits, '_', '-' or '.'"),
            ));
        }
        if !is_valid_token(&self.namespace, MAX_NAMESPACE_CHARS) {
            return Err(invalid(
                "cluster.namespace",
                format!("must be 1-{MAX_NAMESPACE_CHARS} letters, digits, '_', '-' or '.'"),
            ));
        }
        if self.presence_ttl_ms < 1000 {
            return Err(invalid("cluster.presence_ttl_ms", "must be at least 1000"));
        }
        if self.heartbeat_ms == 0 || self.heartbeat_ms * 2 >= self.presence_ttl_ms {
            return Err(invalid(
                "cluster.heartbeat_ms",
                "must be greater than 0 and less than presence_ttl_ms / 2",
            ));
        }
        Ok(())
    }
}

impl ClusterSettings {
    /// The link to Redis is TLS (`rediss://`).
    pub fn uses_tls(&self) -> bool {
        self.redis_url.trim().starts_with("rediss://")
    }

    /// The TLS files exist, parse, and make sense with the URL.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let files = [
            ("cluster.redis_ca_file", &self.redis_ca_file),
            ("cluster.redis_cert_file", &self.redis_cert_file),
            ("cluster.redis_key_file", &self.redis_key_file),
        ];
        if !self.uses_tls() {
            // Fail closed: whoever names a CA expects the link to be encrypted and checked.
            if let Some((key, _)) = files.into_iter().find(|(_, path)| !path.trim().is_empty()) {
                return Err(invalid(
                    key,
                    "is only used with TLS: make redis_url rediss://host:port/db (or clear this key)",
                ));
            }
            return Ok(());
        }
        // The redis crate's `#insecure` skips every certificate check; it is not built in, and
        // a node would only fail at its first connection, so say it here.
        if self.redis_url.contains("#insecure") {
            return Err(invalid(
                "cluster.redis_url",
                "#insecure (no certificate check) is not supported: name the CA that signed \
                 Redis's certificate in cluster.redis_ca_file",
            ));
        }
        if self.redis_cert_file.trim().is_empty() != self.redis_key_file.trim().is_empty() {
            return Err(invalid(
                "cluster.redis_cert_file",
                "redis_cert_file and redis_key_file must be set together (client certificate and its key)",
            ));
        }
        if !self.redis_ca_file.trim().is_empty() {
            read_certificates("cluster.redis_ca_file", &self.redis_ca_file)?;
        }
        if !self.redis_cert_file.trim().is_empty() {
            read_certificates("cluster.redis_cert_file", &self.redis_cert_file)?;
            let pem = read_pem_file("cluster.redis_key_file", &self.redis_key_file)?;
            PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
                invalid(
                    "cluster.redis_key_file",
                    format!("{}: no PEM private key in it ({e})", self.redis_key_file.trim()),
                )
            })?;
        }
        Ok(())
    }
}

/// The bytes of a PEM file named by `key`, or an error saying why it cannot be read.
fn read_pem_file(key: &'static str, path: &str) -> Result<Vec<u8>, ConfigError> {
    let path = Path::new(path.trim());
    std::fs::read(path).map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))
}

/// The file holds at least one PEM certificate, and nothing that fails to parse.
fn read_certificates(key: &'static str, path: &str) -> Result<(), ConfigError> {
    let pem = read_pem_file(key, path)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(key, format!("{}: bad PEM ({e})", path.trim())))?;
    if certificates.is_empty() {
        return Err(invalid(
            key,
            format!("{}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it", path.trim()),
        ));
    }
    Ok(())
}

/// Letters, digits, `_`, `-`, `.`: safe inside a Redis key and an owner value (`node/conn`).
fn is_valid_token(text: &str, max: usize) -> bool {
    (1..=max).contains(&text.len())
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on() -> ClusterSettings {
        ClusterSettings { redis_url: "redis://127.0.0.1:6379/0".into(), ..Default::default() }
    }

    #[test]
    fn off_by_default_and_checked_when_on() {
        assert!(!ClusterSettings::default().enabled());
        assert!(ClusterSettings::default().validate().is_ok());
        assert!(on().validate().is_ok());
        let bad_url = ClusterSettings { redis_url: "http://x".into(), ..on() };
        assert!(bad_url.validate().is_err());
        let slow_heartbeat = ClusterSettings { heartbeat_ms: 5000, ..on() };
        assert!(slow_heartbeat.validate().is_err());
        let bad_node = ClusterSettings { node_id: "a/b".into(), ..on() };
        assert!(bad_node.validate().is_err());
        let bad_ns = ClusterSettings { namespace: "a b".into(), ..on() };
        assert!(bad_ns.validate().is_err());
    }

    /// A CA certificate and a client certificate with its key, as PEM files in `dir`.
    fn pem_files(dir: &Path) -> (String, String, String) {
        let certified = rcgen::generate_simple_self_signed(vec!["redis.internal".into()]).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, certified.cert.pem()).unwrap();
        std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
        let path = |p: &Path| p.display().to_string();
        (path(&cert), path(&cert), path(&key))
    }

    fn problem(settings: &ClusterSettings) -> (String, String) {
        match settings.validate() {
            Err(ConfigError::Invalid { key, problem }) => (key.to_string(), problem),
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    #[test]
    fn tls_settings_are_checked_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = pem_files(dir.path());
        let tls =
            || ClusterSettings { redis_url: "rediss://redis.internal:6380/0".into(), ..Default::default() };
        // rediss:// alone: the system's roots; with a CA; with a client certificate.
        assert!(tls().validate().is_ok());
        assert!(tls().uses_tls() && !on().uses_tls());
        let full = ClusterSettings {
            redis_ca_file: ca.clone(),
            redis_cert_file: cert.clone(),
            redis_key_file: key.clone(),
            ..tls()
        };
        assert!(full.validate().is_ok());

        let plain_with_ca = ClusterSettings { redis_ca_file: ca.clone(), ..on() };
        let (k, p) = problem(&plain_with_ca);
        assert_eq!(k, "cluster.redis_ca_file");
        assert!(p.contains("rediss://"), "{p}");

        let missing =
            ClusterSettings { redis_ca_file: dir.path().join("nope.pem").display().to_string(), ..tls() };
        let (k, p) = problem(&missing);
        assert_eq!(k, "cluster.redis_ca_file");
        assert!(p.contains("cannot read") && p.contains("nope.pem"), "{p}");

        // A key where a certificate belongs.
        let (k, p) = problem(&ClusterSettings { redis_ca_file: key.clone(), ..tls() });
        assert_eq!(k, "cluster.redis_ca_file");
        assert!(p.contains("no PEM certificate"), "{p}");

        let (k, p) = problem(&ClusterSettings { redis_cert_file: cert.clone(), ..tls() });
        assert_eq!(k, "cluster.redis_cert_file");
        assert!(p.contains("set together"), "{p}");

        // A certificate where the key belongs.
        let swapped = ClusterSettings { redis_cert_file: cert.clone(), redis_key_file: ca.clone(), ..tls() };
        let (k, p) = problem(&swapped);
        assert_eq!(k, "cluster.redis_key_file");
        assert!(p.contains("no PEM private key"), "{p}");

        let insecure =
            ClusterSettings { redis_url: "rediss://redis.internal:6380/0#insecure".into(), ..tls() };
        let (k, p) = problem(&insecure);
        assert_eq!(k, "cluster.redis_url");
        assert!(p.contains("#insecure"), "{p}");
    }
}
