//! The overview: the rule set in force, the data planes (link, policy version and whether it
//! is control's, spool), and charts of traffic, blocks and DLP findings over a window, read
//! from the store's counts per minute ([`crate::series`]).

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use serde_json::{Value, json};

use super::session::Viewer;
use super::view;
use crate::api::lock;
use crate::api::needs::Read;
use crate::link::DataplaneStatus;
use crate::state::Shared;

/// The windows a chart can show: (parameter, label, span in minutes, step in minutes).
const WINDOWS: &[(&str, &str, u64, u64)] = &[
    ("1h", "Last hour", 60, 1),
    ("24h", "Last 24 hours", 24 * 60, 10),
    ("7d", "Last 7 days", 7 * 24 * 60, 60),
];

pub(super) async fn page(
    State(s): State<Shared>,
    v: Viewer<Read>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let w = q.get("window").map_or("24h", String::as_str);
    let Some(&(wname, wlabel, span, step)) = WINDOWS.iter().find(|x| x.0 == w) else {
        return view::refusal(StatusCode::BAD_REQUEST, "window: 1h, 24h or 7d");
    };
    let now = crate::link::now_ms();
    let rules = lock!(s.rules).current().ok().flatten();
    let series = lock!(s.flows).series(now.saturating_sub(span * 60_000), now, step);
    let dataplanes = crate::status_api::dataplanes(&s);
    let connected = dataplanes.iter().filter(|d| d.connected).count();
    let chart = match &series {
        Ok(points) => {
            let col = |f: fn(&crate::series::Counts) -> u64| -> Vec<u64> {
                points.iter().map(|(_, c)| f(c)).collect()
            };
            json!({
                "t": points.iter().map(|(t, _)| t / 1000).collect::<Vec<_>>(),
                "flows": col(|c| c.flows),
                "requests": col(|c| c.requests),
                "blocked": col(|c| c.blocked),
                "findings": col(|c| c.findings),
                "step_min": step,
            })
        }
        Err(e) => {
            tracing::error!("console overview: {e}");
            Value::Null
        }
    };
    let total = |f: fn(&crate::series::Counts) -> u64| -> u64 {
        series.as_ref().map_or(0, |p| p.iter().map(|(_, c)| f(c)).sum())
    };
    let body = html! {
        section.cards {
            div.card {
                h3 { "Rule set" }
                @match &rules {
                    Some(r) => { p.big { "v" (r.version) } p { "by " (r.author) ", " (view::time(u64::try_from(r.ts_ms).unwrap_or(0))) } }
                    None => { p.big { "none" } p { "No rule set pushed yet." } }
                }
            }
            div.card {
                h3 { "Data planes" }
                p.big { (connected) " / " (dataplanes.len()) }
                p { "connected" }
            }
            div.card { h3 { "Flows" } p.big #total-flows { (total(|c| c.flows)) } p { (wlabel) } }
            div.card { h3 { "Requests" } p.big #total-requests { (total(|c| c.requests)) } p { (wlabel) } }
            div.card.warn { h3 { "Blocked" } p.big #total-blocked { (total(|c| c.blocked)) } p { (wlabel) } }
            div.card.warn { h3 { "DLP findings" } p.big #total-findings { (total(|c| c.findings)) } p { "requests, " (wlabel) } }
        }
        nav.windows {
            @for (name, label, _, _) in WINDOWS {
                a href={ "/console/?window=" (name) } class=[(*name == wname).then_some("here")] { (label) }
            }
        }
        section.charts {
            figure { figcaption { "Traffic (records per " (step) " min)" } div.chart #chart-traffic {} }
            figure { figcaption { "Blocks and DLP findings (per " (step) " min)" } div.chart #chart-risk {} }
        }
        @if chart.is_null() { p.error { "The counts could not be read (see the daemon's log)." } }
        (view::data_block("series", &chart))
        h2 { "Data planes" }
        (dataplane_table(&dataplanes, rules.as_ref().map(|r| r.version)))
    };
    view::page(&v.chrome("/console/"), "Overview", true, body)
}

fn stat(d: &DataplaneStatus, path: &[&str]) -> Option<u64> {
    let mut v = d.stats.as_ref()?;
    for p in path {
        v = v.get(p)?;
    }
    v.as_u64()
}

fn dataplane_table(all: &[DataplaneStatus], current: Option<i64>) -> Markup {
    html! {
        table.dataplanes {
            thead { tr {
                th { "Name" } th { "Link" } th { "Since" } th { "Policy" } th { "Records received" }
                th { "Spool" } th { "Spool dropped" } th { "Identities" }
            } }
            tbody {
                @for d in all {
                    tr {
                        td { (d.name) }
                        td class=(if d.connected { "ok" } else { "bad" }) { (if d.connected { "up" } else { "down" }) }
                        td { (view::time(d.since_ms)) }
                        td class=[(d.policy_current == Some(false)).then_some("bad")] {
                            @match d.policy_version { Some(p) => { "v" (p) }, None => { "local file" } }
                            @match d.policy_current {
                                Some(true) => { " (current)" }
                                Some(false) => { " DIVERGED from v" (current.unwrap_or(0)) }
                                None => {}
                            }
                            @if let Some(e) = &d.policy_error { br; span.error { "refused a push: " (e) } }
                        }
                        td { (d.records_received) }
                        td { (stat(d, &["link", "spool_depth"]).map(|n| n.to_string()).unwrap_or_default()) }
                        td { (stat(d, &["link", "spool_dropped"]).map(|n| n.to_string()).unwrap_or_default()) }
                        td { (d.identities.map(|(_, n)| n.to_string()).unwrap_or_default()) }
                    }
                }
            }
        }
        @if all.is_empty() { p.empty { "No data plane has connected yet." } }
    }
}
