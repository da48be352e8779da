//! HTTP/1.1 between the decrypted client and the upstream server (ARCHITECTURE.md,
//! "Interception phases"): the driver of the [`crate::phases`] for HTTP/1.x messages. Request
//! heads are checked strictly ([`crate::http::head`]), bodies framed by Content-Length or
//! chunked and buffered up to the inspect limit, then forwarded; responses stream back as they
//! arrive (each read is written and flushed at once: server-sent events are never held).
//! Keep-alive and pipelined requests, `Expect: 100-continue`, HEAD / 204 / 304 and WebSocket
//! upgrades (relayed both ways after the 101).
//!
//! Generic over the two streams, so it is tested over in-memory pipes.

mod io;
mod response;

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::block::{self, Refusal};
use crate::http::head::{self, Framing, HeadError, RequestHead};
use crate::phases::{Forward, Headers, HttpVersion, INJECTED, RequestCtx, RequestView, Session};
use crate::record::RecordSink;
use crate::ws::{self, deflate::Deflate, frame};
use io::{Body, ReadHeadError, read_body, read_head, stream_request};
use response::relay_response;

/// How long a kept-alive client may stay silent between requests, or within a body.
const CLIENT_IDLE: Duration = Duration::from_secs(120);
/// How long a request head may take from its first byte to its end (slowloris).
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the server may take to start its response (model calls can be slow).
const UPSTREAM_HEAD: Duration = Duration::from_secs(600);
/// Read size.
const READ: usize = 16 * 1024;

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
    /// A request body slower than its deadline allows ([`crate::http::deadline`]).
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    /// The client opened with the HTTP/2 connection preface (HTTP/2 by prior knowledge):
    /// the bytes read so far, for the HTTP/2 driver. Nothing was answered or recorded.
    #[error("the client speaks HTTP/2 without having negotiated it")]
    Http2Preface(Vec<u8>),
}

/// The start of the HTTP/2 connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

impl Headers for RequestHead {
    fn header(&self, name: &str) -> Option<&[u8]> {
        RequestHead::header(self, name)
    }
    fn count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(n, _)| n == name).count()
    }
    fn each(&self, f: &mut dyn FnMut(&str, &[u8])) {
        for (n, v) in &self.headers {
            f(n, v);
        }
    }
}

/// The phases' view of an HTTP/1.x request head.
fn view(head: &RequestHead) -> RequestView<'_> {
    RequestView {
        method: &head.method,
        target: &head.target,
        authority: &head.host,
        version: if head.minor == 0 { HttpVersion::Http10 } else { HttpVersion::Http11 },
        headers: head,
    }
}

/// Serves the client until it closes, a response ends the connection, or a refusal is sent.
/// `upstream` is `None` when every request is refused (`session.refuse` says why). Each
/// request yields one record into `sink`.
pub async fn serve<C, U>(
    client: &mut C,
    upstream: Option<&mut U>,
    session: &Session,
    sink: &dyn RecordSink,
) -> Result<(), ProxyError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    serve_keeping(client, upstream, session, sink).await.map(|_| ())
}

/// [`serve`], saying whether the upstream connection was left between two messages, every
/// response read to its end and nothing more sent: `Ok(true)` when it may carry another
/// client's request (the interception engine keeps it for the same client and server).
pub async fn serve_keeping<C, U>(
    client: &mut C,
    upstream: Option<&mut U>,
    session: &Session,
    sink: &dyn RecordSink,
) -> Result<bool, ProxyError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut ubuf: Vec<u8> = Vec::with_capacity(READ);
    // Whether the upstream is between messages (nothing written to it yet counts; a failed
    // write or read returns an error, which is never kept).
    let mut clean = true;
    let mut d = Driver { session, sink, ubuf: &mut ubuf, clean: &mut clean };
    d.exchanges(client, upstream).await?;
    Ok(clean && ubuf.is_empty())
}

/// One connection's exchanges, noting in `clean` whether the upstream is left between two
/// messages (`ubuf`: bytes read from it and not yet relayed).
struct Driver<'a> {
    session: &'a Session,
    sink: &'a dyn RecordSink,
    ubuf: &'a mut Vec<u8>,
    clean: &'a mut bool,
}

/// What a request's exchange leaves for the next one.
enum Next {
    /// Read the next request.
    Continue,
    /// The connection ends here.
    Close,
}

