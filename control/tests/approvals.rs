//! Approvals through the real daemon: a data plane (spoken by hand) holds a request; the
//! webhook hears of it (without the prompt); an approver lists it and reads the prompt the
//! rule let reviewers see; an analyst cannot; the requester cannot approve their own; the
//! decision goes down the link, is audited, and a request decided once cannot be decided
//! again; a timeout ends a wait.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};

use common::*;
use sluice_control::auth::token_hash;
use sluice_link::{Down, HoldTicket, Secret, Up};

const REVIEWER: &str = "reviewer-token-0123456789";
const ALICE: &str = "alice-reviewer-token-0123456789";

fn ticket(id: &str, prompt: Option<&str>) -> HoldTicket {
    HoldTicket {
        id: id.into(),
        ts_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
        timeout_s: 120,
        rule: Some("finance-hold".into()),
        identity: "finance".into(),
        user: Some("alice@corp".into()),
        src: "10.20.1.10".into(),
        destination: "api.openai.com".into(),
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        model: Some("gpt-4o".into()),
        why: "rule".into(),
        findings: Vec::new(),
        prompt: prompt.map(|p| Secret::new(p.into())),
    }
}

/// Waits until `GET path` (as `token`) answers a body `pred` accepts.
fn wait_for(d: &Daemon, path: &str, token: &str, pred: impl Fn(&serde_json::Value) -> bool) {
    for _ in 0..100 {
        let (code, body) = call(d, "GET", path, Some(token), None);
        if code == 200 && pred(&json(&body)) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("{path} never matched");
}

#[test]
fn a_held_request_is_listed_notified_decided_once_and_audited() {
    let hook = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hook_port = hook.local_addr().unwrap().port();
    let d = start_with(&format!(
        "[[tokens]]\nname = \"rev\"\nrole = \"approver\"\nsha256 = \"{}\"\nuser = \"bob@corp\"\n\n\
         [[tokens]]\nname = \"alice-rev\"\nrole = \"approver\"\nsha256 = \"{}\"\nuser = \"alice@corp\"\n\n\
         [approvals]\nwebhook = \"http://127.0.0.1:{hook_port}/hook\"\n",
        token_hash(REVIEWER),
        token_hash(ALICE)
    ));
    let mut dp = FakeDataplane::connect(&d, "dp-a", sluice_link::PROTO_VERSION);
    while !matches!(dp.recv(), Some(Down::Usage { .. })) {}
    // A hold whose id is not one a data plane makes is ignored (it would reach URLs in the
    // console): the webhook hears of the next one only, and only that one is listed below.
    dp.send(&Up::Held { ticket: Box::new(ticket("../rules/rollback/1", None)) });
    dp.send(&Up::Held {
        ticket: Box::new(ticket("apr_0000000000000000000000a1", Some("the secret plan"))),
    });

    // The webhook: a POST naming the request, never its prompt.
    let (mut c, _) = hook.accept().unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\"timeout_s\"") {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "the webhook closed early");
        got.extend_from_slice(&buf[..n]);
    }
    c.write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n").unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("POST /hook HTTP/1.1"), "{text}");
    assert!(text.contains("apr_0000000000000000000000a1") && text.contains("alice@corp"), "{text}");
    assert!(!text.contains("secret plan"), "the prompt went to the webhook");

    wait_for(&d, "/v1/approvals", REVIEWER, |v| v["approvals"].as_array().unwrap().len() == 1);
    // The console shows the reviewer why it waits and the prompt (the rule lets reviewers
    // read it); the malformed hold is nowhere.
    let (cookie, _) = common::web::login(&d, REVIEWER);
    let page = common::web::http(&d, "GET", "/console/approvals", &[&cookie], &[]);
    assert!(page.body.contains("apr_0000000000000000000000a1"), "{}", page.body);
    assert!(page.body.contains("the secret plan") && !page.body.contains("../rules"));
    let (code, body) =
        call(&d, "GET", "/v1/approvals/apr_0000000000000000000000a1", Some(REVIEWER), None);
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["prompt"], "the secret plan");
    assert_eq!(json(&body)["request"]["model"], "gpt-4o");
    // Roles: an analyst reads records, not held requests; no token, nothing.
    assert_eq!(call(&d, "GET", "/v1/approvals", Some(ANALYST), None).0, 403);
    assert_eq!(call(&d, "GET", "/v1/approvals", None, None).0, 401);
    let approve = Some(r#"{"decision":"approve","minutes":30}"#);
    assert_eq!(
        call(&d, "POST", "/v1/approvals/apr_0000000000000000000000a1", Some(ANALYST), approve).0,
        403
    );
    // alice may review, but not her own request.
    let (code, body) =
        call(&d, "POST", "/v1/approvals/apr_0000000000000000000000a1", Some(ALICE), approve);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("of their own"), "{body}");
    // Malformed decisions.
    for bad in [
        r#"{"decision":"maybe"}"#,
        r#"{"decision":"deny","minutes":5}"#,
        "{",
        r#"{"decision":"approve","minutes":0}"#,
    ] {
        assert_eq!(
            call(
                &d,
                "POST",
                "/v1/approvals/apr_0000000000000000000000a1",
                Some(REVIEWER),
                Some(bad)
            )
            .0,
            400,
            "{bad}"
        );
    }
    assert_eq!(
        call(&d, "POST", "/v1/approvals/apr_0000000000000000000000a9", Some(REVIEWER), approve).0,
        404
    );

    let (code, body) =
        call(&d, "POST", "/v1/approvals/apr_0000000000000000000000a1", Some(REVIEWER), approve);
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["approval"]["state"], "approved");
    match dp.recv() {
        Some(Down::Decision { decision }) => {
            assert!(decision.approved && decision.by == "rev");
            let g = decision.grant.unwrap();
            assert_eq!(
                (g.who.as_str(), g.destination.as_str()),
                ("user:alice@corp", "api.openai.com")
            );
            assert_eq!(g.rule.as_deref(), Some("finance-hold"));
        }
        other => panic!("expected the decision, got {other:?}"),
    }
    // A data plane that held it again (after a reconnect) is told the decision again.
    dp.send(&Up::Held { ticket: Box::new(ticket("apr_0000000000000000000000a1", None)) });
    assert!(
        matches!(dp.recv(), Some(Down::Decision { decision }) if decision.id == "apr_0000000000000000000000a1" && decision.approved)
    );
    // Decided once; the prompt is gone with the wait.
    let (code, body) =
        call(&d, "POST", "/v1/approvals/apr_0000000000000000000000a1", Some(REVIEWER), approve);
    assert_eq!(code, 409, "{body}");
    let (_, body) =
        call(&d, "GET", "/v1/approvals/apr_0000000000000000000000a1", Some(REVIEWER), None);
    assert!(json(&body)["prompt"].is_null());
    let (_, audit) = call(&d, "GET", "/v1/audit", Some(ADMIN), None);
    assert!(
        audit.contains("approval.approve") && audit.contains("apr_0000000000000000000000a1"),
        "{audit}"
    );
    assert!(!audit.contains("secret plan"));

    // A timeout reported by the data plane ends the wait.
    dp.send(&Up::Held { ticket: Box::new(ticket("apr_0000000000000000000000a2", None)) });
    wait_for(&d, "/v1/approvals", REVIEWER, |v| v["approvals"].as_array().unwrap().len() == 1);
    dp.send(&Up::HoldEnded {
        id: "apr_0000000000000000000000a2".into(),
        outcome: "timeout".into(),
    });
    wait_for(&d, "/v1/approvals?state=timeout", REVIEWER, |v| {
        v["approvals"].as_array().unwrap().len() == 1
    });
    let deny = Some(r#"{"decision":"deny","reason":"too late"}"#);
    assert_eq!(
        call(&d, "POST", "/v1/approvals/apr_0000000000000000000000a2", Some(REVIEWER), deny).0,
        409
    );
    // Nothing of the prompt in control's state directory.
    for e in std::fs::read_dir(d.dir.join("state")).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            let data = std::fs::read(&p).unwrap();
            assert!(!data.windows(11).any(|w| w == b"secret plan"), "{}", p.display());
        }
    }
}
