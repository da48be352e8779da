//! Scheduling of the threads off the traffic's path (ARCHITECTURE.md, "Processes and
//! crates"): the record writer and the link thread run as `SCHED_BATCH`, so that their
//! wake-ups do not preempt the packet and interception threads. They keep their fair share of
//! the CPU; they only wait for the next scheduling point instead of taking it at once.
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
}
