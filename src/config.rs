//! Settings: the typed configuration, how its layers are merged, and start-up validation.
//!
//! Layers, later wins: the defaults embedded from `config/default.toml` < the `--config` file
//! (TOML, or a js-chat-server `settings.json`, read with the original's keys, meanings and
//! fallbacks so operators can migrate by pointing at the old file) < `RELAYCHAT__SECTION__KEY` environment variables < command-line flags. A bad value
//! stops the start with a message naming the key: failing closed beats running half-configured.
//!
//! Sections with rules of their own live in submodules: `server` (listener, TLS, proxies),
//! `admin` (the operator API), `turn` (the relay), `settings_json` (the original's file).

use std::net::IpAddr;
use std::path::PathBuf;

use config::{Config, Environment, File, FileFormat};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

mod admin;
mod server;
mod settings_json;
mod turn;

pub use admin::{AdminSettings, MIN_ADMIN_TOKEN_CHARS};
pub use server::{ServerSettings, TlsSettings};
use settings_json::{is_js_settings, js_settings_overrides};
pub use turn::{ExternalTurnServer, PeerPolicyKind, TurnConfig, TurnContext, TurnSettings};

/// The defaults, embedded so that `relaychat` runs with no file at all.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Why the configuration could not be used. The text names the key and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not valid JSON: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("invalid configuration: `{key}` {problem}")]
    Invalid { key: &'static str, problem: String },
}

fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, problem: problem.into() }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Settings {
    pub server: ServerSettings,
    pub chat: ChatSettings,
    pub limits: LimitSettings,
    /// Per-session budgets of every non-chat message type (`[message_budgets]`).
    #[serde(default)]
    pub message_budgets: crate::hub::budget::MessageBudgetSettings,
    pub webrtc: WebrtcSettings,
    pub turn: TurnSettings,
    pub timeouts: TimeoutSettings,
    pub network: NetworkSettings,
    pub history: HistorySettings,
    /// The operator API (`[admin]`, docs/ADMIN.md); off unless `listen` is set.
    #[serde(default)]
    pub admin: AdminSettings,
}

/// How long a peer may stall us at each step before its connection is closed.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TimeoutSettings {
    pub header_read_ms: u64,
    pub tls_handshake_ms: u64,
    pub websocket_upgrade_ms: u64,
    pub first_message_ms: u64,
    pub write_ms: u64,
}

/// Caps applied when a TCP connection is accepted, before any byte is parsed, and the
/// WebSocket Origin allow-list.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct NetworkSettings {
    pub max_pending_per_ip: usize,
    pub max_pending_total: usize,
    pub allowed_origins: Vec<String>,
    pub password_hash_concurrency: usize,
    pub password_attempts_per_minute_per_ip: u32,
    pub register_attempts_per_ip: usize,
    pub register_window_s: u64,
}

/// How much chat history the database keeps.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct HistorySettings {
    pub retention_max_messages: u64,
    pub retention_max_days: u64,
    pub prune_interval_s: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ChatSettings {
    pub authentication: bool,
    pub max_messages_per_second: u32,
    pub nick_change_cooldown_ms: u64,
    pub history_limit: usize,
    pub heartbeat_interval_ms: u64,
    pub heartbeat_timeout_ms: u64,
    /// Names reserved for operator-created accounts (see `accounts`).
    pub admins: Vec<String>,
    pub registration: Registration,
    pub invite_only: bool,
}

