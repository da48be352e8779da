//! One HTTP/2 stream: a request driving the phases ([`crate::phases`]), forwarded upstream
//! (absolute URI to an HTTP/2 server, origin form and `Host` to an HTTP/1.1 one), and its
//! response relayed frame by frame, masked when the response phase says so. A refusal answers
//! this stream alone.

use crate::http::deadline::BodyDeadline;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Body as _, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::Conn;
use super::body::{BodyError, ClientBody, Finish, UpBody};
use super::upstream::{Lent, UpstreamError};
use crate::block::{self, Refusal};
use crate::mask::{self, MaskPlan};
use crate::phases::{Forward, Headers, HttpVersion, INJECTED, RequestCtx, RequestView};

/// How long a client may stay silent within a request body.
const CLIENT_IDLE: Duration = Duration::from_secs(120);
/// How long the server may take to start its response (model calls can be slow).
const UPSTREAM_HEAD: Duration = Duration::from_secs(600);
/// How long a stream waits for its share of the connection's inspection budget.
const BUDGET_WAIT: Duration = Duration::from_secs(5);
/// How long the server may stay silent within a response body that is being masked.
const UPSTREAM_IDLE: Duration = Duration::from_secs(600);

/// Headers of one connection, never forwarded across a translation (RFC 9113 §8.2.2).
const HOP_BY_HOP: [&str; 6] =
    ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te"];

impl Headers for HeaderMap {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.get(name).map(HeaderValue::as_bytes)
    }
    fn count(&self, name: &str) -> usize {
        self.get_all(name).iter().count()
    }
    fn each(&self, f: &mut dyn FnMut(&str, &[u8])) {
        for (n, v) in self {
            f(n.as_str(), v.as_bytes());
        }
    }
}

/// Counts the stream as cancelled when hyper drops it unfinished (the client reset it).
struct Guard<'a> {
    conn: &'a Conn,
    done: bool,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if self.done {
            self.conn.completed.fetch_add(1, Ordering::Relaxed);
        } else {
            self.conn.cancelled();
        }
    }
}

/// Serves one stream.
pub(super) async fn handle(conn: Arc<Conn>, req: Request<Incoming>) -> Response<ClientBody> {
    let mut guard = Guard { conn: &conn, done: false };
    let resp = exchange(&conn, req).await;
    guard.done = true;
    resp
}

/// The authority's host: without port or brackets, lowercased.
fn host_of(authority: &str) -> String {
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, p)| {
            if p.bytes().all(|b| b.is_ascii_digit()) { h } else { authority }
        }),
    };
    host.to_ascii_lowercase()
}

/// What reading a request body gave.
enum Collected {
    /// The whole body and its trailers (the permits hold its share of the budget).
    Whole(Vec<u8>, Option<HeaderMap>, Option<OwnedSemaphorePermit>),
    /// Over the inspection limit: what was read, and the rest of the stream.
    Over(Vec<u8>, Incoming),
    /// The client reset the stream, or stalled.
    Failed(String),
    /// The body missed its deadline ([`crate::http::deadline`]).
    TooSlow,
    /// The connection's inspection budget stayed exhausted (other streams hold it).
    Busy,
}

async fn collect(conn: &Conn, mut body: Incoming, max: u64) -> Collected {
    let mut data = Vec::new();
    let mut trailers = None;
    let mut held: Option<OwnedSemaphorePermit> = None;
    let mut deadline = BodyDeadline::new(tokio::time::Instant::now().into_std());
    loop {
        let idle = tokio::time::Instant::now() + CLIENT_IDLE;
        let at = tokio::time::Instant::from_std(deadline.at());
        let frame = match tokio::time::timeout_at(at.min(idle), body.frame()).await {
            Err(_) if at <= idle => return Collected::TooSlow,
            Err(_) => return Collected::Failed("the request body stalled".into()),
            Ok(None) => return Collected::Whole(data, trailers, held),
            Ok(Some(Err(e))) => return Collected::Failed(e.to_string()),
            Ok(Some(Ok(f))) => f,
        };
        match frame.into_data() {
            Ok(d) => {
                deadline.received(d.len());
                if (data.len() + d.len()) as u64 > max {
                    data.extend_from_slice(&d);
                    return Collected::Over(data, body);
                }
                let kib = u32::try_from(d.len().div_ceil(1024)).unwrap_or(u32::MAX);
                let permit = conn.budget.clone().acquire_many_owned(kib);
                match tokio::time::timeout(BUDGET_WAIT, permit).await {
                    Ok(Ok(p)) => match held.as_mut() {
                        Some(h) => h.merge(p),
                        None => held = Some(p),
                    },
                    // Streams holding part of the budget while waiting for the rest could
                    // wait on each other forever: one gives way.
                    Ok(Err(_)) | Err(_) => return Collected::Busy,
                }
                data.extend_from_slice(&d);
            }
            Err(f) => {
                if let Ok(t) = f.into_trailers() {
                    trailers = Some(t);
                }
            }
        }
    }
}

