//! `[cluster]`: several relaychat nodes sharing one Redis (docs/CLUSTER.md).
//!
//! Empty `redis_url` (the default): single-node mode, nothing here is used. Otherwise every
//! shared change goes through the Redis log (`crate::cluster`), names are claimed there, and the
//! node announces itself with a heartbeat.

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError};

/// Longest node id accepted: it is part of every name owner value and of Redis keys.
pub const MAX_NODE_ID_CHARS: usize = 64;
/// Longest key prefix accepted.
pub const MAX_NAMESPACE_CHARS: usize = 64;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct ClusterSettings {
    /// `redis://host:port/db`; empty: single-node mode.
    pub redis_url: String,
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
        if !(url.starts_with("redis://") || url.starts_with("unix://")) {
            return Err(invalid("cluster.redis_url", format!("{url:?} is not a redis:// or unix:// URL")));
        }
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
}
