//! HTTP/2 toward the client, over in-memory pipes: a real HTTP/2 client (hyper's) on one side,
//! a real server (hyper's, HTTP/2 or HTTP/1.1) on the other, the engine's driver between.
#![allow(clippy::unwrap_used)]

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http2 as client_h2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice_intercept::h2::upstream::Io;
use sluice_intercept::h2::{self, H2Error, Opener, Upstream};
use sluice_intercept::{Mask, RecordSink, RequestRecord, Session};
use sluice_rules::DlpAction;
use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

fn session() -> Session {
    common::session("api.openai.com")
}

fn with_dlp(s: Session, action: DlpAction) -> Session {
    common::with_dlp(s, &["credit_card"], action)
}

/// What the server received: version, method, URI, headers, body, trailers.
#[derive(Debug, Clone)]
struct Seen {
    version: http::Version,
    uri: String,
    headers: HeaderMap,
    body: Vec<u8>,
    trailers: Option<HeaderMap>,
}

type Log = Arc<Mutex<Vec<Seen>>>;
type Records = Arc<Mutex<Vec<RequestRecord>>>;
type RespBody = BoxBody<Bytes, Infallible>;
type ReqBody = BoxBody<Bytes, Infallible>;

/// The test server: records each request, answers by path.
async fn origin(req: Request<Incoming>, log: Log) -> Result<Response<RespBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    log.lock().unwrap().push(Seen {
        version: parts.version,
        uri: parts.uri.to_string(),
        headers: parts.headers.clone(),
        body: collected.to_bytes().to_vec(),
        trailers,
    });
    let path = parts.uri.path().to_owned();
    if path == "/slow" {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let resp = match path.as_str() {
        "/v1/sse" => {
            let ev = |t: &str| {
                let e = serde_json::json!({"choices": [{"delta": {"content": t}}]});
                Ok::<_, Infallible>(Frame::data(Bytes::from(format!("data: {e}\n\n"))))
            };
            let frames = vec![
                ev("your token: ghp_a1B2c3D4e5F6g7"),
                ev("H8i9J0k1L2m3N4o5P6q7R8"),
                ev(" done"),
            ];
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(StreamBody::new(futures_stream(frames)).boxed())
                .unwrap()
        }
        "/trailers" => {
            let mut t = HeaderMap::new();
            t.insert("x-upstream-trailer", HeaderValue::from_static("yes"));
            let frames = vec![Ok(Frame::data(Bytes::from_static(b"ok"))), Ok(Frame::trailers(t))];
            Response::new(StreamBody::new(futures_stream(frames)).boxed())
        }
        _ => Response::builder()
            .header("content-type", "application/json")
            .header("connection", "keep-alive")
            .body(Full::new(Bytes::from_static(br#"{"ok":true}"#)).boxed())
            .unwrap(),
    };
    Ok(resp)
}

/// A stream of ready frames.
fn futures_stream(
    frames: Vec<Result<Frame<Bytes>, Infallible>>,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + Sync + 'static {
    futures_util::stream::iter(frames)
}

/// An HTTP/2 origin on the other end of the returned pipe.
fn h2_origin(log: &Log) -> tokio::io::DuplexStream {
    let (ours, theirs) = duplex(1 << 20);
    let l = log.clone();
    tokio::spawn(async move {
        let svc = service_fn(move |r| origin(r, l.clone()));
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(theirs), svc)
            .await;
    });
    ours
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Server {
    H2,
    H1,
}

struct Lab {
    client: client_h2::SendRequest<ReqBody>,
    log: Log,
    records: Records,
    task: tokio::task::JoinHandle<Result<(), H2Error>>,
}

/// The engine between a client and a server of `kind`.
async fn start(s: Session, kind: Server) -> Lab {
    let log: Log = Arc::default();
    let upstream = match kind {
        Server::H2 => Upstream::h2(h2_origin(&log)).await.unwrap(),
        Server::H1 => {
            let l = log.clone();
            let opener: Opener = Arc::new(move || {
                let l = l.clone();
                Box::pin(async move {
                    let (ours, theirs) = duplex(1 << 20);
                    tokio::spawn(async move {
                        let svc = service_fn(move |r| origin(r, l.clone()));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(theirs), svc)
                            .await;
                    });
                    Ok(Box::new(ours) as Box<dyn Io>)
                })
            });
            Upstream::h1(None, opener).await
        }
    };
    let records: Records = Arc::default();
    let r = records.clone();
    let sink: Arc<dyn RecordSink> = Arc::new(move |rec: RequestRecord| r.lock().unwrap().push(rec));
    let (client_end, proxy_end) = duplex(1 << 20);
    let task = tokio::spawn(h2::serve(proxy_end, Some(upstream), Arc::new(s), sink));
    let (client, conn) =
        client_h2::handshake(TokioExecutor::new(), TokioIo::new(client_end)).await.unwrap();
    tokio::spawn(conn);
    Lab { client, log, records, task }
}

fn post(path: &str, body: &str) -> Request<ReqBody> {
    Request::builder()
        .method("POST")
        .uri(format!("https://api.openai.com{path}"))
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-test-h2")
        .body(Full::new(Bytes::from(body.to_owned())).boxed())
        .unwrap()
}

/// Sends `req`; returns the status, headers and the whole body.
async fn send(
    c: &client_h2::SendRequest<ReqBody>,
    req: Request<ReqBody>,
) -> (u16, HeaderMap, String, Option<HeaderMap>) {
    let mut c = c.clone();
    c.ready().await.unwrap();
    let resp = c.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (status, headers, String::from_utf8_lossy(&collected.to_bytes()).into_owned(), trailers)
}

async fn records(r: &Records, n: usize) -> Vec<RequestRecord> {
    for _ in 0..100 {
        if r.lock().unwrap().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    r.lock().unwrap().clone()
}

const CARD: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"charge 4111 1111 1111 1111 now"}]}"#;
const CLEAN: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello"}]}"#;

