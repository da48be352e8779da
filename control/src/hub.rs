//! Where newly stored records go besides the store: the live tail (`GET /v1/flows/stream`)
//! and the syslog exporter. Publishing never blocks the link: a slow tail reader skips ahead
//! (and is told how many it missed), a full exporter queue drops and counts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::Value;
use tokio::sync::{broadcast, mpsc};

use crate::record::{RecordKind, Row};

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
    /// Per verdict, for flow records [0] and request records [1].
    by_verdict: [BTreeMap<String, u64>; 2],
    by_detector: BTreeMap<String, u64>,
    /// Requests and tokens of request records, by (identity, user, model).
    usage: BTreeMap<(String, String, String), Usage>,
}

/// Most (identity, user, model) series counted; the rest add up under `other`.
pub const MAX_USAGE_SERIES: usize = 10_000;

/// What the request records of one (identity, user, model) add up to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Requests.
    pub requests: u64,
    /// Input tokens.
    pub input: u64,
    /// Output tokens.
    pub output: u64,
    /// Cached input tokens.
    pub cached: u64,
}

/// Adds `n` to `key`'s count (allocating the key only the first time it is seen).
fn bump(map: &mut BTreeMap<String, u64>, key: &str, n: u64) {
    match map.get_mut(key) {
        Some(c) => *c += n,
        None => {
            map.insert(key.to_owned(), n);
        }
    }
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
        let kinds = ["flow", "request"].into_iter().zip(&c.by_verdict);
        kinds
            .flat_map(|(kind, m)| m.iter().map(move |(v, n)| ((kind.to_owned(), v.clone()), *n)))
            .collect()
    }

    /// DLP findings in stored request records since start, by detector.
    pub fn by_detector(&self) -> Vec<(String, u64)> {
        let c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        c.by_detector.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Requests and tokens stored since start, by (identity, user, model).
    pub fn usage(&self) -> Vec<((String, String, String), Usage)> {
        let c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        c.usage.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// A new tail subscription.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Value>> {
        self.tail.subscribe()
    }

    /// Publishes a record control made and stored (a `discovery`): to the live tail and the
    /// exporter.
    pub fn publish_value(&self, v: Value) {
        self.published[2].fetch_add(1, Ordering::Relaxed);
        let v = Arc::new(v);
        if let Some(q) = &self.syslog
            && q.try_send(v.clone()).is_err()
        {
            self.syslog_dropped.fetch_add(1, Ordering::Relaxed);
        }
        let _ = self.tail.send(v);
    }

    /// Publishes a record stored for the first time. The live tail and the exporter get it
    /// as a value only when someone reads them: with nobody tailing and no exporter, a
    /// record costs two counters here.
    pub fn publish(&self, r: &Row<'_>) {
        let kind = match r.kind {
            RecordKind::Flow => 0,
            RecordKind::Request => 1,
            RecordKind::Stats | RecordKind::Alarm | RecordKind::Recording | RecordKind::Other => 2,
        };
        self.published[kind].fetch_add(1, Ordering::Relaxed);
        if kind == 2 {
            return;
        }
        {
            let mut c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
            bump(&mut c.by_verdict[kind], r.verdict.as_deref().unwrap_or(""), 1);
            for (d, n) in &r.findings {
                bump(&mut c.by_detector, d, *n);
            }
            if kind == 1 {
                let part =
                    |v: &Option<std::borrow::Cow<'_, str>>| v.as_deref().unwrap_or("").to_owned();
                let mut key = (part(&r.identity), part(&r.user), part(&r.model));
                if !c.usage.contains_key(&key) && c.usage.len() >= MAX_USAGE_SERIES {
                    key = ("other".into(), "other".into(), "other".into());
                }
                let u = c.usage.entry(key).or_default();
                u.requests += 1;
                u.input = u.input.saturating_add(r.tokens.input);
                u.output = u.output.saturating_add(r.tokens.output);
                u.cached = u.cached.saturating_add(r.tokens.cached);
            }
        }
        if self.syslog.is_none() && self.tail.receiver_count() == 0 {
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(&r.json) else { return };
        let v = Arc::new(v);
        if let Some(q) = &self.syslog
            && q.try_send(v.clone()).is_err()
        {
            self.syslog_dropped.fetch_add(1, Ordering::Relaxed);
        }
        let _ = self.tail.send(v);
    }
}
