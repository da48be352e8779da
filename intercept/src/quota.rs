//! Budgets (ARCHITECTURE.md, "Quotas"): requests and tokens counted per subject (`user:…`,
//! `identity:…`, `key:…`) in fixed UTC windows, against a rule's [`QuotaPolicy`]. A request
//! is admitted when every limit still has room (tokens: the window's count is under the
//! limit; a response's tokens are charged when it ends, so the request that crosses the line
//! completes and the next one is refused). Counts are this data plane's, raised to the
//! fleet's when control pushes the totals it stored from every data plane's records.
//!
//! Pure: the time is an input. Bounded: at most [`MAX_ENTRIES`] subjects, each with its
//! three windows; past it, subjects whose windows are all stale are purged, and a new subject
//! that still finds no room is refused (fail closed) rather than counted nowhere.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use sluice_rules::{Measure, QuotaBy, QuotaLimit, QuotaPolicy, Window};

use crate::block::Refusal;
use crate::phases::{RequestCtx, Session};
use crate::record::RequestRecord;

/// Most subjects counted.
pub const MAX_ENTRIES: usize = 262_144;

/// One window's count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    /// Start of the window (Unix seconds).
    pub start: u64,
    /// Requests admitted.
    pub requests: u64,
    /// Tokens charged.
    pub tokens: u64,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A limit is used up: which, how much was used, and seconds until its window ends.
    Exceeded {
        /// The limit.
        limit: QuotaLimit,
        /// What the window counted.
        used: u64,
        /// Seconds until the window ends.
        retry_after: u64,
    },
    /// No room to count a new subject ([`MAX_ENTRIES`]).
    Full,
}

/// The counts, shared by every connection of the data plane.
#[derive(Debug)]
pub struct Ledger {
    state: Mutex<State>,
    cap: usize,
}

#[derive(Debug, Default)]
struct State {
    local: HashMap<String, Windows>,
    fleet: HashMap<String, Windows>,
}

/// A subject's counts, one per [`Window`] (in [`Window::ALL`]'s order).
type Windows = [Count; 3];

fn slot(w: Window) -> usize {
    match w {
        Window::Minute => 0,
        Window::Hour => 1,
        Window::Day => 2,
    }
}

/// Whether nothing of `c` counts at `now` (each window ended, or never counted anything).
fn stale(c: &Windows, now: u64) -> bool {
    Window::ALL.iter().all(|w| {
        let n = c[slot(*w)];
        n.start != w.start(now) || (n.requests == 0 && n.tokens == 0)
    })
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger::with_cap(MAX_ENTRIES)
    }
}

/// The subject a quota counts a request against: `key:ID` (a virtual key), `user:NAME`,
/// `identity:NAME`, falling back along that order to what the request has.
pub fn subject(
    by: QuotaBy,
    identity: &str,
    user: Option<&str>,
    virtual_key: Option<&str>,
) -> String {
    match (by, virtual_key, user) {
        (QuotaBy::Key, Some(k), _) => format!("key:{k}"),
        (QuotaBy::Key | QuotaBy::User, _, Some(u)) => format!("user:{u}"),
        _ => format!("identity:{identity}"),
    }
}

/// The windows a policy counts in, each once.
fn windows(q: &QuotaPolicy) -> impl Iterator<Item = Window> + '_ {
    Window::ALL.into_iter().filter(|w| q.limits.iter().any(|l| l.window == *w))
}

impl State {
    /// The count of `subject` in the window of `w` holding `now`: the larger of this data
    /// plane's and the fleet's.
    fn used(&self, subject: &str, w: Window, now: u64) -> Count {
        let start = w.start(now);
        let pick = |m: &HashMap<String, Windows>| {
            m.get(subject)
                .map(|c| c[slot(w)])
                .filter(|c| c.start == start)
                .unwrap_or(Count { start, ..Count::default() })
        };
        let (l, f) = (pick(&self.local), pick(&self.fleet));
        Count { start, requests: l.requests.max(f.requests), tokens: l.tokens.max(f.tokens) }
    }

    fn purge(&mut self, now: u64) {
        self.local.retain(|_, c| !stale(c, now));
        self.fleet.retain(|_, c| !stale(c, now));
    }
}

