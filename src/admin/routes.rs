//! The admin endpoints: one HTTP request in, one JSON reply out (docs/ADMIN.md lists them).
//!
//! Every reply is JSON, errors included (`{"error": "..."}` with the matching status). The
//! token is checked before anything else is read; bodies are capped at [`MAX_BODY_BYTES`] and
//! parsed into typed shapes that refuse unknown keys, so a typo (`"duraton_s"`) is an error
//! rather than a ban without end.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::AdminState;
use crate::hub::{is_valid_username, AdminError, AdminRequest};
use crate::turn::secret::{replace_secret, RotationError};

/// Request bodies larger than this are refused (413): every body here is a few dozen bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// How long TURN access stays revoked when the request names no duration.
pub const DEFAULT_REVOKE: Duration = Duration::from_secs(3600);
/// The longest duration accepted for a ban, mute or revocation (ten years).
const MAX_DURATION_S: u64 = 10 * 365 * 86_400;
/// The path every endpoint lives under.
pub const PREFIX: &str = "/api/v1/";

type Reply = (StatusCode, Value);

fn error(status: StatusCode, message: impl Into<String>) -> Reply {
    (status, json!({ "error": message.into() }))
}

/// A body that may carry a duration (ban, mute, revoke-turn).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DurationBody {
    duration_s: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastBody {
    text: String,
}

/// Answers one request.
pub async fn handle(
    state: &AdminState,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (status, body) = answer(state, peer, request).await;
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"relaychat admin\""));
    }
    response
}

async fn answer(state: &AdminState, peer: SocketAddr, request: Request<Incoming>) -> Reply {
    if let Some(token) = &state.token {
        let authorization = request.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes);
        if !token.accepts(authorization) {
            tracing::warn!(%peer, "admin api: request without the right bearer token refused");
            return error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token (Authorization: Bearer <token>)",
            );
        }
    }
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let declared =
        request.headers().get(hyper::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
    if declared.is_some_and(|len: usize| len > MAX_BODY_BYTES) {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {MAX_BODY_BYTES} bytes"),
        );
    }
    let body = match Limited::new(request.into_body(), MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {MAX_BODY_BYTES} bytes"),
            )
        }
    };
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {path} (the API lives under {PREFIX})"),
        );
    };
    let segments: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    let reply = route(state, &method, &segments, &query, &body).await;
    if method != Method::GET {
        tracing::info!(%peer, "admin api: {method} {path} -> {}", reply.0.as_u16());
    }
    reply
}

async fn route(state: &AdminState, method: &Method, segments: &[&str], query: &str, body: &[u8]) -> Reply {
    match (segments, method) {
        (["sessions"], &Method::GET) => {
            let show_addresses = form_urlencoded::parse(query.as_bytes())
                .any(|(key, value)| key == "addresses" && (value == "true" || value == "1"));
            let mut reply = to_hub(state, AdminRequest::Sessions { show_addresses }).await;
            if let (StatusCode::OK, Some(relay)) = (reply.0, &state.relay) {
                super::turn_usage::attach(&mut reply.1, &relay.allocations(), show_addresses);
            }
            reply
        }
        (["rooms"], &Method::GET) => to_hub(state, AdminRequest::Rooms).await,
        (["users", name, "kick"], &Method::POST) => {
            to_hub(state, AdminRequest::Kick { name: name.to_string() }).await
        }
        (["users", name, "ban"], &Method::POST) => match duration(body) {
            Ok(duration) => to_hub(state, AdminRequest::Ban { name: name.to_string(), duration }).await,
            Err(reply) => reply,
        },
        (["users", name, "ban"], &Method::DELETE) => {
            to_hub(state, AdminRequest::Unban { name: name.to_string() }).await
        }
        (["users", name, "mute"], &Method::POST) => match duration(body) {
            Ok(duration) => to_hub(state, AdminRequest::Mute { name: name.to_string(), duration }).await,
            Err(reply) => reply,
        },
        (["users", name, "mute"], &Method::DELETE) => {
            to_hub(state, AdminRequest::Unmute { name: name.to_string() }).await
        }
        (["users", name, "revoke-turn"], &Method::POST) => match duration(body) {
            Ok(duration) => revoke_turn(state, name, duration.unwrap_or(DEFAULT_REVOKE)).await,
            Err(reply) => reply,
        },
        (["broadcast"], &Method::POST) => match parse_body::<BroadcastBody>(body) {
            Ok(BroadcastBody { text }) => to_hub(state, AdminRequest::Broadcast { text }).await,
            Err(reply) => reply,
        },
        (["turn", "rotate-secret"], &Method::POST) => rotate_turn_secret(state).await,
        (["sessions"] | ["rooms"], _)
        | (["users", _, "kick" | "ban" | "mute" | "revoke-turn"], _)
        | (["broadcast"] | ["turn", "rotate-secret"], _) => {
            error(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed here (see docs/ADMIN.md)"))
        }
        _ => error(StatusCode::NOT_FOUND, format!("no such endpoint: {PREFIX}{}", segments.join("/"))),
    }
}

/// Parses a JSON object body; an empty body is `{}`.
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Reply> {
    let body = if body.iter().all(u8::is_ascii_whitespace) { b"{}".as_slice() } else { body };
    let invalid = |e: serde_json::Error| error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}"));
    match serde_json::from_slice::<Value>(body).map_err(invalid)? {
        object @ Value::Object(_) => serde_json::from_value(object).map_err(invalid),
        _ => Err(error(StatusCode::BAD_REQUEST, "the body must be a JSON object")),
    }
}

