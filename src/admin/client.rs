//! `relaychat admin ...`: calls the admin API of a running server and prints the answer, in
//! words by default or as the raw JSON with `--json`.
//!
//! Where and how: `--url` (default: `[admin] listen` of the same configuration, a wildcard
//! address replaced by loopback) and `--token-file` (default: `[admin] token` / `token_file` /
//! `RELAYCHAT__ADMIN__TOKEN`). The HTTP/1.1 client is hyper's, already a dependency; plain
//! `http://` only (put the API on loopback, or reach it through SSH or a VPN).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use super::routes::PREFIX;
use crate::config::Settings;

/// How long one request may take, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The admin API, e.g. http://127.0.0.1:3001 (default: from [admin] listen).
    #[arg(long)]
    pub url: Option<String>,
    /// A file holding the bearer token (default: [admin] token / token_file).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Print the API's JSON reply as it is.
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub action: AdminAction,
}

#[derive(Debug, Subcommand)]
pub enum AdminAction {
    /// Who is online: name, since when, in voice, muted.
    Sessions {
        /// Show each session's client address too.
        #[arg(long)]
        addresses: bool,
    },
    /// The voice room and who is in it.
    Rooms,
    /// Disconnect a user (they may come back; see ban).
    Kick {
        name: String,
    },
    /// Disconnect a user and keep the name out.
    Ban {
        name: String,
        /// For how long: 30m, 24h, 7d, 90 (seconds). Default: until unbanned (stored).
        #[arg(long = "for", value_parser = crate::cli::parse_lifetime)]
        duration: Option<Duration>,
    },
    Unban {
        name: String,
    },
    /// Stop a user's chat messages (voice cannot be muted by a mesh server; see revoke-turn).
    Mute {
        name: String,
        /// For how long: 30m, 24h, 7d. Default: until unmuted.
        #[arg(long = "for", value_parser = crate::cli::parse_lifetime)]
        duration: Option<Duration>,
    },
    Unmute {
        name: String,
    },
    /// Send a notice to everyone online (stored in the history).
    Broadcast {
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
    },
    /// Take a user out of voice now: their TURN credentials refused, allocations deleted, no
    /// rejoining for the given time.
    RevokeTurn {
        name: String,
        /// How long they stay out of voice: 30m, 24h, 7d. Default: 1h.
        #[arg(long = "for", value_parser = crate::cli::parse_lifetime)]
        duration: Option<Duration>,
    },
    /// Replace the TURN secret; live calls keep working through the grace period.
    RotateTurnSecret,
}

/// Runs one `relaychat admin` command.
pub fn run(settings: &Settings, args: AdminArgs) -> anyhow::Result<()> {
    let base = match &args.url {
        Some(url) => url.clone(),
        None => default_url(settings)?,
    };
    let token = match &args.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the token file {}", path.display()))?
                .trim()
                .to_string(),
        ),
        None => settings.admin.resolve_token().with_context(|| {
            "cannot read the admin token from the configuration; pass --token-file FILE".to_string()
        })?,
    };
    let (method, path, body) = request_of(&args.action);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (status, reply) = runtime.block_on(async {
        tokio::time::timeout(REQUEST_TIMEOUT, call(&base, token.as_deref(), method, &path, body))
            .await
            .map_err(|_| anyhow::anyhow!("no answer from {base} within {} s", REQUEST_TIMEOUT.as_secs()))?
    })?;
    if !status.is_success() {
        let message = reply["error"].as_str().map(str::to_string).unwrap_or_else(|| reply.to_string());
        bail!("{} ({})", message, status.as_u16());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
    } else {
        println!("{}", describe(&args.action, &reply));
    }
    Ok(())
}

/// `[admin] listen` as a URL; a wildcard address is reached on loopback.
fn default_url(settings: &Settings) -> anyhow::Result<String> {
    let Some(mut addr) = settings.admin.listen_addr()? else {
        bail!("the admin API is off in this configuration ([admin] listen is empty); pass --url or set it");
    };
    if addr.ip().is_unspecified() {
        let loopback: std::net::IpAddr =
            if addr.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() };
        addr.set_ip(loopback);
    }
    Ok(format!("http://{addr}"))
}

