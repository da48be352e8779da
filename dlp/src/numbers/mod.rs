//! Number-shaped detectors: payment cards (Luhn, brand prefixes and lengths), US SSNs
//! (impossible areas, groups and serials refused), phone numbers (E.164, North American and
//! UK national forms), IPv4 addresses, and the letter–digit formats that start like them
//! (IBAN with country length and mod-97, UK NINO). [`step`] reads what starts at a byte; the
//! block pass ([`crate::blocks`]) calls it only where a byte class says something can.

mod checks;

use super::{DetectorSet, Match, has};
pub(crate) use checks::lined;
use checks::*;

/// Detector names implemented here.
pub(crate) const NAMES: &[&str] =
    &["credit_card", "us_ssn", "phone", "ip_address", "iban", "uk_nino"];

/// The detectors of `set` implemented here.
pub(crate) fn subset(set: &DetectorSet) -> DetectorSet {
    let mine = DetectorSet::from_names(NAMES).unwrap_or_default();
    DetectorSet(set.0 & mine.0)
}

pub(crate) fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Which detectors of this module are on.
#[derive(Clone, Copy)]
pub(crate) struct Want {
    pub(crate) card: bool,
    pub(crate) ssn: bool,
    pub(crate) phone: bool,
    pub(crate) ip: bool,
    pub(crate) iban: bool,
    pub(crate) nino: bool,
}

impl Want {
    pub(crate) fn of(set: &DetectorSet) -> Self {
        Want {
            card: has!(set, "credit_card"),
            ssn: has!(set, "us_ssn"),
            phone: has!(set, "phone"),
            ip: has!(set, "ip_address"),
            iban: has!(set, "iban"),
            nino: has!(set, "uk_nino"),
        }
    }

    pub(crate) fn numeric(self) -> bool {
        self.card || self.ssn || self.phone || self.ip
    }

    pub(crate) fn letters(self) -> bool {
        self.iban || self.nino
    }
}

/// Whether a run of `digits` digits could be something an enabled detector matches, from its
/// length, whether it opens with `+`, and whether it is `bare` (digits only, nothing between
/// them): IPv4 4–12 digits with dots; cards 13–19; SSNs 9; phones 10 or 11 with separators,
/// or 8–15 after `+`.
pub(crate) fn length_fits(digits: usize, plus: bool, bare: bool, want: Want) -> bool {
    (want.ip && !bare && (4..=12).contains(&digits))
        || (want.card && (13..=19).contains(&digits))
        || (want.ssn && digits == 9)
        || (want.phone
            && ((!bare && (digits == 10 || digits == 11)) || (plus && (8..=15).contains(&digits))))
}

/// What can start at `b[i]`: a match is pushed to `out`. Returns where scanning resumes when
/// a candidate was read (past the whole run, matched or not), `None` to go on at `i + 1`.
pub(crate) fn step(b: &[u8], i: usize, want: Want, out: &mut Vec<Match>) -> Option<usize> {
    let c = *b.get(i)?;
    let boundary = i == 0 || !is_word(b[i - 1]);
    if c.is_ascii_uppercase() {
        if want.letters() && boundary && i + 3 < b.len() {
            if want.iban
                && b[i + 1].is_ascii_uppercase()
                && b[i + 2].is_ascii_digit()
                && b[i + 3].is_ascii_digit()
                && let Some(end) = iban_at(b, i)
            {
                out.push(Match { detector: "iban", start: i, end });
                return Some(end);
            }
            if want.nino
                && let Some(end) = nino_at(b, i)
            {
                out.push(Match { detector: "uk_nino", start: i, end });
                return Some(end);
            }
        }
        return None;
    }
    let starts = c.is_ascii_digit()
        || ((c == b'+' || c == b'(') && b.get(i + 1).is_some_and(u8::is_ascii_digit));
    if !want.numeric() || !starts || !boundary || (i > 0 && (b[i - 1] == b'.' || b[i - 1] == b'-'))
    {
        return None;
    }
    let (end, digits) = run_end(b, i);
    if want.card
        && lined(b, end)
        && let Some(card_end) = lined_card(b, i)
    {
        out.push(Match { detector: "credit_card", start: i, end: card_end });
        return Some(card_end);
    }
    // Most numbers in prose have a length no enabled detector has.
    if !length_fits(digits, c == b'+', end - i == digits, want) {
        return Some(end.max(i + 1));
    }
    let cand = &b[i..end];
    if let Some((name, s, e)) = classify(cand, b, i, want) {
        out.push(Match { detector: name, start: i + s, end: i + e });
    }
    Some(end.max(i + 1))
}