/// The optional `duration_s` of a body (whole seconds, 1 s to ten years).
fn duration(body: &[u8]) -> Result<Option<Duration>, Reply> {
    let DurationBody { duration_s } = parse_body(body)?;
    match duration_s {
        None => Ok(None),
        Some(seconds) if (1..=MAX_DURATION_S).contains(&seconds) => Ok(Some(Duration::from_secs(seconds))),
        Some(_) => Err(error(
            StatusCode::BAD_REQUEST,
            format!("duration_s must be between 1 and {MAX_DURATION_S} (leave it out for no end)"),
        )),
    }
}

async fn ask_hub(state: &AdminState, request: AdminRequest) -> Result<Value, Reply> {
    match state.hub.admin(request).await {
        Some(Ok(value)) => Ok(value),
        Some(Err(e)) => Err(hub_error(e)),
        None => Err(error(StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down")),
    }
}

async fn to_hub(state: &AdminState, request: AdminRequest) -> Reply {
    match ask_hub(state, request).await {
        Ok(value) => (StatusCode::OK, value),
        Err(reply) => reply,
    }
}

fn hub_error(e: AdminError) -> Reply {
    let status = match e {
        AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
        AdminError::NotFound(_) => StatusCode::NOT_FOUND,
        AdminError::Conflict(_) => StatusCode::CONFLICT,
        AdminError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, e.to_string())
}

/// Credentials refused first (so nothing issued so far works even for a moment longer), every
/// allocation deleted (media stops), then out of the voice room (no new credentials).
async fn revoke_turn(state: &AdminState, name: &str, duration: Duration) -> Reply {
    if !is_valid_username(name) {
        return hub_error(AdminError::BadRequest(format!(
            "{name:?} is not a valid user name (3-20 letters, digits, _ or -)"
        )));
    }
    let mut deleted = 0;
    if let Some(relay) = &state.relay {
        relay.revoke_credentials(name);
        deleted += relay.delete_allocations_of(name).await;
    }
    let request = AdminRequest::RevokeTurn { name: name.to_string(), duration };
    let mut reply = match ask_hub(state, request).await {
        Ok(value) => value,
        Err(reply) => return reply,
    };
    if let Some(relay) = &state.relay {
        // Nothing new can have been allocated with a revoked credential; this sweep is for an
        // allocation that was mid-creation when the first one ran.
        deleted += relay.delete_allocations_of(name).await;
    }
    reply["credentials_revoked"] = json!(state.relay.is_some());
    reply["turn_allocations_deleted"] = json!(deleted);
    (StatusCode::OK, reply)
}

/// New secret on disk, the relay accepting old and new for the grace period, then the issuer
/// signing with the new one and everyone in voice handed fresh credentials.
async fn rotate_turn_secret(state: &AdminState) -> Reply {
    let Some(relay) = &state.relay else {
        return error(
            StatusCode::CONFLICT,
            "the integrated TURN relay is not running ([turn] enabled = false)",
        );
    };
    if state.settings.cluster.enabled() {
        // Stored in Redis and announced through the shared log: every node's relay and issuer
        // switch when they read it (this node's too), with the same grace period.
        if !state.settings.turn.secret.trim().is_empty() {
            return error(StatusCode::CONFLICT, RotationError::Configured.to_string());
        }
        let secret = hex::encode(rand::random::<[u8; 32]>()).into_bytes();
        let mut reply = match ask_hub(state, AdminRequest::RotateTurnSecret { secret }).await {
            Ok(value) => value,
            Err(reply) => return reply,
        };
        reply["rotated"] = json!(true);
        return (StatusCode::OK, reply);
    }
    let secret = match replace_secret(&state.settings) {
        Ok(secret) => secret,
        Err(e @ RotationError::Configured) => return error(StatusCode::CONFLICT, e.to_string()),
        Err(e) => {
            tracing::error!("admin api: {e}");
            return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        }
    };
    let grace_s = match state.settings.admin.turn_secret_grace_s {
        0 => state.settings.turn.credential_ttl_s,
        grace => grace,
    };
    let previous_until = relay.rotate_secret(secret.clone(), grace_s);
    let mut reply = match ask_hub(state, AdminRequest::RotateTurnSecret { secret }).await {
        Ok(value) => value,
        Err(reply) => return reply,
    };
    let until = chrono::DateTime::from_timestamp(i64::try_from(previous_until).unwrap_or(i64::MAX), 0)
        .map(crate::protocol::iso_timestamp);
    reply["rotated"] = json!(true);
    reply["grace_s"] = json!(grace_s);
    reply["previous_secret_accepted_until"] = json!(until);
    (StatusCode::OK, reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_whole_seconds_within_bounds_and_typos_are_errors() {
        assert_eq!(duration(b"").unwrap(), None);
        assert_eq!(duration(b"{}").unwrap(), None);
        assert_eq!(duration(br#"{"duration_s": 90}"#).unwrap(), Some(Duration::from_secs(90)));
        for bad in
            [&br#"{"duration_s": 0}"#[..], br#"{"duration_s": -1}"#, br#"{"duraton_s": 5}"#, b"[1]", b"{"]
        {
            let (status, body) = duration(bad).unwrap_err();
            assert_eq!(status, StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(bad));
            assert!(body["error"].is_string());
        }
    }
}
