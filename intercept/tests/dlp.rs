//! DLP in the exchange, tried as an attacker would: content DLP cannot read follows
//! `on_unscanned`, the request head (path, query, free-text headers, cookies) is scanned like
//! the body, and findings that redaction cannot replace where they are refuse the request.
//! Driven through the HTTP/1.1 driver over in-memory pipes.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write as _;

use common::{Outcome, send};
use sluice_intercept::Session;
use sluice_rules::DlpAction;

const CARD: &str = "4111 1111 1111 1111";

fn session(action: DlpAction, block_unscanned: bool) -> Session {
    let mut s = common::with_dlp(
        common::session("api.openai.com"),
        &["credit_card", "us_ssn", "openai_api_key", "jwt"],
        action,
    );
    s.headers.block_unscanned = block_unscanned;
    s
}

fn post(target: &str, ctype: &str, extra: &str, body: &[u8]) -> String {
    format!(
        "POST {target} HTTP/1.1\r\nHost: api.openai.com\r\nContent-Type: {ctype}\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    )
}

fn chat(content: &str) -> Vec<u8> {
    format!(r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"{content}"}}]}}"#)
        .into_bytes()
}

fn refused(o: &Outcome, code: &str) {
    assert!(o.client.starts_with("HTTP/1.1 403"), "{}", o.client);
    assert!(o.client.contains(code), "{}", o.client);
    assert!(o.upstream.is_empty(), "{}", String::from_utf8_lossy(&o.upstream));
    assert_eq!(o.record.verdict, "block");
    assert_eq!(o.record.code.unwrap_or_default(), code);
}

fn forwarded(o: &Outcome) -> String {
    assert!(o.client.starts_with("HTTP/1.1 200"), "{}", o.client);
    String::from_utf8_lossy(&o.upstream).into_owned()
}

fn no_card_anywhere(o: &Outcome) {
    // The record as stored, but for its time: a Unix ms such as 1796411125040 has "4111" in it.
    let mut rec = serde_json::to_value(&o.record).unwrap();
    rec.as_object_mut().unwrap().remove("ts_ms");
    let rec = rec.to_string();
    for needle in ["4111", "4111111111111111"] {
        assert!(!rec.contains(needle), "the record carries the card: {rec}");
        assert!(!o.client.contains(needle), "the answer carries the card: {}", o.client);
    }
}

const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0";

fn upload(data: &[u8]) -> Vec<u8> {
    let mut b = b"--B\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nassistants\r\n--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\nContent-Type: image/png\r\n\r\n".to_vec();
    b.extend_from_slice(data);
    b.extend_from_slice(b"\r\n--B--\r\n");
    b
}

const ARCHIVE_7Z: &[u8] = b"7z\xbc\xaf\x27\x1c\0\x04\x8d\x9b\xd5\x0f";
const WAV: &[u8] = b"RIFF\x24\0\0\0WAVEfmt \x10\0\0\0\x01\0\x01\0\x40\x1f\0\0";

fn upload_request(data: &[u8]) -> (String, Vec<u8>) {
    let body = upload(data);
    (post("/v1/files", "multipart/form-data; boundary=B", "", &body), body)
}

#[tokio::test]
async fn unreadable_content_is_refused_when_the_rule_says_block() {
    let (head, body) = upload_request(ARCHIVE_7Z);
    let o = send(session(DlpAction::Block, true), &head, &body).await;
    refused(&o, "unscanned_content");
    assert_eq!(
        o.record.unscanned,
        ["$.file(x.png) (7z archive)"],
        "sniffed, whatever the name says"
    );
    assert_eq!(o.record.dlp_action, Some("unscanned"));
}

#[tokio::test]
async fn unreadable_content_is_forwarded_and_never_called_clean_when_allowed() {
    let (head, body) = upload_request(ARCHIVE_7Z);
    let o = send(session(DlpAction::Alert, false), &head, &body).await;
    forwarded(&o);
    assert_eq!(o.record.dlp_action, Some("unscanned"), "not clean");
    assert_eq!(o.record.unscanned, ["$.file(x.png) (7z archive)"]);
}

