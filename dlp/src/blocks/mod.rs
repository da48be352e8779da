//! The block pass: one read of a text in 64-byte blocks classified with SIMD compares (SSE2 on
//! x86-64, NEON on aarch64, through `wide`'s safe types) into bit masks, for every detector
//! whose candidates a byte class finds: numbers ([`crate::numbers`]), `@` (emails and
//! connection URLs), `Q~` (Azure client secrets), `SK` (Twilio keys), `-----BEGIN ` (PEM), the
//! names before assignments that the keyword automaton reads, and the stretches of long
//! base64-superset runs ([`crate::text::RunFinder`]) where base64 is decoded and the token
//! automaton looks for prefixes. ARCHITECTURE.md, "What DLP reads".

use wide::i8x16;

use crate::numbers::{Want, length_fits, lined, run_goes_on, step};
use crate::{DetectorSet, Match};

/// Per-byte classes of a 64-byte block, one bit per byte (bit `j` is byte `j`).
#[derive(Clone, Copy, Default)]
pub(crate) struct Block {
    /// `0`–`9`.
    pub(crate) digit: u64,
    /// `(` and `+`: a number can open with one.
    pub(crate) open: u64,
    /// `A`–`Z`: where an IBAN or NINO can start.
    pub(crate) upper: u64,
    /// Letters, digits, `_`: a start right after one of these is inside a word.
    pub(crate) word: u64,
    /// `.` and `-`: a number right after one continues a dotted or dashed token.
    pub(crate) joiner: u64,
    /// Candidates for base64 runs ([`crate::text::superset`]).
    pub(crate) base64: u64,
    /// `@` and `~` in one mask (emails; Azure client secrets after `Q`), `S` (Twilio's `SK`),
    /// and the assignments `:`, `=`, `>` the keyword detectors need: the other detectors'
    /// candidates, found in the same pass ([`Also`]). Each mask costs a move of the compare
    /// out of the vector, so the rare bytes share one.
    pub(crate) mark: u64,
    pub(crate) s: u64,
    pub(crate) assign: u64,
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
    let mut blk = Block::default();
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
        blk.mark |= bits(eq(v, b'@') | eq(v, b'~'));
        blk.s |= bits(eq(v, b'S'));
        blk.assign |= bits(eq(v, b':') | eq(v, b'=') | eq(v, b'>'));
    }
    blk
}

/// The classes of the last, partial block at `base`, as if padded with spaces (which start
/// nothing, end words and are no class at all). From the text's last 64 bytes, shifted, when
/// it has them: a copy to a padded buffer read back at once stalls the loads.
#[inline(always)]
fn tail_block(b: &[u8], base: usize, classify: &impl Fn(&[u8; 64]) -> Block) -> Block {
    if let Some(last) = b.len().checked_sub(64).and_then(|from| b.get(from..))
        && let Ok(c) = <&[u8; 64]>::try_from(last)
    {
        let skip = (base + 64 - b.len()) as u32;
        let x = classify(c);
        let s = |m: u64| m >> skip;
        return Block {
            digit: s(x.digit),
            open: s(x.open),
            upper: s(x.upper),
            word: s(x.word),
            joiner: s(x.joiner),
            base64: s(x.base64),
            mark: s(x.mark),
            s: s(x.s),
            assign: s(x.assign),
        };
    }
    let mut pad = [b' '; 64];
    let tail = b.get(base..).unwrap_or_default();
    pad[..tail.len()].copy_from_slice(tail);
    classify(&pad)
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
/// ([`crate::text::RunFinder`]); with `also`, the other detectors' candidates ([`Also`]).
///
/// On x86-64 CPUs with AVX2 (checked at run time) the blocks are classified 32 bytes at a
/// time (`avx2.rs`); everywhere else 16 at a time.
pub(crate) fn scan(
    b: &[u8],
    set: &DetectorSet,
    out: &mut Vec<Match>,
    runs: Option<&mut Vec<(usize, usize)>>,
    also: &mut Also<'_>,
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        #[allow(unsafe_code)]
        // SAFETY: `avx2::scan` needs nothing but AVX2, and the CPU has it (checked above).
        return unsafe { crate::avx2::scan(b, set, out, runs, also) };
    }
    scan_with(b, set, out, runs, also, classify_block);
}

