//! HTTP/1.x responses relayed to the client: 1xx heads first, then the final head and its body,
//! streamed as it arrives (each read written and flushed at once), or masked
//! ([`crate::mask`]) when the response phase says so: event streams re-framed chunked event by
//! event, JSON bodies held up to the inspection limit and sent with their new length.

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::io::{ReadHeadError, read_head, read_upstream};
use super::{ProxyError, UPSTREAM_HEAD, refuse};
use crate::block::Refusal;
use crate::http::chunked::{ChunkedDecoder, LAST_CHUNK, encode_chunk};
use crate::http::head::{self, Framing, RequestHead, ResponseHead};
use crate::mask::{self, MaskPlan};
use crate::phases::{Headers, RequestCtx, Session};

impl Headers for ResponseHead {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
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

/// Relays the response to `req`. Returns whether the connection may carry another request.
pub(super) async fn relay_response<C, U>(
    client: &mut C,
    up: &mut U,
    ubuf: &mut Vec<u8>,
    req: &RequestHead,
    session: &Session,
    ctx: &mut RequestCtx,
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
                let r = Refusal {
                    status: 502,
                    code: "upstream_closed",
                    message: why,
                    rule: None,
                    retry_after: None,
                };
                refuse(client, session, ctx, &r).await?;
                return Ok(false);
            }
            Err(ReadHeadError::Head(e)) => {
                let r = Refusal {
                    status: 502,
                    code: "bad_upstream_response",
                    message: format!("the server's response was refused: {e}"),
                    rule: None,
                    retry_after: None,
                };
                refuse(client, session, ctx, &r).await?;
                return Ok(false);
            }
        };
        let last = !(100..200).contains(&resp.status) || resp.status == 101;
        if !last {
            client.write_all(&ubuf[..resp.len]).await?;
            client.flush().await?;
            ubuf.drain(..resp.len);
            continue;
        }
        let has_body = resp.framing != Framing::Empty;
        if let Some(plan) = session.response_filter(resp.status, &resp, has_body, ctx) {
            let head_bytes: Vec<u8> = ubuf.drain(..resp.len).collect();
            return relay_masked(client, up, ubuf, &head_bytes, &resp, plan, session, ctx).await;
        }
        let mut sent = resp.len;
        if !req.keep_alive && resp.keep_alive {
            // The client asked to close, which the upstream did not hear: say it here.
            client.write_all(&closing_head(&ubuf[..resp.len])).await?;
        } else if resp.framing == Framing::Chunked {
            // Left in `ubuf`: the head goes with the first chunks (below).
            sent = 0;
        } else {
            // With a length-framed body, the head goes with the body bytes already read: a
            // small response is then one TLS record and one write, not two.
            if let Framing::Length(n) = resp.framing {
                let here = ubuf.len() - resp.len;
                sent += here.min(usize::try_from(n).unwrap_or(usize::MAX));
            }
            client.write_all(&ubuf[..sent]).await?;
        }
        ctx.observe(ubuf.get(resp.len..sent).unwrap_or_default());
        ubuf.drain(..sent);
        let body_sent = sent.saturating_sub(resp.len) as u64;
        let head_left = if sent == 0 { resp.len } else { 0 };
        break (resp, body_sent, head_left);
    };
    let (resp, body_sent, mut head_left) = resp;
    match resp.framing {
        Framing::Empty => {}
        Framing::Length(n) => {
            let mut left = n - body_sent;
            while left > 0 {
                if ubuf.is_empty() && read_upstream(up, ubuf).await? == 0 {
                    return Err(ProxyError::Truncated);
                }
                let take = ubuf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                client.write_all(&ubuf[..take]).await?;
                client.flush().await?;
                ctx.observe(&ubuf[..take]);
                ubuf.drain(..take);
                left -= take as u64;
            }
            ctx.rec.bytes_in = n;
        }
        Framing::Chunked => {
            // The head, still in `ubuf`, leaves with the chunks read with it: a small answer
            // is one TLS record and one write.
            let mut dec = ChunkedDecoder::new();
            let mut scratch = Vec::new();
            loop {
                let p = dec
                    .feed(&ubuf[head_left..], &mut scratch)
                    .map_err(|e| ProxyError::Response(e.to_string()))?;
                ctx.observe(&scratch);
                scratch.clear();
                let out = head_left + p.consumed;
                client.write_all(&ubuf[..out]).await?;
                client.flush().await?;
                ubuf.drain(..out);
                head_left = 0;
                if p.done {
                    break;
                }
                if read_upstream(up, ubuf).await? == 0 {
                    return Err(ProxyError::Truncated);
                }
            }
            ctx.rec.bytes_in = dec.decoded;
        }
        Framing::UntilClose => {
            let mut total = ubuf.len() as u64;
            client.write_all(ubuf).await?;
            ctx.observe(ubuf);
            ubuf.clear();
            loop {
                client.flush().await?;
                if read_upstream(up, ubuf).await? == 0 {
                    break;
                }
                total += ubuf.len() as u64;
                client.write_all(ubuf).await?;
                ctx.observe(ubuf);
                ubuf.clear();
            }
            ctx.rec.bytes_in = total;
        }
    }
    client.flush().await?;
    Ok(resp.keep_alive)
}

/// Largest masked body copied behind its head so both leave in one write.
const ONE_WRITE: usize = 64 * 1024;

/// A response head with `connection: close` added before its blank line.
fn closing_head(head: &[u8]) -> Vec<u8> {
    let body_at = if head.ends_with(b"\r\n\r\n") { head.len() - 2 } else { head.len() - 1 };
    let mut out = Vec::with_capacity(head.len() + 20);
    out.extend_from_slice(&head[..body_at]);
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out
}