impl Ledger {
    /// A ledger holding at most `cap` counts.
    pub fn with_cap(cap: usize) -> Self {
        Ledger { state: Mutex::default(), cap }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits one request of `subject` under `q` at `now` (Unix seconds), counting it in
    /// each window the policy limits; or says which limit refuses it.
    pub fn admit(&self, q: &QuotaPolicy, subject: &str, now: u64) -> Result<(), Refused> {
        let mut s = self.lock();
        let mut refused: Option<Refused> = None;
        for l in &q.limits {
            let c = s.used(subject, l.window, now);
            let used = match l.measure {
                Measure::Requests => c.requests,
                Measure::Tokens => c.tokens,
            };
            let over = match l.measure {
                Measure::Requests => used.saturating_add(1) > l.max,
                Measure::Tokens => used >= l.max,
            };
            if over {
                let retry_after = (c.start + l.window.secs()).saturating_sub(now).max(1);
                // The limit whose window ends last says when to come back.
                let later = match refused {
                    Some(Refused::Exceeded { retry_after: r, .. }) => retry_after > r,
                    _ => true,
                };
                if later {
                    refused = Some(Refused::Exceeded { limit: *l, used, retry_after });
                }
            }
        }
        if let Some(r) = refused {
            return Err(r);
        }
        if !s.local.contains_key(subject) && s.local.len() >= self.cap {
            s.purge(now);
            if s.local.len() >= self.cap {
                return Err(Refused::Full);
            }
        }
        let counts = match s.local.get_mut(subject) {
            Some(c) => c,
            None => s.local.entry(subject.to_owned()).or_default(),
        };
        for w in windows(q) {
            let e = &mut counts[slot(w)];
            if e.start != w.start(now) {
                *e = Count { start: w.start(now), ..Count::default() };
            }
            e.requests += 1;
        }
        Ok(())
    }

    /// Charges the tokens a response of `subject`'s reported, in the windows `q` limits.
    pub fn charge(&self, q: &QuotaPolicy, subject: &str, tokens: u64, now: u64) {
        if tokens == 0 {
            return;
        }
        let mut s = self.lock();
        // Counted at admission; a window that turned since is charged from zero.
        let Some(counts) = s.local.get_mut(subject) else { return };
        for w in windows(q) {
            let (e, start) = (&mut counts[slot(w)], w.start(now));
            if e.start != start {
                *e = Count { start, ..Count::default() };
            }
            e.tokens = e.tokens.saturating_add(tokens);
        }
    }

    /// The fleet's counts, as control pushed them (replacing the previous push), bounded
    /// like this data plane's.
    pub fn set_fleet(&self, counts: impl IntoIterator<Item = (String, Window, Count)>) {
        let mut s = self.lock();
        s.fleet.clear();
        for (subject, w, c) in counts {
            if !s.fleet.contains_key(&subject) && s.fleet.len() >= self.cap {
                continue;
            }
            s.fleet.entry(subject).or_default()[slot(w)] = c;
        }
    }

    /// What `subject` used in the window of `w` holding `now`.
    pub fn used(&self, subject: &str, w: Window, now: u64) -> Count {
        self.lock().used(subject, w, now)
    }
}

impl Session {
    /// Phase 2's last step, for a rule with a quota: the request is admitted and counted
    /// against its subject, or refused with 429 until the window that is used up ends.
    pub(crate) fn quota_filter(&self, ctx: &mut RequestCtx) -> Result<(), Refusal> {
        self.quota_admit(&mut ctx.rec)
    }

    /// Admits what `rec` records (a request, or a WebSocket `response.create`) under the
    /// rule's quota, naming the subject in it; or the refusal.
    pub(crate) fn quota_admit(&self, rec: &mut RequestRecord) -> Result<(), Refusal> {
        let Some(q) = &self.headers.quota else { return Ok(()) };
        let who = subject(q.by, &self.identity, rec.user.as_deref(), rec.virtual_key.as_deref());
        match self.access.quotas.admit(q, &who, now_s()) {
            Ok(()) => {
                rec.quota = Some(who);
                Ok(())
            }
            Err(Refused::Exceeded { limit, used, retry_after }) => {
                let what = match limit.measure {
                    Measure::Requests => "requests",
                    Measure::Tokens => "tokens",
                };
                Err(Refusal {
                    status: 429,
                    code: "quota_exceeded",
                    message: format!(
                        "the budget of {who} is used up: {used} of {} {what} this {}; it renews \
                         in {retry_after} s",
                        limit.max,
                        limit.window.as_str()
                    ),
                    rule: self.rule.clone(),
                    retry_after: Some(retry_after),
                })
            }
            Err(Refused::Full) => Err(Refusal {
                status: 503,
                code: "quota_unavailable",
                message: "the appliance counts too many budgets at once to count this one".into(),
                rule: self.rule.clone(),
                retry_after: None,
            }),
        }
    }

