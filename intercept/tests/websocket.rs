//! WebSocket messages inspected in passing, over in-memory pipes: the test plays a Realtime or
//! Codex client on one side and the server on the other, with real frames (masked, fragmented,
//! compressed with context takeover), through the HTTP/1.1 driver's upgrade.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use flate2::{Compress, Compression, FlushCompress};
use sluice_intercept::h1::{ProxyError, serve};
use sluice_intercept::ws::deflate::Inflater;
use sluice_intercept::ws::frame::{self, Side, op};
use sluice_intercept::ws::message::{Assembler, Event};
use sluice_intercept::{Mask, RequestRecord, Session};
use sluice_rules::DlpAction;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

fn session(dlp: Option<DlpAction>) -> Session {
    let s = common::session("api.openai.com");
    match dlp {
        Some(action) => common::with_dlp(s, &["credit_card", "openai_api_key"], action),
        None => s,
    }
}

type Records = Arc<Mutex<Vec<RequestRecord>>>;

struct Ws {
    c: DuplexStream,
    s: DuplexStream,
    records: Records,
    task: tokio::task::JoinHandle<Result<(), ProxyError>>,
    /// Bytes the server side read past the upgrade.
    s_buf: Vec<u8>,
    c_buf: Vec<u8>,
}

const UPGRADE: &str = "GET /v1/realtime?model=gpt-4o-realtime-preview HTTP/1.1\r\nHost: api.openai.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

/// Upgrades through the engine; `ext`: the server's `Sec-WebSocket-Extensions`, if any.
async fn open(s: Session, offer: Option<&str>, ext: Option<&str>) -> Ws {
    let (mut c, mut proxy_client) = duplex(1 << 20);
    let (mut srv, mut proxy_server) = duplex(1 << 20);
    let records: Records = Arc::default();
    let r = records.clone();
    let task = tokio::spawn(async move {
        let sink = move |rec: RequestRecord| r.lock().unwrap().push(rec);
        serve(&mut proxy_client, Some(&mut proxy_server), &s, &sink).await
    });
    let mut req = UPGRADE.to_owned();
    if let Some(o) = offer {
        req.push_str(&format!("Sec-WebSocket-Extensions: {o}\r\n"));
    }
    req.push_str("\r\n");
    c.write_all(req.as_bytes()).await.unwrap();
    let head = read_until(&mut srv, b"\r\n\r\n").await;
    let head = String::from_utf8(head).unwrap();
    let mut resp =
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            .to_owned();
    if let Some(e) = ext {
        assert!(
            head.to_ascii_lowercase().contains("sec-websocket-extensions: permessage-deflate"),
            "{head}"
        );
        resp.push_str(&format!("Sec-WebSocket-Extensions: {e}\r\n"));
    }
    resp.push_str("\r\n");
    srv.write_all(resp.as_bytes()).await.unwrap();
    let got = read_until(&mut c, b"\r\n\r\n").await;
    assert!(got.starts_with(b"HTTP/1.1 101"));
    Ws { c, s: srv, records, task, s_buf: Vec::new(), c_buf: Vec::new() }
}

async fn read_until(s: &mut DuplexStream, needle: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut b = [0u8; 1];
    while !got.ends_with(needle) {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await.unwrap().unwrap() {
            0 => break,
            _ => got.push(b[0]),
        }
    }
    got
}

fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    frame::write(&mut out, opcode, false, payload, Some([0x37, 0xfa, 0x21, 0x3d]));
    out
}

fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    frame::write(&mut out, opcode, false, payload, None);
    out
}

/// Reads one event off `s` as `side`'s peer would (a mirror inflater when given).
async fn next_event(s: &mut DuplexStream, buf: &mut Vec<u8>, asm: &mut Assembler) -> Option<Event> {
    loop {
        if let Some(e) = asm.next(buf).unwrap() {
            return Some(e);
        }
        let mut b = [0u8; 4096];
        let n =
            tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await.unwrap().unwrap();
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&b[..n]);
    }
}

async fn read_raw(s: &mut DuplexStream, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut b)).await.unwrap().unwrap();
    b
}

