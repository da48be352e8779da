//! How long a request body may take, sans-IO: a first window, extended by the bytes that
//! arrive at a minimum rate (Apache's `mod_reqtimeout`, `body=…,MinRate=…`). A body trickled
//! a byte every few seconds (slowloris on the body) runs out of time in the first window; an
//! upload that keeps the rate never does, however large.

use std::time::{Duration, Instant};

/// The first window: the whole body when it is small (as a head has 30 s).
pub const BODY_WINDOW: Duration = Duration::from_secs(30);

/// Each byte past the window's worth buys this much more time: 500 bytes per second.
pub const MIN_RATE: u64 = 500;

/// The most a body's bytes can earn.
const MOST: Duration = Duration::from_secs(24 * 3600);

/// The deadline of one request body.
#[derive(Debug, Clone, Copy)]
pub struct BodyDeadline {
    start: Instant,
    received: u64,
}

impl BodyDeadline {
    /// A body starting to arrive at `now`.
    pub fn new(now: Instant) -> Self {
        BodyDeadline { start: now, received: 0 }
    }

    /// `n` more bytes arrived.
    pub fn received(&mut self, n: usize) {
        self.received = self.received.saturating_add(n as u64);
    }

    /// When the body must be whole by, given what has arrived (at most a day away: each
    /// read has its own idle limit too).
    pub fn at(&self) -> Instant {
        let earned = Duration::from_millis(self.received.saturating_mul(1000) / MIN_RATE);
        self.start + BODY_WINDOW + earned.min(MOST)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trickle_runs_out_and_a_steady_upload_does_not() {
        let t0 = Instant::now();
        let mut d = BodyDeadline::new(t0);
        assert_eq!(d.at(), t0 + BODY_WINDOW);
        // A byte every 3 s: 10 bytes in the window buy 20 ms.
        for _ in 0..10 {
            d.received(1);
        }
        assert_eq!(d.at(), t0 + BODY_WINDOW + Duration::from_millis(20));
        // 1 MB at the minimum rate takes 2,000 s, and has earned them.
        let mut up = BodyDeadline::new(t0);
        up.received(1_000_000);
        assert_eq!(up.at(), t0 + BODY_WINDOW + Duration::from_secs(2_000));
        // A huge count earns at most a day (no overflow).
        up.received(usize::MAX);
        assert_eq!(up.at(), t0 + BODY_WINDOW + MOST);
    }
}
