//! The fleet's quota counts (ARCHITECTURE.md, "Quotas"): every stored request record that a
//! quota admitted names its subject (`quota`); control adds it up per subject in the current
//! UTC minute, hour and day, and pushes the counts to every data plane ([`Down::Usage`]) on
//! connect and within a second of a change. Each data plane counts against the larger of its
//! own count and the fleet's, so budgets hold across data planes and across a data plane's
//! restart. Seeded from the store at start (the day's records).
//!
//! [`Down::Usage`]: sluice_link::Down::Usage

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use sluice_link::UsageCount;
use sluice_rules::Window;

/// Most subjects held; past it, a new subject's records are not added up here (each data
/// plane still counts them itself).
pub const MAX_SUBJECTS: usize = 262_144;

/// A window's start (Unix seconds), requests and tokens.
type Count = (u64, u64, u64);

/// The counts.
#[derive(Debug, Default)]
pub struct Totals {
    /// Per subject, one count per window of [`Window::ALL`].
    counts: Mutex<HashMap<String, [Count; 3]>>,
    /// Increases with every change (the pusher sends when it moved).
    pub generation: AtomicU64,
}

/// Whether nothing of `c` counts at `now_s`.
fn stale(c: &[Count; 3], now_s: u64) -> bool {
    Window::ALL.iter().zip(c).all(|(w, (s, n, _))| *s != w.start(now_s) || *n == 0)
}

impl Totals {
    /// Adds one admitted request of `subject` at `ts_ms` whose response reported `tokens`,
    /// in each window holding `ts_ms` that is still current at `now_s`.
    pub fn add(&self, subject: &str, ts_ms: u64, tokens: u64, now_s: u64) {
        let ts = ts_ms / 1000;
        if Window::ALL.iter().all(|w| w.start(ts) != w.start(now_s)) {
            return; // a late record of windows already over
        }
        let mut c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if !c.contains_key(subject) && c.len() >= MAX_SUBJECTS {
            c.retain(|_, v| !stale(v, now_s));
            if c.len() >= MAX_SUBJECTS {
                return;
            }
        }
        let counts = match c.get_mut(subject) {
            Some(v) => v,
            None => c.entry(subject.to_owned()).or_default(),
        };
        for (w, e) in Window::ALL.iter().zip(counts.iter_mut()) {
            let start = w.start(now_s);
            if w.start(ts) != start {
                continue;
            }
            if e.0 != start {
                *e = (start, 0, 0);
            }
            e.1 += 1;
            e.2 = e.2.saturating_add(tokens);
        }
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts of the windows current at `now_s` (older ones are dropped).
    pub fn current(&self, now_s: u64) -> Vec<UsageCount> {
        let mut c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        c.retain(|_, v| !stale(v, now_s));
        let mut out = Vec::new();
        for (subject, v) in c.iter() {
            for (w, &(start, requests, tokens)) in Window::ALL.iter().zip(v) {
                if start == w.start(now_s) && requests > 0 {
                    out.push(UsageCount {
                        subject: subject.clone(),
                        window: w.as_str().to_owned(),
                        start,
                        requests,
                        tokens,
                    });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_per_window_and_drop_when_it_ends() {
        let t = Totals::default();
        let now = 86_400 * 100 + 3600 * 5 + 65; // 05:01:05
        t.add("user:a", now * 1000, 10, now);
        t.add("user:a", (now - 30) * 1000, 5, now); // 05:00:35: this hour, not this minute
        t.add("user:a", (now - 86_400) * 1000, 99, now); // yesterday: nowhere
        let g = t.generation.load(Ordering::Relaxed);
        assert_eq!(g, 2);
        let mut got: Vec<_> =
            t.current(now).into_iter().map(|c| (c.window, c.requests, c.tokens)).collect();
        got.sort();
        assert_eq!(
            got,
            vec![("day".into(), 2, 15), ("hour".into(), 2, 15), ("minute".into(), 1, 10)]
        );
        // An hour later, only the day is current.
        let later = now + 3600;
        let got: Vec<_> = t.current(later).into_iter().map(|c| c.window).collect();
        assert_eq!(got, vec!["day".to_owned()]);
    }
}
