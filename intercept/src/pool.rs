//! Idle upstream connections kept for reuse: after a client's connection ends with its
//! upstream connection between two messages ([`crate::h1::serve_keeping`]), that verified
//! TLS connection may carry the next connection of the same client to the same server and
//! name, which then costs neither a TCP nor a TLS handshake toward the server (Squid does the
//! same, `server_persistent_connections`). Keyed by the client's address as well as the
//! server's, so the server sees each client's requests on that client's own connections, from
//! its own address, as without the appliance; never shared between clients.
//!
//! One pool per interception thread (each runs its own single-threaded runtime, whose reactor
//! the sockets belong to), so no lock; the kernel spreads a client's connections over the
//! threads, and a busy client soon has idle connections on each (Envoy's workers do the same). Bounded: a few connections per key, a total per thread,
//! and a short idle time, kept below the keep-alive timeouts servers commonly use (5 s and
//! up), so a server rarely closes a connection just as it is reused; one it closed is found
//! out before reuse (end of stream or unexpected bytes: dropped).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;

/// An upstream connection of the interception engine.
pub(super) type Upstream = tokio_rustls::client::TlsStream<TcpStream>;

/// How long an idle connection is kept.
pub(super) const IDLE: Duration = Duration::from_secs(2);
/// Most idle connections per (client, server, name).
const PER_KEY: usize = 4;
/// Most idle connections per interception thread.
const TOTAL: usize = 512;

/// Which connections may be reused for a new client connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Key {
    /// The client's address (upstream connections leave with it).
    pub client: IpAddr,
    /// The original destination.
    pub server: SocketAddr,
    /// The TLS server name the connection was verified for.
    pub sni: Option<String>,
}

struct Idle {
    conn: Upstream,
    since: Instant,
}

#[derive(Default)]
struct Pool {
    idle: HashMap<Key, Vec<Idle>>,
    total: usize,
    /// Whether each server (address and name) chose `h2` when last offered it, and when.
    h2: HashMap<(SocketAddr, Option<String>), (bool, Instant)>,
}

/// How long what a server's ALPN said is remembered.
const ALPN_TTL: Duration = Duration::from_secs(600);
/// Most servers whose ALPN is remembered per thread.
const ALPN_MAX: usize = 4096;

thread_local! {
    static POOL: RefCell<Pool> = RefCell::default();
}

/// An idle connection for `key` that is still open, the most recently used first.
pub(super) fn take(key: &Key) -> Option<Upstream> {
    POOL.with_borrow_mut(|p| {
        let list = p.idle.get_mut(key)?;
        let mut found = None;
        while let Some(mut i) = list.pop() {
            p.total -= 1;
            if i.since.elapsed() < IDLE && open(&mut i.conn) {
                found = Some(i.conn);
                break;
            }
        }
        if list.is_empty() {
            p.idle.remove(key);
        }
        found
    })
}

/// Keeps `conn` for `key`, unless the pool is full (it is then closed).
pub(super) fn put(key: Key, conn: Upstream) {
    POOL.with_borrow_mut(|p| {
        if p.total >= TOTAL {
            return;
        }
        let list = p.idle.entry(key).or_default();
        if list.len() >= PER_KEY {
            return;
        }
        list.push(Idle { conn, since: Instant::now() });
        p.total += 1;
    });
}

/// Notes whether `server` (for `sni`) chose `h2` when offered it.
pub(super) fn note_h2(server: SocketAddr, sni: Option<&str>, h2: bool) {
    POOL.with_borrow_mut(|p| {
        if p.h2.len() >= ALPN_MAX {
            p.h2.retain(|_, (_, at)| at.elapsed() < ALPN_TTL);
            if p.h2.len() >= ALPN_MAX {
                return;
            }
        }
        p.h2.insert((server, sni.map(str::to_owned)), (h2, Instant::now()));
    });
}

/// Whether `server` (for `sni`) chose `h2` when last offered it, if known.
pub(super) fn speaks_h2(server: SocketAddr, sni: Option<&str>) -> Option<bool> {
    POOL.with_borrow(|p| {
        let (h2, at) = p.h2.get(&(server, sni.map(str::to_owned)))?;
        (at.elapsed() < ALPN_TTL).then_some(*h2)
    })
}

/// Closes the connections idle for longer than [`IDLE`] (on this thread).
pub(super) fn sweep() {
    POOL.with_borrow_mut(|p| {
        let mut dropped = 0;
        p.idle.retain(|_, list| {
            let before = list.len();
            list.retain(|i| i.since.elapsed() < IDLE);
            dropped += before - list.len();
            !list.is_empty()
        });
        p.total -= dropped;
    });
}

/// Sweeps this thread's pool every second, forever (a task of its runtime).
pub(super) async fn sweeper() {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        sweep();
    }
}

/// Idle connections on this thread.
#[cfg(test)]
fn idle_count() -> usize {
    POOL.with_borrow(|p| p.total)
}

/// True when nothing has arrived on an idle connection: no end of stream, no error, no
/// bytes (a server sends nothing unasked on HTTP/1.1; TLS post-handshake messages such as
/// session tickets are taken by rustls and are not application bytes).
fn open<S: AsyncRead + Unpin>(conn: &mut S) -> bool {
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    let mut cx = Context::from_waker(Waker::noop());
    matches!(Pin::new(conn).poll_read(&mut cx, &mut buf), Poll::Pending)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_connection_is_open_until_its_peer_speaks_or_closes() {
        let (mut a, mut b) = tokio::io::duplex(64);
        assert!(open(&mut a), "idle");
        b.write_all(b"x").await.unwrap();
        assert!(!open(&mut a), "unexpected bytes: not reusable");
        let (mut a, b) = tokio::io::duplex(64);
        drop(b);
        assert!(!open(&mut a), "closed by the peer");
    }

    #[test]
    fn an_empty_pool_gives_nothing() {
        let key = Key {
            client: "10.20.1.10".parse().unwrap(),
            server: "198.51.100.10:443".parse().unwrap(),
            sni: Some("api.openai.com".into()),
        };
        assert!(take(&key).is_none());
        sweep();
        assert_eq!(idle_count(), 0);
    }

    #[test]
    fn what_a_server_chose_is_remembered_per_name() {
        let server: SocketAddr = "198.51.100.11:443".parse().unwrap();
        assert_eq!(speaks_h2(server, Some("files.openai.com")), None);
        note_h2(server, Some("files.openai.com"), true);
        assert_eq!(speaks_h2(server, Some("files.openai.com")), Some(true));
        assert_eq!(speaks_h2(server, Some("other.example")), None);
        note_h2(server, Some("files.openai.com"), false);
        assert_eq!(speaks_h2(server, Some("files.openai.com")), Some(false));
    }
}
