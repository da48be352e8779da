//! # sluice-dlp
//!
//! Finds sensitive data in prompt payloads: validated detectors (payment cards with Luhn and
//! brand rules, SSNs without impossible numbers, IBANs with mod-97, UK NINOs, phones, emails,
//! and 50 named credential formats), one pass over the text whatever the number of enabled
//! detectors, then extraction from JSON bodies ([`walk`], [`json`]) and redaction.
//!
//! The scan is one pass over 64-byte blocks classified with SIMD compares (`blocks/`,
//! ARCHITECTURE.md "What DLP reads"), whatever the number of rules: digit runs and
//! letter–digit openings (cards, SSNs, phones, IBANs, NINOs, IPv4), `@`, `Q~`, `SK`,
//! `-----BEGIN `, the names before assignments that the keyword automaton reads, and the
//! stretches of long runs where the token automaton finds `AKIA`, `sk-`, `ghp_` … (see
//! [`Scanner`]). Each candidate gets a
//! confirming check (validation, length, charset, boundaries) only when its detector is
//! enabled. Pure: bytes in, spans out. The match itself never leaves this crate except as a
//! salted hash ([`Finding`]).
//!
//! The detector names are the rule language's registry ([`sluice_rules::detectors`]); this
//! crate implements every one of them (checked by a test).

#[cfg(target_arch = "x86_64")]
mod avx2;
mod blocks;
pub mod body;
pub mod charset;
mod custom;
pub mod docs;
pub mod extract;
pub mod form;
pub mod json;
pub mod normalize;
mod numbers;
pub mod stream;
mod text;
pub mod token_ids;
mod tokens;
pub mod walk;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
pub use sluice_rules::detectors::{DETECTORS, DetectorInfo};
use tokens::Special;

/// Index of a detector in [`DETECTORS`].
pub type DetectorId = usize;

/// The id of detector `name`.
pub fn detector_id(name: &str) -> Option<DetectorId> {
    DETECTORS.iter().position(|d| d.name == name)
}

/// [`detector_id`] at compile time: `usize::MAX` (never enabled) for a name not in the
/// registry. The checks on the scan's hot path name their detectors through [`has!`], so
/// that no string is compared per text.
pub(crate) const fn const_id(name: &str) -> DetectorId {
    let mut i = 0;
    while i < DETECTORS.len() {
        let (a, b) = (DETECTORS[i].name.as_bytes(), name.as_bytes());
        if a.len() == b.len() {
            let mut k = 0;
            while k < a.len() && a[k] == b[k] {
                k += 1;
            }
            if k == a.len() {
                return i;
            }
        }
        i += 1;
    }
    usize::MAX
}

/// `has!(set, "name")`: whether `set` enables the detector, its id found at compile time.
macro_rules! has {
    ($set:expr, $name:literal) => {
        $set.contains({
            const ID: $crate::DetectorId = {
                let id = $crate::const_id($name);
                assert!(id != usize::MAX, "not a detector in the registry");
                id
            };
            ID
        })
    };
}
pub(crate) use has;

fn id(name: &str) -> DetectorId {
    // Names used in this crate are checked against the registry by the test
    // `every_registry_name_is_implemented`; an unknown one maps past the end (never enabled).
    detector_id(name).unwrap_or(usize::MAX)
}

/// A name that is not in the registry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown detector `{0}`")]
pub struct UnknownDetector(pub String);

/// A set of enabled detectors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DetectorSet(u128);

impl DetectorSet {
    /// Every built-in detector.
    pub fn all() -> Self {
        let n = DETECTORS.len().min(128);
        DetectorSet(if n == 128 { u128::MAX } else { (1u128 << n) - 1 })
    }

    /// The detectors named.
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Result<Self, UnknownDetector> {
        let mut s = DetectorSet::default();
        for n in names {
            let i =
                detector_id(n.as_ref()).ok_or_else(|| UnknownDetector(n.as_ref().to_owned()))?;
            s.0 |= 1 << i;
        }
        Ok(s)
    }

    /// True when detector `i` is enabled.
    pub fn contains(&self, i: DetectorId) -> bool {
        i < 128 && self.0 & (1 << i) != 0
    }

    /// True when `name` is enabled.
    pub fn has(&self, name: &str) -> bool {
        self.contains(id(name))
    }

    /// Number of enabled detectors.
    pub fn len(&self) -> usize {
        self.0.count_ones() as usize
    }

    /// True when none is enabled.
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    /// The detectors of either.
    pub fn union(&self, other: &DetectorSet) -> DetectorSet {
        DetectorSet(self.0 | other.0)
    }

