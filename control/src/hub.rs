//! Where newly stored records go besides the store: the live tail (`GET /v1/flows/stream`)
//! and the syslog exporter. Publishing never blocks the link: a slow tail reader skips ahead
//! (and is told how many it missed), a full exporter queue drops and counts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::Value;
use tokio::sync::{broadcast, mpsc};

/// Records queued for the syslog exporter at most.
pub const SYSLOG_QUEUE: usize = 65_536;

/// The fan-out of stored records.
#[derive(Debug)]
pub struct Hub {
    tail: broadcast::Sender<Arc<Value>>,
    syslog: Option<mpsc::Sender<Arc<Value>>>,
    /// Records the syslog exporter never got (its queue was full).
    pub syslog_dropped: AtomicU64,
    /// Records published (stored for the first time) since start, by kind.
    pub published: [AtomicU64; 3],
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    by_verdict: BTreeMap<(String, String), u64>,
    by_detector: BTreeMap<String, u64>,
}

impl Hub {
    /// A hub; with `syslog`, records also go to that queue.
    pub fn new(syslog: Option<mpsc::Sender<Arc<Value>>>) -> Hub {
        Hub {
            tail: broadcast::channel(4096).0,
            syslog,
            syslog_dropped: AtomicU64::new(0),
            published: Default::default(),
            counts: Mutex::default(),
        }
    }

    /// Flow and request records stored since start, by (kind, verdict).
    pub fn by_verdict(&self) -> Vec<((String, String), u64)> {
        let c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        c.by_verdict.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// DLP findings in stored request records since start, by detector.
    pub fn by_detector(&self) -> Vec<(String, u64)> {
        let c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        c.by_detector.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// A new tail subscription.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Value>> {
        self.tail.subscribe()
    }

    /// Publishes a record stored for the first time.
    pub fn publish(&self, r: Arc<Value>) {
        let kind = match r.get("type").and_then(Value::as_str) {
            Some("flow") => 0,
            Some("request") => 1,
            _ => 2,
        };
        self.published[kind].fetch_add(1, Ordering::Relaxed);
        if kind == 2 {
            return;
        }
        {
            let mut c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
            let text = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
            *c.by_verdict.entry((text("type"), text("verdict"))).or_default() += 1;
            for f in r.get("dlp_findings").and_then(Value::as_array).into_iter().flatten() {
                if let Some(d) = f.get("detector").and_then(Value::as_str) {
                    let n = f.get("count").and_then(Value::as_u64).unwrap_or(1);
                    *c.by_detector.entry(d.to_owned()).or_default() += n;
                }
            }
        }
        if let Some(q) = &self.syslog
            && q.try_send(r.clone()).is_err()
        {
            self.syslog_dropped.fetch_add(1, Ordering::Relaxed);
        }
        let _ = self.tail.send(r);
    }
}