async fn exchange(conn: &Arc<Conn>, req: Request<Incoming>) -> Response<ClientBody> {
    let s = &*conn.session;
    let (parts, body) = req.into_parts();
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| parts.headers.get(HOST).and_then(|h| h.to_str().ok()).map(str::to_owned))
        .unwrap_or_default();
    let host = host_of(&authority);
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let view = RequestView {
        method: parts.method.as_str(),
        target: &target,
        authority: &host,
        version: HttpVersion::H2,
        headers: &parts.headers,
    };
    let mut ctx = s.request(Some(&view));
    if let Err(r) = s.request_filter(&view, &mut ctx) {
        return refuse(conn, ctx, &r).map(|b| b.holding(body));
    }
    let Some(up) = conn.upstream.clone() else {
        let r = Refusal {
            status: 502,
            code: "upstream_unreachable",
            message: "no upstream connection".into(),
            rule: None,
            retry_after: None,
        };
        return refuse(conn, ctx, &r).map(|b| b.holding(body));
    };
    let (body, decoded, _held) = match collect(conn, body, s.max_body).await {
        Collected::Failed(why) => {
            let r = Refusal {
                status: 400,
                code: "bad_request",
                message: format!("the request body did not arrive: {why}"),
                rule: None,
                retry_after: None,
            };
            return refuse(conn, ctx, &r);
        }
        Collected::TooSlow => return refuse(conn, ctx, &crate::h1::body_timeout()),
        Collected::Over(first, rest) if s.streams_uninspected() => {
            ctx.rec.reason = Some("body over the inspection limit: forwarded uninspected".into());
            ctx.rec.bytes_out = rest.size_hint().exact().map_or(0, |n| n + first.len() as u64);
            (UpBody::Streamed { first: Some(Bytes::from(first)), rest }, false, None)
        }
        Collected::Over(_, rest) => {
            return refuse(conn, ctx, &s.over_limit()).map(|b| b.holding(rest));
        }
        Collected::Busy => {
            let r = Refusal {
                status: 503,
                code: "inspection_busy",
                message: "too many large request bodies on this connection at once".into(),
                rule: s.rule.clone(),
                retry_after: None,
            };
            return refuse(conn, ctx, &r);
        }
        Collected::Whole(data, mut trailers, held) => {
            if s.headers.broker.is_some()
                && let Some(t) = trailers.as_mut()
            {
                // Credentials in trailers never go up beside a brokered key.
                for name in ["authorization", "api-key", "x-api-key", "ocp-apim-subscription-key"] {
                    t.remove(name);
                }
            }
            match s.request_body_filter(&view, data, &mut ctx) {
                Ok(Forward { body, decoded }) => (UpBody::whole(body, trailers), decoded, held),
                Err(r) => return refuse(conn, ctx, &r),
            }
        }
    };
    if let Err(r) = s.hold(&mut ctx).await {
        return refuse(conn, ctx, &r);
    }
    let injected = s.upstream_request_filter(&view, &mut ctx);
    let method = parts.method.clone();
    let mut headers = parts.headers;
    let replaced = injected.iter().map(|(n, _)| n);
    for name in
        HOP_BY_HOP.iter().chain(&INJECTED).chain(&["content-length", "host"]).chain(replaced)
    {
        headers.remove(*name);
    }
    if decoded {
        headers.remove(CONTENT_ENCODING);
    }
    for (name, value) in injected {
        if let Ok(mut v) = HeaderValue::from_str(&value) {
            // A brokered key is never put in the HPACK table (never indexed).
            v.set_sensitive(matches!(name, "authorization" | "api-key"));
            headers.insert(HeaderName::from_static(name), v);
        }
    }
    let mut up_req = Request::new(body);
    *up_req.method_mut() = method.clone();
    let uri = if up.is_h2() { format!("https://{authority}{target}") } else { target.clone() };
    match uri.parse() {
        Ok(u) => *up_req.uri_mut() = u,
        Err(_) => {
            let r = Refusal::forbidden("bad_request", "the request target is malformed", None);
            return refuse(conn, ctx, &r);
        }
    }
    if !up.is_h2()
        && let Ok(h) = HeaderValue::from_str(&authority)
    {
        headers.insert(HOST, h);
    }
    *up_req.version_mut() = if up.is_h2() { Version::HTTP_2 } else { Version::HTTP_11 };
    *up_req.headers_mut() = headers;
    let sent = tokio::time::timeout(UPSTREAM_HEAD, up.send(up_req)).await;
    let (resp, lent) = match sent {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            let code = match e {
                UpstreamError::Connect(_) => "upstream_unreachable",
                _ => "upstream_closed",
            };
            let r = Refusal {
                status: 502,
                code,
                message: e.to_string(),
                rule: None,
                retry_after: None,
            };
            return refuse(conn, ctx, &r);
        }
        Err(_) => {
            let r = Refusal {
                status: 504,
                code: "upstream_timeout",
                message: "the server did not answer in time".into(),
                rule: None,
                retry_after: None,
            };
            return refuse(conn, ctx, &r);
        }
    };
    respond(conn, &method, resp, ctx, lent).await
}