#[tokio::test]
async fn images_follow_the_files_setting_and_audio_block_audio() {
    let (head, body) = upload_request(PNG);
    // Images pass by default, recorded; on_unscanned does not apply to them.
    let o = send(session(DlpAction::Block, true), &head, &body).await;
    forwarded(&o);
    assert_eq!(o.record.unscanned, ["$.file(x.png) (PNG image)"]);
    let mut s = session(DlpAction::Block, false);
    s.headers.block_files = true;
    refused(&send(s, &head, &body).await, "file_not_allowed");
    let mut s = session(DlpAction::Block, false);
    s.headers.max_file_bytes = Some(10);
    let o = send(s, &head, &body).await;
    refused(&o, "file_not_allowed");
    assert!(o.client.contains("over the 10 allowed"), "{}", o.client);
    // Audio: an upload for transcription, and input_audio in a chat request.
    let (head, body) = upload_request(WAV);
    let mut s = session(DlpAction::Block, false);
    s.headers.block_audio = true;
    refused(&send(s.clone(), &head, &body).await, "audio_not_allowed");
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, WAV);
    let chat_audio = format!(
        r#"{{"model":"gpt-4o-audio-preview","messages":[{{"role":"user","content":[{{"type":"input_audio","input_audio":{{"data":"{b64}","format":"wav"}}}}]}}]}}"#
    );
    let o = send(
        s,
        &post("/v1/chat/completions", "application/json", "", chat_audio.as_bytes()),
        chat_audio.as_bytes(),
    )
    .await;
    refused(&o, "audio_not_allowed");
    let o = send(
        session(DlpAction::Block, true),
        &post("/v1/chat/completions", "application/json", "", chat_audio.as_bytes()),
        chat_audio.as_bytes(),
    )
    .await;
    forwarded(&o);
    assert_eq!(
        o.record.unscanned,
        ["$.messages[0].content[0].input_audio.data(base64) (WAV audio)"],
        "recorded as unscanned audio"
    );
}

#[tokio::test]
async fn documents_are_read_and_what_they_hide_refused() {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default();
    w.start_file("[Content_Types].xml", opts).unwrap();
    w.write_all(b"<Types/>").unwrap();
    w.start_file("word/document.xml", opts).unwrap();
    w.write_all(b"<w:document><w:body><w:p><w:r><w:t>pay 4111 1111</w:t></w:r><w:r><w:t> 1111 1111</w:t></w:r></w:p></w:body></w:document>").unwrap();
    let docx = w.finish().unwrap().into_inner();
    let (head, body) = upload_request(&docx);
    let o = send(session(DlpAction::Block, true), &head, &body).await;
    refused(&o, "dlp_violation");
    assert_eq!(o.record.dlp_decoded, ["$.file(x.png) (zip archive: text extracted)"]);
    // Under a redacting profile a document cannot be rewritten: refused too.
    let o = send(session(DlpAction::Redact, false), &head, &body).await;
    refused(&o, "dlp_violation");
    assert!(o.client.contains("cannot be redacted where it is"), "{}", o.client);
}

#[tokio::test]
async fn a_gzip_body_without_its_header_is_read() {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&chat(&format!("card {CARD}"))).unwrap();
    let body = gz.finish().unwrap();
    let o = send(
        session(DlpAction::Block, true),
        &post("/v1/chat/completions", "application/json", "", &body),
        &body,
    )
    .await;
    refused(&o, "dlp_violation");
    assert_eq!(o.record.dlp_decoded, ["$ (gzip)"]);
    no_card_anywhere(&o);
}

#[tokio::test]
async fn a_card_in_the_query_string_is_found() {
    let body = chat("hello");
    let target = "/v1/chat/completions?note=card+4111+1111+1111+1111";
    let o =
        send(session(DlpAction::Block, true), &post(target, "application/json", "", &body), &body)
            .await;
    refused(&o, "dlp_violation");
    assert_eq!(o.record.dlp_findings[0].paths, ["query.note"]);
    // The hash is under the session's salt, and the record names that salt (hashes compare
    // only under one).
    let salt = sluice_intercept::Salt::new(b"salt");
    assert_eq!(
        o.record.dlp_findings[0].hashes,
        [sluice_dlp::match_hash(b"salt", b"4111 1111 1111 1111")]
    );
    assert_eq!(o.record.dlp_salt.as_deref(), Some(salt.id.as_str()));
    assert!(salt.id.starts_with("salt:") && salt.id.len() == 17, "{}", salt.id);
}

#[tokio::test]
async fn a_card_in_the_path_is_found_and_the_path_withheld() {
    let body = chat("hello");
    let target = "/v1/chat/completions/4111-1111-1111-1111";
    let o =
        send(session(DlpAction::Block, true), &post(target, "application/json", "", &body), &body)
            .await;
    refused(&o, "dlp_violation");
    assert_eq!(o.record.path, "[path withheld: sensitive data]");
    no_card_anywhere(&o);
}

