//! The data plane never runs half-working: every thread that carries traffic (the ports'
//! packet threads, the TUN thread, the interception runtimes) and the record writer's loop
//! bump a counter as they go round; the watchdog's thread checks them every 50 ms (and beats
//! the bypass while they are all well), and a counter that stops for `--watchdog-ms` ends the
//! process with the thread's name, as a panic outside a connection's task does. systemd (`Type=notify`,
//! `WatchdogSec`) then restarts it, and a fail-open bypass takes over meanwhile; the notify
//! messages go to `$NOTIFY_SOCKET` when systemd set it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing::error;

/// Exit status of a process ended by the watchdog or a panic (`EX_SOFTWARE`).
pub const EXIT_FAULT: i32 = 70;

/// The counters of the watched threads, and when each last moved.
#[derive(Debug)]
pub struct Watchdog {
    limit: Duration,
    watched: Vec<Watched>,
}

#[derive(Debug)]
struct Watched {
    name: String,
    beat: Arc<AtomicU64>,
    seen: u64,
    moved: Instant,
}

/// A thread that stopped going round.
#[derive(Debug, PartialEq, Eq)]
pub struct Stall {
    pub thread: String,
    pub for_ms: u128,
}

impl Watchdog {
    /// A watchdog that calls a thread stalled after `limit` without progress.
    pub fn new(limit: Duration) -> Self {
        Watchdog { limit, watched: Vec::new() }
    }

    /// Watches the thread `name`, which bumps the returned counter as it goes round.
    pub fn watch(&mut self, name: impl Into<String>, now: Instant) -> Arc<AtomicU64> {
        let beat = Arc::new(AtomicU64::new(0));
        self.watched.push(Watched { name: name.into(), beat: beat.clone(), seen: 0, moved: now });
        beat
    }

    /// The first thread whose counter has not moved for the limit, if any.
    pub fn check(&mut self, now: Instant) -> Option<Stall> {
        for w in &mut self.watched {
            let v = w.beat.load(Ordering::Relaxed);
            if v != w.seen {
                w.seen = v;
                w.moved = now;
            } else if now.duration_since(w.moved) > self.limit {
                return Some(Stall {
                    thread: w.name.clone(),
                    for_ms: now.duration_since(w.moved).as_millis(),
                });
            }
        }
        None
    }
}

thread_local! {
    /// This thread's counter, and (test hook) when it is to stall.
    static MINE: std::cell::RefCell<Option<(Arc<AtomicU64>, Option<Instant>)>> =
        const { std::cell::RefCell::new(None) };
}

/// Makes `beat` the counter the calling thread bumps with [`beat`].
///
/// Test hook: `SLUICE_TEST_STALL=<name>` makes the thread of that name, or whose name ends
/// in `-<name>` (`inside`: the inside port's, ring or socket), stop for good 3 s after it
/// starts, as a thread stuck in a system call or a loop would (the lab's watchdog test).
pub fn this_thread(beat: Arc<AtomicU64>) {
    let name = std::thread::current().name().unwrap_or_default().to_owned();
    let stall = std::env::var("SLUICE_TEST_STALL")
        .ok()
        .filter(|t| !t.is_empty() && (name == *t || name.ends_with(&format!("-{t}"))));
    let at = stall.map(|_| Instant::now() + Duration::from_secs(3));
    MINE.with(|m| *m.borrow_mut() = Some((beat, at)));
}

/// The calling thread went round once more.
pub fn beat() {
    let stall = MINE.with(|m| {
        let m = m.borrow();
        let Some((b, at)) = m.as_ref() else { return false };
        b.fetch_add(1, Ordering::Relaxed);
        at.is_some_and(|t| Instant::now() >= t)
    });
    if stall {
        tracing::warn!("SLUICE_TEST_STALL: this thread stops here");
        loop {
            std::thread::park();
        }
    }
}

thread_local! {
    /// In [`contained`]: a panic here is one record's, caught there.
    static CONTAINED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` (work on one record's attacker-supplied bytes, such as sealing a recording on the
/// record writer's thread) so that a panic in it is that record's alone, as on an
/// interception thread: reported, caught, `None`.
pub fn contained<R>(f: impl FnOnce() -> R) -> Option<R> {
    CONTAINED.with(|c| c.set(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok();
    CONTAINED.with(|c| c.set(false));
    r
}

/// A panic ends the process with its message (after the default report), so that nothing
/// runs on with a thread gone; except on an interception thread, where a panic is one
/// connection's task's (tokio ends that task and its connection, the runtime goes on; a
/// runtime that dies stops beating, and the watchdog ends the process then), and within
/// [`contained`]. One client that finds a panic cannot take the appliance down, nor switch
/// inspection off through a bypass.
pub fn exit_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        let thread = std::thread::current().name().unwrap_or("unnamed").to_owned();
        if thread.starts_with("intercept-") {
            error!(thread, "a connection's task panicked, its connection ends: {info}");
            return;
        }
        if CONTAINED.with(std::cell::Cell::get) {
            error!(thread, "work on one record panicked, that record goes without it: {info}");
            return;
        }
        error!(thread, "a thread panicked: exiting (status {EXIT_FAULT}): {info}");
        std::process::exit(EXIT_FAULT);
    }));
}

/// Ends the process for a stalled thread.
pub fn exit_stalled(s: &Stall) -> ! {
    error!(
        thread = %s.thread,
        ms = s.for_ms as u64,
        "a thread made no progress: exiting (status {EXIT_FAULT})"
    );
    std::process::exit(EXIT_FAULT);
}

/// Tells systemd `state` (`READY=1`, `WATCHDOG=1`, `STOPPING=1`) when it started this
/// process as a notify service; does nothing otherwise.
pub fn notify(state: &str) {
    if let Err(e) = sluice_sched::notify(state) {
        tracing::warn!("telling systemd {state} failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_within_contained_is_caught_and_the_mark_cleared() {
        assert_eq!(contained(|| 5), Some(5));
        assert!(!CONTAINED.with(std::cell::Cell::get));
        assert_eq!(contained(|| -> u8 { panic!("one record's bytes") }), None);
        assert!(!CONTAINED.with(std::cell::Cell::get), "cleared after a panic too");
    }

    #[test]
    fn a_counter_that_stops_is_a_stall_and_one_that_moves_is_not() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(Duration::from_millis(500));
        let a = w.watch("ring-inside", t0);
        let b = w.watch("intercept-0", t0);
        a.fetch_add(1, Ordering::Relaxed);
        b.fetch_add(1, Ordering::Relaxed);
        assert_eq!(w.check(t0 + Duration::from_millis(100)), None);
        // a goes on, b stops.
        for ms in [300, 500, 600] {
            a.fetch_add(1, Ordering::Relaxed);
            assert_eq!(w.check(t0 + Duration::from_millis(ms)), None, "{ms}");
        }
        a.fetch_add(1, Ordering::Relaxed);
        let s = w.check(t0 + Duration::from_millis(701)).unwrap();
        assert_eq!(s.thread, "intercept-0");
        assert_eq!(s.for_ms, 601);
    }
}
