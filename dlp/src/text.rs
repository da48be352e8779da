//! One text, scanned as a reader would read it: normalised first ([`crate::normalize`]),
//! base64 runs decoded and scanned (twice nested at most), and a number that a request splits
//! across consecutive texts (two messages, two form fields) joined again. Findings are
//! reported at their place in the original text, so redaction replaces what was sent. Pure.

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use wide::i8x16;

use crate::extract::Outcome;
use crate::normalize::normalize;
use crate::{DetectorSet, Finding, Match, Scanner, match_hash};

/// Shortest run of base64 characters decoded and scanned (15 bytes decoded).
pub(crate) const MIN_BASE64_RUN: usize = 20;
/// Nesting of base64 inside base64 that is still decoded.
const MAX_BASE64_DEPTH: u8 = 2;
/// Most digits and separators of a number carried from one text to the next.
const MAX_TAIL: usize = 32;

const CONFIG: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_decode_padding_mode(DecodePaddingMode::Indifferent)
    .with_decode_allow_trailing_bits(true);
const B64: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::STANDARD, CONFIG);
const B64_URL: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::URL_SAFE, CONFIG);

/// The state of one request's inspection.
pub(crate) struct Ctx<'a> {
    pub(crate) scanner: &'a Scanner,
    pub(crate) set: &'a DetectorSet,
    pub(crate) redact: bool,
    pub(crate) salt: &'a [u8],
    pub(crate) out: Outcome,
    matches: Vec<Match>,
    /// Base64 runs of the text being scanned (reused).
    runs: Vec<(usize, usize)>,
    base64_depth: u8,
    /// Layers (compression, parts, decoded files) opened around the text being read: kept
    /// here, so that no path through them starts counting again.
    pub(crate) depth: u8,
    /// Bytes every decoding of this request may still produce (one budget for the whole
    /// request, not one per layer).
    pub(crate) budget: usize,
    /// Nesting of JSON documents inside strings ([`crate::json`]).
    pub(crate) json_depth: u8,
    /// The number at the end of the last text that had digits, and that text's path.
    tail: String,
    tail_path: String,
    numbers: DetectorSet,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(
        scanner: &'a Scanner,
        set: &'a DetectorSet,
        redact: bool,
        salt: &'a [u8],
    ) -> Self {
        Ctx {
            scanner,
            set,
            redact,
            salt,
            out: Outcome::default(),
            matches: Vec::new(),
            runs: Vec::new(),
            base64_depth: 0,
            depth: 0,
            budget: crate::extract::MAX_DECODED_TOTAL,
            json_depth: 0,
            tail: String::new(),
            tail_path: String::new(),
            numbers: crate::numbers::subset(set),
        }
    }
}

/// How a text takes part in the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// A text of the request's content (a message, a field): joined with its neighbours.
    Content,
    /// A key, a number or a header: scanned on its own.
    Alone,
}

/// Scans one text; returns its redacted form when redaction is on and something was found.
pub(crate) fn scan_string(text: &str, path: &str, role: Role, ctx: &mut Ctx<'_>) -> Option<String> {
    ctx.out.scanned += text.len();
    let mut spans = find(text, path, role, ctx);
    if spans.is_empty() || !ctx.redact {
        return None;
    }
    spans.sort_by_key(|m| (m.start, std::cmp::Reverse(m.end)));
    Some(crate::json::redact(text, &spans))
}

/// [`scan_string`] with redaction on or off for this text alone; also says whether it found
/// anything (a key's redacted form names it in paths; a text inside a document or behind
/// escapes cannot be redacted where it is, and its caller says so).
pub(crate) fn scan_as(
    text: &str,
    path: &str,
    role: Role,
    redact: bool,
    ctx: &mut Ctx<'_>,
) -> (Option<String>, bool) {
    let before = ctx.out.findings.len();
    let outer = std::mem::replace(&mut ctx.redact, redact);
    let new = scan_string(text, path, role, ctx);
    ctx.redact = outer;
    (new, ctx.out.findings.len() > before)
}

