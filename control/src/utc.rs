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

/// Unix ms of a UTC date `YYYY-MM-DD` (its midnight) or date and time `YYYY-MM-DDTHH:MM:SSZ`
/// (days-from-civil, the inverse of [`from_unix_ms`]). Dates before 1970 are refused.
pub fn parse(s: &str) -> Option<u64> {
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t.strip_suffix('Z')?)),
        None => (s, None),
    };
    let num = |t: &str, len: usize| -> Option<i64> {
        (t.len() == len && t.bytes().all(|b| b.is_ascii_digit())).then(|| t.parse().ok())?
    };
    let mut d = date.split('-');
    let (y, m, day) = (num(d.next()?, 4)?, num(d.next()?, 2)?, num(d.next()?, 2)?);
    if d.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    let secs_of_day = match time {
        None => 0,
        Some(t) => {
            let mut p = t.split(':');
            let (h, mi, se) = (num(p.next()?, 2)?, num(p.next()?, 2)?, num(p.next()?, 2)?);
            if p.next().is_some() || h > 23 || mi > 59 || se > 59 {
                return None;
            }
            h * 3600 + mi * 60 + se
        }
    };
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let ms = (days * 86_400 + secs_of_day).checked_mul(1000)?;
    let ms = u64::try_from(ms).ok()?;
    // A day past the month's end (2026-02-30) is refused: it would not read back the same.
    let back = from_unix_ms(ms);
    (back.month == m.unsigned_abs() && back.day == day.unsigned_abs()).then_some(ms)
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates_parse_to_what_they_print() {
        assert_eq!(parse("1970-01-01"), Some(0));
        assert_eq!(parse("2026-10-01"), Some(1_790_812_800_000));
        assert_eq!(parse("2026-10-01T12:30:05Z"), Some(1_790_812_800_000 + 45_005_000));
        let t = from_unix_ms(parse("2024-02-29T23:59:59Z").unwrap());
        assert_eq!((t.year, t.month, t.day, t.hour, t.second), (2024, 2, 29, 23, 59));
        for bad in [
            "2026-02-30",
            "2026-13-01",
            "26-10-01",
            "2026-10-01T25:00:00Z",
            "2026-10-01T12:00:00",
            "1969-12-31",
            "2026-10-1",
            "x",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

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