    /// True when a detector is in both.
    pub fn meets(&self, other: &DetectorSet) -> bool {
        self.0 & other.0 != 0
    }

    /// The detectors of `self` that are not in `other`.
    pub fn without(&self, other: &DetectorSet) -> DetectorSet {
        DetectorSet(self.0 & !other.0)
    }

    /// Every built-in detector of a family (`credential`, `financial`, `pii`).
    pub fn family(family: &str) -> DetectorSet {
        let mut s = DetectorSet::default();
        for (i, d) in DETECTORS.iter().enumerate().take(128) {
            if d.family == family {
                s.0 |= 1 << i;
            }
        }
        s
    }
}

/// A confirmed match in one text: detector and byte span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    /// Detector name.
    pub detector: &'static str,
    /// Byte offset of the start.
    pub start: usize,
    /// Byte offset past the end.
    pub end: usize,
}

/// What an anchor of the automaton leads to.
#[derive(Debug, Clone, Copy)]
enum Anchor {
    /// Index in the token table, and its detector's id (looked up once, not per candidate).
    Token(usize, DetectorId),
    Special(Special),
}

/// The scanner: built once per policy (the built-in detectors and the rule set's custom
/// ones), shared by every request.
///
/// Every anchor comes from the block pass (`blocks/`), which reads each byte once: `@`
/// (emails, and connection URLs read backward to their `://`), `Q~`, `SK` and `-----BEGIN `
/// themselves; the keywords (`password`, `secret`, `token`, …), matched without regard to
/// case by a second automaton over an ASCII-lowercased copy of the name before each
/// assignment (every keyword detector needs its keyword there; most prose has none); and the
/// vendor token prefixes, `eyJ`, `SG.` and `:AA`, found by this automaton in the stretches of
/// long base64-superset runs only (each of their matches is such a run). One automaton over
/// everything, case-insensitive, ran at ~400 MiB/s: its frequent short and keyword anchors
/// disabled the prefilter; the token automaton over the whole text was a sixth of the time.
#[derive(Debug, Clone)]
pub struct Scanner {
    ac: AhoCorasick,
    anchors: Vec<Anchor>,
    keywords: AhoCorasick,
    keyword_anchors: Vec<Special>,
    /// Token index and detector of the two-byte `SK` prefix (found by the block pass).
    twilio: Option<(usize, DetectorId)>,
    /// The detectors the automaton's anchors lead to: it runs only when one is on.
    anchor_detectors: DetectorSet,
    /// The PEM blocks' and the connection URLs' detectors (found by the block pass).
    pem: DetectorSet,
    conn_url: DetectorSet,
    /// The detectors the keyword anchors lead to; those of `@` and `Q~` (looked up once).
    keyword_detectors: DetectorSet,
    email: DetectorId,
    azure: DetectorId,
    custom: custom::Custom,
}

pub use custom::CustomError;