/// Records the findings of `text` under `path`; returns their spans in `text`.
fn find(text: &str, path: &str, role: Role, ctx: &mut Ctx<'_>) -> Vec<Match> {
    let norm = normalize(text);
    let view = norm.as_ref().map_or(text, |n| n.text.as_str());
    let at = |s: usize, e: usize| norm.as_ref().map_or((s, e), |n| n.original(text, s, e));
    ctx.matches.clear();
    let mut runs = std::mem::take(&mut ctx.runs);
    runs.clear();
    ctx.scanner.scan_runs(view, ctx.set, &mut ctx.matches, &mut runs);
    let mut spans = Vec::with_capacity(ctx.matches.len());
    for m in &ctx.matches {
        let (start, end) = at(m.start, m.end);
        ctx.out.findings.push(Finding {
            detector: m.detector,
            path: path.to_owned(),
            start,
            end,
            hash: match_hash(ctx.salt, &view.as_bytes()[m.start..m.end]),
        });
        spans.push(Match { detector: m.detector, start, end });
    }
    let found: Vec<(usize, usize)> = ctx.matches.iter().map(|m| (m.start, m.end)).collect();
    if ctx.base64_depth < MAX_BASE64_DEPTH {
        for &(s, e) in &runs {
            if found.iter().any(|&(a, b)| a < e && s < b) {
                continue;
            }
            if let Some(detector) = decoded_run(&view[s..e], path, ctx) {
                let (start, end) = at(s, e);
                spans.push(Match { detector, start, end });
            }
        }
    }
    ctx.runs = runs;
    if role == Role::Content {
        join(view, path, ctx);
    }
    spans
}

/// Base64 decoded as servers decode it: whitespace and line breaks ignored, padding optional,
/// trailing bits allowed, either alphabet.
pub(crate) fn lenient_base64(s: &str) -> Option<Vec<u8>> {
    let clean: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let clean = clean.strip_suffix(b"==").or_else(|| clean.strip_suffix(b"=")).unwrap_or(&clean);
    match clean.iter().any(|b| matches!(b, b'-' | b'_')) {
        true => B64_URL.decode(clean).ok(),
        false => B64.decode(clean).ok(),
    }
}

