//! The console over real HTTPS, as a browser speaks to it (curl with cookies and the headers
//! htmx sends): login, the session cookie, roles exactly as in the API, CSRF, pushes with
//! errors at their lines. The lab's browser test (tests/e2e/test_console.py) drives the same
//! pages in Chromium.
#![allow(clippy::unwrap_used)]

use std::path::Path;

mod common;

use common::web::{http, login};
use common::*;

#[test]
fn console_login_roles_csrf_and_push() {
    let d = start();
    let origin = format!("Origin: https://localhost:{}", d.port);

    // Not logged in: pages go to the login; htmx is told to go there.
    let r = http(&d, "GET", "/console/flows", &[], &[]);
    assert_eq!((r.code, r.header("location")), (303, Some("/console/login")));
    let r = http(&d, "GET", "/console/flows/tail?after=0", &["HX-Request: true"], &[]);
    assert_eq!((r.code, r.header("hx-redirect")), (401, Some("/console/login")));
    let r = http(&d, "GET", "/console/login", &[], &[]);
    assert_eq!(r.code, 200);
    let csp = r.header("content-security-policy").unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");

    // A wrong token, and a right one from another site, are refused.
    let r = http(&d, "POST", "/console/login", &[&origin], &["token=nope"]);
    assert_eq!(r.code, 401);
    assert!(r.body.contains("not valid"), "{}", r.body);
    let r = http(
        &d,
        "POST",
        "/console/login",
        &["Sec-Fetch-Site: cross-site"],
        &[&format!("token={ADMIN}")],
    );
    assert_eq!(r.code, 403);
    assert!(r.header("set-cookie").is_none());

    // The analyst: reads, sees no push, may not push or read the audit log here either.
    let (cookie, csrf) = login(&d, ANALYST);
    let x = format!("X-CSRF-Token: {csrf}");
    for page in [
        "/console/",
        "/console/flows",
        "/console/requests",
        "/console/rules",
        "/console/inventory",
        "/console/identities",
    ] {
        let r = http(&d, "GET", page, &[&cookie], &[]);
        assert_eq!(r.code, 200, "{page}: {}", r.body);
        assert!(!r.body.contains("push-button"), "{page}");
        assert!(!r.body.contains("href=\"/console/audit\""), "{page}: no audit link for analysts");
    }
    assert_eq!(http(&d, "GET", "/console/audit", &[&cookie], &[]).code, 403);
    assert_eq!(http(&d, "GET", "/console/approvals", &[&cookie], &[]).code, 403);
    let default = rules(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../rules/default.toml")));
    let text = format!("text={default}");
    let r = http(&d, "POST", "/console/rules/push", &[&cookie, &x, &origin], &[&text]);
    assert_eq!(r.code, 403, "{}", r.body);
    assert_eq!(call(&d, "PUT", "/v1/rules", Some(ANALYST), Some(&default)).0, 403);

    // The admin: without the CSRF token, or from another origin, a push is refused.
    let (cookie, csrf) = login(&d, ADMIN);
    let x = format!("X-CSRF-Token: {csrf}");
    let r = http(&d, "GET", "/console/rules", &[&cookie], &[]);
    assert!(r.body.contains("push-button"), "admins see the push");
    assert_eq!(http(&d, "POST", "/console/rules/push", &[&cookie], &[&text]).code, 403);
    let wrong = "X-CSRF-Token: not-the-token";
    assert_eq!(http(&d, "POST", "/console/rules/push", &[&cookie, wrong], &[&text]).code, 403);
    let evil = "Origin: https://evil.example";
    assert_eq!(http(&d, "POST", "/console/rules/push", &[&cookie, &x, evil], &[&text]).code, 403);
    assert_eq!(call(&d, "GET", "/v1/rules", Some(ADMIN), None).0, 404, "nothing was pushed");

    // A broken rule set: the error at its line, nothing pushed; then a good push.
    let broken =
        default.replace("action = \"block\"\ndescription", "action = \"blok\"\ndescription");
    let line = broken.lines().position(|l| l.contains("\"blok\"")).unwrap() + 1;
    let r = http(
        &d,
        "POST",
        "/console/rules/push",
        &[&cookie, &x, &origin],
        &[&format!("text={broken}")],
    );
    assert_eq!(r.code, 422, "{}", r.body);
    assert!(r.body.contains(&format!("line {line}, column")), "{}", r.body);
    assert!(
        r.body.contains(&format!("id=\"line-{line}\" class=\"marked\""))
            || r.body.contains(&format!("class=\"marked\" id=\"line-{line}\"")),
        "{}",
        r.body
    );
    assert_eq!(call(&d, "GET", "/v1/rules", Some(ADMIN), None).0, 404);
    let r = http(&d, "POST", "/console/rules/push", &[&cookie, &x, &origin], &[&text]);
    assert_eq!(r.code, 200, "{}", r.body);
    assert!(r.body.contains("Pushed as version 1"), "{}", r.body);
    let (_, body) = call(&d, "GET", "/v1/rules", Some(ADMIN), None);
    assert_eq!(json(&body)["text"].as_str(), Some(default.as_str()), "CRLF-free, as sent");

    // Filters: a malformed one says which; records' pages answer.
    let r = http(&d, "GET", "/console/flows?since=yesterdayish", &[&cookie], &[]);
    assert_eq!(r.code, 400);
    assert!(r.body.contains("since:"), "{}", r.body);
    let r = http(&d, "GET", "/console/requests?live=1&verdict=block", &[&cookie], &[]);
    assert!(r.code == 200 && r.body.contains("id=\"tail\""), "{}", r.body);
    let r = http(
        &d,
        "GET",
        "/console/flows/tail?after=0&verdict=block",
        &[&cookie, "HX-Request: true"],
        &[],
    );
    assert_eq!(r.code, 200, "{}", r.body);
    assert_eq!(http(&d, "GET", "/console/flows/999", &[&cookie], &[]).code, 404);

    // Assets are embedded; pages are never cached.
    let r = http(&d, "GET", "/console/assets/htmx.min.js", &[], &[]);
    assert_eq!((r.code, r.header("content-type")), (200, Some("text/javascript")));
    assert_eq!(http(&d, "GET", "/console/assets/nope.js", &[], &[]).code, 404);
    assert_eq!(
        http(&d, "GET", "/console/", &[&cookie], &[]).header("cache-control"),
        Some("no-store")
    );

    // Logging out ends the session (the analyst's stays).
    let sessions = || call(&d, "GET", "/metrics", Some(ADMIN), None).1;
    assert!(sessions().contains("sluice_console_sessions 2"), "{}", sessions());
    let r = http(&d, "POST", "/console/logout", &[&cookie, &x, &origin], &[]);
    assert_eq!((r.code, r.header("hx-redirect")), (200, Some("/console/login")));
    assert_eq!(http(&d, "GET", "/console/", &[&cookie], &[]).code, 303);
    assert!(sessions().contains("sluice_console_sessions 1"), "{}", sessions());

    // The audit log: logins, the refused login and push; never a token.
    let (_, body) = call(&d, "GET", "/v1/audit", Some(ADMIN), None);
    let actions: Vec<String> = json(&body)
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    for a in
        ["console.login", "console.logout", "rules.push", "rules.push.refused", "token.refused"]
    {
        assert!(actions.iter().any(|x| x == a), "{a} in {actions:?}");
    }
    assert!(!body.contains(ADMIN) && !body.contains(ANALYST), "tokens never reach the log");
}

#[test]
fn console_live_tail_brings_new_records_and_says_when_it_lags() {
    use sluice_link::Down;
    let d = start();
    let (cookie, _) = login(&d, ANALYST);
    let hx = "HX-Request: true";
    let mut dp = FakeDataplane::connect(&d, "dp-tail", sluice_link::PROTO_VERSION);
    while !matches!(dp.recv(), Some(Down::Usage { .. })) {}
    let now = sluice_control::link::now_ms();
    let flow = |seq: u64, verdict: &str| {
        serde_json::json!({"seq": seq, "type": "flow", "ts_ms": now + seq, "src": "10.0.0.1",
                           "sni": "api.openai.com", "verdict": verdict})
    };
    dp.send_records(&[flow(1, "allow"), flow(2, "block")]);
    assert_eq!(dp.recv(), Some(Down::Ack { upto: 2 }));

    // The page with the tail on: its poller starts after the newest record shown.
    let r = http(&d, "GET", "/console/flows?live=1&verdict=block", &[&cookie], &[]);
    assert_eq!(r.body.matches("data-id=").count(), 1, "{}", r.body);
    let after = |body: &str| -> i64 {
        let at = body.find("after=").unwrap() + "after=".len();
        body[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
    };
    let first = after(&r.body);
    assert!(first > 0);

    // New records: the tail brings those matching the filter, newest first, and moves on.
    dp.send_records(&[flow(3, "block"), flow(4, "allow"), flow(5, "block")]);
    assert_eq!(dp.recv(), Some(Down::Ack { upto: 5 }));
    let path = |a: i64| format!("/console/flows/tail?after={a}&live=1&verdict=block");
    let r = http(&d, "GET", &path(first), &[&cookie, hx], &[]);
    assert_eq!(r.code, 200, "{}", r.body);
    let ids: Vec<i64> = r
        .body
        .match_indices("data-id=\"")
        .map(|(i, m)| r.body[i + m.len()..].split('"').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{}", r.body);
    assert!(ids[0] > ids[1] && ids[1] > first, "{ids:?}");
    assert!(r.body.find("id=\"tail\"").unwrap() < r.body.find("data-id=").unwrap(), "poller first");
    let second = after(&r.body);
    assert_eq!(second, ids[0]);
    let r = http(&d, "GET", &path(second), &[&cookie, hx], &[]);
    assert_eq!(r.body.matches("data-id=").count(), 0, "nothing new: {}", r.body);

    // More than a tail update brings at once: the newest 1,000, and a row that says so.
    let many: Vec<serde_json::Value> = (6..1206).map(|s| flow(s, "block")).collect();
    for chunk in many.chunks(300) {
        dp.send_records(chunk);
        assert!(matches!(dp.recv(), Some(Down::Ack { .. })));
    }
    let r = http(&d, "GET", &path(second), &[&cookie, hx], &[]);
    assert_eq!(r.body.matches("data-id=").count(), 1000, "{}", &r.body[..300]);
    assert!(r.body.contains("More than 1000 records arrived"), "the lag is said");
    let r = http(&d, "GET", &path(0).replace("after=0", "after=-1"), &[&cookie, hx], &[]);
    assert_eq!(r.code, 400);
}
