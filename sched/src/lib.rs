//! Scheduling of the work off the traffic's path (ARCHITECTURE.md, "Processes and crates"):
//! the data plane's record writer and link thread, and all of sluice-control, run as
//! `SCHED_BATCH`, so that their wake-ups (a records batch, an API call) do not preempt the
//! packet and interception threads. They keep their fair share of the CPU; they only wait for
//! the next scheduling point instead of taking it at once.
#![allow(unsafe_code)]

/// Makes the calling thread (not the process: Linux schedules threads) batch work. New threads
/// inherit it: call it only after spawning the threads that carry traffic.
pub fn background() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 names the calling thread; the call only reads `param`.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
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
