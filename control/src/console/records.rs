//! Flows and requests: the API's filters as a form, a page of records newest first with the
//! next page by cursor, a live tail (htmx polls for records after the newest shown), and a
//! record's detail.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{Markup, html};
use serde_json::Value;

use super::session::Viewer;
use super::view::{self, field};
use crate::api::needs::Read;
use crate::api::{OrInternal, lock};
use crate::state::{AppState, Shared};
use crate::store::{FlowFilter, Kind, Page};

/// Rows on a page.
const PAGE: usize = 100;

/// The filter fields of the form: (parameter, label, kinds it applies to).
const FIELDS: &[(&str, &str, Option<Kind>)] = &[
    ("since", "Since", None),
    ("until", "Until", None),
    ("identity", "Identity", None),
    ("user", "User", None),
    ("src", "Source", None),
    ("sni", "Server name", None),
    ("category", "Category", None),
    ("verdict", "Verdict", None),
    ("rule", "Rule", None),
    ("app", "App", None),
    ("detector", "DLP detector", Some(Kind::Requests)),
    ("operation", "Operation", Some(Kind::Requests)),
    ("dataplane", "Data plane", None),
];

/// The table's columns per kind: (record key, heading).
fn columns(kind: Kind) -> &'static [(&'static str, &'static str)] {
    match kind {
        Kind::Flows => &[
            ("ts_ms", "Time"),
            ("identity", "Identity"),
            ("user", "User"),
            ("src", "Source"),
            ("sni", "Server name"),
            ("category", "Category"),
            ("app", "App"),
            ("verdict", "Verdict"),
            ("rule", "Rule"),
            ("reason", "Reason"),
        ],
        Kind::Requests => &[
            ("ts_ms", "Time"),
            ("identity", "Identity"),
            ("user", "User"),
            ("method", "Method"),
            ("sni", "Server name"),
            ("path", "Path"),
            ("model", "Model"),
            ("verdict", "Verdict"),
            ("rule", "Rule"),
            ("status", "Status"),
        ],
    }
}

fn base(kind: Kind) -> &'static str {
    match kind {
        Kind::Flows => "/console/flows",
        Kind::Requests => "/console/requests",
    }
}

/// The query without empty fields (an empty form field filters nothing) and without the
/// console's own parameters; those are returned apart: (filters, cursor, live).
fn split(mut q: HashMap<String, String>) -> (HashMap<String, String>, Option<String>, bool) {
    q.retain(|_, v| !v.trim().is_empty());
    let live = q.remove("live").is_some();
    let cursor = q.remove("cursor");
    (q, cursor, live)
}

/// The query string of `q` (sorted, so links are stable).
fn query_string(q: &HashMap<String, String>) -> String {
    let mut pairs: Vec<_> = q.iter().collect();
    pairs.sort();
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// A page of records, or what is wrong with the filters.
fn query(
    s: &AppState,
    kind: Kind,
    q: &HashMap<String, String>,
    cursor: Option<i64>,
    after: Option<i64>,
) -> Result<Page, String> {
    let mut f = crate::records_api::filter(q)?;
    f.after_id = after;
    lock!(s.flows).query_kind(kind, &f, cursor, PAGE).map_err(|e| {
        tracing::error!("console query: {e}");
        "the query failed (see the daemon's log)".to_owned()
    })
}

fn rows(kind: Kind, page: &Page) -> Markup {
    let cols = columns(kind);
    html! {
        @for (id, r) in page.ids.iter().zip(&page.records) {
            tr data-id=(id) class=[(field(r, "verdict") == "block").then_some("blocked")] {
                @for (k, _) in cols {
                    @if *k == "ts_ms" {
                        td { a href={ (base(kind)) "/" (id) } { (field(r, k)) } }
                    } @else {
                        td { (field(r, k)) }
                    }
                }
            }
        }
    }
}

/// The live tail's poller: htmx asks every two seconds for records after `after`; the
/// answer replaces this row with a new poller and the new records below it.
fn poller(kind: Kind, q: &HashMap<String, String>, after: i64) -> Markup {
    let mut q = q.clone();
    q.insert("after".into(), after.to_string());
    let url = format!("{}/tail?{}", base(kind), query_string(&q));
    let span = columns(kind).len();
    html! {
        tr #tail hx-get=(url) hx-trigger="every 2s" hx-swap="outerHTML" {
            td.live colspan=(span) { "Live: new records appear here." }
        }
    }
}

async fn list(s: Shared, v: Viewer<Read>, kind: Kind, q: HashMap<String, String>) -> Response {
    let title = match kind {
        Kind::Flows => "Flows",
        Kind::Requests => "Requests",
    };
    let (q, cursor, live) = split(q);
    let cursor_id = cursor.as_deref().and_then(|c| c.parse::<i64>().ok()).filter(|c| *c >= 1);
    let result = match (cursor, cursor_id) {
        (Some(_), None) => Err("cursor: the next page's link".to_owned()),
        _ => query(&s, kind, &q, cursor_id, None),
    };
    let newest = result.as_ref().ok().and_then(|p| p.ids.first().copied());
    let form = html! {
        form.filters method="get" action=(base(kind)) {
            @for (name, label, only) in FIELDS {
                @if only.is_none_or(|k| k == kind) {
                    label { span { (label) } input type="text" name=(name) value=[q.get(*name)]; }
                }
            }
            label.check { input type="checkbox" name="live" value="1" checked[live]; span { "Live tail" } }
            button type="submit" { "Apply" }
            a.button href=(base(kind)) { "Clear" }
        }
    };
    let body = match &result {
        Err(problem) => html! { (form) p.error role="alert" { (problem) } },
        Ok(page) => html! {
            (form)
            table.records {
                thead { tr { @for (_, h) in columns(kind) { th { (h) } } } }
                tbody {
                    @if live && cursor_id.is_none() {
                        // Before any record, the tail starts at the newest stored.
                        (poller(kind, &q, newest.unwrap_or_else(|| newest_id(&s, kind))))
                    }
                    (rows(kind, page))
                }
            }
            @if page.records.is_empty() { p.empty { "No records match." } }
            @if let Some(next) = page.next {
                @let mut nq = q.clone();
                @let _ = nq.insert("cursor".into(), next.to_string());
                p { a.button href={ (base(kind)) "?" (query_string(&nq)) } { "Older records" } }
            }
        },
    };
    let status = if result.is_ok() { StatusCode::OK } else { StatusCode::BAD_REQUEST };
    let mut r = view::page(&v.chrome(base(kind)), title, false, body);
    *r.status_mut() = status;
    r
}