/// Who may `/register` in authentication mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Registration {
    Open,
    /// Only sessions admitted with an invite or a member pass.
    Invite,
    /// Only the operator creates accounts (`relaychat user add`).
    Closed,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct LimitSettings {
    pub total_max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_connections_per_window: usize,
    pub connection_window_ms: u64,
    pub churn_guard: ChurnGuardSettings,
    /// IPv6 addresses sharing this many leading bits count as one address for per-IP limits.
    pub ipv6_prefix_len: u8,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ChurnGuardSettings {
    pub enabled: bool,
    pub window_ms: u64,
    pub max_cycles: usize,
    pub block_duration_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct WebrtcSettings {
    pub enabled: bool,
    pub max_participants: usize,
    pub allow_video: bool,
    pub allow_screen_share: bool,
    pub force_relay: bool,
}

/// Dotted names of the keys whose values differ between `a` and `b` (values are not shown:
/// some are secrets).
pub fn changed_keys(a: &Settings, b: &Settings) -> Vec<String> {
    fn walk(prefix: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => {
                let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                for key in keys {
                    let name = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                    walk(&name, a.get(key).unwrap_or(&Value::Null), b.get(key).unwrap_or(&Value::Null), out);
                }
            }
            (a, b) if a != b => out.push(prefix.to_string()),
            _ => {}
        }
    }
    let mut out = Vec::new();
    let as_json = |s: &Settings| serde_json::to_value(s).unwrap_or(Value::Null);
    walk("", &as_json(a), &as_json(b), &mut out);
    out
}

/// Parses an IP or a CIDR ("10.0.0.1", "10.0.0.0/8", "::1").
pub fn parse_net(text: &str) -> Option<IpNet> {
    let text = text.trim();
    text.parse::<IpNet>().ok().or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

/// Where the settings come from besides the defaults and the environment.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    pub config_file: Option<PathBuf>,
    pub port: Option<u16>,
}

impl Settings {
    /// Merges every layer and validates the result.
    pub fn load(sources: &Sources) -> Result<Settings, ConfigError> {
        let mut builder = Config::builder().add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml));
        if let Some(path) = &sources.config_file {
            if is_js_settings(path) {
                let layer = nest_dotted(js_settings_overrides(path)?);
                builder = builder.add_source(File::from_str(&layer.to_string(), FileFormat::Json));
            } else {
                builder = builder.add_source(File::from(path.as_path()).format(FileFormat::Toml));
            }
        }
        builder = builder.add_source(
            Environment::with_prefix("RELAYCHAT")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("server.trusted_proxies")
                .with_list_parse_key("server.proxy_protocol_from")
                .with_list_parse_key("turn.proxy_protocol_from")
                .with_list_parse_key("chat.admins")
                .with_list_parse_key("turn.allowed_peer_cidrs")
                .with_list_parse_key("turn.denied_peer_cidrs"),
        );
        if let Some(port) = sources.port {
            builder = builder.set_override("server.port", port)?;
        }
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Settings from the embedded defaults alone (tests start from these).
    pub fn defaults() -> Settings {
        Config::builder()
            .add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .expect("embedded default.toml is valid")
    }

    /// What `[turn]` needs from the other sections.
    pub fn turn_context(&self) -> TurnContext {
        TurnContext {
            force_relay: self.webrtc.force_relay,
            max_participants: self.webrtc.max_participants,
            ipv6_prefix_len: self.limits.ipv6_prefix_len,
        }
    }

    /// `[turn]`, typed (see `config::turn`).
    pub fn turn_config(&self) -> Result<TurnConfig, ConfigError> {
        self.turn.parse(self.turn_context())
    }

    /// Checks every value that serde's types cannot; one message per bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = |key, value: u64| {
            if value == 0 {
                Err(invalid(key, "must be greater than 0"))
            } else {
                Ok(())
            }
        };
        self.server.validate()?;
        positive("chat.max_messages_per_second", self.chat.max_messages_per_second.into())?;
        positive("chat.heartbeat_interval_ms", self.chat.heartbeat_interval_ms)?;
        positive("chat.heartbeat_timeout_ms", self.chat.heartbeat_timeout_ms)?;
        if self.chat.heartbeat_timeout_ms < self.chat.heartbeat_interval_ms {
            return Err(invalid(
                "chat.heartbeat_timeout_ms",
                "must not be shorter than heartbeat_interval_ms",
            ));
        }
        positive("limits.total_max_connections", self.limits.total_max_connections as u64)?;
        positive("limits.max_connections_per_ip", self.limits.max_connections_per_ip as u64)?;
        positive("limits.max_connections_per_window", self.limits.max_connections_per_window as u64)?;
        positive("limits.connection_window_ms", self.limits.connection_window_ms)?;
        if self.limits.churn_guard.enabled {
            positive("limits.churn_guard.window_ms", self.limits.churn_guard.window_ms)?;
            positive("limits.churn_guard.max_cycles", self.limits.churn_guard.max_cycles as u64)?;
        }
        if self.limits.ipv6_prefix_len > 128 {
            return Err(invalid("limits.ipv6_prefix_len", "must be between 0 and 128"));
        }
        positive("timeouts.header_read_ms", self.timeouts.header_read_ms)?;
        positive("timeouts.tls_handshake_ms", self.timeouts.tls_handshake_ms)?;
        positive("timeouts.websocket_upgrade_ms", self.timeouts.websocket_upgrade_ms)?;
        positive("timeouts.first_message_ms", self.timeouts.first_message_ms)?;
        positive("timeouts.write_ms", self.timeouts.write_ms)?;
        positive("network.max_pending_per_ip", self.network.max_pending_per_ip as u64)?;
        positive("network.max_pending_total", self.network.max_pending_total as u64)?;
        positive(
            "network.password_attempts_per_minute_per_ip",
            self.network.password_attempts_per_minute_per_ip.into(),
        )?;
        positive("network.register_attempts_per_ip", self.network.register_attempts_per_ip as u64)?;
        positive("network.register_window_s", self.network.register_window_s)?;
        positive("history.prune_interval_s", self.history.prune_interval_s)?;
        if !(2..=128).contains(&self.webrtc.max_participants) {
            return Err(invalid("webrtc.max_participants", "must be between 2 and 128"));
        }
        self.turn_config()?;
        self.admin.validate()?;
        Ok(())
    }
}

