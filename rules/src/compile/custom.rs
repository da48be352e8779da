//! The rule set's own detectors (`[[detector]]`: regular expressions, keyword lists,
//! dictionaries of hashed entries) and its DLP profiles (`[[dlp]]`), validated against the
//! built-in registry.

use hashbrown::HashMap;
use toml::Spanned;

use super::{
    Cx, MAX_CUSTOM_DETECTORS, MAX_DICTIONARY_WORDS, closest, name_msg, span_of, valid_name,
};
use crate::catalog::IncludeLoader;
use crate::detectors;
use crate::policy::{CustomDetector, CustomKind, DlpProfile, dictionary_hash};
use crate::schema::{DetectorKind, DlpDef, RuleFile};

impl Cx<'_> {
    pub(super) fn custom_detectors(
        &mut self,
        file: &RuleFile,
        loader: &dyn IncludeLoader,
    ) -> Vec<CustomDetector> {
        let mut out: Vec<CustomDetector> = Vec::new();
        for def in &file.detector {
            let def = def.get_ref();
            let name = def.name.get_ref();
            let span = span_of(&def.name);
            if !valid_name(name) {
                self.err(span.clone(), name_msg("detector name", name));
                continue;
            }
            if detectors::lookup(name).is_some() {
                self.err(span, format!("`{name}` is a built-in detector: choose another name"));
                continue;
            }
            if out.iter().any(|d| &*d.name == name.as_str()) {
                self.err(span, format!("duplicate detector `{name}`"));
                continue;
            }
            if out.len() >= MAX_CUSTOM_DETECTORS {
                self.err(span, format!("at most {MAX_CUSTOM_DETECTORS} custom detectors"));
                continue;
            }
            let kind_span = span_of(&def.kind);
            let unexpected = |s: &mut Self, what: &str, present: bool| {
                if present {
                    s.err(
                        kind_span.clone(),
                        format!("`{what}` does not apply to this kind of detector"),
                    );
                }
            };
            let kind = match def.kind.get_ref() {
                DetectorKind::Regex => {
                    unexpected(self, "words", !def.words.is_empty());
                    unexpected(self, "file", def.file.is_some());
                    let Some(p) = &def.pattern else {
                        self.err(kind_span, "a `regex` detector needs `pattern`");
                        continue;
                    };
                    match regex::RegexBuilder::new(p.get_ref()).size_limit(1 << 20).build() {
                        Ok(r) if r.is_match("") => {
                            self.err(span_of(p), "the pattern matches the empty string");
                            continue;
                        }
                        Ok(_) => CustomKind::Regex(p.get_ref().clone()),
                        Err(e) => {
                            let first =
                                e.to_string().lines().last().unwrap_or("").trim().to_owned();
                            self.err(span_of(p), format!("invalid regular expression: {first}"));
                            continue;
                        }
                    }
                }
                DetectorKind::Keywords => {
                    unexpected(self, "pattern", def.pattern.is_some());
                    unexpected(self, "file", def.file.is_some());
                    if def.words.is_empty() {
                        self.err(kind_span, "a `keywords` detector needs `words`");
                        continue;
                    }
                    let mut words = Vec::new();
                    for w in &def.words {
                        let t = w.get_ref().trim();
                        if t.is_empty() {
                            self.err(span_of(w), "empty keyword");
                        } else {
                            words.push(t.to_owned());
                        }
                    }
                    CustomKind::Keywords(words)
                }
                DetectorKind::Dictionary => {
                    unexpected(self, "pattern", def.pattern.is_some());
                    unexpected(self, "words", !def.words.is_empty());
                    let Some(f) = &def.file else {
                        self.err(kind_span, "a `dictionary` detector needs `file`");
                        continue;
                    };
                    let text = match loader.load_data(f.get_ref()) {
                        Ok((_, t)) => t,
                        Err(e) => {
                            self.err(span_of(f), e);
                            continue;
                        }
                    };
                    let mut hashes = Vec::new();
                    let mut max_words = 0;
                    for line in text.lines() {
                        let entry = line.trim();
                        if entry.is_empty() || entry.starts_with('#') {
                            continue;
                        }
                        let words: Vec<&str> = entry.split_whitespace().collect();
                        max_words = max_words.max(words.len());
                        hashes.push(dictionary_hash(words));
                    }
                    if hashes.is_empty() {
                        self.err(span_of(f), "the dictionary has no entries");
                        continue;
                    }
                    if max_words > MAX_DICTIONARY_WORDS {
                        self.err(
                            span_of(f),
                            format!("dictionary entries are at most {MAX_DICTIONARY_WORDS} words"),
                        );
                        continue;
                    }
                    let entries = hashes.len();
                    hashes.sort_unstable();
                    hashes.dedup();
                    CustomKind::Dictionary { hashes, entries, max_words }
                }
            };
            out.push(CustomDetector { name: name.as_str().into(), kind });
        }
        out
    }

    pub(super) fn dlp(
        &mut self,
        file: &RuleFile,
        custom: &[CustomDetector],
    ) -> (Vec<DlpProfile>, HashMap<String, usize>) {
        let mut out = Vec::new();
        let mut index = HashMap::new();
        for def in &file.dlp {
            let def = def.get_ref();
            let name = def.name.get_ref();
            if !valid_name(name) {
                self.err(span_of(&def.name), name_msg("DLP profile name", name));
            }
            if index.contains_key(name) {
                self.err(span_of(&def.name), format!("duplicate DLP profile `{name}`"));
                continue;
            }
            if def.detectors.get_ref().is_empty() {
                self.err(span_of(&def.detectors), "a DLP profile needs at least one detector");
            }
            let dets = self.profile_detectors(def, custom);
            index.insert(name.clone(), out.len());
            out.push(DlpProfile {
                name: name.as_str().into(),
                detectors: dets,
                action: def.action,
            });
        }
        (out, index)
    }
}

