//! Destinations learned for divert (ARCHITECTURE.md, "Divert"): addresses that DNS answers
//! for inspected names, and inspected ClientHellos, showed to serve an inspected name. With
//! `divert = "learned"` a SYN to one of them is diverted.
//!
//! An entry is only ever extended: a later answer with a shorter TTL (a CDN's 60 s after an
//! earlier 3600 s) does not make the next connection miss the divert. The set outlives a
//! restart: the binary saves [`Engine::learned_entries`] in its state directory and gives them
//! back with [`Engine::restore_learned`], so clients see no burst of resets after one.

use std::net::IpAddr;

use super::{Engine, Now};

/// A destination learned, as the engine keeps it.
#[derive(Debug, Clone)]
pub(super) struct Learned {
    pub(super) name: Box<str>,
    pub(super) expires_mono: u64,
}

/// Most learned destinations kept.
pub(super) const MAX_LEARNED: usize = 65_536;
/// TTL bounds applied to learned destinations (seconds).
pub(super) const LEARN_TTL: (u32, u32) = (30, 86_400);
/// How long a destination learned from an inspected ClientHello is remembered (seconds).
pub(super) const HELLO_LEARN_TTL: u32 = 3_600;

/// A learned destination as saved across restarts: wall-clock expiry, so the time the data
/// plane was down counts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LearnedEntry {
    /// The address.
    pub ip: IpAddr,
    /// The inspected name it serves.
    pub name: String,
    /// Unix ms at which it is forgotten.
    pub expires_unix_ms: u64,
}

/// The name `ip` was learned for, if still valid (a field-level borrow, usable while a flow
/// of the same engine is borrowed).
pub(super) fn name(
    learned: &hashbrown::HashMap<IpAddr, Learned>,
    ip: IpAddr,
    now: Now,
) -> Option<&str> {
    learned.get(&ip).filter(|l| l.expires_mono > now.mono_ms).map(|l| &*l.name)
}

impl Engine {
    /// The name a destination was learned from (DNS answer or ClientHello), if still valid.
    pub fn learned(&self, ip: IpAddr, now: Now) -> Option<&str> {
        name(&self.learned, ip, now)
    }

    /// Remembers that `ip` serves `name`, an inspected name, for `ttl` seconds (bounded): a
    /// valid entry is extended, never shortened.
    pub(super) fn learn(&mut self, ip: IpAddr, name: &str, ttl: u32, now: Now) {
        let ttl = u64::from(ttl.clamp(LEARN_TTL.0, LEARN_TTL.1)) * 1000;
        self.learn_until(ip, name, now.mono_ms + ttl, now);
    }

    fn learn_until(&mut self, ip: IpAddr, name: &str, expires_mono: u64, now: Now) {
        if let Some(l) = self.learned.get_mut(&ip) {
            if l.expires_mono > now.mono_ms && l.expires_mono >= expires_mono {
                return;
            }
            // A longer life alone is not worth saving the set again (DNS renews it all the
            // time); a new name is, and so is an entry that had expired (left out of the
            // saved set and of the addresses a bypass holds).
            if *l.name != *name || l.expires_mono <= now.mono_ms {
                self.learned_version += 1;
            }
            *l = Learned { name: name.into(), expires_mono };
            return;
        }
        if self.learned.len() >= MAX_LEARNED {
            self.learned.retain(|_, l| l.expires_mono > now.mono_ms);
            if self.learned.len() >= MAX_LEARNED {
                return;
            }
        }
        self.learned.insert(ip, Learned { name: name.into(), expires_mono });
        self.learned_version += 1;
    }

    /// Changes with every change of the learned set (save it again when this moved).
    pub fn learned_version(&self) -> u64 {
        self.learned_version
    }

    /// The learned destinations still valid, to save across a restart.
    pub fn learned_entries(&self, now: Now) -> Vec<LearnedEntry> {
        self.learned
            .iter()
            .filter(|(_, l)| l.expires_mono > now.mono_ms)
            .map(|(ip, l)| LearnedEntry {
                ip: *ip,
                name: l.name.to_string(),
                expires_unix_ms: now.unix_ms + (l.expires_mono - now.mono_ms),
            })
            .collect()
    }

    /// Takes back destinations saved by an earlier run (expired ones and bad names are
    /// skipped; none is kept past the longest TTL from now). Returns how many were kept.
    pub fn restore_learned(&mut self, entries: Vec<LearnedEntry>, now: Now) -> usize {
        let max = u64::from(LEARN_TTL.1) * 1000;
        let mut kept = 0;
        for e in entries {
            let left = e.expires_unix_ms.saturating_sub(now.unix_ms).min(max);
            if left == 0 || e.name.is_empty() || e.name.len() > 253 {
                continue;
            }
            self.learn_until(e.ip, &e.name, now.mono_ms + left, now);
            kept += 1;
        }
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Settings;

    fn engine() -> Engine {
        let text = include_str!("../../../rules/default.toml");
        let c = sluice_rules::compile("d.toml", text, &sluice_rules::catalog::ShippedOnly).unwrap();
        Engine::new(
            std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(c.policy)),
            std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(
                sluice_rules::IdentityOverlay::default(),
            )),
            Settings::default(),
        )
    }

    fn at(s: u64) -> Now {
        Now { mono_ms: s * 1000, unix_ms: 1_700_000_000_000 + s * 1000 }
    }

    #[test]
    fn a_shorter_ttl_never_shortens_an_entry() {
        let mut e = engine();
        let ip: IpAddr = "198.51.100.10".parse().unwrap();
        e.learn(ip, "api.openai.com", 3600, at(0));
        let v = e.learned_version();
        // 6 s later an answer with a 60 s TTL: the hour stands.
        e.learn(ip, "api.openai.com", 60, at(6));
        assert_eq!(e.learned_version(), v);
        assert_eq!(e.learned(ip, at(72)), Some("api.openai.com"));
        assert_eq!(e.learned(ip, at(3599)), Some("api.openai.com"));
        // A longer one extends it (not worth saving again by itself); a new name is.
        e.learn(ip, "api.openai.com", 7200, at(50));
        assert_eq!(e.learned_version(), v);
        e.learn(ip, "chatgpt.com", 7200, at(100));
        assert_eq!(e.learned(ip, at(7000)), Some("chatgpt.com"));
        assert!(e.learned_version() > v);
    }

    #[test]
    fn entries_survive_a_restart_with_the_downtime_counted() {
        let mut e = engine();
        let (a, b): (IpAddr, IpAddr) =
            ("198.51.100.10".parse().unwrap(), "2001:db8:5100::10".parse().unwrap());
        e.learn(a, "api.openai.com", 600, at(0));
        e.learn(b, "chatgpt.com", 60, at(0));
        let saved = e.learned_entries(at(10));
        assert_eq!(saved.len(), 2);
        // A new process 100 s later, its monotonic clock starting again at 0.
        let mut e2 = engine();
        let now = Now { mono_ms: 0, unix_ms: at(110).unix_ms };
        assert_eq!(e2.restore_learned(saved, now), 1, "the 60 s entry ran out meanwhile");
        assert_eq!(e2.learned(a, now), Some("api.openai.com"));
        assert_eq!(e2.learned(a, Now { mono_ms: 489_000, ..now }), Some("api.openai.com"));
        assert_eq!(e2.learned(a, Now { mono_ms: 491_000, ..now }), None);
        assert_eq!(e2.learned(b, now), None);
    }
}
