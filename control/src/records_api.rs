//! The record routes of the API (any reading role): flow and request records with filters,
//! pages and JSON-lines exports (`GET /v1/flows`, `GET /v1/requests`), and the live tail
//! (`GET /v1/flows/stream`, server-sent events).
#![allow(clippy::result_large_err)]

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::api::{ApiResult, AppState, Authed, OrInternal, Shared, error, needs, refuse};
use crate::link::now_s;
use crate::store::{FlowFilter, Kind};

/// The record routes.
pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/v1/flows", get(flows))
        .route("/v1/flows/stream", get(stream))
        .route("/v1/requests", get(requests))
}

/// Refuses a query parameter that is not one of `known` (400, naming those taken).
pub(crate) fn only_params(q: &HashMap<String, String>, known: &[&str]) -> Result<(), Response> {
    match q.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(error(
            StatusCode::BAD_REQUEST,
            format!("unknown parameter `{k}` ({})", known.join(", ")),
        )),
        None => Ok(()),
    }
}

/// The `since` parameter (unix ms or a duration back from now), if given.
pub(crate) fn since_param(q: &HashMap<String, String>) -> Result<Option<u64>, Response> {
    match q.get("since").map(|v| time_param(v)) {
        None => Ok(None),
        Some(Some(ms)) => Ok(Some(ms)),
        Some(None) => {
            Err(error(StatusCode::BAD_REQUEST, "since: unix ms or a duration like 15m, 7d"))
        }
    }
}

/// The `limit` parameter of a listing: 1 to 1000, 100 when absent.
pub(crate) fn limit_param(q: &HashMap<String, String>) -> Result<usize, Response> {
    match q.get("limit").map(|l| l.parse::<usize>()) {
        None => Ok(100),
        Some(Ok(n)) if (1..=1000).contains(&n) => Ok(n),
        Some(_) => Err(error(StatusCode::BAD_REQUEST, "limit: 1 to 1000")),
    }
}

/// Unix ms from a query value: an integer (unix ms), or a duration back from now (`90s`,
/// `15m`, `2h`, `7d`).
pub(crate) fn time_param(v: &str) -> Option<u64> {
    if let Ok(ms) = v.parse::<u64>() {
        return Some(ms);
    }
    if let Some(ms) = crate::utc::parse(v) {
        return Some(ms);
    }
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(now_s().saturating_sub(secs) * 1000)
}

/// The filters of a flow or request query, or what is wrong with them (an unknown filter, a
/// malformed time): the API answers it as a 400, the console shows it.
pub(crate) fn filter(q: &HashMap<String, String>) -> Result<FlowFilter, String> {
    const KNOWN: [&str; 17] = [
        "since",
        "until",
        "identity",
        "user",
        "src",
        "sni",
        "category",
        "verdict",
        "rule",
        "detector",
        "limit",
        "cursor",
        "type",
        "format",
        "dataplane",
        "app",
        "operation",
    ];
    if let Some(k) = q.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(format!("unknown filter `{k}`"));
    }
    let text = |k: &str| q.get(k).cloned();
    let ms = |k: &str| match q.get(k) {
        None => Ok(None),
        Some(v) => time_param(v)
            .map(Some)
            .ok_or_else(|| format!("{k}: expected unix ms or a duration like 15m")),
    };
    Ok(FlowFilter {
        since_ms: ms("since")?,
        until_ms: ms("until")?,
        identity: text("identity"),
        user: text("user"),
        src: text("src"),
        sni: text("sni"),
        category: text("category"),
        verdict: text("verdict"),
        rule: text("rule"),
        detector: text("detector"),
        dataplane: text("dataplane"),
        app: text("app"),
        operation: text("operation"),
        after_id: None,
    })
}

