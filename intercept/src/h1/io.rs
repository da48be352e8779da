//! Reading HTTP/1.x messages off a stream: heads within their time limits, request bodies
//! de-framed into memory up to the inspection limit, and bodies over it streamed (fail-open).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{CLIENT_IDLE, HEAD_TIMEOUT, ProxyError, READ, UPSTREAM_HEAD, forward_head};
use crate::http::chunked::{ChunkError, ChunkedDecoder};
use crate::http::deadline::BodyDeadline;
use crate::http::head::{Framing, HeadError, RequestHead};
use crate::record::RequestRecord;

pub(super) enum ReadHeadError {
    Head(HeadError),
    Io(ProxyError),
}

/// Reads until `parse` returns a head. `Ok(None)`: the peer closed with nothing pending.
pub(super) async fn read_head<R, T>(
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

pub(super) enum Body {
    Whole(Vec<u8>),
    TooLarge,
    Streamed,
}

/// Reads the request body (de-chunked) into memory, up to `max`.
pub(super) async fn read_body<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    head: &RequestHead,
    max: u64,
    stream_if_large: bool,
) -> Result<Body, ProxyError> {
    let mut deadline = BodyDeadline::new(tokio::time::Instant::now().into_std());
    match head.framing {
        Framing::Empty | Framing::UntilClose => Ok(Body::Whole(Vec::new())),
        Framing::Length(n) => {
            if n > max {
                return Ok(if stream_if_large { Body::Streamed } else { Body::TooLarge });
            }
            let n = n as usize;
            while buf.len() < n {
                buf.reserve(READ);
                if read_some(r, buf, &mut deadline).await? == 0 {
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
                if read_some(r, buf, &mut deadline).await? == 0 {
                    return Err(ProxyError::Truncated);
                }
            }
        }
    }
}

fn chunk_msg(e: ChunkError) -> &'static str {
    match e {
        ChunkError::BadSize => "bad chunk size",
        ChunkError::BadLineEnding => "bad line ending in a chunked body",
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

/// A client read of body bytes: within the idle limit and the body's deadline
/// ([`BodyDeadline`]: a body trickled in runs out of time, [`ProxyError::BodyTimeout`]).
async fn read_some<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    deadline: &mut BodyDeadline,
) -> Result<usize, ProxyError> {
    buf.reserve(READ);
    let idle = tokio::time::Instant::now() + CLIENT_IDLE;
    let at = tokio::time::Instant::from_std(deadline.at());
    match tokio::time::timeout_at(at.min(idle), r.read_buf(buf)).await {
        Err(_) if at <= idle => Err(ProxyError::BodyTimeout),
        Err(_) => Err(ProxyError::Timeout),
        Ok(r) => {
            let n = r?;
            deadline.received(n);
            Ok(n)
        }
    }
}

/// Forwards a Content-Length body over the limit as it arrives (fail-open).
pub(super) async fn stream_request<C, U>(
    client: &mut C,
    up: &mut U,
    cbuf: &mut Vec<u8>,
    head: &RequestHead,
    injected: &[(&'static str, String)],
    rec: &mut RequestRecord,
) -> Result<(), ProxyError>
where
    C: AsyncRead + Unpin,
    U: AsyncWrite + Unpin,
{
    let Framing::Length(n) = head.framing else { return Ok(()) };
    let out = forward_head(head, injected, usize::try_from(n).ok(), false);
    up.write_all(&out).await?;
    let mut left = n;
    let mut deadline = BodyDeadline::new(tokio::time::Instant::now().into_std());
    while left > 0 {
        if cbuf.is_empty() && read_some(client, cbuf, &mut deadline).await? == 0 {
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

/// An upstream read (the server may take long between bytes of an answer).
pub(super) async fn read_upstream<U: AsyncRead + Unpin>(
    up: &mut U,
    buf: &mut Vec<u8>,
) -> Result<usize, ProxyError> {
    read_more(up, buf, UPSTREAM_HEAD).await
}
