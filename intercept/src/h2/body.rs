//! Bodies of translated exchanges: what goes upstream ([`UpBody`]: an inspected body with its
//! trailers, or one over the limit streamed uninspected after its first bytes) and what goes
//! to the client ([`ClientBody`]: the server's body relayed frame by frame, a body the engine
//! made, or masked frames from a pump task), each counting what it carried and writing the
//! request's record when it ends ([`Finish`]).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::mpsc;

use super::Conn;
use super::upstream::Lent;
use crate::phases::RequestCtx;

/// Errors of the bodies (the peer's, passed on).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A request body going upstream.
#[derive(Debug)]
pub enum UpBody {
    /// Inspected: the whole body, then its trailers.
    Whole {
        /// The body, until sent.
        data: Option<Bytes>,
        /// Trailers, after it.
        trailers: Option<HeaderMap>,
    },
    /// Over the inspection limit with `on_inspect_failure = "allow"`: the bytes already read,
    /// then the rest as the client sends it.
    Streamed {
        /// Read before the limit was passed.
        first: Option<Bytes>,
        /// The rest.
        rest: Incoming,
    },
}

impl UpBody {
    /// A whole body.
    pub fn whole(data: Vec<u8>, trailers: Option<HeaderMap>) -> Self {
        UpBody::Whole { data: (!data.is_empty()).then(|| Bytes::from(data)), trailers }
    }
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            UpBody::Whole { data, trailers } => {
                if let Some(d) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            UpBody::Streamed { first, rest } => {
                if let Some(d) = first.take() {
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Pin::new(rest).poll_frame(cx).map_err(Into::into)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Whole { data, trailers } => data.is_none() && trailers.is_none(),
            UpBody::Streamed { first, rest } => first.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::Whole { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            UpBody::Streamed { first, rest } => {
                let mut h = rest.size_hint();
                let n = first.as_ref().map_or(0, |d| d.len() as u64);
                h.set_lower(h.lower() + n);
                if let Some(u) = h.upper() {
                    h.set_upper(u + n);
                }
                h
            }
        }
    }
}

/// Writes a request's record when its response is over (relayed to its end, or dropped
/// because the client went away), with the response bytes counted; returns its HTTP/1.1
/// upstream connection to the pool.
pub struct Finish {
    ctx: Option<RequestCtx>,
    conn: Arc<Conn>,
    _lent: Option<Lent>,
    /// Response body bytes so far.
    pub bytes: u64,
}

impl Finish {
    /// The finish of the request `ctx`.
    pub fn new(conn: Arc<Conn>, ctx: RequestCtx, lent: Option<Lent>) -> Self {
        Finish { ctx: Some(ctx), conn, _lent: lent, bytes: 0 }
    }

    /// The record, to add what the body learned.
    pub fn ctx(&mut self) -> Option<&mut RequestCtx> {
        self.ctx.as_mut()
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        if let Some(mut ctx) = self.ctx.take() {
            ctx.rec.bytes_in = self.bytes;
            self.conn.sink.request(self.conn.session.logging(ctx));
        }
    }
}

/// A response body going to the client.
pub enum ClientBody {
    /// Made by the engine (a refusal, a masked JSON body).
    Full(Option<Bytes>),
    /// The server's, frame by frame.
    Relay(Incoming, Box<Finish>),
    /// Frames from a task that masks them.
    Pumped(mpsc::Receiver<Result<Frame<Bytes>, BodyError>>),
    /// An answer given before the request's body was read: after the answer, the rest of the
    /// body is read and dropped (at most [`DRAIN_BYTES`], for at most [`DRAIN_TIME`]) before
    /// the stream ends, so a client that sends its body behind its headers sees the stream
    /// close cleanly. Ended at once, its DATA would meet a closed stream and draw
    /// `RST_STREAM(STREAM_CLOSED)`, which clients report as a failed request (curl exits 92).
    Answer(Box<Answer>),
}

/// Most of an unread request body read and dropped after an early answer.
pub const DRAIN_BYTES: usize = 64 * 1024;
/// Longest an early answer waits for the rest of the request body.
pub const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// An early answer and the request body it waits out ([`ClientBody::Answer`]).
pub struct Answer {
    data: Option<Bytes>,
    unread: Incoming,
    drained: usize,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl Answer {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(b) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        loop {
            if self.drained > DRAIN_BYTES || self.unread.is_end_stream() {
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.unread).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => {
                    self.drained += f.data_ref().map_or(0, Bytes::len);
                }
                Poll::Ready(_) => return Poll::Ready(None),
                Poll::Pending => {
                    ready!(self.deadline.as_mut().poll(cx));
                    return Poll::Ready(None);
                }
            }
        }
    }
}

impl ClientBody {
    /// A body the engine made.
    pub fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        ClientBody::Full((!b.is_empty()).then_some(b))
    }

    /// This answer, then the request's unread body waited out ([`ClientBody::Answer`]).
    pub fn holding(self, unread: Incoming) -> Self {
        match self {
            ClientBody::Full(data) => ClientBody::Answer(Box::new(Answer {
                data,
                unread,
                drained: 0,
                deadline: Box::pin(tokio::time::sleep(DRAIN_TIME)),
            })),
            other => other,
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ClientBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ClientBody::Answer(a) => a.poll_frame(cx),
            ClientBody::Relay(inner, finish) => {
                let frame = ready!(Pin::new(inner).poll_frame(cx));
                if let Some(Ok(f)) = &frame
                    && let Some(d) = f.data_ref()
                {
                    finish.bytes += d.len() as u64;
                    if let Some(ctx) = finish.ctx() {
                        ctx.observe(d);
                    }
                }
                Poll::Ready(frame.map(|r| r.map_err(Into::into)))
            }
            ClientBody::Pumped(rx) => Poll::Ready(ready!(rx.poll_recv(cx))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Full(b) => b.is_none(),
            ClientBody::Answer(a) => a.data.is_none() && a.unread.is_end_stream(),
            ClientBody::Relay(inner, _) => inner.is_end_stream(),
            ClientBody::Pumped(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ClientBody::Answer(a) => {
                SizeHint::with_exact(a.data.as_ref().map_or(0, |b| b.len() as u64))
            }
            ClientBody::Relay(inner, _) => inner.size_hint(),
            ClientBody::Pumped(_) => SizeHint::default(),
        }
    }
}
