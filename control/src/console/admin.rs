//! The console's other pages: identities, the app inventory, held requests (approve or deny
//! from the page), the audit log (and its verification), and evidence exports. Each reads
//! the store the API reads, under the role the API asks for.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};

use super::session::Viewer;
use super::view;
use crate::api::lock;
use crate::api::needs::{Approve, Evidence, Read, ReadOrFeed};
use crate::approvals_api::Ruling;
use crate::state::Shared;

fn failed_read(e: impl std::fmt::Display) -> Markup {
    tracing::error!("console: {e}");
    html! { p.error role="alert" { "The store could not be read (see the daemon's log)." } }
}

pub(super) async fn identities(State(s): State<Shared>, v: Viewer<ReadOrFeed>) -> Response {
    let all = lock!(s.identities).all();
    let body = match all {
        Ok(all) => {
            let rows: Vec<Value> = all.iter().map(|i| json!(i)).collect();
            html! {
                p { (rows.len()) " address(es) mapped by the identity feed." }
                (view::json_table(&rows, &[("ip", "Address"), ("user", "User"), ("groups", "Groups"), ("expires_at", "Expires (Unix s)")]))
            }
        }
        Err(e) => failed_read(e),
    };
    view::page(&v.chrome("/console/identities"), "Identities", false, body)
}

pub(super) async fn inventory(
    State(s): State<Shared>,
    v: Viewer<Read>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let text = |k: &str| q.get(k).filter(|x| !x.trim().is_empty()).cloned();
    let unknown = q.get("unknown").is_some_and(|x| x == "1");
    let f = crate::inventory::InventoryFilter {
        app: if unknown { Some("unknown".into()) } else { text("app") },
        host: text("host"),
        identity: text("identity"),
        user: text("user"),
        since_ms: None,
    };
    let rows = lock!(s.flows).inventory(&f);
    let form = html! {
        form.filters method="get" action="/console/inventory" {
            label { span { "App" } input type="text" name="app" value=[text("app")]; }
            label { span { "Host" } input type="text" name="host" value=[text("host")]; }
            label { span { "Identity" } input type="text" name="identity" value=[text("identity")]; }
            label { span { "User" } input type="text" name="user" value=[text("user")]; }
            label.check { input type="checkbox" name="unknown" value="1" checked[unknown]; span { "Unknown clients only" } }
            button type="submit" { "Apply" }
        }
    };
    let body = match rows {
        Ok(rows) => {
            let rows: Vec<Value> = rows.iter().map(|r| json!(r)).collect();
            html! {
                (form)
                (view::json_table(&rows, &[
                    ("host", "Host"), ("identity", "Identity"), ("user", "User"), ("app", "App"),
                    ("version", "Version"), ("first_seen_ms", "First seen"), ("last_seen_ms", "Last seen"),
                    ("flows", "Flows"), ("requests", "Requests"), ("bytes", "Bytes"),
                    ("destinations", "Destinations"), ("accounts", "Accounts"),
                ]))
            }
        }
        Err(e) => html! { (form) (failed_read(e)) },
    };
    view::page(&v.chrome("/console/inventory"), "Inventory", false, body)
}

pub(super) async fn approvals(
    State(s): State<Shared>,
    v: Viewer<Approve>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let state = q.get("state").map_or("pending", String::as_str);
    if !["pending", "approved", "denied", "timeout", "all"].contains(&state) {
        return view::refusal(
            StatusCode::BAD_REQUEST,
            "state: pending, approved, denied, timeout or all",
        );
    }
    let filter = (state != "all").then_some(state);
    let rows = lock!(s.approvals).list(filter, 200);
    let body = match rows {
        Ok(rows) => html! {
            nav.windows {
                @for st in ["pending", "approved", "denied", "timeout", "all"] {
                    a href={ "/console/approvals?state=" (st) } class=[(st == state).then_some("here")] { (st) }
                }
            }
            table.approvals {
                thead { tr { th { "Held" } th { "Identity" } th { "User" } th { "Destination" } th { "Rule" } th { "Why" } th { "State" } th { "Decision" } } }
                tbody {
                    @for a in &rows {
                        @let r = json!(a);
                        // The prompt, while the request waits and only if its rule lets
                        // reviewers read it (memory only, as the API shows it).
                        @let prompt = (a.state == "pending").then(|| s.prompts.get(&a.id)).flatten();
                        (approval_row(&r, prompt.as_deref()))
                    }
                }
            }
            @if rows.is_empty() { p.empty { "No " (state) " requests." } }
        },
        Err(e) => failed_read(e),
    };
    view::page(&v.chrome("/console/approvals"), "Approvals", false, body)
}

