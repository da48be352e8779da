//! Rule sets: the current one with its line numbers, the history, the difference between two
//! versions (the text line by line, and what it changes in the compiled policy), and for
//! admins a push (validated first; errors shown at their lines) and rollback. Push and
//! rollback are the API's own functions ([`crate::rules_api::push`], [`roll_back`]).
//!
//! [`roll_back`]: crate::rules_api::roll_back

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;
use sluice_rules::catalog::ShippedOnly;
use sluice_rules::{Diagnostic, Severity, compile};

use super::session::Viewer;
use super::view;
use crate::api::lock;
use crate::api::needs::{Admin, Read};
use crate::auth::Need;
use crate::rules_api::PushRefused;
use crate::rulestore::RuleVersion;
use crate::state::Shared;

pub(super) async fn page(
    State(s): State<Shared>,
    v: Viewer<Read>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (current, history) = {
        let store = lock!(s.rules);
        (store.current().ok().flatten(), store.history().unwrap_or_default())
    };
    let admin = v.caller.role.allows(Need::Admin);
    let num = |k: &str| q.get(k).and_then(|x| x.parse::<i64>().ok());
    let diff = match (num("from"), num("to").or(current.as_ref().map(|c| c.version))) {
        (Some(from), Some(to)) => Some(diff_section(&s, from, to)),
        _ => None,
    };
    let body = html! {
        @if let Some(d) = diff { (d) }
        section.current {
            @match &current {
                Some(c) => {
                    h2 { "Current: version " (c.version) }
                    p.meta { "Pushed by " (c.author) " on " (view::time(u64::try_from(c.ts_ms).unwrap_or(0))) " (" (c.note) ")" }
                    (listing(&c.text, &[]))
                }
                None => { p.empty { "No rule set has been pushed yet." } }
            }
        }
        @if admin {
            section.push #push {
                h2 { "Push a rule set" }
                form hx-post="/console/rules/push" hx-target="#result" {
                    textarea name="text" rows="24" spellcheck="false" {
                        (current.as_ref().map_or("", |c| c.text.as_str()))
                    }
                    div.actions {
                        button type="button" hx-post="/console/rules/validate" hx-target="#result" { "Validate" }
                        button.primary #push-button type="submit" { "Push to every data plane" }
                    }
                }
                div #result {}
            }
        }
        section.history {
            h2 { "History" }
            (history_table(&history, current.as_ref().map(|c| c.version), admin))
        }
    };
    view::page(&v.chrome("/console/rules"), "Rule sets", false, body)
}

fn history_table(all: &[RuleVersion], current: Option<i64>, admin: bool) -> Markup {
    html! {
        table.history {
            thead { tr { th { "Version" } th { "When" } th { "By" } th { "How" } th {} } }
            tbody {
                @for r in all {
                    tr {
                        td { (r.version) @if Some(r.version) == current { " (current)" } }
                        td { (view::time(u64::try_from(r.ts_ms).unwrap_or(0))) }
                        td { (r.author) }
                        td { (r.note) }
                        td.actions {
                            @if Some(r.version) != current {
                                a href={ "/console/rules?from=" (r.version) } { "diff with current" }
                                @if admin {
                                    " "
                                    button.link hx-post={ "/console/rules/rollback/" (r.version) }
                                        hx-confirm={ "Make version " (r.version) " current again, on every data plane?" }
                                        hx-target="#rollback-result" { "roll back to this" }
                                }
                            }
                        }
                    }
                }
            }
        }
        div #rollback-result {}
    }
}

/// The rule text with line numbers; lines with a diagnostic are marked and the message
/// shown under them.
fn listing(text: &str, diags: &[Diagnostic]) -> Markup {
    html! {
        ol.listing {
            @for (i, line) in text.lines().enumerate() {
                @let here: Vec<&Diagnostic> = diags.iter().filter(|d| d.line == i + 1).collect();
                li class=[(!here.is_empty()).then_some("marked")] id={ "line-" (i + 1) } {
                    code { (line) }
                    @for d in here {
                        div class=(severity(d)) { "line " (d.line) ", column " (d.col) ": " (d.message) }
                    }
                }
            }
        }
    }
}

fn severity(d: &Diagnostic) -> &'static str {
    if d.severity == Severity::Error { "diag error" } else { "diag warning" }
}

