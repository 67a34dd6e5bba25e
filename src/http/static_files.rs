//! The built-in browser client, embedded at compile time (no files to deploy next to the binary).
//!
//! Served with a strict Content-Security-Policy that the client satisfies (no inline script or
//! style, no eval, one same-origin WebSocket, the `data:,` favicon): an injected script has
//! nowhere to come from and nowhere to send data, and the page cannot be framed (clickjacking).

use warp::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use warp::http::Response;

const INDEX_HTML: &str = include_str!("../../web/index.html");
const APP_JS: &str = include_str!("../../web/app.js");
const STYLE_CSS: &str = include_str!("../../web/style.css");

/// The policy for the built-in client. `connect-src 'self'` covers the same-origin ws:/wss:
/// WebSocket (CSP Level 3); `media-src blob:` is harmless room for call streams.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; media-src 'self' blob:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The asset at `path`, if it is one of ours.
pub fn asset(path: &str) -> Option<Response<String>> {
    let (body, content_type) = match path {
        "/" | "/index.html" => (INDEX_HTML, "text/html; charset=utf-8"),
        "/app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "/style.css" => (STYLE_CSS, "text/css; charset=utf-8"),
        _ => return None,
    };
    Response::builder()
        .header(CONTENT_TYPE, content_type)
        .header(CACHE_CONTROL, "no-cache")
        .header("content-security-policy", CONTENT_SECURITY_POLICY)
        .header("x-frame-options", "DENY")
        .header("x-content-type-options", "nosniff")
        .header("referrer-policy", "no-referrer")
        // Camera and microphone for calls; nothing else.
        .header("permissions-policy", "camera=(self), microphone=(self), geolocation=(), payment=()")
        .body(body.to_string())
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The client must keep satisfying the policy: no inline code or handlers in the page.
    #[test]
    fn the_client_has_no_inline_script_style_or_handlers() {
        let page = INDEX_HTML.to_ascii_lowercase();
        assert!(!page.contains("<style"), "inline <style> would need style-src 'unsafe-inline'");
        assert!(!page.contains(" style="), "style attributes would need 'unsafe-inline'");
        let handler = page.match_indices(" on").any(|(i, _)| {
            let rest = &page[i + 3..];
            let name_len = rest.bytes().take_while(u8::is_ascii_lowercase).count();
            name_len > 0 && rest[name_len..].starts_with('=')
        });
        assert!(!handler, "an inline event handler attribute would need 'unsafe-inline'");
        for script in page.split("<script").skip(1) {
            let tag = &script[..script.find('>').unwrap_or(script.len())];
            assert!(tag.contains("src="), "inline <script> would need 'unsafe-inline'");
        }
        assert!(!APP_JS.contains("eval(") && !APP_JS.contains("new Function"), "eval needs 'unsafe-eval'");
    }
}