/// A base64 run decoded; when it is text, scanned under `path(base64)`. The detector of its
/// first finding, if any.
fn decoded_run(run: &str, path: &str, ctx: &mut Ctx<'_>) -> Option<&'static str> {
    let run = run.trim_end_matches('=');
    let url = run.contains(['-', '_']);
    if url && run.contains(['+', '/']) {
        return None;
    }
    let bytes = if url { B64_URL.decode(run) } else { B64.decode(run) }.ok()?;
    let text = String::from_utf8(bytes).ok()?;
    if crate::charset::is_binary(&text) {
        return None;
    }
    let before = ctx.out.findings.len();
    let inner = format!("{path}(base64)");
    ctx.base64_depth += 1;
    ctx.out.scanned += text.len();
    // Nested spans are inside the decoded text: the whole run is what gets redacted.
    let _ = find(&text, &inner, Role::Alone, ctx);
    ctx.base64_depth -= 1;
    ctx.out.findings.get(before).map(|f| f.detector)
}

/// A number split across this text and the previous content text (short texts without
/// digits between them do not count): the last
/// digits of that one and the first of this one, joined with and without a space, are
/// scanned by the number detectors; a match that crosses the joint is a finding under both
/// paths. Such a finding is in no one string, so it cannot be redacted in place
/// ([`Outcome::split`]).
fn join(view: &str, path: &str, ctx: &mut Ctx<'_>) {
    // A short text without digits (a role, a name) keeps the number before it waiting.
    if view.len() <= MAX_TAIL && !view.bytes().any(|b| b.is_ascii_digit()) {
        return;
    }
    let head = number_head(view);
    if !ctx.tail.is_empty() && !head.is_empty() && !ctx.numbers.is_empty() {
        for sep in [" ", ""] {
            let joined = format!("{}{sep}{head}", ctx.tail);
            let joint = ctx.tail.len();
            ctx.matches.clear();
            ctx.scanner.scan(&joined, &ctx.numbers, &mut ctx.matches);
            let crossing =
                ctx.matches.iter().find(|m| m.start < joint && m.end > joint + sep.len());
            if let Some(m) = crossing.copied() {
                ctx.out.findings.push(Finding {
                    detector: m.detector,
                    path: format!("{} + {path}", ctx.tail_path),
                    start: m.start,
                    end: m.end,
                    hash: match_hash(ctx.salt, &joined.as_bytes()[m.start..m.end]),
                });
                ctx.out.split = true;
                break;
            }
        }
    }
    ctx.tail.clear();
    ctx.tail.push_str(number_tail(view));
    ctx.tail_path.clear();
    ctx.tail_path.push_str(path);
}

fn numberish(b: u8) -> bool {
    b.is_ascii_digit() || matches!(b, b' ' | b'-' | b'.')
}

/// The digits and separators ending `s` (at most [`MAX_TAIL`] bytes), if it ends in a digit.
fn number_tail(s: &str) -> &str {
    let t = s.trim_end();
    if !t.ends_with(|c: char| c.is_ascii_digit()) {
        return "";
    }
    let b = t.as_bytes();
    let mut i = b.len();
    while i > 0 && b.len() - i < MAX_TAIL && numberish(b[i - 1]) {
        i -= 1;
    }
    t[i..].trim_start()
}

/// The digits and separators starting `s`, if it starts with a digit.
fn number_head(s: &str) -> &str {
    let t = s.trim_start();
    let n = t.bytes().take(MAX_TAIL).take_while(|&b| numberish(b)).count();
    match t.starts_with(|c: char| c.is_ascii_digit()) {
        true => t[..n].trim_end(),
        false => "",
    }
}

/// Runs of at least [`MIN_BASE64_RUN`] base64 characters (either alphabet), with their
/// padding. Blocks of 64 bytes are classified with SIMD compares; only blocks that can hold
/// such a run are walked byte by byte. (When the number detectors run, their pass over the
/// text finds the runs on the way: [`crate::Scanner`].)
pub(crate) fn base64_runs(b: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut runs = RunFinder::default();
    let mut at = 0;
    while at < b.len() {
        let end = (at + 64).min(b.len());
        if let Some((s, e)) = runs.block(b, at, classify(&b[at..end])) {
            walk_runs(b, s, e, &mut out);
        }
        at = end;
    }
    if let Some((s, e)) = runs.finish(b) {
        walk_runs(b, s, e, &mut out);
    }
    out
}

/// The stretches of a text that hold runs of at least [`MIN_BASE64_RUN`] [`superset`] bytes,
/// found block by block from masks of those bytes: the base64 runs to decode are in them
/// ([`walk_runs`]), and so is every match of a prefixed token, a JWT, a SendGrid key or a
/// Telegram token (each is such a run; `crate::Scanner` searches their anchors only there).
/// A stretch starts where a run starts and ends after a byte outside the superset, so no run
/// straddles its edges.
#[derive(Debug, Default)]
pub(crate) struct RunFinder {
    /// Candidate bytes just before the current block.
    carry: usize,
    /// Where the stretch to walk starts, once one is seen.
    from: Option<usize>,
}

impl RunFinder {
    /// The block of `b` at `at` (64 bytes, or the tail) and its mask (bit `j` for byte
    /// `at + j`; no bits past the end of `b`); a stretch when this block ends one.
    pub(crate) fn block(&mut self, b: &[u8], at: usize, m: u64) -> Option<(usize, usize)> {
        let len = (b.len() - at).min(64);
        let full = if len == 64 { u64::MAX } else { (1u64 << len) - 1 };
        let m = m & full;
        let lead = (m.trailing_ones() as usize).min(len);
        // Bit i stays set when bits i..i+20 all are: a run of 20 inside the block.
        let y = {
            let mut y = m & (m >> 1);
            y &= y >> 2;
            y &= y >> 4;
            y &= y >> 8;
            y & (y >> 4)
        };
        if y != 0 || self.carry + lead >= MIN_BASE64_RUN {
            self.from.get_or_insert(at - self.carry);
        }
        self.carry = match m == full {
            true => self.carry + len,
            // The run at the block's last bytes (bit `len - 1` moved to the top).
            false => (m << (64 - len)).leading_ones() as usize,
        };
        match self.carry {
            0 => self.from.take().map(|start| (start, at + len)),
            _ => None,
        }
    }

    /// After the last block: the stretch still open, if any.
    pub(crate) fn finish(&mut self, b: &[u8]) -> Option<(usize, usize)> {
        self.carry = 0;
        self.from.take().map(|start| (start, b.len()))
    }
}

/// Bytes from `+` (0x2B) to 0x7F, for sixteen bytes: a superset of the base64 characters
/// that one signed compare finds (bytes of 128 and over are negative as `i8`). Prose has
/// spaces every few bytes, so runs of the superset long enough to walk are rare;
/// [`walk_runs`] checks the real alphabet.
pub(crate) fn superset(v: i8x16) -> i8x16 {
    v.simd_gt(i8x16::splat(0x2A))
}

fn is_b64(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'-' | b'_')
}