/// [`scan`] with `classify` for the blocks (inlined into each caller, so that the AVX2
/// caller compiles the whole loop for AVX2).
#[inline(always)]
pub(crate) fn scan_with(
    b: &[u8],
    set: &DetectorSet,
    out: &mut Vec<Match>,
    mut runs: Option<&mut Vec<(usize, usize)>>,
    also: &mut Also<'_>,
    classify: impl Fn(&[u8; 64]) -> Block,
) {
    let want = Want::of(set);
    let (numeric, letters) = (want.numeric(), want.letters());
    if !numeric && !letters && !also.any() {
        if let Some(r) = runs {
            r.extend(crate::text::base64_runs(b));
        }
        return;
    }
    let mut stretches = Stretches::default();
    let mut finder = crate::text::RunFinder::default();
    let stretches_wanted = runs.is_some() || also.anchors;
    // Where scanning resumes: bytes before it belong to something already matched or read.
    let mut next = 0;
    // Classes of the byte before the block.
    let (mut prev_word, mut prev_joiner) = (0u64, 0u64);
    let mut base = 0;
    while base < b.len() {
        let blk = match b.get(base..base + 64).and_then(|c| <&[u8; 64]>::try_from(c).ok()) {
            Some(c) => classify(c),
            None => tail_block(b, base, &classify),
        };
        if stretches_wanted && let Some((s, e)) = finder.block(b, base, blk.base64) {
            long_stretch(b, s, e, runs.as_deref_mut(), also, out);
        }
        let after_word = (blk.word << 1) | prev_word;
        let after_joiner = ((blk.word | blk.joiner) << 1) | prev_word | prev_joiner;
        let mut cands = 0;
        if numeric {
            let opens = blk.digit | (blk.open & ((blk.digit >> 1) | LAST));
            cands |= opens & !after_joiner;
        }
        if letters {
            let mut pairs = blk.upper & !after_word & ((blk.upper >> 1) | LAST);
            if !want.nino {
                // An IBAN's two capitals are followed by its two check digits (bits whose
                // bytes two and three on are in the next block stay).
                pairs &= ((blk.digit >> 2) | 0b11 << 62) & ((blk.digit >> 3) | 0b111 << 61);
            }
            cands |= pairs;
        }
        prev_word = blk.word >> 63;
        prev_joiner = blk.joiner >> 63;
        also.block(b, base, &blk, &mut stretches, out);
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
    if stretches_wanted && let Some((s, e)) = finder.finish(b) {
        long_stretch(b, s, e, runs, also, out);
    }
    if let Some((start, end)) = stretches.open.take() {
        (also.found)(Found::Stretch(start, end), out);
    }
}

/// A stretch of superset runs ([`crate::text::RunFinder`]): its base64 runs, and the
/// stretch itself for the anchor automaton.
#[inline(always)]
fn long_stretch(
    b: &[u8],
    s: usize,
    e: usize,
    runs: Option<&mut Vec<(usize, usize)>>,
    also: &mut Also<'_>,
    out: &mut Vec<Match>,
) {
    if let Some(r) = runs {
        crate::text::walk_runs(b, s, e, r);
    }
    if also.anchors {
        (also.found)(Found::Long(s, e), out);
    }
}

/// The other detectors' candidates the block pass reports, each kind when asked for.
pub(crate) struct Also<'f> {
    /// Every `@` (emails, and the connection URLs whose authority it ends).
    pub(crate) at: bool,
    pub(crate) azure: bool,
    pub(crate) twilio: bool,
    pub(crate) keywords: bool,
    /// `-----BEGIN ` (PEM blocks).
    pub(crate) pem: bool,
    /// The stretches of long superset runs, where the prefixed tokens' anchors are.
    pub(crate) anchors: bool,
    pub(crate) found: &'f mut dyn FnMut(Found, &mut Vec<Match>),
}

/// A candidate for a detector outside this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    /// An `@` (emails, connection URLs).
    At(usize),
    /// `Q~` at this position (Azure client secrets).
    QTilde(usize),
    /// `SK` at this position (Twilio keys).
    Sk(usize),
    /// `-----BEGIN ` at this position (PEM blocks).
    Pem(usize),
    /// A stretch the keyword automaton has to read ([`Stretches`]).
    Stretch(usize, usize),
    /// A stretch holding runs of at least 20 bytes of the base64 superset
    /// ([`crate::text::RunFinder`]), where every prefixed token is.
    Long(usize, usize),
}