/// The scanner could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The built-in automaton (never happens with the built-in anchors).
    #[error("building the DLP automaton: {0}")]
    Automaton(#[from] aho_corasick::BuildError),
    /// The custom detectors.
    #[error(transparent)]
    Custom(#[from] CustomError),
}

impl Scanner {
    /// The scanner over every built-in detector.
    pub fn new() -> Result<Self, BuildError> {
        let mut patterns: Vec<&'static str> = Vec::new();
        let mut anchors = Vec::new();
        let mut twilio = None;
        for (i, t) in tokens::TOKENS.iter().enumerate() {
            for p in t.prefixes {
                if p.len() < 3 {
                    // Too short for the automaton's prefilter: found by the block pass.
                    twilio = Some((i, id(t.name)));
                    continue;
                }
                patterns.push(p);
                anchors.push(Anchor::Token(i, id(t.name)));
            }
        }
        let mut keywords = Vec::new();
        let mut keyword_anchors = Vec::new();
        for (p, s) in tokens::SPECIAL_ANCHORS {
            match s {
                // Found by the block pass (connection URLs from their `@`).
                Special::Email | Special::AzureClientSecret | Special::Pem | Special::ConnUrl => {}
                Special::Generic | Special::ConnPassword | Special::AwsSecret => {
                    debug_assert_eq!(p.to_ascii_lowercase(), *p, "keywords are lowercase");
                    keywords.push(*p);
                    keyword_anchors.push(*s);
                }
                _ => {
                    patterns.push(p);
                    anchors.push(Anchor::Special(*s));
                }
            }
        }
        // Leftmost-longest, not overlapping: where anchors nest (`sk-` in `sk-proj-`,
        // `password` in `password=`) the longest leads, and its check covers the shorter one.
        let ac =
            AhoCorasickBuilder::new().match_kind(MatchKind::LeftmostLongest).build(&patterns)?;
        let keywords =
            AhoCorasickBuilder::new().match_kind(MatchKind::LeftmostLongest).build(&keywords)?;
        let detectors_of = |s: Special| {
            DetectorSet::from_names(s.detectors()).expect("special detectors are in the registry")
        };
        let anchor_detectors = anchors.iter().fold(DetectorSet::default(), |set, a| match *a {
            Anchor::Token(_, d) => set.union(&DetectorSet(1 << d)),
            Anchor::Special(s) => set.union(&detectors_of(s)),
        });
        Ok(Scanner {
            ac,
            anchor_detectors,
            pem: detectors_of(Special::Pem),
            conn_url: detectors_of(Special::ConnUrl),
            anchors,
            keywords,
            keyword_anchors,
            twilio,
            keyword_detectors: DetectorSet::from_names(tokens::KEYWORD_DETECTORS)
                .expect("keyword detectors are in the registry"),
            email: id("email"),
            azure: id("azure_client_secret"),
            custom: custom::Custom::default(),
        })
    }

    /// The built-in detectors plus a rule set's custom ones.
    pub fn with_custom(defs: &[sluice_rules::CustomDetector]) -> Result<Self, BuildError> {
        let mut s = Scanner::new()?;
        s.custom = custom::Custom::new(defs, DETECTORS.len())?;
        Ok(s)
    }

    /// The set of a profile's detectors, built-in or custom.
    pub fn profile<S: AsRef<str>>(&self, names: &[S]) -> Result<DetectorSet, UnknownDetector> {
        let mut set = DetectorSet::default();
        for n in names {
            let n = n.as_ref();
            let i = detector_id(n)
                .or_else(|| self.custom.id_of(n))
                .ok_or_else(|| UnknownDetector(n.to_owned()))?;
            set.0 |= 1 << i;
        }
        Ok(set)
    }

    /// Finds the matches of the enabled detectors in `text`, appended to `out` sorted by
    /// start, without overlaps (the more specific detector wins over `generic_secret`).
    pub fn scan(&self, text: &str, set: &DetectorSet, out: &mut Vec<Match>) {
        self.scan_inner(text, set, out, None);
    }

    /// [`Scanner::scan`], and the runs of base64 characters long enough to decode appended to
    /// `runs` (found in the same pass over the text as numbers, when number detectors are on).
    pub(crate) fn scan_runs(
        &self,
        text: &str,
        set: &DetectorSet,
        out: &mut Vec<Match>,
        runs: &mut Vec<(usize, usize)>,
    ) {
        self.scan_inner(text, set, out, Some(runs));
    }

    fn scan_inner(
        &self,
        text: &str,
        set: &DetectorSet,
        out: &mut Vec<Match>,
        runs: Option<&mut Vec<(usize, usize)>>,
    ) {
        let first = out.len();
        if set.is_empty() {
            if let Some(r) = runs {
                r.extend(text::base64_runs(text.as_bytes()));
            }
            return;
        }
        let bytes = text.as_bytes();
        // Everything comes from the block pass, which reads the text once: numbers, `@`, `Q~`,
        // `SK`, `-----BEGIN `, the names before assignments for the keyword automaton, and
        // the stretches of long runs for the token automaton.
        let twilio = self.twilio.filter(|&(_, d)| set.contains(d));
        let (email, conn_url) = (set.contains(self.email), set.meets(&self.conn_url));
        LOWER.with(|low| {
            let mut low = low.borrow_mut();
            let mut found = |f: blocks::Found, out: &mut Vec<Match>| match f {
                blocks::Found::At(at) => {
                    if email {
                        tokens::confirm_special(Special::Email, bytes, at, at + 1, set, out)
                    }
                    if conn_url && let Some(c) = tokens::conn_url_before(bytes, at) {
                        tokens::confirm_special(Special::ConnUrl, bytes, c, c + 3, set, out)
                    }
                }
                blocks::Found::QTilde(at) => {
                    tokens::confirm_special(Special::AzureClientSecret, bytes, at, at + 2, set, out)
                }
                blocks::Found::Sk(at) => {
                    if let Some((i, _)) = twilio {
                        tokens::confirm_token(i, bytes, at, at + 2, out)
                    }
                }
                blocks::Found::Pem(at) => {
                    tokens::confirm_special(Special::Pem, bytes, at, at + 11, set, out)
                }
                blocks::Found::Stretch(s, e) => self.keywords_in(bytes, s, e, &mut low, set, out),
                blocks::Found::Long(s, e) => self.anchors_in(bytes, s, e, set, out),
            };
            let mut also = blocks::Also {
                at: email || conn_url,
                azure: set.contains(self.azure),
                twilio: twilio.is_some(),
                keywords: set.meets(&self.keyword_detectors),
                pem: set.meets(&self.pem),
                anchors: set.meets(&self.anchor_detectors),
                found: &mut found,
            };
            blocks::scan(bytes, set, out, runs, &mut also);
        });
        self.custom.scan(text, set, out);
        tidy(&mut out[first..]);
        let mut keep = first;
        let mut last_end = 0;
        for i in first..out.len() {
            let m = out[i];
            if i > first && m.start < last_end {
                continue;
            }
            last_end = m.end;
            out[keep] = m;
            keep += 1;
        }
        out.truncate(keep);
    }
}

impl Scanner {
    /// The automaton's anchors in `b[s..e]`, a stretch of long superset runs (no anchor
    /// straddles its edges, and every match of their detectors is such a run), confirmed
    /// against the whole of `b`.
    fn anchors_in(&self, b: &[u8], s: usize, e: usize, set: &DetectorSet, out: &mut Vec<Match>) {
        for m in self.ac.find_iter(&b[s..e]) {
            let (start, end) = (s + m.start(), s + m.end());
            match self.anchors.get(m.pattern().as_usize()) {
                Some(&Anchor::Token(i, d)) if set.contains(d) => {
                    tokens::confirm_token(i, b, start, end, out)
                }
                Some(&Anchor::Special(sp)) => tokens::confirm_special(sp, b, start, end, set, out),
                _ => {}
            }
        }
    }

    /// The keyword anchors in `b[s..e]`, confirmed against the whole of `b`; `low` is the
    /// buffer the lowercased stretch is copied to.
    fn keywords_in(
        &self,
        b: &[u8],
        s: usize,
        e: usize,
        low: &mut Vec<u8>,
        set: &DetectorSet,
        out: &mut Vec<Match>,
    ) {
        low.clear();
        low.extend_from_slice(&b[s..e]);
        low.make_ascii_lowercase();
        for m in self.keywords.find_iter(low.as_slice()) {
            if let Some(&a) = self.keyword_anchors.get(m.pattern().as_usize()) {
                tokens::confirm_special(a, b, s + m.start(), s + m.end(), set, out);
            }
        }
    }
}

thread_local! {
    /// The lowercased copy the keyword automaton reads (reused across calls).
    static LOWER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Sorts by start, longest first, generic last among equals: the overlap filter then keeps
/// the best of each cluster.
fn tidy(ms: &mut [Match]) {
    // Credentials before financial before personal data; the keyword-only generic last.
    let rank = |m: &Match| match m.detector {
        "generic_secret" => 4,
        d => match DETECTORS.iter().find(|x| x.name == d).map(|x| x.family) {
            Some("credential") => 0,
            Some("financial") => 1,
            _ => 2,
        },
    };
    // Then the registry's order, custom detectors after every built-in one: the order never
    // depends on which pass found what first.
    let order = |m: &Match| detector_id(m.detector).unwrap_or(usize::MAX);
    ms.sort_by(|a, b| {
        a.start
            .cmp(&b.start)
            .then(rank(a).cmp(&rank(b)))
            .then(b.end.cmp(&a.end))
            .then(order(a).cmp(&order(b)))
    });
}

/// One finding, as records carry it: never the matched text.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// Detector name.
    pub detector: &'static str,
    /// JSON path of the string it was found in (`$` for a text body).
    pub path: String,
    /// Byte span in that string (in the decoded text for base64 data).
    pub start: usize,
    /// End of the span.
    pub end: usize,
    /// `sha256:` and the first 16 hex digits of SHA-256(salt ‖ match).
    pub hash: String,
}

/// The salted hash of a match.
pub fn match_hash(salt: &[u8], matched: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(salt);
    h.update(matched);
    let d = h.finalize();
    let mut s = String::from("sha256:");
    for b in &d[..8] {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Which salt made a finding's hash, as records name it: `salt:` and the first 12 hex digits
/// of SHA-256 over a domain prefix and the salt. It tells salts apart (hashes under different
/// salts are never comparable) and reveals nothing of a random salt.
pub fn salt_id(salt: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"sluice dlp salt id\0");
    h.update(salt);
    let d = h.finalize();
    let mut s = String::from("salt:");
    for b in &d[..6] {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A deterministic pseudo-random sequence for the crate's randomised tests (xorshift64).
#[cfg(test)]
pub(crate) fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}

#[cfg(test)]
mod tests;