/// The detector families a profile may name as `@family`; `custom` is every custom detector.
pub const FAMILIES: [&str; 4] = ["credential", "financial", "pii", "custom"];

impl Cx<'_> {
    /// A profile's detectors: names and `@family` entries expanded, in order, without
    /// duplicates, minus `exclude`.
    fn profile_detectors(&mut self, def: &DlpDef, custom: &[CustomDetector]) -> Vec<String> {
        let errors = self.error_count();
        let mut dets: Vec<String> = Vec::new();
        for d in def.detectors.get_ref() {
            let Some(names) = self.expand(d, custom) else { continue };
            if names.len() == 1 && dets.contains(&names[0]) {
                self.warn(span_of(d), format!("detector `{}` is listed twice", d.get_ref()));
            }
            for n in names {
                if !dets.contains(&n) {
                    dets.push(n);
                }
            }
        }
        for x in &def.exclude {
            let Some(names) = self.expand(x, custom) else { continue };
            let before = dets.len();
            dets.retain(|d| !names.contains(d));
            if dets.len() == before {
                self.warn(
                    span_of(x),
                    format!("`{}` excludes nothing the profile lists", x.get_ref()),
                );
            }
        }
        if dets.is_empty() && !def.exclude.is_empty() && self.error_count() == errors {
            self.err(span_of(&def.detectors), "the profile's exclusions leave no detector");
        }
        dets
    }

    /// One entry of `detectors` or `exclude`: a name, or every member of `@family`.
    fn expand(
        &mut self,
        entry: &Spanned<String>,
        custom: &[CustomDetector],
    ) -> Option<Vec<String>> {
        let e = entry.get_ref();
        if let Some(family) = e.strip_prefix('@') {
            if !FAMILIES.contains(&family) {
                let hint = closest(family, FAMILIES.iter().copied());
                self.err(
                    span_of(entry),
                    format!(
                        "unknown detector family `@{family}`{hint} (families: @{})",
                        FAMILIES.join(", @")
                    ),
                );
                return None;
            }
            if family == "custom" {
                return Some(custom.iter().map(|c| c.name.to_string()).collect());
            }
            return Some(
                detectors::DETECTORS
                    .iter()
                    .filter(|d| d.family == family && !detectors::opt_in(d.name))
                    .map(|d| d.name.to_owned())
                    .collect(),
            );
        }
        if detectors::lookup(e).is_none() && !custom.iter().any(|c| &*c.name == e.as_str()) {
            let names = detectors::DETECTORS.iter().map(|x| x.name);
            let hint = closest(e, names.chain(custom.iter().map(|c| &*c.name)));
            self.err(span_of(entry), format!("unknown detector `{e}`{hint}"));
            return None;
        }
        Some(vec![e.clone()])
    }
}