    /// Phase 7, for a request a quota admitted: the tokens its response reported are charged.
    /// (A WebSocket's are charged as each of its responses finishes.)
    pub(crate) fn charge_quota(&self, rec: &RequestRecord) {
        if rec.websocket.is_some() {
            return;
        }
        let tokens = rec.input_tokens.unwrap_or(0).saturating_add(rec.output_tokens.unwrap_or(0));
        self.charge_tokens(rec, tokens);
    }

    /// Charges `tokens` to the quota subject that admitted `rec`, if any.
    pub(crate) fn charge_tokens(&self, rec: &RequestRecord, tokens: u64) {
        let (Some(q), Some(who)) = (&self.headers.quota, &rec.quota) else { return };
        self.access.quotas.charge(q, who, tokens, now_s());
    }
}

fn now_s() -> u64 {
    crate::record::now_ms() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(limits: &[(Measure, Window, u64)]) -> QuotaPolicy {
        QuotaPolicy {
            by: QuotaBy::User,
            limits: limits
                .iter()
                .map(|&(measure, window, max)| QuotaLimit { measure, window, max })
                .collect(),
        }
    }

    #[test]
    fn requests_are_counted_per_window_and_reset_when_it_turns() {
        let q = policy(&[(Measure::Requests, Window::Minute, 2)]);
        let l = Ledger::default();
        let t = 1_000_040; // 20 s into a minute
        assert!(l.admit(&q, "user:a", t).is_ok() && l.admit(&q, "user:a", t + 1).is_ok());
        match l.admit(&q, "user:a", t + 2) {
            Err(Refused::Exceeded { used: 2, retry_after, .. }) => assert_eq!(retry_after, 38),
            other => panic!("{other:?}"),
        }
        assert!(l.admit(&q, "user:b", t + 2).is_ok(), "another subject has its own budget");
        assert!(l.admit(&q, "user:a", t + 40).is_ok(), "the next minute starts from zero");
    }

    #[test]
    fn tokens_refuse_once_the_window_reached_the_limit() {
        let q =
            policy(&[(Measure::Tokens, Window::Day, 100), (Measure::Requests, Window::Hour, 50)]);
        let l = Ledger::default();
        let t = 86_400 * 10 + 3600;
        l.admit(&q, "key:vk", t).unwrap();
        l.charge(&q, "key:vk", 99, t);
        l.admit(&q, "key:vk", t).unwrap();
        l.charge(&q, "key:vk", 30, t);
        let Err(Refused::Exceeded { limit, used, retry_after }) = l.admit(&q, "key:vk", t) else {
            panic!()
        };
        assert_eq!((limit.measure, used, retry_after), (Measure::Tokens, 129, 86_400 - 3600));
        assert_eq!(l.used("key:vk", Window::Hour, t).requests, 2);
    }

    #[test]
    fn the_fleet_count_raises_the_local_one() {
        let q = policy(&[(Measure::Requests, Window::Day, 3)]);
        let l = Ledger::default();
        let t = 86_400 * 5;
        l.admit(&q, "user:a", t).unwrap();
        l.set_fleet([(
            "user:a".to_owned(),
            Window::Day,
            Count { start: t, requests: 3, tokens: 0 },
        )]);
        assert!(matches!(l.admit(&q, "user:a", t), Err(Refused::Exceeded { .. })));
        // A push for a past window counts for nothing.
        l.set_fleet([(
            "user:a".to_owned(),
            Window::Day,
            Count { start: t - 86_400, requests: 9, tokens: 0 },
        )]);
        assert!(l.admit(&q, "user:a", t).is_ok());
    }

    #[test]
    fn a_full_ledger_refuses_new_subjects_after_purging_stale_ones() {
        let q = policy(&[(Measure::Requests, Window::Minute, 10)]);
        let l = Ledger::with_cap(2);
        l.admit(&q, "user:a", 60).unwrap();
        l.admit(&q, "user:b", 60).unwrap();
        assert_eq!(l.admit(&q, "user:c", 61), Err(Refused::Full));
        assert!(l.admit(&q, "user:a", 61).is_ok(), "known subjects are still counted");
        assert!(l.admit(&q, "user:c", 130).is_ok(), "stale windows were purged");
    }

    #[test]
    fn subjects_fall_back_to_what_the_request_has() {
        assert_eq!(subject(QuotaBy::Key, "fin", Some("a"), Some("vk_1")), "key:vk_1");
        assert_eq!(subject(QuotaBy::Key, "fin", Some("a"), None), "user:a");
        assert_eq!(subject(QuotaBy::User, "fin", None, Some("vk_1")), "identity:fin");
        assert_eq!(subject(QuotaBy::Identity, "fin", Some("a"), Some("vk")), "identity:fin");
    }
}
