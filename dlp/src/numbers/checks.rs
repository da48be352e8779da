//! The checks a number-shaped candidate must pass: card groups, brand prefixes and Luhn,
//! cards written one group per line, SSN rules, NANP phones, IPv4, IBAN (country length and
//! mod-97) and UK NINO. Pure; called by the block scan in [`super`].

use super::is_word;

/// The length of a line break at `at` (`\n` or `\r\n`) followed by a digit: a card may go on
/// on the next line. 0 when there is none.
pub(super) fn line_break(b: &[u8], at: usize) -> usize {
    let n = match (b.get(at), b.get(at + 1)) {
        (Some(b'\n'), _) => 1,
        (Some(b'\r'), Some(b'\n')) => 2,
        _ => return 0,
    };
    if b.get(at + n).is_some_and(u8::is_ascii_digit) { n } else { 0 }
}

/// Whether a card may go on on the next line at `at`.
pub(crate) fn lined(b: &[u8], at: usize) -> bool {
    line_break(b, at) > 0
}

/// A card written one group per line (`4111\n1111\n1111\n1111`): the run `b[start..end]`
/// and the runs on the lines after it, in exactly a card's groups, Luhn and brand checked.
/// Its end, if it is one.
pub(super) fn lined_card(b: &[u8], start: usize) -> Option<usize> {
    let mut groups = [0usize; 5];
    let mut digits = [0u8; 19];
    let mut n = 0;
    let mut ng = 0;
    let mut at = start;
    let mut last = start;
    while ng < groups.len() {
        let len = b[at..].iter().take(7).take_while(|c| c.is_ascii_digit()).count();
        if len == 0 || len > 6 || n + len > digits.len() {
            break;
        }
        for (k, &c) in b[at..at + len].iter().enumerate() {
            digits[n + k] = c - b'0';
        }
        n += len;
        groups[ng] = len;
        ng += 1;
        last = at + len;
        let brk = line_break(b, last);
        if brk == 0 {
            break;
        }
        at = last + brk;
    }
    let seps = [b'\n'; 4];
    let ok = ng > 1
        && (13..=19).contains(&n)
        && card_groups(&groups[..ng], &seps[..ng - 1])
        && brand(&digits[..n])
        && luhn(&digits[..n])
        && !b.get(last).is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'_');
    ok.then_some(last)
}

pub(super) fn near_keyword(all: &[u8], at: usize, words: &[&[u8]]) -> bool {
    let from = at.saturating_sub(32);
    let window = all[from..at].to_ascii_lowercase();
    words.iter().any(|w| window.windows(w.len()).any(|x| x == *w))
}

pub(super) fn nanp(d: &[u8]) -> bool {
    d.len() == 10
        && d[0] >= 2
        && d[3] >= 2
        && !(d[1] == 1 && d[2] == 1)
        && !(d[4] == 1 && d[5] == 1)
}

pub(super) fn ipv4(cand: &[u8]) -> bool {
    cand.split(|&c| c == b'.').all(|o| {
        !o.is_empty() && o.len() <= 3 && !(o.len() > 1 && o[0] == b'0') && {
            let v = o.iter().fold(0u32, |a, &c| a * 10 + u32::from(c - b'0'));
            v <= 255
        }
    })
}

/// Cards are written whole or in the groups cards print: 4-4-4-4, 4-6-5 (Amex), 4-4-4-4-3.
pub(super) fn card_groups(groups: &[usize], seps: &[u8]) -> bool {
    if groups.len() == 1 {
        return true;
    }
    let uniform = seps.iter().all(|&s| s == seps[0]) && b" -.\n".contains(&seps[0]);
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

pub(super) fn prefix_num(d: &[u8], k: usize) -> u32 {
    d.iter().take(k).fold(0u32, |a, &x| a * 10 + u32::from(x))
}

/// Brand prefixes and lengths (Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay,
/// Maestro).
pub(super) fn brand(d: &[u8]) -> bool {
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
        // JCB's legacy ranges (Authorize.Net's test card 3088 0000 0000 0017).
        || ([3088..=3094, 3096..=3102, 3112..=3120, 3158..=3159, 3337..=3349]
            .iter()
            .any(|r| r.contains(&p4))
            && n == 16)
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
    sum.is_multiple_of(10)
}

pub(super) fn ssn_valid(d: &[u8]) -> bool {
    let area = prefix_num(d, 3);
    let group = u32::from(d[3]) * 10 + u32::from(d[4]);
    let serial = d[5..9].iter().fold(0u32, |a, &x| a * 10 + u32::from(x));
    let all: u32 = prefix_num(d, 9);
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
        // advertising and documentation numbers
        && all != 78_051_120 && all != 219_099_999 && !(987_654_320..=987_654_329).contains(&all)
}

/// IBAN lengths by country.
pub(super) const IBAN_LEN: &[(&[u8; 2], usize)] = &[
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

pub(super) fn iban_at(b: &[u8], i: usize) -> Option<usize> {
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
        } else if c == b' '
            && n.is_multiple_of(4)
            && j + 1 < b.len()
            && b[j + 1].is_ascii_alphanumeric()
        {
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
pub(super) fn nino_at(b: &[u8], i: usize) -> Option<usize> {
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
