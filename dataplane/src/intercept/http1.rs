//! HTTP/1.1 between the decrypted client and the upstream server: request heads checked
//! strictly ([`crate::http::head`]), bodies framed by Content-Length or chunked and buffered up
//! to the inspect limit, header policy applied, then forwarded; responses streamed back as
//! they arrive (each read is written and flushed at once: server-sent events are never held).
//! Keep-alive and pipelined requests, `Expect: 100-continue`, HEAD / 204 / 304 and WebSocket
//! upgrades (relayed both ways after the 101).
//!
//! Generic over the two streams, so it is tested over in-memory pipes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use sluice_rules::HeaderPolicy;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use sluice_dlp::{DetectorSet, Scanner};

use super::block::{self, Refusal};
pub use super::dlp::Dlp;
use super::dlp::{DlpVerdict, run_dlp};
use crate::http::chunked::ChunkedDecoder;
use crate::http::head::{self, Framing, HeadError, RequestHead, ResponseHead};
use crate::record::RequestRecord;

/// How long a kept-alive client may stay silent between requests, or within a body.
const CLIENT_IDLE: Duration = Duration::from_secs(120);
/// How long a request head may take from its first byte to its end (slowloris).
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the server may take to start its response (model calls can be slow).
const UPSTREAM_HEAD: Duration = Duration::from_secs(600);
/// Read size.
const READ: usize = 16 * 1024;

/// Header names the engine injects.
pub const WORKSPACE_HEADER: &str = "chatgpt-allowed-workspace-id";
/// See [`WORKSPACE_HEADER`].
pub const ORGS_HEADER: &str = "openai-allowed-organization-ids";

/// What every exchange of one connection shares.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// SNI of the connection (the Host must match it).
    pub sni: String,
    /// Client address.
    pub client: SocketAddr,
    /// Original destination.
    pub original_dst: SocketAddr,
    /// Identity name.
    pub identity: String,
    /// Feed user.
    pub user: Option<String>,
    /// Category of the SNI.
    pub category: Option<String>,
    /// Rule that decided.
    pub rule: Option<String>,
    /// Header policy of the rule.
    pub headers: HeaderPolicy,
    /// Largest request body buffered for inspection.
    pub max_body: u64,
    /// `on_inspect_failure = "allow"`: a body over the limit is forwarded uninspected.
    pub fail_open: bool,
    /// Every request of the connection is refused with this (block rule, invalid upstream
    /// certificate, unreachable upstream).
    pub refuse: Option<Refusal>,
    /// The rule's DLP profile, if any.
    pub dlp: Option<Dlp>,
    /// Credentials in responses are masked with this scanner and set (`mask_responses`).
    pub mask: Option<(std::sync::Arc<Scanner>, DetectorSet)>,
}

/// Why an exchange ended the connection early (the client was answered when it could be).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// A socket error.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A request head refused (answered 400).
    #[error("request refused: {0}")]
    Request(HeadError),
    /// A response head or body the engine cannot frame (answered 502 when possible).
    #[error("bad response from upstream: {0}")]
    Response(String),
    /// The peer stopped mid-message.
    #[error("connection closed mid-message")]
    Truncated,
    /// Idle or slow past the limits.
    #[error("timed out")]
    Timeout,
}

/// Serves the client until it closes, a response ends the connection, or a refusal is sent.
/// `upstream` is `None` when every request is refused (`ex.refuse` says why). Each request
/// yields one record through `emit`.
pub async fn serve<C, U>(
    client: &mut C,
    upstream: Option<&mut U>,
    ex: &Exchange,
    emit: &(dyn Fn(RequestRecord) + Send + Sync),
) -> Result<(), ProxyError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    serve_keeping(client, upstream, ex, emit).await.map(|_| ())
}