impl Driver<'_> {
    async fn exchanges<C, U>(
        &mut self,
        client: &mut C,
        mut upstream: Option<&mut U>,
    ) -> Result<(), ProxyError>
    where
        C: AsyncRead + AsyncWrite + Unpin,
        U: AsyncRead + AsyncWrite + Unpin,
    {
        let mut cbuf: Vec<u8> = Vec::with_capacity(READ);
        let mut first = true;
        loop {
            let head = match read_head(client, &mut cbuf, CLIENT_IDLE, head::parse_request).await {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(()), // closed between requests
                Err(ReadHeadError::Head(_)) if first && cbuf.starts_with(PREFACE) => {
                    return Err(ProxyError::Http2Preface(std::mem::take(&mut cbuf)));
                }
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
                        retry_after: None,
                    };
                    let ctx = self.session.request(None);
                    self.refuse(client, ctx, &r).await?;
                    return Err(ProxyError::Request(e));
                }
                Err(ReadHeadError::Io(e)) => return Err(e),
            };
            cbuf.drain(..head.len);
            first = false;
            match self.exchange(client, upstream.as_deref_mut(), &mut cbuf, head).await? {
                Next::Continue => {}
                Next::Close => return Ok(()),
            }
        }
    }

    /// One request and its response.
    async fn exchange<C, U>(
        &mut self,
        client: &mut C,
        upstream: Option<&mut U>,
        cbuf: &mut Vec<u8>,
        mut head: RequestHead,
    ) -> Result<Next, ProxyError>
    where
        C: AsyncRead + AsyncWrite + Unpin,
        U: AsyncRead + AsyncWrite + Unpin,
    {
        let s = self.session;
        let checked = normalise(&mut head);
        let req = view(&head);
        let mut ctx = s.request(Some(&req));
        if let Err(r) = checked.and_then(|()| s.request_filter(&req, &mut ctx)) {
            // Drain the body so the client can read the answer, then refuse.
            let _ = read_body(client, cbuf, &head, s.max_body, false).await;
            self.refuse(client, ctx, &r).await?;
            return Ok(Next::Close);
        }
        let Some(up) = upstream else {
            return Err(ProxyError::Response("no upstream connection".into()));
        };
        if head.websocket {
            *self.clean = false;
            let filtered = match s.request_body_filter(&req, Vec::new(), &mut ctx) {
                Ok(_) => hold_watching(client, cbuf, s, &mut ctx).await?,
                Err(r) => Err(r),
            };
            if let Err(r) = filtered {
                self.refuse(client, ctx, &r).await?;
                return Ok(Next::Close);
            }
            self.websocket(client, up, cbuf, &head, ctx).await?;
            return Ok(Next::Close);
        }
        if head.expect_continue && head.framing != Framing::Empty {
            client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
            client.flush().await?;
        }
        let body = match read_body(client, cbuf, &head, s.max_body, s.streams_uninspected()).await {
            Err(ProxyError::Request(e)) => {
                let r = Refusal {
                    status: 400,
                    code: "request_smuggling",
                    message: e.to_string(),
                    rule: None,
                    retry_after: None,
                };
                self.refuse(client, ctx, &r).await?;
                return Err(ProxyError::Request(e));
            }
            Err(ProxyError::BodyTimeout) => {
                self.refuse(client, ctx, &body_timeout()).await?;
                return Err(ProxyError::BodyTimeout);
            }
            Err(e) => return Err(e),
            Ok(Body::Whole(b)) => b,
            Ok(Body::TooLarge) => {
                self.refuse(client, ctx, &s.over_limit()).await?;
                return Ok(Next::Close);
            }
            Ok(Body::Streamed) => {
                // Over the limit with fail-open: forwarded uninspected as it arrives.
                ctx.rec.reason =
                    Some("body over the inspection limit: forwarded uninspected".into());
                let injected = s.upstream_request_filter(&req, &mut ctx);
                match stream_request(client, up, cbuf, &head, &injected, &mut ctx.rec).await {
                    Err(ProxyError::BodyTimeout) => {
                        // The server has part of it: that connection is not used again.
                        *self.clean = false;
                        self.refuse(client, ctx, &body_timeout()).await?;
                        return Err(ProxyError::BodyTimeout);
                    }
                    r => r?,
                }
                return self.respond(client, up, &head, ctx).await;
            }
        };
        let fwd = match s.request_body_filter(&req, body, &mut ctx) {
            Ok(f) => f,
            Err(r) => {
                self.refuse(client, ctx, &r).await?;
                return Ok(Next::Close);
            }
        };
        if let Err(r) = hold_watching(client, cbuf, s, &mut ctx).await? {
            self.refuse(client, ctx, &r).await?;
            return Ok(Next::Close);
        }
        let injected = s.upstream_request_filter(&req, &mut ctx);
        let Forward { body, decoded } = fwd;
        let mut out = forward_head(&head, &injected, Some(body.len()), decoded);
        out.extend_from_slice(&body);
        up.write_all(&out).await?;
        up.flush().await?;
        self.respond(client, up, &head, ctx).await
    }

    /// Relays the response of a forwarded request and writes its record.
    async fn respond<C, U>(
        &mut self,
        client: &mut C,
        up: &mut U,
        head: &RequestHead,
        mut ctx: RequestCtx,
    ) -> Result<Next, ProxyError>
    where
        C: AsyncWrite + Unpin,
        U: AsyncRead + Unpin,
    {
        let keep = relay_response(client, up, self.ubuf, head, self.session, &mut ctx).await?;
        // Kept only after an HTTP/1.1 exchange: a server may close after answering 1.0.
        *self.clean = keep && head.minor == 1;
        self.sink.request(self.session.logging(ctx));
        Ok(if keep && head.keep_alive { Next::Continue } else { Next::Close })
    }

    /// A WebSocket upgrade: the head goes up (extension offers the engine cannot read
    /// removed); after a 101 the messages are inspected both ways ([`crate::ws`]).
    async fn websocket<C, U>(
        &mut self,
        client: &mut C,
        up: &mut U,
        cbuf: &mut Vec<u8>,
        head: &RequestHead,
        mut ctx: RequestCtx,
    ) -> Result<(), ProxyError>
    where
        C: AsyncRead + AsyncWrite + Unpin,
        U: AsyncRead + AsyncWrite + Unpin,
    {
        let injected = self.session.upstream_request_filter(&view(head), &mut ctx);
        let out = forward_head(head, &injected, None, false);
        up.write_all(&out).await?;
        up.flush().await?;
        relay_response(client, up, self.ubuf, head, self.session, &mut ctx).await?;
        if ctx.rec.status != Some(101) {
            // Refused upgrade: the connection ends with that response.
            self.sink.request(self.session.logging(ctx));
            return Ok(());
        }
        let deflate = match Deflate::from_response(ctx.ws_extensions.as_deref()) {
            Ok(d) => d,
            Err(why) => {
                // Frames the engine cannot read are not relayed blind.
                ctx.rec.verdict = "block";
                ctx.rec.code = Some("websocket_extension");
                ctx.rec.reason = Some(format!("the server accepted {why}: closed"));
                let mut close = Vec::new();
                let reason = frame::close_payload(1010, "extension not inspectable");
                frame::write(&mut close, frame::op::CLOSE, false, &reason, None);
                client.write_all(&close).await?;
                client.flush().await?;
                self.sink.request(self.session.logging(ctx));
                return Ok(());
            }
        };
        ws::relay(client, up, cbuf, self.ubuf, self.session, deflate, ctx, self.sink).await
    }

    /// Writes the refusal, shuts the client's side, and writes the record.
    async fn refuse<C: AsyncWrite + Unpin>(
        &mut self,
        client: &mut C,
        mut ctx: RequestCtx,
        r: &Refusal,
    ) -> Result<(), ProxyError> {
        refuse(client, self.session, &mut ctx, r).await?;
        self.sink.request(self.session.logging(ctx));
        Ok(())
    }
}

