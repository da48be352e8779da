//! Console: server time (p50/p99) of the overview, flows and requests pages over a store of
//! 1 M records (issue 19's target: p99 ≤ 100 ms), with and without filters. Each page is
//! timed through the daemon's router (session check, role check, store query, rendering,
//! the whole body), interleaved with its reference: the API call that returns the same
//! records as JSON. Printed: p50 and p99 of each, and the page's p99 over the API's.
//! Run: `cargo bench -p sluice-control --bench console` (ROWS to change the size, N for
//! requests per case).
#![allow(missing_docs, clippy::unwrap_used)]

use std::time::{Duration, Instant};

/// The daemon's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use axum::body::Body;
use axum::http::{Request, header};
use serde_json::json;
use sluice_control::api::{AppState, Stores};
use sluice_control::auth::{Role, Tokens, token_hash};
use sluice_control::config::TokenDef;
use sluice_control::record::Row;
use sluice_control::store::FlowStore;
use tower::ServiceExt;

const TOKEN: &str = "bench-admin-token-0123456789";

/// Record `i` of `rows`: flows and (one in five) requests spread over the last 22 hours.
fn rec(i: u64, rows: u64, now: u64) -> String {
    let ids = ["finance", "engineering", "unknown", "sales", "legal"];
    let snis = ["api.openai.com", "chatgpt.com", "example.org", "auth.openai.com", "claude.ai"];
    let ts = now - (rows - i) * 80;
    let verdict = if i.is_multiple_of(7) { "block" } else { "allow" };
    // (Every fifth record is a request: identities and names turn at other periods.)
    let (identity, sni) = (ids[(i / 5 % 5) as usize], snis[(i / 25 % 5) as usize]);
    let src = format!("10.20.{}.{}", (i / 250) % 250, i % 250);
    if i % 5 == 4 {
        let findings = if i.is_multiple_of(9) {
            json!([{"detector": "email", "count": 1}])
        } else {
            json!([])
        };
        json!({"seq": i, "type": "request", "ts_ms": ts, "identity": identity, "sni": sni, "src": src,
               "method": "POST", "path": "/v1/chat/completions", "model": "gpt-4o", "status": 200,
               "verdict": verdict, "rule": format!("rule-{}", i % 12), "category": "openai-api",
               "dlp_findings": findings})
        .to_string()
    } else {
        json!({"seq": i, "type": "flow", "event": "end", "flow_id": i, "ts_ms": ts, "identity": identity,
               "sni": sni, "src": src, "category": "openai", "verdict": verdict,
               "rule": format!("rule-{}", i % 12), "bytes_out": i * 3, "bytes_in": i * 7, "proto": "tcp",
               "dport": 443})
        .to_string()
    }
}

fn state(path: &std::path::Path, rows: u64) -> AppState {
    let mut flows = FlowStore::open(path).unwrap();
    let now = sluice_control::link::now_ms();
    let start = Instant::now();
    let mut seq = 0;
    while seq < rows {
        let texts: Vec<String> = (seq..(seq + 5000).min(rows)).map(|i| rec(i, rows, now)).collect();
        let batch: Vec<Row<'_>> = texts.iter().map(|t| Row::read(t, "dp1").unwrap()).collect();
        flows.ingest("dp1", &batch).unwrap();
        seq += 5000;
    }
    eprintln!("{rows} records stored in {:.1} s", start.elapsed().as_secs_f64());
    let stores = Stores {
        rules: Box::new(sluice_control::rulestore::RuleStore::open_in_memory().unwrap()),
        flows: Box::new(flows),
        identities: Box::new(sluice_control::identstore::IdentStore::open_in_memory().unwrap()),
        keys: sluice_control::keystore::KeyStore::open(
            &path.with_extension("keys.db"),
            &path.with_extension("kek"),
        )
        .unwrap(),
        approvals: sluice_control::approvals::ApprovalStore::open_in_memory().unwrap(),
        fleet: sluice_control::fleet::Fleet::open(path.parent().unwrap()).unwrap(),
    };
    let tokens = Tokens::new(&[TokenDef {
        name: "bench".into(),
        role: Role::Admin,
        sha256: token_hash(TOKEN),
        user: None,
    }]);
    AppState::new(tokens, stores, sluice_control::hub::Hub::new(None), None, None)
}

