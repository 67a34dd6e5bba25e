//! TURN credentials as a client receives them in `iceServers`, checked independently of the
//! server: the REST username `<expiry>:<name>:<session tag>`, the expiry against the TTL, and
//! the credential recomputed here as base64(HMAC-SHA1(secret, username)).

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha1::Sha1;

use super::Server;

pub const SECRET: &str = "signaling-test-secret";

pub fn secret_config(extra_turn: &str) -> String {
    format!("[turn]\nsecret = \"{SECRET}\"\n{extra_turn}\n")
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

pub fn turn_credential(secret: &str, username: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

pub fn turn_port(server: &Server) -> u16 {
    let udp = server.turn_udp.expect("integrated TURN relay listening").port();
    if let Some(tcp) = server.turn_tcp {
        // One port in the URLs: `?transport=tcp` must reach the TCP listener on it.
        assert_eq!(tcp.port(), udp, "TURN TCP and UDP listen on the same port");
    }
    udp
}

/// Checks an `iceServers` list from our integrated relay: both URLs naming `host`, a REST
/// username `<expiry>:<name>` with expiry about now + ttl, and a credential that verifies
/// against `SECRET`. Returns the expiry.
pub fn check_ice_servers(servers: &Value, host: &str, port: u16, name: &str, ttl: u64) -> u64 {
    let list = servers.as_array().expect("iceServers is an array");
    assert_eq!(list.len(), 1, "{servers}");
    let server = &list[0];
    assert_eq!(server.as_object().unwrap().len(), 3, "urls, username, credential only: {server}");
    assert_eq!(
        server["urls"],
        json!([format!("turn:{host}:{port}?transport=udp"), format!("turn:{host}:{port}?transport=tcp")])
    );
    let username = server["username"].as_str().expect("username");
    let (expiry, user) = username.split_once(':').expect("<expiry>:<name>:<session tag>");
    let tag = user.strip_prefix(&format!("{name}:")).expect("<expiry>:<name>:<session tag>");
    assert!(tag.len() == 8 && tag.bytes().all(|b| b.is_ascii_hexdigit()), "{username}");
    let expiry: u64 = expiry.parse().expect("expiry is unix seconds");
    let now = unix_now();
    assert!(expiry + 5 >= now + ttl && expiry <= now + ttl + 1, "expiry {expiry}, now {now}, ttl {ttl}");
    let credential = server["credential"].as_str().expect("credential");
    assert_eq!(
        credential,
        turn_credential(SECRET, username),
        "credential = base64(HMAC-SHA1(secret, username))"
    );
    assert_ne!(credential, turn_credential("some-other-secret", username));
    expiry
}