/// The server's response, relayed (or masked) to the client.
async fn respond(
    conn: &Arc<Conn>,
    method: &Method,
    resp: Response<Incoming>,
    mut ctx: RequestCtx,
    lent: Option<Lent>,
) -> Response<ClientBody> {
    let s = &*conn.session;
    let (mut parts, body) = resp.into_parts();
    let status = parts.status.as_u16();
    let has_body = *method != Method::HEAD && !matches!(status, 100..=199 | 204 | 304);
    let plan = s.response_filter(status, &parts.headers, has_body, &mut ctx);
    for name in HOP_BY_HOP {
        parts.headers.remove(name);
    }
    parts.version = Version::HTTP_2;
    let finish = Finish::new(conn.clone(), ctx, lent);
    let body = match plan {
        None => ClientBody::Relay(body, Box::new(finish)),
        Some(MaskPlan::Sse) => {
            parts.headers.remove(CONTENT_LENGTH);
            let (tx, rx) = mpsc::channel(16);
            tokio::spawn(pump_sse(conn.clone(), body, finish, tx));
            ClientBody::Pumped(rx)
        }
        Some(MaskPlan::Json) => mask_json(conn, &mut parts.headers, body, finish).await,
    };
    Response::from_parts(parts, body)
}

/// Masks an event stream event by event as it arrives.
async fn pump_sse(
    conn: Arc<Conn>,
    mut body: Incoming,
    mut finish: Finish,
    tx: mpsc::Sender<Result<Frame<Bytes>, BodyError>>,
) {
    let Some(m) = conn.session.mask.as_ref() else { return };
    let mut masker = mask::sse(m);
    let mut out = Vec::new();
    let mut trailers = None;
    loop {
        let frame = match tokio::time::timeout(UPSTREAM_IDLE, body.frame()).await {
            Ok(Some(Ok(f))) => f,
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
            Err(_) => {
                let _ = tx.send(Err("the server stalled".into())).await;
                return;
            }
        };
        match frame.into_data() {
            Ok(d) => {
                finish.bytes += d.len() as u64;
                if let Some(ctx) = finish.ctx() {
                    ctx.observe(&d);
                }
                masker.feed(&d, &mut out);
                if !out.is_empty()
                    && tx
                        .send(Ok(Frame::data(Bytes::from(std::mem::take(&mut out)))))
                        .await
                        .is_err()
                {
                    return;
                }
            }
            Err(f) => trailers = f.into_trailers().ok(),
        }
    }
    masker.finish(&mut out);
    if let Some(ctx) = finish.ctx() {
        ctx.rec.response_masked.extend(masker.masked.iter().copied());
    }
    if !out.is_empty() && tx.send(Ok(Frame::data(Bytes::from(out)))).await.is_err() {
        return;
    }
    if let Some(t) = trailers {
        let _ = tx.send(Ok(Frame::trailers(t))).await;
    }
}

