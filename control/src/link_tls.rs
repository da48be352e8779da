//! The link over TCP for data planes on other hosts (ARCHITECTURE.md, "The fleet"): mutual
//! TLS 1.3 with the fleet CA, then the same protocol as the Unix socket. A peer is admitted
//! only with a certificate control issued (`fleet.db`) and has not revoked, and only under the
//! name it was issued for. Until `sluicectl fleet init` makes the CA, connections are closed.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use sluice_intercept::admit::Admission;
use sluice_link::{Down, encode};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::link::{Peer, connection};
use crate::state::AppState;

/// A TLS handshake and the certificate's check finish within this, or the connection goes.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// Link connections (handshakes included) at most from one source (an address, or an IPv6
/// /64: many data planes may share a NAT address), and in all.
const PER_ADDRESS: usize = 64;
const TOTAL: usize = 4096;
/// Handshakes in progress at most: peers without a certificate can hold no more than these
/// (each for at most [`HANDSHAKE`]), and never the slots of data planes already admitted.
const HANDSHAKES: usize = 64;

/// The source an address counts as: itself, or its /64 for IPv6.
fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
    }
}

/// Serves the fleet's data planes on `listener` forever.
pub async fn serve(listener: TcpListener, state: Arc<AppState>) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(listen = %addr, "data-plane link listening (TCP, mutual TLS with the fleet CA)");
    // Connections by source (`source`) and in all, released when they end.
    let open = Admission::new(TOTAL, PER_ADDRESS);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES));
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("link accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = open.admit(source(remote.ip())) else {
            tracing::warn!(%remote, "link: too many connections, closed");
            continue;
        };
        let Ok(handshake) = handshakes.clone().try_acquire_owned() else {
            tracing::warn!(%remote, "link: too many handshakes in progress, closed");
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = admit(stream, remote, state, handshake).await {
                tracing::warn!(%remote, "data-plane link (TLS): {e}");
            }
        });
    }
}

/// The handshake, the certificate's check (holding a `handshake` permit), then the link.
async fn admit(
    stream: TcpStream,
    remote: SocketAddr,
    state: Arc<AppState>,
    handshake: tokio::sync::OwnedSemaphorePermit,
) -> std::io::Result<()> {
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
    drop(handshake);
    let reason = match member {
        Some(m) if m.revoked_ms.is_none() => {
            let peer = Peer::Enrolled { name: m.name, sha256, remote };
            return connection(tls, peer, state).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_bounded_and_released_whole() {
        let open = Admission::new(TOTAL, PER_ADDRESS);
        let take = |ip: IpAddr| open.admit(source(ip)).ok();
        let a: IpAddr = [10, 0, 0, 1].into();
        let slots: Vec<_> = (0..PER_ADDRESS).filter_map(|_| take(a)).collect();
        assert_eq!(slots.len(), PER_ADDRESS);
        assert!(take(a).is_none(), "one source past its bound");
        assert!(take([10, 0, 0, 2].into()).is_some(), "another source is not");
        // An IPv6 /64 is one source.
        let v6 = |last: u16| IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, last]);
        let more: Vec<_> = (0..PER_ADDRESS as u16).filter_map(|i| take(v6(i))).collect();
        assert_eq!(more.len(), PER_ADDRESS);
        assert!(take(v6(999)).is_none());
        drop(slots);
        drop(more);
        // Released whole: each source takes its bound again.
        let again: Vec<_> = (0..PER_ADDRESS).filter_map(|_| take(a)).collect();
        assert_eq!(again.len(), PER_ADDRESS);
        let again: Vec<_> = (0..PER_ADDRESS as u16).filter_map(|i| take(v6(i))).collect();
        assert_eq!(again.len(), PER_ADDRESS);
    }
}