fn records(s: &AppState, kind: Kind, q: &HashMap<String, String>) -> ApiResult {
    let f = filter(q).map_err(|m| error(StatusCode::BAD_REQUEST, m))?;
    // `format=jsonl`: an export, one record per line, up to 10,000 per call; the cursor of
    // the next call is in `x-next-cursor`.
    let jsonl = match q.get("format").map(String::as_str) {
        None | Some("json") => false,
        Some("jsonl") => true,
        Some(_) => return refuse(StatusCode::BAD_REQUEST, "format is json or jsonl"),
    };
    let max = if jsonl { 10_000 } else { 1000 };
    let limit = match q.get("limit").map(|v| v.parse::<usize>()) {
        None if jsonl => max,
        None => 100,
        Some(Ok(n)) if (1..=max).contains(&n) => n,
        Some(_) => return refuse(StatusCode::BAD_REQUEST, format!("limit: 1 to {max}")),
    };
    // A cursor is the `next_cursor` of an earlier page: a record's id, 1 or more.
    let cursor = match q.get("cursor").map(|v| v.parse::<i64>()) {
        None => None,
        Some(Ok(c)) if c >= 1 => Some(c),
        Some(_) => {
            return refuse(StatusCode::BAD_REQUEST, "cursor: the next_cursor of an earlier page");
        }
    };
    let page =
        s.flows.lock().unwrap_or_else(|p| p.into_inner()).query_kind(kind, &f, cursor, limit);
    match page.or_500()? {
        page if jsonl => {
            let mut body = String::new();
            for r in &page.records {
                body.push_str(&r.to_string());
                body.push('\n');
            }
            let mut resp = ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response();
            if let Some(next) = page.next {
                resp.headers_mut().insert("x-next-cursor", header::HeaderValue::from(next));
            }
            Ok(resp)
        }
        page => Ok(axum::Json(json!({ "records": page.records, "next_cursor": page.next }))
            .into_response()),
    }
}

async fn flows(
    State(s): State<Shared>,
    _: Authed<needs::Read>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    records(&s, Kind::Flows, &q)
}

async fn requests(
    State(s): State<Shared>,
    _: Authed<needs::Read>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    records(&s, Kind::Requests, &q)
}

/// True when `r` passes the tail's filters (`type`, and the record fields of [`filter`]).
fn tail_match(r: &Value, q: &HashMap<String, String>, f: &FlowFilter) -> bool {
    let field = |k: &str, want: &Option<String>| {
        want.as_deref().is_none_or(|w| r.get(k).and_then(Value::as_str) == Some(w))
    };
    q.get("type").is_none_or(|t| r.get("type").and_then(Value::as_str) == Some(t.as_str()))
        && field("identity", &f.identity)
        && field("user", &f.user)
        && field("src", &f.src)
        && field("sni", &f.sni)
        && field("category", &f.category)
        && field("verdict", &f.verdict)
        && field("rule", &f.rule)
        && field("dataplane", &f.dataplane)
        && field("app", &f.app)
        && field("operation", &f.operation)
        && f.detector.as_deref().is_none_or(|d| {
            r.get("dlp_findings").and_then(Value::as_array).is_some_and(|a| {
                a.iter().any(|x| x.get("detector").and_then(Value::as_str) == Some(d))
            })
        })
}

async fn stream(
    State(s): State<Shared>,
    _: Authed<needs::Read>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use tokio::sync::broadcast::error::RecvError;
    let f = filter(&q).map_err(|m| error(StatusCode::BAD_REQUEST, m))?;
    let rx = s.hub.subscribe();
    let events = futures_util::stream::unfold((rx, q, f), |(mut rx, q, f)| async move {
        loop {
            let ev = match rx.recv().await {
                Ok(r) if tail_match(&r, &q, &f) => {
                    let kind = r.get("type").and_then(Value::as_str).unwrap_or("record");
                    Event::default().event(kind).data(r.to_string())
                }
                Ok(_) => continue,
                Err(RecvError::Lagged(n)) => {
                    Event::default().event("lagged").data(json!({ "missed": n }).to_string())
                }
                Err(RecvError::Closed) => return None,
            };
            return Some((Ok::<_, std::convert::Infallible>(ev), (rx, q, f)));
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_params() {
        assert_eq!(time_param("1700000000000"), Some(1_700_000_000_000));
        let m = time_param("15m").unwrap();
        assert!(m <= now_s() * 1000 - 900_000 + 1000 && m >= now_s() * 1000 - 902_000);
        for bad in ["", "m", "15x", "-3s", "99999999999999999999d"] {
            assert_eq!(time_param(bad), None, "{bad}");
        }
    }
}