/// Whether a run of digits goes on through `b[at]`: a single separator before more digits, or
/// the `) ` of `(415) 555-2671`.
pub(crate) fn run_goes_on(b: &[u8], at: usize) -> bool {
    match (b.get(at), b.get(at + 1)) {
        (Some(&c), Some(&d)) => {
            b" -.()".contains(&c) && (d.is_ascii_digit() || (c == b')' && d == b' '))
        }
        _ => false,
    }
}

/// End of a run of digits with single separators (space, `-`, `.`, `(`, `)`, leading `+`),
/// and the number of digits in it.
pub(crate) fn run_end(b: &[u8], start: usize) -> (usize, usize) {
    let mut i = start;
    let mut digits = 0;
    let stop = b.len().min(start + 64);
    while i < stop {
        let c = b[i];
        if c.is_ascii_digit() {
            digits += 1;
            i += 1;
        } else if ((c == b'+' || c == b'(') && i == start) || run_goes_on(b, i) {
            // an opening `+`/`(`, or a single separator before more digits
            i += 1;
        } else {
            break;
        }
    }
    // A trailing separator is not part of it.
    while i > start && !b[i - 1].is_ascii_digit() {
        i -= 1;
    }
    if digits == 0 { (start + 1, 0) } else { (i, digits) }
}

