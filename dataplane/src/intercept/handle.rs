//! [`DivertHandle`] over the shared packet engine: the interception engine's short critical
//! sections (one lookup or one port reservation per connection, one record per request).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use super::DivertHandle;
use crate::engine::{Clock, DivertedConn, Engine};
use crate::fastpath::FastPath;
use crate::flow::Class;
use crate::record::Record;

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

impl DivertHandle for EngineHandle {
    fn lookup(&self, client: SocketAddr) -> Option<DivertedConn> {
        self.with(|e| e.diverted(client))
    }

    fn open_upstream(&self, client: SocketAddr, server: SocketAddr) -> Option<u16> {
        let now = self.clock.now();
        self.with_sync(|e| e.open_upstream(client, server, now))
    }

    fn release_upstream(&self, port: u16) {
        self.with_sync(|e| e.release_upstream(port));
    }

    fn annotate(&self, client: SocketAddr, note: &(dyn Fn(&mut Class) + Sync)) {
        self.with(|e| e.annotate_diverted(client, note));
    }

    fn emit(&self, record: Record) {
        self.with(|e| e.push_record(record));
    }
}
