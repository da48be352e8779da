//! Where control is and how the link reaches it (ARCHITECTURE.md, "The fleet"): control's
//! Unix socket on the same host, or its link address over TCP with mutual TLS 1.3 (the fleet
//! CA the only root, this data plane's enrolled certificate as the client's). Either way the
//! link thread gets a blocking stream with a short read timeout, as it polls.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};

/// How long a read waits before the link thread turns to sending.
pub(super) const POLL: Duration = Duration::from_millis(50);
/// A control that stops reading for this long is treated as gone (records stay spooled).
const WRITE_WAIT: Duration = Duration::from_secs(10);
/// A TCP connect, and the TLS handshake, each finish within this.
const CONNECT_WAIT: Duration = Duration::from_secs(5);

/// Where control is.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// Control's Unix socket (same host).
    Unix(PathBuf),
    /// Control's link address, `HOST:PORT`, over mutual TLS with the fleet's certificates.
    Tls {
        /// `HOST:PORT`.
        addr: String,
        /// The fleet CA as the only root, and this data plane's certificate.
        tls: Arc<rustls::ClientConfig>,
    },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
            Endpoint::Tls { addr, .. } => write!(f, "tls://{addr}"),
        }
    }
}

/// A connected link.
pub(super) enum Stream {
    Unix(UnixStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// Connects to control: the TCP connection and the TLS handshake done, the read timeout set
/// to the link thread's poll.
pub(super) fn connect(to: &Endpoint) -> std::io::Result<Stream> {
    match to {
        Endpoint::Unix(path) => {
            let s = UnixStream::connect(path)?;
            s.set_read_timeout(Some(POLL))?;
            s.set_write_timeout(Some(WRITE_WAIT))?;
            Ok(Stream::Unix(s))
        }
        Endpoint::Tls { addr, tls } => {
            let mut last = None;
            let mut tcp = None;
            for a in addr.to_socket_addrs()? {
                match TcpStream::connect_timeout(&a, CONNECT_WAIT) {
                    Ok(s) => {
                        tcp = Some(s);
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            let Some(mut tcp) = tcp else {
                return Err(last.unwrap_or_else(|| {
                    std::io::Error::other(format!("{addr}: no address to connect to"))
                }));
            };
            tcp.set_nodelay(true)?;
            tcp.set_read_timeout(Some(CONNECT_WAIT))?;
            tcp.set_write_timeout(Some(WRITE_WAIT))?;
            let name = ServerName::try_from(sluice_certs::fleet::CONTROL_NAME)
                .map_err(std::io::Error::other)?;
            let mut conn =
                ClientConnection::new(tls.clone(), name).map_err(std::io::Error::other)?;
            while conn.is_handshaking() {
                conn.complete_io(&mut tcp)?;
            }
            tcp.set_read_timeout(Some(POLL))?;
            Ok(Stream::Tls(Box::new(StreamOwned::new(conn, tcp))))
        }
    }
}