fn request_of(action: &AdminAction) -> (Method, String, Option<Value>) {
    let user = |name: &str, what: &str| format!("{PREFIX}users/{name}/{what}");
    let with_duration =
        |duration: &Option<Duration>| Some(json!({ "duration_s": duration.map(|d| d.as_secs()) }));
    match action {
        AdminAction::Sessions { addresses: true } => {
            (Method::GET, format!("{PREFIX}sessions?addresses=true"), None)
        }
        AdminAction::Sessions { addresses: false } => (Method::GET, format!("{PREFIX}sessions"), None),
        AdminAction::Rooms => (Method::GET, format!("{PREFIX}rooms"), None),
        AdminAction::Kick { name } => (Method::POST, user(name, "kick"), None),
        AdminAction::Ban { name, duration } => (Method::POST, user(name, "ban"), with_duration(duration)),
        AdminAction::Unban { name } => (Method::DELETE, user(name, "ban"), None),
        AdminAction::Mute { name, duration } => (Method::POST, user(name, "mute"), with_duration(duration)),
        AdminAction::Unmute { name } => (Method::DELETE, user(name, "mute"), None),
        AdminAction::Broadcast { text } => {
            (Method::POST, format!("{PREFIX}broadcast"), Some(json!({ "text": text.join(" ") })))
        }
        AdminAction::RevokeTurn { name, duration } => {
            (Method::POST, user(name, "revoke-turn"), with_duration(duration))
        }
        AdminAction::RotateTurnSecret => (Method::POST, format!("{PREFIX}turn/rotate-secret"), None),
    }
}

/// One request over a fresh connection; the status and the JSON reply.
pub async fn call(
    base: &str,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<(hyper::StatusCode, Value)> {
    let authority = base
        .strip_prefix("http://")
        .with_context(|| format!("{base}: only http:// URLs are supported"))?
        .trim_end_matches('/');
    let addr: SocketAddr = tokio::net::lookup_host(authority)
        .await
        .with_context(|| format!("cannot resolve {authority}"))?
        .next()
        .with_context(|| format!("{authority} resolves to no address"))?;
    let stream = tokio::net::TcpStream::connect(addr).await.with_context(|| {
        format!("cannot connect to the admin API at {addr} (is the server running with [admin] listen set?)")
    })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut request = Request::builder().method(method).uri(path).header(HOST, authority);
    if let Some(token) = token {
        request = request.header(AUTHORIZATION, format!("Bearer {token}"));
    }
    let body = match body {
        Some(body) => {
            request = request.header(CONTENT_TYPE, "application/json");
            Bytes::from(body.to_string())
        }
        None => Bytes::new(),
    };
    let response = sender.send_request(request.body(Full::new(body))?).await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    let reply = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| json!({ "error": String::from_utf8_lossy(&bytes) }));
    Ok((status, reply))
}

/// The reply in words.
fn describe(action: &AdminAction, reply: &Value) -> String {
    let text = |key: &str| reply[key].as_str().unwrap_or("?").to_string();
    let until = |key: &str| match reply[key].as_str() {
        Some(until) => format!(" until {until}"),
        None => String::new(),
    };
    match action {
        AdminAction::Sessions { .. } => describe_sessions(reply),
        AdminAction::Rooms => describe_rooms(reply),
        AdminAction::Kick { .. } => {
            let voice = if reply["was_in_voice"] == true { " (was in voice)" } else { "" };
            format!("kicked {}{voice}", text("kicked"))
        }
        AdminAction::Ban { .. } => {
            let online = if reply["was_online"] == true { ", disconnected" } else { "" };
            let until = match reply["until"].as_str() {
                Some(until) => format!(" until {until} (in memory: a restart lifts it)"),
                None => " until unbanned".to_string(),
            };
            format!("banned {}{until}{online}", text("banned"))
        }
        AdminAction::Unban { .. } => format!("unbanned {}", text("unbanned")),
        AdminAction::Mute { .. } => {
            let until = match reply["until"].as_str() {
                Some(until) => format!(" until {until}"),
                None => " until unmuted".to_string(),
            };
            format!("muted {}{until}", text("muted"))
        }
        AdminAction::Unmute { .. } => format!("unmuted {}", text("unmuted")),
        AdminAction::Broadcast { .. } => format!("notice sent to {} user(s)", reply["delivered_to"]),
        AdminAction::RevokeTurn { .. } => format!(
            "revoked TURN access of {}: {} allocation(s) deleted, {}, kept out of voice{}",
            text("revoked"),
            reply["turn_allocations_deleted"],
            if reply["removed_from_voice"] == true { "removed from the call" } else { "was not in a call" },
            until("voice_blocked_until"),
        ),
        AdminAction::RotateTurnSecret => format!(
            "TURN secret rotated: {} participant(s) got fresh credentials; the previous secret is accepted{}",
            reply["credentials_pushed_to"],
            until("previous_secret_accepted_until"),
        ),
    }
}

