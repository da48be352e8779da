//! Custom detectors from the rule set (`[[detector]]`): regular expressions (one `RegexSet`
//! pass says which can match, then only those search), keyword lists (one case-insensitive
//! automaton, word boundaries checked) and dictionaries matched by hash: every run of up to
//! `max_words` words in the text is hashed as the entries were, and looked up; the entries
//! themselves are never held.

use std::collections::HashSet;
use std::hash::Hasher;
use std::sync::{Mutex, OnceLock, PoisonError};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};
use sluice_rules::{CustomDetector, CustomKind, dictionary_hasher};

use super::{DetectorSet, Match};

/// Interns a detector name, so findings can carry `&'static str` for custom names too. Each
/// distinct name is stored once for the life of the process.
pub(crate) fn intern(name: &str) -> &'static str {
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut set = NAMES.get_or_init(Mutex::default).lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(n) = set.get(name) {
        return n;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    set.insert(leaked);
    leaked
}

/// Why custom detectors could not be built (the rules compiler validated them; this is a
/// defence in depth).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CustomError {
    /// A regex.
    #[error("custom detector regex: {0}")]
    Regex(#[from] regex::Error),
    /// The keyword automaton.
    #[error("custom detector keywords: {0}")]
    Keywords(#[from] aho_corasick::BuildError),
    /// Too many for the detector set.
    #[error("too many custom detectors")]
    TooMany,
}

#[derive(Debug, Clone)]
struct Dict {
    id: usize,
    name: &'static str,
    hashes: Vec<u64>,
    max_words: usize,
}

/// The compiled custom detectors of one policy.
#[derive(Debug, Clone, Default)]
pub(crate) struct Custom {
    /// Names, by custom index.
    pub(crate) names: Vec<&'static str>,
    /// Detector-set id of custom index 0.
    base: usize,
    regex_set: Option<RegexSet>,
    regexes: Vec<(usize, &'static str, Regex)>,
    keywords: Option<(AhoCorasick, Vec<(usize, &'static str)>)>,
    dicts: Vec<Dict>,
}

impl Custom {
    pub(crate) fn new(defs: &[CustomDetector], base: usize) -> Result<Self, CustomError> {
        if base + defs.len() > 128 {
            return Err(CustomError::TooMany);
        }
        let mut c = Custom { base, ..Custom::default() };
        let mut patterns = Vec::new();
        let mut words: Vec<String> = Vec::new();
        let mut word_ids = Vec::new();
        for (i, d) in defs.iter().enumerate() {
            let name = intern(&d.name);
            c.names.push(name);
            let id = base + i;
            match &d.kind {
                CustomKind::Regex(p) => {
                    patterns.push(p.clone());
                    c.regexes.push((id, name, RegexBuilder::new(p).size_limit(1 << 20).build()?));
                }
                CustomKind::Keywords(ws) => {
                    for w in ws {
                        // Texts are normalised before detection (crate::normalize): so are
                        // the words, or `Élan` would never match.
                        words.push(
                            crate::normalize::normalize(w).map_or_else(|| w.clone(), |n| n.text),
                        );
                        word_ids.push((id, name));
                    }
                }
                CustomKind::Dictionary { hashes, max_words, .. } => {
                    c.dicts.push(Dict { id, name, hashes: hashes.clone(), max_words: *max_words });
                }
            }
        }
        if !patterns.is_empty() {
            c.regex_set = Some(RegexSetBuilder::new(&patterns).size_limit(1 << 22).build()?);
        }
        if !words.is_empty() {
            let ac = AhoCorasickBuilder::new()
                .ascii_case_insensitive(true)
                .match_kind(MatchKind::LeftmostLongest)
                .build(&words)?;
            c.keywords = Some((ac, word_ids));
        }
        Ok(c)
    }

    pub(crate) fn id_of(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| *n == name).map(|i| self.base + i)
    }

    fn any_enabled(&self, set: &DetectorSet) -> bool {
        (0..self.names.len()).any(|i| set.contains(self.base + i))
    }

    pub(crate) fn scan(&self, text: &str, set: &DetectorSet, out: &mut Vec<Match>) {
        if self.names.is_empty() || !self.any_enabled(set) {
            return;
        }
        if let Some(rs) = &self.regex_set {
            for i in rs.matches(text).iter() {
                let Some((id, name, re)) = self.regexes.get(i) else { continue };
                if set.contains(*id) {
                    for m in re.find_iter(text).filter(|m| !m.is_empty()) {
                        out.push(Match { detector: name, start: m.start(), end: m.end() });
                    }
                }
            }
        }
        let b = text.as_bytes();
        let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
        if let Some((ac, ids)) = &self.keywords {
            for m in ac.find_iter(b) {
                let Some((id, name)) = ids.get(m.pattern().as_usize()) else { continue };
                let bounded = (m.start() == 0 || !word(b[m.start() - 1]))
                    && b.get(m.end()).is_none_or(|&c| !word(c));
                if set.contains(*id) && bounded {
                    out.push(Match { detector: name, start: m.start(), end: m.end() });
                }
            }
        }
        let dicts: Vec<&Dict> = self.dicts.iter().filter(|d| set.contains(d.id)).collect();
        if dicts.is_empty() {
            return;
        }
        // Words: runs of [A-Za-z0-9_-], as entries were split (on whitespace) and matched.
        let tok = |c: u8| word(c) || c == b'-' || c >= 0x80;
        let mut spans: Vec<(usize, usize)> = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if tok(b[i]) {
                let s = i;
                while i < b.len() && tok(b[i]) {
                    i += 1;
                }
                spans.push((s, i));
            } else {
                i += 1;
            }
        }
        let longest = dicts.iter().map(|d| d.max_words).max().unwrap_or(1);
        for w in 0..spans.len() {
            let mut h = dictionary_hasher();
            for k in 0..longest.min(spans.len() - w) {
                if k > 0 {
                    h.write_u8(b' ');
                }
                let (s, e) = spans[w + k];
                for &c in &b[s..e] {
                    h.write_u8(c.to_ascii_lowercase());
                }
                let v = h.clone().finish();
                for d in &dicts {
                    if k < d.max_words && d.hashes.binary_search(&v).is_ok() {
                        out.push(Match { detector: d.name, start: spans[w].0, end: e });
                    }
                }
            }
        }
    }
}