impl Also<'_> {
    fn any(&self) -> bool {
        self.at || self.azure || self.twilio || self.keywords || self.pem || self.anchors
    }

    /// The candidates of the block at `base`, in order of kind. Inlined: most blocks have
    /// none, and the call showed in profiles.
    #[inline(always)]
    fn block(
        &mut self,
        b: &[u8],
        base: usize,
        blk: &Block,
        stretches: &mut Stretches,
        out: &mut Vec<Match>,
    ) {
        let each = |mut m: u64, f: &mut dyn FnMut(usize)| {
            while m != 0 {
                let at = base + m.trailing_zeros() as usize;
                m &= m - 1;
                f(at);
            }
        };
        if self.at || self.azure {
            each(blk.mark, &mut |at| match b.get(at) {
                Some(b'@') if self.at => (self.found)(Found::At(at), out),
                Some(b'~') if self.azure && at > 0 && b[at - 1] == b'Q' => {
                    (self.found)(Found::QTilde(at - 1), out)
                }
                _ => {}
            });
        }
        if self.twilio {
            each(blk.s, &mut |at| {
                if b.get(at + 1) == Some(&b'K') {
                    (self.found)(Found::Sk(at), out)
                }
            });
        }
        if self.pem {
            // Starts of five `-` or `.` in a row; bytes in the next block count as such here
            // and are read below.
            let j = blk.joiner;
            let fill = |k: u32| (j >> k) | !(u64::MAX >> k);
            each(j & fill(1) & fill(2) & fill(3) & fill(4), &mut |at| {
                if b.get(at..at + 11) == Some(b"-----BEGIN ") {
                    (self.found)(Found::Pem(at), out)
                }
            });
        }
        if self.keywords && blk.assign != 0 {
            let found = &mut *self.found;
            stretches.block(b, base, blk.assign, &mut |s, e| found(Found::Stretch(s, e), out));
        }
    }
}

/// The stretches of a text the keyword automaton has to read. Every keyword detector needs
/// an assignment (`:`, `=`, `>`) right after the name its keyword is part of
/// ([`crate::tokens`]' `generic` and `aws_secret`: the keyword, up to 24 bytes of name, then
/// up to 8 of quotes, spaces and assignments with one among them; `password=` and `pwd=` end
/// with theirs). So each assignment needs read only the name before it: the run of letters,
/// digits, `_` and `-` (all a keyword holds but its final `=`) that ends at most 7 quotes,
/// spaces or assignments before it, when that name is long enough to hold a keyword. Code's
/// `{:?}`, `v = …` and `::` need nothing read.
///
/// A stretch starts where a name starts (so no keyword straddles its start) and ends after an
/// assignment (which no keyword holds but last), so the automaton finds in the stretches
/// exactly what it finds in the whole text (a test checks it). Stretches that touch merge.
#[derive(Default)]
struct Stretches {
    open: Option<(usize, usize)>,
}

/// Bytes `skip_assign` reads between a name and its value, and how many at most.
const BETWEEN: &[u8] = b" \t\"'`:=>";
const MAX_BETWEEN: usize = 8;

/// The shortest name a keyword detector can match in (`pwd` of `pwd=`).
const SHORTEST_NAME: usize = 3;

/// Per byte: 1 for [`BETWEEN`], 2 for a name's bytes (letters, digits, `_`, `-`).
const CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < BETWEEN.len() {
        t[BETWEEN[i] as usize] = 1;
        i += 1;
    }
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            t[c] = 2;
        }
        c += 1;
    }
    t
};

fn in_name(c: u8) -> bool {
    CLASS[usize::from(c)] == 2
}

impl Stretches {
    fn block(
        &mut self,
        b: &[u8],
        base: usize,
        mut assign: u64,
        emit: &mut dyn FnMut(usize, usize),
    ) {
        while assign != 0 {
            let a = base + assign.trailing_zeros() as usize;
            assign &= assign - 1;
            if a < b.len() {
                self.assignment(b, a, emit);
            }
        }
    }

