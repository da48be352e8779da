//! The data plane's side of the link to `sluice-control` (protocol in [`sluice_link`]).
//!
//! One thread owns the link (control's Unix socket, or its address over mutual TLS:
//! [`connect`]): it connects (retrying with back-off while control is away), says hello, then sends what the [`Spool`] holds beyond what control has stored and
//! applies what control pushes — a rule set (compiled, swapped whole into the shared
//! [`Policy`] and written to the state directory so a restart enforces it even without
//! control) or the identity feed (swapped whole into the [`IdentityOverlay`] and kept there
//! too), the brokered keys (held in memory only) or the fleet's quota counts. Packet threads
//! never wait on any of this: they read the snapshots through `ArcSwap`.

pub mod chain;
pub mod connect;
pub mod spool;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use sluice_link::{Decoder, Down, Identity, PROTO_VERSION, Up, encode, encode_records};
use sluice_rules::catalog::ShippedOnly;
use sluice_rules::{IdentityOverlay, OverlayEntry, Policy, Severity, compile};
use tracing::{info, warn};

pub use connect::Endpoint;
pub use spool::Spool;

/// Hex SHA-256 of a rule text.
pub fn text_sha256(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The rule set in force: the shared policy snapshot, where it came from, and the state
/// directory where a pushed one is kept.
#[derive(Debug)]
pub struct Enforced {
    /// The policy the packet and interception threads read.
    pub policy: Arc<ArcSwap<Policy>>,
    /// The identity feed they read.
    pub overlay: Arc<ArcSwap<IdentityOverlay>>,
    /// What the interception engine's access controls share: the brokered provider keys and
    /// virtual keys (held in memory only: a restart waits for control to push them again)
    /// and the quota counts (raised to the fleet's when control pushes them).
    pub access: Arc<sluice_intercept::access::Access>,
    state_dir: PathBuf,
    meta: Mutex<(Option<i64>, String)>,
    /// Changes of the policy in force so far (the link tells control of each).
    changes: std::sync::atomic::AtomicU64,
}

/// A pushed rule set kept on disk: its version and text.
pub fn saved_policy(state_dir: &Path) -> Option<(i64, String)> {
    let version = std::fs::read_to_string(state_dir.join("policy.version")).ok()?;
    let text = std::fs::read_to_string(state_dir.join("policy.toml")).ok()?;
    Some((version.trim().parse().ok()?, text))
}

/// Where the pushed identity feed is kept.
const IDENTITIES: &str = "identities.json";

/// The identity feed kept on disk, if any (entries past their expiry apply to nothing: the
/// overlay checks `expires_at` at each lookup).
pub fn saved_identities(state_dir: &Path) -> Option<Vec<Identity>> {
    let text = std::fs::read(state_dir.join(IDENTITIES)).ok()?;
    match serde_json::from_slice(&text) {
        Ok(v) => Some(v),
        Err(e) => {
            warn!("the kept identity feed is unreadable, starting without it: {e}");
            None
        }
    }
}

/// Compiles a pushed rule text (includes are the shipped catalogs only, as control checked).
pub fn compile_pushed(text: &str) -> Result<Policy, String> {
    compile("pushed rules", text, &ShippedOnly).map(|c| c.policy).map_err(|d| {
        d.iter()
            .filter(|d| d.severity == Severity::Error)
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    })
}

impl Enforced {
    /// `version` is `Some` when the policy came from control; `sha256` is of its text.
    pub fn new(
        policy: Arc<ArcSwap<Policy>>,
        overlay: Arc<ArcSwap<IdentityOverlay>>,
        state_dir: &Path,
        version: Option<i64>,
        sha256: String,
    ) -> Enforced {
        Enforced {
            policy,
            overlay,
            access: Default::default(),
            state_dir: state_dir.to_owned(),
            meta: Mutex::new((version, sha256)),
            changes: Default::default(),
        }
    }

    /// Version (if pushed) and text hash of the policy in force.
    pub fn current(&self) -> (Option<i64>, String) {
        self.meta.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// How many times the policy in force changed since start.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// Replaces the policy in force by a rule file loaded locally (SIGHUP).
    pub fn set_local(&self, policy: Policy, sha256: String) {
        // Under the lock a push takes too, so what is said to be in force is what is.
        let mut meta = self.meta.lock().unwrap_or_else(PoisonError::into_inner);
        self.policy.store(Arc::new(policy));
        *meta = (None, sha256);
        self.changes.fetch_add(1, Ordering::Release);
    }

    /// Compiles and enforces a pushed rule set, then keeps it on disk. On error the policy
    /// in force stays and the error is returned.
    pub fn apply_pushed(&self, version: i64, text: &str) -> Result<(), String> {
        let sha = text_sha256(text);
        let mut meta = self.meta.lock().unwrap_or_else(PoisonError::into_inner);
        if meta.1 != sha {
            let policy = compile_pushed(text)?;
            self.policy.store(Arc::new(policy));
        }
        *meta = (Some(version), sha);
        self.changes.fetch_add(1, Ordering::Release);
        drop(meta);
        if let Err(e) = self.save(version, text) {
            warn!("keeping the pushed policy on disk failed (it is enforced): {e}");
        }
        Ok(())
    }

    fn save(&self, version: i64, text: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.state_dir)?;
        let write = |name: &str, data: &str| -> std::io::Result<()> {
            let tmp = self.state_dir.join(format!(".{name}.tmp"));
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(data.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, self.state_dir.join(name))
        };
        write("policy.toml", text)?;
        write("policy.version", &format!("{version}\n"))
    }

    /// Replaces the identity feed pushed by control, and keeps it in the state directory
    /// (`identities.json`, readable by root only) so that a restart while control is away
    /// enforces it too.
    pub fn apply_identities(&self, entries: &[Identity]) {
        self.enforce_identities(entries);
        if let Err(e) = self.save_identities(entries) {
            warn!("keeping the identity feed on disk failed (it is enforced): {e}");
        }
    }

    fn save_identities(&self, entries: &[Identity]) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(&self.state_dir)?;
        let tmp = self.state_dir.join(".identities.json.tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec(entries).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.state_dir.join(IDENTITIES))
    }

    /// Enforces the identity feed, without keeping it (the one read back at boot).
    pub fn enforce_identities(&self, entries: &[Identity]) {
        let overlay = IdentityOverlay::new(entries.iter().map(|e| {
            (
                e.ip,
                OverlayEntry {
                    user: e.user.as_str().into(),
                    groups: e.groups.iter().map(|g| g.as_str().into()).collect(),
                    expires_at: e.expires_at,
                },
            )
        }));
        self.overlay.store(Arc::new(overlay));
    }
}

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Where control is.
    pub to: Endpoint,
    /// This data plane's name.
    pub name: String,
}

