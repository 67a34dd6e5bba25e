//! The built-in browser client, embedded at compile time (no files to deploy next to the binary).

use warp::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use warp::http::Response;

const INDEX_HTML: &str = include_str!("../../web/index.html");
const APP_JS: &str = include_str!("../../web/app.js");
const STYLE_CSS: &str = include_str!("../../web/style.css");

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
        .body(body.to_string())
        .ok()
}