/// [`serve`], saying whether the upstream connection was left between two messages, every
/// response read to its end and nothing more sent: `Ok(true)` when it may carry another
/// client's request (the interception engine keeps it for the same client and server).
pub async fn serve_keeping<C, U>(
    client: &mut C,
    upstream: Option<&mut U>,
    ex: &Exchange,
    emit: &(dyn Fn(RequestRecord) + Send + Sync),
) -> Result<bool, ProxyError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut ubuf: Vec<u8> = Vec::with_capacity(READ);
    // Whether the upstream is between messages (nothing written to it yet counts; a failed
    // write or read returns an error, which is never kept).
    let mut clean = true;
    exchanges(client, upstream, ex, emit, &mut ubuf, &mut clean).await?;
    Ok(clean && ubuf.is_empty())
}

/// The exchanges of [`serve_keeping`], noting in `clean` whether the upstream is left between
/// two messages (`ubuf`: bytes read from it and not yet relayed).
async fn exchanges<C, U>(
    client: &mut C,
    mut upstream: Option<&mut U>,
    ex: &Exchange,
    emit: &(dyn Fn(RequestRecord) + Send + Sync),
    ubuf: &mut Vec<u8>,
    clean: &mut bool,
) -> Result<(), ProxyError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut cbuf: Vec<u8> = Vec::with_capacity(READ);
    loop {
        let head = match read_head(client, &mut cbuf, CLIENT_IDLE, head::parse_request).await {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(()), // closed between requests
            Err(ReadHeadError::Head(e)) => {
                let r = Refusal {
                    status: 400,
                    code: if matches!(e, HeadError::Smuggling(_)) {
                        "request_smuggling"
                    } else {
                        "bad_request"
                    },
                    message: e.to_string(),
                    rule: None,
                };
                let mut rec = base_record(ex, None);
                refuse(client, &mut rec, &r, false).await?;
                emit(rec);
                return Err(ProxyError::Request(e));
            }
            Err(ReadHeadError::Io(e)) => return Err(e),
        };
        cbuf.drain(..head.len);
        let started = Instant::now();
        let mut rec = base_record(ex, Some(&head));
        let html = block::wants_html(head.header("accept"));
        if let Some(r) = &ex.refuse {
            // Drain the body so the client can read the answer, then refuse.
            let _ = read_body(client, &mut cbuf, &head, ex.max_body, false).await;
            refuse(client, &mut rec, r, html).await?;
            emit(rec);
            return Ok(());
        }
        if !head.host_matches(&ex.sni) {
            let _ = read_body(client, &mut cbuf, &head, ex.max_body, false).await;
            let r = Refusal::forbidden(
                "domain_fronting",
                format!("the Host header does not name the TLS server name {}", ex.sni),
                ex.rule.as_deref(),
            );
            refuse(client, &mut rec, &r, html).await?;
            emit(rec);
            return Ok(());
        }
        let Some(up) = upstream.as_deref_mut() else {
            return Err(ProxyError::Response("no upstream connection".into()));
        };
        if head.websocket {
            *clean = false;
            return websocket(client, up, &mut cbuf, ubuf, &head, ex, rec, started, emit).await;
        }
        if head.expect_continue && head.framing != Framing::Empty {
            client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
            client.flush().await?;
        }
        let body = match read_body(client, &mut cbuf, &head, ex.max_body, ex.fail_open).await {
            Err(ProxyError::Request(e)) => {
                let r = Refusal {
                    status: 400,
                    code: "request_smuggling",
                    message: e.to_string(),
                    rule: None,
                };
                refuse(client, &mut rec, &r, html).await?;
                emit(rec);
                return Err(ProxyError::Request(e));
            }
            Err(e) => return Err(e),
            Ok(Body::Whole(b)) => b,
            Ok(Body::TooLarge) => {
                let r = Refusal {
                    status: 413,
                    code: "inspection_limit",
                    message: format!(
                        "the request body is larger than the inspection limit ({} bytes)",
                        ex.max_body
                    ),
                    rule: ex.rule.clone(),
                };
                refuse(client, &mut rec, &r, html).await?;
                emit(rec);
                return Ok(());
            }
            Ok(Body::Streamed) => {
                // Over the limit with fail-open: forwarded uninspected as it arrives.
                rec.reason = Some("body over the inspection limit: forwarded uninspected".into());
                stream_request(client, up, &mut cbuf, &head, ex, &mut rec).await?;
                let keep = relay_response(client, up, ubuf, &head, ex, &mut rec, started).await?;
                *clean = keep && head.minor == 1;
                emit(rec);
                if !keep {
                    return Ok(());
                }
                continue;
            }
        };
        rec.bytes_out = body.len() as u64;
        rec.model = model_of(&head, &body);
        if let Some(r) = check_policy(&head, rec.model.as_deref(), ex) {
            refuse(client, &mut rec, &r, html).await?;
            emit(rec);
            return Ok(());
        }
        let (body, decoded) = match run_dlp(&head, &body, ex, &mut rec) {
            DlpVerdict::Refuse(r) => {
                refuse(client, &mut rec, &r, html).await?;
                emit(rec);
                return Ok(());
            }
            DlpVerdict::Forward(Some(redacted)) => (redacted, true),
            DlpVerdict::Forward(None) => (body, false),
        };
        let mut out = forward_head(&head, ex, &mut rec, Some(body.len()), decoded);
        out.extend_from_slice(&body);
        up.write_all(&out).await?;
        up.flush().await?;
        let keep = relay_response(client, up, ubuf, &head, ex, &mut rec, started).await?;
        // Kept only after an HTTP/1.1 exchange: a server may close after answering 1.0.
        *clean = keep && head.minor == 1;
        emit(rec);
        if !keep || !head.keep_alive {
            return Ok(());
        }
    }
}

