//! Operations: health, readiness, metrics, TLS (with reload), JSON logs and the operator
//! subcommands, against the real binary.

mod common;

use std::process::Command;
use std::sync::Arc;

use common::{http_get, Server};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn health_readiness_and_metrics_move_with_traffic() {
    let server = Server::start("");
    let (head, body) = http_get(server.http, "/healthz").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "ok");
    let (head, body) = http_get(server.http, "/readyz").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}: {body}");

    let (_, before) = http_get(server.http, "/metrics").await;
    for name in [
        "relaychat_connections",
        "relaychat_users",
        "relaychat_voice_participants",
        "relaychat_messages_in_total",
        "relaychat_messages_out_total",
        "relaychat_outbound_queue_drops_total",
        "relaychat_ingress_drops_total",
        "relaychat_hub_queue_depth",
        "relaychat_runtime_tasks",
        "relaychat_heap_in_use_bytes",
        "relaychat_turn_allocations_active",
        "relaychat_turn_allocations_total",
        "relaychat_turn_relayed_bytes_total",
        "relaychat_turn_relayed_packets_total",
        "relaychat_turn_auth_failures_total",
        "relaychat_turn_denied_peers_total",
        "relaychat_turn_quota_refusals_total",
    ] {
        assert!(before.contains(&format!("\n{name}")), "{name} missing from:\n{before}");
    }
    assert!(before.contains("relaychat_turn_auth_failures_total{reason=\"expired\"}"), "{before}");
    assert!(!before.contains("127.0.0.1"), "no addresses in metrics");

    let mut alice = server.join("Alice").await;
    alice.chat("hello").await;
    alice.recv_type("chat").await;
    alice.send("webrtc-join", json!({"mediaTypes": ["audio"]})).await;
    alice.recv_type("webrtc-joined").await;
    let (_, after) = http_get(server.http, "/metrics").await;
    assert_eq!(metric(&after, "relaychat_users"), 1.0, "{after}");
    assert_eq!(metric(&after, "relaychat_connections"), 1.0);
    assert_eq!(metric(&after, "relaychat_voice_participants"), 1.0);
    assert!(metric(&after, "relaychat_messages_in_total") >= 2.0);
    assert!(metric(&after, "relaychat_messages_out_total") > metric(&before, "relaychat_messages_out_total"));
}

