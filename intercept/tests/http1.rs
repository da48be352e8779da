//! The interception engine's HTTP/1.1 exchange over in-memory pipes: the client side is the
//! test, the server side a scripted peer that records what it received.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_intercept::block::Refusal;
use sluice_intercept::h1::{ProxyError, serve, serve_keeping};
use sluice_intercept::{Mask, RequestRecord, Session as Exchange, key_fingerprint};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

fn exchange(sni: &str) -> Exchange {
    common::session(sni)
}

fn with_dlp(ex: Exchange, action: sluice_rules::DlpAction) -> Exchange {
    common::with_dlp(ex, &["credit_card", "aws_access_key_id"], action)
}

type Records = Arc<Mutex<Vec<RequestRecord>>>;

/// Runs the proxy between a client pipe and a server pipe; returns the test's ends.
fn start(
    ex: Exchange,
    with_upstream: bool,
) -> (DuplexStream, DuplexStream, Records, tokio::task::JoinHandle<Result<(), ProxyError>>) {
    let (client_end, mut proxy_client) = duplex(1 << 20);
    let (server_end, mut proxy_server) = duplex(1 << 20);
    let records: Records = Arc::default();
    let r = records.clone();
    let task = tokio::spawn(async move {
        let emit = move |rec: RequestRecord| r.lock().unwrap().push(rec);
        if with_upstream {
            serve(&mut proxy_client, Some(&mut proxy_server), &ex, &emit).await
        } else {
            serve::<_, DuplexStream>(&mut proxy_client, None, &ex, &emit).await
        }
    });
    (client_end, server_end, records, task)
}

/// Reads until `needle` has been seen (or the peer closes); returns all read.
async fn read_until(s: &mut DuplexStream, needle: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(needle.len()).any(|w| w == needle) {
        let n =
            tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    got
}

async fn read_to_end(s: &mut DuplexStream) -> String {
    let mut v = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut v)).await.unwrap().unwrap();
    String::from_utf8_lossy(&v).into_owned()
}

#[tokio::test]
async fn pipelined_keep_alive_requests_in_order() {
    let (mut c, mut s, records, task) = start(exchange("api.openai.com"), true);
    c.write_all(
        b"GET /v1/models?key=secret HTTP/1.1\r\nHost: api.openai.com\r\nAuthorization: Bearer sk-test-123\r\n\r\n\
          GET /v1/files HTTP/1.1\r\nHost: api.openai.com\r\n\r\n",
    )
    .await
    .unwrap();
    let first = read_until(&mut s, b"\r\n\r\n").await;
    assert!(first.starts_with(b"GET /v1/models?key=secret HTTP/1.1\r\n"));
    s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst").await.unwrap();
    let second = read_until(&mut s, b"\r\n\r\n").await;
    assert!(
        second.starts_with(b"GET /v1/files HTTP/1.1\r\n"),
        "{}",
        String::from_utf8_lossy(&second)
    );
    s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond").await.unwrap();
    let got = read_until(&mut c, b"second").await;
    let text = String::from_utf8(got).unwrap();
    assert!(text.find("first").unwrap() < text.find("second").unwrap());
    drop(c);
    task.await.unwrap().unwrap();
    let recs = records.lock().unwrap();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0].path, "/v1/models", "query strings are not recorded");
    assert_eq!(recs[0].api_key_fp.as_deref(), Some(key_fingerprint("sk-test-123").as_str()));
    assert_eq!((recs[0].status, recs[0].bytes_in), (Some(200), 5));
    let json = serde_json::to_string(&*recs).unwrap();
    assert!(!json.contains("sk-test-123") && !json.contains("secret"));
}

async fn refused_with(request: &[u8], status: &str, code: &str) {
    let (mut c, mut s, records, task) = start(exchange("api.openai.com"), true);
    c.write_all(request).await.unwrap();
    let text = read_to_end(&mut c).await;
    assert!(text.starts_with(status), "{text}");
    assert!(text.contains(code), "{text}");
    let _ = task.await.unwrap();
    // Nothing reached the server.
    drop(c);
    let mut upstream = Vec::new();
    let _ = tokio::time::timeout(Duration::from_millis(200), s.read_to_end(&mut upstream)).await;
    assert!(upstream.is_empty(), "{}", String::from_utf8_lossy(&upstream));
    let recs = records.lock().unwrap();
    assert_eq!(recs[0].verdict, "block");
    assert_eq!(recs[0].code, Some(code_static(code)));
}

