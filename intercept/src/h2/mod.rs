//! HTTP/2 toward the client (ARCHITECTURE.md, "Interception phases"): hyper's HTTP/2 server
//! over the client's TLS; each stream is one request that drives the same phases as an
//! HTTP/1.1 message ([`stream`]) and is answered on its own (a refusal answers that stream;
//! the others go on). Upstream, the streams share one HTTP/2 connection, or become HTTP/1.1
//! requests on a few connections when the server speaks only that ([`upstream`]).
//!
//! Bounded against a hostile client: concurrent streams, header-list size (a CONTINUATION
//! flood ends at it), streams reset before they are accepted and streams refused by the
//! engine (hyper and h2's own counters), and streams the client cancels after they were
//! accepted (rapid reset: counted here, the connection is closed past [`MAX_CANCELLED`]); the
//! bodies held for inspection share a per-connection budget. Extended CONNECT (RFC 8441,
//! WebSocket over HTTP/2) is not advertised: those sockets would not be inspected.

pub mod body;
mod stream;
pub mod upstream;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, Semaphore};

use crate::phases::Session;
use crate::record::RecordSink;
pub use upstream::{Opener, Upstream};

/// Most streams a client may have open at once.
pub const MAX_CONCURRENT_STREAMS: u32 = 100;
/// Largest header list accepted (HPACK-decoded), which also ends CONTINUATION floods.
pub const MAX_HEADER_LIST: u32 = 64 * 1024;
/// Per-stream flow-control window: large enough that one upload is not held back by round
/// trips (mitmproxy raised its window to 2^24 for a twentyfold bulk speed-up).
pub const STREAM_WINDOW: u32 = 8 << 20;
/// Connection flow-control window (what a client may have sent and the engine not yet read).
pub const CONN_WINDOW: u32 = 16 << 20;
/// Streams the client may cancel (reset after they were accepted) beyond twice the number
/// that completed, before the connection is closed as a rapid-reset attack.
pub const MAX_CANCELLED: u32 = 100;
/// Streams reset by the client before the engine accepted them (h2's own counter).
const MAX_PENDING_RESETS: usize = 50;
/// Streams the engine itself reset for protocol errors (h2's own counter).
const MAX_LOCAL_RESETS: usize = 256;
/// Bytes of request bodies one connection may hold for inspection at once: four bodies of
/// the largest size inspected (32 MiB with the default 8 MiB), and at least 256 KiB.
fn body_budget(max_body: u64) -> u64 {
    max_body.saturating_mul(4).max(256 << 10)
}

/// Why an HTTP/2 connection ended early.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum H2Error {
    /// A protocol error, a socket error, or a limit enforced by hyper and h2.
    #[error("HTTP/2: {0}")]
    Http(#[from] hyper::Error),
    /// The client cancelled streams faster than it completed them.
    #[error("the client reset too many streams (rapid reset): connection closed")]
    RapidReset,
}

/// What the streams of one client connection share.
pub struct Conn {
    session: Arc<Session>,
    sink: Arc<dyn RecordSink>,
    upstream: Option<Arc<Upstream>>,
    /// Bytes of request bodies held for inspection (permits are KiB).
    budget: Arc<Semaphore>,
    completed: AtomicU32,
    cancelled: AtomicU32,
    abuse: Notify,
}

impl Conn {
    /// Notes a stream the client cancelled; past the limit the connection is closed.
    fn cancelled(&self) {
        let c = self.cancelled.fetch_add(1, Ordering::Relaxed) + 1;
        if c > MAX_CANCELLED.saturating_add(self.completed.load(Ordering::Relaxed) * 2) {
            self.abuse.notify_one();
        }
    }
}

/// Serves one client connection that negotiated `h2`. `upstream` is `None` when every request
/// is refused (`session.refuse` says why).
pub async fn serve<C>(
    client: C,
    upstream: Option<Upstream>,
    session: Arc<Session>,
    sink: Arc<dyn RecordSink>,
) -> Result<(), H2Error>
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let kib = body_budget(session.max_body).div_ceil(1024);
    let conn = Arc::new(Conn {
        session,
        sink,
        upstream: upstream.map(Arc::new),
        budget: Arc::new(Semaphore::new(usize::try_from(kib).unwrap_or(usize::MAX >> 4))),
        completed: AtomicU32::new(0),
        cancelled: AtomicU32::new(0),
        abuse: Notify::new(),
    });
    let c = conn.clone();
    let svc = service_fn(move |req| {
        let c = c.clone();
        async move { Ok::<_, Infallible>(stream::handle(c, req).await) }
    });
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .max_local_error_reset_streams(MAX_LOCAL_RESETS)
        .keep_alive_interval(Some(Duration::from_secs(60)))
        .keep_alive_timeout(Duration::from_secs(20));
    let serving = b.serve_connection(TokioIo::new(client), svc);
    tokio::pin!(serving);
    tokio::select! {
        r = &mut serving => r.map_err(H2Error::from),
        () = conn.abuse.notified() => Err(H2Error::RapidReset),
    }
}
