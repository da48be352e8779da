//! The joins between the packet engine and the interception engine (ARCHITECTURE.md,
//! "Processes and crates"): [`EngineHandle`] is the interception engine's
//! [`DivertHandle`] over the shared packet engine (short critical sections: one lookup, one
//! port reservation and a note or two per connection), and [`RequestQueue`] is its
//! [`RecordSink`], which the record writer drains with the engine's own records, without
//! taking the packet engine's lock per request.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use sluice_dataplane::engine::{Clock, Engine};
use sluice_dataplane::fastpath::FastPath;
use sluice_dataplane::flow::{Class, Flow};
use sluice_intercept::record::FlowNote;
use sluice_intercept::{DivertHandle, DivertedConn, RecordSink, RequestRecord};

use crate::output::Wake;

/// The packet engine as the interception engine sees it.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    engine: Arc<Mutex<Engine>>,
    clock: Clock,
    fast: Arc<OnceLock<Arc<FastPath>>>,
}

impl EngineHandle {
    /// A handle over `engine`, timed by `clock` (the packet threads' clock).
    pub fn new(engine: Arc<Mutex<Engine>>, clock: Clock) -> Self {
        EngineHandle { engine, clock, fast: Arc::default() }
    }

    /// Applies the kernel NAT of upstream connections at once, from their port reservation:
    /// their SYN then already takes the fast path.
    pub fn use_fast_path(&self, fast: Arc<FastPath>) {
        let _ = self.fast.set(fast);
    }

    /// Runs `f`, then hands what it offered the fast path to the kernel (engine still locked).
    fn with_sync<T>(&self, f: impl FnOnce(&mut Engine) -> T) -> T {
        let now = self.clock.now();
        self.with(|e| {
            let out = f(e);
            if let Some(fp) = self.fast.get() {
                fp.sync(e, &mut Vec::new(), now);
            }
            out
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Engine) -> T) -> T {
        f(&mut self.engine.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Writes a note into a flow: only what the note carries changes.
fn apply(flow: &mut Flow, note: &FlowNote) {
    if let Some(d) = &note.decision {
        flow.identity = Some(d.identity.as_str().into());
        flow.user = d.user.as_deref().map(Into::into);
    }
    classify(&mut flow.class, note);
}

/// Writes a note into a flow's classification: only what the note carries changes.
pub(crate) fn classify(c: &mut Class, note: &FlowNote) {
    if let Some(h) = &note.hello {
        c.sni.clone_from(&h.sni);
        c.alpn = h.alpn.clone().into();
        c.ja4 = Some(h.ja4.as_str().into());
        c.tls_version = Some(h.tls_version);
        c.ech = h.ech_note();
    }
    if let Some(d) = &note.decision {
        c.category = d.category.as_deref().map(Into::into);
        c.rule = d.rule.as_deref().map(Into::into);
        c.app.clone_from(&d.app);
        c.app_evidence = d.app_evidence;
    }
    if let Some(a) = note.action {
        c.action = Some(a);
    }
    if let Some(r) = note.reason {
        c.reason = Some(r);
    }
    if let Some(p) = note.alpn_negotiated {
        c.alpn_negotiated = Some(p);
    }
}

impl DivertHandle for EngineHandle {
    fn lookup(&self, client: SocketAddr) -> Option<DivertedConn> {
        self.with(|e| e.diverted(client))
            .map(|d| DivertedConn { original_dst: d.original_dst, client_mac: d.client_mac })
    }

    fn open_upstream(&self, client: SocketAddr, server: SocketAddr) -> Option<u16> {
        let now = self.clock.now();
        self.with_sync(|e| e.open_upstream(client, server, now))
    }

    fn release_upstream(&self, port: u16) {
        self.with_sync(|e| e.release_upstream(port));
    }

    fn annotate(&self, client: SocketAddr, note: FlowNote) {
        self.with(|e| e.annotate_diverted(client, |f: &mut Flow| apply(f, &note)));
    }
}

/// Request records waiting for the record writer, which each one wakes.
#[derive(Debug)]
pub struct RequestQueue {
    queue: Mutex<Vec<RequestRecord>>,
    wake: Arc<Wake>,
}

impl RequestQueue {
    /// A queue that wakes the record writer through `wake` for each record.
    pub fn new(wake: Arc<Wake>) -> Self {
        RequestQueue { queue: Mutex::default(), wake }
    }

    /// Takes what is queued.
    pub fn take(&self) -> Vec<RequestRecord> {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl RecordSink for RequestQueue {
    fn request(&self, record: RequestRecord) {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner).push(record);
        self.wake.notify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_intercept::record::{DecisionNote, HelloNote};

    #[test]
    fn a_note_changes_only_what_it_carries() {
        let mut c = Class { sni: Some("old".into()), rule: Some("r0".into()), ..Class::default() };
        classify(&mut c, &FlowNote::verdict("block", "why"));
        assert_eq!((c.sni.as_deref(), c.rule.as_deref()), (Some("old"), Some("r0")));
        assert_eq!((c.action, c.reason), (Some("block"), Some("why")));
        let note = FlowNote {
            hello: Some(HelloNote {
                sni: Some("api.openai.com".into()),
                alpn: vec!["h2".into()],
                ja4: "t13d".into(),
                tls_version: "1.3",
                ech: false,
            }),
            decision: Some(DecisionNote { identity: "finance".into(), ..DecisionNote::default() }),
            alpn_negotiated: Some("http/1.1"),
            ..FlowNote::default()
        };
        classify(&mut c, &note);
        assert_eq!(c.sni.as_deref(), Some("api.openai.com"));
        assert_eq!(c.rule.as_deref(), None);
        assert_eq!((c.alpn_negotiated, c.action), (Some("http/1.1"), Some("block")));
    }
}
