//! Signed checkpoints of every chain's head (ARCHITECTURE.md, "Evidence"): every
//! `checkpoint_records` records or `checkpoint_secs` seconds, whichever comes first, the head of
//! each chain that moved is signed with control's key and kept in the rule store; a copy goes
//! to syslog when one is configured, so it lives outside the appliance too. Retention signs
//! the head at each cut before deleting ([`Checkpointer::sign_cut`]).

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use serde::Deserialize;
use sluice_audit::{Checkpoint, Link, Signer};

use crate::api::AppState;
use crate::chains::{CONTROL_CHAIN, chain_name};
use crate::store::StoreError;

/// `[audit]` of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// A checkpoint once this many records were chained since the last.
    #[serde(default = "default_records")]
    pub checkpoint_records: u64,
    /// A checkpoint at least this often while chains move (seconds).
    #[serde(default = "default_secs")]
    pub checkpoint_secs: u64,
    /// Copy checkpoints to the syslog collector, if one is configured.
    #[serde(default = "yes")]
    pub syslog: bool,
    /// The region of each Azure OpenAI resource, by resource name (`contoso-eu` of
    /// `contoso-eu.openai.azure.com`), for the residency table of evidence summaries.
    #[serde(default)]
    pub azure_regions: std::collections::BTreeMap<String, String>,
}

fn default_records() -> u64 {
    10_000
}

fn default_secs() -> u64 {
    60
}

fn yes() -> bool {
    true
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            checkpoint_records: default_records(),
            checkpoint_secs: default_secs(),
            syslog: true,
            azure_regions: Default::default(),
        }
    }
}

/// Decides when heads are signed, and signs them.
#[derive(Debug)]
pub struct Checkpointer {
    signer: Signer,
    cfg: AuditConfig,
    /// The highest position checkpointed of each chain.
    done: HashMap<String, u64>,
    last: Option<Instant>,
}

impl Checkpointer {
    /// A checkpointer signing with `signer`, after the checkpoints `done` already stored.
    pub fn new(signer: Signer, cfg: AuditConfig, done: HashMap<String, u64>) -> Self {
        Checkpointer { signer, cfg, done, last: None }
    }

    /// The public key, 64 hex digits.
    pub fn public_hex(&self) -> String {
        crate::audit_key::public_hex(&self.signer)
    }

    /// The public key.
    pub fn public(&self) -> sluice_audit::VerifyingKey {
        self.signer.public()
    }

    /// The checkpoints due at `now` (`ts_ms`: the wall clock) for chains standing at `heads`
    /// (name, position, link): every head that moved, once enough records were chained or
    /// enough time passed.
    pub fn due(
        &mut self,
        heads: &[(String, u64, Link)],
        now: Instant,
        ts_ms: u64,
    ) -> Vec<Checkpoint> {
        let moved: Vec<&(String, u64, Link)> =
            heads.iter().filter(|(c, n, _)| *n > self.done.get(c).copied().unwrap_or(0)).collect();
        let pending: u64 =
            moved.iter().map(|(c, n, _)| n - self.done.get(c).copied().unwrap_or(0)).sum();
        let every = Duration::from_secs(self.cfg.checkpoint_secs.max(1));
        let timely = self.last.is_none_or(|t| now.duration_since(t) >= every);
        if moved.is_empty() || (pending < self.cfg.checkpoint_records.max(1) && !timely) {
            return Vec::new();
        }
        self.last = Some(now);
        let mut out = Vec::new();
        for (chain, n, link) in moved {
            if let Some(cp) = self.signer.sign(chain, *n, *link, ts_ms) {
                self.done.insert(chain.clone(), *n);
                out.push(cp);
            }
        }
        out
    }

    /// Every head that moved, signed now whatever the schedule (an export closes its window
    /// with them).
    pub fn sign_now(&mut self, heads: &[(String, u64, Link)], ts_ms: u64) -> Vec<Checkpoint> {
        let mut out = Vec::new();
        for (chain, n, link) in heads {
            if *n > self.done.get(chain).copied().unwrap_or(0)
                && let Some(cp) = self.signer.sign(chain, *n, *link, ts_ms)
            {
                self.done.insert(chain.clone(), *n);
                out.push(cp);
            }
        }
        out
    }

    /// Signs an evidence bundle's manifest.
    pub fn sign_manifest(&self, manifest: &[u8]) -> [u8; 64] {
        self.signer.sign_manifest(manifest)
    }

    /// The checkpoint of a retention cut: `chain` at `n`, whose link is `link`.
    pub fn sign_cut(&self, chain: &str, n: u64, link: Link, ts_ms: u64) -> Option<Checkpoint> {
        self.signer.sign(chain, n, link, ts_ms)
    }
}

