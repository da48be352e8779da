//! Where records go: the local JSON-lines flow log and, with a control link, the spool. The
//! packet engine's flow and stats records and the interception engine's request records
//! ([`RequestQueue`]) are written together, each serialised once.

use std::io::{BufWriter, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Instant;

use sluice_dataplane::engine::Engine;
use sluice_dataplane::link::{Enforced, Spool};
use sluice_dataplane::record::Record;
use tracing::{error, info, warn};

use crate::handle::RequestQueue;

/// Wakes the record writer as soon as records wait (the packet threads after a batch that
/// produced some, the interception engine for each request record), so that a record spends
/// milliseconds in memory, not a tick: a crash then loses next to nothing.
#[derive(Debug, Default)]
pub struct Wake {
    woken: Mutex<bool>,
    cv: Condvar,
}

impl Wake {
    /// Records wait.
    pub fn notify(&self) {
        let mut w = self.woken.lock().unwrap_or_else(PoisonError::into_inner);
        if !*w {
            *w = true;
            self.cv.notify_one();
        }
    }

    /// Waits until notified or `deadline`; true when notified (the flag is then cleared).
    pub fn wait_until(&self, deadline: Instant) -> bool {
        let mut w = self.woken.lock().unwrap_or_else(PoisonError::into_inner);
        while !*w {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else { break };
            w = self.cv.wait_timeout(w, left).unwrap_or_else(PoisonError::into_inner).0;
        }
        std::mem::replace(&mut *w, false)
    }
}

/// The link to control as the record writer sees it: the spool, and whether control is
/// connected now.
pub type Link = (Arc<Mutex<Spool>>, Arc<AtomicBool>);

/// Records emitted since the start, by type.
#[derive(Debug, Default, serde::Serialize)]
pub struct Emitted {
    pub flow: u64,
    pub request: u64,
    pub stats: u64,
}

/// Where records go: the local JSON-lines log, and (with a control link) the spool.
pub struct Output {
    pub log: BufWriter<std::fs::File>,
    /// The interception engine's request records.
    pub requests: Arc<RequestQueue>,
    /// The explicit proxy's tunnels, whose flow records are made there (proxy mode).
    pub tunnels: Option<Arc<crate::tunnels::Tunnels>>,
    pub link: Option<Link>,
    pub emitted: Emitted,
    pub enforced: Arc<Enforced>,
    /// `--on-failure`, shown in every stats record.
    pub on_failure: crate::args::OnFailure,
    /// What passed while no data plane ran, for the first stats record.
    pub outage: Option<sluice_dataplane::bypass::Outage>,
    /// Alarm records to write with the next records (the outage's, at the start).
    pub alarms: Vec<String>,
    /// The writer has fallen behind the interception threads and takes its full share of
    /// the CPU until it catches up ([`behind`]).
    pub behind: bool,
}

/// Request records waiting at a write past which the record writer, background work
/// otherwise, asks for its full share of the CPU (they hold captures in memory), and at or
/// under which it yields again. Normally a write finds a millisecond's worth.
const BEHIND: usize = 4096;
const CAUGHT_UP: usize = 256;

/// Whether a writer that was `behind` is behind with `waiting` request records at a write.
fn behind(was: bool, waiting: usize) -> bool {
    if was { waiting > CAUGHT_UP } else { waiting > BEHIND }
}

impl Output {
    /// Runs `f` on the engine and writes the records it released. Stats records also carry
    /// the emitted counts, the link's state and the policy version in force.
    pub fn write(&mut self, engine: &Mutex<Engine>, f: &mut dyn FnMut(&mut Engine)) {
        let mut records = {
            let mut eng = engine.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut eng);
            std::iter::from_fn(|| eng.poll_record()).collect::<Vec<_>>()
        };
        if let Some(t) = &self.tunnels {
            records.extend(t.take().into_iter().map(|r| Record::Flow(Box::new(r))));
        }
        let mut requests = self.requests.take();
        let now_behind = behind(self.behind, requests.len());
        if now_behind != self.behind {
            match sluice_sched::catch_up(now_behind) {
                Ok(()) if now_behind => {
                    warn!(waiting = requests.len(), "the record writer is behind: full CPU share")
                }
                Ok(()) => info!("the record writer caught up: background share again"),
                Err(e) => warn!("the record writer's CPU share unchanged: {e}"),
            }
            self.behind = now_behind;
        }
        if records.is_empty() && requests.is_empty() && self.alarms.is_empty() {
            return;
        }
        // Each record is serialised once: the same text goes to the log and to the spool.
        // Periodic records (statistics, flow updates) are marked: the spool sheds them first.
        let mut lines = Vec::with_capacity(records.len() + requests.len());
        for a in self.alarms.drain(..) {
            let _ = writeln!(self.log, "{a}");
            lines.push((false, a));
        }
        for r in &mut requests {
            self.emitted.request += 1;
            // Recordings are sealed here, off the interception threads; a panic on one
            // recording's bytes loses that recording, not the process.
            if r.capture.is_some() {
                if crate::watchdog::contained(|| sluice_intercept::recording::seal_captured(r))
                    .is_none()
                {
                    r.capture = None;
                    r.reason.get_or_insert_with(|| "recording not sealed: internal error".into());
                }
                crate::watchdog::beat();
            }
            // A sealed recording goes first, as a record of its own (never part of the
            // request record's JSON), toward control; the local flow log gets it only when
            // there is no control to keep it (it is large, and opens nowhere here).
            if let Some(line) = sluice_intercept::recording::recording_line(r) {
                if self.link.is_none() {
                    let _ = writeln!(self.log, "{line}");
                }
                lines.push((false, line));
            }
            let Ok(line) = serde_json::to_string(r) else { continue };
            let _ = writeln!(self.log, "{line}");
            lines.push((false, line));
        }
        for r in &records {
            let periodic = match r {
                Record::Flow(f) => f.event == "update",
                Record::Stats(_) => true,
                Record::Embryonic(_) => false,
            };
            let line = match r {
                Record::Flow(_) | Record::Embryonic(_) => {
                    self.emitted.flow += 1;
                    serde_json::to_string(r)
                }
                Record::Stats(_) => {
                    self.emitted.stats += 1;
                    serde_json::to_value(r).and_then(|mut v| {
                        self.annotate_stats(&mut v);
                        serde_json::to_string(&v)
                    })
                }
            };
            let Ok(line) = line else { continue };
            let _ = writeln!(self.log, "{line}");
            lines.push((periodic, line));
        }
        if let Err(e) = self.log.flush() {
            error!("writing flow log: {e}");
        }
        if let Some((spool, _)) = &self.link {
            let mut s = spool.lock().unwrap_or_else(PoisonError::into_inner);
            let waiting = s.pending();
            let (keep, shed) = spooled(&lines, s.at_bound());
            s.shed_periodic(shed);
            match s.append(&keep) {
                // An alarm once per episode (the stats records count every failed write).
                Err(e) if waiting == 0 => error!(
                    held = s.pending(),
                    "spooling records failed, they wait in memory until the disk takes them: {e}"
                ),
                Err(_) => {}
                Ok(_) if waiting > 0 => {
                    info!(
                        written = waiting,
                        "the spool takes records again: those waiting are written"
                    )
                }
                Ok(_) => {}
            }
            let lost = s.take_alarm();
            if lost > 0 && s.pending() > 0 {
                // The disk takes nothing now: the alarm waits rather than take the place of
                // an event's record in memory.
                s.rearm_alarm(lost);
            } else if lost > 0 {
                // Records of events were lost: an alarm record says so, in the log and to
                // control (after them in the spool, so it is not lost with them).
                let alarm = serde_json::json!({
                    "type": "alarm",
                    "alarm": "records_dropped",
                    "ts_ms": unix_ms(),
                    "records": lost,
                    "dropped_total": s.dropped(),
                    "reason": "the spool past its bound with the disk short of room, or unwritable \
                               with its memory bound reached",
                })
                .to_string();
                let _ = writeln!(self.log, "{alarm}");
                let _ = s.append(&[alarm]);
            }
        }
    }

    /// Syncs the spool's writes control has not acknowledged when they are due (called on
    /// the clock's tick: the writes themselves sync only when the oldest such write is old
    /// enough), or now (`at_exit`).
    pub fn sync_spool(&self, at_exit: bool) {
        let Some((spool, _)) = &self.link else { return };
        let mut s = spool.lock().unwrap_or_else(PoisonError::into_inner);
        let synced = if at_exit { s.sync_now().map(|()| true) } else { s.sync_due() };
        // Logged at the first failures, then ever more rarely (the statistics count each).
        if let Err(e) = synced
            && s.write_errors().is_power_of_two()
        {
            error!(failed = s.write_errors(), "syncing the spool to the disk failed: {e}");
        }
    }

    fn annotate_stats(&mut self, v: &mut serde_json::Value) {
        let Some(o) = v.as_object_mut() else { return };
        o.insert("records_emitted".into(), serde_json::json!(self.emitted));
        o.insert("on_failure".into(), serde_json::json!(self.on_failure));
        if let Some(t) = &self.tunnels {
            o.insert("proxy_tunnels_open".into(), serde_json::json!(t.open()));
        }
        if let Some(outage) = self.outage.take() {
            // The ports were in bypass before this run: when it began, what went through.
            o.insert("outage".into(), serde_json::json!(outage));
        }
        o.insert("policy_version".into(), serde_json::json!(self.enforced.current().0));
        if let Some((spool, connected)) = &self.link {
            let s = spool.lock().unwrap_or_else(PoisonError::into_inner);
            o.insert(
                "link".into(),
                serde_json::json!({ "connected": connected.load(Ordering::Relaxed),
                    "spool_depth": s.depth(), "spool_bytes": s.bytes(), "spool_dropped": s.dropped(),
                    "spool_pending": s.pending(), "spool_write_errors": s.write_errors(),
                    "spool_syncs": s.syncs(),
                    "spool_shed": s.shed() }),
            );
        }
    }
}

