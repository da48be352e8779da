//! Scheduling of the work off the traffic's path (ARCHITECTURE.md, "Processes and crates"):
//! the data plane's record writer and link thread, and all of sluice-control, run as
//! `SCHED_BATCH` at nice [`BACKGROUND_NICE`]. Their wake-ups (a records batch, an API call) do
//! not preempt the packet and interception threads, and under load they take the CPU the
//! traffic leaves (a tenth of a normal thread's share when both want it) rather than an equal
//! share: the records wait in the spool instead of the requests waiting for a core. A writer
//! that falls behind asks for its full share back ([`catch_up`]).
//!
//! And the service manager's side of running as a daemon: the systemd notify protocol
//! ([`notify`]), which both binaries speak.
#![allow(unsafe_code)]

mod notify;
pub use notify::{notify, watchdog_every};

/// The nice value of background work: CFS weight 110 against a normal thread's 1024.
pub const BACKGROUND_NICE: i32 = 10;

/// Makes the calling thread (not the process: Linux schedules threads) batch work at nice
/// [`BACKGROUND_NICE`]. New threads inherit it: call it only after spawning the threads that
/// carry traffic.
pub fn background() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 names the calling thread; the call only reads `param`.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    set_nice(BACKGROUND_NICE)
}

/// Gives the calling background thread its full share of the CPU while `behind` (nice 0), and
/// the background share again once it is not. Raising a thread's priority needs privilege
/// (root, `CAP_SYS_NICE` or `RLIMIT_NICE`): without it, this says so and nothing changes.
pub fn catch_up(behind: bool) -> std::io::Result<()> {
    set_nice(if behind { 0 } else { BACKGROUND_NICE })
}

/// The calling thread's nice value (Linux: `PRIO_PROCESS` with 0 names the calling thread).
fn set_nice(nice: i32) -> std::io::Result<()> {
    // SAFETY: no memory is passed.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_calling_thread_becomes_batch_work() {
        // SAFETY (both): pid 0 names the calling thread; no memory is passed.
        let policy = || unsafe { libc::sched_getscheduler(0) };
        let before = policy();
        let inside = std::thread::spawn(move || {
            super::background().unwrap();
            policy()
        })
        .join()
        .unwrap();
        assert_eq!(inside, libc::SCHED_BATCH);
        assert_eq!(policy(), before, "the spawning thread keeps its policy");
    }

    #[test]
    fn background_yields_and_catches_up() {
        // SAFETY: no memory is passed (errno is cleared first: -1 is a valid value).
        let nice = || unsafe {
            *libc::__errno_location() = 0;
            libc::getpriority(libc::PRIO_PROCESS, 0)
        };
        let before = nice();
        let (bg, up, again) = std::thread::spawn(move || {
            super::background().unwrap();
            let bg = nice();
            // Back to nice 0 needs privilege (the tests run as root in CI).
            let up = super::catch_up(true).map(|()| nice()).ok();
            super::catch_up(false).unwrap();
            (bg, up, nice())
        })
        .join()
        .unwrap();
        assert_eq!(bg, super::BACKGROUND_NICE);
        if let Some(up) = up {
            assert_eq!(up, 0);
        }
        assert_eq!(again, super::BACKGROUND_NICE);
        assert_eq!(nice(), before, "the spawning thread keeps its nice value");
    }

    #[test]
    fn threads_spawned_after_inherit_it() {
        // SAFETY: pid 0 names the calling thread; no memory is passed.
        let policy = || unsafe { libc::sched_getscheduler(0) };
        let (own, child) = std::thread::spawn(move || {
            super::background().unwrap();
            (policy(), std::thread::spawn(policy).join().unwrap())
        })
        .join()
        .unwrap();
        assert_eq!((own, child), (libc::SCHED_BATCH, libc::SCHED_BATCH));
    }
}