fn approval_row(a: &Value, prompt: Option<&str>) -> Markup {
    let req = &a["request"];
    let id = view::cell(a.get("id"));
    html! {
        tr #{ "approval-" (id) } {
            td { (view::field(req, "ts_ms")) }
            td { (view::field(req, "identity")) }
            td { (view::field(req, "user")) }
            td { (view::field(req, "destination")) }
            td { (view::field(req, "rule")) }
            td {
                (view::field(req, "why"))
                @if let Some(p) = prompt {
                    details.prompt { summary { "the prompt" } pre { (p) } }
                }
            }
            td { (view::field(a, "state")) }
            td {
                @if a["state"] == "pending" && crate::approvals::valid_id(&id) {
                    form.decide hx-post={ "/console/approvals/" (id) } hx-target={ "#approval-" (id) } hx-swap="outerHTML" {
                        input type="text" name="reason" placeholder="reason (optional)" maxlength="200";
                        input type="number" name="minutes" min="1" max=(crate::approvals_api::MAX_GRANT_MINUTES) placeholder="minutes";
                        button type="submit" name="decision" value="approve" { "Approve" }
                        button type="submit" name="decision" value="deny" { "Deny" }
                    }
                } @else {
                    (view::field(a, "decided_by")) " " (view::field(a, "reason"))
                }
            }
        }
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct DecideForm {
    decision: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    minutes: String,
}

pub(super) async fn decide(
    State(s): State<Shared>,
    v: Viewer<Approve>,
    Path(id): Path<String>,
    axum::Form(f): axum::Form<DecideForm>,
) -> Response {
    let approved = match f.decision.as_str() {
        "approve" => true,
        "deny" => false,
        _ => return view::note(StatusCode::BAD_REQUEST, "error", "decision: approve or deny"),
    };
    let minutes = match f.minutes.trim() {
        "" => None,
        m => match m.parse::<u32>() {
            Ok(m) => Some(m),
            Err(_) => return view::note(StatusCode::BAD_REQUEST, "error", "minutes: a number"),
        },
    };
    let reason = Some(f.reason).filter(|r| !r.trim().is_empty());
    match crate::approvals_api::rule_on(&s, &v.caller, &id, Ruling { approved, minutes, reason }) {
        Ok(r) => Html(approval_row(&r["approval"], None).into_string()).into_response(),
        Err(e) => view::api_error(e).await,
    }
}

pub(super) async fn audit(
    State(s): State<Shared>,
    v: Viewer<Evidence>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let log = lock!(s.rules).audit_log(500);
    let verification = if q.contains_key("verify") {
        let st = s.clone();
        let ask = crate::audit_verify::Ask { dataplane: None, since_ms: None };
        let run = tokio::task::spawn_blocking(move || crate::audit_api::run(&st, &ask)).await;
        let failed = |e: &dyn std::fmt::Display| {
            tracing::error!("console verification: {e}");
            json!({ "error": "the verification could not run (see the daemon's log)" })
        };
        Some(match run {
            Ok(Ok(v)) => json!(v),
            Ok(Err(e)) => failed(&e),
            Err(e) => failed(&e),
        })
    } else {
        None
    };
    let body = html! {
        p {
            a.button href="/console/audit?verify=1" { "Verify the chains and checkpoints now" }
        }
        @if let Some(ver) = &verification {
            section.verification {
                h2 { "Verification" }
                @if let Some(e) = ver.get("error").and_then(Value::as_str) {
                    p.error role="alert" { (e) }
                } @else {
                    p class=(if ver["clean"] == true { "ok" } else { "error" }) {
                        (if ver["clean"] == true { "Clean: every chain verifies from its checkpoints." } else { "Findings: see below." })
                    }
                    pre.record { (view::pretty(ver)) }
                }
            }
        }
        h2 { "Audit log (newest first)" }
        @match log {
            Ok(entries) => {
                @let rows: Vec<Value> = entries.iter().map(|e| json!(e)).collect();
                (view::json_table(&rows, &[("ts_ms", "Time"), ("who", "Who"), ("action", "Action"), ("version", "Rule version"), ("detail", "Detail")]))
            }
            Err(e) => { (failed_read(e)) }
        }
    };
    view::page(&v.chrome("/console/audit"), "Audit", false, body)
}

pub(super) async fn evidence(v: Viewer<Evidence>) -> Response {
    let body = html! {
        p {
            "An export holds the records of a window with their chains and signed checkpoints, \
             the rule versions in force and the audit log, signed by control's key; \
             " code { "sluicectl evidence check" } " verifies it offline."
        }
        form.filters method="get" action="/console/evidence/export" {
            label { span { "Since" } input type="text" name="since" placeholder="2026-11-01 or 30d" required; }
            label { span { "Until" } input type="text" name="until" placeholder="now"; }
            label.check { input type="checkbox" name="recordings" value="true"; span { "Include recordings (sealed)" } }
            button type="submit" { "Download the export" }
        }
    };
    view::page(&v.chrome("/console/evidence"), "Evidence", false, body)
}

pub(super) async fn export(
    State(s): State<Shared>,
    v: Viewer<Evidence>,
    Query(mut q): Query<HashMap<String, String>>,
) -> Response {
    q.retain(|_, x| !x.trim().is_empty());
    match crate::evidence_api::export_for(&s, &v.caller, &q).await {
        Ok(r) => r,
        Err(e) => {
            let (status, message) = view::api_message(e).await;
            let body = html! { p.error role="alert" { (message) } p { a href="/console/evidence" { "Back" } } };
            let mut r = view::page(&v.chrome("/console/evidence"), "Evidence", false, body);
            *r.status_mut() = status;
            r
        }
    }
}
