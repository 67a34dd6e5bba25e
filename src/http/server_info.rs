//! `GET`/`HEAD /server-info` and `/info`: public facts about this server, never a secret.

use serde_json::{json, Value};

use crate::config::Settings;
use crate::hub::Stats;

pub fn server_info(settings: &Settings, port: u16, stats: Stats) -> Value {
    let (chat, limits, webrtc) = (&settings.chat, &settings.limits, &settings.webrtc);
    json!({
        "serverName": settings.server.server_name,
        "motd": settings.server.motd,
        "port": port,
        "authentication": chat.authentication,
        "maxMessagesPerSecond": chat.max_messages_per_second,
        "nickChangeCooldown": chat.nick_change_cooldown_ms,
        "connectionLimits": {
            "totalMaxConnections": limits.total_max_connections,
            "maxConnectionsPerIP": limits.max_connections_per_ip,
            "maxConnectionsPerWindow": limits.max_connections_per_window,
            "connectionWindowMs": limits.connection_window_ms,
        },
        "heartbeat": { "interval": chat.heartbeat_interval_ms, "timeout": chat.heartbeat_timeout_ms },
        "webrtc": {
            "enabled": webrtc.enabled,
            "maxParticipants": webrtc.max_participants,
            "allowVideo": webrtc.allow_video,
            "allowScreenShare": webrtc.allow_screen_share,
            "forceRelay": webrtc.force_relay,
        },
        "currentStats": {
            "connectedUsers": stats.connected_users,
            "voiceParticipants": stats.voice_participants,
        },
    })
}
