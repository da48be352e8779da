//! Control's side of the data-plane link (protocol in [`sluice_link`]): a Unix socket the data
//! planes of control's host connect to, and a TCP listener with mutual TLS for the fleet's
//! (`link_tls.rs`, ARCHITECTURE.md "The fleet"). Each connection ([`conn`]) says hello, gets
//! the current rule set and identity feed, then streams records, which are stored
//! (de-duplicated by data plane and sequence number), acknowledged, and published to the live
//! tail and the syslog exporter. This module keeps what every connection shares ([`Links`]):
//! rule pushes and identity changes go down every connection; a rule push waits (bounded)
//! for the answers.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use sluice_link::{Down, Identity};
use tokio::net::UnixListener;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::api::AppState;
use crate::keystore::KeyPush;

/// What control knows of one data plane.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DataplaneStatus {
    /// Its name.
    pub name: String,
    /// Connected now.
    pub connected: bool,
    /// How: `unix` (control's host), or `tls` from an address with an enrolled certificate.
    pub transport: &'static str,
    /// The peer's address (TLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// Unix ms of the last connect or disconnect.
    pub since_ms: u64,
    /// Rule-set version it enforces (as it last acknowledged; none after it loaded a local
    /// rule file).
    pub policy_version: Option<i64>,
    /// Hex SHA-256 of the rule text it enforces, as it last said.
    pub policy_sha256: Option<String>,
    /// Whether that is the text of control's current rule set (none: control has none);
    /// false flags a data plane that enforces something else, e.g. after a local SIGHUP.
    pub policy_current: Option<bool>,
    /// Why it refused the last push, if it did.
    pub policy_error: Option<String>,
    /// Identity-feed generation it acknowledged, and how many entries.
    pub identities: Option<(u64, usize)>,
    /// Key generation it acknowledged, and how many provider keys it holds.
    pub keys: Option<(u64, usize)>,
    /// Id of the DLP salt it hashes findings with, as it last acknowledged.
    pub dlp_salt: Option<String>,
    /// Records received on this connection (replays included).
    pub records_received: u64,
    /// Highest sequence number received.
    pub last_seq: Option<u64>,
    /// Its last statistics record (counters, spool depth, emitted records).
    pub stats: Option<Value>,
}

/// Who is at the other end of a link connection.
#[derive(Debug, Clone)]
pub(crate) enum Peer {
    /// The Unix socket (mode 0600: root on control's host).
    Local,
    /// Over TCP, with the fleet certificate issued to `name` (checked not revoked).
    Enrolled {
        /// The name the certificate was issued for: the only one its hello may say.
        name: String,
        /// Hex SHA-256 of the certificate (checked again once the session is in place).
        sha256: String,
        /// The peer's address.
        remote: std::net::SocketAddr,
    },
}

#[derive(Debug)]
pub(crate) struct Session {
    conn: u64,
    /// Enrolled over TLS (revocation closes it).
    enrolled: bool,
    /// Told when control closes the session (its certificate was revoked).
    closer: Arc<Notify>,
    pub(crate) tx: mpsc::UnboundedSender<Down>,
    waiters: Vec<(i64, oneshot::Sender<Option<String>>)>,
    feed_waiters: Vec<(u64, oneshot::Sender<usize>)>,
    key_waiters: Vec<(u64, oneshot::Sender<usize>)>,
}

/// The outcome of a rule push at one data plane.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PushResult {
    /// The data plane.
    pub dataplane: String,
    /// `applied`, `refused` or `no answer`; `offline` for an enrolled data plane that is not
    /// connected (it gets the current rules when it connects).
    pub status: &'static str,
    /// Why it refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The connected data planes.
#[derive(Debug, Default)]
pub struct Links {
    pub(crate) sessions: Mutex<HashMap<String, Session>>,
    status: Mutex<HashMap<String, DataplaneStatus>>,
    next_conn: AtomicU64,
    generation: AtomicU64,
    key_generation: AtomicU64,
    /// TLS peers refused after their handshake (a certificate not issued here, or revoked).
    pub refused: AtomicU64,
}

/// Unix ms now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Unix seconds now.
pub fn now_s() -> u64 {
    now_ms() / 1000
}

macro_rules! lock {
    ($m:expr) => {
        $m.lock().unwrap_or_else(PoisonError::into_inner)
    };
}

impl Links {
    /// Every data plane seen since control started, by name.
    pub fn status(&self) -> Vec<DataplaneStatus> {
        let mut v: Vec<_> = lock!(self.status).values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Number of data planes connected now.
    pub fn connected(&self) -> usize {
        lock!(self.sessions).len()
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut DataplaneStatus)) {
        let mut st = lock!(self.status);
        let e = st
            .entry(name.to_owned())
            .or_insert_with(|| DataplaneStatus { name: name.to_owned(), ..Default::default() });
        f(e);
    }

    /// Sends `msg` to every connected data plane, registering a waiter for its answer with
    /// `register`, then collects the answers until `wait` has passed (one deadline for all).
    async fn fan_out<T>(
        &self,
        msg: &Down,
        wait: Duration,
        register: impl Fn(&mut Session, oneshot::Sender<T>),
    ) -> Vec<(String, Option<T>)> {
        let mut pending = Vec::new();
        {
            let mut sessions = lock!(self.sessions);
            for (name, s) in sessions.iter_mut() {
                let (tx, rx) = oneshot::channel();
                if s.tx.send(msg.clone()).is_ok() {
                    register(s, tx);
                    pending.push((name.clone(), rx));
                }
            }
        }
        let deadline = tokio::time::Instant::now() + wait;
        let mut out = Vec::new();
        for (name, rx) in pending {
            out.push((name, tokio::time::timeout_at(deadline, rx).await.ok().and_then(Result::ok)));
        }
        out
    }

