//! Just-in-time approval (ARCHITECTURE.md, "Approvals"): a request a rule holds (`action =
//! "hold"`, or DLP findings under a profile that approves) waits between the body phase and
//! the upstream phase for a reviewer's decision, which control relays. The [`Desk`] is the
//! data plane's list of waiting requests: bounded per identity and rule and in total, with
//! the approvals for a while (grants) reviewers gave; the link thread drains what it has to
//! tell control with [`Desk::poll_up`] and hands it control's decisions ([`Desk::decide`]).
//! The wait itself is [`Session::hold`], the one phase that awaits (a channel and a timer;
//! no socket).

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use sluice_link::{Decision, FindingCount, HoldTicket, Secret, Up};
use tokio::sync::oneshot;

use crate::block::Refusal;
use crate::phases::{Forward, RequestCtx, RequestView, Session};
use crate::record::{ApprovalNote, now_ms};

/// Most requests held at once by one data plane.
pub const MAX_HELD: usize = 256;
/// Most bytes of prompt text a reviewer is shown.
pub const MAX_PROMPT: usize = 64 * 1024;
/// Most approvals for a while remembered.
const MAX_GRANTS: usize = 65_536;
/// Most messages waiting for the link (a control that stopped reading loses the oldest).
const MAX_OUTBOX: usize = 4096;

/// The waiting requests of a data plane.
#[derive(Debug, Default)]
pub struct Desk {
    state: Mutex<State>,
    /// Control is connected (the link says): without it nobody can decide, and a request
    /// that would wait is refused at once.
    pub connected: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    waiting: HashMap<String, Waiting>,
    /// Requests waiting per (identity, rule).
    per_source: HashMap<(String, String), u32>,
    /// Approvals for a while: (who, destination, rule) → until (Unix ms).
    grants: HashMap<(String, String, String), u64>,
    outbox: VecDeque<Up>,
}

#[derive(Debug)]
struct Waiting {
    ticket: HoldTicket,
    source: (String, String),
    tx: oneshot::Sender<Decision>,
}

/// Why a request cannot wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// [`MAX_HELD`] requests wait already.
    Total,
    /// Its identity has the rule's `approval_max_held` waiting.
    Source(u32),
    /// Control is not connected.
    Unavailable,
}

/// How a wait ended.
#[derive(Debug)]
pub enum Outcome {
    /// A reviewer decided.
    Decided(Decision),
    /// Nobody decided in time.
    Timeout,
}

impl State {
    fn push(&mut self, m: Up) {
        if self.outbox.len() >= MAX_OUTBOX {
            self.outbox.pop_front();
        }
        self.outbox.push_back(m);
    }

    /// Forgets waiting request `id`, if it still waits.
    fn remove(&mut self, id: &str) -> Option<Waiting> {
        let w = self.waiting.remove(id)?;
        if let Some(n) = self.per_source.get_mut(&w.source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&w.source);
            }
        }
        Some(w)
    }
}

