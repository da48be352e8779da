//! Just-in-time approval through the HTTP/1.1 driver: a held request waits on the desk until
//! a reviewer (here, a task standing in for control) decides; approved it reaches the server,
//! denied or unanswered the client gets 403 in OpenAI's shape with the reason; with nobody to
//! ask it is refused at once; an approval for a while lets the next request through; DLP
//! findings under a profile that approves hold only the requests that have them.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{send, session, with_dlp};
use sluice_intercept::Session;
use sluice_intercept::access::Access;
use sluice_link::{Decision, Grant, HoldTicket, Up};
use sluice_rules::{ApprovalPolicy, DlpAction};

fn held(every_request: bool, timeout_s: u64) -> (Session, Arc<Access>) {
    let access = Arc::new(Access::default());
    access.approvals.connected.store(true, Ordering::Relaxed);
    let mut s = session("api.openai.com");
    s.user = Some("alice@corp".into());
    s.headers.approval =
        Some(ApprovalPolicy { every_request, timeout_s, shows_prompt: true, max_held: 4 });
    s.access = access.clone();
    (s, access)
}

/// A reviewer answering every ticket with `decide`; the tickets it saw.
fn reviewer(
    access: &Arc<Access>,
    decide: impl Fn(&HoldTicket) -> Option<Decision> + Send + 'static,
) -> Arc<std::sync::Mutex<Vec<HoldTicket>>> {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (a, s) = (access.clone(), seen.clone());
    tokio::spawn(async move {
        loop {
            while let Some(m) = a.approvals.poll_up() {
                if let Up::Held { ticket } = m {
                    if let Some(d) = decide(&ticket) {
                        a.approvals.decide(d);
                    }
                    s.lock().unwrap().push(*ticket);
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    seen
}

fn decision(t: &HoldTicket, approved: bool, reason: Option<&str>) -> Decision {
    Decision {
        id: t.id.clone(),
        approved,
        by: "rev".into(),
        reason: reason.map(str::to_owned),
        grant_minutes: None,
        grant: None,
    }
}

const BODY: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"plan the merger"}]}"#;

fn post() -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        BODY.len()
    )
}

#[tokio::test]
async fn an_approved_request_reaches_the_server_with_who_approved_in_its_record() {
    let (s, access) = held(true, 30);
    let seen = reviewer(&access, |t| Some(decision(t, true, None)));
    let o = send(s, &post(), BODY.as_bytes()).await;
    assert!(o.client.starts_with("HTTP/1.1 200"), "{}", o.client);
    assert!(String::from_utf8_lossy(&o.upstream).contains("plan the merger"));
    let a = o.record.approval.clone().unwrap();
    assert_eq!((a.decision, a.by.as_deref()), ("approved", Some("rev")));
    let t = seen.lock().unwrap()[0].clone();
    assert_eq!(
        (t.user.as_deref(), t.model.as_deref(), t.why.as_str()),
        (Some("alice@corp"), Some("gpt-4o"), "rule")
    );
    assert!(t.prompt.unwrap().expose().contains("plan the merger"), "the rule shows the prompt");
    assert_eq!(access.approvals.waiting(), 0);
}

#[tokio::test]
async fn a_denied_request_gets_403_with_the_reason_and_never_leaves() {
    let (s, access) = held(true, 30);
    reviewer(&access, |t| Some(decision(t, false, Some("not for this project"))));
    let o = send(s, &post(), BODY.as_bytes()).await;
    assert!(o.upstream.is_empty(), "a denied request reached the server");
    assert!(o.client.starts_with("HTTP/1.1 403"), "{}", o.client);
    assert!(o.client.contains("x-should-retry: false"));
    assert!(o.client.contains("approval_denied") && o.client.contains("not for this project"));
    assert_eq!(o.record.approval.unwrap().decision, "denied");
}

#[tokio::test]
async fn nobody_deciding_in_time_or_nobody_to_ask_refuses() {
    let (s, access) = held(true, 1);
    let seen = reviewer(&access, |_| None);
    let o = send(s, &post(), BODY.as_bytes()).await;
    assert!(o.upstream.is_empty());
    assert!(o.client.starts_with("HTTP/1.1 403") && o.client.contains("approval_timeout"));
    assert_eq!(o.record.approval.unwrap().decision, "timeout");
    assert_eq!(seen.lock().unwrap().len(), 1);
    // The end of the wait is told to control.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(access.approvals.waiting(), 0);
    let (s, access) = held(true, 30);
    access.approvals.connected.store(false, Ordering::Relaxed);
    let o = send(s, &post(), BODY.as_bytes()).await;
    assert!(o.client.starts_with("HTTP/1.1 503") && o.client.contains("approval_unavailable"));
}

