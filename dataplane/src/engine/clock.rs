//! Time as the engine is given it: the binary reads the clocks, the engine never does.

/// Time as the engine sees it: a monotonic clock for timeouts, wall time for records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic milliseconds.
    pub mono_ms: u64,
    /// Unix milliseconds.
    pub unix_ms: u64,
}

/// The clock the binary feeds the engine with: monotonic since start, and wall time.
#[derive(Debug, Clone, Copy)]
pub struct Clock(std::time::Instant);

impl Default for Clock {
    fn default() -> Self {
        Clock(std::time::Instant::now())
    }
}

impl Clock {
    /// Now.
    pub fn now(&self) -> Now {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Now { mono_ms: self.0.elapsed().as_millis() as u64, unix_ms }
    }

    /// The instant of the monotonic time `mono_ms` (as [`Clock::now`] gives it); an hour
    /// from now for a time past what an instant can hold.
    pub fn instant(&self, mono_ms: u64) -> std::time::Instant {
        let far = || std::time::Instant::now() + std::time::Duration::from_secs(3600);
        self.0.checked_add(std::time::Duration::from_millis(mono_ms)).unwrap_or_else(far)
    }
}
