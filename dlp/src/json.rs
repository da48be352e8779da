//! Extraction and redaction over request bodies. A JSON body is walked whole: every string
//! value is scanned (a superset of ARCHITECTURE.md's "Where prompt text lives": messages, tool
//! arguments, instructions, inputs, ChatGPT conversation parts, and anything else), with its
//! JSON path; base64 file data (`file_data`, `data:…;base64,` URLs) is decoded and scanned as
//! text when it is text. Other UTF-8 bodies are scanned as text. Redaction replaces each span
//! with `[REDACTED:<detector>]` inside its string and re-serialises the body.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

use super::{DetectorSet, Finding, Match, Scanner, match_hash};

/// Most decoded bytes of one base64 value scanned.
const MAX_DECODED: usize = 16 * 1024 * 1024;

/// What inspecting one body found.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// Findings (never the matched text).
    pub findings: Vec<Finding>,
    /// The redacted body, when redaction was asked and something was found.
    pub redacted: Option<Vec<u8>>,
    /// Bytes of text scanned.
    pub scanned: usize,
    /// Parts that could not be scanned (binary data), by path.
    pub unscanned: Vec<String>,
}

impl Outcome {
    /// Findings per detector, sorted by name.
    pub fn counts(&self) -> Vec<(&'static str, usize)> {
        let mut v: Vec<(&'static str, usize)> = Vec::new();
        for f in &self.findings {
            match v.iter_mut().find(|(d, _)| *d == f.detector) {
                Some((_, n)) => *n += 1,
                None => v.push((f.detector, 1)),
            }
        }
        v.sort_unstable();
        v
    }
}

/// The body to inspect and how.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `Content-Type`, if any.
    pub content_type: Option<&'a [u8]>,
    /// The body (already de-chunked and decoded).
    pub body: &'a [u8],
    /// Replace findings in a copy of the body.
    pub redact: bool,
    /// Salt of the finding hashes.
    pub salt: &'a [u8],
}

struct Ctx<'a> {
    scanner: &'a Scanner,
    set: &'a DetectorSet,
    redact: bool,
    salt: &'a [u8],
    out: Outcome,
    matches: Vec<Match>,
}

/// Inspects a request body.
pub fn inspect(scanner: &Scanner, set: &DetectorSet, req: Request<'_>) -> Outcome {
    let mut ctx = Ctx {
        scanner,
        set,
        redact: req.redact,
        salt: req.salt,
        out: Outcome::default(),
        matches: Vec::new(),
    };
    if let Some(b) = req.content_type.and_then(super::body::boundary) {
        match super::body::split_multipart(req.body, &b) {
            Some(parts) => multipart(&parts, &b, &mut ctx),
            None => ctx.out.unscanned.push("$ (malformed multipart body)".into()),
        }
        return ctx.out;
    }
    let json_type =
        req.content_type.is_some_and(|c| c.windows(4).any(|w| w.eq_ignore_ascii_case(b"json")));
    let looks_json =
        req.body.iter().find(|b| !b.is_ascii_whitespace()).is_some_and(|&b| b == b'{' || b == b'[');
    if (json_type || looks_json)
        && let Ok(redacted) = json_document(req.body, "$", &mut ctx)
    {
        ctx.out.redacted = redacted;
        return ctx.out;
    }
    match std::str::from_utf8(req.body) {
        Ok(text) => {
            if let Some(new) = scan_string(text, "$", &mut ctx) {
                ctx.out.redacted = Some(new.into_bytes());
            }
        }
        Err(_) if !req.body.is_empty() => ctx.out.unscanned.push("$ (binary body)".into()),
        Err(_) => {}
    }
    ctx.out
}

