//! Unix milliseconds as a UTC calendar date and time, for log timestamps and tables (no
//! time-zone database needed: everything Sluice prints is UTC).

/// A UTC date and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utc {
    /// Year.
    pub year: i64,
    /// Month, 1–12.
    pub month: u64,
    /// Day of the month, 1–31.
    pub day: u64,
    /// Hour, 0–23.
    pub hour: u64,
    /// Minute.
    pub minute: u64,
    /// Second.
    pub second: u64,
    /// Millisecond.
    pub millis: u64,
}

/// The UTC date and time of unix ms `ms` (civil-from-days, Howard Hinnant's algorithm).
pub fn from_unix_ms(ms: u64) -> Utc {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = i64::try_from(days).unwrap_or(i64::MAX / 2) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    Utc {
        year: yoe + era * 400 + i64::from(month <= 2),
        month: month.unsigned_abs(),
        day: day.unsigned_abs(),
        hour: rem / 3600,
        minute: rem % 3600 / 60,
        second: rem % 60,
        millis: ms % 1000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        let d = from_unix_ms(951_782_400_000);
        assert_eq!((d.year, d.month, d.day, d.hour), (2000, 2, 29, 0));
        let d = from_unix_ms(1_795_000_000_999);
        assert_eq!(
            (d.year, d.month, d.day, d.hour, d.minute, d.second, d.millis),
            (2026, 11, 18, 11, 6, 40, 999)
        );
        assert_eq!(from_unix_ms(0).year, 1970);
    }
}