#[tokio::test]
async fn a_card_in_a_free_text_header_is_found() {
    let body = chat("hello");
    let o = send(
        session(DlpAction::Block, true),
        &post(
            "/v1/chat/completions",
            "application/json",
            &format!("X-Note: card {CARD}\r\n"),
            &body,
        ),
        &body,
    )
    .await;
    refused(&o, "dlp_violation");
    assert_eq!(o.record.dlp_findings[0].paths, ["header.x-note"]);
}

#[tokio::test]
async fn a_card_in_a_cookie_is_found_but_the_sign_in_is_not_a_leak() {
    let body = chat("hello");
    let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
    let key = "Authorization: Bearer sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789AbCdEfGhIjKl\r\n";
    let o = send(
        session(DlpAction::Block, true),
        &post(
            "/v1/chat/completions",
            "application/json",
            &format!("{key}Cookie: session={jwt}\r\n"),
            &body,
        ),
        &body,
    )
    .await;
    forwarded(&o);
    assert_eq!(o.record.dlp_action, Some("clean"));
    let o = send(
        session(DlpAction::Block, true),
        &post(
            "/v1/chat/completions",
            "application/json",
            &format!("Cookie: note={CARD}\r\n"),
            &body,
        ),
        &body,
    )
    .await;
    refused(&o, "dlp_violation");
    assert_eq!(o.record.dlp_findings[0].paths, ["header.cookie"]);
}

#[tokio::test]
async fn what_redaction_cannot_replace_is_refused_under_a_redacting_profile() {
    let body = chat("hello");
    let o = send(
        session(DlpAction::Redact, false),
        &post("/v1/chat/completions", "application/json", &format!("X-Note: {CARD}\r\n"), &body),
        &body,
    )
    .await;
    refused(&o, "dlp_violation");
    assert!(o.client.contains("cannot be redacted where it is"), "{}", o.client);
    let split = br#"{"messages":[{"role":"user","content":"my card 4111 1111"},{"role":"user","content":"1111 1111"}]}"#;
    let o = send(
        session(DlpAction::Redact, false),
        &post("/v1/chat/completions", "application/json", "", split),
        split,
    )
    .await;
    refused(&o, "dlp_violation");
    assert_eq!(o.record.dlp_findings[0].paths, ["$.messages[0].content + $.messages[1].content"]);
    // In one string, it is redacted and forwarded.
    let body = chat(&format!("card {CARD} ok"));
    let o = send(
        session(DlpAction::Redact, false),
        &post("/v1/chat/completions", "application/json", "", &body),
        &body,
    )
    .await;
    let up = forwarded(&o);
    assert!(up.contains("card [REDACTED:credit_card] ok") && !up.contains("4111"), "{up}");
}

#[tokio::test]
async fn alert_forwards_and_records() {
    let body = chat(&format!("card {CARD}"));
    let o = send(
        session(DlpAction::Alert, false),
        &post("/v1/chat/completions", "application/json", "", &body),
        &body,
    )
    .await;
    let up = forwarded(&o);
    assert!(up.contains("4111"), "alert forwards the request as sent");
    assert_eq!(o.record.dlp_action, Some("alert"));
    assert_eq!(o.record.dlp_findings[0].detector, "credit_card");
}

fn masking(s: Session) -> Session {
    let mut s = s;
    let scanner = std::sync::Arc::new(sluice_dlp::Scanner::new().unwrap());
    // What decide.rs builds for a rule whose profile has cards: credentials and cards.
    let set = sluice_dlp::DetectorSet::family("credential")
        .union(&sluice_dlp::DetectorSet::from_names(&["credit_card"]).unwrap());
    s.mask = Some(sluice_intercept::phases::Mask { scanner, set });
    s
}

/// A `200 OK` answer of `ctype` with `extra` header lines and `body`.
fn ok_answer(ctype: &str, extra: &str, body: &[u8]) -> Vec<u8> {
    let mut a = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    a.extend_from_slice(body);
    a
}

/// One request through a session that masks answers (alerting on requests), the server
/// answering `answer`.
async fn through_masking(head: &str, body: &[u8], answer: &[u8]) -> Outcome {
    common::send_answering(masking(session(DlpAction::Alert, false)), head, body, Some(answer))
        .await
}

fn responses_stream(pieces: &[&str]) -> String {
    pieces
        .iter()
        .map(|p| {
            format!(
                "event: response.output_text.delta\ndata: {}\n\n",
                serde_json::json!({"type": "response.output_text.delta", "output_index": 0, "content_index": 0, "delta": p})
            )
        })
        .collect()
}

