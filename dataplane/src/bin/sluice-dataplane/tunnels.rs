//! The explicit proxy's flows (ARCHITECTURE.md, "Explicit proxy"): the packet engine never
//! sees a proxy's tunnels, so what the interception engine learns of each (its
//! [`DivertHandle`] notes) is kept here, and the tunnel's flow record is made when it ends, in
//! the packet engine's shape with `"via": "proxy"` (bytes counted, packets not).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use sluice_dataplane::flow::{Class, EndReason, Name, Verdict};
use sluice_dataplane::record::FlowRecord;
use sluice_dataplane::wire::frame::Proto;
use sluice_intercept::record::{FlowNote, now_ms};
use sluice_intercept::{DivertHandle, DivertedConn};

use crate::handle::classify;
use crate::output::Wake;

/// One open tunnel.
#[derive(Debug)]
struct Tunnel {
    id: u64,
    server: SocketAddr,
    host: String,
    first_unix: u64,
    identity: Option<Name>,
    user: Option<Name>,
    class: Class,
}

/// The proxy's open tunnels, and the records of those that ended.
#[derive(Debug)]
pub struct Tunnels {
    open: Mutex<HashMap<SocketAddr, Tunnel>>,
    done: Mutex<Vec<FlowRecord>>,
    next_id: AtomicU64,
    wake: Arc<Wake>,
}

macro_rules! lock {
    ($m:expr) => {
        $m.lock().unwrap_or_else(PoisonError::into_inner)
    };
}

impl Tunnels {
    /// No tunnel yet; the record writer is woken through `wake` for each that ends.
    pub fn new(wake: Arc<Wake>) -> Self {
        Tunnels { open: Mutex::default(), done: Mutex::default(), next_id: AtomicU64::new(1), wake }
    }

    /// The records of the tunnels that ended since the last call.
    pub fn take(&self) -> Vec<FlowRecord> {
        std::mem::take(&mut *lock!(self.done))
    }

    /// Tunnels open now.
    pub fn open(&self) -> usize {
        lock!(self.open).len()
    }
}

impl DivertHandle for Tunnels {
    fn lookup(&self, _client: SocketAddr) -> Option<DivertedConn> {
        // The proxy's front gives the engine each tunnel's destination itself.
        None
    }

    fn open_upstream(&self, _client: SocketAddr, _server: SocketAddr) -> Option<u16> {
        None
    }

    fn release_upstream(&self, _port: u16) {}

    fn annotate(&self, client: SocketAddr, note: FlowNote) {
        if let Some(t) = lock!(self.open).get_mut(&client) {
            if let Some(d) = &note.decision {
                t.identity = Some(d.identity.as_str().into());
                t.user = d.user.as_deref().map(Into::into);
            }
            classify(&mut t.class, &note);
        }
    }

    fn tunnel_opened(&self, client: SocketAddr, server: SocketAddr, host: &str) {
        let t = Tunnel {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            server,
            host: host.to_owned(),
            first_unix: now_ms(),
            identity: None,
            user: None,
            class: Class::default(),
        };
        lock!(self.open).insert(client, t);
    }

    fn tunnel_closed(&self, client: SocketAddr, from_client: u64, to_client: u64) {
        let Some(mut t) = lock!(self.open).remove(&client) else { return };
        // The name the client asked for, when no hello named one (plain HTTP, no SNI).
        if t.class.sni.is_none() && !t.host.is_empty() {
            t.class.sni = Some(t.host.clone());
        }
        self.record(client, t, from_client, to_client);
    }

    fn tunnel_refused(
        &self,
        client: SocketAddr,
        server: Option<SocketAddr>,
        host: &str,
        reason: &'static str,
    ) {
        let class = Class {
            sni: (!host.is_empty()).then(|| host.to_owned()),
            action: Some("block"),
            reason: Some(reason),
            ..Class::default()
        };
        let t = Tunnel {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            server: server.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
            host: host.to_owned(),
            first_unix: now_ms(),
            identity: None,
            user: None,
            class,
        };
        self.record(client, t, 0, 0);
    }
}

impl Tunnels {
    /// Makes the flow record of tunnel `t` from `client`. What passed is allowed (spliced,
    /// inspected or forwarded); a tunnel refused, or that ended before any decision, is
    /// blocked.
    fn record(&self, client: SocketAddr, t: Tunnel, from_client: u64, to_client: u64) {
        let now = now_ms();
        let verdict = match t.class.action {
            Some("allow" | "inspect") => Verdict::Allow,
            _ => Verdict::Block,
        };
        let record = FlowRecord {
            kind: "flow",
            event: "end",
            end_reason: Some(EndReason::Closed),
            flow_id: t.id,
            ts_ms: now,
            first_seen_ms: t.first_unix,
            last_seen_ms: now,
            proto: Proto::Tcp,
            src: client.ip().to_string(),
            sport: client.port(),
            src_mac: "00:00:00:00:00:00".into(),
            dst: t.server.ip().to_string(),
            dport: t.server.port(),
            vlan: None,
            inside: true,
            via: Some("proxy"),
            identity: t.identity,
            user: t.user,
            class: t.class,
            verdict,
            pkts_out: 0,
            bytes_out: from_client,
            pkts_in: 0,
            bytes_in: to_client,
        };
        lock!(self.done).push(record);
        self.wake.notify();
    }
}
