//! The TURN credentials in `webrtc-joined` against the real binary (PROTOCOL.md section 9): they
//! verify against the configured secret (which is never handed out), the URLs name the host the
//! client used (or `public_host`), external TURN servers get their own credentials, and with TLS
//! configured a `turns:` URL leads to a listener that speaks TLS. (Their refresh before expiry is
//! proven with the clock in hand by the hub's unit tests, `hub::tests::voice`.)

mod common;

use base64::Engine as _;
use common::ice::{check_ice_servers, secret_config, turn_credential, turn_port, unix_now, SECRET};
use common::voice::join_voice;
use common::{Client, Server};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha1::Sha1;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[tokio::test]
async fn credentials_verify_against_the_configured_secret() {
    let server = Server::start(&secret_config("credential_ttl_s = 900"));
    let port = turn_port(&server);
    let mut alice = server.join("Alice").await;
    let joined = join_voice(&mut alice, "Alice", None).await;
    assert_eq!(joined["config"]["credentialTtl"], 900);
    let servers = &joined["config"]["iceServers"];
    check_ice_servers(servers, "127.0.0.1", port, "Alice", 900);
    // Computed by hand, independently of the helper above.
    let username = servers[0]["username"].as_str().unwrap();
    let mut mac = Hmac::<Sha1>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(username.as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(servers[0]["credential"], expected.as_str());
    // The secret itself is never handed out.
    assert!(!joined.to_string().contains(SECRET));
}

#[tokio::test]
async fn ice_server_urls_name_the_host_the_client_used() {
    let server = Server::start(&secret_config(""));
    let port = turn_port(&server);

    let mut local = Client::connect(&format!("ws://localhost:{}/?username=Local", server.http.port())).await;
    local.expect_system("Local has joined.").await;
    let joined = join_voice(&mut local, "Local", None).await;
    check_ice_servers(&joined["config"]["iceServers"], "localhost", port, "Local", 600);

    // What a browser behind a name (or a proxy) puts in Host: the port is stripped, IPv6 stays
    // bracketed.
    for (name, host, expected) in
        [("Named", "chat.example.org:8443", "chat.example.org"), ("Six", "[::1]:3000", "[::1]")]
    {
        let mut request = server.url(Some(name)).into_client_request().unwrap();
        request.headers_mut().insert("host", host.parse().unwrap());
        let mut client = Client::connect_with_request(request).await;
        client.expect_system(&format!("{name} has joined.")).await;
        client.send("webrtc-join", json!({})).await;
        let joined = client.recv_type("webrtc-joined").await;
        check_ice_servers(&joined["config"]["iceServers"], expected, port, name, 600);
    }
}

#[tokio::test]
async fn public_host_overrides_the_request_host() {
    let server = Server::start(&secret_config("public_host = \"turn.example.org\""));
    let port = turn_port(&server);
    let mut local = Client::connect(&format!("ws://localhost:{}/?username=Alice", server.http.port())).await;
    local.expect_system("Alice has joined.").await;
    let joined = join_voice(&mut local, "Alice", None).await;
    check_ice_servers(&joined["config"]["iceServers"], "turn.example.org", port, "Alice", 600);
}

#[tokio::test]
async fn external_turn_servers_and_no_turn_at_all() {
    let server = Server::start(
        r#"
[turn]
enabled = false

[[turn.external_servers]]
urls = ["turn:turn1.example.org:3478?transport=udp", "turns:turn1.example.org:5349?transport=tcp"]
secret = "first-secret"

[[turn.external_servers]]
urls = ["turn:turn2.example.net:3478"]
secret = "second-secret"
"#,
    );
    let mut alice = server.join("Alice").await;
    let joined = join_voice(&mut alice, "Alice", None).await;
    let servers = joined["config"]["iceServers"].as_array().unwrap();
    assert_eq!(servers.len(), 2, "{joined}");
    for (entry, (urls, secret)) in servers.iter().zip([
        (
            json!([
                "turn:turn1.example.org:3478?transport=udp",
                "turns:turn1.example.org:5349?transport=tcp"
            ]),
            "first-secret",
        ),
        (json!(["turn:turn2.example.net:3478"]), "second-secret"),
    ]) {
        assert_eq!(entry["urls"], urls);
        let username = entry["username"].as_str().unwrap();
        let (expiry, user) = username.split_once(':').unwrap();
        assert!(user.starts_with("Alice:"), "{username}");
        let expiry: u64 = expiry.parse().unwrap();
        assert!(expiry.abs_diff(unix_now() + 600) <= 5, "{username}");
        assert_eq!(entry["credential"].as_str().unwrap(), turn_credential(secret, username));
    }

    let server = Server::start("[turn]\nenabled = false\n");
    let mut alice = server.join("Alice").await;
    let joined = join_voice(&mut alice, "Alice", None).await;
    assert_eq!(joined["config"]["iceServers"], json!([]));
    assert_eq!(joined["config"]["iceTransportPolicy"], "relay");
}

/// With `[server.tls]` (wss://) the relay offers TURN over TLS as well, listed as
/// `turns:HOST:PORT?transport=tcp` (`[turn] tls_listen`).
#[tokio::test]
async fn turns_url_is_listed_when_tls_is_configured() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), certified.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), certified.signing_key.serialize_pem()).unwrap();
    let config = format!(
        "[server.tls]\ncert_file = \"{0}/cert.pem\"\nkey_file = \"{0}/key.pem\"\n\n[turn]\ntls_listen = \"127.0.0.1:0\"\n",
        dir.path().display()
    );
    let server = Server::start_in(dir.path(), &config);
    let port = turn_port(&server);

    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls_config));
    let tcp = tokio::net::TcpStream::connect(server.http).await.unwrap();
    let domain = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(domain, tcp).await.unwrap();
    let url = format!("wss://localhost:{}/?username=Alice", server.http.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    let mut token = String::new();
    let joined = loop {
        let Ok(Some(Ok(Message::Text(text)))) = tokio::time::timeout(common::RECV_TIMEOUT, ws.next()).await
        else {
            panic!("no webrtc-joined over wss");
        };
        let message: Value = serde_json::from_str(&text).unwrap();
        if message["type"] == "session-token" {
            token = message["token"].as_str().unwrap().to_string();
        }
        if message["text"] == "Alice has joined." {
            let join = json!({"type": "webrtc-join", "token": token});
            ws.send(Message::Text(join.to_string().into())).await.unwrap();
        }
        if message["type"] == "webrtc-joined" {
            break message;
        }
    };
    let urls: Vec<&str> = joined["config"]["iceServers"][0]["urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert_eq!(
        urls[..2],
        [format!("turn:localhost:{port}?transport=udp"), format!("turn:localhost:{port}?transport=tcp")]
    );
    let turns = urls.get(2).unwrap_or_else(|| panic!("no turns: URL in {urls:?}"));
    let tls_port: u16 = turns
        .strip_prefix("turns:localhost:")
        .and_then(|rest| rest.strip_suffix("?transport=tcp"))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{turns}"));
    assert_ne!(tls_port, 0);
    // Something speaks TLS there.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", tls_port)).await.unwrap();
    let domain = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(domain, tcp).await.expect("TLS handshake on the turns: port");
}