enum ReadHeadError {
    Head(HeadError),
    Io(ProxyError),
}

/// Reads until `parse` returns a head. `Ok(None)`: the peer closed with nothing pending.
async fn read_head<R, T>(
    r: &mut R,
    buf: &mut Vec<u8>,
    idle: Duration,
    parse: impl Fn(&[u8]) -> Result<Option<T>, HeadError>,
) -> Result<Option<T>, ReadHeadError>
where
    R: AsyncRead + Unpin,
{
    // Between messages the idle limit applies; once a head has begun, it must be whole
    // within HEAD_TIMEOUT however slowly its bytes trickle in.
    let mut head_deadline = None;
    loop {
        if !buf.is_empty() {
            match parse(buf) {
                Ok(Some(h)) => return Ok(Some(h)),
                Ok(None) => {}
                Err(e) => return Err(ReadHeadError::Head(e)),
            }
        }
        let deadline = match (buf.is_empty(), head_deadline) {
            (true, _) => tokio::time::Instant::now() + idle,
            (false, Some(d)) => d,
            (false, None) => {
                let d = tokio::time::Instant::now() + HEAD_TIMEOUT.min(idle);
                head_deadline = Some(d);
                d
            }
        };
        buf.reserve(READ);
        let n = match tokio::time::timeout_at(deadline, r.read_buf(buf)).await {
            Err(_) => return Err(ReadHeadError::Io(ProxyError::Timeout)),
            Ok(Err(e)) => return Err(ReadHeadError::Io(e.into())),
            Ok(Ok(n)) => n,
        };
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(ReadHeadError::Io(ProxyError::Truncated))
            };
        }
    }
}

enum Body {
    Whole(Vec<u8>),
    TooLarge,
    Streamed,
}

