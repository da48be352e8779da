//! Diagnostics that point at a file, line and column.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

/// How serious a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The rule set is refused.
    Error,
    /// The rule set compiles, but probably not as meant (e.g. a shadowed rule).
    Warning,
}

/// One message about a rule file, with its position (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// File name as given to the compiler (or the catalog's name).
    pub file: Arc<str>,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{}:{}:{}: {sev}: {}", self.file, self.line, self.col, self.message)
    }
}

/// A source text with its name, able to turn byte offsets into line and column.
#[derive(Debug, Clone)]
pub struct Source<'a> {
    /// Name used in diagnostics.
    pub name: Arc<str>,
    /// The text.
    pub text: &'a str,
}

impl Source<'_> {
    /// Line and column (1-based) of byte offset `at`.
    pub fn position(&self, at: usize) -> (usize, usize) {
        let mut at = at.min(self.text.len());
        while !self.text.is_char_boundary(at) {
            at -= 1;
        }
        let before = &self.text[..at];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before[line_start..].chars().count() + 1;
        (line, col)
    }

    /// An error at `span`.
    pub fn error(&self, span: Range<usize>, message: impl Into<String>) -> Diagnostic {
        self.diag(Severity::Error, span, message)
    }

    /// A warning at `span`.
    pub fn warning(&self, span: Range<usize>, message: impl Into<String>) -> Diagnostic {
        self.diag(Severity::Warning, span, message)
    }

    fn diag(
        &self,
        severity: Severity,
        span: Range<usize>,
        message: impl Into<String>,
    ) -> Diagnostic {
        let (line, col) = self.position(span.start);
        Diagnostic { severity, file: self.name.clone(), line, col, message: message.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions() {
        let s = Source { name: "f.toml".into(), text: "ab\ncdé\nx" };
        assert_eq!(s.position(0), (1, 1));
        assert_eq!(s.position(3), (2, 1));
        assert_eq!(s.position(7), (2, 4));
        assert_eq!(s.position(8), (3, 1));
        assert_eq!(s.position(999), (3, 2));
        // Inside a multi-byte character: never panics.
        assert_eq!(s.position(6), (2, 3));
        assert_eq!(s.error(3..4, "bad").to_string(), "f.toml:2:1: error: bad");
    }
}