#[tokio::test]
async fn responses_streams_are_masked_with_the_rule_profile_and_asked_uncompressed() {
    let events = responses_stream(&["your card: 4111 11", "11 1111 1111", " ok"]);
    let answer = ok_answer("text/event-stream", "", events.as_bytes());
    let body = chat("hello");
    let head = post("/v1/responses", "application/json", "Accept-Encoding: gzip, br\r\n", &body);
    let o = through_masking(&head, &body, &answer).await;
    let up = forwarded(&o);
    assert!(up.contains("accept-encoding: identity\r\n") && !up.contains("gzip"), "{up}");
    assert!(!o.client.contains("1111"), "{}", o.client);
    assert!(o.client.contains("event: response.output_text.delta"), "{}", o.client);
    assert!(o.client.contains("[REDACTED:credit_card]"), "{}", o.client);
    assert_eq!(o.record.response_masked, ["credit_card"]);
}

#[tokio::test]
async fn a_compressed_event_stream_is_masked_all_the_same() {
    let events = responses_stream(&["key sk-proj-Ab12Cd34Ef56", "Gh78Ij90Kl12Mn34 done"]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(events.as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    let answer = ok_answer("text/event-stream", "Content-Encoding: gzip\r\n", &gz);
    let body = chat("hello");
    let head = post("/v1/responses", "application/json", "", &body);
    let o = through_masking(&head, &body, &answer).await;
    forwarded(&o);
    assert!(!o.client.to_lowercase().contains("content-encoding"), "sent decoded: {}", o.client);
    assert!(o.client.contains("\"delta\":\"[REDACTED:openai_api_key] \""), "{}", o.client);
    assert!(!o.client.contains("Ab12Cd34"), "{}", o.client);
}

/// "refund card 4111 1111 1111 1111 (e2e-tokens)" in cl100k_base.
const CARD_TOKENS: &str =
    "[69583,3786,220,17337,16,220,5037,16,220,5037,16,220,5037,16,320,68,17,68,2442,9912,8]";

#[tokio::test]
async fn token_id_input_is_decoded_and_what_cannot_be_is_unscanned() {
    let body = format!(r#"{{"model":"text-embedding-3-small","input":{CARD_TOKENS}}}"#);
    let o = send(
        session(DlpAction::Block, true),
        &post("/v1/embeddings", "application/json", "", body.as_bytes()),
        body.as_bytes(),
    )
    .await;
    refused(&o, "dlp_violation");
    assert_eq!(o.record.dlp_findings[0].paths, ["$.input(tokens)"]);
    let unknown = format!(r#"{{"model":"my-own-model","input":{CARD_TOKENS}}}"#);
    let o = send(
        session(DlpAction::Block, true),
        &post("/v1/embeddings", "application/json", "", unknown.as_bytes()),
        unknown.as_bytes(),
    )
    .await;
    refused(&o, "unscanned_content");
    assert!(o.client.contains("tokenizer is not known"), "{}", o.client);
    let prompt = format!(r#"{{"model":"gpt-3.5-turbo-instruct","prompt":[{CARD_TOKENS}]}}"#);
    let o = send(
        session(DlpAction::Redact, false),
        &post("/v1/completions", "application/json", "", prompt.as_bytes()),
        prompt.as_bytes(),
    )
    .await;
    refused(&o, "dlp_violation");
    assert!(o.client.contains("token ids"), "cannot be redacted in place: {}", o.client);
}

#[tokio::test]
async fn headers_named_like_sdk_metadata_are_scanned_too() {
    let body = chat("hello");
    for header in
        [format!("X-Stainless-Note: {CARD}\r\n"), format!("Accept-Language: en, {CARD}\r\n")]
    {
        let o = send(
            session(DlpAction::Block, true),
            &post("/v1/chat/completions", "application/json", &header, &body),
            &body,
        )
        .await;
        refused(&o, "dlp_violation");
    }
    // The SDK's real metadata is clean.
    let sdk = "X-Stainless-Lang: python\r\nX-Stainless-Package-Version: 1.54.3\r\nX-Stainless-OS: Linux\r\nX-Stainless-Arch: x64\r\nX-Stainless-Runtime: CPython\r\nX-Stainless-Runtime-Version: 3.11.2\r\nX-Stainless-Retry-Count: 0\r\nX-Stainless-Read-Timeout: 600\r\nAccept: application/json\r\nUser-Agent: OpenAI/Python 1.54.3\r\n";
    let o = send(
        session(DlpAction::Block, true),
        &post("/v1/chat/completions", "application/json", sdk, &body),
        &body,
    )
    .await;
    forwarded(&o);
    assert_eq!(o.record.dlp_action, Some("clean"));
}

#[tokio::test]
async fn review_findings_in_the_exchange_stay_fixed() {
    // A body with findings that redaction could not rebuild (malformed multipart, read as
    // text) is refused, not forwarded as it came.
    let garbage = format!("--nope\r\nbroken card {CARD}");
    let o = send(
        session(DlpAction::Redact, false),
        &post("/v1/files", "multipart/form-data; boundary=Declared", "", garbage.as_bytes()),
        garbage.as_bytes(),
    )
    .await;
    refused(&o, "dlp_violation");
    // A query parameter whose name is the secret: found, and the name kept out of the record.
    let body = chat("hello");
    let target = "/v1/chat/completions?4111111111111111=x";
    let o =
        send(session(DlpAction::Block, true), &post(target, "application/json", "", &body), &body)
            .await;
    refused(&o, "dlp_violation");
    no_card_anywhere(&o);
    // A user agent carrying a card is not written into the record.
    let o = send(
        session(DlpAction::Alert, false),
        &post(
            "/v1/chat/completions",
            "application/json",
            &format!("User-Agent: x {CARD}\r\n"),
            &body,
        ),
        &body,
    )
    .await;
    forwarded(&o);
    assert!(!serde_json::to_string(&o.record).unwrap().contains("4111"));
    // An organization header that is not UTF-8 is there, and not allowed.
    let mut s = session(DlpAction::Block, true);
    s.headers.allowed_organizations = vec!["org-good".into()];
    s.headers.inject_missing_org_project = true;
    // The header's value carries the byte 0xFF (written as ÿ, then replaced by the raw byte).
    let head = post(
        "/v1/chat/completions",
        "application/json",
        "OpenAI-Organization: org-\u{ff}evil\r\n",
        &body,
    );
    let mut raw = head.into_bytes();
    if let Some(i) = raw.windows(2).position(|w| w == "\u{ff}".as_bytes()) {
        raw.splice(i..i + 2, [0xffu8]);
    }
    let o = common::send_raw(s, &raw, &body).await;
    refused(&o, "organization_not_allowed");
}

#[tokio::test]
async fn masked_answers_lose_their_logprobs() {
    let answer_body = serde_json::json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
        "logprobs": {"content": [{"token": "sk-proj-Ab12", "logprob": -0.1}, {"token": "Cd34Ef56Gh78Ij90Kl12Mn34", "logprob": -0.2}]}}]})
    .to_string();
    let answer = ok_answer("application/json", "", answer_body.as_bytes());
    let body = chat("hello");
    let head = post("/v1/chat/completions", "application/json", "", &body);
    let o = through_masking(&head, &body, &answer).await;
    forwarded(&o);
    assert!(!o.client.contains("logprobs") && !o.client.contains("Ab12"), "{}", o.client);
    assert!(o.client.contains("\"content\":\"ok\""), "{}", o.client);
}

#[tokio::test]
async fn upload_parts_are_read_by_their_content() {
    // The Uploads API's parts (`POST /v1/uploads/{id}/parts`): a multipart `data` field of
    // application/octet-stream, which holds the file's bytes as they are. A CSV part with a
    // card is read as text and refused.
    let body = b"--P\r\nContent-Disposition: form-data; name=\"data\"; filename=\"blob\"\r\nContent-Type: application/octet-stream\r\n\r\nname,card\nbob,4111 1111 1111 1111\n\r\n--P--\r\n";
    let head = post("/v1/uploads/upload_abc123/parts", "multipart/form-data; boundary=P", "", body);
    let o = send(session(DlpAction::Block, true), &head, body).await;
    refused(&o, "dlp_violation");
    assert_eq!(o.record.dlp_action, Some("block"));
    assert!(o.client.contains("credit_card"), "{}", o.client);
    // A part of an image passes, named unscanned (images pass unless the rule says otherwise).
    let mut part = b"--P\r\nContent-Disposition: form-data; name=\"data\"; filename=\"blob\"\r\nContent-Type: application/octet-stream\r\n\r\n".to_vec();
    part.extend_from_slice(PNG);
    part.extend_from_slice(b"\r\n--P--\r\n");
    let head =
        post("/v1/uploads/upload_abc123/parts", "multipart/form-data; boundary=P", "", &part);
    let o = send(session(DlpAction::Block, true), &head, &part).await;
    forwarded(&o);
    assert_eq!(o.record.unscanned, ["$.data(blob) (PNG image)"]);
}
