//! The console's frame and shared pieces: the page layout with the navigation a role may
//! use, the login and refusal pages, times and tables of JSON records.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde_json::Value;

use crate::auth::{Caller, Need};

/// What the frame of a page shows: who is logged in, the CSRF token htmx sends with every
/// change, and which page this is.
#[derive(Debug)]
pub(crate) struct Chrome<'a> {
    pub caller: &'a Caller,
    pub csrf: &'a str,
    pub here: &'a str,
}

/// The navigation: (path, label, what the page needs).
const NAV: &[(&str, &str, &[Need])] = &[
    ("/console/", "Overview", &[Need::Read]),
    ("/console/flows", "Flows", &[Need::Read]),
    ("/console/requests", "Requests", &[Need::Read]),
    ("/console/rules", "Rule sets", &[Need::Read]),
    ("/console/identities", "Identities", &[Need::Read, Need::Feed]),
    ("/console/inventory", "Inventory", &[Need::Read]),
    ("/console/approvals", "Approvals", &[Need::Approve]),
    ("/console/audit", "Audit", &[Need::Evidence]),
    ("/console/evidence", "Evidence", &[Need::Evidence]),
];

/// htmx's settings: no inline styles (the CSP forbids them), no eval, no script tags in
/// swapped content; refusals (4xx, 5xx) are swapped into their target like answers, since
/// they are the page's message (an invalid rule set's errors at their lines).
const HTMX_CONFIG: &str = r#"{"includeIndicatorStyles":false,"allowEval":false,"allowScriptTags":false,"historyCacheSize":0,"responseHandling":[{"code":"204","swap":false},{"code":"[2345]..","swap":true,"error":false}]}"#;

fn head(title: &str, charts: bool) -> Markup {
    let v = env!("CARGO_PKG_VERSION");
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="htmx-config" content=(HTMX_CONFIG);
            title { "Sluice · " (title) }
            // No icon to fetch (the browser would ask for /favicon.ico otherwise).
            link rel="icon" href="data:,";
            link rel="stylesheet" href={ "/console/assets/console.css?v=" (v) };
            @if charts {
                link rel="stylesheet" href={ "/console/assets/uPlot.min.css?v=" (v) };
                script src={ "/console/assets/uPlot.iife.min.js?v=" (v) } defer {}
            }
            script src={ "/console/assets/htmx.min.js?v=" (v) } defer {}
            script src={ "/console/assets/console.js?v=" (v) } defer {}
        }
    }
}

/// A whole page: the frame around `body`.
pub(crate) fn page(c: &Chrome<'_>, title: &str, charts: bool, body: Markup) -> Response {
    let headers = serde_json::json!({ "X-CSRF-Token": c.csrf }).to_string();
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, charts))
            body hx-headers=(headers) {
                header.top {
                    a.brand href="/console/" { "Sluice" }
                    nav {
                        @for (path, label, needs) in NAV {
                            @if needs.iter().any(|n| c.caller.role.allows(*n)) {
                                a href=(path) class=[(*path == c.here).then_some("here")] { (label) }
                            }
                        }
                    }
                    span.who {
                        (c.caller.name) " · " span.role { (c.caller.role.as_str()) }
                    }
                    button.link hx-post="/console/logout" { "Log out" }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    };
    Html(markup.into_string()).into_response()
}

/// The login page, with what went wrong if anything did.
pub(crate) fn login(problem: Option<&str>, status: StatusCode) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head("Log in", false))
            body.login {
                form.login method="post" action="/console/login" {
                    h1 { "Sluice" }
                    p { "Log in with an API token. The console allows what the token's role allows." }
                    @if let Some(p) = problem { p.error role="alert" { (p) } }
                    label for="token" { "API token" }
                    input #token type="password" name="token" autocomplete="off" required autofocus;
                    button type="submit" { "Log in" }
                }
            }
        }
    };
    (status, Html(markup.into_string())).into_response()
}

/// A refusal as a small page (or, for htmx, the fragment it swaps in).
pub(crate) fn refusal(status: StatusCode, why: &str) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head("Refused", false))
            body { main { p.error role="alert" { (why) } p { a href="/console/" { "Back to the console" } } } }
        }
    };
    (status, Html(markup.into_string())).into_response()
}

/// A message for an htmx target (a result panel): `error` or `ok` styled.
pub(crate) fn note(status: StatusCode, class: &str, text: &str) -> Response {
    (status, Html(html! { p class=(class) role="alert" { (text) } }.into_string())).into_response()
}

/// An API error's status and message (`{"error": …}`).
pub(crate) async fn api_message(e: crate::api::ApiError) -> (StatusCode, String) {
    let r = e.into_response();
    let status = r.status();
    let body = axum::body::to_bytes(r.into_body(), 64 << 10).await.unwrap_or_default();
    let message = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| status.to_string());
    (status, message)
}

/// An API error as a note for an htmx target.
pub(crate) async fn api_error(e: crate::api::ApiError) -> Response {
    let (status, message) = api_message(e).await;
    note(status, "error", &message)
}

/// Unix ms as `YYYY-MM-DD HH:MM:SS` UTC.
pub(crate) fn time(ms: u64) -> String {
    let t = crate::utc::from_unix_ms(ms);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// A JSON value as table text: strings bare, arrays joined, null empty.
pub(crate) fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a.iter().map(|x| cell(Some(x))).collect::<Vec<_>>().join(", "),
        Some(other) => other.to_string(),
    }
}

/// Rows of JSON objects as a table of the columns `cols` ((key, heading); keys ending in
/// `_ms` are shown as times).
pub(crate) fn json_table(rows: &[Value], cols: &[(&str, &str)]) -> Markup {
    html! {
        table {
            thead { tr { @for (_, h) in cols { th { (h) } } } }
            tbody {
                @for r in rows {
                    tr { @for (k, _) in cols { td { (field(r, k)) } } }
                }
            }
        }
        @if rows.is_empty() { p.empty { "Nothing yet." } }
    }
}

/// One field of a record for a table.
pub(crate) fn field(r: &Value, key: &str) -> String {
    let v = r.get(key);
    match (key.ends_with("_ms"), v.and_then(Value::as_u64)) {
        (true, Some(ms)) if ms > 0 => time(ms),
        _ => cell(v),
    }
}

/// JSON pretty-printed for a `<pre>` (escaped by maud).
pub(crate) fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// Embeds data for the page's script as a JSON block that is never executed (the CSP allows
/// no inline script); `<` is escaped so the text cannot close the element.
pub(crate) fn data_block(id: &str, v: &Value) -> Markup {
    let text = v.to_string().replace('<', "\\u003c");
    html! { script type="application/json" id=(id) { (PreEscaped(text)) } }
}