#[tokio::test]
async fn an_approval_for_a_while_lets_the_next_request_through_unheld() {
    let (s, access) = held(true, 30);
    let until_ms = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap()
        + Duration::from_secs(600))
    .as_millis() as u64;
    let seen = reviewer(&access, move |t| {
        let mut d = decision(t, true, None);
        d.grant_minutes = Some(10);
        d.grant = Some(Grant {
            who: "user:alice@corp".into(),
            destination: "api.openai.com".into(),
            rule: t.rule.clone(),
            until_ms,
        });
        Some(d)
    });
    assert!(send(s.clone(), &post(), BODY.as_bytes()).await.client.starts_with("HTTP/1.1 200"));
    let o = send(s.clone(), &post(), BODY.as_bytes()).await;
    assert!(o.client.starts_with("HTTP/1.1 200"));
    assert_eq!(o.record.approval.unwrap().decision, "granted");
    assert_eq!(seen.lock().unwrap().len(), 1, "the second request did not wait");
    // Another user is not covered.
    let mut bob = s;
    bob.user = Some("bob@corp".into());
    send(bob, &post(), BODY.as_bytes()).await;
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_profile_that_approves_holds_only_requests_with_findings() {
    let (s, access) = held(false, 30);
    let s = with_dlp(s, &["credit_card"], DlpAction::Approve);
    let seen = reviewer(&access, |t| Some(decision(t, true, None)));
    let o = send(s.clone(), &post(), BODY.as_bytes()).await;
    assert!(o.client.starts_with("HTTP/1.1 200") && o.record.approval.is_none());
    let card =
        r#"{"model":"gpt-4o","messages":[{"role":"user","content":"card 4111 1111 1111 1111"}]}"#;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        card.len()
    );
    let o = send(s, &head, card.as_bytes()).await;
    assert!(o.client.starts_with("HTTP/1.1 200"), "{}", o.client);
    assert_eq!(o.record.dlp_action, Some("approve"));
    let t = seen.lock().unwrap()[0].clone();
    assert_eq!(
        (t.why.as_str(), t.findings[0].detector.as_str(), t.findings[0].count),
        ("dlp", "credit_card", 1)
    );
}

#[tokio::test]
async fn waits_are_bounded_per_identity() {
    let (mut s, access) = held(true, 30);
    if let Some(a) = s.headers.approval.as_mut() {
        a.max_held = 1;
    }
    // Nobody decides: the first waits, the second is refused at once.
    let s1 = s.clone();
    let first = tokio::spawn(async move { send(s1, &post(), BODY.as_bytes()).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let o = send(s, &post(), BODY.as_bytes()).await;
    assert!(o.client.starts_with("HTTP/1.1 503") && o.client.contains("approval_queue_full"));
    first.abort();
    let _ = access;
}

#[tokio::test]
async fn a_client_that_leaves_while_held_takes_its_request_off_the_desk() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};
    let (s, access) = held(true, 30);
    let (mut c, mut proxy_client) = duplex(1 << 20);
    let (mut server, mut proxy_server) = duplex(1 << 20);
    let task = tokio::spawn(async move {
        let sink = |_: sluice_intercept::RequestRecord| {};
        sluice_intercept::h1::serve(&mut proxy_client, Some(&mut proxy_server), &s, &sink).await
    });
    c.write_all(post().as_bytes()).await.unwrap();
    c.write_all(BODY.as_bytes()).await.unwrap();
    let mut id = None;
    for _ in 0..100 {
        if let Some(Up::Held { ticket }) = access.approvals.poll_up() {
            id = Some(ticket.id.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let id = id.expect("the request waits");
    drop(c);
    let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    assert_eq!(access.approvals.waiting(), 0);
    assert!(
        matches!(access.approvals.poll_up(), Some(Up::HoldEnded { id: i, outcome }) if i == id && outcome == "gone")
    );
    // A late approval finds nothing: the server never hears of the request.
    access.approvals.decide(Decision {
        id,
        approved: true,
        by: "rev".into(),
        reason: None,
        grant_minutes: None,
        grant: None,
    });
    let mut b = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_millis(200), server.read(&mut b)).await;
    assert!(!matches!(r, Ok(Ok(n)) if n > 0), "the request went upstream");
}