/// Most bytes a client may send ahead while its request waits for approval (kept for the
/// next request; past it the client is no longer read until the decision).
const AHEAD: usize = 1 << 20;

/// [`Session::hold`], watching the client meanwhile: a client that goes away takes its request
/// off the desk (control hears `gone`), so a late approval sends nothing upstream.
async fn hold_watching<C: AsyncRead + Unpin>(
    client: &mut C,
    cbuf: &mut Vec<u8>,
    s: &Session,
    ctx: &mut RequestCtx,
) -> Result<Result<(), Refusal>, ProxyError> {
    use tokio::io::AsyncReadExt;
    if ctx.hold.is_none() {
        return Ok(s.hold(ctx).await);
    }
    let hold = s.hold(ctx);
    tokio::pin!(hold);
    let mut buf = [0u8; 4096];
    loop {
        if cbuf.len() >= AHEAD {
            return Ok(hold.await);
        }
        tokio::select! {
            r = &mut hold => return Ok(r),
            n = client.read(&mut buf) => match n {
                Ok(0) | Err(_) => return Err(ProxyError::Truncated),
                Ok(n) => cbuf.extend_from_slice(&buf[..n]),
            },
        }
    }
}

/// The answer to a request body that missed its deadline (408, recorded like any refusal).
pub(crate) fn body_timeout() -> Refusal {
    use crate::http::deadline::{BODY_WINDOW, MIN_RATE};
    Refusal {
        status: 408,
        code: "body_timeout",
        message: format!(
            "the request body did not arrive in time ({} s, then at least {MIN_RATE} bytes/s)",
            BODY_WINDOW.as_secs()
        ),
        rule: None,
        retry_after: None,
    }
}