/// Most records in one message, and most sent ahead of control's acknowledgements.
const BATCH: usize = 2_000;
/// Most bytes of records in one message (a single larger line goes alone).
const BATCH_BYTES: usize = 16 << 20;
const WINDOW: u64 = 20_000;
/// How a refusal by control starts its error, and the wait before asking again after one.
const REFUSED: &str = "control refused us: ";
const REFUSED_BACKOFF: Duration = Duration::from_secs(30);

/// Runs the link until `stop`: connect, serve, reconnect.
pub fn run(
    cfg: LinkConfig,
    spool: Arc<Mutex<Spool>>,
    enforced: Arc<Enforced>,
    connected: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) {
    if let Err(e) = sluice_sched::background() {
        warn!("the link thread is not (wholly) background work: {e}");
    }
    let mut backoff = Duration::from_millis(100);
    let mut last_error = String::new();
    while !stop.load(Ordering::Relaxed) {
        // A failure is said once per run of the same, not at every retry.
        let failure = match connect::connect(&cfg.to) {
            Ok(stream) => {
                info!(control = %cfg.to, "connected to control");
                let began = Instant::now();
                connected.store(true, Ordering::Relaxed);
                let r = serve(stream, &cfg, &spool, &enforced, &stop);
                connected.store(false, Ordering::Relaxed);
                // Nobody can decide now: requests that would wait are refused at once (those
                // waiting wait on, and are told to control again after a reconnect).
                enforced.access.approvals.connected.store(false, Ordering::Relaxed);
                // Back-off starts over after a session that lasted, not after a refusal
                // (a revoked certificate connects, and is refused, at once).
                if began.elapsed() > Duration::from_secs(10) {
                    backoff = Duration::from_millis(100);
                    last_error.clear();
                }
                match r {
                    Ok(()) => {
                        info!("link to control closed");
                        None
                    }
                    Err(e) => {
                        // Refused (a revoked certificate, another data plane of this name):
                        // asking again at once changes nothing, so not before a while.
                        if e.to_string().starts_with(REFUSED) {
                            backoff = backoff.max(REFUSED_BACKOFF);
                        }
                        Some(format!("link to control lost, records are spooled: {e}"))
                    }
                }
            }
            Err(e) => Some(format!("control unreachable, records are spooled: {e}")),
        };
        if let Some(msg) = failure
            && msg != last_error
        {
            warn!(control = %cfg.to, "{msg}");
            last_error = msg;
        }
        let until = Instant::now() + backoff;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if backoff < REFUSED_BACKOFF {
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

fn send(stream: &mut impl Write, msg: &Up) -> std::io::Result<()> {
    let mut buf = Vec::new();
    encode(msg, &mut buf).map_err(std::io::Error::other)?;
    stream.write_all(&buf)?;
    // Over TLS a write's socket error surfaces at the flush (rustls keeps it otherwise).
    stream.flush()
}

fn lock(spool: &Mutex<Spool>) -> std::sync::MutexGuard<'_, Spool> {
    spool.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One connection: hello, then alternate between reading what control sent (with a short
/// timeout) and sending spooled records beyond what was sent.
fn serve(
    mut stream: impl Read + Write,
    cfg: &LinkConfig,
    spool: &Mutex<Spool>,
    enforced: &Enforced,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let mut announced = enforced.changes();
    let (version, sha) = enforced.current();
    let next_seq = lock(spool).next_seq();
    send(
        &mut stream,
        &Up::Hello {
            proto: PROTO_VERSION,
            dataplane: cfg.name.clone(),
            next_seq,
            policy_version: version,
            policy_sha256: sha,
        },
    )?;
    let mut dec = Decoder::new();
    let mut buf = vec![0u8; 64 << 10];
    // Highest sequence number sent on this connection; `None` until control's welcome.
    let mut sent: Option<u64> = None;
    let mut acked = 0u64;
    // The records frame is built here, batch after batch: its memory is reused, not allocated
    // (and faulted in, as huge pages) afresh for each.
    let mut frame = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        // Control learns of every change of the policy in force, a local reload included.
        if enforced.changes() != announced {
            announced = enforced.changes();
            let (policy_version, policy_sha256) = enforced.current();
            send(&mut stream, &Up::PolicyInForce { policy_version, policy_sha256 })?;
        }
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => dec.push(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
        while let Some(msg) = dec.message::<Down>().map_err(std::io::Error::other)? {
            match msg {
                Down::Welcome { proto, last_seq } => {
                    if proto != PROTO_VERSION {
                        return Err(std::io::Error::other(format!(
                            "control speaks link version {proto}, we speak {PROTO_VERSION}"
                        )));
                    }
                    let mut s = lock(spool);
                    if let Some(last) = last_seq {
                        s.skip_to(last)?;
                        s.ack(last)?;
                    }
                    let from = s.next_seq().saturating_sub(s.depth() + 1);
                    acked = from;
                    sent = Some(from);
                    drop(s);
                    let desk = &enforced.access.approvals;
                    desk.resend_waiting();
                    desk.connected.store(true, Ordering::Relaxed);
                }
                Down::Refused { reason } => {
                    return Err(std::io::Error::other(format!("{REFUSED}{reason}")));
                }
                Down::Policy { version, text } => {
                    let error = enforced.apply_pushed(version, &text).err();
                    match &error {
                        None => info!(version, "policy pushed by control is in force"),
                        Some(e) => warn!(
                            version,
                            "policy pushed by control refused, keeping the current one: {e}"
                        ),
                    }
                    // What is in force first, so that control's status is whole by the time
                    // the push's answer is given.
                    if enforced.changes() != announced {
                        announced = enforced.changes();
                        let (policy_version, policy_sha256) = enforced.current();
                        send(&mut stream, &Up::PolicyInForce { policy_version, policy_sha256 })?;
                    }
                    send(&mut stream, &Up::PolicyAck { version, error })?;
                }
                Down::Identities { generation, entries } => {
                    enforced.apply_identities(&entries);
                    info!(generation, entries = entries.len(), "identity feed in force");
                    send(&mut stream, &Up::IdentitiesAck { generation, entries: entries.len() })?;
                }
                Down::Keys { generation, keys, virtual_keys, dlp_salt } => {
                    // Two pushes may cross: an older generation than the one in force is
                    // acknowledged (with the one in force) and dropped.
                    let held = enforced.access.keys.load_full();
                    let (generation, n) = if generation >= held.generation {
                        if let Some(s) = dlp_salt {
                            take_salt(&enforced.access, &s);
                        }
                        let ring =
                            sluice_intercept::broker::KeyRing::new(generation, keys, virtual_keys);
                        let n = ring.len();
                        info!(generation, keys = n, "brokered keys in force (held in memory only)");
                        enforced.access.keys.store(Arc::new(ring));
                        (generation, n)
                    } else {
                        (held.generation, held.len())
                    };
                    let dlp_salt = enforced.access.dlp_salt.load().as_ref().map(|s| s.id.clone());
                    send(&mut stream, &Up::KeysAck { generation, keys: n, dlp_salt })?;
                }
                Down::Usage { counts } => {
                    let n = counts.len();
                    enforced.access.quotas.set_fleet(counts.into_iter().filter_map(|c| {
                        let w = sluice_rules::Window::parse(&c.window)?;
                        let count = sluice_intercept::quota::Count {
                            start: c.start,
                            requests: c.requests,
                            tokens: c.tokens,
                        };
                        Some((c.subject, w, count))
                    }));
                    tracing::debug!(subjects = n, "fleet quota counts in force");
                }
                Down::Decision { decision } => {
                    info!(id = %decision.id, approved = decision.approved, by = %decision.by, "approval decided");
                    enforced.access.approvals.decide(decision);
                }
                Down::Ack { upto } => {
                    acked = acked.max(upto);
                    lock(spool).ack(upto)?;
                }
                other => warn!("unexpected message from control: {other:?}"),
            }
        }
        let Some(after) = sent else { continue };
        // Requests waiting for a reviewer, and waits that ended, go up at once.
        while let Some(m) = enforced.access.approvals.poll_up() {
            send(&mut stream, &m)?;
        }
        if after >= acked + WINDOW {
            continue;
        }
        let mut batch = lock(spool).read_after(after, BATCH)?;
        // Bounded in bytes too (recordings are large lines): a frame stays far under the
        // link's limit, whatever the spool holds.
        let mut bytes = 0usize;
        let fits = batch
            .iter()
            .position(|(_, l)| {
                bytes += l.len();
                bytes > BATCH_BYTES
            })
            .map_or(batch.len(), |i| i.max(1));
        batch.truncate(fits);
        if let Some(&(last, _)) = batch.last() {
            // Spooled lines go as they are (JSON: written by this process, or checked as the
            // spool read them back), never parsed into values and written again.
            frame.clear();
            frame.reserve_exact(batch.iter().map(|(_, l)| l.len() + 4).sum::<usize>() + 5);
            encode_records(batch.iter().map(|(_, line)| line), &mut frame)
                .map_err(std::io::Error::other)?;
            stream.write_all(&frame)?;
            stream.flush()?;
            // Kept up to the bound of a batch (only a single larger line goes past it).
            if frame.capacity() > sluice_link::KEPT_FRAME {
                frame = Vec::new();
            }
            sent = Some(last);
        }
    }
    Ok(())
}

/// Puts the deployment's DLP salt in force (the next finding's hash uses it), unless it is
/// the one in force already or not a salt (then the one in force stays, and it is logged).
fn take_salt(access: &sluice_intercept::access::Access, s: &sluice_link::DlpSalt) {
    if access.dlp_salt.load().as_ref().is_some_and(|held| held.id == s.id) {
        return;
    }
    let Some(bytes) = sluice_audit::Link::from_hex(s.salt.expose()) else {
        warn!(salt = %s.id, "the DLP salt control pushed is not 64 hex digits; keeping the one in force");
        return;
    };
    let salt = sluice_intercept::Salt::new(&bytes.0);
    if salt.id != s.id {
        warn!(salt = %s.id, "the DLP salt control pushed does not match its id; keeping the one in force");
        return;
    }
    info!(salt = %salt.id, "DLP salt of the deployment in force (held in memory only)");
    access.dlp_salt.store(Some(Arc::new(salt)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pushed_salt_is_taken_only_whole_and_matching_its_id() {
        let access = sluice_intercept::access::Access::default();
        let hex = "5a".repeat(32);
        let id = sluice_dlp::salt_id(&[0x5a; 32]);
        let push = |id: &str, hex: &str| sluice_link::DlpSalt {
            id: id.into(),
            salt: sluice_link::Secret::new(hex.into()),
        };
        take_salt(&access, &push(&id, "5a5a"));
        assert!(access.dlp_salt.load().is_none(), "not 64 hex digits");
        take_salt(&access, &push("salt:000000000000", &hex));
        assert!(access.dlp_salt.load().is_none(), "not its id");
        take_salt(&access, &push(&id, &hex));
        let held = access.dlp_salt.load_full().unwrap();
        assert_eq!((held.id.as_str(), held.bytes()), (id.as_str(), &[0x5a; 32][..]));
    }

    #[test]
    fn pushed_policy_is_enforced_kept_and_refused_when_broken() {
        let dir = std::env::temp_dir().join(format!("sluice-enforced-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let base = "[defaults]\naction = \"allow\"\n";
        let policy = Arc::new(ArcSwap::from_pointee(compile_pushed(base).unwrap()));
        let overlay = Arc::new(ArcSwap::from_pointee(IdentityOverlay::default()));
        let e = Enforced::new(policy.clone(), overlay.clone(), &dir, None, text_sha256(base));
        let block = "[defaults]\naction = \"block\"\n";
        e.apply_pushed(4, block).unwrap();
        assert_eq!(e.current(), (Some(4), text_sha256(block)));
        assert_eq!(saved_policy(&dir), Some((4, block.to_owned())));
        let err = e.apply_pushed(5, "[defaults]\naction = \"maybe\"\n").unwrap_err();
        assert!(err.contains("maybe"), "{err}");
        assert_eq!(e.current().0, Some(4), "the broken push changed nothing");
        e.apply_identities(&[Identity {
            ip: "10.0.0.9".parse().unwrap(),
            user: "u@x".into(),
            groups: vec!["g".into()],
            expires_at: None,
        }]);
        assert_eq!(
            overlay.load().get("10.0.0.9".parse().unwrap(), 0).map(|o| &*o.user),
            Some("u@x")
        );
        // The feed is kept for the next start, readable by root only.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(IDENTITIES)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let kept = saved_identities(&dir).unwrap();
        assert_eq!(kept.len(), 1);
        let fresh = Arc::new(ArcSwap::from_pointee(IdentityOverlay::default()));
        let restarted = Enforced::new(policy, fresh.clone(), &dir, None, text_sha256(base));
        restarted.enforce_identities(&kept);
        assert_eq!(fresh.load().get("10.0.0.9".parse().unwrap(), 0).map(|o| &*o.user), Some("u@x"));
        // A damaged file is no feed (and no crash).
        std::fs::write(dir.join(IDENTITIES), b"[{\"ip\":").unwrap();
        assert!(saved_identities(&dir).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