fn close_code(e: &Event) -> Option<(u16, String)> {
    match e {
        Event::Control { opcode: op::CLOSE, payload, .. } if payload.len() >= 2 => Some((
            u16::from_be_bytes([payload[0], payload[1]]),
            String::from_utf8_lossy(&payload[2..]).into_owned(),
        )),
        _ => None,
    }
}

const CARD_ITEM: &str = r#"{"type":"conversation.item.create","item":{"type":"message","role":"user","content":[{"type":"input_text","text":"my card is 4111 1111 1111 1111"}]}}"#;
const CLEAN_ITEM: &str = r#"{"type":"conversation.item.create","item":{"type":"message","role":"user","content":[{"type":"input_text","text":"hello"}]}}"#;

#[tokio::test]
async fn messages_the_policy_leaves_alone_are_relayed_byte_for_byte() {
    let mut ws = open(session(Some(DlpAction::Block)), None, None).await;
    let out = client_frame(op::TEXT, CLEAN_ITEM.as_bytes());
    ws.c.write_all(&out).await.unwrap();
    assert_eq!(read_raw(&mut ws.s, out.len()).await, out);
    let ping = client_frame(op::PING, b"p");
    ws.c.write_all(&ping).await.unwrap();
    assert_eq!(read_raw(&mut ws.s, ping.len()).await, ping);
    let back = server_frame(op::TEXT, br#"{"type":"response.output_text.delta","delta":"hi"}"#);
    ws.s.write_all(&back).await.unwrap();
    assert_eq!(read_raw(&mut ws.c, back.len()).await, back);
    let bin = client_frame(op::BINARY, &[0, 1, 2, 3]);
    ws.c.write_all(&bin).await.unwrap();
    assert_eq!(read_raw(&mut ws.s, bin.len()).await, bin);
    // The client closes; the server answers; the connection's record has the counts.
    let close = client_frame(op::CLOSE, &frame::close_payload(1000, "bye"));
    ws.c.write_all(&close).await.unwrap();
    assert_eq!(read_raw(&mut ws.s, close.len()).await, close);
    ws.s.write_all(&server_frame(op::CLOSE, &frame::close_payload(1000, ""))).await.unwrap();
    drop(ws.c);
    drop(ws.s);
    ws.task.await.unwrap().unwrap();
    let recs = ws.records.lock().unwrap();
    assert_eq!(recs.len(), 1);
    let w = recs[0].websocket.clone().unwrap();
    assert_eq!((w.record, w.messages_out, w.messages_in, w.binary_out), ("connection", 2, 1, 1));
    assert_eq!(
        (recs[0].status, w.close_code, recs[0].dlp_action),
        (Some(101), Some(1000), Some("clean"))
    );
    assert_eq!(recs[0].model.as_deref(), Some("gpt-4o-realtime-preview"));
}

#[tokio::test]
async fn a_realtime_item_with_a_card_closes_the_socket_with_1008() {
    let mut ws = open(session(Some(DlpAction::Block)), None, None).await;
    ws.c.write_all(&client_frame(op::TEXT, CARD_ITEM.as_bytes())).await.unwrap();
    let mut asm = Assembler::new(Side::Server, None, 1 << 20);
    let e = next_event(&mut ws.c, &mut ws.c_buf, &mut asm).await.unwrap();
    let (code, reason) = close_code(&e).unwrap();
    assert_eq!(code, 1008);
    assert!(
        reason.contains("dlp_violation") && reason.contains("finance-openai-inspect"),
        "{reason}"
    );
    // The server got a close, never the message.
    let mut asm = Assembler::new(Side::Client, None, 1 << 20);
    let e = next_event(&mut ws.s, &mut ws.s_buf, &mut asm).await.unwrap();
    assert_eq!(close_code(&e).unwrap().0, 1008);
    assert!(next_event(&mut ws.s, &mut ws.s_buf, &mut asm).await.is_none());
    ws.task.await.unwrap().unwrap();
    let recs = ws.records.lock().unwrap();
    assert_eq!(recs.len(), 2, "the message's record and the connection's");
    let msg = &recs[0];
    assert_eq!(
        (msg.verdict, msg.code, msg.dlp_action),
        ("block", Some("dlp_violation"), Some("block"))
    );
    assert_eq!(msg.websocket.as_ref().unwrap().event.as_deref(), Some("conversation.item.create"));
    assert_eq!(recs[1].websocket.as_ref().unwrap().close_code, Some(1008));
    assert_eq!(recs[1].verdict, "block");
    assert!(!serde_json::to_string(&*recs).unwrap().contains("4111"));
}

#[tokio::test]
async fn a_fragmented_message_is_inspected_whole() {
    let mut ws = open(session(Some(DlpAction::Block)), None, None).await;
    let (a, b) = CARD_ITEM.split_at(CARD_ITEM.find("1111 1111").unwrap());
    let mut first = client_frame(op::TEXT, a.as_bytes());
    first[0] &= 0x7F; // not FIN
    ws.c.write_all(&first).await.unwrap();
    ws.c.write_all(&client_frame(op::PING, b"between")).await.unwrap();
    ws.c.write_all(&client_frame(op::CONTINUATION, b.as_bytes())).await.unwrap();
    let mut asm = Assembler::new(Side::Client, None, 1 << 20);
    let e = next_event(&mut ws.s, &mut ws.s_buf, &mut asm).await.unwrap();
    assert!(
        matches!(e, Event::Control { opcode: op::PING, .. }),
        "the ping passes between fragments"
    );
    let e = next_event(&mut ws.s, &mut ws.s_buf, &mut asm).await.unwrap();
    assert_eq!(close_code(&e).unwrap().0, 1008, "no fragment of the message reached the server");
}

#[tokio::test]
async fn redaction_rewrites_the_message_as_a_valid_masked_frame() {
    let mut ws = open(session(Some(DlpAction::Redact)), None, None).await;
    ws.c.write_all(&client_frame(op::TEXT, CARD_ITEM.as_bytes())).await.unwrap();
    let mut asm = Assembler::new(Side::Client, None, 1 << 20);
    match next_event(&mut ws.s, &mut ws.s_buf, &mut asm).await.unwrap() {
        Event::Message { opcode, payload, .. } => {
            assert_eq!(opcode, op::TEXT);
            let text = String::from_utf8(payload).unwrap();
            assert!(text.contains("[REDACTED:credit_card]") && !text.contains("4111"), "{text}");
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["type"], "conversation.item.create");
        }
        e => panic!("{e:?}"),
    }
    drop(ws.c);
    drop(ws.s);
    ws.task.await.unwrap().unwrap();
    let recs = ws.records.lock().unwrap();
    assert_eq!((recs[0].dlp_action, recs[0].verdict), (Some("redact"), "allow"));
    assert_eq!(recs[1].websocket.as_ref().unwrap().rewritten, 1);
}

