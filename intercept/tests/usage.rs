//! Token usage in request records, read from the end of the response as it is relayed:
//! a JSON answer, a chunked event stream, and an encoded answer (unread).
#![allow(clippy::unwrap_used)]

mod common;

use common::{send_answering, session};

const POST: &str = "POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Type: application/json\r\nAccept-Encoding: gzip\r\nContent-Length: 2\r\n\r\n";

#[tokio::test]
async fn a_json_answer_s_usage_is_recorded_and_compression_is_not_asked_for() {
    let body = r#"{"id":"c","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":12,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":8}}}"#;
    let answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let o = send_answering(session("api.openai.com"), POST, b"{}", Some(answer.as_bytes())).await;
    assert!(o.client.ends_with(body), "{}", o.client);
    let up = String::from_utf8_lossy(&o.upstream);
    assert!(up.contains("accept-encoding: identity\r\n") && !up.contains("gzip"), "{up}");
    let r = &o.record;
    assert_eq!((r.input_tokens, r.output_tokens, r.cached_tokens), (Some(12), Some(3), Some(8)));
}

#[tokio::test]
async fn a_chunked_stream_s_last_usage_is_recorded() {
    let events = [
        "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2}}\n\n",
        "data: [DONE]\n\n",
    ];
    let mut answer = String::from(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    for e in events {
        answer.push_str(&format!("{:x}\r\n{e}\r\n", e.len()));
    }
    answer.push_str("0\r\n\r\n");
    let o = send_answering(session("api.openai.com"), POST, b"{}", Some(answer.as_bytes())).await;
    assert!(o.client.contains("[DONE]"), "{}", o.client);
    assert_eq!((o.record.input_tokens, o.record.output_tokens), (Some(7), Some(2)));
}

#[tokio::test]
async fn an_encoded_or_failed_answer_has_no_usage() {
    let body = r#"{"usage":{"prompt_tokens":1,"completion_tokens":1}}"#;
    for (status, extra) in [("200 OK", "Content-Encoding: br\r\n"), ("400 Bad Request", "")] {
        let answer = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let o =
            send_answering(session("api.openai.com"), POST, b"{}", Some(answer.as_bytes())).await;
        assert_eq!(o.record.input_tokens, None, "{status} {extra}");
    }
}