/// The base64 runs in `b[from..to]` (a run reaching `to` goes on past it).
pub(crate) fn walk_runs(b: &[u8], from: usize, to: usize, out: &mut Vec<(usize, usize)>) {
    let mut i = from;
    while i < to {
        if !is_b64(b[i]) {
            i += 1;
            continue;
        }
        let s = i;
        while i < b.len() && is_b64(b[i]) {
            i += 1;
        }
        let mut e = i;
        while e < b.len() && e - i < 2 && b[e] == b'=' {
            e += 1;
        }
        if i - s >= MIN_BASE64_RUN {
            out.push((s, e));
        }
        i = e.max(i);
    }
}

/// One bit per byte of `chunk` (at most 64): set for the [`superset`] bytes.
fn classify(chunk: &[u8]) -> u64 {
    let lanes = |a: [u8; 16]| superset(i8x16::new(a.map(|b| b as i8))).to_bitmask() as u64;
    let mut m = 0u64;
    let mut k = 0;
    let mut whole = chunk.chunks_exact(16);
    for c in &mut whole {
        m |= lanes(c.try_into().unwrap_or([b' '; 16])) << (16 * k);
        k += 1;
    }
    let rest = whole.remainder();
    if !rest.is_empty() {
        let mut a = [b' '; 16];
        a[..rest.len()].copy_from_slice(rest);
        m |= lanes(a) << (16 * k);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs_scalar(b: &[u8]) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        walk_runs(b, 0, b.len(), &mut out);
        out
    }

    #[test]
    fn base64_runs_agree_with_a_byte_walk() {
        let mut rnd = crate::xorshift(0x9e37_79b9_7f4a_7c15u64);
        for round in 0..3000 {
            let n = (rnd() % 300) as usize;
            let sep = (round % 7) as u64 + 2;
            let b: Vec<u8> = (0..n)
                .map(|_| match rnd() % (sep * 10) {
                    0 => b' ',
                    1 => b'=',
                    _ => b"aZ09+/-_"[(rnd() % 8) as usize],
                })
                .collect();
            assert_eq!(base64_runs(&b), runs_scalar(&b), "{:?}", String::from_utf8_lossy(&b));
        }
        let text = format!("x {} y", "QUJD".repeat(10));
        assert_eq!(base64_runs(text.as_bytes()), [(2, 42)]);
        assert!(base64_runs(b"short words only, nothing long here at all").is_empty());
    }

    #[test]
    fn number_ends() {
        assert_eq!(number_tail("my card is 4111 1111 "), "4111 1111");
        assert_eq!(number_tail("no number"), "");
        assert_eq!(number_head(" 1111-1111 thanks"), "1111-1111");
        assert_eq!(number_head("thanks 1111"), "");
    }
}