/// Text-like parts are scanned (JSON parts walked); binary ones are named as unscanned. With
/// redaction, the body is rebuilt with the redacted parts.
fn multipart(parts: &[super::body::Part<'_>], boundary: &str, ctx: &mut Ctx<'_>) {
    let mut rebuilt: Vec<u8> = Vec::new();
    let mut any_change = false;
    for p in parts {
        let label = match &p.filename {
            Some(f) => format!("$.{}({f})", p.name),
            None => format!("$.{}", p.name),
        };
        let texty = p.content_type.as_deref().is_none_or(|c| {
            c.starts_with("text/")
                || ["json", "xml", "csv", "yaml", "javascript"].iter().any(|t| c.contains(t))
        });
        let mut data = std::borrow::Cow::Borrowed(p.data);
        match std::str::from_utf8(p.data) {
            Ok(text) if texty => {
                let as_json = p.content_type.as_deref().is_some_and(|c| c.contains("json"));
                let walked = match as_json {
                    true => json_document(p.data, &label, ctx).ok(),
                    false => None,
                };
                let new = match walked {
                    Some(redacted) => redacted,
                    None => scan_string(text, &label, ctx).map(String::into_bytes),
                };
                if let Some(new) = new {
                    data = std::borrow::Cow::Owned(new);
                    any_change = true;
                }
            }
            _ => ctx.out.unscanned.push(format!("{label} (binary part)")),
        }
        for piece in [&b"--"[..], boundary.as_bytes(), b"\r\n", p.head, b"\r\n\r\n", &data, b"\r\n"]
        {
            rebuilt.extend_from_slice(piece);
        }
    }
    for piece in [&b"--"[..], boundary.as_bytes(), b"--\r\n"] {
        rebuilt.extend_from_slice(piece);
    }
    if any_change {
        ctx.out.redacted = Some(rebuilt);
    }
}

/// Inspects a JSON document: every string is scanned as [`walk::strings`](super::walk::strings)
/// reads it, without building the document (strings without escapes are scanned in place). `Err` when `bytes`
/// is not one JSON document; nothing it found is kept then. With redaction on and something
/// found, the document is parsed a second time, each string with a finding replaced, and
/// re-serialised: `Ok(Some(body))`.
///
/// Every value is scanned, duplicate keys included. The rebuilt body keeps the last of
/// duplicate keys (as serde_json's map does, and most servers' parsers), so a finding in an
/// earlier duplicate is dropped with it rather than forwarded.
fn json_document(bytes: &[u8], root: &str, ctx: &mut Ctx<'_>) -> Result<Option<Vec<u8>>, ()> {
    let before = (ctx.out.findings.len(), ctx.out.scanned, ctx.out.unscanned.len());
    let redact = std::mem::replace(&mut ctx.redact, false);
    let read = super::walk::strings(bytes, root, &mut |path, text, file_data| {
        string_value(text, path, file_data, ctx);
    });
    ctx.redact = redact;
    let redacted = match read {
        Err(_) => None,
        Ok(()) if !redact || ctx.out.findings.len() == before.0 => return Ok(None),
        // serde_json refuses the rare document the reader accepts (a number beyond f64):
        // then the body is treated as text, like any other body that is not JSON.
        Ok(()) => rebuild(bytes, root, ctx),
    };
    if redacted.is_none() {
        ctx.out.findings.truncate(before.0);
        ctx.out.scanned = before.1;
        ctx.out.unscanned.truncate(before.2);
        return Err(());
    }
    Ok(redacted)
}

/// The redacted document: parsed, each string with a finding replaced, re-serialised. The
/// findings were recorded by the reading pass; this one only rewrites.
fn rebuild(bytes: &[u8], root: &str, ctx: &mut Ctx<'_>) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(bytes).ok()?;
    let kept = std::mem::take(&mut ctx.out);
    walk(&mut v, &mut root.to_owned(), false, ctx);
    ctx.out = kept;
    serde_json::to_vec(&v).ok()
}

/// The redaction pass over a parsed document: each string with a finding is replaced by its
/// redacted form.
fn walk(v: &mut Value, path: &mut String, file_data: bool, ctx: &mut Ctx<'_>) {
    match v {
        Value::String(s) => {
            if let Some(new) = string_value(s, path, file_data, ctx) {
                *s = new;
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push('[');
                path.push_str(&i.to_string());
                path.push(']');
                walk(item, path, false, ctx);
                path.truncate(len);
            }
        }
        Value::Object(map) => {
            for (k, item) in map.iter_mut() {
                let len = path.len();
                path.push('.');
                path.push_str(k);
                walk(item, path, k == "file_data", ctx);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// A string value: base64 file data is decoded and scanned; other strings scanned as they are.
fn string_value(s: &str, path: &str, file_data: bool, ctx: &mut Ctx<'_>) -> Option<String> {
    let (prefix, b64) = match s.strip_prefix("data:").and_then(|r| r.split_once(";base64,")) {
        Some((mime, data)) => (Some(format!("data:{mime};base64,")), data),
        None if file_data => (None, s),
        None => return scan_string(s, path, ctx),
    };
    let Ok(decoded) = STANDARD.decode(b64.trim()) else {
        return scan_string(s, path, ctx);
    };
    if decoded.len() > MAX_DECODED {
        ctx.out.unscanned.push(format!("{path} (decoded file over the limit)"));
        return None;
    }
    let Ok(text) = String::from_utf8(decoded) else {
        ctx.out.unscanned.push(format!("{path} (binary file)"));
        return None;
    };
    let inner = format!("{path}(base64)");
    let new = scan_string(&text, &inner, ctx)?;
    let enc = STANDARD.encode(new.as_bytes());
    Some(match prefix {
        Some(p) => p + &enc,
        None => enc,
    })
}

/// Scans one text; returns its redacted form when redaction is on and something was found.
fn scan_string(text: &str, path: &str, ctx: &mut Ctx<'_>) -> Option<String> {
    ctx.out.scanned += text.len();
    ctx.matches.clear();
    ctx.scanner.scan(text, ctx.set, &mut ctx.matches);
    if ctx.matches.is_empty() {
        return None;
    }
    for m in &ctx.matches {
        ctx.out.findings.push(Finding {
            detector: m.detector,
            path: path.to_owned(),
            start: m.start,
            end: m.end,
            hash: match_hash(ctx.salt, &text.as_bytes()[m.start..m.end]),
        });
    }
    if !ctx.redact {
        return None;
    }
    Some(redact(text, &ctx.matches))
}

/// `text` with each (sorted, disjoint) span replaced by `[REDACTED:<detector>]`.
pub fn redact(text: &str, matches: &[Match]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for m in matches {
        if m.start < at
            || m.end > text.len()
            || !text.is_char_boundary(m.start)
            || !text.is_char_boundary(m.end)
        {
            continue;
        }
        out.push_str(&text[at..m.start]);
        out.push_str("[REDACTED:");
        out.push_str(m.detector);
        out.push(']');
        at = m.end;
    }
    out.push_str(&text[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(body: &str, names: &[&str], redact: bool) -> Outcome {
        let scanner = Scanner::new().unwrap();
        let set = DetectorSet::from_names(names).unwrap();
        inspect(
            &scanner,
            &set,
            Request {
                content_type: Some(b"application/json"),
                body: body.as_bytes(),
                redact,
                salt: b"s",
            },
        )
    }

    #[test]
    fn chat_messages_are_scanned_with_paths_and_redacted() {
        let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"card 4111 1111 1111 1111 please"},{"role":"user","content":[{"type":"text","text":"mail bob@example.com"}]}]}"#;
        let o = run(body, &["credit_card", "email"], true);
        let paths: Vec<_> = o.findings.iter().map(|f| (f.detector, f.path.as_str())).collect();
        assert_eq!(
            paths,
            [("credit_card", "$.messages[0].content"), ("email", "$.messages[1].content[0].text")]
        );
        let red = String::from_utf8(o.redacted.unwrap()).unwrap();
        assert!(red.contains("card [REDACTED:credit_card] please"), "{red}");
        assert!(red.contains("mail [REDACTED:email]"));
        assert!(!red.contains("4111") && !red.contains("bob@"));
        let v: Value = serde_json::from_str(&red).unwrap();
        assert_eq!(v["model"], "gpt-4o");
        // Findings never carry the text.
        assert!(!format!("{:?}", o.findings).contains("4111"));
    }

    #[test]
    fn duplicate_keys_are_all_scanned_and_the_rebuilt_body_keeps_the_last() {
        let body = r#"{"messages":[{"role":"user","content":"card 4111 1111 1111 1111"}],"messages":[{"role":"user","content":"hi"}]}"#;
        let o = run(body, &["credit_card"], false);
        assert_eq!(o.counts(), [("credit_card", 1)]);
        assert_eq!(o.findings[0].path, "$.messages[0].content");
        let o = run(body, &["credit_card"], true);
        assert_eq!(o.counts(), [("credit_card", 1)], "findings are not counted twice");
        let red = String::from_utf8(o.redacted.unwrap()).unwrap();
        assert!(!red.contains("4111"), "{red}");
        assert_eq!(red, r#"{"messages":[{"role":"user","content":"hi"}]}"#);
    }

    #[test]
    fn broken_json_is_scanned_as_text_once() {
        let body = r#"{"a":"card 4111 1111 1111 1111","b":"x@example.com", oops"#;
        let o = run(body, &["credit_card", "email"], true);
        let found: Vec<_> = o.findings.iter().map(|f| (f.detector, f.path.as_str())).collect();
        assert_eq!(found, [("credit_card", "$"), ("email", "$")]);
        assert_eq!(o.scanned, body.len());
        let red = String::from_utf8(o.redacted.unwrap()).unwrap();
        assert!(red.contains("[REDACTED:credit_card]") && !red.contains("4111"), "{red}");
    }

    #[test]
    fn escaped_strings_keys_and_deep_paths() {
        let body = r#"{"a\"b":[1,true,null,2.5,{"k":["x","mail bob@example.com"]}],"file_data":"a2V5IEFLSUFJT1NGT0ROTjdFWEFNUExF"}"#;
        let o = run(body, &["email", "aws_access_key_id"], false);
        let found: Vec<_> =
            o.findings.iter().map(|f| (f.detector, f.path.as_str(), f.start)).collect();
        assert_eq!(
            found,
            [("email", "$.a\"b[4].k[1]", 5), ("aws_access_key_id", "$.file_data(base64)", 4),]
        );
        let too_deep = "[".repeat(10_000);
        let o = run(&too_deep, &["email"], false);
        assert!(o.findings.is_empty() && o.scanned == too_deep.len(), "scanned as text");
    }

    #[test]
    fn base64_file_data_is_decoded() {
        let secret = "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\nkey AKIAIOSFODNN7EXAMPLE";
        let b64 = STANDARD.encode(secret);
        let body = format!(
            r#"{{"input":[{{"type":"input_file","file_data":"data:text/plain;base64,{b64}"}}]}}"#
        );
        let o = run(&body, &["aws_access_key_id", "aws_secret_access_key"], false);
        let names: Vec<_> = o.findings.iter().map(|f| f.detector).collect();
        assert_eq!(names, ["aws_secret_access_key", "aws_access_key_id"]);
        assert_eq!(o.findings[0].path, "$.input[0].file_data(base64)");
        let bin = STANDARD.encode([0u8, 159, 146, 150]);
        let o = run(&format!(r#"{{"file_data":"{bin}"}}"#), &["email"], false);
        assert_eq!(o.unscanned, ["$.file_data (binary file)"]);
    }

    #[test]
    fn multipart_uploads() {
        let scanner = Scanner::new().unwrap();
        let set = DetectorSet::all();
        let body: &[u8] = b"--B\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"k.txt\"\r\nContent-Type: text/plain\r\n\r\nkey AKIAIOSFODNN7EXAMPLE\r\n--B\r\nContent-Disposition: form-data; name=\"img\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n\x89PNG\xff\r\n--B--\r\n";
        let o = inspect(
            &scanner,
            &set,
            Request {
                content_type: Some(b"multipart/form-data; boundary=B"),
                body,
                redact: true,
                salt: b"",
            },
        );
        assert_eq!(o.counts(), [("aws_access_key_id", 1)]);
        assert_eq!(o.findings[0].path, "$.file(k.txt)");
        assert_eq!(o.unscanned, ["$.img(a.png) (binary part)"]);
        let red = o.redacted.unwrap();
        let parts = crate::body::split_multipart(&red, "B").unwrap();
        assert_eq!(parts[1].data, b"key [REDACTED:aws_access_key_id]");
        assert_eq!(parts[2].data, b"\x89PNG\xff");
    }

    #[test]
    fn text_bodies_and_counts() {
        let scanner = Scanner::new().unwrap();
        let set = DetectorSet::all();
        let o = inspect(
            &scanner,
            &set,
            Request {
                content_type: Some(b"text/plain"),
                body: b"ssn 123-45-6789 and 123-45-6780",
                redact: true,
                salt: b"",
            },
        );
        assert_eq!(o.counts(), [("us_ssn", 2)]);
        assert_eq!(o.redacted.unwrap(), b"ssn [REDACTED:us_ssn] and [REDACTED:us_ssn]");
    }
}