macro_rules! lock {
    ($m:expr) => {
        $m.lock().unwrap_or_else(PoisonError::into_inner)
    };
}

/// Every chain's head: the data planes' (their current chains) and control's.
pub fn heads(state: &AppState) -> Result<Vec<(String, u64, Link)>, StoreError> {
    let mut out: Vec<(String, u64, Link)> = lock!(state.flows)
        .chain_heads()?
        .into_iter()
        .map(|(dp, h)| (chain_name(&dp, h.epoch), h.n, h.link))
        .collect();
    if let Some((n, link)) = lock!(state.rules).chain_head()? {
        out.push((CONTROL_CHAIN.to_owned(), n, link));
    }
    Ok(out)
}

/// Signs and stores the checkpoints due now. Returns them.
pub fn tick(state: &AppState) -> Result<Vec<Checkpoint>, StoreError> {
    sign(state, false)
}

/// Signs and stores a checkpoint of every head that moved, now. Returns them.
pub fn seal(state: &AppState) -> Result<Vec<Checkpoint>, StoreError> {
    sign(state, true)
}

fn sign(state: &AppState, now: bool) -> Result<Vec<Checkpoint>, StoreError> {
    let Some(cp) = &state.audit.checkpointer else { return Ok(Vec::new()) };
    let heads = heads(state)?;
    let ts = crate::link::now_ms();
    let due = if now {
        lock!(cp).sign_now(&heads, ts)
    } else {
        lock!(cp).due(&heads, Instant::now(), ts)
    };
    if due.is_empty() {
        return Ok(due);
    }
    {
        let mut rules = lock!(state.rules);
        for c in &due {
            rules.add_checkpoint(c)?;
        }
    }
    for c in &due {
        publish(state, c);
    }
    Ok(due)
}

/// Retention with the chains kept verifiable: each chain is cut at one position, the head at
/// the cut is signed and stored, then the records go (records outside chains go by age and
/// count). Returns how many records were deleted.
pub fn retain(state: &AppState, older_than_ms: u64, max_rows: u64) -> Result<u64, StoreError> {
    let cuts = lock!(state.flows).retention_cuts(older_than_ms, max_rows)?;
    if let Some(cp) = &state.audit.checkpointer {
        let now = crate::link::now_ms();
        let signed: Vec<Checkpoint> = {
            let cp = lock!(cp);
            cuts.iter()
                .filter_map(|c| cp.sign_cut(&chain_name(&c.dataplane, c.epoch), c.n, c.link, now))
                .collect()
        };
        let mut rules = lock!(state.rules);
        for c in &signed {
            rules.add_checkpoint(c)?;
        }
        drop(rules);
        for c in &signed {
            publish(state, c);
        }
    }
    lock!(state.flows).prune_at(older_than_ms, max_rows, &cuts)
}

/// The checkpoint as a record for the live tail and syslog.
pub fn publish(state: &AppState, c: &Checkpoint) {
    if state.audit.cfg.syslog {
        state.hub.publish_value(serde_json::json!({
            "type": "checkpoint", "ts_ms": c.ts_ms, "chain": c.chain, "seq": c.seq,
            "head": c.head.to_hex(), "line": c.to_line(),
        }));
    }
}

/// Checkpoints every second, when due.
pub async fn run(state: Arc<AppState>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        every.tick().await;
        let st = state.clone();
        match tokio::task::spawn_blocking(move || tick(&st)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!("audit checkpoint: {e}"),
            Err(e) => tracing::error!("audit checkpoint task: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_signed_when_enough_records_or_time_passed() {
        let cfg = AuditConfig {
            checkpoint_records: 100,
            checkpoint_secs: 60,
            syslog: false,
            azure_regions: Default::default(),
        };
        let mut c = Checkpointer::new(Signer::from_secret(&[7; 32]), cfg, HashMap::new());
        let t0 = Instant::now();
        let h = |n| vec![("dp:a:0".to_owned(), n, Link([n as u8; 32]))];
        // The first look signs what there is.
        assert_eq!(c.due(&h(5), t0, 1).len(), 1);
        // Few records, little time: nothing.
        assert!(c.due(&h(50), t0 + Duration::from_secs(1), 2).is_empty());
        // Enough records.
        let cps = c.due(&h(105), t0 + Duration::from_secs(2), 3);
        assert_eq!((cps.len(), cps[0].seq), (1, 105));
        cps[0].verify(&c.public()).unwrap();
        // Enough time.
        assert_eq!(c.due(&h(106), t0 + Duration::from_secs(63), 4).len(), 1);
        // Nothing moved: nothing, however long.
        assert!(c.due(&h(106), t0 + Duration::from_secs(999), 5).is_empty());
    }
}
