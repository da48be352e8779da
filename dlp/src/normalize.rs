//! Text as the detectors read it. Obfuscation that a reader (or the model) sees through must
//! not hide a match: format characters (zero-width space, ZWJ, soft hyphen, BOM) are dropped,
//! combining marks composed with their letter where Unicode has the composed form and dropped
//! otherwise (strike-through marks on digits), compatibility forms folded (NFKC per character: full-width letters and
//! digits, NBSP and the other spaces, ligatures), decimal digits of every script made ASCII
//! (Arabic-Indic, Devanagari, …, which NFKC keeps), and line and paragraph separators made
//! newlines.
//!
//! The result keeps, for each of its bytes, the offset of the character of the original it
//! came from, so a match found in the normalised text is reported and redacted at its place
//! in the original. ASCII text is already normal: [`normalize`] returns `None` for it without
//! copying (the common case, checked at memory speed). Pure.

use unicode_normalization::char::decompose_compatible;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// Normalised text and where each of its bytes came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    /// The text the detectors read.
    pub text: String,
    /// For each byte of `text`, the offset in the original of the character it came from.
    from: Vec<u32>,
}

impl Normalized {
    /// The span of the original that `text[start..end]` came from (whole characters).
    pub fn original(&self, original: &str, start: usize, end: usize) -> (usize, usize) {
        let at = |i: usize| self.from.get(i).map_or(original.len(), |&o| o as usize);
        let s = at(start);
        let last = at(end.saturating_sub(1).max(start));
        let e = original
            .get(last..)
            .and_then(|r| r.chars().next())
            .map_or(last, |c| last + c.len_utf8());
        (s, e.max(s))
    }
}

/// The normalised form of `text`, or `None` when it is already normal (ASCII). Texts longer
/// than 4 GiB are returned as they are (offsets are 32-bit; bodies are far smaller).
pub fn normalize(text: &str) -> Option<Normalized> {
    if text.is_ascii() || text.len() > u32::MAX as usize || already_normal(text) {
        return None;
    }
    let mut out = Normalized {
        text: String::with_capacity(text.len()),
        from: Vec::with_capacity(text.len()),
    };
    for (at, c) in text.char_indices() {
        let at = at as u32;
        if c.is_ascii() || plain(c) {
            out.push(c, at);
            continue;
        }
        match fold(c) {
            Fold::Drop => out.compose(c),
            Fold::Char(x) => out.push(x, at),
            Fold::Compat => decompose_compatible(c, |x| match fold_simple(x) {
                Fold::Char(y) => out.push(y, at),
                _ => out.compose(x),
            }),
        }
    }
    Some(out)
}

impl Normalized {
    fn push(&mut self, c: char, from: u32) {
        self.text.push(c);
        self.from.resize(self.text.len(), from);
    }

    /// A dropped character that is a combining mark composes with the letter before it
    /// where Unicode has the composed letter (`e` + U+0301 is `é`, as a precomposed `é`
    /// stays), so either way of writing a word reads the same.
    fn compose(&mut self, mark: char) {
        let Some(last) = self.text.chars().next_back() else { return };
        let Some(composed) = unicode_normalization::char::compose(last, mark) else { return };
        let start = self.text.len() - last.len_utf8();
        let from = self.from[start];
        self.text.truncate(start);
        self.from.truncate(start);
        self.push(composed, from);
    }
}

/// Whether every non-ASCII character of `text` is [`plain`]: then it is its own normal form
/// and nothing is copied (accented, Cyrillic, Greek, CJK prose is).
fn already_normal(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(off) = b[i..].iter().position(|&x| x >= 0x80) {
        let at = i + off;
        // `at` is a lead byte: the search starts after whole characters.
        let Some(c) = text.get(at..).and_then(|r| r.chars().next()) else { return false };
        if !plain(c) {
            return false;
        }
        i = at + c.len_utf8();
    }
    true
}

