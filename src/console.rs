//! The operator console: a small web application served at `/console/`,
//! for support agents and the product owner (`docs/console.md`).
//!
//! Three static files, embedded in the binary at build time (no CDN, no
//! network at run time, no build step of their own). The page holds no data:
//! it signs in with an API token, kept in the tab's `sessionStorage`, and
//! reads everything through the `/v1` API. A strict Content-Security-Policy
//! lets it load nothing but these files and talk to nothing but this origin.

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

/// Where the console is served.
pub const PATH: &str = "/console/";

const INDEX_HTML: &str = include_str!("console/index.html");
const CONSOLE_JS: &str = include_str!("console/console.js");
const CONSOLE_CSS: &str = include_str!("console/console.css");

/// Scripts and styles from this origin only, no inline code, requests to
/// this origin only, never framed, forms never submitted anywhere.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The console's routes.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/console", get(|| async { Redirect::permanent(PATH) }))
        .route(PATH, get(|| async { asset(INDEX_HTML, "text/html; charset=utf-8") }))
        .route("/console/console.js", get(|| async { asset(CONSOLE_JS, "text/javascript; charset=utf-8") }))
        .route("/console/console.css", get(|| async { asset(CONSOLE_CSS, "text/css; charset=utf-8") }))
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Revalidated on every load, so a new version is picked up at once.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
