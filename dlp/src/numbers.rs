//! Number-shaped detectors, found by one byte loop: payment cards (Luhn, brand prefixes and
//! lengths), US SSNs (impossible areas, groups and serials refused), phone numbers (E.164,
//! North American and UK national forms), IPv4 addresses, and the letter–digit formats that
//! start like them (IBAN with country length and mod-97, UK NINO).

use super::{DetectorSet, Match};

/// Detector names implemented here.
pub(crate) const NAMES: &[&str] =
    &["credit_card", "us_ssn", "phone", "ip_address", "iban", "uk_nino"];

pub(crate) fn any_enabled(set: &DetectorSet) -> bool {
    NAMES.iter().any(|n| set.has(n))
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The high bit of each byte of `x` that lies strictly between `m` and `n` (both at most
/// 128), others zero: the SWAR "hasbetween" of Bit Twiddling Hacks, exact per byte (no carry
/// crosses bytes). Bytes of 128 and over never count.
fn between(x: u64, m: u8, n: u8) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let (m, n) = (u64::from(m), u64::from(n));
    let low7 = x & (ONES * 127);
    (ONES * (127 + n)).wrapping_sub(low7) & !x & low7.wrapping_add(ONES * (127 - m)) & (ONES * 128)
}

/// Scans `b` once; candidates are runs of digits and separators, and uppercase pairs followed
/// by digits.
pub(crate) fn scan(b: &[u8], set: &DetectorSet, out: &mut Vec<Match>) {
    let card = set.has("credit_card");
    let ssn = set.has("us_ssn");
    let phone = set.has("phone");
    let ip = set.has("ip_address");
    let iban = set.has("iban");
    let nino = set.has("uk_nino");
    let numeric = card || ssn || phone || ip;
    let letters = iban || nino;
    let mut i = 0;
    while i < b.len() {
        // Eight bytes at a time past text that can start nothing here (no digit, no `(`/`+`,
        // no capital when IBANs or NINOs are wanted): most prose.
        if let Some(w) = b.get(i..i + 8) {
            let w = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
            let mut hits = 0;
            if numeric {
                hits |= between(w, b'0' - 1, b'9' + 1) | between(w, 0x27, 0x2c);
            }
            if letters {
                hits |= between(w, b'A' - 1, b'Z' + 1);
            }
            if hits == 0 {
                i += 8;
                continue;
            }
            // To the first byte that can start something.
            i += (hits.trailing_zeros() / 8) as usize;
        }
        let c = b[i];
        if c.is_ascii_uppercase() {
            if (iban || nino) && (i == 0 || !is_word(b[i - 1])) && i + 3 < b.len() {
                if iban
                    && b[i + 1].is_ascii_uppercase()
                    && b[i + 2].is_ascii_digit()
                    && b[i + 3].is_ascii_digit()
                {
                    if let Some(end) = iban_at(b, i) {
                        out.push(Match { detector: "iban", start: i, end });
                        i = end;
                        continue;
                    }
                }
                if nino && let Some(end) = nino_at(b, i) {
                    out.push(Match { detector: "uk_nino", start: i, end });
                    i = end;
                    continue;
                }
            }
            i += 1;
            continue;
        }
        let starts = c.is_ascii_digit()
            || ((c == b'+' || c == b'(') && b.get(i + 1).is_some_and(u8::is_ascii_digit));
        if !numeric
            || !starts
            || (i > 0 && (is_word(b[i - 1]) || b[i - 1] == b'.' || b[i - 1] == b'-'))
        {
            i += 1;
            continue;
        }
        let end = run_end(b, i);
        let cand = &b[i..end];
        if let Some((name, s, e)) = classify(cand, b, i, card, ssn, phone, ip) {
            out.push(Match { detector: name, start: i + s, end: i + e });
        }
        i = end.max(i + 1);
    }
}

/// End of a run of digits with single separators (space, `-`, `.`, `(`, `)`, leading `+`).
fn run_end(b: &[u8], start: usize) -> usize {
    let mut i = start;
    let mut digits = 0;
    let stop = b.len().min(start + 64);
    while i < stop {
        let c = b[i];
        if c.is_ascii_digit() {
            digits += 1;
            i += 1;
        } else if ((c == b'+' || c == b'(') && i == start)
            || (b" -.()".contains(&c)
                && i + 1 < b.len()
                && (b[i + 1].is_ascii_digit() || (c == b')' && b[i + 1] == b' ')))
        {
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
    if digits == 0 { start + 1 } else { i }
}

#[allow(clippy::too_many_arguments)]
fn classify(
    cand: &[u8],
    all: &[u8],
    at: usize,
    card: bool,
    ssn: bool,
    phone: bool,
    ip: bool,
) -> Option<(&'static str, usize, usize)> {
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

fn near_keyword(all: &[u8], at: usize, words: &[&[u8]]) -> bool {
    let from = at.saturating_sub(32);
    let window = all[from..at].to_ascii_lowercase();
    words.iter().any(|w| window.windows(w.len()).any(|x| x == *w))
}

fn nanp(d: &[u8]) -> bool {
    d.len() == 10
        && d[0] >= 2
        && d[3] >= 2
        && !(d[1] == 1 && d[2] == 1)
        && !(d[4] == 1 && d[5] == 1)
}

fn ipv4(cand: &[u8]) -> bool {
    cand.split(|&c| c == b'.').all(|o| {
        !o.is_empty() && o.len() <= 3 && !(o.len() > 1 && o[0] == b'0') && {
            let v = o.iter().fold(0u32, |a, &c| a * 10 + u32::from(c - b'0'));
            v <= 255
        }
    })
}

/// Cards are written whole or in the groups cards print: 4-4-4-4, 4-6-5 (Amex), 4-4-4-4-3.
fn card_groups(groups: &[usize], seps: &[u8]) -> bool {
    if groups.len() == 1 {
        return true;
    }
    let uniform = seps.iter().all(|&s| s == seps[0]) && (seps[0] == b' ' || seps[0] == b'-');
    uniform
        && matches!(
            groups,
            [4, 4, 4, 4]
                | [4, 6, 5]
                | [4, 6, 4]
                | [4, 4, 4, 4, 3]
                | [4, 4, 4, 1]
                | [4, 4, 4, 2]
                | [4, 4, 4, 3]
        )
}

fn prefix_num(d: &[u8], k: usize) -> u32 {
    d.iter().take(k).fold(0u32, |a, &x| a * 10 + u32::from(x))
}

/// Brand prefixes and lengths (Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay,
/// Maestro).
fn brand(d: &[u8]) -> bool {
    let n = d.len();
    let p2 = prefix_num(d, 2);
    let p3 = prefix_num(d, 3);
    let p4 = prefix_num(d, 4);
    let p6 = prefix_num(d, 6);
    (d[0] == 4 && matches!(n, 13 | 16 | 19))
        || (((51..=55).contains(&p2) || (2221..=2720).contains(&p4)) && n == 16)
        || ((p2 == 34 || p2 == 37) && n == 15)
        || ((p4 == 6011
            || p2 == 65
            || (644..=649).contains(&p3)
            || (622_126..=622_925).contains(&p6))
            && (16..=19).contains(&n))
        || ((3528..=3589).contains(&p4) && (16..=19).contains(&n))
        || (((300..=305).contains(&p3) || p2 == 36 || p2 == 38) && (14..=19).contains(&n))
        || (p2 == 62 && (16..=19).contains(&n))
        || ((p2 == 50 || (56..=69).contains(&p2)) && (12..=19).contains(&n))
}

/// The Luhn checksum.
pub(crate) fn luhn(d: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, &x) in d.iter().rev().enumerate() {
        let mut v = u32::from(x);
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum % 10 == 0
}

fn ssn_valid(d: &[u8]) -> bool {
    let area = prefix_num(d, 3);
    let group = u32::from(d[3]) * 10 + u32::from(d[4]);
    let serial = d[5..9].iter().fold(0u32, |a, &x| a * 10 + u32::from(x));
    let all: u32 = prefix_num(d, 9);
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
        // advertising and documentation numbers
        && all != 78_051_120 && all != 219_099_999 && !(987_654_320..=987_654_329).contains(&all)
}

/// IBAN lengths by country.
const IBAN_LEN: &[(&[u8; 2], usize)] = &[
    (b"AD", 24),
    (b"AE", 23),
    (b"AL", 28),
    (b"AT", 20),
    (b"AZ", 28),
    (b"BA", 20),
    (b"BE", 16),
    (b"BG", 22),
    (b"BH", 22),
    (b"BR", 29),
    (b"CH", 21),
    (b"CR", 22),
    (b"CY", 28),
    (b"CZ", 24),
    (b"DE", 22),
    (b"DK", 18),
    (b"DO", 28),
    (b"EE", 20),
    (b"EG", 29),
    (b"ES", 24),
    (b"FI", 18),
    (b"FO", 18),
    (b"FR", 27),
    (b"GB", 22),
    (b"GE", 22),
    (b"GI", 23),
    (b"GL", 18),
    (b"GR", 27),
    (b"GT", 28),
    (b"HR", 21),
    (b"HU", 28),
    (b"IE", 22),
    (b"IL", 23),
    (b"IS", 26),
    (b"IT", 27),
    (b"JO", 30),
    (b"KW", 30),
    (b"KZ", 20),
    (b"LB", 28),
    (b"LI", 21),
    (b"LT", 20),
    (b"LU", 20),
    (b"LV", 21),
    (b"MC", 27),
    (b"MD", 24),
    (b"ME", 22),
    (b"MK", 19),
    (b"MR", 27),
    (b"MT", 31),
    (b"MU", 30),
    (b"NL", 18),
    (b"NO", 15),
    (b"PK", 24),
    (b"PL", 28),
    (b"PS", 29),
    (b"PT", 25),
    (b"QA", 29),
    (b"RO", 24),
    (b"RS", 22),
    (b"SA", 24),
    (b"SE", 24),
    (b"SI", 19),
    (b"SK", 24),
    (b"SM", 27),
    (b"TN", 24),
    (b"TR", 26),
    (b"UA", 29),
    (b"VG", 24),
    (b"XK", 20),
];

fn iban_at(b: &[u8], i: usize) -> Option<usize> {
    let want = IBAN_LEN.iter().find(|(c, _)| &b[i..i + 2] == *c)?.1;
    let mut chars = [0u8; 34];
    let mut n = 0;
    let mut j = i;
    let stop = b.len().min(i + 48);
    while j < stop && n < want {
        let c = b[j];
        if c.is_ascii_uppercase() || c.is_ascii_digit() {
            chars[n] = c;
            n += 1;
            j += 1;
        } else if c == b' ' && n % 4 == 0 && j + 1 < b.len() && b[j + 1].is_ascii_alphanumeric() {
            j += 1;
        } else {
            break;
        }
    }
    if n != want || b.get(j).is_some_and(|&c| is_word(c)) {
        return None;
    }
    // mod-97 over the rearranged string, letters as 10..35
    let mut r: u32 = 0;
    for &c in chars[4..n].iter().chain(&chars[..4]) {
        if c.is_ascii_digit() {
            r = (r * 10 + u32::from(c - b'0')) % 97;
        } else {
            r = (r * 100 + u32::from(c - b'A' + 10)) % 97;
        }
    }
    (r == 1).then_some(j)
}

/// `AB 12 34 56 C` or `AB123456C`.
fn nino_at(b: &[u8], i: usize) -> Option<usize> {
    let p = [b[i], *b.get(i + 1)?];
    let ok1 = |c: u8| c.is_ascii_uppercase() && !b"DFIQUV".contains(&c);
    let ok2 = |c: u8| c.is_ascii_uppercase() && !b"DFIOQUV".contains(&c);
    if !ok1(p[0]) || !ok2(p[1]) || [b"BG", b"GB", b"NK", b"KN", b"TN", b"NT", b"ZZ"].contains(&&p) {
        return None;
    }
    let mut j = i + 2;
    let mut digits = 0;
    let spaced = b.get(j) == Some(&b' ');
    while digits < 6 {
        if spaced {
            if b.get(j) != Some(&b' ') {
                return None;
            }
            j += 1;
        }
        for _ in 0..2 {
            if !b.get(j)?.is_ascii_digit() {
                return None;
            }
            j += 1;
            digits += 1;
        }
    }
    if spaced {
        if b.get(j) != Some(&b' ') {
            return None;
        }
        j += 1;
    }
    let suffix = *b.get(j)?;
    if !(b'A'..=b'D').contains(&suffix) || b.get(j + 1).is_some_and(|&c| is_word(c)) {
        return None;
    }
    Some(j + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(text: &str, name: &str) -> Vec<String> {
        let set = DetectorSet::from_names(&[name]).unwrap();
        let mut out = Vec::new();
        scan(text.as_bytes(), &set, &mut out);
        out.iter().map(|m| text[m.start..m.end].to_owned()).collect()
    }

    #[test]
    fn swar_range_test_matches_the_byte_test() {
        for probe in 0u8..=255 {
            for pos in 0..8 {
                let mut w = [b'x'; 8];
                w[pos] = probe;
                let x = u64::from_le_bytes(w);
                let digit = between(x, b'0' - 1, b'9' + 1);
                let upper = between(x, b'A' - 1, b'Z' + 1);
                assert_eq!(digit != 0, probe.is_ascii_digit(), "{probe}");
                assert_eq!(upper != 0, probe.is_ascii_uppercase(), "{probe}");
                if digit != 0 {
                    assert_eq!(digit.trailing_zeros() / 8, pos as u32);
                }
            }
        }
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
