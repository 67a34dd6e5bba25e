//! Client addresses behind a trusted proxy, against the real binary: the rightmost untrusted
//! X-Forwarded-For hop is the client (a spoofed leftmost entry changes nothing), and IPv6
//! clients of one /64 share one per-IP limit.

mod common;

use common::{Client, Server};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const CONFIG: &str = r#"
[server]
trusted_proxies = ["127.0.0.1"]

[limits]
max_connections_per_ip = 1
"#;

async fn connect_via_proxy(server: &Server, name: &str, forwarded_for: &str) -> Client {
    let mut request = server.url(Some(name)).into_client_request().unwrap();
    request.headers_mut().insert("x-forwarded-for", forwarded_for.parse().unwrap());
    Client::connect_with_request(request).await
}

fn refused(client: &Client) -> bool {
    client.token.starts_with("refused:") && client.token.contains("Too many concurrent connections")
}

#[tokio::test]
async fn the_rightmost_untrusted_hop_is_the_client() {
    let server = Server::start(CONFIG);
    let first = connect_via_proxy(&server, "first", "203.0.113.1, 198.51.100.7").await;
    assert!(!first.token.starts_with("refused:"), "{}", first.token);
    // Same real client, different spoofed leftmost entry: still the same address.
    let spoofed = connect_via_proxy(&server, "spoofed", "203.0.113.2, 198.51.100.7").await;
    assert!(refused(&spoofed), "a spoofed X-Forwarded-For entry escaped the per-IP limit: {}", spoofed.token);
    // Hops written by our own (trusted) proxies are skipped.
    let chained = connect_via_proxy(&server, "chained", "198.51.100.7, 127.0.0.1").await;
    assert!(refused(&chained), "{}", chained.token);
    let other = connect_via_proxy(&server, "other", "198.51.100.8").await;
    assert!(!other.token.starts_with("refused:"), "{}", other.token);
}

#[tokio::test]
async fn ipv6_clients_of_one_prefix_share_the_per_ip_limit() {
    let server = Server::start(CONFIG);
    let a = connect_via_proxy(&server, "v6a", "2001:db8:1:2::1").await;
    assert!(!a.token.starts_with("refused:"), "{}", a.token);
    let b = connect_via_proxy(&server, "v6b", "2001:db8:1:2:aaaa::2").await;
    assert!(refused(&b), "a second address of the same /64 was not limited: {}", b.token);
    let c = connect_via_proxy(&server, "v6c", "2001:db8:1:3::1").await;
    assert!(!c.token.starts_with("refused:"), "another /64 is another client: {}", c.token);

    // With prefix 128 every address counts alone.
    let server = Server::start(&format!("{CONFIG}ipv6_prefix_len = 128\n"));
    let a = connect_via_proxy(&server, "v6a", "2001:db8:1:2::1").await;
    let b = connect_via_proxy(&server, "v6b", "2001:db8:1:2:aaaa::2").await;
    assert!(
        !a.token.starts_with("refused:") && !b.token.starts_with("refused:"),
        "{} / {}",
        a.token,
        b.token
    );
}