/// The newest row id of `kind` (0 for none).
fn newest_id(s: &AppState, kind: Kind) -> i64 {
    let f = FlowFilter::default();
    lock!(s.flows)
        .query_kind(kind, &f, None, 1)
        .ok()
        .and_then(|p| p.ids.first().copied())
        .unwrap_or(0)
}

async fn tail(s: Shared, kind: Kind, q: HashMap<String, String>) -> Response {
    let (mut q, _, _) = split(q);
    let after = q.remove("after").and_then(|a| a.parse::<i64>().ok()).filter(|a| *a >= 0);
    let Some(after) = after else {
        return view::note(StatusCode::BAD_REQUEST, "error", "after: a record id");
    };
    // Everything after `after`, newest first, page by page, up to TAIL_MAX; beyond, the
    // oldest are left out and a row says so (as the API's stream says `lagged`).
    let mut pages = Vec::new();
    let mut cursor = None;
    let lagged = loop {
        let page = match query(&s, kind, &q, cursor, Some(after)) {
            Ok(p) => p,
            Err(problem) => return view::note(StatusCode::BAD_REQUEST, "error", &problem),
        };
        let next = page.next;
        pages.push(page);
        match next {
            None => break false,
            Some(_) if pages.len() * PAGE >= TAIL_MAX => break true,
            Some(c) => cursor = Some(c),
        }
    };
    let newest = pages.first().and_then(|p| p.ids.first().copied()).unwrap_or(after);
    let span = columns(kind).len();
    let markup = html! {
        (poller(kind, &q, newest))
        @for page in &pages { (rows(kind, page)) }
        @if lagged {
            tr.lagged { td colspan=(span) {
                "More than " (TAIL_MAX) " records arrived since the last update: older ones are \
                 not shown here (reload the page and page through them)."
            } }
        }
    };
    Html(markup.into_string()).into_response()
}

/// Most records one update of the live tail brings.
const TAIL_MAX: usize = 1000;

async fn detail(s: Shared, v: Viewer<Read>, kind: Kind, id: i64) -> Result<Response, Response> {
    let found = lock!(s.flows).record(kind, id).or_500().map_err(|e| e.into_response())?;
    let Some(r) = found else {
        return Err(view::refusal(
            StatusCode::NOT_FOUND,
            "No such record (retention may have removed it).",
        ));
    };
    let title = match kind {
        Kind::Flows => format!("Flow record {id}"),
        Kind::Requests => format!("Request record {id}"),
    };
    let body = html! {
        p { a href=(base(kind)) { "← back" } }
        (summary(&r))
        h2 { "The record as stored" }
        pre.record { (view::pretty(&r)) }
    };
    Ok(view::page(&v.chrome(base(kind)), &title, false, body))
}

/// The fields an analyst reads first, as a definition list.
fn summary(r: &Value) -> Markup {
    const KEYS: &[(&str, &str)] = &[
        ("ts_ms", "Time"),
        ("verdict", "Verdict"),
        ("rule", "Rule"),
        ("reason", "Reason"),
        ("identity", "Identity"),
        ("user", "User"),
        ("src", "Source"),
        ("sni", "Server name"),
        ("category", "Category"),
        ("app", "App"),
        ("model", "Model"),
        ("dataplane", "Data plane"),
    ];
    html! {
        dl.summary {
            @for (k, label) in KEYS {
                @let text = field(r, k);
                @if !text.is_empty() { dt { (label) } dd { (text) } }
            }
        }
    }
}

/// Which records a route shows: flows or requests, as a type, so that one handler serves
/// both kinds' routes.
pub(super) trait Records {
    const KIND: Kind;
}

/// Flow records' routes.
pub(super) struct Flows;
/// Request records' routes.
pub(super) struct Requests;

impl Records for Flows {
    const KIND: Kind = Kind::Flows;
}

impl Records for Requests {
    const KIND: Kind = Kind::Requests;
}

pub(super) async fn page<R: Records>(
    State(s): State<Shared>,
    v: Viewer<Read>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    list(s, v, R::KIND, q).await
}

pub(super) async fn tail_of<R: Records>(
    State(s): State<Shared>,
    _: Viewer<Read>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    tail(s, R::KIND, q).await
}

pub(super) async fn record<R: Records>(
    State(s): State<Shared>,
    v: Viewer<Read>,
    Path(id): Path<i64>,
) -> Result<Response, Response> {
    detail(s, v, R::KIND, id).await
}