#[test]
fn check_config_accepts_good_files_and_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[turn]\nsecret = \"verysecret\"\n[server]\nport = 4000\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_relaychat"))
        .args(["check-config", "--config", good.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("port = 4000"), "{stdout}");
    assert!(!stdout.contains("verysecret"), "secret printed: {stdout}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[turn]\npeer_policy = \"everyone\"\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_relaychat"))
        .args(["check-config", "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("turn.peer_policy"), "{stderr}");

    let output = Command::new(env!("CARGO_BIN_EXE_relaychat"))
        .args(["check-config"])
        .env("RELAYCHAT__SERVER__PORT", "notaport")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("port"));

    let missing_key = dir.path().join("tls.toml");
    std::fs::write(
        &missing_key,
        "[server.tls]\ncert_file = \"/nonexistent.pem\"\nkey_file = \"/nonexistent.key\"\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_relaychat"))
        .args(["check-config", "--config", missing_key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent.pem"));
}

#[test]
fn check_config_parses_every_turn_value_and_names_the_bad_key() {
    let check = |env: &[(&str, &str)]| {
        Command::new(env!("CARGO_BIN_EXE_relaychat"))
            .arg("check-config")
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    // The new caps are ordinary keys, settable from the environment.
    let output = check(&[
        ("RELAYCHAT__TURN__MAX_TCP_CONNECTIONS_PER_IP", "4"),
        ("RELAYCHAT__TURN__MAX_PERMISSIONS_PER_ALLOCATION", "10"),
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("max_tcp_connections_per_ip = 4"), "{stdout}");
    assert!(stdout.contains("max_permissions_per_allocation = 10"), "{stdout}");
    // Each bad value stops the check with its key, including the ones the relay used to find
    // only when it started (an unspecified relay_ip, mixed address families).
    for (env, key) in [
        (vec![("RELAYCHAT__TURN__RELAY_IP", "0.0.0.0")], "turn.relay_ip"),
        (
            vec![("RELAYCHAT__TURN__RELAY_IP", "127.0.0.1"), ("RELAYCHAT__TURN__EXTERNAL_IP", "::1")],
            "turn.external_ip",
        ),
        (vec![("RELAYCHAT__TURN__RELAY_IP6", "127.0.0.1")], "turn.relay_ip6"),
        (vec![("RELAYCHAT__TURN__LISTEN", "3478")], "turn.listen"),
        (vec![("RELAYCHAT__TURN__DENIED_PEER_CIDRS", "10.0.0.0/8,nope")], "turn.denied_peer_cidrs"),
        (vec![("RELAYCHAT__TURN__MAX_CHANNELS_PER_ALLOCATION", "0")], "turn.max_channels_per_allocation"),
        (vec![("RELAYCHAT__TURN__MAX_TCP_CONNECTIONS_PER_IP", "0")], "turn.max_tcp_connections_per_ip"),
    ] {
        let output = check(&env);
        assert!(!output.status.success(), "{env:?} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(key), "{env:?}: {stderr}");
    }
}

#[test]
fn turn_credentials_prints_a_pair_that_verifies() {
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    let output = Command::new(env!("CARGO_BIN_EXE_relaychat"))
        .args(["turn-credentials", "--user", "alice", "--ttl", "60"])
        .env("RELAYCHAT__TURN__SECRET", "cli-secret")
        .output()
        .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let field = |name: &str| {
        stdout.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or_default().to_string()
    };
    let username = field("username:");
    let (expiry, user) = username.split_once(':').unwrap();
    assert_eq!(user, "alice");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let expiry: u64 = expiry.parse().unwrap();
    assert!(expiry > now + 50 && expiry <= now + 61);
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"cli-secret").unwrap();
    mac.update(username.as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(field("credential:"), expected);
}

#[tokio::test]
async fn json_logs_are_json() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relaychat.toml");
    std::fs::write(&config, common::merged_config("", &dir.path().join("data"))).unwrap();
    let server =
        Server::start_with_args(dir.path(), &["--config", config.to_str().unwrap(), "--log-format", "json"]);
    let log = server.log_text();
    let line = log.lines().find(|l| l.contains("http listening on")).unwrap();
    let parsed: Value = serde_json::from_str(line).expect("a JSON log line");
    assert_eq!(parsed["level"], "INFO");
}

/// A self-signed certificate for 127.0.0.1/localhost, written as PEM files.
fn write_certificate(dir: &std::path::Path) -> rcgen::CertifiedKey<rcgen::KeyPair> {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    std::fs::write(dir.join("cert.pem"), certified.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), certified.signing_key.serialize_pem()).unwrap();
    certified
}

fn tls_connector(trusted: &[&rcgen::CertifiedKey<rcgen::KeyPair>]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for certified in trusted {
        roots.add(certified.cert.der().clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

type TlsWebSocket =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Opens `wss://localhost:PORT/?username=NAME`, reads through the welcome; returns the socket
/// and the session token.
async fn wss_session(
    server: &Server,
    connector: &tokio_rustls::TlsConnector,
    name: &str,
) -> Result<(TlsWebSocket, String), String> {
    use tokio_tungstenite::tungstenite::Message;
    let tcp = tokio::net::TcpStream::connect(server.http).await.map_err(|e| e.to_string())?;
    let domain = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(domain, tcp).await.map_err(|e| e.to_string())?;
    let url = format!("wss://localhost:{}/?username={name}", server.http.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.map_err(|e| e.to_string())?;
    let mut token = String::new();
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let message: Value = serde_json::from_str(&text).unwrap();
                if message["type"] == "session-token" {
                    token = message["token"].as_str().unwrap().to_string();
                }
                if message["text"] == format!("{name} has joined.") {
                    return Ok((ws, token));
                }
            }
            other => return Err(format!("unexpected {other:?}")),
        }
    }
}

async fn ping_pong(ws: &mut TlsWebSocket, token: &str) {
    use tokio_tungstenite::tungstenite::Message;
    let ping = json!({"type": "ping", "token": token}).to_string();
    ws.send(Message::Text(ping.into())).await.unwrap();
    loop {
        match tokio::time::timeout(common::RECV_TIMEOUT, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) if text.contains("\"pong\"") => return,
            Ok(Some(Ok(_))) => continue,
            other => panic!("no pong over TLS: {other:?}"),
        }
    }
}

#[tokio::test]
async fn tls_serves_wss_and_https_and_reloads_on_sighup_without_dropping_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let first = write_certificate(dir.path());
    let config = format!(
        "[server.tls]\ncert_file = \"{0}/cert.pem\"\nkey_file = \"{0}/key.pem\"\n",
        dir.path().display()
    );
    let server = Server::start_in(dir.path(), &config);
    let trust_first = tls_connector(&[&first]);
    let (mut session, token) = wss_session(&server, &trust_first, "Alice").await.expect("wss works");
    ping_pong(&mut session, &token).await;

    // HTTPS too.
    let tcp = tokio::net::TcpStream::connect(server.http).await.unwrap();
    let domain = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = trust_first.connect(domain, tcp).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(b"GET /server-info HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    let _ = tls.read_to_string(&mut response).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"serverName\""));

    // Plain HTTP is not served on a TLS port.
    let (head, _) = tokio::time::timeout(std::time::Duration::from_secs(3), async {
        let mut tcp = tokio::net::TcpStream::connect(server.http).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = Vec::new();
        let _ = tcp.read_to_end(&mut buf).await;
        (String::from_utf8_lossy(&buf).into_owned(), ())
    })
    .await
    .unwrap_or_default();
    assert!(!head.contains("200 OK"), "{head}");

    // Renew the certificate and SIGHUP: new sessions get the new one, the old session lives on.
    let second = write_certificate(dir.path());
    Command::new("kill").args(["-HUP", &server.pid().to_string()]).status().unwrap();
    let trust_second = tls_connector(&[&second]);
    let mut renewed = None;
    for _ in 0..50 {
        if let Ok(session) = wss_session(&server, &trust_second, "Bob").await {
            renewed = Some(session);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (mut bob, bob_token) = renewed.expect("the renewed certificate is served after SIGHUP");
    ping_pong(&mut bob, &bob_token).await;
    assert!(wss_session(&server, &trust_first, "Carol").await.is_err(), "old certificate still served");
    ping_pong(&mut session, &token).await;
}