    /// The name before the assignment at `a`, if one can hold a keyword.
    fn assignment(&mut self, b: &[u8], a: usize, emit: &mut dyn FnMut(usize, usize)) {
        let mut e = a;
        while e > 0 && a - e < MAX_BETWEEN - 1 && CLASS[usize::from(b[e - 1])] == 1 {
            e -= 1;
        }
        // Bytes below the open stretch's end are read already: a name reaching it merges.
        let floor = self.open.map_or(0, |(_, end)| end).min(e);
        let mut s = e;
        while s > floor && in_name(b[s - 1]) {
            s -= 1;
        }
        let goes_on = s == floor && s > 0 && in_name(b[s - 1]);
        if e - s < SHORTEST_NAME && !goes_on {
            return;
        }
        self.open = match self.open {
            Some((start, end)) if s <= end => Some((start, a + 1)),
            Some((start, end)) => {
                emit(start, end);
                Some((s, a + 1))
            }
            None => Some((s, a + 1)),
        };
    }
}

/// An [`Also`] that asks for nothing (tests).
#[cfg(test)]
pub(crate) fn no_others() -> Also<'static> {
    Also {
        at: false,
        azure: false,
        twilio: false,
        keywords: false,
        pem: false,
        anchors: false,
        found: Box::leak(Box::new(|_: Found, _: &mut Vec<Match>| {})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::numbers::{NAMES, classify, is_word, run_end};

    /// A match is found wherever it sits against the block boundaries (the masks look up to
    /// three bytes ahead).
    #[test]
    fn matches_at_every_offset() {
        let cases = [
            ("iban", "DE89370400440532013000"),
            ("iban", "GB82 WEST 1234 5698 7654 32"),
            ("credit_card", "4111 1111 1111 1111"),
            ("us_ssn", "123-45-6789"),
        ];
        for (name, m) in cases {
            let set = DetectorSet::from_names(&[name]).unwrap();
            for pad in 0..140 {
                let text = format!("{} {m} end", "x".repeat(pad));
                let mut out = Vec::new();
                scan(text.as_bytes(), &set, &mut out, None, &mut no_others());
                let got: Vec<&str> = out.iter().map(|x| &text[x.start..x.end]).collect();
                assert_eq!(got, [m], "{name} after {pad} bytes");
            }
        }
    }

    /// The AVX2 classification, where the CPU has it, gives the SSE2 one's masks for every
    /// byte value at every position.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_classes_match_sse2() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        for shift in 0..=255u8 {
            let c: [u8; 64] =
                std::array::from_fn(|j| (j as u8).wrapping_mul(67).wrapping_add(shift));
            #[allow(unsafe_code)]
            // SAFETY: the CPU has AVX2 (checked above).
            let b = unsafe { crate::avx2::classify(&c) };
            let a = classify_block(&c);
            let masks = |x: Block| {
                [x.digit, x.open, x.upper, x.word, x.joiner, x.base64, x.mark, x.s, x.assign]
            };
            assert_eq!(masks(a), masks(b), "block {shift}");
        }
    }

    /// The pass gives the same matches with either classification.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_pass_matches_the_sse2_pass() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        let set = DetectorSet::from_names(NAMES).unwrap();
        let mut rnd = crate::xorshift(0x2545_f491_4f6c_dd1d);
        let alphabet = b"0123456789 -.()+,_aAbBGDEQJ\n4111@~SK:=>";
        for _ in 0..2000 {
            let len = (rnd() % 400) as usize;
            let text: Vec<u8> =
                (0..len).map(|_| alphabet[(rnd() % alphabet.len() as u64) as usize]).collect();
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let (mut ra, mut rb) = (Vec::new(), Vec::new());
            scan_with(&text, &set, &mut a, Some(&mut ra), &mut no_others(), classify_block);
            scan(&text, &set, &mut b, Some(&mut rb), &mut no_others());
            assert_eq!((a, ra), (b, rb), "{:?}", String::from_utf8_lossy(&text));
        }
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
        let pieces: [&[u8]; 10] = [
            b"4111 1111 1111 1111",
            b"123-45-6789",
            b"+44 20 7946 0958",
            b"GB82 WEST 1234 5698 7654 32",
            b"AB 12 34 56 C",
            b"(415) 555-2671",
            b"10.20.1.10",
            b"DE89370400440532013000",
            b"5555555555554444",
            b"ssn 123456789",
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
                    text.extend_from_slice(pieces[(rnd() % pieces.len() as u64) as usize]);
                } else {
                    text.push(alphabet[(rnd() % alphabet.len() as u64) as usize]);
                }
            }
            let mut fast = Vec::new();
            let mut runs = Vec::new();
            scan(&text, &set, &mut fast, Some(&mut runs), &mut no_others());
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
}
