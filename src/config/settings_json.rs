//! The original's `settings.json`, read as js-chat-server reads it: flat keys, its meanings and
//! its fallbacks for absent keys, `wss` paths relative to the file, `admins.json` beside it. The
//! result is a list of `section.key` overrides that `Settings` layers over the defaults, so every
//! later layer (environment, flags) still wins. Documented in docs/PROTOCOL.md section 10.

use std::path::Path;

use serde_json::Value;

use super::{invalid, ConfigError};

/// A js-chat-server settings file is JSON; everything else is read as TOML.
pub(super) fn is_js_settings(path: &Path) -> bool {
    path.extension().is_some_and(|ext| ext.eq_ignore_ascii_case("json"))
}

/// What js-chat-server does when a key is absent from its `settings.json`, as our keys. A file
/// given to relaychat means the original's semantics, so these replace our defaults wherever the
/// two differ; an operator who moves over gets the limits they had, and no voice (or TURN ports)
/// they never enabled. Kept deliberately: our `serverName` (the original reports nothing) and
/// `webrtc.forceRelay = true` (the original treats an absent value as off; relay-only is this
/// server's promise, so an omission fails towards privacy).
const ORIGINAL_FALLBACKS: &[(&str, JsValue)] = &[
    ("server.port", JsValue::Int(3000)),
    ("server.motd", JsValue::Str("")),
    ("chat.authentication", JsValue::Bool(false)),
    ("chat.max_messages_per_second", JsValue::Int(5)),
    ("chat.nick_change_cooldown_ms", JsValue::Int(60000)),
    ("chat.heartbeat_interval_ms", JsValue::Int(30000)),
    ("chat.heartbeat_timeout_ms", JsValue::Int(120000)),
    ("limits.total_max_connections", JsValue::Int(20)),
    ("limits.max_connections_per_ip", JsValue::Int(4)),
    ("limits.max_connections_per_window", JsValue::Int(2)),
    ("limits.connection_window_ms", JsValue::Int(30000)),
    ("limits.churn_guard.enabled", JsValue::Bool(true)),
    ("limits.churn_guard.window_ms", JsValue::Int(300000)),
    ("limits.churn_guard.max_cycles", JsValue::Int(5)),
    ("limits.churn_guard.block_duration_ms", JsValue::Int(600000)),
    ("webrtc.enabled", JsValue::Bool(false)),
    ("webrtc.max_participants", JsValue::Int(8)),
    ("webrtc.allow_video", JsValue::Bool(false)),
    ("webrtc.allow_screen_share", JsValue::Bool(false)),
];

