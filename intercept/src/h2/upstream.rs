//! The upstream side of an HTTP/2 client connection: one HTTP/2 connection multiplexing
//! every stream, or, when the server speaks only HTTP/1.1, a few HTTP/1.1 connections (hyper's
//! client) opened as concurrent streams need them and reused between them (the translation
//! between the two is hyper's: each stream becomes one HTTP/1.1 request).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use http::Request;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::debug;

use super::body::UpBody;
use super::{CONN_WINDOW, STREAM_WINDOW};
/// A connection to the server (verified TLS in the engine; in-memory pipes in tests).
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Opens one more connection to the same server (verified TLS, from the client's address).
pub type Opener =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = io::Result<Box<dyn Io>>> + Send>> + Send + Sync>;

/// Most HTTP/1.1 upstream connections one HTTP/2 client connection uses at once (streams
/// beyond wait for one; browsers hold six per host).
pub const MAX_H1_UPSTREAMS: usize = 6;

/// Why a stream could not be sent upstream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// Connecting another upstream connection failed.
    #[error("connecting to the server: {0}")]
    Connect(io::Error),
    /// The server (or the connection to it) failed the request.
    #[error("the server failed the request: {0}")]
    Http(#[from] hyper::Error),
}

/// Where the streams of one client connection go.
pub enum Upstream {
    /// One HTTP/2 connection.
    H2(http2::SendRequest<UpBody>),
    /// HTTP/1.1 connections.
    H1(H1Pool),
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Upstream::H2(_) => "Upstream::H2",
            Upstream::H1(_) => "Upstream::H1",
        })
    }
}

/// HTTP/1.1 upstream connections of one client connection.
pub struct H1Pool {
    idle: Mutex<Vec<http1::SendRequest<UpBody>>>,
    slots: Arc<Semaphore>,
    opener: Opener,
}

/// An HTTP/1.1 connection lent to one stream until its response body ends.
pub struct Lent {
    sender: Option<http1::SendRequest<UpBody>>,
    pool: Arc<Upstream>,
    _slot: OwnedSemaphorePermit,
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let (Some(s), Upstream::H1(p)) = (self.sender.take(), &*self.pool)
            && !s.is_closed()
        {
            p.idle.lock().unwrap_or_else(PoisonError::into_inner).push(s);
        }
    }
}

impl Upstream {
    /// An HTTP/2 upstream over `tls` (its ALPN said `h2`); its connection task runs on this
    /// runtime.
    pub async fn h2(tls: impl Io) -> Result<Upstream, hyper::Error> {
        let (send, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONN_WINDOW)
            .handshake(TokioIo::new(tls))
            .await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!("upstream HTTP/2 connection ended: {e}");
            }
        });
        Ok(Upstream::H2(send))
    }

    /// HTTP/1.1 upstreams, starting with `first` (already connected); more are opened with
    /// `opener`.
    pub async fn h1(first: Option<Box<dyn Io>>, opener: Opener) -> Upstream {
        let pool = H1Pool {
            idle: Mutex::new(Vec::new()),
            slots: Arc::new(Semaphore::new(MAX_H1_UPSTREAMS)),
            opener,
        };
        if let Some(tls) = first
            && let Ok(s) = h1_handshake(tls).await
        {
            pool.idle.lock().unwrap_or_else(PoisonError::into_inner).push(s);
        }
        Upstream::H1(pool)
    }

    /// True for an HTTP/2 upstream (requests then carry absolute URIs).
    pub fn is_h2(&self) -> bool {
        matches!(self, Upstream::H2(_))
    }

    /// Sends one request; for HTTP/1.1 the connection is lent until the returned [`Lent`] is
    /// dropped (when the response body has been relayed).
    pub async fn send(
        self: &Arc<Self>,
        req: Request<UpBody>,
    ) -> Result<(http::Response<Incoming>, Option<Lent>), UpstreamError> {
        match &**self {
            Upstream::H2(send) => {
                let mut send = send.clone();
                send.ready().await?;
                Ok((send.send_request(req).await?, None))
            }
            Upstream::H1(pool) => {
                let slot = pool.slots.clone().acquire_owned().await.map_err(|_| {
                    UpstreamError::Connect(io::Error::other("upstream pool closed"))
                })?;
                let mut sender = loop {
                    let idle = pool.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
                    match idle {
                        Some(mut s) => {
                            if s.ready().await.is_ok() {
                                break s;
                            }
                        }
                        None => {
                            let tls = (pool.opener)().await.map_err(UpstreamError::Connect)?;
                            break h1_handshake(tls).await?;
                        }
                    }
                };
                let resp = sender.send_request(req).await?;
                let lent = Lent { sender: Some(sender), pool: self.clone(), _slot: slot };
                Ok((resp, Some(lent)))
            }
        }
    }
}

async fn h1_handshake(tls: impl Io) -> Result<http1::SendRequest<UpBody>, hyper::Error> {
    let (send, conn) = http1::Builder::new().handshake(TokioIo::new(tls)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!("upstream HTTP/1.1 connection ended: {e}");
        }
    });
    Ok(send)
}