/// The lines to spool of `lines` (each marked periodic or not) and how many were shed: at
/// the spool's bound the periodic ones go (statistics and flow updates: the next ones say as
/// much), the records of events stay.
fn spooled(lines: &[(bool, String)], at_bound: bool) -> (Vec<&str>, usize) {
    let keep: Vec<&str> = lines
        .iter()
        .filter(|(periodic, _)| !(at_bound && *periodic))
        .map(|(_, l)| l.as_str())
        .collect();
    let shed = lines.len() - keep.len();
    (keep, shed)
}

/// The alarm record of an outage: control logs it as an error and writes it to the audit
/// log (`alarm.outage`), so what the ports did without a data plane is on record there.
pub fn outage_alarm(o: &sluice_dataplane::bypass::Outage) -> String {
    serde_json::json!({
        "type": "alarm",
        "alarm": "outage",
        "ts_ms": unix_ms(),
        "outage": o,
        "reason": "no data plane ran: the failure program had the ports",
    })
    .to_string()
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writer_behind_stays_so_until_it_has_caught_up() {
        assert!(!behind(false, 10));
        assert!(!behind(false, BEHIND));
        assert!(behind(false, BEHIND + 1));
        assert!(behind(true, 1000), "still behind between the two marks");
        assert!(!behind(true, CAUGHT_UP));
    }

    #[test]
    fn at_the_bound_periodic_records_are_shed_events_kept_in_order() {
        let lines: Vec<(bool, String)> =
            [(false, "end1"), (true, "stats"), (false, "req"), (true, "update"), (false, "end2")]
                .iter()
                .map(|(p, l)| (*p, (*l).to_owned()))
                .collect();
        assert_eq!(spooled(&lines, false), (vec!["end1", "stats", "req", "update", "end2"], 0));
        assert_eq!(spooled(&lines, true), (vec!["end1", "req", "end2"], 2));
    }
}