/// Holds a JSON response (up to the inspection limit) and masks it whole; a larger one goes
/// on unmasked, and the record says so.
async fn mask_json(
    conn: &Arc<Conn>,
    headers: &mut HeaderMap,
    mut body: Incoming,
    mut finish: Finish,
) -> ClientBody {
    let limit = usize::try_from(conn.session.max_body).unwrap_or(usize::MAX);
    let mut whole = Vec::new();
    loop {
        match tokio::time::timeout(UPSTREAM_IDLE, body.frame()).await {
            Ok(Some(Ok(f))) => {
                if let Ok(d) = f.into_data() {
                    whole.extend_from_slice(&d);
                    if whole.len() > limit {
                        break;
                    }
                }
            }
            Ok(None) => break,
            Ok(Some(Err(_))) | Err(_) => {
                // Cut short: what arrived is not a whole document; the client sees the cut.
                let (tx, rx) = mpsc::channel(1);
                let _ = tx.try_send(Err::<Frame<Bytes>, BodyError>("the server failed".into()));
                return ClientBody::Pumped(rx);
            }
        }
    }
    finish.bytes = whole.len() as u64;
    if let Some(ctx) = finish.ctx() {
        ctx.observe(&whole);
    }
    if whole.len() > limit {
        if let Some(ctx) = finish.ctx() {
            ctx.rec.reason = Some("response over the inspection limit: not masked".into());
        }
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let mut finish = finish;
            if tx.send(Ok(Frame::data(Bytes::from(whole)))).await.is_err() {
                return;
            }
            while let Some(f) = body.frame().await {
                if let Ok(f) = &f
                    && let Some(d) = f.data_ref()
                {
                    finish.bytes += d.len() as u64;
                }
                if tx.send(f.map_err(Into::into)).await.is_err() {
                    return;
                }
            }
        });
        return ClientBody::Pumped(rx);
    }
    let Some(m) = conn.session.mask.as_ref() else { return ClientBody::full(whole) };
    let encoding = headers.get(CONTENT_ENCODING).map(HeaderValue::as_bytes);
    let masked = mask::json(m, whole, encoding, limit);
    if let Some(ctx) = finish.ctx() {
        ctx.rec.response_masked.extend(masked.masked);
    }
    if masked.decoded {
        headers.remove(CONTENT_ENCODING);
    }
    headers.insert(CONTENT_LENGTH, HeaderValue::from(masked.body.len()));
    ClientBody::full(masked.body)
}

/// Answers the stream with a refusal and writes its record.
fn refuse(conn: &Conn, mut ctx: RequestCtx, r: &Refusal) -> Response<ClientBody> {
    let id = block::request_id();
    let (ctype, body) = block::body(r, ctx.html, &id);
    conn.session.refused(r, &mut ctx);
    conn.sink.request(conn.session.logging(ctx));
    let mut resp = Response::new(ClientBody::full(body));
    *resp.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::FORBIDDEN);
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    match r.retry_after {
        Some(secs) => {
            h.insert("x-should-retry", HeaderValue::from_static("true"));
            h.insert("retry-after", HeaderValue::from(secs));
        }
        None => {
            h.insert("x-should-retry", HeaderValue::from_static("false"));
        }
    }
    h.insert("x-sluice-code", HeaderValue::from_static(r.code));
    h.insert("cache-control", HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&id) {
        h.insert("x-request-id", v);
    }
    resp
}
