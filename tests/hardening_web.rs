//! Browser-facing protections against the real binary: security headers on the built-in
//! client, and the optional WebSocket Origin allow-list (off by default).

mod common;

use common::{http_get, Client, Server};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

#[tokio::test]
async fn the_web_client_is_served_with_security_headers() {
    let server = Server::start("");
    for path in ["/", "/app.js", "/style.css"] {
        let (head, _) = http_get(server.http, path).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
        let csp =
            header(&head, "content-security-policy").unwrap_or_else(|| panic!("{path}: no CSP\n{head}"));
        for directive in
            ["default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"]
        {
            assert!(csp.contains(directive), "{path}: CSP lacks {directive}: {csp}");
        }
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
        assert_eq!(header(&head, "x-content-type-options"), Some("nosniff"), "{path}");
        assert_eq!(header(&head, "referrer-policy"), Some("no-referrer"), "{path}");
        assert_eq!(header(&head, "x-frame-options"), Some("DENY"), "{path}");
    }
}

async fn upgrade_status(server: &Server, origin: Option<&str>) -> Result<(), u16> {
    let mut request = server.url(Some("visitor")).into_client_request().unwrap();
    if let Some(origin) = origin {
        request.headers_mut().insert("origin", origin.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => Ok(()),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("unexpected error: {e}"),
    }
}

#[tokio::test]
async fn the_origin_allow_list_refuses_other_sites_and_is_off_by_default() {
    let open = Server::start("");
    assert_eq!(upgrade_status(&open, Some("https://anything.example")).await, Ok(()));

    let server = Server::start("[network]\nallowed_origins = [\"https://chat.example.org\"]\n");
    assert_eq!(upgrade_status(&server, Some("https://evil.example")).await, Err(403));
    assert_eq!(upgrade_status(&server, Some("https://chat.example.org")).await, Ok(()));
    // Not a browser page (no Origin): allowed, so command-line clients keep working.
    let client = Client::connect(&server.url(Some("cli"))).await;
    assert!(!client.token.starts_with("refused:"), "{}", client.token);
}
