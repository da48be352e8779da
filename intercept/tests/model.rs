//! The model allow-list, tried as an attacker would: every way of naming a model that the
//! server reads is read by the body phase too, and what cannot be read is refused. Driven
//! through the HTTP/1.1 driver over in-memory pipes.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write as _;

use sluice_intercept::Session;

/// guest's session with a model allow-list.
fn session(allowed: &[&str]) -> Session {
    let mut s = common::session("api.openai.com");
    s.client = "10.20.9.99:40000".parse().unwrap();
    s.identity = "guest".into();
    s.rule = Some("models".into());
    s.headers.allowed_models = allowed.iter().map(|m| (*m).to_owned()).collect();
    s
}

use common::{Outcome, send};

fn post(ctype: &str, extra: &str, body: &[u8]) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Type: {ctype}\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    )
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

fn refused(o: &Outcome, status: &str, code: &str) {
    assert!(o.client.starts_with(status), "{}", o.client);
    assert!(o.client.contains(code), "{}", o.client);
    assert!(o.upstream.is_empty(), "{}", String::from_utf8_lossy(&o.upstream));
    assert_eq!((o.record.verdict, o.record.code), ("block", Some(code_static(code))));
}

fn code_static(code: &str) -> &'static str {
    ["model_not_allowed", "model_unreadable", "ambiguous_request"]
        .into_iter()
        .find(|c| *c == code)
        .unwrap()
}

#[tokio::test]
async fn a_gzip_body_is_read_before_the_check() {
    let body = gzip(br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#);
    let o = send(
        session(&["gpt-4o-mini"]),
        &post("application/json", "Content-Encoding: gzip\r\n", &body),
        &body,
    )
    .await;
    refused(&o, "HTTP/1.1 403", "model_not_allowed");
    assert_eq!(o.record.model.as_deref(), Some("gpt-4o"));
    // An allowed model in a gzip body goes up as the client sent it, compressed.
    let body = gzip(br#"{"model":"gpt-4o-mini","messages":[]}"#);
    let o = send(
        session(&["gpt-4o-mini"]),
        &post("application/json", "Content-Encoding: gzip\r\n", &body),
        &body,
    )
    .await;
    assert!(o.client.starts_with("HTTP/1.1 200"), "{}", o.client);
    assert!(o.upstream.ends_with(&body), "forwarded unchanged");
    assert_eq!(o.record.model.as_deref(), Some("gpt-4o-mini"));
}

#[tokio::test]
async fn a_multipart_model_field_is_read() {
    let body = b"--XX\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ngpt-4o-transcribe\r\n--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF....\r\n--XX--\r\n";
    let head = post("multipart/form-data; boundary=XX", "", body)
        .replace("/v1/chat/completions", "/v1/audio/transcriptions");
    let o = send(session(&["whisper-1"]), &head, body).await;
    refused(&o, "HTTP/1.1 403", "model_not_allowed");
    assert_eq!(o.record.model.as_deref(), Some("gpt-4o-transcribe"));
}

#[tokio::test]
async fn a_model_that_is_not_a_string_is_refused_under_an_allow_list() {
    let body = br#"{"model":["gpt-4o"],"messages":[]}"#;
    let o = send(session(&["gpt-4o-mini"]), &post("application/json", "", body), body).await;
    refused(&o, "HTTP/1.1 403", "model_unreadable");
    // Without an allow-list the server decides; the record has no model.
    let o = send(session(&[]), &post("application/json", "", body), body).await;
    assert!(o.client.starts_with("HTTP/1.1 200"), "{}", o.client);
    assert_eq!(o.record.model, None);
}

#[tokio::test]
async fn the_realtime_query_model_is_read_on_the_upgrade() {
    let head = |model: &str| {
        format!(
            "GET /v1/realtime?model={model} HTTP/1.1\r\nHost: api.openai.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
    };
    let o = send(session(&["gpt-4o-mini-realtime-preview"]), &head("gpt-4o-realtime-preview"), b"")
        .await;
    refused(&o, "HTTP/1.1 403", "model_not_allowed");
    assert_eq!(o.record.model.as_deref(), Some("gpt-4o-realtime-preview"));
    let o = send(
        session(&["gpt-4o-mini-realtime-preview"]),
        &head("gpt-4o-mini-realtime-preview"),
        b"",
    )
    .await;
    assert!(o.client.starts_with("HTTP/1.1 101"), "{}", o.client);
    assert_eq!(o.record.model.as_deref(), Some("gpt-4o-mini-realtime-preview"));
}

#[tokio::test]
async fn duplicate_model_keys_are_ambiguous_and_refused() {
    for body in [
        &br#"{"model":"gpt-4o-mini","model":"gpt-4o","messages":[]}"#[..],
        br#"{"model":"gpt-4o-mini","mod\u0065l":"gpt-4o"}"#,
        br#"{"messages":[],"messages":[]}"#,
    ] {
        // Refused with or without an allow-list: servers disagree on which copy wins.
        for allowed in [&["gpt-4o-mini"][..], &[]] {
            let o = send(session(allowed), &post("application/json", "", body), body).await;
            refused(&o, "HTTP/1.1 400", "ambiguous_request");
        }
    }
    let body = br#"{"model":"gpt-4o-mini"}"#;
    let head =
        post("application/json", "", body).replace("completions ", "completions?model=gpt-4o ");
    let o = send(session(&[]), &head, body).await;
    refused(&o, "HTTP/1.1 400", "ambiguous_request");
}

#[tokio::test]
async fn an_undecodable_body_is_refused_under_an_allow_list() {
    let body = b"\x1f\x8bnot really gzip";
    let head = post("application/json", "Content-Encoding: gzip\r\n", body);
    let o = send(session(&["gpt-4o-mini"]), &head, body).await;
    refused(&o, "HTTP/1.1 403", "model_unreadable");
    let head = post("application/json", "Content-Encoding: x-custom\r\n", body);
    let o = send(session(&["gpt-4o-mini"]), &head, body).await;
    refused(&o, "HTTP/1.1 403", "model_unreadable");
}

#[tokio::test]
async fn a_body_over_the_limit_is_not_streamed_unchecked_under_an_allow_list() {
    // Fail-open forwards bodies over the limit uninspected, but a model allow-list cannot be
    // kept in a body never read: padded past the limit, the request is refused.
    let mut s = session(&["gpt-4o-mini"]);
    s.fail_open = true;
    s.max_body = 1024;
    let body = format!(r#"{{"model":"gpt-4o","input":"{}"}}"#, " ".repeat(2048));
    let o = send(s.clone(), &post("application/json", "", body.as_bytes()), body.as_bytes()).await;
    assert!(o.client.starts_with("HTTP/1.1 413"), "{}", o.client);
    assert!(o.upstream.is_empty());
    // Without an allow-list it streams, as the rule says.
    s.headers.allowed_models.clear();
    let o = send(s, &post("application/json", "", body.as_bytes()), body.as_bytes()).await;
    assert!(o.client.starts_with("HTTP/1.1 200"), "{}", o.client);
}