/// A constant JSON value (`serde_json::Value` cannot be built in a `const`).
enum JsValue {
    Int(u64),
    Bool(bool),
    Str(&'static str),
}

impl JsValue {
    fn to_value(&self) -> Value {
        match self {
            JsValue::Int(n) => Value::from(*n),
            JsValue::Bool(b) => Value::from(*b),
            JsValue::Str(s) => Value::from(*s),
        }
    }
}

/// The flat top-level keys of the original (and our few additions), with how each is read.
const FLAT_KEYS: &[(&str, &str, Read)] = &[
    ("port", "server.port", Read::OrFallback),
    ("serverName", "server.server_name", Read::AsIs),
    ("motd", "server.motd", Read::AsIs),
    ("authentication", "chat.authentication", Read::AsIs),
    ("maxMessagesPerSecond", "chat.max_messages_per_second", Read::OrFallback),
    ("nickChangeCooldown", "chat.nick_change_cooldown_ms", Read::AsIs),
    ("totalMaxConnections", "limits.total_max_connections", Read::OrFallback),
    ("maxTotalConnections", "limits.max_connections_per_ip", Read::OrFallback),
    ("maxConnectionsPerWindow", "limits.max_connections_per_window", Read::OrFallback),
    ("connectionWindowMs", "limits.connection_window_ms", Read::OrFallback),
    ("heartbeatInterval", "chat.heartbeat_interval_ms", Read::OrFallback),
    ("heartbeatTimeout", "chat.heartbeat_timeout_ms", Read::OrFallback),
    // relaychat's own additions, for settings that have no key in the original.
    ("host", "server.host", Read::AsIs),
    ("dataDir", "server.data_dir", Read::AsIs),
    ("trustedProxies", "server.trusted_proxies", Read::AsIs),
    ("historyLimit", "chat.history_limit", Read::AsIs),
    ("admins", "chat.admins", Read::AsIs),
];

/// Keys inside the original's nested objects.
const NESTED_KEYS: &[(&str, &str, &str, Read)] = &[
    ("webrtc", "enabled", "webrtc.enabled", Read::AsIs),
    ("webrtc", "maxParticipants", "webrtc.max_participants", Read::OrFallback),
    ("webrtc", "allowVideo", "webrtc.allow_video", Read::AsIs),
    ("webrtc", "allowScreenShare", "webrtc.allow_screen_share", Read::AsIs),
    ("webrtc", "forceRelay", "webrtc.force_relay", Read::AsIs),
    ("churnGuard", "enabled", "limits.churn_guard.enabled", Read::AsIs),
    ("churnGuard", "windowMs", "limits.churn_guard.window_ms", Read::AsIs),
    ("churnGuard", "maxCycles", "limits.churn_guard.max_cycles", Read::AsIs),
    ("churnGuard", "blockDurationMs", "limits.churn_guard.block_duration_ms", Read::AsIs),
    // The shape `/server-info` reports, accepted as aliases; a flat key of the same setting wins.
    ("heartbeat", "interval", "chat.heartbeat_interval_ms", Read::Alias),
    ("heartbeat", "timeout", "chat.heartbeat_timeout_ms", Read::Alias),
    ("connectionLimits", "totalMaxConnections", "limits.total_max_connections", Read::Alias),
    ("connectionLimits", "maxConnectionsPerIP", "limits.max_connections_per_ip", Read::Alias),
    ("connectionLimits", "maxConnectionsPerWindow", "limits.max_connections_per_window", Read::Alias),
    ("connectionLimits", "connectionWindowMs", "limits.connection_window_ms", Read::Alias),
];

/// How the original reads a key.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Read {
    /// The value as written.
    AsIs,
    /// `settings.key || fallback`: 0, false, "" and null mean "use the fallback".
    OrFallback,
    /// Not a key of the original's file: the `/server-info` shape, below the flat keys.
    Alias,
}

/// JavaScript's falsy values among JSON values.
fn is_falsy(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(_) | Value::Object(_) => false,
    }
}