fn code_static(code: &str) -> &'static str {
    match code {
        "request_smuggling" => "request_smuggling",
        "domain_fronting" => "domain_fronting",
        "model_not_allowed" => "model_not_allowed",
        _ => "bad_request",
    }
}

#[tokio::test]
async fn smuggling_forms_are_refused_with_400() {
    let both =
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 4\r\n\
                 Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    refused_with(both, "HTTP/1.1 400", "request_smuggling").await;
    let dup = b"POST /x HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab";
    refused_with(dup, "HTTP/1.1 400", "request_smuggling").await;
    let fold = b"GET /x HTTP/1.1\r\nHost: api.openai.com\r\nX-A: 1\r\n  folded\r\n\r\n";
    refused_with(fold, "HTTP/1.1 400", "request_smuggling").await;
    let bad_chunk =
        b"POST /x HTTP/1.1\r\nHost: api.openai.com\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
    refused_with(bad_chunk, "HTTP/1.1 400", "request_smuggling").await;
}

#[tokio::test]
async fn host_must_match_the_sni() {
    let fronted = b"GET /backend-api/conversation HTTP/1.1\r\nHost: chatgpt.com\r\n\r\n";
    refused_with(fronted, "HTTP/1.1 403", "domain_fronting").await;
}

#[tokio::test]
async fn models_outside_the_allow_list_are_refused() {
    let mut ex = exchange("api.openai.com");
    ex.headers.allowed_models = vec!["gpt-4o-mini".into()];
    let (mut c, mut s, records, task) = start(ex, true);
    let body = br#"{"model":"gpt-4o","messages":[]}"#;
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    c.write_all(req.as_bytes()).await.unwrap();
    c.write_all(body).await.unwrap();
    let text = read_to_end(&mut c).await;
    assert!(text.starts_with("HTTP/1.1 403") && text.contains("model_not_allowed"), "{text}");
    let _ = task.await.unwrap();
    drop(c);
    let mut upstream = Vec::new();
    let _ = tokio::time::timeout(Duration::from_millis(100), s.read_to_end(&mut upstream)).await;
    assert!(upstream.is_empty());
    assert_eq!(records.lock().unwrap()[0].model.as_deref(), Some("gpt-4o"));
}