/// Characters of the common scripts that NFKC leaves as they are and that are neither
/// digits, spaces, marks nor format characters: kept without a table lookup (most non-ASCII
/// prompt text).
fn plain(c: char) -> bool {
    matches!(c as u32,
        0xA1..=0xA7 | 0xA9 | 0xAB | 0xAC | 0xAE | 0xB0 | 0xB1 | 0xB6 | 0xB7 | 0xBB | 0xBF | 0xD7
        | 0xF7 // Latin-1 punctuation and signs
        | 0x2010 | 0x2012..=0x2015 | 0x2018..=0x2023 | 0x2027 | 0x20AC // dashes, quotes, €
        | 0xC0..=0xD6 | 0xD8..=0xF6 | 0xF8..=0x131 | 0x134..=0x13E | 0x141..=0x148 | 0x14A..=0x17E
        | 0x180..=0x1C3 | 0x1CD..=0x1F0 | 0x1F4..=0x24F // Latin (not ĳ, ŀ, ŉ, ſ, ǆ-like digraphs)
        | 0x386 | 0x388..=0x3CE // Greek
        | 0x400..=0x481 | 0x48A..=0x52F // Cyrillic
        | 0x5D0..=0x5EA // Hebrew
        | 0x620..=0x64A // Arabic letters (its digits are folded)
        | 0x3041..=0x3096 | 0x30A1..=0x30FA // Hiragana, Katakana
        | 0x4E00..=0x9FFF // CJK unified ideographs
    )
}

enum Fold {
    Drop,
    Char(char),
    /// Compatibility decomposition (then each piece folded).
    Compat,
}

/// What one non-ASCII character becomes, without decomposition.
fn fold_simple(c: char) -> Fold {
    if c.is_ascii() {
        return Fold::Char(c);
    }
    match c.general_category() {
        GeneralCategory::Format
        | GeneralCategory::NonspacingMark
        | GeneralCategory::EnclosingMark => Fold::Drop,
        GeneralCategory::DecimalNumber => Fold::Char(ascii_digit(c)),
        GeneralCategory::LineSeparator | GeneralCategory::ParagraphSeparator => Fold::Char('\n'),
        GeneralCategory::SpaceSeparator => Fold::Char(' '),
        _ => Fold::Char(c),
    }
}

fn fold(c: char) -> Fold {
    match fold_simple(c) {
        Fold::Char(x) if x == c => Fold::Compat,
        other => other,
    }
}

/// The ASCII digit of a decimal digit of any script: Unicode keeps each script's digits as
/// ten consecutive code points, zero first, so the value is the distance from the start of
/// the run of decimal digits, modulo ten (runs of several scripts can be adjacent, each ten
/// long).
fn ascii_digit(c: char) -> char {
    let code = c as u32;
    let mut start = code;
    while start > 0
        && char::from_u32(start - 1)
            .is_some_and(|p| p.general_category() == GeneralCategory::DecimalNumber)
        && code - start < 100
    {
        start -= 1;
    }
    char::from_digit((code - start) % 10, 10).unwrap_or('0')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> String {
        normalize(s).map_or_else(|| s.to_owned(), |n| n.text)
    }

    #[test]
    fn ascii_is_left_alone() {
        assert!(normalize("card 4111 1111 1111 1111").is_none());
        assert!(
            normalize("Résumé « Москва » — 東京 ’quoted’ 5 €").is_none(),
            "its own normal form"
        );
    }

    #[test]
    fn obfuscations_fold_to_what_a_reader_sees() {
        assert_eq!(n("4111\u{200b}1111\u{200d}1111\u{ad}1111"), "4111111111111111");
        assert_eq!(n("4111\u{a0}1111\u{2009}1111\u{3000}1111"), "4111 1111 1111 1111");
        assert_eq!(n("４１１１ １１１１"), "4111 1111");
        assert_eq!(n("٤١١١ ۴۱۱۱ ४१११"), "4111 4111 4111");
        assert_eq!(n("𝟒𝟏𝟏𝟏"), "4111", "mathematical digits");
        assert_eq!(n("ＡＫＩＡ"), "AKIA");
        assert_eq!(n("a\u{2028}b"), "a\nb");
        assert_eq!(n("e\u{301}t\u{e9}"), "\u{e9}t\u{e9}", "composed either way");
        assert_eq!(n("4\u{336}1\u{336}1\u{336}1\u{336}"), "4111", "marks on digits dropped");
        assert_eq!(n("ﬁle"), "file");
        assert_eq!(
            n("Résumé, 東京, Ελλάδα, Москва"),
            "Résumé, 東京, Ελλάδα, Москва",
            "letters stay"
        );
    }

    #[test]
    fn spans_map_back_to_the_original() {
        let orig = "x ４１\u{200b}１１ y";
        let norm = normalize(orig).unwrap();
        let s = norm.text.find("4111").unwrap();
        let (a, b) = norm.original(orig, s, s + 4);
        assert_eq!(&orig[a..b], "４１\u{200b}１１");
        let (a, b) = norm.original(orig, norm.text.len() - 1, norm.text.len());
        assert_eq!(&orig[a..b], "y");
    }
}