/// Maps a js-chat-server `settings.json` onto our keys, with the original's meaning: its flat
/// keys (`maxTotalConnections` is the per-IP cap, `totalMaxConnections` the server-wide one),
/// its nested `wss`, `webrtc` and `churnGuard`, its fallbacks for absent keys
/// (`ORIGINAL_FALLBACKS`). Unknown keys are logged by name and ignored, so an old file never
/// blocks a migration.
pub(super) fn js_settings_overrides(path: &Path) -> Result<Vec<(String, Value)>, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
    let root: Value =
        serde_json::from_str(&text).map_err(|source| ConfigError::Json { path: path.into(), source })?;
    let Value::Object(root) = root else {
        return Err(invalid("settings.json", "must be a JSON object"));
    };
    // Our key -> value; later inserts win: fallbacks < aliases < the original's keys.
    let mut layer: std::collections::BTreeMap<String, Value> =
        ORIGINAL_FALLBACKS.iter().map(|(ours, value)| (ours.to_string(), value.to_value())).collect();
    let mut aliases = Vec::new();
    let mut direct = Vec::new();
    for (key, value) in &root {
        if let Some(&(_, ours, read)) = FLAT_KEYS.iter().find(|(theirs, _, _)| theirs == key) {
            let skip = value.is_null() || (read == Read::OrFallback && is_falsy(value));
            if !skip {
                direct.push((ours.to_string(), value.clone()));
            }
            continue;
        }
        match key.as_str() {
            "wss" => wss_overrides(value, path, &mut direct),
            "webrtc" | "churnGuard" | "heartbeat" | "connectionLimits" => {
                let Value::Object(fields) = value else {
                    tracing::warn!("settings.json: key {key:?} is not an object; ignored");
                    continue;
                };
                for (field, value) in fields {
                    let entry =
                        NESTED_KEYS.iter().find(|(section, theirs, _, _)| section == key && theirs == field);
                    let Some(&(_, _, ours, read)) = entry else {
                        tracing::warn!(
                            "settings.json: key \"{key}.{field}\" has no relaychat equivalent; ignored"
                        );
                        continue;
                    };
                    if value.is_null() || (read == Read::OrFallback && is_falsy(value)) {
                        continue;
                    }
                    let target = if read == Read::Alias { &mut aliases } else { &mut direct };
                    target.push((ours.to_string(), value.clone()));
                }
            }
            other => tracing::warn!("settings.json: key {other:?} has no relaychat equivalent; ignored"),
        }
    }
    for (ours, value) in aliases.into_iter().chain(direct) {
        layer.insert(ours, value);
    }
    if !layer.contains_key("chat.admins") {
        if let Some(admins) = admins_json_beside(path)? {
            layer.insert("chat.admins".into(), admins);
        }
    }
    // The original enables voice only for `webrtc.enabled === true`; without voice the
    // integrated relay has nobody to serve, so it opens no ports either (like the original,
    // which listens on its HTTP port only). `RELAYCHAT__TURN__ENABLED` can still turn it on.
    if layer.get("webrtc.enabled") != Some(&Value::Bool(true)) {
        layer.insert("webrtc.enabled".into(), Value::Bool(false));
        layer.insert("turn.enabled".into(), Value::Bool(false));
    }
    Ok(layer.into_iter().collect())
}

/// The original keeps its moderators in `admins.json` next to `settings.json` (a JSON array of
/// names); read it from there unless the settings file names `admins` itself.
fn admins_json_beside(settings: &Path) -> Result<Option<Value>, ConfigError> {
    let path = settings.parent().unwrap_or(Path::new(".")).join("admins.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ConfigError::Read { path, source }),
    };
    let admins: Vec<String> =
        serde_json::from_str(&text).map_err(|source| ConfigError::Json { path: path.clone(), source })?;
    tracing::info!("admins from {}: {}", path.display(), admins.len());
    Ok(Some(Value::from(admins)))
}

/// `wss: {enabled, key, cert}`: TLS on the chat port, paths relative to the settings file's
/// directory (the original resolves them against its own directory, where its settings.json
/// lives), defaulting to the original's `certs/key.pem` and `certs/cert.pem`.
fn wss_overrides(value: &Value, path: &Path, out: &mut Vec<(String, Value)>) {
    let Value::Object(fields) = value else {
        tracing::warn!("settings.json: key \"wss\" is not an object; ignored");
        return;
    };
    for field in fields.keys().filter(|k| !["enabled", "key", "cert"].contains(&k.as_str())) {
        tracing::warn!("settings.json: key \"wss.{field}\" has no relaychat equivalent; ignored");
    }
    if fields.get("enabled").is_none_or(is_falsy) {
        return;
    }
    let base = path.parent().unwrap_or(Path::new("."));
    for (field, ours, fallback) in
        [("key", "server.tls.key_file", "certs/key.pem"), ("cert", "server.tls.cert_file", "certs/cert.pem")]
    {
        let file = fields.get(field).and_then(Value::as_str).unwrap_or(fallback);
        out.push((ours.to_string(), Value::from(base.join(file).display().to_string())));
    }
}
