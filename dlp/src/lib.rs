//! # sluice-dlp
//!
//! Finds sensitive data in prompt payloads: validated detectors (payment cards with Luhn and
//! brand rules, SSNs without impossible numbers, IBANs with mod-97, UK NINOs, phones, emails,
//! and 50 named credential formats), one pass over the text whatever the number of enabled
//! detectors, then extraction from JSON bodies ([`walk`], [`json`]) and redaction.
//!
//! The scan is a fixed set of passes, whatever the number of rules: Aho-Corasick automata over
//! the literal anchors (`AKIA`, `sk-`, `ghp_`, `-----BEGIN `, keywords …; see [`Scanner`]),
//! and one pass over 64-byte blocks classified with SIMD compares (`blocks.rs`) for digit runs
//! and letter–digit openings (cards, SSNs, phones, IBANs, NINOs, IPv4), `@`, `Q~`, `SK`, and
//! the stretches before assignments that the keyword automaton reads. Each candidate gets a
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
    Special(tokens::Special),
}

/// The scanner: built once per policy (the built-in detectors and the rule set's custom
/// ones), shared by every request.
///
/// Anchors are found in three ways, chosen for speed (each able to skip prose quickly): the
/// vendor token prefixes and the case-sensitive special anchors (`eyJ`, `-----BEGIN `, `://`,
/// …) in one case-sensitive automaton over the text; the keywords (`password`, `secret`,
/// `token`, …), matched without regard to case, in a second automaton over an
/// ASCII-lowercased copy of the stretches before assignments (every keyword detector needs one
/// shortly after its keyword; most prose has none); the one- and two-byte anchors (`@`, `Q~`,
/// `SK`) and those stretches come from the block pass (`blocks.rs`). One automaton over
/// everything, case-insensitive, ran at ~400 MiB/s: its frequent short and keyword anchors
/// disabled the prefilter.
#[derive(Debug, Clone)]
pub struct Scanner {
    ac: AhoCorasick,
    anchors: Vec<Anchor>,
    keywords: AhoCorasick,
    keyword_anchors: Vec<tokens::Special>,
    /// Token index and detector of the two-byte `SK` prefix (found by the block pass).
    twilio: Option<(usize, DetectorId)>,
    /// The detectors the keyword anchors lead to, and those of `@` and `Q~` (looked up once).
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
        use tokens::Special;
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
                // Found by the block pass.
                Special::Email | Special::AzureClientSecret => {}
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
        Ok(Scanner {
            ac,
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
        for m in self.ac.find_iter(bytes) {
            let Some(a) = self.anchors.get(m.pattern().as_usize()) else { continue };
            match *a {
                Anchor::Token(i, d) if set.contains(d) => {
                    tokens::confirm_token(i, bytes, m.start(), m.end(), out)
                }
                Anchor::Token(..) => {}
                Anchor::Special(s) => {
                    tokens::confirm_special(s, bytes, m.start(), m.end(), set, out)
                }
            }
        }
        // `@`, `Q~`, `SK` and the stretches before assignments come from the block pass, which
        // reads the text once for them and the numbers.
        let twilio = self.twilio.filter(|&(_, d)| set.contains(d));
        LOWER.with(|low| {
            let mut low = low.borrow_mut();
            let mut found = |f: blocks::Found, out: &mut Vec<Match>| match f {
                blocks::Found::At(at) => {
                    tokens::confirm_special(tokens::Special::Email, bytes, at, at + 1, set, out)
                }
                blocks::Found::QTilde(at) => tokens::confirm_special(
                    tokens::Special::AzureClientSecret,
                    bytes,
                    at,
                    at + 2,
                    set,
                    out,
                ),
                blocks::Found::Sk(at) => {
                    if let Some((i, _)) = twilio {
                        tokens::confirm_token(i, bytes, at, at + 2, out)
                    }
                }
                blocks::Found::Stretch(s, e) => self.keywords_in(bytes, s, e, &mut low, set, out),
            };
            let mut also = blocks::Also {
                email: set.contains(self.email),
                azure: set.contains(self.azure),
                twilio: twilio.is_some(),
                keywords: set.0 & self.keyword_detectors.0 != 0,
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
mod tests {
    /// `@`, `Q~` and `SK` are found by the block pass wherever they sit against the block
    /// boundaries (the `Q` of `Q~` and the `S` of `SK` last in a block included), as the
    /// separate passes they replaced found them.
    #[test]
    fn block_pass_anchors_at_every_offset() {
        let scanner = Scanner::new().unwrap();
        let cases = [
            ("email", "chloe+billing@mail.example.net", "chloe+billing@mail.example.net"),
            (
                "azure_client_secret",
                "secret Yb09Q~nqkrCP5u99shu5ucMfEg5.hGyBZSmyD-r8 x",
                "Yb09Q~nqkrCP5u99shu5ucMfEg5.hGyBZSmyD-r8",
            ),
            (
                "twilio_key",
                "SK9951749edb9a839dc1606e302eb938a0",
                "SK9951749edb9a839dc1606e302eb938a0",
            ),
        ];
        for (name, text, want) in cases {
            let set = DetectorSet::from_names(&[name]).unwrap();
            for pad in 0..140 {
                let t = format!("{} {text} end", "x".repeat(pad));
                let mut out = Vec::new();
                scanner.scan(&t, &set, &mut out);
                let got: Vec<&str> = out.iter().map(|m| &t[m.start..m.end]).collect();
                assert_eq!(got, [want], "{name} after {pad} bytes");
            }
        }
    }

    /// Ties (same start, family and end) go to the registry's order, custom detectors last,
    /// whatever pass found them first.
    #[test]
    fn ties_go_to_the_registry_order() {
        let m = |detector| Match { detector, start: 0, end: 5 };
        let mut a = [m("custom_x"), m("email"), m("phone")];
        let mut b = [m("phone"), m("custom_x"), m("email")];
        tidy(&mut a);
        tidy(&mut b);
        assert_eq!(a, b);
        assert_eq!(a[2].detector, "custom_x");
    }

    /// The block pass's stretches before assignments hold every keyword match reading the
    /// whole text finds: random records of filler, keyword, name, quotes or spaces, assignment
    /// and value, the keyword landing anywhere relative to the blocks.
    #[test]
    fn keyword_stretches_find_what_the_whole_text_finds() {
        let scanner = Scanner::new().unwrap();
        let set = DetectorSet::from_names(tokens::KEYWORD_DETECTORS).unwrap();
        let keywords = [
            "password",
            "PassWord",
            "passwd",
            "secret",
            "TOKEN",
            "api_key",
            "apikey",
            "api-key",
            "access_key",
            "aws_secret_access_key",
            "SecretAccessKey",
            "aws_secret_key",
            "pwd=",
            "password=",
            "aws_secret_access_key_secret",
        ];
        let values = [
            "hunter2Secret99",
            "A1b2C3d4E5f6G7h8",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLE1",
            "S3cr3t!value",
            "x",
        ];
        let pick = |rnd: &mut dyn FnMut() -> u64, from: &[u8], n: u64| -> String {
            (0..rnd() % n).map(|_| from[(rnd() % from.len() as u64) as usize] as char).collect()
        };
        let mut rnd = crate::xorshift(0x51ce_5eed_u64);
        let mut found = 0;
        for round in 0..20_000 {
            let mut text = String::new();
            for _ in 0..1 + rnd() % 3 {
                text += &pick(&mut rnd, b" _-xQ9\n\".", 90);
                text += keywords[(rnd() % keywords.len() as u64) as usize];
                text += &pick(&mut rnd, b"_-aZ0", 26);
                text += &pick(&mut rnd, b" \t\"'`", 9);
                text += ["", ":", "=", ">", "=>"][(rnd() % 5) as usize];
                text += &pick(&mut rnd, b" \"", 3);
                text += values[(rnd() % values.len() as u64) as usize];
            }
            let b = text.as_bytes();
            let (mut whole, mut low) = (Vec::new(), Vec::new());
            scanner.keywords_in(b, 0, b.len(), &mut low, &set, &mut whole);
            let mut spans = Vec::new();
            let mut note = |f: blocks::Found, _: &mut Vec<Match>| {
                if let blocks::Found::Stretch(s, e) = f {
                    spans.push((s, e));
                }
            };
            let mut also = blocks::Also {
                email: false,
                azure: false,
                twilio: false,
                keywords: true,
                found: &mut note,
            };
            blocks::scan(b, &set, &mut Vec::new(), None, &mut also);
            let mut stretches = Vec::new();
            for (s, e) in spans {
                scanner.keywords_in(b, s, e, &mut low, &set, &mut stretches);
            }
            assert_eq!(whole, stretches, "round {round}: {text:?}");
            found += whole.len();
        }
        assert!(found > 2000, "the texts hold matches: {found}");
    }

    use super::*;

    #[test]
    fn every_registry_name_is_implemented() {
        let implemented: Vec<&str> = tokens::TOKENS
            .iter()
            .map(|t| t.name)
            .chain(tokens::SPECIAL_NAMES.iter().copied())
            .chain(numbers::NAMES.iter().copied())
            .collect();
        for d in DETECTORS {
            assert!(implemented.contains(&d.name), "{} has no implementation", d.name);
        }
        for n in &implemented {
            assert!(detector_id(n).is_some(), "{n} is not in the registry");
        }
        assert!(DETECTORS.len() <= 128);
        let credentials = DETECTORS.iter().filter(|d| d.family == "credential").count();
        assert!(credentials >= 40, "{credentials} credential rules");
    }

    #[test]
    fn custom_detectors_regex_keywords_dictionary() {
        use sluice_rules::{CustomDetector, CustomKind, dictionary_hash};
        let defs = vec![
            CustomDetector {
                name: "customer_id".into(),
                kind: CustomKind::Regex(r"\bCUST-[0-9]{6}\b".into()),
            },
            CustomDetector {
                name: "codenames".into(),
                kind: CustomKind::Keywords(vec!["Bluebird".into(), "project falcon".into()]),
            },
            CustomDetector {
                name: "customers".into(),
                kind: CustomKind::Dictionary {
                    hashes: {
                        let mut h =
                            vec![dictionary_hash(["acme", "corp"]), dictionary_hash(["globex"])];
                        h.sort_unstable();
                        h
                    },
                    entries: 2,
                    max_words: 2,
                },
            },
        ];
        let s = Scanner::with_custom(&defs).unwrap();
        let set = s.profile(&["customer_id", "codenames", "customers", "email"]).unwrap();
        let text = "CUST-123456 for ACME Corp re Project  Falcon; bluebirds; globex@example.com and Globex.";
        let mut out = Vec::new();
        s.scan(text, &set, &mut out);
        let found: Vec<(&str, &str)> =
            out.iter().map(|m| (m.detector, &text[m.start..m.end])).collect();
        assert_eq!(
            found,
            [
                ("customer_id", "CUST-123456"),
                ("customers", "ACME Corp"),
                ("email", "globex@example.com"),
                ("customers", "Globex"),
            ],
            "keywords need word boundaries and exact spacing; bluebirds is not Bluebird"
        );
        let set = s.profile(&["codenames"]).unwrap();
        out.clear();
        s.scan("the Bluebird launch, project falcon too", &set, &mut out);
        assert_eq!(out.len(), 2);
        assert!(s.profile(&["nope"]).is_err());
    }

    #[test]
    fn sets() {
        let s = DetectorSet::from_names(&["email", "jwt"]).unwrap();
        assert!(s.has("email") && s.has("jwt") && !s.has("iban"));
        assert_eq!(s.len(), 2);
        assert_eq!(DetectorSet::all().len(), DETECTORS.len());
        assert!(DetectorSet::from_names(&["nope"]).is_err());
    }
}