#[tokio::test]
async fn chunked_request_is_forwarded_with_a_length_and_headers_injected() {
    let mut ex = exchange("chatgpt.com");
    ex.headers.chatgpt_workspace_header = Some("00000000-0000-4000-8000-00000000f1a0".into());
    let (mut c, mut s, records, task) = start(ex, true);
    c.write_all(
        b"POST /backend-api/conversation HTTP/1.1\r\nHost: chatgpt.com\r\nTransfer-Encoding: chunked\r\n\
          ChatGPT-Allowed-Workspace-Id: attacker\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    // The engine answers the Expect itself, before the body.
    let cont = read_until(&mut c, b"\r\n\r\n").await;
    assert_eq!(cont, b"HTTP/1.1 100 Continue\r\n\r\n");
    c.write_all(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").await.unwrap();
    let up = read_until(&mut s, b"hello world").await;
    let up = String::from_utf8(up).unwrap();
    assert!(up.contains("content-length: 11\r\n"), "{up}");
    assert!(!up.to_ascii_lowercase().contains("transfer-encoding"));
    assert!(!up.to_ascii_lowercase().contains("expect"));
    assert!(up.contains("chatgpt-allowed-workspace-id: 00000000-0000-4000-8000-00000000f1a0\r\n"));
    assert!(!up.contains("attacker"));
    s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await.unwrap();
    let got = read_until(&mut c, b"\r\n\r\n").await;
    assert!(got.starts_with(b"HTTP/1.1 204"));
    drop(c);
    task.await.unwrap().unwrap();
    let recs = records.lock().unwrap();
    assert_eq!(recs[0].injected, vec!["chatgpt-allowed-workspace-id"]);
    assert_eq!(recs[0].bytes_out, 11);
}

#[tokio::test]
async fn streamed_response_reaches_the_client_event_by_event() {
    let (mut c, mut s, _records, task) = start(exchange("api.openai.com"), true);
    c.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 2\r\n\r\n{}")
        .await
        .unwrap();
    read_until(&mut s, b"{}").await;
    s.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await
    .unwrap();
    s.write_all(b"d\r\ndata: first\n\n\r\n").await.unwrap();
    // The first event arrives while the server has not sent the second.
    let got = read_until(&mut c, b"data: first").await;
    assert!(String::from_utf8_lossy(&got).contains("data: first"));
    s.write_all(b"e\r\ndata: second\n\n\r\n0\r\n\r\n").await.unwrap();
    read_until(&mut c, b"0\r\n\r\n").await;
    drop(c);
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn head_and_until_close_framing() {
    let (mut c, mut s, _records, task) = start(exchange("api.openai.com"), true);
    c.write_all(b"HEAD /v1/models HTTP/1.1\r\nHost: api.openai.com\r\n\r\n").await.unwrap();
    read_until(&mut s, b"\r\n\r\n").await;
    // A HEAD response announces a length but carries no body.
    s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n").await.unwrap();
    read_until(&mut c, b"\r\n\r\n").await;
    c.write_all(b"GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\n\r\n").await.unwrap();
    read_until(&mut s, b"\r\n\r\n").await;
    s.write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil the end").await.unwrap();
    drop(s);
    let text = read_to_end(&mut c).await;
    assert!(text.ends_with("until the end"), "{text}");
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn refusing_connections_answer_every_client_in_its_language() {
    let mut ex = exchange("api.openai.com");
    ex.refuse = Some(Refusal::forbidden(
        "upstream_certificate_expired",
        "the server's certificate has expired",
        Some("badssl-inspect"),
    ));
    let (mut c, _s, records, task) = start(ex.clone(), false);
    c.write_all(b"GET / HTTP/1.1\r\nHost: api.openai.com\r\n\r\n").await.unwrap();
    let text = read_to_end(&mut c).await;
    assert!(
        text.contains("x-should-retry: false") && text.contains("\"type\":\"policy_violation\"")
    );
    task.await.unwrap().unwrap();
    assert_eq!(records.lock().unwrap()[0].code, Some("upstream_certificate_expired"));

    let (mut c, _s, _records, task) = start(ex, false);
    c.write_all(b"GET / HTTP/1.1\r\nHost: api.openai.com\r\nAccept: text/html\r\n\r\n")
        .await
        .unwrap();
    let text = read_to_end(&mut c).await;
    assert!(text.contains("content-type: text/html") && text.contains("badssl-inspect"), "{text}");
    task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_trickled_head_times_out() {
    let (mut c, _s, _records, task) = start(exchange("api.openai.com"), true);
    c.write_all(b"GET /v1/models HTTP/1.1\r\n").await.unwrap();
    // One byte every 10 s: each read is within any idle limit, the head never ends.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let _ = c.write_all(b"X").await;
    }
    let r = task.await.unwrap();
    assert!(matches!(r, Err(ProxyError::Timeout)), "{r:?}");
}

const CARD_BODY: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"charge 4111 1111 1111 1111 now"}]}"#;

fn post(body: &str, extra: &str) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn dlp_block_names_detectors_never_values() {
    let (mut c, mut s, records, task) =
        start(with_dlp(exchange("api.openai.com"), sluice_rules::DlpAction::Block), true);
    c.write_all(post(CARD_BODY, "").as_bytes()).await.unwrap();
    let text = read_to_end(&mut c).await;
    assert!(
        text.starts_with("HTTP/1.1 403")
            && text.contains("dlp_violation")
            && text.contains("credit_card (1)"),
        "{text}"
    );
    assert!(!text.contains("4111"));
    task.await.unwrap().unwrap();
    drop(c);
    let mut upstream = Vec::new();
    let _ = tokio::time::timeout(Duration::from_millis(100), s.read_to_end(&mut upstream)).await;
    assert!(upstream.is_empty());
    let recs = records.lock().unwrap();
    assert_eq!(recs[0].dlp_action, Some("block"));
    assert_eq!(recs[0].dlp_findings[0].paths, ["$.messages[0].content"]);
    assert!(!serde_json::to_string(&*recs).unwrap().contains("4111"));
}

#[tokio::test]
async fn dlp_redacts_gzip_bodies_and_resends_them_plain() {
    use std::io::Write;
    let (mut c, mut s, records, task) =
        start(with_dlp(exchange("api.openai.com"), sluice_rules::DlpAction::Redact), true);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(CARD_BODY.as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
        gz.len()
    );
    c.write_all(head.as_bytes()).await.unwrap();
    c.write_all(&gz).await.unwrap();
    let up = String::from_utf8(read_until(&mut s, b"}]}").await).unwrap();
    assert!(up.contains("[REDACTED:credit_card]") && !up.contains("4111"), "{up}");
    assert!(!up.to_ascii_lowercase().contains("content-encoding"));
    let (h, b) = up.split_once("\r\n\r\n").unwrap();
    assert!(h.ends_with(&format!("content-length: {}", b.len())), "{h}");
    s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").await.unwrap();
    read_until(&mut c, b"{}").await;
    drop(c);
    task.await.unwrap().unwrap();
    assert_eq!(records.lock().unwrap()[0].dlp_action, Some("redact"));
}

#[tokio::test]
async fn dlp_passes_luhn_invalid_numbers_untouched() {
    let (mut c, mut s, records, task) =
        start(with_dlp(exchange("api.openai.com"), sluice_rules::DlpAction::Block), true);
    let body = CARD_BODY.replace("1111 now", "1112 now");
    c.write_all(post(&body, "").as_bytes()).await.unwrap();
    let up = String::from_utf8(read_until(&mut s, b"}]}").await).unwrap();
    assert!(up.contains("4111 1111 1111 1112"));
    s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").await.unwrap();
    read_until(&mut c, b"{}").await;
    drop(c);
    task.await.unwrap().unwrap();
    assert_eq!(records.lock().unwrap()[0].dlp_action, Some("clean"));
}

#[tokio::test]
async fn responses_are_masked_when_the_rule_asks() {
    let mut ex = exchange("api.openai.com");
    let scanner = Arc::new(sluice_dlp::Scanner::new().unwrap());
    let set = scanner.profile(&["stripe_key", "github_token"]).unwrap();
    ex.mask = Some(Mask { scanner, set });
    let (mut c, mut s, records, task) = start(ex, true);
    // A streamed answer with a key split across two events, in an until-close response.
    c.write_all(post("{}", "").as_bytes()).await.unwrap();
    read_until(&mut s, b"{}").await;
    let ev = |t: &str| {
        format!(
            "data: {}\n\n",
            serde_json::json!({"choices": [{"index": 0, "delta": {"content": t}}]})
        )
    };
    s.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await
    .unwrap();
    for t in ["your token: ghp_a1B2c3D4e5F6g7", "H8i9J0k1L2m3N4o5P6q7R8", " done"] {
        let e = ev(t);
        s.write_all(format!("{:x}\r\n{e}\r\n", e.len()).as_bytes()).await.unwrap();
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let got = String::from_utf8(read_until(&mut c, b"0\r\n\r\n").await).unwrap();
    assert!(got.contains("[REDACTED:github_token]"), "{got}");
    assert!(!got.contains("a1B2") && !got.contains("H8i9"), "{got}");
    // A JSON answer, masked whole with a corrected length.
    c.write_all(post("{}", "").as_bytes()).await.unwrap();
    read_until(&mut s, b"{}").await;
    let body =
        r#"{"choices":[{"message":{"content":"key sk_live_4eC39HqLyjWDarjtT1zdp7dcXy12"}}]}"#;
    s.write_all(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let got = String::from_utf8(read_until(&mut c, b"}}]}").await).unwrap();
    let (head, b) = got.rsplit_once("\r\n\r\n").unwrap();
    assert!(
        b.contains("key [REDACTED:stripe_key]")
            && head.ends_with(&format!("content-length: {}", b.len())),
        "{got}"
    );
    drop(c);
    task.await.unwrap().unwrap();
    let recs = records.lock().unwrap();
    assert_eq!(recs[0].response_masked, ["github_token"]);
    assert_eq!(recs[1].response_masked, ["stripe_key"]);
}

#[tokio::test]
async fn organizations_and_projects_are_enforced_and_the_allowed_list_injected() {
    let mut ex = exchange("api.openai.com");
    ex.headers.allowed_organizations = vec!["org-good".into()];
    ex.headers.allowed_projects = vec!["proj_good".into()];
    ex.headers.openai_allowed_orgs_header = Some("org-good".into());
    for (hdr, code) in [
        (
            "OpenAI-Organization: org-evil\r\nOpenAI-Project: proj_good\r\n",
            "organization_not_allowed",
        ),
        ("OpenAI-Organization: org-good\r\nOpenAI-Project: proj_evil\r\n", "project_not_allowed"),
        (
            "OpenAI-Organization: org-good, org-evil\r\nOpenAI-Project: proj_good\r\n",
            "organization_not_allowed",
        ),
        ("OpenAI-Organization: org-good\r\nOpenAI-Organization: org-evil\r\n", "ambiguous_request"),
        ("OpenAI-Project: proj_good\r\n", "organization_required"),
        ("OpenAI-Organization: org-good\r\n", "project_required"),
        ("", "organization_required"),
    ] {
        let (mut c, _s, records, task) = start(ex.clone(), true);
        c.write_all(post("{}", hdr).as_bytes()).await.unwrap();
        let text = read_to_end(&mut c).await;
        assert!(text.starts_with("HTTP/1.1 4") && text.contains(code), "{hdr}: {text}");
        task.await.unwrap().unwrap();
        assert_eq!(records.lock().unwrap()[0].code, Some(code_static2(code)));
    }
    // Told to, the appliance names the allowed organization and project itself.
    let mut inject = ex.clone();
    inject.headers.inject_missing_org_project = true;
    let (mut c, mut s, records, task) = start(inject, true);
    c.write_all(post("{}", "").as_bytes()).await.unwrap();
    let up = String::from_utf8(read_until(&mut s, b"{}").await).unwrap();
    assert!(
        up.contains("openai-organization: org-good\r\n")
            && up.contains("openai-project: proj_good\r\n"),
        "{up}"
    );
    s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").await.unwrap();
    read_until(&mut c, b"{}").await;
    drop(c);
    task.await.unwrap().unwrap();
    assert_eq!(
        records.lock().unwrap()[0].injected,
        ["openai-allowed-organization-ids", "openai-organization", "openai-project"]
    );
    let (mut c, mut s, records, task) = start(ex, true);
    c.write_all(
        post(
            "{}",
            "OpenAI-Organization: org-good\r\nOpenAI-Project: proj_good\r\nOpenAI-Allowed-Organization-Ids: org-evil\r\n",
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let up = String::from_utf8(read_until(&mut s, b"{}").await).unwrap();
    assert!(
        up.contains("openai-allowed-organization-ids: org-good\r\n") && !up.contains("org-evil"),
        "{up}"
    );
    s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").await.unwrap();
    read_until(&mut c, b"{}").await;
    drop(c);
    task.await.unwrap().unwrap();
    let recs = records.lock().unwrap();
    assert_eq!(recs[0].openai_organization.as_deref(), Some("org-good"));
    assert_eq!(recs[0].injected, ["openai-allowed-organization-ids"]);
}

fn code_static2(code: &str) -> &'static str {
    [
        "organization_not_allowed",
        "project_not_allowed",
        "organization_required",
        "project_required",
        "ambiguous_request",
    ]
    .into_iter()
    .find(|c| *c == code)
    .unwrap_or("unknown")
}

/// One exchange through `serve_keeping`: the client's request, the server's response; returns
/// what the server received, what the client received, and whether the upstream was kept.
async fn keeping(request: &[u8], response: &[u8]) -> (String, String, bool) {
    let (mut c, mut proxy_client) = duplex(1 << 16);
    let (mut s, mut proxy_server) = duplex(1 << 16);
    let ex = exchange("api.openai.com");
    let task = tokio::spawn(async move {
        let emit = |_: RequestRecord| {};
        serve_keeping(&mut proxy_client, Some(&mut proxy_server), &ex, &emit).await
    });
    c.write_all(request).await.unwrap();
    let up = read_until(&mut s, b"\r\n\r\n").await;
    s.write_all(response).await.unwrap();
    let down = read_until(&mut c, b"done").await;
    drop(c);
    let kept = task.await.unwrap().unwrap();
    (String::from_utf8(up).unwrap(), String::from_utf8(down).unwrap(), kept)
}

#[tokio::test]
async fn an_upstream_left_between_messages_is_kept_and_hop_by_hop_headers_stay_behind() {
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone";
    let (up, down, kept) = keeping(
        b"GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\nConnection: close, X-Hop\r\n\
          X-Hop: 1\r\nKeep-Alive: timeout=5\r\nAccept: */*\r\n\r\n",
        ok,
    )
    .await;
    assert!(kept, "the upstream answered in full and stays open");
    let up = up.to_ascii_lowercase();
    assert!(
        !up.contains("connection") && !up.contains("x-hop") && !up.contains("keep-alive"),
        "{up}"
    );
    assert!(up.contains("accept: */*"), "{up}");
    assert!(down.to_ascii_lowercase().contains("connection: close\r\n\r\ndone"), "{down}");
    // The server closing, a 1.0 request, or a response read to the end of the stream: not kept.
    let closing = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\ndone";
    let get = b"GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\n\r\n";
    assert!(!keeping(get, closing).await.2);
    let (up, _, kept) =
        keeping(b"GET / HTTP/1.0\r\nHost: api.openai.com\r\nConnection: keep-alive\r\n\r\n", ok)
            .await;
    assert!(!kept);
    assert!(up.to_ascii_lowercase().contains("connection: keep-alive"), "1.0 goes up as it came");
}

#[tokio::test]
async fn a_server_closing_before_its_answer_gets_the_client_a_502() {
    let (mut c, mut s, records, task) = start(exchange("api.openai.com"), true);
    c.write_all(b"GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\n\r\n").await.unwrap();
    read_until(&mut s, b"\r\n\r\n").await;
    drop(s);
    let text = read_to_end(&mut c).await;
    assert!(text.starts_with("HTTP/1.1 502 "), "{text}");
    assert!(text.contains("upstream_closed"), "{text}");
    task.await.unwrap().unwrap();
    let recs = records.lock().unwrap();
    assert_eq!((recs[0].status, recs[0].code), (Some(502), Some("upstream_closed")));
}

#[tokio::test]
async fn an_http2_preface_is_handed_back_unanswered() {
    let (mut c, _s, records, task) = start(exchange("api.openai.com"), true);
    c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    match task.await.unwrap() {
        Err(ProxyError::Http2Preface(read)) => assert!(read.starts_with(b"PRI * HTTP/2.0\r\n")),
        other => panic!("{other:?}"),
    }
    assert!(records.lock().unwrap().is_empty(), "nothing answered, nothing recorded");
    // Only as the connection's first bytes: after a request it is a bad request.
    let (mut c, mut s, records, task) = start(exchange("api.openai.com"), true);
    c.write_all(b"GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\n\r\n").await.unwrap();
    read_until(&mut s, b"\r\n\r\n").await;
    s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await.unwrap();
    read_until(&mut c, b"\r\n\r\n").await;
    c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    assert!(read_to_end(&mut c).await.starts_with("HTTP/1.1 400"));
    assert!(matches!(task.await.unwrap(), Err(ProxyError::Request(_))));
    assert_eq!(records.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn headers_the_server_could_read_otherwise_are_refused() {
    let cases: [(&[u8], &str, &str); 6] = [
        // Two organizations: the check read one, the server may read the other.
        (b"GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\nOpenAI-Organization: org-a\r\nOpenAI-Organization: org-b\r\n\r\n", "HTTP/1.1 400", "ambiguous_request"),
        (b"POST /v1/x HTTP/1.1\r\nHost: api.openai.com\r\nContent-Encoding: identity\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n\r\n{}", "HTTP/1.1 400", "ambiguous_request"),
        // Asking for an inspected header to be dropped on the way.
        (b"GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\nConnection: keep-alive, OpenAI-Organization\r\nOpenAI-Organization: org-a\r\n\r\n", "HTTP/1.1 400", "ambiguous_request"),
        (b"POST /v1/x HTTP/1.1\r\nHost: api.openai.com\r\nConnection: content-type\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}", "HTTP/1.1 400", "ambiguous_request"),
        // An absolute-form target naming another server than Host.
        (b"GET https://chatgpt.com/backend-api/conversation HTTP/1.1\r\nHost: api.openai.com\r\n\r\n", "HTTP/1.1 403", "domain_fronting"),
        // A tunnel inside the inspected connection.
        (b"CONNECT chatgpt.com:443 HTTP/1.1\r\nHost: api.openai.com\r\n\r\n", "HTTP/1.1 405", "connect_not_inspected"),
    ];
    for (req, status, code) in cases {
        let (mut c, mut s, records, task) = start(exchange("api.openai.com"), true);
        c.write_all(req).await.unwrap();
        let text = read_to_end(&mut c).await;
        assert!(
            text.starts_with(status) && text.contains(code),
            "{}: {text}",
            String::from_utf8_lossy(req)
        );
        let _ = task.await.unwrap();
        drop(c);
        let mut upstream = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_millis(100), s.read_to_end(&mut upstream)).await;
        assert!(upstream.is_empty(), "nothing reached the server");
        assert_eq!(records.lock().unwrap()[0].verdict, "block");
    }
}

#[tokio::test]
async fn an_absolute_form_target_naming_the_host_goes_up_in_origin_form() {
    let (mut c, mut s, _records, task) = start(exchange("api.openai.com"), true);
    c.write_all(
        b"GET https://API.openai.com:443/v1/models?x=1 HTTP/1.1\r\nHost: api.openai.com\r\n\r\n",
    )
    .await
    .unwrap();
    let got = read_until(&mut s, b"\r\n\r\n").await;
    assert!(
        got.starts_with(b"GET /v1/models?x=1 HTTP/1.1\r\n"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await.unwrap();
    read_until(&mut c, b"\r\n\r\n").await;
    drop(c);
    task.await.unwrap().unwrap();
}

/// The client's end of the proxy, recording the size of each write the proxy makes.
struct Writes {
    inner: DuplexStream,
    sizes: Arc<Mutex<Vec<usize>>>,
}

impl tokio::io::AsyncRead for Writes {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Writes {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = r {
            self.sizes.lock().unwrap().push(n);
        }
        r
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A small answer leaves in one write, head and body together, whether its body has a
/// length or is chunked (through TLS: one record and one send instead of two).
#[tokio::test]
async fn a_small_answer_is_one_write() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"[..],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ] {
        let (mut c, proxy_client) = duplex(1 << 20);
        let (mut s, mut proxy_server) = duplex(1 << 20);
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let mut client = Writes { inner: proxy_client, sizes: sizes.clone() };
        let ex = exchange("api.openai.com");
        let task = tokio::spawn(async move {
            let emit = |_: RequestRecord| {};
            serve(&mut client, Some(&mut proxy_server), &ex, &emit).await
        });
        c.write_all(b"GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\n\r\n").await.unwrap();
        read_until(&mut s, b"\r\n\r\n").await;
        s.write_all(answer).await.unwrap();
        read_until(&mut c, b"hello").await;
        drop(c);
        let _ = task.await.unwrap();
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes, [answer.len()], "{}", String::from_utf8_lossy(answer));
    }
}

/// A body trickled a byte every 3 s runs out of time (30 s, then 500 bytes/s): the client
/// gets a 408, the server nothing, and the record says why. A body that keeps the rate is
/// forwarded, however long it takes. (Time is paused: tokio advances it.)
#[tokio::test(start_paused = true)]
async fn a_trickled_body_runs_out_of_time_and_a_steady_one_does_not() {
    // Trickled: 100 bytes announced, one every 3 s.
    let (mut c, mut s, records, task) = start(exchange("api.openai.com"), true);
    c.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 100\r\n\r\n")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let mut answer = Vec::new();
    for _ in 0..100 {
        if c.write_all(b"x").await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut buf = [0u8; 512];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::ZERO, c.read(&mut buf)).await {
            answer.extend_from_slice(&buf[..n]);
            if n == 0 || answer.ends_with(b"}") || answer.len() > 20 {
                break;
            }
        }
    }
    let waited = started.elapsed();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!((30..40).contains(&waited.as_secs()), "answered after {waited:?}");
    let _ = task.await.unwrap();
    let mut upstream = Vec::new();
    let _ = tokio::time::timeout(Duration::from_millis(10), s.read_to_end(&mut upstream)).await;
    assert!(upstream.is_empty(), "nothing reached the server");
    let rec = records.lock().unwrap()[0].clone();
    assert_eq!((rec.status, rec.code), (Some(408), Some("body_timeout")));

    // Steady: 60 KB at 1,000 bytes/s (a minute, past the first window) is forwarded whole.
    let (mut c, mut s, records, task) = start(exchange("api.openai.com"), true);
    c.write_all(
        b"POST /v1/files HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 60000\r\n\r\n",
    )
    .await
    .unwrap();
    let server = tokio::spawn(async move {
        // No read timeout here: the proxy holds the body until it is whole.
        let mut all = Vec::new();
        let mut buf = vec![0u8; 65536];
        while all.iter().filter(|&&b| b == b'y').count() < 60000 {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "the body was cut");
            all.extend_from_slice(&buf[..n]);
        }
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.unwrap();
        s
    });
    for _ in 0..60 {
        c.write_all(&[b'y'; 1000]).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let answer = read_until(&mut c, b"ok").await;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    let _s = server.await.unwrap();
    drop(c);
    let _ = task.await.unwrap();
    assert_eq!(records.lock().unwrap()[0].status, Some(200));
}
