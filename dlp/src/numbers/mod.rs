//! Number-shaped detectors, found in one pass over SIMD-classified blocks: payment cards (Luhn, brand prefixes and
//! lengths), US SSNs (impossible areas, groups and serials refused), phone numbers (E.164,
//! North American and UK national forms), IPv4 addresses, and the letter–digit formats that
//! start like them (IBAN with country length and mod-97, UK NINO).

use wide::i8x16;

mod checks;

use super::{DetectorSet, Match, has};
use checks::*;

/// Detector names implemented here.
pub(crate) const NAMES: &[&str] =
    &["credit_card", "us_ssn", "phone", "ip_address", "iban", "uk_nino"];

pub(crate) fn any_enabled(set: &DetectorSet) -> bool {
    let w = Want::of(set);
    w.numeric() || w.letters()
}

/// The detectors of `set` implemented here.
pub(crate) fn subset(set: &DetectorSet) -> DetectorSet {
    let mine = DetectorSet::from_names(NAMES).unwrap_or_default();
    DetectorSet(set.0 & mine.0)
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Which detectors of this module are on.
#[derive(Clone, Copy)]
struct Want {
    card: bool,
    ssn: bool,
    phone: bool,
    ip: bool,
    iban: bool,
    nino: bool,
}

impl Want {
    fn of(set: &DetectorSet) -> Self {
        Want {
            card: has!(set, "credit_card"),
            ssn: has!(set, "us_ssn"),
            phone: has!(set, "phone"),
            ip: has!(set, "ip_address"),
            iban: has!(set, "iban"),
            nino: has!(set, "uk_nino"),
        }
    }

    fn numeric(self) -> bool {
        self.card || self.ssn || self.phone || self.ip
    }

    fn letters(self) -> bool {
        self.iban || self.nino
    }
}

/// Per-byte classes of a 64-byte block, one bit per byte (bit `j` is byte `j`).
#[derive(Clone, Copy)]
struct Block {
    /// `0`–`9`.
    digit: u64,
    /// `(` and `+`: a number can open with one.
    open: u64,
    /// `A`–`Z`: where an IBAN or NINO can start.
    upper: u64,
    /// Letters, digits, `_`: a start right after one of these is inside a word.
    word: u64,
    /// `.` and `-`: a number right after one continues a dotted or dashed token.
    joiner: u64,
    /// Candidates for base64 runs ([`crate::text::superset`]).
    base64: u64,
}

/// Bytes `lo..=hi` (both ASCII, `lo` > 0, `hi` < 127) of `v`; bytes of 128 and over are
/// negative as `i8` and never count.
fn range(v: i8x16, lo: u8, hi: u8) -> i8x16 {
    v.simd_gt(i8x16::splat((lo - 1) as i8)) & v.simd_lt(i8x16::splat((hi + 1) as i8))
}

fn eq(v: i8x16, c: u8) -> i8x16 {
    v.simd_eq(i8x16::splat(c as i8))
}

/// Classifies 64 bytes, sixteen at a time with SIMD compares (SSE2 on x86-64, NEON on
/// aarch64, through `wide`'s safe types).
#[inline(always)]
fn classify_block(c: &[u8; 64]) -> Block {
    let mut blk = Block { digit: 0, open: 0, upper: 0, word: 0, joiner: 0, base64: 0 };
    for (k, chunk) in c.chunks_exact(16).enumerate() {
        let mut a = [0i8; 16];
        for (d, &s) in a.iter_mut().zip(chunk) {
            *d = s as i8;
        }
        let v = i8x16::new(a);
        let digit = range(v, b'0', b'9');
        let upper = range(v, b'A', b'Z');
        // Either case in one test: setting bit 5 maps `A`-`Z` onto `a`-`z` and nothing else
        // into that range.
        let word = digit | range(v | i8x16::splat(0x20), b'a', b'z') | eq(v, b'_');
        let shift = 16 * k;
        let bits = |m: i8x16| u64::from(m.to_bitmask()) << shift;
        blk.digit |= bits(digit);
        blk.open |= bits(eq(v, b'(') | eq(v, b'+'));
        blk.upper |= bits(upper);
        blk.word |= bits(word);
        blk.joiner |= bits(eq(v, b'.') | eq(v, b'-'));
        blk.base64 |= bits(crate::text::superset(v));
    }
    blk
}

/// The classes of the last, partial block at `base`, as if padded with spaces (which start
/// nothing, end words and are no class at all). From the text's last 64 bytes, shifted, when
/// it has them: a copy to a padded buffer read back at once stalls the loads.
fn tail_block(b: &[u8], base: usize) -> Block {
    if let Some(last) = b.len().checked_sub(64).and_then(|from| b.get(from..)) {
        if let Ok(c) = <&[u8; 64]>::try_from(last) {
            let skip = (base + 64 - b.len()) as u32;
            let x = classify_block(c);
            let s = |m: u64| m >> skip;
            return Block {
                digit: s(x.digit),
                open: s(x.open),
                upper: s(x.upper),
                word: s(x.word),
                joiner: s(x.joiner),
                base64: s(x.base64),
            };
        }
    }
    let mut pad = [b' '; 64];
    let tail = b.get(base..).unwrap_or_default();
    pad[..tail.len()].copy_from_slice(tail);
    classify_block(&pad)
}

/// Bit 63: the byte after it is in the next block, so tests on it are left to [`step`].
const LAST: u64 = 1 << 63;

/// Scans `b` once; candidates are runs of digits and separators, and uppercase pairs followed
/// by digits, each starting at a word boundary.
///
/// Blocks of 64 bytes are classified with SIMD compares into bit masks; only the bytes that
/// can start something reach [`step`], which holds all the logic: a digit, or a `(`/`+`
/// before a digit, not inside a word or a dotted/dashed token, whose run of digits is long
/// enough or goes on through a separator; a capital at the start of a word before another
/// capital, when IBANs or NINOs are wanted. Calling [`step`] at every byte gives the same
/// matches (a test checks it); the masks only spare it the bytes where it would find nothing.
///
/// With `runs`, the same pass finds the runs of base64 characters long enough to decode
/// ([`crate::text::RunFinder`]).
pub(crate) fn scan(
    b: &[u8],
    set: &DetectorSet,
    out: &mut Vec<Match>,
    mut runs: Option<&mut Vec<(usize, usize)>>,
) {
    let want = Want::of(set);
    let (numeric, letters) = (want.numeric(), want.letters());
    if !numeric && !letters {
        if let Some(r) = runs {
            r.extend(crate::text::base64_runs(b));
        }
        return;
    }
    let mut finder = crate::text::RunFinder::default();
    // Where scanning resumes: bytes before it belong to something already matched or read.
    let mut next = 0;
    // Classes of the byte before the block.
    let (mut prev_word, mut prev_joiner) = (0u64, 0u64);
    let mut base = 0;
    while base < b.len() {
        let blk = match b.get(base..base + 64).and_then(|c| <&[u8; 64]>::try_from(c).ok()) {
            Some(c) => classify_block(c),
            None => tail_block(b, base),
        };
        if let Some(r) = runs.as_deref_mut() {
            finder.block(b, base, blk.base64, r);
        }
        let after_word = (blk.word << 1) | prev_word;
        let after_joiner = ((blk.word | blk.joiner) << 1) | prev_word | prev_joiner;
        let mut cands = 0;
        if numeric {
            let opens = blk.digit | (blk.open & ((blk.digit >> 1) | LAST));
            cands |= opens & !after_joiner;
        }
        if letters {
            cands |= blk.upper & !after_word & ((blk.upper >> 1) | LAST);
        }
        prev_word = blk.word >> 63;
        prev_joiner = blk.joiner >> 63;
        while cands != 0 {
            let p = cands.trailing_zeros();
            cands &= cands - 1;
            let i = base + p as usize;
            if i < next || i >= b.len() {
                continue;
            }
            if blk.digit >> p & 1 == 1 {
                // A run of bare digits that ends inside the block, with a length nothing has.
                let len = (blk.digit >> p).trailing_ones() as usize;
                if p as usize + len < 64
                    && !length_fits(len, false, true, want)
                    && !run_goes_on(b, i + len)
                    && (!want.card || !lined(b, i + len))
                {
                    next = i + len;
                    continue;
                }
            }
            next = step(b, i, want, out).unwrap_or(i + 1);
        }
        base += 64;
    }
    if let Some(r) = runs {
        finder.finish(b, r);
    }
}

/// Whether a run of `digits` digits could be something an enabled detector matches, from its
/// length, whether it opens with `+`, and whether it is `bare` (digits only, nothing between
/// them): IPv4 4–12 digits with dots; cards 13–19; SSNs 9; phones 10 or 11 with separators,
/// or 8–15 after `+`.
fn length_fits(digits: usize, plus: bool, bare: bool, want: Want) -> bool {
    (want.ip && !bare && (4..=12).contains(&digits))
        || (want.card && (13..=19).contains(&digits))
        || (want.ssn && digits == 9)
        || (want.phone
            && ((!bare && (digits == 10 || digits == 11)) || (plus && (8..=15).contains(&digits))))
}

/// What can start at `b[i]`: a match is pushed to `out`. Returns where scanning resumes when
/// a candidate was read (past the whole run, matched or not), `None` to go on at `i + 1`.
fn step(b: &[u8], i: usize, want: Want, out: &mut Vec<Match>) -> Option<usize> {
    let c = *b.get(i)?;
    let boundary = i == 0 || !is_word(b[i - 1]);
    if c.is_ascii_uppercase() {
        if want.letters() && boundary && i + 3 < b.len() {
            if want.iban
                && b[i + 1].is_ascii_uppercase()
                && b[i + 2].is_ascii_digit()
                && b[i + 3].is_ascii_digit()
            {
                if let Some(end) = iban_at(b, i) {
                    out.push(Match { detector: "iban", start: i, end });
                    return Some(end);
                }
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
fn run_goes_on(b: &[u8], at: usize) -> bool {
    match (b.get(at), b.get(at + 1)) {
        (Some(&c), Some(&d)) => {
            b" -.()".contains(&c) && (d.is_ascii_digit() || (c == b')' && d == b' '))
        }
        _ => false,
    }
}

/// End of a run of digits with single separators (space, `-`, `.`, `(`, `)`, leading `+`),
/// and the number of digits in it.
fn run_end(b: &[u8], start: usize) -> (usize, usize) {
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

fn classify(
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
        scan(text.as_bytes(), &set, &mut out, None);
        out.iter().map(|m| text[m.start..m.end].to_owned()).collect()
    }

    #[test]
    fn block_classes_match_the_byte_tests() {
        let mut c = [0u8; 64];
        for start in (0..=255u8).step_by(64) {
            for (j, x) in c.iter_mut().enumerate() {
                *x = start.wrapping_add(j as u8);
            }
            let blk = classify_block(&c);
            for (j, &x) in c.iter().enumerate() {
                let bit = |m: u64| m >> j & 1 == 1;
                assert_eq!(bit(blk.digit), x.is_ascii_digit(), "{x}");
                assert_eq!(bit(blk.open), x == b'(' || x == b'+', "{x}");
                assert_eq!(bit(blk.upper), x.is_ascii_uppercase(), "{x}");
                assert_eq!(bit(blk.word), is_word(x), "{x}");
                assert_eq!(bit(blk.joiner), x == b'.' || x == b'-', "{x}");
            }
        }
    }

    /// The block masks only skip bytes where [`step`] would do nothing: on random text rich
    /// in digits, separators and capitals, calling it at every byte finds the same matches.
    #[test]
    fn block_scan_equals_a_step_at_every_byte() {
        let alphabet = b"0123456789 -.()+,_aAbBGDEQJ\n4111";
        let pieces: [&[u8]; 8] = [
            b"4111 1111 1111 1111",
            b"123-45-6789",
            b"+44 20 7946 0958",
            b"GB82 WEST 1234 5698 7654 32",
            b"AB 12 34 56 C",
            b"(415) 555-2671",
            b"10.20.1.10",
            b"DE89370400440532013000",
        ];
        let mut rnd = crate::xorshift(0x9e37_79b9_7f4a_7c15u64);
        // Every detector, the default profile's, and each alone: the shortcut for runs of a
        // length nothing enabled has depends on which are on.
        let sets: [&[&str]; 6] = [
            NAMES,
            &["credit_card", "us_ssn", "iban"],
            &["credit_card"],
            &["us_ssn"],
            &["phone"],
            &["ip_address", "uk_nino"],
        ];
        let mut found = 0;
        for round in 0..6000 {
            let set = DetectorSet::from_names(sets[round % sets.len()]).unwrap();
            let want = Want::of(&set);
            let len = (rnd() % 300) as usize;
            let mut text = Vec::with_capacity(len + 40);
            while text.len() < len {
                if rnd().is_multiple_of(8) {
                    text.extend_from_slice(pieces[(rnd() % 8) as usize]);
                } else {
                    text.push(alphabet[(rnd() % alphabet.len() as u64) as usize]);
                }
            }
            let mut fast = Vec::new();
            let mut runs = Vec::new();
            scan(&text, &set, &mut fast, Some(&mut runs));
            assert_eq!(runs, crate::text::base64_runs(&text), "runs found on the way");
            let mut slow = Vec::new();
            let mut i = 0;
            while i < text.len() {
                i = step(&text, i, want, &mut slow).unwrap_or(i + 1);
            }
            assert_eq!(fast, slow, "round {round}: {:?}", String::from_utf8_lossy(&text));
            // The length test in `step` never refuses a run `classify` would match.
            for i in 0..text.len() {
                if !(text[i].is_ascii_digit() || text[i] == b'+' || text[i] == b'(') {
                    continue;
                }
                let (end, digits) = run_end(&text, i);
                if classify(&text[i..end], &text, i, want).is_some() {
                    let fits = length_fits(digits, text[i] == b'+', end - i == digits, want);
                    assert!(fits, "{:?}", String::from_utf8_lossy(&text[i..end]));
                }
            }
            found += fast.len();
        }
        assert!(found > 1000, "the texts hold matches: {found}");
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