/// Reads the request body (de-chunked) into memory, up to `max`.
async fn read_body<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    head: &RequestHead,
    max: u64,
    stream_if_large: bool,
) -> Result<Body, ProxyError> {
    match head.framing {
        Framing::Empty | Framing::UntilClose => Ok(Body::Whole(Vec::new())),
        Framing::Length(n) => {
            if n > max {
                return Ok(if stream_if_large { Body::Streamed } else { Body::TooLarge });
            }
            let n = n as usize;
            while buf.len() < n {
                buf.reserve(READ);
                if read_some(r, buf).await? == 0 {
                    return Err(ProxyError::Truncated);
                }
            }
            Ok(Body::Whole(buf.drain(..n).collect()))
        }
        Framing::Chunked => {
            let mut dec = ChunkedDecoder::new();
            let mut body = Vec::new();
            loop {
                let p = dec
                    .feed(buf, &mut body)
                    .map_err(|e| ProxyError::Request(HeadError::Smuggling(chunk_msg(e))))?;
                buf.drain(..p.consumed);
                if p.done {
                    return Ok(Body::Whole(body));
                }
                if body.len() as u64 > max {
                    // Cannot un-read what was decoded: over the limit is refused.
                    return Ok(Body::TooLarge);
                }
                if read_some(r, buf).await? == 0 {
                    return Err(ProxyError::Truncated);
                }
            }
        }
    }
}

fn chunk_msg(e: crate::http::chunked::ChunkError) -> &'static str {
    match e {
        crate::http::chunked::ChunkError::BadSize => "bad chunk size",
        crate::http::chunked::ChunkError::BadLineEnding => "bad line ending in a chunked body",
        _ => "chunked framing too long",
    }
}

/// Reads more into `buf`, waiting at most `idle`; `Ok(0)` at the end of the stream.
async fn read_more<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    idle: Duration,
) -> Result<usize, ProxyError> {
    buf.reserve(READ);
    match tokio::time::timeout(idle, r.read_buf(buf)).await {
        Err(_) => Err(ProxyError::Timeout),
        Ok(r) => Ok(r?),
    }
}

/// A client read (body bytes, within the idle limit).
async fn read_some<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<usize, ProxyError> {
    read_more(r, buf, CLIENT_IDLE).await
}

/// Forwards a Content-Length body over the limit as it arrives (fail-open).
async fn stream_request<C, U>(
    client: &mut C,
    up: &mut U,
    cbuf: &mut Vec<u8>,
    head: &RequestHead,
    ex: &Exchange,
    rec: &mut RequestRecord,
) -> Result<(), ProxyError>
where
    C: AsyncRead + Unpin,
    U: AsyncWrite + Unpin,
{
    let Framing::Length(n) = head.framing else { return Ok(()) };
    let out = forward_head(head, ex, rec, usize::try_from(n).ok(), false);
    up.write_all(&out).await?;
    let mut left = n;
    while left > 0 {
        if cbuf.is_empty() && read_some(client, cbuf).await? == 0 {
            return Err(ProxyError::Truncated);
        }
        let take = cbuf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        up.write_all(&cbuf[..take]).await?;
        cbuf.drain(..take);
        left -= take as u64;
    }
    rec.bytes_out = n;
    up.flush().await?;
    Ok(())
}