impl Desk {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts `ticket` on the desk (at most `max_held` of its identity and rule), and tells
    /// control.
    pub fn hold(&self, ticket: HoldTicket, max_held: u32) -> Result<Held<'_>, Full> {
        if !self.connected.load(Ordering::Relaxed) {
            return Err(Full::Unavailable);
        }
        let mut s = self.lock();
        if s.waiting.len() >= MAX_HELD {
            return Err(Full::Total);
        }
        let source = (ticket.identity.clone(), ticket.rule.clone().unwrap_or_default());
        let n = s.per_source.get(&source).copied().unwrap_or(0);
        if n >= max_held {
            return Err(Full::Source(max_held));
        }
        s.per_source.insert(source.clone(), n + 1);
        let (tx, rx) = oneshot::channel();
        let id = ticket.id.clone();
        s.push(Up::Held { ticket: Box::new(ticket.clone()) });
        s.waiting.insert(id.clone(), Waiting { ticket, source, tx });
        Ok(Held { desk: self, id, rx: Some(rx), done: false })
    }

    /// A reviewer's decision from control: the waiting request gets it; an approval for a
    /// while is remembered (on every data plane, waiting here or not).
    pub fn decide(&self, d: Decision) {
        let mut s = self.lock();
        if let (true, Some(g)) = (d.approved, &d.grant) {
            if s.grants.len() >= MAX_GRANTS {
                let now = now_ms();
                s.grants.retain(|_, until| *until > now);
            }
            if s.grants.len() < MAX_GRANTS {
                let rule = g.rule.clone().unwrap_or_default();
                s.grants.insert((g.who.clone(), g.destination.clone(), rule), g.until_ms);
            }
        }
        if let Some(w) = s.remove(&d.id) {
            let _ = w.tx.send(d);
        }
    }

    /// Whether `who` (`user:…` / `identity:…`) was approved to reach `destination` under
    /// `rule` for a while that has not ended at `now_ms`.
    pub fn granted(&self, who: &str, destination: &str, rule: &str, now_ms: u64) -> bool {
        let s = self.lock();
        let key = (who.to_owned(), destination.to_owned(), rule.to_owned());
        s.grants.get(&key).is_some_and(|u| *u > now_ms)
    }

    /// The next message for control (the link thread drains it).
    pub fn poll_up(&self) -> Option<Up> {
        self.lock().outbox.pop_front()
    }

    /// After a reconnect: every waiting request is told to control again (it may have
    /// restarted), and what was queued before goes first.
    pub fn resend_waiting(&self) {
        let mut s = self.lock();
        let tickets: Vec<HoldTicket> = s.waiting.values().map(|w| w.ticket.clone()).collect();
        let queued: std::collections::HashSet<String> = s
            .outbox
            .iter()
            .filter_map(|m| match m {
                Up::Held { ticket } => Some(ticket.id.clone()),
                _ => None,
            })
            .collect();
        for t in tickets.into_iter().filter(|t| !queued.contains(&t.id)) {
            s.push(Up::Held { ticket: Box::new(t) });
        }
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }

    /// Ends `id`'s wait without a decision and tells control how.
    fn end(&self, id: &str, outcome: &str) {
        let mut s = self.lock();
        if s.remove(id).is_some() {
            s.push(Up::HoldEnded { id: id.to_owned(), outcome: outcome.to_owned() });
        }
    }
}

/// A request on the desk. Dropped before its decision (the client left), it is taken off
/// and control is told.
#[derive(Debug)]
pub struct Held<'a> {
    desk: &'a Desk,
    id: String,
    rx: Option<oneshot::Receiver<Decision>>,
    /// The wait ended (decided, or timed out and told): nothing to take off at drop.
    done: bool,
}

impl Held<'_> {
    /// Its id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Waits for the decision, at most `timeout`.
    pub async fn wait(mut self, timeout: Duration) -> Outcome {
        let Some(rx) = self.rx.take() else { return Outcome::Timeout };
        let outcome = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(d)) => Outcome::Decided(d),
            _ => {
                self.desk.end(&self.id, "timeout");
                Outcome::Timeout
            }
        };
        self.done = true;
        outcome
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        // Dropped mid-wait (the client left, its connection or stream was dropped).
        if !self.done {
            self.desk.end(&self.id, "gone");
        }
    }
}

/// Whom an approval for a while covers: the user, else the identity.
fn grantee(identity: &str, user: Option<&str>) -> String {
    match user {
        Some(u) => format!("user:{u}"),
        None => format!("identity:{identity}"),
    }
}

impl Session {
    /// Phase 3's last step: whether the request waits for a reviewer (the rule holds every
    /// request, or DLP found what its profile wants approved); its ticket goes in `ctx`.
    pub(crate) fn hold_if(&self, req: &RequestView<'_>, fwd: &Forward, ctx: &mut RequestCtx) {
        let Some(a) = &self.headers.approval else { return };
        let rec = &ctx.rec;
        let why = if rec.dlp_action == Some("approve") {
            "dlp"
        } else if a.every_request {
            "rule"
        } else {
            return;
        };
        let prompt = a.shows_prompt.then(|| prompt_text(req, fwd)).flatten();
        ctx.hold = Some(HoldTicket {
            id: crate::block::random_id("apr_"),
            ts_ms: now_ms(),
            timeout_s: a.timeout_s,
            rule: self.rule.clone(),
            identity: self.identity.clone(),
            user: rec.user.clone(),
            src: rec.src.clone(),
            destination: req.authority.to_owned(),
            method: rec.method.clone(),
            path: rec.path.clone(),
            model: rec.model.clone(),
            why: why.into(),
            findings: rec
                .dlp_findings
                .iter()
                .map(|f| FindingCount { detector: f.detector.into(), count: f.count as u64 })
                .collect(),
            prompt,
        });
    }