/// Time of one request through the router and its body; panics unless it answers 200.
async fn time(app: &axum::Router, uri: &str, cookie: &str) -> (Duration, String) {
    let req = Request::get(uri)
        .header(header::COOKIE, cookie)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let start = Instant::now();
    let r = app.clone().oneshot(req).await.unwrap();
    let status = r.status();
    let body = axum::body::to_bytes(r.into_body(), usize::MAX).await.unwrap();
    let spent = start.elapsed();
    let body = String::from_utf8_lossy(&body).into_owned();
    assert!(status.is_success(), "{uri}: {status} {body}");
    (spent, body)
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let k = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[k].as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let rows: u64 = std::env::var("ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let n: usize = std::env::var("N").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let dir = std::env::temp_dir().join(format!("sluice-console-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let app = sluice_control::api::router(std::sync::Arc::new(state(&dir.join("flows.db"), rows)));

    // A session, as a browser gets one.
    let login = Request::post("/console/login")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("token={TOKEN}")))
        .unwrap();
    let r = app.clone().oneshot(login).await.unwrap();
    let set = r.headers().get(header::SET_COOKIE).unwrap().to_str().unwrap();
    let cookie = set.split(';').next().unwrap().to_owned();

    // (case, page, the API call returning the same records).
    let cases = [
        ("overview (24 h charts)", "/console/", "/v1/status"),
        ("overview (7 d charts)", "/console/?window=7d", "/v1/status"),
        ("flows, newest 100", "/console/flows", "/v1/flows?limit=100"),
        (
            "flows, identity=legal verdict=block",
            "/console/flows?identity=legal&verdict=block",
            "/v1/flows?identity=legal&verdict=block&limit=100",
        ),
        (
            "flows, src=10.20.7.33",
            "/console/flows?src=10.20.7.33",
            "/v1/flows?src=10.20.7.33&limit=100",
        ),
        (
            "flows, since=3h until=2h",
            "/console/flows?since=3h&until=2h",
            "/v1/flows?since=3h&until=2h&limit=100",
        ),
        ("flows, rule=absent", "/console/flows?rule=absent", "/v1/flows?rule=absent&limit=100"),
        ("requests, newest 100", "/console/requests", "/v1/requests?limit=100"),
        (
            "requests, detector=email since=1h",
            "/console/requests?detector=email&since=1h",
            "/v1/requests?detector=email&since=1h&limit=100",
        ),
        (
            "flows, live tail (after newest)",
            "/console/flows/tail?after=999999999",
            "/v1/flows?limit=1",
        ),
    ];
    println!("console over {rows} records, {n} requests per case (interleaved with the API)");
    println!(
        "{:<38} {:>5} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "case", "rows", "page p50", "page p99", "api p50", "api p99", "p99 ×api"
    );
    let mut worst: f64 = 0.0;
    for (name, page, api) in cases {
        // Warm the caches the way a running daemon has them; the rows the page shows.
        let rows = time(&app, page, &cookie).await.1.matches("data-id=").count();
        time(&app, api, "").await;
        let (mut p, mut a) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for _ in 0..n {
            p.push(time(&app, page, &cookie).await.0);
            a.push(time(&app, api, "").await.0);
        }
        let (p50, p99, a50, a99) =
            (pct(&mut p, 0.5), pct(&mut p, 0.99), pct(&mut a, 0.5), pct(&mut a, 0.99));
        worst = worst.max(p99);
        println!(
            "{name:<38} {rows:>5} {p50:>7.2}ms {p99:>7.2}ms {a50:>7.2}ms {a99:>7.2}ms {:>7.2}×",
            p99 / a99
        );
    }
    println!("worst page p99: {worst:.2} ms (target ≤ 100 ms)");
    let _ = std::fs::remove_dir_all(&dir);
}