/// The request head as forwarded: framing normalised to Content-Length (the body was
/// de-chunked), `Expect` answered here, client copies of injected headers dropped, the rule's
/// headers added.
fn forward_head(
    head: &RequestHead,
    ex: &Exchange,
    rec: &mut RequestRecord,
    body_len: Option<usize>,
    decoded: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(head.len + 128);
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.target.as_bytes());
    out.extend_from_slice(if head.minor == 0 { b" HTTP/1.0\r\n" } else { b" HTTP/1.1\r\n" });
    // Hop-by-hop headers are the client's connection's, not the upstream's (RFC 9110 7.6.1):
    // a client closing after its request does not close the upstream connection, which may
    // then carry another request. An upgrade keeps them: its connection becomes a tunnel.
    // HTTP/1.0 requests go up as they came (as 1.0, whose keep-alive is a Connection token).
    let strip = !head.websocket && head.minor == 1;
    let named: Vec<&[u8]> = match head.header("connection") {
        Some(v) if strip => v.split(|b| *b == b',').map(<[u8]>::trim_ascii).collect(),
        _ => Vec::new(),
    };
    let hop = |name: &str| {
        strip
            && (matches!(name, "connection" | "keep-alive" | "proxy-connection")
                || named.iter().any(|t| t.eq_ignore_ascii_case(name.as_bytes())))
    };
    for (name, value) in &head.headers {
        if matches!(
            name.as_str(),
            "content-length" | "transfer-encoding" | "expect" | WORKSPACE_HEADER | ORGS_HEADER
        ) || (decoded && name == "content-encoding")
            || hop(name)
        {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    let host = head.host.as_str();
    let chatgpt =
        host == "chatgpt.com" || host.ends_with(".chatgpt.com") || host == "chat.openai.com";
    let mut inject = |name: &'static str, value: &str| {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
        rec.injected.push(name);
    };
    if let (true, Some(v)) = (chatgpt, &ex.headers.chatgpt_workspace_header) {
        inject(WORKSPACE_HEADER, v);
    }
    if let (true, Some(v)) = (host == "api.openai.com", &ex.headers.openai_allowed_orgs_header) {
        inject(ORGS_HEADER, v);
    }
    let has_body = head.framing != Framing::Empty || body_len.is_some_and(|n| n > 0);
    if let (true, Some(n)) = (has_body, body_len) {
        out.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Organization, project and model constraints of the rule.
fn check_policy(head: &RequestHead, model: Option<&str>, ex: &Exchange) -> Option<Refusal> {
    let h = &ex.headers;
    let text = |n: &str| head.header(n).and_then(|v| std::str::from_utf8(v).ok()).map(str::trim);
    let rule = ex.rule.as_deref();
    if let Some(org) = text("openai-organization")
        && !h.allowed_organizations.is_empty()
        && !h.allowed_organizations.iter().any(|a| a == org)
    {
        return Some(Refusal::forbidden(
            "organization_not_allowed",
            "this OpenAI organization is not allowed",
            rule,
        ));
    }
    if let Some(project) = text("openai-project")
        && !h.allowed_projects.is_empty()
        && !h.allowed_projects.iter().any(|a| a == project)
    {
        return Some(Refusal::forbidden(
            "project_not_allowed",
            "this OpenAI project is not allowed",
            rule,
        ));
    }
    if let Some(m) = model
        && !h.allowed_models.is_empty()
        && !h.allowed_models.iter().any(|a| a == m)
    {
        return Some(Refusal::forbidden(
            "model_not_allowed",
            format!("model {m} is not allowed"),
            rule,
        ));
    }
    None
}

/// `model` of a JSON body.
fn model_of(head: &RequestHead, body: &[u8]) -> Option<String> {
    let json = head
        .header("content-type")
        .is_some_and(|c| c.windows(4).any(|w| w.eq_ignore_ascii_case(b"json")))
        || body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if !json {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct M {
        model: Option<String>,
    }
    let m: M = serde_json::from_slice(body).ok()?;
    m.model.filter(|m| m.len() <= 200)
}

/// Relays the response (1xx heads first, then the final head and body, streamed). Returns
/// whether the connection may carry another request.
async fn relay_response<C, U>(
    client: &mut C,
    up: &mut U,
    ubuf: &mut Vec<u8>,
    req: &RequestHead,
    ex: &Exchange,
    rec: &mut RequestRecord,
    started: Instant,
) -> Result<bool, ProxyError>
where
    C: AsyncWrite + Unpin,
    U: AsyncRead + Unpin,
{
    let resp = loop {
        let method = req.method.clone();
        let parsed = read_head(up, ubuf, UPSTREAM_HEAD, |b| head::parse_response(b, &method)).await;
        let resp: ResponseHead = match parsed {
            Ok(Some(r)) => r,
            // Closed or failed before its answer (a reused connection the server had just
            // closed, a crash, a timeout): the client gets a 502 saying so, not a silent close.
            Ok(None) | Err(ReadHeadError::Io(_)) => {
                let why = match parsed {
                    Err(ReadHeadError::Io(e)) => {
                        format!("the server failed before responding: {e}")
                    }
                    _ => "the server closed the connection before responding".into(),
                };
                let r = Refusal { status: 502, code: "upstream_closed", message: why, rule: None };
                refuse(client, rec, &r, false).await?;
                return Ok(false);
            }
            Err(ReadHeadError::Head(e)) => {
                let r = Refusal {
                    status: 502,
                    code: "bad_upstream_response",
                    message: format!("the server's response was refused: {e}"),
                    rule: None,
                };
                refuse(client, rec, &r, false).await?;
                return Ok(false);
            }
        };
        let last = !(100..200).contains(&resp.status) || resp.status == 101;
        if last && let Some(plan) = super::dlp::mask_plan(ex, &resp) {
            let head_bytes: Vec<u8> = ubuf.drain(..resp.len).collect();
            rec.status = Some(resp.status);
            let keep =
                super::dlp::relay_masked(client, up, ubuf, &head_bytes, &resp, plan, ex, rec)
                    .await?;
            rec.latency_ms = started.elapsed().as_millis() as u64;
            return Ok(keep);
        }
        if last && !req.keep_alive && resp.keep_alive {
            // The client asked to close, which the upstream did not hear: say it here.
            client.write_all(&closing_head(&ubuf[..resp.len])).await?;
        } else {
            client.write_all(&ubuf[..resp.len]).await?;
        }
        ubuf.drain(..resp.len);
        if (100..200).contains(&resp.status) && resp.status != 101 {
            client.flush().await?;
            continue;
        }
        break resp;
    };
    rec.status = Some(resp.status);
    match resp.framing {
        Framing::Empty => {}
        Framing::Length(n) => {
            let mut left = n;
            while left > 0 {
                if ubuf.is_empty() && read_upstream(up, ubuf).await? == 0 {
                    return Err(ProxyError::Truncated);
                }
                let take = ubuf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                client.write_all(&ubuf[..take]).await?;
                client.flush().await?;
                ubuf.drain(..take);
                left -= take as u64;
            }
            rec.bytes_in = n;
        }
        Framing::Chunked => {
            let mut dec = ChunkedDecoder::new();
            let mut scratch = Vec::new();
            loop {
                let p = dec
                    .feed(ubuf, &mut scratch)
                    .map_err(|e| ProxyError::Response(e.to_string()))?;
                scratch.clear();
                client.write_all(&ubuf[..p.consumed]).await?;
                client.flush().await?;
                ubuf.drain(..p.consumed);
                if p.done {
                    break;
                }
                if read_upstream(up, ubuf).await? == 0 {
                    return Err(ProxyError::Truncated);
                }
            }
            rec.bytes_in = dec.decoded;
        }
        Framing::UntilClose => {
            let mut total = ubuf.len() as u64;
            client.write_all(ubuf).await?;
            ubuf.clear();
            loop {
                client.flush().await?;
                if read_upstream(up, ubuf).await? == 0 {
                    break;
                }
                total += ubuf.len() as u64;
                client.write_all(ubuf).await?;
                ubuf.clear();
            }
            rec.bytes_in = total;
        }
    }
    client.flush().await?;
    rec.latency_ms = started.elapsed().as_millis() as u64;
    Ok(resp.keep_alive)
}

/// A response head with `connection: close` added before its blank line.
fn closing_head(head: &[u8]) -> Vec<u8> {
    let body_at = if head.ends_with(b"\r\n\r\n") { head.len() - 2 } else { head.len() - 1 };
    let mut out = Vec::with_capacity(head.len() + 20);
    out.extend_from_slice(&head[..body_at]);
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out
}

/// An upstream read (the server may take long between bytes of an answer).
pub(super) async fn read_upstream<U: AsyncRead + Unpin>(
    up: &mut U,
    buf: &mut Vec<u8>,
) -> Result<usize, ProxyError> {
    read_more(up, buf, UPSTREAM_HEAD).await
}

/// A WebSocket upgrade: the head goes up as is; after a 101 both directions are relayed.
#[allow(clippy::too_many_arguments)]
async fn websocket<C, U>(
    client: &mut C,
    up: &mut U,
    cbuf: &mut Vec<u8>,
    ubuf: &mut Vec<u8>,
    head: &RequestHead,
    ex: &Exchange,
    mut rec: RequestRecord,
    started: Instant,
    emit: &(dyn Fn(RequestRecord) + Send + Sync),
) -> Result<(), ProxyError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let out = forward_head(head, ex, &mut rec, None, false);
    up.write_all(&out).await?;
    up.flush().await?;
    let keep = relay_response(client, up, ubuf, head, ex, &mut rec, started).await?;
    let upgraded = rec.status == Some(101);
    emit(rec);
    if !upgraded {
        // Refused upgrade: the connection ends with that response.
        let _ = keep;
        return Ok(());
    }
    if !cbuf.is_empty() {
        up.write_all(cbuf).await?;
        cbuf.clear();
    }
    if !ubuf.is_empty() {
        client.write_all(ubuf).await?;
        ubuf.clear();
    }
    client.flush().await?;
    up.flush().await?;
    tokio::io::copy_bidirectional(client, up).await?;
    Ok(())
}

/// Writes the refusal, fills the record, and shuts the client's side.
async fn refuse<C: AsyncWrite + Unpin>(
    client: &mut C,
    rec: &mut RequestRecord,
    r: &Refusal,
    html: bool,
) -> Result<(), ProxyError> {
    let id = request_id();
    client.write_all(&block::response(r, html, &id)).await?;
    client.flush().await?;
    let _ = client.shutdown().await;
    rec.status = Some(r.status);
    rec.verdict = "block";
    rec.code = Some(r.code);
    rec.reason = Some(r.message.clone());
    if rec.rule.is_none() {
        rec.rule.clone_from(&r.rule);
    }
    Ok(())
}

fn request_id() -> String {
    let mut b = [0u8; 12];
    let rng = rustls::crypto::ring::default_provider().secure_random;
    if rng.fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        b.copy_from_slice(&t.to_be_bytes()[4..]);
    }
    let mut s = String::from("req_sluice_");
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

fn base_record(ex: &Exchange, head: Option<&RequestHead>) -> RequestRecord {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let text = |n: &str| {
        head.and_then(|h| h.header(n))
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(|v| v.trim().chars().take(200).collect::<String>())
    };
    let key = text("authorization")
        .and_then(|a| {
            let (scheme, rest) = a.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim().to_owned())
        })
        .or_else(|| text("api-key"));
    RequestRecord {
        kind: "request",
        ts_ms: now,
        identity: Some(ex.identity.clone()),
        user: ex.user.clone(),
        src: ex.client.ip().to_string(),
        sport: ex.client.port(),
        dst: ex.original_dst.ip().to_string(),
        sni: Some(ex.sni.clone()),
        method: head.map(|h| h.method.clone()).unwrap_or_default(),
        path: head
            .map(|h| h.target.split(['?', '#']).next().unwrap_or("").chars().take(512).collect())
            .unwrap_or_default(),
        api_key_fp: key.filter(|k| !k.is_empty()).map(|k| key_fingerprint(&k)),
        openai_organization: text("openai-organization"),
        openai_project: text("openai-project"),
        user_agent: text("user-agent"),
        category: ex.category.clone(),
        rule: ex.rule.clone(),
        verdict: "allow",
        ..RequestRecord::default()
    }
}

/// The fingerprint of an API key: `sha256:` and the first 12 hex digits of its SHA-256.
pub fn key_fingerprint(key: &str) -> String {
    let d = Sha256::digest(key.as_bytes());
    let mut s = String::from("sha256:");
    for b in &d[..6] {
        s.push_str(&format!("{b:02x}"));
    }
    s
}
