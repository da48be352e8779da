//! The link over TCP for data planes on other hosts (ARCHITECTURE.md, "The fleet"): mutual
//! TLS 1.3 with the fleet CA, then the same protocol as the Unix socket. A peer is admitted
//! only with a certificate control issued (`fleet.db`) and has not revoked, and only under the
//! name it was issued for. Until `sluicectl fleet init` makes the CA, connections are closed.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sluice_link::{Down, encode};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::link::{Peer, connection};
use crate::state::AppState;

/// A TLS handshake and the certificate's check finish within this, or the connection goes.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// Link connections (handshakes included) at most from one address, and in all.
const PER_ADDRESS: usize = 16;
const TOTAL: usize = 256;

/// Open connections by address; an entry is released when its connection ends.
#[derive(Debug, Default)]
struct Open(Mutex<HashMap<IpAddr, usize>>);

struct Slot<'a>(&'a Open, IpAddr);

impl Open {
    fn take(&self, ip: IpAddr) -> Option<Slot<'_>> {
        let mut m = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let total: usize = m.values().sum();
        let n = m.entry(ip).or_default();
        if *n >= PER_ADDRESS || total >= TOTAL {
            return None;
        }
        *n += 1;
        Some(Slot(self, ip))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut m = self.0.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = m.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

/// Serves the fleet's data planes on `listener` forever.
pub async fn serve(listener: TcpListener, state: Arc<AppState>) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(listen = %addr, "data-plane link listening (TCP, mutual TLS with the fleet CA)");
    let open: &'static Open = Box::leak(Box::default());
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("link accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = open.take(remote.ip()) else {
            tracing::warn!(%remote, "link: too many connections, closed");
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = admit(stream, remote, state).await {
                tracing::warn!(%remote, "data-plane link (TLS): {e}");
            }
        });
    }
}

/// The handshake, the certificate's check, then the link.
async fn admit(stream: TcpStream, remote: SocketAddr, state: Arc<AppState>) -> std::io::Result<()> {
    let Some(cfg) = state.fleet_tls() else {
        return Err(std::io::Error::other(
            "closed: the fleet has no CA yet (`sluicectl fleet init`)",
        ));
    };
    stream.set_nodelay(true)?;
    let mut tls =
        tokio::time::timeout(HANDSHAKE, tokio_rustls::TlsAcceptor::from(cfg).accept(stream))
            .await
            .map_err(|_| std::io::Error::other("no TLS handshake within 10 s"))??;
    let sha256 = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| sluice_certs::fleet::fingerprint(c))
        .ok_or_else(|| std::io::Error::other("no client certificate"))?;
    let st = state.clone();
    let sha = sha256.clone();
    let member = tokio::task::spawn_blocking(move || {
        st.fleet.lock().unwrap_or_else(PoisonError::into_inner).member(&sha)
    })
    .await
    .map_err(std::io::Error::other)?
    .map_err(std::io::Error::other)?;
    let reason = match member {
        Some(m) if m.revoked_ms.is_none() => {
            return connection(tls, Peer::Enrolled { name: m.name, remote }, state).await;
        }
        Some(m) => format!("the certificate of {} ({}) is revoked", m.name, short(&sha256)),
        None => format!("certificate {} was not issued by this control", short(&sha256)),
    };
    state.links.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut buf = Vec::new();
    if encode(&Down::Refused { reason: reason.clone() }, &mut buf).is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            tls.write_all(&buf).await?;
            tls.shutdown().await
        })
        .await;
    }
    Err(std::io::Error::other(format!("refused: {reason}")))
}

fn short(sha256: &str) -> &str {
    sha256.get(..16).unwrap_or(sha256)
}