fn describe_sessions(reply: &Value) -> String {
    let empty = Vec::new();
    let sessions = reply["sessions"].as_array().unwrap_or(&empty);
    let with_address = sessions.iter().any(|s| s.get("address").is_some());
    let mut lines = vec![format!(
        "{:<20} {:<24} {:<5} {:<24}{}",
        "NAME",
        "CONNECTED SINCE",
        "VOICE",
        "MUTED UNTIL",
        if with_address { " ADDRESS" } else { "" }
    )];
    for s in sessions {
        lines.push(format!(
            "{:<20} {:<24} {:<5} {:<24}{}",
            s["name"].as_str().unwrap_or("?"),
            s["connected_since"].as_str().unwrap_or("?"),
            if s["in_voice"] == true { "yes" } else { "no" },
            s["muted_until"].as_str().unwrap_or("-"),
            s["address"].as_str().map(|a| format!(" {a}")).unwrap_or_default(),
        ));
    }
    lines.push(format!("{} online, {} not logged in", sessions.len(), reply["not_logged_in"]));
    lines.join("\n")
}

fn describe_rooms(reply: &Value) -> String {
    let empty = Vec::new();
    let mut lines = Vec::new();
    for room in reply["rooms"].as_array().unwrap_or(&empty) {
        let members = room["members"].as_array().unwrap_or(&empty);
        lines.push(format!(
            "{} ({}/{}):",
            room["name"].as_str().unwrap_or("?"),
            members.len(),
            room["max_participants"]
        ));
        for m in members {
            let media: Vec<&str> =
                m["media_types"].as_array().unwrap_or(&empty).iter().filter_map(Value::as_str).collect();
            lines.push(format!(
                "  {} [{}] in the call for {} s",
                m["name"].as_str().unwrap_or("?"),
                media.join(", "),
                m["in_call_for_s"]
            ));
        }
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_map_to_the_documented_endpoints() {
        let ban = AdminAction::Ban { name: "bob".into(), duration: Some(Duration::from_secs(3600)) };
        assert_eq!(
            request_of(&ban),
            (Method::POST, "/api/v1/users/bob/ban".to_string(), Some(json!({"duration_s": 3600})))
        );
        assert_eq!(request_of(&AdminAction::Unmute { name: "bob".into() }).0, Method::DELETE);
        assert_eq!(
            request_of(&AdminAction::Broadcast { text: vec!["back".into(), "soon".into()] }).2,
            Some(json!({"text": "back soon"}))
        );
        assert_eq!(request_of(&AdminAction::RotateTurnSecret).1, "/api/v1/turn/rotate-secret");
    }

    #[test]
    fn the_default_url_reaches_a_wildcard_listener_on_loopback() {
        let mut settings = Settings::defaults();
        assert!(default_url(&settings).is_err());
        settings.admin.listen = "0.0.0.0:3001".into();
        assert_eq!(default_url(&settings).unwrap(), "http://127.0.0.1:3001");
        settings.admin.listen = "[::1]:3001".into();
        assert_eq!(default_url(&settings).unwrap(), "http://[::1]:3001");
    }
}
