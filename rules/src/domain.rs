//! Domain names: validation of rule-file patterns, and the suffix index that maps an SNI to the
//! set of categories it belongs to.
//!
//! Lookup cost is proportional to the number of labels in the queried name: one hash probe for
//! the exact name and one per parent suffix for `*.` wildcards. The list is never scanned.

use hashbrown::HashMap;

use crate::catset::CatSet;

/// Longest DNS name we accept (RFC 1035, without the trailing dot).
pub const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// A validated domain pattern from a rule file or catalog.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DomainPattern {
    /// Matches exactly this name.
    Exact(String),
    /// `*.suffix`: matches any name strictly below `suffix` (not `suffix` itself).
    Wildcard(String),
}

impl std::fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DomainPattern::Exact(n) => f.write_str(n),
            DomainPattern::Wildcard(n) => write!(f, "*.{n}"),
        }
    }
}

/// Parses a domain pattern: case-insensitive, trailing dot tolerated, `*.` only as the whole
/// first label, internationalised names only in A-label (`xn--`) form.
pub fn parse_pattern(raw: &str) -> Result<DomainPattern, String> {
    let trimmed = raw.strip_suffix('.').unwrap_or(raw);
    let (wild, name) = match trimmed.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, trimmed),
    };
    if name.is_empty() {
        return Err(format!("`{raw}` is not a domain name: expected `name.tld` or `*.name.tld`"));
    }
    if !name.is_ascii() {
        return Err(format!(
            "`{raw}` is an internationalised name: write it in A-label form (`xn--...`)"
        ));
    }
    let name = name.to_ascii_lowercase();
    validate_name(&name).map_err(|why| format!("`{raw}` is not a domain name: {why}"))?;
    Ok(if wild { DomainPattern::Wildcard(name) } else { DomainPattern::Exact(name) })
}

fn validate_name(name: &str) -> Result<(), &'static str> {
    if name.len() > MAX_NAME_LEN {
        return Err("longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label");
        }
        if label.len() > MAX_LABEL_LEN {
            return Err("a label is longer than 63 characters");
        }
        if label == "*" {
            return Err("`*` is only allowed as the whole first label (`*.example.com`)");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label starts or ends with `-`");
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err("labels may hold only letters, digits, `-` and `_`");
        }
    }
    Ok(())
}

/// Normalises a name seen on the wire (SNI, DNS) into `buf`: lowercase, trailing dot removed.
/// Returns `None` for names that cannot be valid (too long, empty, non-ASCII). Allocation-free.
pub fn normalize_into<'b>(name: &str, buf: &'b mut [u8; MAX_NAME_LEN]) -> Option<&'b str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > MAX_NAME_LEN || !name.is_ascii() {
        return None;
    }
    let out = &mut buf[..name.len()];
    for (o, b) in out.iter_mut().zip(name.bytes()) {
        *o = b.to_ascii_lowercase();
    }
    std::str::from_utf8(out).ok()
}

/// Maps names to the categories whose lists contain them.
#[derive(Debug, Default, Clone)]
pub struct DomainIndex {
    exact: HashMap<Box<str>, CatSet>,
    wildcard: HashMap<Box<str>, CatSet>,
}

impl DomainIndex {
    /// Adds `pattern` to category `cat`.
    pub fn insert(&mut self, pattern: &DomainPattern, cat: usize) {
        let (map, name) = match pattern {
            DomainPattern::Exact(n) => (&mut self.exact, n),
            DomainPattern::Wildcard(n) => (&mut self.wildcard, n),
        };
        map.entry(name.as_str().into()).or_default().insert(cat);
    }

    /// Number of distinct patterns indexed.
    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    /// True when no pattern is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Categories of `name`, which must already be normalised (see [`normalize_into`]).
    pub fn lookup_normalized(&self, name: &str) -> CatSet {
        let mut set = self.exact.get(name).copied().unwrap_or_default();
        if !self.wildcard.is_empty() {
            let mut rest = name;
            while let Some(dot) = rest.find('.') {
                rest = &rest[dot + 1..];
                if let Some(s) = self.wildcard.get(rest) {
                    set.union_with(s);
                }
            }
        }
        set
    }

    /// Categories of a raw wire name (normalised here, without allocating).
    pub fn lookup(&self, name: &str) -> CatSet {
        let mut buf = [0u8; MAX_NAME_LEN];
        match normalize_into(name, &mut buf) {
            Some(n) => self.lookup_normalized(n),
            None => CatSet::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_parse_and_normalise() {
        assert_eq!(
            parse_pattern("API.OpenAI.com.").unwrap(),
            DomainPattern::Exact("api.openai.com".into())
        );
        assert_eq!(
            parse_pattern("*.chatgpt.com").unwrap(),
            DomainPattern::Wildcard("chatgpt.com".into())
        );
        assert!(parse_pattern("b\u{fc}cher.de").unwrap_err().contains("A-label"));
        assert!(parse_pattern("a.*.com").is_err());
        assert!(parse_pattern("*.").is_err());
        assert!(parse_pattern("").is_err());
        assert!(parse_pattern("-a.com").is_err());
        assert!(parse_pattern(&format!("{}.com", "a".repeat(64))).is_err());
        assert!(parse_pattern("xn--bcher-kva.de").is_ok());
    }

    #[test]
    fn wildcard_matches_below_not_apex() {
        let mut idx = DomainIndex::default();
        idx.insert(&parse_pattern("*.chatgpt.com").unwrap(), 1);
        idx.insert(&parse_pattern("chatgpt.com").unwrap(), 2);
        idx.insert(&parse_pattern("api.openai.com").unwrap(), 3);
        assert!(idx.lookup("ab.CHATGPT.com.").contains(1));
        assert!(!idx.lookup("ab.chatgpt.com").contains(2));
        assert!(idx.lookup("x.y.chatgpt.com").contains(1));
        assert!(idx.lookup("chatgpt.com").contains(2));
        assert!(!idx.lookup("chatgpt.com").contains(1));
        assert!(idx.lookup("evilchatgpt.com").is_empty());
        assert!(idx.lookup("api.openai.com").contains(3));
        assert!(idx.lookup("").is_empty());
        assert!(idx.lookup("\u{e9}.com").is_empty());
    }
}
