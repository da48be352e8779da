//! The API's listener: TLS, time limits and connections per client, so slow or greedy
//! clients cannot hold the control plane. A connection must finish its TLS handshake within
//! 10 s and each request head within 10 s of the handshake or of the last response (hyper's
//! header read timeout, which needs its timer; the API speaks HTTP/1.1 only, as its ALPN
//! says, so no protocol sniffing without a time limit comes first). One
//! client address may hold at most [`PER_CLIENT`] connections, and all of them [`TOTAL`];
//! connections beyond are closed at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

/// Time for the TLS handshake.
pub const HANDSHAKE: Duration = Duration::from_secs(10);
/// Time for a request head, from the connection's first byte or from the end of the last
/// response.
pub const HEAD: Duration = Duration::from_secs(10);
/// Connections one client address may hold.
pub const PER_CLIENT: usize = 32;
/// Connections the API holds in all.
pub const TOTAL: usize = 1024;

/// Open connections, per client address.
#[derive(Debug, Default)]
pub struct Conns {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// A connection counted in [`Conns`] until dropped.
#[derive(Debug)]
pub struct Slot {
    conns: Arc<Conns>,
    ip: IpAddr,
}

impl Conns {
    /// A slot for a connection from `ip`, if the limits leave one.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let total: usize = open.values().sum();
        let mine = open.entry(ip).or_insert(0);
        if *mine >= PER_CLIENT || total >= TOTAL {
            if *mine == 0 {
                open.remove(&ip);
            }
            return None;
        }
        *mine += 1;
        Some(Slot { conns: self.clone(), ip })
    }

    /// Connections open from `ip`.
    pub fn of(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.conns.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Serves `router` over TLS on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let conns = Arc::new(Conns::default());
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = conns.admit(peer.ip()) else {
            tracing::warn!(%peer, "API connection refused: too many from this client or in all");
            continue;
        };
        let acceptor = acceptor.clone();
        let svc = router.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let tls = match tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                _ => {
                    tracing::debug!(%peer, "TLS handshake failed");
                    return;
                }
            };
            let io = TokioIo::new(tls);
            let service = hyper_util::service::TowerToHyperService::new(svc);
            // HTTP/1.1 only, as the API's ALPN says: no sniffing of the protocol from the
            // first bytes, which has no time limit (a client silent after its handshake would
            // hold the connection), so the head timeout runs from the handshake on.
            let mut b =
                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).http1_only();
            b.http1().timer(TokioTimer::new()).header_read_timeout(HEAD);
            let _ = b.serve_connection(io, service).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_client_and_in_all() {
        let c = Arc::new(Conns::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let mut held: Vec<Slot> = (0..PER_CLIENT).map(|_| c.admit(a).unwrap()).collect();
        assert!(c.admit(a).is_none(), "one more from the same client");
        let other = c.admit(b).expect("another client still gets one");
        drop(other);
        held.pop();
        assert_eq!(c.of(a), PER_CLIENT - 1);
        assert!(c.admit(a).is_some(), "a slot freed is a slot again");
        drop(held);
        assert_eq!(c.of(a), 0);
        // The total: many clients, each under its own limit.
        let many: Vec<Slot> = (0..TOTAL)
            .map(|i| {
                let ip =
                    IpAddr::from([10, (i / 65536) as u8, (i / 256 % 256) as u8, (i % 256) as u8]);
                c.admit(ip).unwrap()
            })
            .collect();
        assert!(c.admit(b).is_none(), "past the total");
        assert_eq!(c.of(b), 0, "a refused client leaves no entry");
        drop(many);
        assert!(c.admit(b).is_some());
    }
}
