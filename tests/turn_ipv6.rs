//! The relay's IPv6 listener (`[turn] listen6`) against the real binary, on `[::1]`: TURN over
//! UDP and TCP from IPv6 clients allocates (the relayed address stays IPv4 unless the client asks
//! otherwise, RFC 6156), the mapped address is the client's IPv6 one, and `iceServers` hands
//! out `turn:[::1]` URLs next to the IPv4 ones when clients are given an IPv4 host.

mod common;
mod turn_support;

use std::net::SocketAddr;

use common::voice::join_voice;
use common::Server;
use turn_support::{TurnClient, SECRET};

fn config(extra: &str) -> String {
    format!(
        "[turn]\nenabled = true\nsecret = \"{SECRET}\"\nrequire_live_session = false\nlisten6 = \"[::1]:0\"\n{extra}"
    )
}

/// The IPv6 listener's address, from the start-up log.
fn listen6(server: &Server) -> SocketAddr {
    let log = server.log_text();
    let line = log
        .lines()
        .find_map(|line| line.split("turn listening on ipv6 udp and tcp ").nth(1))
        .unwrap_or_else(|| panic!("no IPv6 listener in the log:\n{log}"));
    line.trim().parse().expect("an IPv6 socket address")
}

#[tokio::test]
async fn ipv6_clients_allocate_over_udp_and_tcp() {
    let server = Server::start(&config(""));
    let six = listen6(&server);
    assert_eq!(six.ip(), "::1".parse::<std::net::IpAddr>().unwrap());
    assert_ne!(Some(six.port()), server.turn_udp.map(|a| a.port()), "port 0 picks a port of its own");
    for tcp in [false, true] {
        let mut client = TurnClient::for_user(six, tcp, "alice", 600).await;
        let relayed = client.allocate().await.unwrap_or_else(|e| panic!("tcp={tcp}: {e:?}"));
        assert!(relayed.is_ipv4(), "RFC 6156: IPv4 unless the client asks for IPv6: {relayed}");
        assert!(client.local_addr().await.is_ipv6());
    }
    // The IPv4 listener is still there.
    let mut v4 = TurnClient::for_user(server.turn_udp.unwrap(), false, "bob", 600).await;
    v4.allocate().await.unwrap();
}

#[tokio::test]
async fn ice_servers_add_ipv6_urls_when_clients_get_an_ipv4_host() {
    let server = Server::start(&config("public_host = \"127.0.0.1\""));
    let six = listen6(&server);
    let v4_port = server.turn_udp.unwrap().port();
    let mut alice = server.join("Alice").await;
    let joined = join_voice(&mut alice, "Alice", None).await;
    let urls = &joined["config"]["iceServers"][0]["urls"];
    assert_eq!(
        urls,
        &serde_json::json!([
            format!("turn:127.0.0.1:{v4_port}?transport=udp"),
            format!("turn:127.0.0.1:{v4_port}?transport=tcp"),
            format!("turn:[::1]:{}?transport=udp", six.port()),
            format!("turn:[::1]:{}?transport=tcp", six.port()),
        ])
    );
}

#[tokio::test]
async fn turn_over_tls_listens_on_the_ipv6_address_too() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), certified.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), certified.signing_key.serialize_pem()).unwrap();
    let tls = format!(
        "[server.tls]\ncert_file = \"{0}/cert.pem\"\nkey_file = \"{0}/key.pem\"\n\n",
        dir.path().display()
    );
    let server = Server::start_in(dir.path(), &format!("{tls}{}", config("")));
    let log = server.log_text();
    let tls6: SocketAddr = log
        .lines()
        .find_map(|line| line.split("turn over tls listening on ipv6 ").nth(1))
        .unwrap_or_else(|| panic!("no IPv6 TLS listener in the log:\n{log}"))
        .trim()
        .parse()
        .unwrap();
    assert!(tls6.is_ipv6() && tls6.port() != 0, "{tls6}");

    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls_config));
    let credential =
        relaychat::turn::credentials::issue(SECRET.as_bytes(), "alice", turn_support::now_unix() + 600);
    let mut client = TurnClient::tls(tls6, &connector, &credential.username, &credential.credential).await;
    client.allocate().await.expect("an allocation over TLS on IPv6");
}