    /// Sends a rule set to every connected data plane and waits up to `wait` for their
    /// answers.
    pub async fn push_policy(&self, version: i64, text: &str, wait: Duration) -> Vec<PushResult> {
        let msg = Down::Policy { version, text: text.to_owned() };
        let answers = self.fan_out(&msg, wait, |s, tx| s.waiters.push((version, tx))).await;
        answers
            .into_iter()
            .map(|(dataplane, a)| {
                let (status, error) = match a {
                    Some(None) => ("applied", None),
                    Some(Some(e)) => ("refused", Some(e)),
                    None => ("no answer", None),
                };
                PushResult { dataplane, status, error }
            })
            .collect()
    }

    /// A new key generation, after the change it numbers is stored: above every earlier one,
    /// across restarts too (at least the time in ms), since a data plane keeps the highest it
    /// took and ignores older pushes (two pushes may cross on their way).
    fn next_key_generation(&self) -> u64 {
        let now = now_ms();
        let mut g = self.key_generation.load(Ordering::SeqCst);
        loop {
            let next = (g + 1).max(now);
            match self.key_generation.compare_exchange(g, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return next,
                Err(seen) => g = seen,
            }
        }
    }

    /// The key generation of what is stored now, read before the keys are (for a connect).
    fn current_key_generation(&self) -> u64 {
        match self.key_generation.load(Ordering::SeqCst) {
            0 => self.next_key_generation(),
            g => g,
        }
    }

    /// Sends the brokered keys to every connected data plane and waits up to `wait` for
    /// their acknowledgements: once answered, the next request uses them. Call it after the
    /// change is stored, with a snapshot read after it.
    pub async fn push_keys_acked(&self, push: KeyPush, wait: Duration) -> Vec<PushResult> {
        let generation = self.next_key_generation();
        let KeyPush { keys, virtual_keys, dlp_salt } = push;
        let msg = Down::Keys { generation, keys, virtual_keys, dlp_salt };
        let answers = self.fan_out(&msg, wait, |s, tx| s.key_waiters.push((generation, tx))).await;
        acknowledged(answers)
    }

    /// Sends a reviewer's decision to every connected data plane (the one holding the request
    /// forwards or refuses it; an approval for a while applies on each); how many got it.
    pub fn push_decision(&self, decision: &sluice_link::Decision) -> usize {
        lock!(self.sessions)
            .values()
            .filter(|s| s.tx.send(Down::Decision { decision: decision.clone() }).is_ok())
            .count()
    }

    /// Closes the session of `name` if it came over TLS (its certificate was revoked): it is
    /// told why, and its connection ends. Whether there was one.
    pub fn close_enrolled(&self, name: &str, reason: &str) -> bool {
        let s = {
            let mut sessions = lock!(self.sessions);
            if !sessions.get(name).is_some_and(|s| s.enrolled) {
                return false;
            }
            sessions.remove(name)
        };
        let Some(s) = s else { return false };
        let _ = s.tx.send(Down::Refused { reason: reason.to_owned() });
        s.closer.notify_one();
        true
    }

    /// Sends the fleet's quota counts to every connected data plane (no answer expected).
    pub fn push_usage(&self, counts: &[sluice_link::UsageCount]) {
        for s in lock!(self.sessions).values() {
            let _ = s.tx.send(Down::Usage { counts: counts.to_vec() });
        }
    }

    /// Sends the identity feed to every connected data plane without waiting (expiry).
    pub fn push_identities(&self, entries: &[Identity]) -> usize {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let sessions = lock!(self.sessions);
        sessions
            .values()
            .filter(|s| {
                s.tx.send(Down::Identities { generation, entries: entries.to_vec() }).is_ok()
            })
            .count()
    }

    /// Sends the identity feed to every connected data plane and waits up to `wait` for
    /// their acknowledgements.
    pub async fn push_identities_acked(
        &self,
        entries: &[Identity],
        wait: Duration,
    ) -> Vec<PushResult> {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let msg = Down::Identities { generation, entries: entries.to_vec() };
        let answers = self.fan_out(&msg, wait, |s, tx| s.feed_waiters.push((generation, tx))).await;
        acknowledged(answers)
    }
}

/// Each data plane's answer to a push that cannot be refused: applied, or no answer in time.
fn acknowledged<T>(answers: Vec<(String, Option<T>)>) -> Vec<PushResult> {
    answers
        .into_iter()
        .map(|(dataplane, a)| PushResult {
            dataplane,
            status: if a.is_some() { "applied" } else { "no answer" },
            error: None,
        })
        .collect()
}

mod conn;
pub(crate) use conn::connection;

/// Binds `path` (replacing a stale socket file; mode 0600) and serves data planes forever.
pub async fn serve(path: &Path, state: Arc<AppState>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    tracing::info!(socket = %path.display(), "data-plane link listening");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("link accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, Peer::Local, state).await {
                tracing::warn!("data-plane link: {e}");
            }
        });
    }
}
