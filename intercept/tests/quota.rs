//! Quotas in the phases, through the HTTP/1.1 driver: requests are counted per subject and
//! refused with 429 (`retry-after`, `x-should-retry: true`) once a limit is used up; tokens
//! are charged from the responses' `usage`, so the request that crosses a token budget
//! completes and the next is refused; subjects have budgets of their own.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{send, send_answering, session};
use sluice_intercept::Session;
use sluice_intercept::access::Access;
use sluice_rules::{Measure, QuotaBy, QuotaLimit, QuotaPolicy, Window};

fn with_quota(by: QuotaBy, limits: &[(Measure, u64)], access: &Arc<Access>) -> Session {
    let mut s = session("api.openai.com");
    s.headers.quota = Some(QuotaPolicy {
        by,
        // Day windows: a test never straddles one (a minute's could turn mid-test).
        limits: limits
            .iter()
            .map(|&(measure, max)| QuotaLimit { measure, window: Window::Day, max })
            .collect(),
    });
    s.access = access.clone();
    s
}

const GET: &str = "GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\n\r\n";

#[tokio::test]
async fn the_request_past_the_limit_gets_429_with_when_to_retry() {
    let access = Arc::new(Access::default());
    let s = with_quota(QuotaBy::Identity, &[(Measure::Requests, 2)], &access);
    for _ in 0..2 {
        let o = send(s.clone(), GET, b"").await;
        assert!(o.client.starts_with("HTTP/1.1 200"), "{}", o.client);
        assert_eq!(o.record.quota.as_deref(), Some("identity:finance"));
    }
    let o = send(s.clone(), GET, b"").await;
    assert!(o.upstream.is_empty(), "the refused request never left");
    let (head, body) = o.client.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 429 Too Many Requests"), "{head}");
    assert!(head.contains("x-should-retry: true") && head.contains("retry-after: "), "{head}");
    let secs: u64 =
        head.lines().find_map(|l| l.strip_prefix("retry-after: ")).unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&secs), "{secs}");
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["error"]["code"], "quota_exceeded");
    assert_eq!(v["error"]["type"], "rate_limit_exceeded");
    assert!(v["error"]["message"].as_str().unwrap().contains("2 of 2 requests this day"));
    assert_eq!((o.record.status, o.record.code), (Some(429), Some("quota_exceeded")));
    assert_eq!(o.record.quota, None, "a refused request is not counted");
    // Another identity has its own budget.
    let mut other = s.clone();
    other.identity = "engineering".into();
    assert!(send(other, GET, b"").await.client.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn tokens_are_charged_from_the_response_and_refuse_the_next_request() {
    let access = Arc::new(Access::default());
    let s = with_quota(QuotaBy::User, &[(Measure::Tokens, 100)], &access);
    let mut alice = s.clone();
    alice.user = Some("alice@corp".into());
    let body = br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let usage =
        br#"{"id":"c1","usage":{"prompt_tokens":60,"completion_tokens":50,"total_tokens":110}}"#;
    let answer = [
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            usage.len()
        )
        .into_bytes(),
        usage.to_vec(),
    ]
    .concat();
    let o = send_answering(alice.clone(), &head, body, Some(&answer)).await;
    assert!(o.client.starts_with("HTTP/1.1 200"), "{}", o.client);
    assert_eq!((o.record.input_tokens, o.record.output_tokens), (Some(60), Some(50)));
    assert_eq!(o.record.quota.as_deref(), Some("user:alice@corp"));
    let o = send_answering(alice, &head, body, Some(&answer)).await;
    assert!(o.client.starts_with("HTTP/1.1 429"), "{}", o.client);
    assert!(o.client.contains("110 of 100 tokens this day"), "{}", o.client);
    // Without a known user, the request counts against its identity's budget, still whole.
    let o = send_answering(s, &head, body, Some(&answer)).await;
    assert!(o.client.starts_with("HTTP/1.1 200"), "{}", o.client);
    assert_eq!(o.record.quota.as_deref(), Some("identity:finance"));
    assert_eq!(access.quotas.used("user:alice@corp", Window::Day, now()).tokens, 110);
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}