/// Turns `[("chat.admins", v)]` into `{"chat": {"admins": v}}`, a layer `config` can read.
fn nest_dotted(pairs: Vec<(String, Value)>) -> Value {
    let mut root = serde_json::Map::new();
    for (key, value) in pairs {
        let mut parts: Vec<&str> = key.split('.').collect();
        let last = parts.pop().unwrap_or_default();
        let mut node = &mut root;
        for part in parts {
            let entry = node.entry(part.to_string()).or_insert_with(|| Value::Object(Default::default()));
            if !entry.is_object() {
                *entry = Value::Object(Default::default());
            }
            let Value::Object(map) = entry else { unreachable!("just made an object") };
            node = map;
        }
        node.insert(last.to_string(), value);
    }
    Value::Object(root)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn changed_keys_names_every_differing_leaf() {
        let a = Settings::defaults();
        let mut b = a.clone();
        assert!(changed_keys(&a, &b).is_empty());
        b.server.motd = "hello".into();
        b.limits.ipv6_prefix_len = 56;
        b.network.allowed_origins.push("https://x.example".into());
        assert_eq!(
            changed_keys(&a, &b),
            ["limits.ipv6_prefix_len", "network.allowed_origins", "server.motd"]
        );
    }

    #[test]
    fn embedded_defaults_are_valid_and_match_the_documented_values() {
        let s = Settings::defaults();
        s.validate().unwrap();
        assert_eq!(s.server.port, 3000);
        assert_eq!(s.server.host, "0.0.0.0");
        assert_eq!(s.chat.history_limit, 100);
        assert_eq!(s.chat.max_messages_per_second, 3);
        assert_eq!(s.turn.credential_ttl_s, 600);
        assert_eq!(s.turn.allocations_per_user(s.webrtc.max_participants), 14);
        // force_relay is on by default, and with it the policy is own-relays.
        assert!(s.webrtc.force_relay);
        assert_eq!(s.turn_config().unwrap().peer_policy, PeerPolicyKind::OwnRelays);
    }

    #[test]
    fn js_chat_server_settings_json_maps_onto_our_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("settings.json");
        std::fs::write(
            &path,
            r#"{"port": 4123, "serverName": "Old", "motd": "hi", "authentication": true,
                "maxMessagesPerSecond": 5, "nickChangeCooldown": 1000,
                "heartbeat": {"interval": 1000, "timeout": 5000},
                "connectionLimits": {"totalMaxConnections": 50, "maxConnectionsPerIP": 2},
                "webrtc": {"maxParticipants": 4, "forceRelay": false}, "unknownThing": 1}"#,
        )
        .unwrap();
        let s = Settings::load(&Sources { config_file: Some(path), port: None }).unwrap();
        assert_eq!(s.server.port, 4123);
        assert_eq!(s.server.server_name, "Old");
        assert!(s.chat.authentication);
        assert_eq!(s.chat.max_messages_per_second, 5);
        assert_eq!(s.chat.heartbeat_timeout_ms, 5000);
        assert_eq!(s.limits.max_connections_per_ip, 2);
        assert_eq!(s.webrtc.max_participants, 4);
        assert!(!s.webrtc.force_relay);
    }

    fn load_json(dir: &Path, json: &str) -> Settings {
        let path = dir.join("settings.json");
        std::fs::write(&path, json).unwrap();
        Settings::load(&Sources { config_file: Some(path), port: None }).unwrap()
    }

    #[test]
    fn the_originals_flat_keys_keep_their_meaning() {
        let dir = tempfile::tempdir().unwrap();
        let s = load_json(
            dir.path(),
            r#"{"port": 8443, "serverName": "Old", "motd": "hi", "authentication": true,
                "maxMessagesPerSecond": 4, "nickChangeCooldown": 1500,
                "connectionWindowMs": 2500, "maxConnectionsPerWindow": 6,
                "maxTotalConnections": 3, "totalMaxConnections": 100000,
                "heartbeatInterval": 1000, "heartbeatTimeout": 2500,
                "wss": {"enabled": false, "key": "certs/key.pem", "cert": "certs/cert.pem"},
                "webrtc": {"enabled": true, "maxParticipants": 4, "allowVideo": true,
                           "allowScreenShare": true, "forceRelay": false},
                "churnGuard": {"enabled": true, "windowMs": 1000, "maxCycles": 7, "blockDurationMs": 900}}"#,
        );
        assert_eq!(s.server.port, 8443);
        assert_eq!((s.server.server_name.as_str(), s.server.motd.as_str()), ("Old", "hi"));
        assert!(s.chat.authentication);
        assert_eq!(s.chat.max_messages_per_second, 4);
        assert_eq!(s.chat.nick_change_cooldown_ms, 1500);
        assert_eq!(s.limits.connection_window_ms, 2500);
        assert_eq!(s.limits.max_connections_per_window, 6);
        assert_eq!(s.limits.max_connections_per_ip, 3, "maxTotalConnections is the per-IP cap");
        assert_eq!(s.limits.total_max_connections, 100000);
        assert_eq!((s.chat.heartbeat_interval_ms, s.chat.heartbeat_timeout_ms), (1000, 2500));
        assert!(!s.server.tls.is_enabled());
        let w = &s.webrtc;
        assert_eq!(
            (w.enabled, w.max_participants, w.allow_video, w.allow_screen_share, w.force_relay),
            (true, 4, true, true, false)
        );
        assert!(s.turn.enabled);
        let g = &s.limits.churn_guard;
        assert_eq!((g.enabled, g.window_ms, g.max_cycles, g.block_duration_ms), (true, 1000, 7, 900));
    }

    #[test]
    fn absent_and_falsy_keys_take_the_originals_fallbacks() {
        let dir = tempfile::tempdir().unwrap();
        let s = load_json(dir.path(), r#"{"port": 0, "maxTotalConnections": 0, "heartbeatTimeout": null}"#);
        assert_eq!(s.server.port, 3000, "`settings.port || 3000`");
        assert_eq!(s.server.server_name, "relaychat", "ours: the original reports none");
        assert_eq!(s.chat.max_messages_per_second, 5);
        assert_eq!(s.chat.nick_change_cooldown_ms, 60000);
        assert_eq!(s.limits.total_max_connections, 20);
        assert_eq!(s.limits.max_connections_per_ip, 4);
        assert_eq!(s.limits.max_connections_per_window, 2);
        assert_eq!(s.limits.connection_window_ms, 30000);
        assert_eq!(s.chat.heartbeat_timeout_ms, 120000);
        let g = &s.limits.churn_guard;
        assert_eq!((g.enabled, g.window_ms, g.max_cycles, g.block_duration_ms), (true, 300000, 5, 600000));
        assert!(!s.webrtc.enabled && !s.webrtc.allow_video && !s.turn.enabled);
        assert!(s.webrtc.force_relay, "ours: an omitted forceRelay fails towards privacy");
        // nickChangeCooldown is read as-is (`typeof === 'number'`): 0 means no cooldown.
        assert_eq!(load_json(dir.path(), r#"{"nickChangeCooldown": 0}"#).chat.nick_change_cooldown_ms, 0);
    }

    #[test]
    fn flat_keys_win_over_the_server_info_aliases() {
        let dir = tempfile::tempdir().unwrap();
        let s = load_json(
            dir.path(),
            r#"{"heartbeat": {"interval": 1000, "timeout": 9000}, "heartbeatTimeout": 5000,
                "connectionLimits": {"maxConnectionsPerIP": 9, "connectionWindowMs": 7000}}"#,
        );
        assert_eq!((s.chat.heartbeat_interval_ms, s.chat.heartbeat_timeout_ms), (1000, 5000));
        assert_eq!((s.limits.max_connections_per_ip, s.limits.connection_window_ms), (9, 7000));
    }

    #[test]
    fn wss_paths_are_relative_to_the_settings_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = load_json(dir.path(), r#"{"wss": {"enabled": true, "cert": "tls/c.pem"}}"#);
        assert_eq!(s.server.tls.cert_file, dir.path().join("tls/c.pem").display().to_string());
        assert_eq!(s.server.tls.key_file, dir.path().join("certs/key.pem").display().to_string());
    }

    #[test]
    fn admins_json_beside_the_settings_is_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("admins.json"), r#"["admin", "Root"]"#).unwrap();
        assert_eq!(load_json(dir.path(), "{}").chat.admins, ["admin", "Root"]);
        assert_eq!(load_json(dir.path(), r#"{"admins": ["Only"]}"#).chat.admins, ["Only"]);
        std::fs::write(dir.path().join("admins.json"), "not json").unwrap();
        let path = dir.path().join("settings.json");
        std::fs::write(&path, "{}").unwrap();
        let err = Settings::load(&Sources { config_file: Some(path), port: None }).unwrap_err();
        assert!(err.to_string().contains("admins.json"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[turn]\ndenied_peer_cidrs = [\"10.0.0.0/33\"]\n").unwrap();
        let err = Settings::load(&Sources { config_file: Some(path.clone()), port: None }).unwrap_err();
        assert!(err.to_string().contains("turn.denied_peer_cidrs"), "{err}");
        std::fs::write(&path, "[server]\nport = \"abc\"\n").unwrap();
        let err = Settings::load(&Sources { config_file: Some(path), port: None }).unwrap_err();
        assert!(err.to_string().contains("port"), "{err}");
    }

    #[test]
    fn cli_port_wins_over_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[server]\nport = 5000\n").unwrap();
        let s = Settings::load(&Sources { config_file: Some(path), port: Some(0) }).unwrap();
        assert_eq!(s.server.port, 0);
    }
}