/// Writes the refusal `r` to the client and shuts its side; fills the record.
pub(crate) async fn refuse<C: AsyncWrite + Unpin>(
    client: &mut C,
    session: &Session,
    ctx: &mut RequestCtx,
    r: &Refusal,
) -> Result<(), ProxyError> {
    let id = block::request_id();
    client.write_all(&block::response(r, ctx.html, &id)).await?;
    client.flush().await?;
    let _ = client.shutdown().await;
    session.refused(r, ctx);
    Ok(())
}

/// Headers the phases read: a request may not ask for them to be dropped on the way (as
/// hop-by-hop headers named in `Connection` are), or the server would read the request
/// differently from the one inspected (no organization, another body type).
const END_TO_END: [&str; 10] = [
    "host",
    "content-type",
    "content-encoding",
    "content-length",
    "transfer-encoding",
    "authorization",
    "api-key",
    "openai-organization",
    "openai-project",
    "accept-encoding",
];

/// Puts an HTTP/1.1 head in the one form the phases and the server read alike: an
/// absolute-form target becomes origin form when its authority names the `Host` (a server
/// must prefer the target's, RFC 9112 §3.2.2; when they differ the request is refused as
/// fronting); a `Connection` header naming an end-to-end header the phases read is refused.
fn normalise(head: &mut RequestHead) -> Result<(), Refusal> {
    let ambiguous = |message: String| Refusal {
        status: 400,
        code: "ambiguous_request",
        message,
        rule: None,
        retry_after: None,
    };
    if let Some(c) = head.header("connection") {
        for token in c.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
            if let Some(n) = END_TO_END.iter().find(|n| token.eq_ignore_ascii_case(n.as_bytes())) {
                return Err(ambiguous(format!("Connection names the end-to-end header {n}")));
            }
        }
    }
    let t = head.target.as_bytes();
    let scheme = |s: &str| t.len() >= s.len() && t[..s.len()].eq_ignore_ascii_case(s.as_bytes());
    let rest = if scheme("https://") {
        &head.target[8..]
    } else if scheme("http://") {
        &head.target[7..]
    } else {
        return Ok(());
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    if host.is_empty() || authority.contains('@') {
        return Err(ambiguous("malformed absolute-form request target".into()));
    }
    if !host.eq_ignore_ascii_case(&head.host) {
        // The target names one server and Host another: whichever a front end routes by,
        // one of them was not checked against the SNI.
        return Err(Refusal::forbidden(
            "domain_fronting",
            "the request target and the Host header name different servers",
            None,
        ));
    }
    head.target = if path.starts_with('?') { format!("/{path}") } else { path.to_owned() };
    Ok(())
}

/// The request head as forwarded: framing normalised to Content-Length (the body was
/// de-chunked), `Expect` answered here, client copies of injected headers dropped, the rule's
/// headers added.
fn forward_head(
    head: &RequestHead,
    injected: &[(&'static str, String)],
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
        if head.websocket && name == "sec-websocket-extensions" {
            // Only offers whose frames the engine can read go up.
            let offers: Vec<&[u8]> = value
                .split(|b| *b == b',')
                .map(<[u8]>::trim_ascii)
                .filter(|o| {
                    o.split(|b| *b == b';').next().map(<[u8]>::trim_ascii)
                        == Some(b"permessage-deflate".as_slice())
                })
                .collect();
            if !offers.is_empty() {
                out.extend_from_slice(b"sec-websocket-extensions: ");
                out.extend_from_slice(&offers.join(&b", "[..]));
                out.extend_from_slice(b"\r\n");
            }
            continue;
        }
        if matches!(name.as_str(), "content-length" | "transfer-encoding" | "expect")
            || INJECTED.contains(&name.as_str())
            || injected.iter().any(|(n, _)| n == name)
            || (decoded && name == "content-encoding")
            || hop(name)
        {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in injected {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let has_body = head.framing != Framing::Empty || body_len.is_some_and(|n| n > 0);
    if let (true, Some(n)) = (has_body, body_len) {
        out.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}
