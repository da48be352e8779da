//! The web console (ARCHITECTURE.md, "The console"): server-rendered pages (maud) over the
//! same stores and the same role checks as the API, made live with htmx, charts drawn by
//! uPlot. Everything it serves is in the binary (`control/console/`, embedded at build
//! time); a page loads nothing from elsewhere, and its Content-Security-Policy says so.
//!
//! A login with an API token opens a session ([`session`]): an HttpOnly, Secure,
//! SameSite=Strict cookie names it, every change carries its CSRF token, and every request
//! is checked against the token's role exactly as the API checks it (audited the same way).

mod admin;
mod overview;
mod records;
mod rules;
mod session;
mod view;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use crate::state::Shared;
use records::{Flows, Requests};

pub use session::Sessions;

/// The console's routes, under `/console/`.
pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console/") }))
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .route("/console/", get(overview::page))
        .route("/console/login", get(session::login_page).post(session::login))
        .route("/console/logout", post(session::logout))
        .route("/console/assets/{name}", get(asset))
        .route("/console/flows", get(records::page::<Flows>))
        .route("/console/flows/tail", get(records::tail_of::<Flows>))
        .route("/console/flows/{id}", get(records::record::<Flows>))
        .route("/console/requests", get(records::page::<Requests>))
        .route("/console/requests/tail", get(records::tail_of::<Requests>))
        .route("/console/requests/{id}", get(records::record::<Requests>))
        .route("/console/rules", get(rules::page))
        .route("/console/rules/validate", post(rules::validate))
        .route("/console/rules/push", post(rules::push))
        .route("/console/rules/rollback/{version}", post(rules::rollback))
        .route("/console/identities", get(admin::identities))
        .route("/console/inventory", get(admin::inventory))
        .route("/console/approvals", get(admin::approvals))
        .route("/console/approvals/{id}", post(admin::decide))
        .route("/console/audit", get(admin::audit))
        .route("/console/evidence", get(admin::evidence))
        .route("/console/evidence/export", get(admin::export))
        .layer(axum::middleware::map_response(security_headers))
}

/// Every console response: nothing from elsewhere, no framing, no inline script or style,
/// no referrer; pages are not cached (assets are, by name and version).
async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, k: header::HeaderName, v: &'static str| {
        h.entry(k).or_insert(HeaderValue::from_static(v));
    };
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; \
         form-action 'self'",
    );
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(h, header::CACHE_CONTROL, "no-store");
    r
}

/// The files the console serves, embedded: (name, content type, bytes).
const ASSETS: &[(&str, &str, &[u8])] = &[
    ("console.css", "text/css", include_bytes!("../../console/console.css")),
    ("console.js", "text/javascript", include_bytes!("../../console/console.js")),
    ("htmx.min.js", "text/javascript", include_bytes!("../../console/vendor/htmx-2.0.11.min.js")),
    (
        "uPlot.iife.min.js",
        "text/javascript",
        include_bytes!("../../console/vendor/uPlot-1.6.32.iife.min.js"),
    ),
    ("uPlot.min.css", "text/css", include_bytes!("../../console/vendor/uPlot-1.6.32.min.css")),
];

/// An embedded file (no session needed: they hold nothing of the customer's). Pages name
/// them with the build's version, so a day's cache is safe across upgrades.
async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, ctype, bytes)) => (
            [(header::CONTENT_TYPE, *ctype), (header::CACHE_CONTROL, "public, max-age=86400")],
            *bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}