    /// Phase 3b, between the body and the upstream phases: a held request waits for a
    /// reviewer. Approved (or approved earlier for a while), it goes on; denied, timed out,
    /// or with nobody to ask, it is refused (403, or 503 past the bounds). The record says
    /// who decided and how long it waited.
    pub async fn hold(&self, ctx: &mut RequestCtx) -> Result<(), Refusal> {
        let Some(ticket) = ctx.hold.take() else { return Ok(()) };
        let Some(a) = &self.headers.approval else { return Ok(()) };
        let desk = &self.access.approvals;
        let who = grantee(&ticket.identity, ticket.user.as_deref());
        let mut note = ApprovalNote { id: ticket.id.clone(), ..ApprovalNote::default() };
        let rule = ticket.rule.as_deref().unwrap_or("");
        if desk.granted(&who, &ticket.destination, rule, now_ms()) {
            note.decision = "granted";
            ctx.rec.approval = Some(note);
            return Ok(());
        }
        let started = Instant::now();
        let destination = ticket.destination.clone();
        let held = match desk.hold(ticket, a.max_held) {
            Ok(h) => h,
            Err(full) => {
                note.decision = "refused";
                ctx.rec.approval = Some(note);
                return Err(self.no_room(full));
            }
        };
        let outcome = held.wait(Duration::from_secs(a.timeout_s)).await;
        note.waited_ms = started.elapsed().as_millis() as u64;
        let rule = self.rule.as_deref();
        let result = match outcome {
            Outcome::Decided(d) => {
                note.by = Some(d.by.clone());
                note.reason.clone_from(&d.reason);
                if d.approved {
                    note.decision = "approved";
                    note.grant_minutes = d.grant_minutes;
                    Ok(())
                } else {
                    note.decision = "denied";
                    let mut m = format!("a reviewer ({}) denied this request", d.by);
                    if let Some(r) = &d.reason {
                        let _ = write!(m, ": {r}");
                    }
                    Err(Refusal::forbidden("approval_denied", m, rule))
                }
            }
            Outcome::Timeout => {
                note.decision = "timeout";
                Err(Refusal::forbidden(
                    "approval_timeout",
                    format!(
                        "no reviewer approved this request to {destination} within {} s",
                        a.timeout_s
                    ),
                    rule,
                ))
            }
        };
        ctx.rec.approval = Some(note);
        result
    }

    fn no_room(&self, full: Full) -> Refusal {
        let message = match full {
            Full::Total => format!("{MAX_HELD} requests already wait for approval here"),
            Full::Source(n) => {
                format!("{n} requests of {} already wait for approval", self.identity)
            }
            Full::Unavailable => {
                "this request needs a reviewer's approval and the control plane is not \
                 reachable"
                    .into()
            }
        };
        Refusal {
            status: 503,
            code: if full == Full::Unavailable {
                "approval_unavailable"
            } else {
                "approval_queue_full"
            },
            message,
            rule: self.rule.clone(),
            retry_after: None,
        }
    }
}