/// Compresses as a permessage-deflate sender does.
fn deflate(z: &mut Compress, msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + 64);
    z.compress_vec(msg, &mut out, FlushCompress::Sync).unwrap();
    out.truncate(out.len() - 4);
    out
}

fn compressed_client_frame(z: &mut Compress, msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    frame::write(&mut out, op::TEXT, true, &deflate(z, msg), Some([1, 2, 3, 4]));
    out
}

#[tokio::test]
async fn codex_response_create_with_permessage_deflate_and_context_takeover() {
    let ext = "permessage-deflate; server_no_context_takeover";
    let create = |text: &str| {
        serde_json::json!({"type": "response.create", "response": {"instructions": "You are Codex.",
            "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}]}})
        .to_string()
    };
    // Block: the third message (compressed against the context of the first two) is read.
    let mut ws = open(
        session(Some(DlpAction::Block)),
        Some("permessage-deflate; client_max_window_bits"),
        Some(ext),
    )
    .await;
    let mut z = Compress::new(Compression::default(), false);
    let mut server_view = Assembler::new(Side::Client, Some(Inflater::new(false)), 1 << 20);
    for text in ["list the files", "list the files again"] {
        let f = compressed_client_frame(&mut z, create(text).as_bytes());
        ws.c.write_all(&f).await.unwrap();
        match next_event(&mut ws.s, &mut ws.s_buf, &mut server_view).await.unwrap() {
            Event::Message { raw, payload, compressed, .. } => {
                assert_eq!(raw, f, "relayed unchanged");
                assert!(compressed);
                assert_eq!(payload, create(text).as_bytes());
            }
            e => panic!("{e:?}"),
        }
    }
    let key = format!("use key sk-proj-{}", "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb7dEf0hIj3k");
    ws.c.write_all(&compressed_client_frame(&mut z, create(&key).as_bytes())).await.unwrap();
    let e = next_event(&mut ws.s, &mut ws.s_buf, &mut server_view).await.unwrap();
    assert_eq!(close_code(&e).unwrap().0, 1008);

    // Redact: the rewritten message goes uncompressed, and so does every later one (the
    // server's context no longer matches the client's), each still readable.
    let mut ws =
        open(session(Some(DlpAction::Redact)), Some("permessage-deflate"), Some(ext)).await;
    let mut z = Compress::new(Compression::default(), false);
    let mut server_view = Assembler::new(Side::Client, Some(Inflater::new(false)), 1 << 20);
    let texts = [
        "first".to_owned(),
        key.clone(),
        "list the files".to_owned(),
        "list the files again".to_owned(),
    ];
    for (i, text) in texts.iter().enumerate() {
        ws.c.write_all(&compressed_client_frame(&mut z, create(text).as_bytes())).await.unwrap();
        match next_event(&mut ws.s, &mut ws.s_buf, &mut server_view).await.unwrap() {
            Event::Message { payload, compressed, .. } => {
                let got = String::from_utf8(payload).unwrap();
                match i {
                    0 => assert_eq!((compressed, got), (true, create(text))),
                    1 => assert!(!compressed && got.contains("[REDACTED:openai_api_key]"), "{got}"),
                    _ => assert_eq!((compressed, got), (false, create(text))),
                }
            }
            e => panic!("{e:?}"),
        }
    }
}

#[tokio::test]
async fn a_server_message_carrying_a_key_is_masked() {
    let mut s = session(None);
    let scanner = Arc::new(sluice_dlp::Scanner::new().unwrap());
    let set = scanner.profile(&["openai_api_key"]).unwrap();
    s.mask = Some(Mask { scanner, set });
    let mut ws = open(s, None, None).await;
    let leak = serde_json::json!({"type": "response.output_text.delta",
        "delta": format!("here: sk-proj-{}", "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb7dEf0hIj3k")})
    .to_string();
    ws.s.write_all(&server_frame(op::TEXT, leak.as_bytes())).await.unwrap();
    let mut asm = Assembler::new(Side::Server, None, 1 << 20);
    match next_event(&mut ws.c, &mut ws.c_buf, &mut asm).await.unwrap() {
        Event::Message { payload, .. } => {
            let got = String::from_utf8(payload).unwrap();
            assert!(
                got.contains("[REDACTED:openai_api_key]") && !got.contains("Ab3dEf6h"),
                "{got}"
            );
        }
        e => panic!("{e:?}"),
    }
    drop(ws.c);
    drop(ws.s);
    ws.task.await.unwrap().unwrap();
    let recs = ws.records.lock().unwrap();
    assert_eq!(recs[0].response_masked, ["openai_api_key"]);
}

#[tokio::test]
async fn audio_is_counted_and_refused_when_the_rule_says() {
    let append = r#"{"type":"input_audio_buffer.append","audio":"UklGRiQAAABXQVZFZm10"}"#;
    let mut ws = open(session(Some(DlpAction::Block)), None, None).await;
    let f = client_frame(op::TEXT, append.as_bytes());
    ws.c.write_all(&f).await.unwrap();
    assert_eq!(read_raw(&mut ws.s, f.len()).await, f);
    drop(ws.c);
    drop(ws.s);
    ws.task.await.unwrap().unwrap();
    let w = ws.records.lock().unwrap()[0].websocket.clone().unwrap();
    assert_eq!((w.audio_out, w.messages_out), (1, 1));

    let mut s = session(Some(DlpAction::Block));
    s.headers.block_audio = true;
    for msg in [client_frame(op::TEXT, append.as_bytes()), client_frame(op::BINARY, b"\x00\x01")] {
        let mut ws = open(s.clone(), None, None).await;
        ws.c.write_all(&msg).await.unwrap();
        let mut asm = Assembler::new(Side::Client, None, 1 << 20);
        let e = next_event(&mut ws.s, &mut ws.s_buf, &mut asm).await.unwrap();
        assert_eq!(close_code(&e).unwrap().0, 1008);
        ws.task.await.unwrap().unwrap();
        assert_eq!(ws.records.lock().unwrap()[0].code, Some("audio_not_allowed"));
    }
}

#[tokio::test]
async fn hostile_frames_close_both_sides() {
    // An unmasked client frame, and a compressed frame without the extension.
    for bad in [server_frame(op::TEXT, b"unmasked"), {
        let mut f = client_frame(op::TEXT, b"x");
        f[0] |= 0x40;
        f
    }] {
        let mut ws = open(session(None), None, None).await;
        ws.c.write_all(&bad).await.unwrap();
        let mut asm = Assembler::new(Side::Server, None, 1 << 20);
        let e = next_event(&mut ws.c, &mut ws.c_buf, &mut asm).await.unwrap();
        assert_eq!(close_code(&e).unwrap().0, 1002);
        let mut asm = Assembler::new(Side::Client, None, 1 << 20);
        let e = next_event(&mut ws.s, &mut ws.s_buf, &mut asm).await.unwrap();
        assert_eq!(close_code(&e).unwrap().0, 1002);
        ws.task.await.unwrap().unwrap();
        assert!(ws.records.lock().unwrap()[0].reason.as_deref().unwrap().contains("bad frame"));
    }
}

#[tokio::test]
async fn extensions_the_engine_cannot_read_are_not_offered_and_not_relayed_blind() {
    // The offer reaches the server without the unknown extension.
    let mut ws = open(
        session(None),
        Some("x-webkit-deflate-frame, permessage-deflate"),
        Some("permessage-deflate"),
    )
    .await;
    drop(ws.c);
    let _ = ws.s.shutdown().await;
    ws.task.await.unwrap().unwrap();
    // A server accepting one anyway: the client gets a close (1010), nothing is relayed.
    let (mut c, mut proxy_client) = duplex(1 << 16);
    let (mut srv, mut proxy_server) = duplex(1 << 16);
    let task = tokio::spawn(async move {
        let sink = |_: RequestRecord| {};
        serve(&mut proxy_client, Some(&mut proxy_server), &session(None), &sink).await
    });
    c.write_all(format!("{UPGRADE}\r\n").as_bytes()).await.unwrap();
    read_until(&mut srv, b"\r\n\r\n").await;
    srv.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Extensions: x-webkit-deflate-frame\r\n\r\n").await.unwrap();
    read_until(&mut c, b"\r\n\r\n").await;
    let mut buf = Vec::new();
    let mut asm = Assembler::new(Side::Server, None, 1 << 20);
    let e = next_event(&mut c, &mut buf, &mut asm).await.unwrap();
    assert_eq!(close_code(&e).unwrap().0, 1010);
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_json_event_in_a_binary_frame_is_inspected_as_text() {
    let mut ws = open(session(Some(DlpAction::Block)), None, None).await;
    ws.c.write_all(&client_frame(op::BINARY, CARD_ITEM.as_bytes())).await.unwrap();
    let mut asm = Assembler::new(Side::Client, None, 1 << 20);
    let e = next_event(&mut ws.s, &mut ws.s_buf, &mut asm).await.unwrap();
    assert_eq!(close_code(&e).unwrap().0, 1008, "the card never left in a binary frame");
}

#[tokio::test]
async fn models_named_in_events_are_held_to_the_allow_list() {
    let mut s = session(None);
    s.headers.allowed_models = vec!["gpt-4o-realtime-preview".into(), "gpt-4o-mini".into()];
    let allowed = r#"{"type":"response.create","response":{"model":"gpt-4o-mini","input":[]}}"#;
    let other = r#"{"type":"session.update","session":{"model":"o3","instructions":"x"}}"#;
    let mut ws = open(s.clone(), None, None).await;
    let f = client_frame(op::TEXT, allowed.as_bytes());
    ws.c.write_all(&f).await.unwrap();
    assert_eq!(read_raw(&mut ws.s, f.len()).await, f);
    ws.c.write_all(&client_frame(op::TEXT, other.as_bytes())).await.unwrap();
    let mut asm = Assembler::new(Side::Client, None, 1 << 20);
    let e = next_event(&mut ws.s, &mut ws.s_buf, &mut asm).await.unwrap();
    let (code, reason) = close_code(&e).unwrap();
    assert_eq!((code, reason.contains("model_not_allowed")), (1008, true), "{reason}");
    ws.task.await.unwrap().unwrap();
    let recs = ws.records.lock().unwrap();
    assert_eq!(recs[0].model.as_deref(), Some("o3"));
}

#[tokio::test]
async fn realtime_usage_adds_up_and_a_quota_refuses_the_response_past_it() {
    use sluice_rules::{Measure, QuotaBy, QuotaLimit, QuotaPolicy, Window};
    let mut s = session(None);
    s.headers.quota = Some(QuotaPolicy {
        by: QuotaBy::Identity,
        limits: vec![QuotaLimit { measure: Measure::Tokens, window: Window::Day, max: 40 }],
    });
    let mut ws = open(s, None, None).await;
    let create = r#"{"type":"response.create","response":{"modalities":["text"]}}"#;
    let done = |i: u64, o: u64| {
        serde_json::json!({"type": "response.done", "response": {"id": "r", "status": "completed",
            "usage": {"total_tokens": i + o, "input_tokens": i, "output_tokens": o,
                      "input_token_details": {"cached_tokens": 2}}}})
        .to_string()
    };
    let mut srv_asm = Assembler::new(Side::Client, None, 1 << 20);
    let mut cli_asm = Assembler::new(Side::Server, None, 1 << 20);
    for _ in 0..2 {
        ws.c.write_all(&client_frame(op::TEXT, create.as_bytes())).await.unwrap();
        assert!(matches!(
            next_event(&mut ws.s, &mut ws.s_buf, &mut srv_asm).await,
            Some(Event::Message { .. })
        ));
        // A delta naming the event in its text is not a finished response.
        let delta = r#"{"type":"response.text.delta","delta":"\"response.done\" usage"}"#;
        ws.s.write_all(&server_frame(op::TEXT, delta.as_bytes())).await.unwrap();
        ws.s.write_all(&server_frame(op::TEXT, done(15, 10).as_bytes())).await.unwrap();
        for _ in 0..2 {
            next_event(&mut ws.c, &mut ws.c_buf, &mut cli_asm).await.unwrap();
        }
    }
    // 50 tokens used of 40: the next response asked for closes the socket.
    ws.c.write_all(&client_frame(op::TEXT, create.as_bytes())).await.unwrap();
    let ev = next_event(&mut ws.c, &mut ws.c_buf, &mut cli_asm).await.unwrap();
    let (code, reason) = close_code(&ev).unwrap();
    assert_eq!(code, 1008);
    assert!(reason.contains("quota_exceeded"), "{reason}");
    drop(ws.c);
    drop(ws.s);
    let _ = ws.task.await.unwrap();
    let recs = ws.records.lock().unwrap();
    let conn = recs.iter().find(|r| r.websocket.as_ref().is_some_and(|w| w.record == "connection"));
    let conn = conn.unwrap();
    assert_eq!(
        (conn.input_tokens, conn.output_tokens, conn.cached_tokens),
        (Some(30), Some(20), Some(4))
    );
    assert_eq!(conn.quota.as_deref(), Some("identity:finance"));
    let refused = recs.iter().find(|r| r.code == Some("quota_exceeded")).expect("its record");
    assert_eq!(refused.verdict, "block");
}