/// The response head with its framing (and, for a decoded body, its encoding) replaced.
fn rewrite_head(raw: &[u8], resp: &ResponseHead, framing: &str, drop_encoding: bool) -> Vec<u8> {
    let status_line = raw.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut out = Vec::with_capacity(raw.len() + 32);
    out.extend_from_slice(status_line.strip_suffix(b"\r").unwrap_or(status_line));
    out.extend_from_slice(b"\r\n");
    for (n, v) in &resp.headers {
        if n == "content-length"
            || n == "transfer-encoding"
            || (drop_encoding && n == "content-encoding")
        {
            continue;
        }
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(framing.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out
}

/// Reads the response body as it arrives, de-framed.
struct BodyReader {
    framing: Framing,
    left: u64,
    chunked: ChunkedDecoder,
    done: bool,
}

impl BodyReader {
    fn new(framing: Framing) -> Self {
        let left = if let Framing::Length(n) = framing { n } else { 0 };
        BodyReader {
            framing,
            left,
            chunked: ChunkedDecoder::new(),
            done: framing == Framing::Empty || left == 0 && matches!(framing, Framing::Length(_)),
        }
    }

    /// The next piece of body data; `None` at the end.
    async fn next<U: AsyncRead + Unpin>(
        &mut self,
        up: &mut U,
        ubuf: &mut Vec<u8>,
    ) -> Result<Option<Vec<u8>>, ProxyError> {
        loop {
            if self.done {
                return Ok(None);
            }
            if !ubuf.is_empty() {
                match self.framing {
                    Framing::Length(_) => {
                        let take = ubuf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
                        let data: Vec<u8> = ubuf.drain(..take).collect();
                        self.left -= take as u64;
                        self.done = self.left == 0;
                        return Ok(Some(data));
                    }
                    Framing::Chunked => {
                        let mut data = Vec::new();
                        let p = self
                            .chunked
                            .feed(ubuf, &mut data)
                            .map_err(|e| ProxyError::Response(e.to_string()))?;
                        ubuf.drain(..p.consumed);
                        self.done = p.done;
                        if !data.is_empty() || self.done {
                            return Ok(Some(data));
                        }
                    }
                    _ => return Ok(Some(std::mem::take(ubuf))),
                }
            }
            if read_upstream(up, ubuf).await? == 0 {
                return match self.framing {
                    Framing::UntilClose => {
                        self.done = true;
                        Ok(None)
                    }
                    _ => Err(ProxyError::Truncated),
                };
            }
        }
    }
}

/// Relays a response with its credentials masked. Returns whether the connection may carry
/// another request.
#[allow(clippy::too_many_arguments)]
async fn relay_masked<C, U>(
    client: &mut C,
    up: &mut U,
    ubuf: &mut Vec<u8>,
    raw_head: &[u8],
    resp: &ResponseHead,
    plan: MaskPlan,
    session: &Session,
    ctx: &mut RequestCtx,
) -> Result<bool, ProxyError>
where
    C: AsyncWrite + Unpin,
    U: AsyncRead + Unpin,
{
    let Some(m) = session.mask.as_ref() else {
        return Err(ProxyError::Response("no mask".into()));
    };
    let mut body = BodyReader::new(resp.framing);
    match plan {
        MaskPlan::Sse => {
            client
                .write_all(&rewrite_head(raw_head, resp, "transfer-encoding: chunked", false))
                .await?;
            client.flush().await?;
            let mut masker = mask::sse(m);
            let mut out = Vec::new();
            let mut framed = Vec::new();
            while let Some(data) = body.next(up, ubuf).await? {
                ctx.rec.bytes_in += data.len() as u64;
                ctx.observe(&data);
                masker.feed(&data, &mut out);
                if !out.is_empty() {
                    framed.clear();
                    encode_chunk(&out, &mut framed);
                    out.clear();
                    client.write_all(&framed).await?;
                    client.flush().await?;
                }
            }
            masker.finish(&mut out);
            framed.clear();
            encode_chunk(&out, &mut framed);
            framed.extend_from_slice(LAST_CHUNK);
            client.write_all(&framed).await?;
            client.flush().await?;
            ctx.rec.response_masked.extend(masker.masked.iter().copied());
            Ok(resp.keep_alive)
        }
        MaskPlan::Json => {
            let limit = usize::try_from(session.max_body).unwrap_or(usize::MAX);
            let mut whole = Vec::new();
            while let Some(data) = body.next(up, ubuf).await? {
                whole.extend_from_slice(&data);
                if whole.len() > limit {
                    break;
                }
            }
            if whole.len() > limit {
                // Too large to hold: the rest streams unmasked (recorded).
                ctx.rec.reason = Some("response over the inspection limit: not masked".into());
                client.write_all(&rewrite_head(raw_head, resp, "connection: close", false)).await?;
                client.write_all(&whole).await?;
                while let Some(data) = body.next(up, ubuf).await? {
                    client.write_all(&data).await?;
                }
                client.flush().await?;
                return Ok(false);
            }
            ctx.rec.bytes_in = whole.len() as u64;
            ctx.observe(&whole);
            let masked = mask::json(m, whole, resp.header("content-encoding"), limit);
            ctx.rec.response_masked.extend(masked.masked);
            let length = format!("content-length: {}", masked.body.len());
            let mut out = rewrite_head(raw_head, resp, &length, masked.decoded);
            // The head goes with the body: one TLS record and one write for a small answer.
            if masked.body.len() <= ONE_WRITE {
                out.extend_from_slice(&masked.body);
                client.write_all(&out).await?;
            } else {
                client.write_all(&out).await?;
                client.write_all(&masked.body).await?;
            }
            client.flush().await?;
            Ok(resp.keep_alive)
        }
    }
}