#[tokio::test]
async fn concurrent_streams_one_blocked_by_dlp_the_others_complete() {
    for kind in [Server::H2, Server::H1] {
        let lab = start(with_dlp(session(), DlpAction::Block), kind).await;
        let (a, b, c) = tokio::join!(
            send(&lab.client, post("/slow", CLEAN)),
            send(&lab.client, post("/v1/chat/completions", CARD)),
            send(&lab.client, post("/slow", CLEAN)),
        );
        assert_eq!((a.0, c.0), (200, 200), "{kind:?}");
        assert_eq!(a.2, r#"{"ok":true}"#);
        assert_eq!(b.0, 403, "{kind:?}: {}", b.2);
        assert!(b.2.contains("dlp_violation") && b.2.contains("credit_card (1)"), "{}", b.2);
        assert!(!b.2.contains("4111"));
        assert_eq!(b.1.get("x-should-retry").unwrap(), "false");
        let log = lab.log.lock().unwrap().clone();
        assert_eq!(log.len(), 2, "{kind:?}: the blocked stream never left");
        assert!(log.iter().all(|s| s.uri.ends_with("/slow")));
        let recs = records(&lab.records, 3).await;
        assert_eq!(recs.len(), 3);
        assert!(recs.iter().all(|r| r.http_version == "2"));
        assert_eq!(recs.iter().filter(|r| r.verdict == "block").count(), 1);
        let json = serde_json::to_string(&recs).unwrap();
        assert!(!json.contains("4111") && !json.contains("sk-test-h2"));
        drop(lab.client);
        lab.task.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn translated_to_http1_upstream_with_host_and_origin_form() {
    let lab = start(session(), Server::H1).await;
    let (status, headers, body, _) =
        send(&lab.client, post("/v1/chat/completions?x=1", CLEAN)).await;
    assert_eq!((status, body.as_str()), (200, r#"{"ok":true}"#));
    assert!(headers.get("connection").is_none(), "hop-by-hop headers stay on their side");
    let seen = lab.log.lock().unwrap()[0].clone();
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(seen.uri, "/v1/chat/completions?x=1");
    assert_eq!(seen.headers.get("host").unwrap(), "api.openai.com");
    assert_eq!(seen.headers.get("content-length").unwrap(), &CLEAN.len().to_string());
    assert_eq!(seen.body, CLEAN.as_bytes());
    let recs = records(&lab.records, 1).await;
    assert_eq!((recs[0].status, recs[0].bytes_in), (Some(200), 11));
    assert_eq!(recs[0].model.as_deref(), Some("gpt-4o-mini"));
}

#[tokio::test]
async fn redaction_rewrites_the_stream_body_and_its_length() {
    let lab = start(with_dlp(session(), DlpAction::Redact), Server::H2).await;
    let (status, ..) = send(&lab.client, post("/v1/chat/completions", CARD)).await;
    assert_eq!(status, 200);
    let seen = lab.log.lock().unwrap()[0].clone();
    let body = String::from_utf8(seen.body).unwrap();
    assert!(body.contains("[REDACTED:credit_card]") && !body.contains("4111"), "{body}");
    assert_eq!(seen.version, http::Version::HTTP_2);
    if let Some(len) = seen.headers.get("content-length") {
        assert_eq!(len, &body.len().to_string());
    }
    let recs = records(&lab.records, 1).await;
    assert_eq!(recs[0].dlp_action, Some("redact"));
}

#[tokio::test]
async fn server_sent_events_are_masked_as_they_stream() {
    for kind in [Server::H2, Server::H1] {
        let mut s = session();
        let scanner = Arc::new(sluice_dlp::Scanner::new().unwrap());
        let set = scanner.profile(&["github_token"]).unwrap();
        s.mask = Some(Mask { scanner, set });
        let lab = start(s, kind).await;
        let (status, headers, body, _) = send(&lab.client, post("/v1/sse", "{}")).await;
        assert_eq!(status, 200);
        assert_eq!(headers.get("content-type").unwrap(), "text/event-stream");
        assert!(body.contains("[REDACTED:github_token]"), "{kind:?}: {body}");
        assert!(
            !body.contains("a1B2") && !body.contains("H8i9") && body.contains("done"),
            "{kind:?}: {body}"
        );
        let recs = records(&lab.records, 1).await;
        assert_eq!(recs[0].response_masked, ["github_token"]);
    }
}

#[tokio::test]
async fn trailers_are_forwarded_both_ways() {
    let lab = start(session(), Server::H2).await;
    let mut t = HeaderMap::new();
    t.insert("x-client-trailer", HeaderValue::from_static("sent"));
    let frames = vec![Ok(Frame::data(Bytes::from_static(b"{}"))), Ok(Frame::trailers(t))];
    let req = Request::builder()
        .method("POST")
        .uri("https://api.openai.com/trailers")
        .body(StreamBody::new(futures_stream(frames)).boxed())
        .unwrap();
    let (status, _, body, trailers) = send(&lab.client, req).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    let t = trailers.expect("response trailers");
    assert_eq!(t.get("x-upstream-trailer").unwrap(), "yes");
    let seen = lab.log.lock().unwrap()[0].clone();
    assert_eq!(seen.body, b"{}");
    assert_eq!(seen.trailers.expect("request trailers").get("x-client-trailer").unwrap(), "sent");
}

#[tokio::test]
async fn the_authority_must_name_the_sni() {
    let lab = start(session(), Server::H2).await;
    let req = Request::builder()
        .method("GET")
        .uri("https://chatgpt.com/backend-api/conversation")
        .body(Full::new(Bytes::new()).boxed())
        .unwrap();
    let (status, _, body, _) = send(&lab.client, req).await;
    assert_eq!(status, 403);
    assert!(body.contains("domain_fronting"), "{body}");
    assert!(lab.log.lock().unwrap().is_empty());
}

/// A refusal answered before the request's body was read waits for the body (bounded) before
/// it ends the stream: a client sending its body behind its headers sees the stream close
/// cleanly, not reset (curl took `RST_STREAM(STREAM_CLOSED)` for a failed request, exit 92).
#[tokio::test]
async fn a_refusal_before_the_body_ends_the_stream_cleanly() {
    let mut s = session();
    s.refuse = Some(sluice_intercept::block::Refusal::forbidden("blocked_by_policy", "no", None));
    let log: Log = Arc::default();
    let upstream = Upstream::h2(h2_origin(&log)).await.unwrap();
    let sink: Arc<dyn RecordSink> = Arc::new(|_: RequestRecord| {});
    let (client_end, proxy_end) = duplex(1 << 20);
    tokio::spawn(h2::serve(proxy_end, Some(upstream), Arc::new(s), sink));
    let (client, conn) = ::h2::client::handshake(client_end).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = Request::post("https://api.openai.com/v1/chat/completions").body(()).unwrap();
    // Headers first; the body follows once the answer's head is in.
    let (resp, mut body) = client.send_request(req, false).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 403);
    body.send_data(Bytes::from_static(b"{}"), true).unwrap();
    let mut answer = resp.into_body();
    let mut got = Vec::new();
    while let Some(chunk) = answer.data().await {
        got.extend_from_slice(&chunk.expect("the answer ends cleanly, not reset"));
    }
    assert!(String::from_utf8_lossy(&got).contains("blocked_by_policy"));
    let reset = tokio::time::timeout(
        Duration::from_millis(300),
        std::future::poll_fn(|cx| body.poll_reset(cx)),
    )
    .await;
    assert!(reset.is_err(), "the stream was reset: {reset:?}");
    // A client that never sends its body gets the answer and the stream ends anyway.
    let req = Request::post("https://api.openai.com/v1/chat/completions").body(()).unwrap();
    let (resp, _silent) = client.send_request(req, false).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), resp).await.unwrap().unwrap();
    let mut answer = resp.into_body();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while answer.data().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the answer waited for a body that never came");
    assert!(log.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_for_that_stream_alone() {
    let mut s = session();
    s.max_body = 1024;
    let lab = start(s, Server::H2).await;
    let big = format!(r#"{{"input":"{}"}}"#, "x".repeat(4096));
    let (over, ok) = tokio::join!(
        send(&lab.client, post("/v1/embeddings", &big)),
        send(&lab.client, post("/v1/embeddings", CLEAN))
    );
    assert_eq!((over.0, ok.0), (413, 200), "{}", over.2);
    assert!(over.2.contains("inspection_limit"));
}

#[tokio::test]
async fn bodies_held_at_once_share_a_budget_and_never_wait_on_each_other_forever() {
    // 64 KiB bodies: the connection holds 256 KiB at most. Twelve streams of 60 KB sent at
    // once, in 4 KB pieces, hold parts of it while waiting for more: some give way (503),
    // the others complete, none hangs.
    let mut s = session();
    s.max_body = 64 << 10;
    let lab = start(s, Server::H2).await;
    let body = format!(r#"{{"input":"{}"}}"#, "x".repeat(60_000));
    let sends = (0..12).map(|_| {
        let chunks: Vec<Result<Frame<Bytes>, Infallible>> = body
            .as_bytes()
            .chunks(4096)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        let req = Request::builder()
            .method("POST")
            .uri("https://api.openai.com/v1/embeddings")
            .body(StreamBody::new(futures_stream(chunks)).boxed())
            .unwrap();
        send(&lab.client, req)
    });
    let all = tokio::time::timeout(Duration::from_secs(30), futures_util::future::join_all(sends))
        .await
        .expect("no stream waits forever");
    let codes: Vec<u16> = all.iter().map(|r| r.0).collect();
    assert!(codes.iter().all(|c| *c == 200 || *c == 503), "{codes:?}");
    assert!(codes.contains(&200), "{codes:?}");
}

#[tokio::test]
async fn limits_are_advertised_and_extended_connect_is_not() {
    let (ours, _theirs) = duplex(1 << 16);
    let upstream = Upstream::h2(ours);
    let (client_end, proxy_end) = duplex(1 << 16);
    let sink: Arc<dyn RecordSink> = Arc::new(|_: RequestRecord| {});
    let task = tokio::spawn(async move {
        let up = upstream.await.ok();
        h2::serve(proxy_end, up, Arc::new(session()), sink).await
    });
    let (mut rd, mut wr) = tokio::io::split(client_end);
    wr.write_all(&preface()).await.unwrap();
    // The engine's first frame is its SETTINGS.
    let mut head = [0u8; 9];
    rd.read_exact(&mut head).await.unwrap();
    assert_eq!(head[3], 0x4, "SETTINGS");
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    rd.read_exact(&mut payload).await.unwrap();
    let settings: Vec<(u16, u32)> = payload
        .chunks_exact(6)
        .map(|c| (u16::from_be_bytes([c[0], c[1]]), u32::from_be_bytes([c[2], c[3], c[4], c[5]])))
        .collect();
    let get = |id: u16| settings.iter().find(|(i, _)| *i == id).map(|(_, v)| *v);
    assert_eq!(get(0x3), Some(h2::MAX_CONCURRENT_STREAMS), "{settings:?}");
    assert_eq!(get(0x6), Some(h2::MAX_HEADER_LIST));
    assert_eq!(get(0x4), Some(h2::STREAM_WINDOW));
    assert_eq!(get(0x8), None, "no extended CONNECT");
    drop(wr);
    drop(rd);
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
}

/// An HTTP/2 frame: 9-byte header and payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK for `GET https://api.openai.com/`: indexed :method GET, :scheme https, :path /, then
/// :authority as a literal with an indexed name.
fn get_headers() -> Vec<u8> {
    let mut h = vec![0x82, 0x87, 0x84, 0x41, 14];
    h.extend_from_slice(b"api.openai.com");
    h
}

/// Runs a raw client script against the engine (HTTP/2 upstream); returns how the engine's
/// connection ended, the bytes it sent back, and how many requests reached the server.
async fn raw_client(script: Vec<u8>) -> (Result<(), H2Error>, usize, usize) {
    raw_client_bursts(vec![script], Duration::ZERO).await
}

/// [`raw_client`] with a pause between bursts.
async fn raw_client_bursts(
    bursts: Vec<Vec<u8>>,
    pause: Duration,
) -> (Result<(), H2Error>, usize, usize) {
    let log: Log = Arc::default();
    let upstream = Upstream::h2(h2_origin(&log)).await.unwrap();
    let sink: Arc<dyn RecordSink> = Arc::new(|_: RequestRecord| {});
    let (client_end, proxy_end) = duplex(1 << 16);
    let task = tokio::spawn(h2::serve(proxy_end, Some(upstream), Arc::new(session()), sink));
    let (mut rd, mut wr) = tokio::io::split(client_end);
    let reader = tokio::spawn(async move {
        let mut n = 0;
        let mut buf = vec![0u8; 65536];
        while let Ok(Ok(k)) = tokio::time::timeout(Duration::from_secs(5), rd.read(&mut buf)).await
        {
            if k == 0 {
                break;
            }
            n += k;
        }
        n
    });
    // Written in pieces; the engine may close the connection before the end.
    'bursts: for script in bursts {
        for chunk in script.chunks(16 * 1024) {
            if wr.write_all(chunk).await.is_err() {
                break 'bursts;
            }
        }
        tokio::time::sleep(pause).await;
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the engine ends the connection")
        .unwrap();
    drop(wr);
    let read = reader.await.unwrap();
    let reached = log.lock().unwrap().len();
    (ended, read, reached)
}

fn preface() -> Vec<u8> {
    let mut s = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    s.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    s
}

#[tokio::test]
async fn a_rapid_reset_client_is_cut_off() {
    let mut script = preface();
    // 5,000 streams, each opened (END_STREAM) and at once reset (CANCEL).
    for i in 0..5000u32 {
        let id = 2 * i + 1;
        script.extend(frame(0x1, 0x5, id, &get_headers())); // HEADERS, END_STREAM|END_HEADERS
        script.extend(frame(0x3, 0, id, &8u32.to_be_bytes())); // RST_STREAM CANCEL
    }
    let (ended, _, reached) = raw_client(script).await;
    eprintln!("rapid reset: {ended:?}, {reached} reached the server");
    assert!(ended.is_err(), "the connection was closed as abusive: {ended:?}");
    // Each stream that reached the server was one the engine had accepted: bounded by the
    // cancellation limit and the stream limit, not by the 5,000 the client sent.
    assert!(reached < 400, "{reached} requests reached the server");
}

#[tokio::test]
async fn a_client_cancelling_accepted_streams_is_cut_off() {
    // Batches of 40 slow requests, accepted and sent upstream, then all cancelled.
    let slow = {
        let mut h = vec![0x82, 0x87, 0x44, 5];
        h.extend_from_slice(b"/slow");
        h.extend_from_slice(&[0x41, 14]);
        h.extend_from_slice(b"api.openai.com");
        h
    };
    let mut bursts = vec![preface()];
    for b in 0..50u32 {
        let ids: Vec<u32> = (0..40).map(|i| 2 * (b * 40 + i) + 1).collect();
        let opens: Vec<u8> = ids.iter().flat_map(|id| frame(0x1, 0x5, *id, &slow)).collect();
        let resets: Vec<u8> =
            ids.iter().flat_map(|id| frame(0x3, 0, *id, &8u32.to_be_bytes())).collect();
        bursts.push(opens);
        bursts.push(resets);
    }
    let (ended, _, reached) = raw_client_bursts(bursts, Duration::from_millis(5)).await;
    assert!(matches!(ended, Err(H2Error::RapidReset)), "{ended:?}");
    assert!(reached <= (h2::MAX_CANCELLED + 80) as usize, "{reached} requests reached the server");
}

#[tokio::test]
async fn a_continuation_flood_ends_at_the_header_list_limit() {
    let mut script = preface();
    // HEADERS without END_HEADERS, then CONTINUATION frames of literal headers, forever.
    script.extend(frame(0x1, 0x1, 1, &get_headers()));
    let mut lit = Vec::new();
    for i in 0..400u32 {
        // Literal header without indexing, new name: 0x00, name, value.
        let name = format!("x-flood-{i}");
        lit.push(0x00);
        lit.push(name.len() as u8);
        lit.extend_from_slice(name.as_bytes());
        lit.push(100);
        lit.extend(std::iter::repeat_n(b'a', 100));
    }
    for _ in 0..200 {
        script.extend(frame(0x9, 0, 1, &lit[..16_000]));
    }
    let (ended, _, reached) = raw_client(script).await;
    assert!(ended.is_err(), "{ended:?}");
    assert_eq!(reached, 0);
}

/// A request body trickled a byte every 3 s over HTTP/2 runs out of time (30 s, then 500
/// bytes/s): the stream is answered 408, nothing reaches the server, the record says why.
#[tokio::test(start_paused = true)]
async fn a_trickled_body_runs_out_of_time() {
    let lab = start(session(), Server::H2).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let req = Request::builder()
        .method("POST")
        .uri("https://api.openai.com/v1/chat/completions")
        .header("content-type", "application/json")
        .body(StreamBody::new(stream).boxed())
        .unwrap();
    let c = lab.client.clone();
    let sending = tokio::spawn(async move { send(&c, req).await });
    let started = tokio::time::Instant::now();
    for _ in 0..100 {
        if sending.is_finished() || tx.send(Bytes::from_static(b"x")).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let waited = started.elapsed();
    let (status, _, body, _) = sending.await.unwrap();
    assert_eq!(status, 408, "{body}");
    assert!((30..40).contains(&waited.as_secs()), "answered after {waited:?}");
    let recs = records(&lab.records, 1).await;
    assert_eq!(recs[0].code, Some("body_timeout"));
    assert!(lab.log.lock().unwrap().is_empty(), "nothing reached the server");
}

/// Key brokering over HTTP/2: the client's placeholder is replaced by the brokered key (sent
/// never-indexed), and a credential in the request's trailers does not go up beside it.
#[tokio::test]
async fn a_brokered_key_replaces_the_credential_and_trailers_lose_theirs() {
    let mut s = session();
    s.headers.broker =
        Some(sluice_rules::BrokerPolicy { key: "prod".into(), swap_real_keys: false });
    s.access = sluice_intercept::access::Access::with_keys(sluice_intercept::broker::KeyRing::new(
        1,
        vec![sluice_link::BrokerKey {
            name: "prod".into(),
            secret: sluice_link::Secret::new("sk-proj-H2BROKEREDKEYH2BROKERED".into()),
        }],
        Vec::new(),
    ));
    let lab = start(s, Server::H2).await;
    let mut t = HeaderMap::new();
    t.insert("authorization", HeaderValue::from_static("Bearer sk-proj-SMUGGLEDSMUGGLEDSMUGGLED"));
    t.insert("x-other", HeaderValue::from_static("kept"));
    let frames =
        vec![Ok(Frame::data(Bytes::from_static(CLEAN.as_bytes()))), Ok(Frame::trailers(t))];
    let req = Request::builder()
        .method("POST")
        .uri("https://api.openai.com/v1/chat/completions")
        .header("content-type", "application/json")
        .header("authorization", "Bearer placeholder")
        .body(StreamBody::new(futures_stream(frames)).boxed())
        .unwrap();
    let (status, _, _, _) = send(&lab.client, req).await;
    assert_eq!(status, 200);
    let seen = lab.log.lock().unwrap()[0].clone();
    assert_eq!(
        seen.headers.get("authorization").unwrap(),
        "Bearer sk-proj-H2BROKEREDKEYH2BROKERED"
    );
    assert_eq!(seen.headers.get_all("authorization").iter().count(), 1);
    let trailers = seen.trailers.expect("request trailers");
    assert!(trailers.get("authorization").is_none(), "{trailers:?}");
    assert_eq!(trailers.get("x-other").unwrap(), "kept");
    let rec = records(&lab.records, 1).await;
    assert_eq!(rec[0].broker_key.as_deref(), Some("prod"));
}