/// The prompt a reviewer may read: the request body, decoded, as text (at most
/// [`MAX_PROMPT`] bytes).
fn prompt_text(req: &RequestView<'_>, fwd: &Forward) -> Option<Secret> {
    let enc = req.headers.header("content-encoding").filter(|e| {
        !e.trim_ascii().is_empty() && !e.trim_ascii().eq_ignore_ascii_case(b"identity")
    });
    let decoded = match enc {
        Some(e) if !fwd.decoded => sluice_dlp::body::decode(e, &fwd.body, 1 << 20).ok(),
        _ => None,
    };
    let body = decoded.as_deref().unwrap_or(&fwd.body);
    if body.is_empty() {
        return None;
    }
    let cut = &body[..body.len().min(MAX_PROMPT)];
    Some(Secret::new(String::from_utf8_lossy(cut).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_link::Grant;

    fn ticket(id: &str, identity: &str) -> HoldTicket {
        HoldTicket {
            id: id.into(),
            ts_ms: 0,
            timeout_s: 5,
            rule: Some("r".into()),
            identity: identity.into(),
            user: None,
            src: "10.0.0.1".into(),
            destination: "api.openai.com".into(),
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            model: None,
            why: "rule".into(),
            findings: Vec::new(),
            prompt: None,
        }
    }

    fn decision(id: &str, approved: bool) -> Decision {
        Decision {
            id: id.into(),
            approved,
            by: "rev".into(),
            reason: None,
            grant_minutes: None,
            grant: None,
        }
    }

    #[tokio::test]
    async fn a_decision_reaches_its_request_and_control_hears_of_each_wait() {
        let d = Desk::default();
        assert_eq!(d.hold(ticket("a", "fin"), 8).unwrap_err(), Full::Unavailable);
        d.connected.store(true, Ordering::Relaxed);
        let h = d.hold(ticket("a", "fin"), 8).unwrap();
        assert!(matches!(d.poll_up(), Some(Up::Held { ticket }) if ticket.id == "a"));
        d.decide(decision("a", true));
        assert!(matches!(h.wait(Duration::from_secs(1)).await, Outcome::Decided(x) if x.approved));
        assert_eq!(d.waiting(), 0);
        assert!(d.poll_up().is_none(), "a decided request ends without a notice");
        // Timed out: taken off, and control told.
        let h = d.hold(ticket("b", "fin"), 8).unwrap();
        let _ = d.poll_up();
        assert!(matches!(h.wait(Duration::from_millis(10)).await, Outcome::Timeout));
        assert!(
            matches!(d.poll_up(), Some(Up::HoldEnded { id, outcome }) if id == "b" && outcome == "timeout")
        );
        // The client left: the same.
        drop(d.hold(ticket("c", "fin"), 8).unwrap());
        let _ = d.poll_up();
        assert!(matches!(d.poll_up(), Some(Up::HoldEnded { outcome, .. }) if outcome == "gone"));
        // A decision for nothing waiting is dropped.
        d.decide(decision("zzz", false));
    }

    #[test]
    fn waits_are_bounded_per_source_and_in_all_and_resent_after_a_reconnect() {
        let d = Desk::default();
        d.connected.store(true, Ordering::Relaxed);
        let a = d.hold(ticket("1", "fin"), 2).unwrap();
        let _b = d.hold(ticket("2", "fin"), 2).unwrap();
        assert_eq!(d.hold(ticket("3", "fin"), 2).unwrap_err(), Full::Source(2));
        let _c = d.hold(ticket("4", "eng"), 2).expect("another identity has its own bound");
        drop(a);
        let _d = d.hold(ticket("5", "fin"), 2).expect("a freed place");
        while d.poll_up().is_some() {}
        d.resend_waiting();
        let mut ids: Vec<String> = std::iter::from_fn(|| d.poll_up())
            .filter_map(|m| match m {
                Up::Held { ticket } => Some(ticket.id.clone()),
                _ => None,
            })
            .collect();
        ids.sort();
        assert_eq!(ids, ["2", "4", "5"]);
        let mut all = Vec::new();
        for i in 0..MAX_HELD {
            match d.hold(ticket(&format!("x{i}"), &format!("id{i}")), 2) {
                Ok(h) => all.push(h),
                Err(e) => {
                    assert_eq!(e, Full::Total);
                    break;
                }
            }
        }
        assert_eq!(d.waiting(), MAX_HELD);
    }

    #[test]
    fn an_approval_for_a_while_covers_its_user_and_destination_until_it_ends() {
        let d = Desk::default();
        let mut ok = decision("q", true);
        ok.grant = Some(Grant {
            who: "user:a".into(),
            destination: "api.openai.com".into(),
            rule: Some("r".into()),
            until_ms: 10_000,
        });
        d.decide(ok);
        assert!(d.granted("user:a", "api.openai.com", "r", 9_999));
        assert!(!d.granted("user:a", "api.openai.com", "r", 10_000));
        assert!(!d.granted("user:b", "api.openai.com", "r", 0));
        assert!(!d.granted("user:a", "chatgpt.com", "r", 0));
        assert!(!d.granted("user:a", "api.openai.com", "other-rule", 0), "one rule's only");
        let mut denied = decision("r", false);
        denied.grant =
            Some(Grant { who: "user:b".into(), destination: "x".into(), rule: None, until_ms: 9 });
        d.decide(denied);
        assert!(!d.granted("user:b", "x", "", 0), "a denial grants nothing");
    }
}