pub(crate) fn classify(
    cand: &[u8],
    all: &[u8],
    at: usize,
    want: Want,
) -> Option<(&'static str, usize, usize)> {
    let Want { card, ssn, phone, ip, .. } = want;
    // What follows must not continue the token (letters, digits, another separator+digit).
    let after = all.get(at + cand.len()).copied();
    if after.is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_') {
        return None;
    }
    let mut digits = [0u8; 40];
    let mut n = 0;
    let mut seps: [u8; 8] = [0; 8];
    let mut nseps = 0;
    let mut groups = [0usize; 8];
    let mut ng = 0;
    let mut cur = 0;
    for &c in cand {
        if c.is_ascii_digit() {
            if n < digits.len() {
                digits[n] = c - b'0';
            }
            n += 1;
            cur += 1;
        } else {
            if cur > 0 && ng < groups.len() {
                groups[ng] = cur;
                ng += 1;
            }
            cur = 0;
            if nseps < seps.len() {
                seps[nseps] = c;
            }
            nseps += 1;
        }
    }
    if cur > 0 && ng < groups.len() {
        groups[ng] = cur;
        ng += 1;
    }
    let seps = &seps[..nseps.min(8)];
    let groups = &groups[..ng];
    let d = &digits[..n.min(40)];
    let plus = cand.first() == Some(&b'+');
    let paren = cand.contains(&b'(');
    if ip && !plus && !paren && ng == 4 && seps.iter().all(|&s| s == b'.') && ipv4(cand) {
        return Some(("ip_address", 0, cand.len()));
    }
    let uniform = |c: u8| !seps.is_empty() && seps.iter().all(|&s| s == c);
    // Dots and line breaks are separators an evasion uses, not how numbers are written: a
    // card so written counts only in exactly a card's groups (and Luhn and brand below).
    if card
        && !plus
        && !paren
        && uniform(b'.')
        && (13..=19).contains(&n)
        && card_groups(groups, seps)
        && brand(d)
        && luhn(d)
    {
        return Some(("credit_card", 0, cand.len()));
    }
    if seps.contains(&b'.') {
        // Dotted numbers are versions, amounts and addresses; phones with dots are
        // North American (3.3.4) only.
        if phone && !plus && groups == [3, 3, 4] && seps.iter().all(|&s| s == b'.') && nanp(d) {
            return Some(("phone", 0, cand.len()));
        }
        return None;
    }
    if card
        && !plus
        && !paren
        && (13..=19).contains(&n)
        && card_groups(groups, seps)
        && brand(d)
        && luhn(d)
    {
        return Some(("credit_card", 0, cand.len()));
    }
    if ssn && !plus && !paren && n == 9 {
        let dashed = groups == [3, 2, 4]
            && (seps.iter().all(|&s| s == b'-') || seps.iter().all(|&s| s == b' '));
        let bare = ng == 1 && near_keyword(all, at, &[b"ssn", b"social security"]);
        if (dashed || bare) && ssn_valid(d) {
            return Some(("us_ssn", 0, cand.len()));
        }
    }
    if phone {
        if plus && (8..=15).contains(&n) && d[0] != 0 && (ng > 1 || n >= 10) {
            return Some(("phone", 0, cand.len()));
        }
        // North American: (NPA) NXX-XXXX, NPA-NXX-XXXX, NPA NXX XXXX
        if !plus && n == 10 && groups == [3, 3, 4] && nanp(d) {
            return Some(("phone", 0, cand.len()));
        }
        if !plus && n == 11 && groups == [1, 3, 3, 4] && d[0] == 1 && nanp(&d[1..]) {
            return Some(("phone", 0, cand.len()));
        }
        // UK national: 0 + 10 digits, grouped (020 7946 0958, 07700 900123, 0161 496 0000)
        if !plus
            && !paren
            && n == 11
            && d[0] == 0
            && d[1] != 0
            && ng >= 2
            && seps.iter().all(|&s| s == b' ')
            && matches!(groups, [3, 4, 4] | [5, 6] | [4, 3, 4] | [4, 6] | [5, 3, 3])
        {
            return Some(("phone", 0, cand.len()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(text: &str, name: &str) -> Vec<String> {
        let set = DetectorSet::from_names(&[name]).unwrap();
        let mut out = Vec::new();
        crate::blocks::scan(text.as_bytes(), &set, &mut out, None, &mut crate::blocks::no_others());
        out.iter().map(|m| text[m.start..m.end].to_owned()).collect()
    }

    #[test]
    fn cards() {
        assert_eq!(
            find("pay with 4111 1111 1111 1111 today", "credit_card"),
            ["4111 1111 1111 1111"]
        );
        assert_eq!(find("amex 3782-822463-10005.", "credit_card"), ["3782-822463-10005"]);
        assert_eq!(find("5555555555554444", "credit_card"), ["5555555555554444"]);
        assert!(find("4111 1111 1111 1112", "credit_card").is_empty(), "Luhn");
        assert!(find("order 1234567890123452", "credit_card").is_empty(), "no brand");
        assert!(find("4111-1111 1111-1111", "credit_card").is_empty(), "mixed separators");
        assert!(find("v4111111111111111x", "credit_card").is_empty(), "inside a token");
        assert_eq!(find("card 4111.1111.1111.1111 ok", "credit_card"), ["4111.1111.1111.1111"]);
        assert_eq!(find("4111\n1111\n1111\n1111\n", "credit_card"), ["4111\n1111\n1111\n1111"]);
        assert_eq!(
            find("4111\r\n1111\r\n1111\r\n1111", "credit_card"),
            ["4111\r\n1111\r\n1111\r\n1111"]
        );
        assert!(find("4111\n1111\n1111\n1112", "credit_card").is_empty(), "Luhn");
        assert!(find("version 4111.1111.1111.11", "credit_card").is_empty());
        assert_eq!(
            find("123-45-6789\n234-56-7890\n", "us_ssn"),
            ["123-45-6789", "234-56-7890"],
            "lines of other numbers are not joined"
        );
    }

    #[test]
    fn ssns() {
        assert_eq!(find("SSN 123-45-6789", "us_ssn"), ["123-45-6789"]);
        assert_eq!(find("ssn: 123456789", "us_ssn"), ["123456789"]);
        assert!(find("id 123456789", "us_ssn").is_empty(), "bare digits need a keyword");
        for bad in [
            "000-12-3456",
            "666-12-3456",
            "912-12-3456",
            "123-00-4567",
            "123-45-0000",
            "078-05-1120",
        ] {
            assert!(find(bad, "us_ssn").is_empty(), "{bad}");
        }
    }

    #[test]
    fn phones_ibans_ninos_ips() {
        assert_eq!(find("call +44 20 7946 0958 now", "phone"), ["+44 20 7946 0958"]);
        assert_eq!(find("(415) 555-2671", "phone"), ["(415) 555-2671"]);
        assert_eq!(find("415-555-2671", "phone"), ["415-555-2671"]);
        assert_eq!(find("020 7946 0958", "phone"), ["020 7946 0958"]);
        assert!(find("2024-01-15", "phone").is_empty());
        assert!(find("version 1.2.3", "phone").is_empty());
        assert_eq!(find("GB82 WEST 1234 5698 7654 32", "iban"), ["GB82 WEST 1234 5698 7654 32"]);
        assert_eq!(find("DE89370400440532013000", "iban"), ["DE89370400440532013000"]);
        assert!(find("GB82 WEST 1234 5698 7654 33", "iban").is_empty(), "mod-97");
        assert_eq!(find("NINO QQ 12 34 56 C", "uk_nino"), Vec::<String>::new(), "QQ is not issued");
        assert_eq!(find("NINO AB 12 34 56 C", "uk_nino"), ["AB 12 34 56 C"]);
        assert_eq!(find("JG103759A", "uk_nino"), ["JG103759A"]);
        assert_eq!(find("host 10.20.1.10 up", "ip_address"), ["10.20.1.10"]);
        assert!(find("10.20.300.1", "ip_address").is_empty());
    }
}