fn diagnostics(diags: &[Diagnostic]) -> Markup {
    html! {
        ul.diags {
            @for d in diags {
                li class=(severity(d)) {
                    a href={ "#line-" (d.line) } { "line " (d.line) ", column " (d.col) } ": " (d.message)
                }
            }
        }
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct RuleText {
    text: String,
}

/// htmx posts a textarea with the browser's line ends (CRLF); the rule file is stored as
/// the same text with LF.
fn text_of(form: &RuleText) -> String {
    form.text.replace("\r\n", "\n")
}

fn invalid(text: &str, diags: &[Diagnostic]) -> Response {
    let errors = diags.iter().filter(|d| d.severity == Severity::Error).count();
    let markup = html! {
        div.invalid {
            p.error role="alert" { "The rule set is invalid: " (errors) " error(s). Nothing was pushed." }
            (diagnostics(diags))
            (listing(text, diags))
        }
    };
    (StatusCode::UNPROCESSABLE_ENTITY, Html(markup.into_string())).into_response()
}

pub(super) async fn validate(_: Viewer<Read>, axum::Form(form): axum::Form<RuleText>) -> Response {
    let text = text_of(&form);
    match compile("rules.toml", &text, &ShippedOnly) {
        Ok(c) => Html(
            html! {
                p.ok role="status" { "Valid." @if !c.warnings.is_empty() { " Warnings:" } }
                (diagnostics(&c.warnings))
            }
            .into_string(),
        )
        .into_response(),
        Err(diags) => invalid(&text, &diags),
    }
}

pub(super) async fn push(
    State(s): State<Shared>,
    v: Viewer<Admin>,
    axum::Form(form): axum::Form<RuleText>,
) -> Response {
    let text = text_of(&form);
    match crate::rules_api::push(&s, &v.caller, &text).await {
        Ok(r) => pushed("Pushed", &r),
        Err(PushRefused::Invalid(diags)) => invalid(&text, &diags),
        Err(PushRefused::Failed(e)) => view::api_error(e).await,
    }
}

pub(super) async fn rollback(
    State(s): State<Shared>,
    v: Viewer<Admin>,
    Path(version): Path<i64>,
) -> Response {
    match crate::rules_api::roll_back(&s, &v.caller, version).await {
        Ok(r) => pushed(&format!("Rolled back to version {version}"), &r),
        Err(e) => view::api_error(e).await,
    }
}

/// A push's answer: the new version and each data plane's answer.
fn pushed(what: &str, r: &serde_json::Value) -> Response {
    let planes = r["dataplanes"].as_array().cloned().unwrap_or_default();
    let markup = html! {
        p.ok role="status" {
            (what) " as version " (view::cell(r.get("version")))
            @if r["unchanged"] == true { " (the same text as the current version: sent again)" }
            "."
        }
        (view::json_table(&planes, &[("dataplane", "Data plane"), ("status", "Answer"), ("error", "Why")]))
        p { a href="/console/rules" { "Reload the page" } " to see the history." }
    };
    Html(markup.into_string()).into_response()
}

fn diff_section(s: &Shared, from: i64, to: i64) -> Markup {
    let (a, b) = {
        let store = lock!(s.rules);
        (store.get(from).ok().flatten(), store.get(to).ok().flatten())
    };
    let (Some(a), Some(b)) = (a, b) else {
        return html! { p.error role="alert" { "No such version." } };
    };
    let semantic = crate::rules_api::policy_diff(&a.text, &b.text);
    let text = similar::TextDiff::from_lines(&a.text, &b.text);
    html! {
        section.diff {
            h2 { "Version " (from) " → version " (to) }
            @match &semantic {
                Some(d) if d.is_empty() => { p { "The two versions behave the same." } }
                Some(d) => { (policy_changes(d)) }
                None => { p.error { "A stored version no longer compiles." } }
            }
            pre.textdiff {
                @for group in text.grouped_ops(3) {
                    @for op in group {
                        @for change in text.iter_changes(&op) {
                            @let (class, sign) = match change.tag() {
                                similar::ChangeTag::Delete => ("del", "-"),
                                similar::ChangeTag::Insert => ("ins", "+"),
                                similar::ChangeTag::Equal => ("eq", " "),
                            };
                            span class=(class) { (sign) " " (change.value().trim_end_matches('\n')) "\n" }
                        }
                    }
                    span.sep { "⋯\n" }
                }
            }
        }
    }
}

fn policy_changes(d: &sluice_rules::diff::PolicyDiff) -> Markup {
    let names = |v: &[sluice_rules::RuleSpec]| -> String {
        v.iter().map(|r| r.name.to_string()).collect::<Vec<_>>().join(", ")
    };
    html! {
        ul.changes {
            @if d.defaults.is_some() { li { "The defaults change." } }
            @if !d.rules_added.is_empty() { li { "Rules added: " (names(&d.rules_added)) } }
            @if !d.rules_removed.is_empty() { li { "Rules removed: " (names(&d.rules_removed)) } }
            @for c in &d.rules_changed {
                li { "Rule " (c.name) " changes"
                     @if c.old_position != c.new_position { " (moves from " (c.old_position + 1) " to " (c.new_position + 1) ")" } }
            }
            @if !d.categories_added.is_empty() { li { "Categories added: " (d.categories_added.join(", ")) } }
            @if !d.categories_removed.is_empty() { li { "Categories removed: " (d.categories_removed.join(", ")) } }
            @for c in &d.categories_changed {
                li { "Category " (c.name) ": " (c.added.len()) " name(s) added, " (c.removed.len()) " removed" }
            }
            @if !d.identities_changed.is_empty() { li { "Identities changed: " (d.identities_changed.join(", ")) } }
            @if !d.dlp_changed.is_empty() { li { "DLP profiles changed: " (d.dlp_changed.join(", ")) } }
        }
    }
}
