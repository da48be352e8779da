//! JSON bodies: every string value, every unusual object key and every long number is
//! scanned (a superset of ARCHITECTURE.md's "Where prompt text lives": messages, tool
//! arguments, instructions, inputs, ChatGPT conversation parts, and anything else), with its
//! JSON path; base64 file data (`file_data`, `data:…;base64,` URLs) is decoded and scanned as
//! text when it is text. Redaction replaces each span with `[REDACTED:<detector>]` inside its
//! string (a number with a finding becomes that string; a key, `[REDACTED:…]` too) and
//! re-serialises the body.
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

use crate::Match;
use crate::extract::MAX_DECODED;
use crate::text::{Ctx, Role, scan_as, scan_string};
use crate::walk::Kind;

/// Whether a body is read as JSON: declared so, or starting like a document.
pub(crate) fn looks_json(content_type: Option<&[u8]>, text: &str) -> bool {
    content_type.is_some_and(|c| c.windows(4).any(|w| w.eq_ignore_ascii_case(b"json")))
        || text.trim_start().starts_with(['{', '['])
}

/// `text` with JSON string escapes decoded wherever they are (`\u0034` → `4`, `\n` → line
/// break; lone surrogates and unknown escapes are kept as written): for text that is not a
/// JSON document a lenient reader would still decode.
pub(crate) fn unescape_loose(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let mut chars = after.chars();
        let (decoded, used) = match chars.next() {
            Some('n') => (Some('\n'), 1),
            Some('t') => (Some('\t'), 1),
            Some('r') => (Some('\r'), 1),
            Some('"') => (Some('"'), 1),
            Some('/') => (Some('/'), 1),
            Some('\\') => (Some('\\'), 1),
            Some('u') => {
                let hex = after.get(1..5).and_then(|h| u32::from_str_radix(h, 16).ok());
                (hex.and_then(char::from_u32), 5)
            }
            _ => (None, 0),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &after[used..];
            }
            None => {
                out.push('\\');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Whether an object key is scanned: short keys written like identifiers (`role`,
/// `file_data`, `content`) cannot hold what the detectors find, and most keys are such; any
/// other key is (a long run of letters can be a token: Hugging Face's are letters only).
fn unusual_key(k: &str) -> bool {
    k.len() > 16 || !k.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_')
}

/// Whether a number is scanned: only one long enough to be a card, an SSN or a phone.
fn long_number(n: &str) -> bool {
    n.len() >= 9
}

/// Inspects a JSON document: every text is scanned as [`walk::strings`](super::walk::strings)
/// reads it, without building the document (strings without escapes are scanned in place).
/// `Err` when `bytes` is not one JSON document; nothing it found is kept then. With
/// redaction on and something found, the document is parsed a second time, each text with a
/// finding replaced, and re-serialised: `Ok(Some(body))`.
///
/// Every value is scanned, duplicate keys included. The rebuilt body keeps the last of
/// duplicate keys (as serde_json's map does, and most servers' parsers), so a finding in an
/// earlier duplicate is dropped with it rather than forwarded.
pub(crate) fn document(text: &str, root: &str, ctx: &mut Ctx<'_>) -> Result<Option<Vec<u8>>, ()> {
    let before = (ctx.out.findings.len(), ctx.out.scanned, ctx.out.unscanned.len());
    let redact = std::mem::replace(&mut ctx.redact, false);
    let read =
        super::walk::text_strings(text, root, &mut |path, t, kind| visit(path, t, kind, ctx));
    ctx.redact = redact;
    let redacted = match read {
        Err(_) => None,
        Ok(()) if !redact || ctx.out.findings.len() == before.0 => return Ok(None),
        // serde_json refuses the rare document the reader accepts (a number beyond f64):
        // then the body is treated as text, like any other body that is not JSON.
        Ok(()) => rebuild(text.as_bytes(), root, ctx),
    };
    if redacted.is_none() {
        ctx.out.findings.truncate(before.0);
        ctx.out.scanned = before.1;
        ctx.out.unscanned.truncate(before.2);
        return Err(());
    }
    Ok(redacted)
}

/// One text of the reading pass. For a key with a finding, the name its value's path shows.
fn visit(path: &str, text: &str, kind: Kind, ctx: &mut Ctx<'_>) -> Option<String> {
    match kind {
        Kind::Value => {
            string_value(text, path, false, ctx);
            None
        }
        Kind::FileData => {
            string_value(text, path, true, ctx);
            None
        }
        Kind::Number if long_number(text) => {
            scan_string(text, path, Role::Alone, ctx);
            None
        }
        Kind::Number => None,
        Kind::Key if unusual_key(text) => key(text, path, ctx),
        Kind::Key => None,
    }
}

/// A key scanned under `path(key)`; with a finding, `[REDACTED:<detector>]` (its redacted
/// form) stands for it in paths, so records never carry it.
fn key(text: &str, path: &str, ctx: &mut Ctx<'_>) -> Option<String> {
    let (shown, found) = scan_as(text, &format!("{path}(key)"), Role::Alone, true, ctx);
    found.then(|| shown.unwrap_or_else(|| "[REDACTED]".into()))
}

/// The redacted document: parsed, each text with a finding replaced, re-serialised. The
/// findings were recorded by the reading pass; this one only rewrites.
fn rebuild(bytes: &[u8], root: &str, ctx: &mut Ctx<'_>) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(bytes).ok()?;
    let kept = std::mem::take(&mut ctx.out);
    walk(&mut v, &mut root.to_owned(), false, ctx);
    ctx.out = kept;
    serde_json::to_vec(&v).ok()
}

/// The redaction pass over a parsed document: each text with a finding is replaced by its
/// redacted form.
fn walk(v: &mut Value, path: &mut String, file_data: bool, ctx: &mut Ctx<'_>) {
    match v {
        Value::String(s) => {
            if let Some(new) = string_value(s, path, file_data, ctx) {
                *s = new;
            }
        }
        Value::Number(n) => {
            let text = n.to_string();
            if long_number(&text)
                && let Some(new) = scan_string(&text, path, Role::Alone, ctx)
            {
                *v = Value::String(new);
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
            let mut entries: Vec<(String, Value)> = Vec::with_capacity(map.len());
            for (k, mut item) in std::mem::take(map) {
                let shown = if unusual_key(&k) { key(&k, path, ctx) } else { None };
                let len = path.len();
                path.push('.');
                path.push_str(shown.as_deref().unwrap_or(&k));
                walk(&mut item, path, crate::walk::is_file_key(&k), ctx);
                path.truncate(len);
                entries.push((shown.unwrap_or(k), item));
            }
            map.extend(entries);
        }
        _ => {}
    }
}

/// Whether a string holds a JSON document itself (tool-call `arguments`, function outputs,
/// structured prompts): read as JSON, so escapes inside it (`\u0034`) are decoded too.
fn embedded_json(s: &str) -> bool {
    let t = s.trim();
    t.len() >= 2
        && ((t.starts_with('{') && t.ends_with('}')) || (t.starts_with('[') && t.ends_with(']')))
}

/// Whether the value at `path` is under a key that often carries base64 media.
fn media_key(path: &str) -> bool {
    path.rsplit('.').next().is_some_and(crate::walk::is_media_key)
}

/// Whether `s` is base64 of a format [`crate::body::sniff_binary`] knows (audio, an image, a
/// document): a `data` value that is a file. Other values under such keys are text.
fn decodes_to_media(s: &str) -> bool {
    let n = s.len().min(64) / 4 * 4;
    s.get(..n)
        .and_then(crate::text::lenient_base64)
        .is_some_and(|b| crate::body::sniff_binary(&b).is_some())
}

/// Nesting of JSON documents inside strings that is still read as JSON.
const MAX_JSON_NESTING: u8 = 4;

/// A JSON document inside a string, walked under `path(json)`; scanned as text when it is
/// not one (or nested too deeply). Its redacted form is the re-serialised document.
fn nested_document(s: &str, path: &str, ctx: &mut Ctx<'_>) -> Option<String> {
    if ctx.json_depth >= MAX_JSON_NESTING {
        return scan_string(s, path, Role::Content, ctx);
    }
    ctx.json_depth += 1;
    let read = document(s, &format!("{path}(json)"), ctx);
    ctx.json_depth -= 1;
    match read {
        Ok(redacted) => redacted.and_then(|r| String::from_utf8(r).ok()),
        Err(()) => scan_string(s, path, Role::Content, ctx),
    }
}

/// A string value: base64 file data is decoded and inspected as a body of its own (its
/// compression, charset and format recognised); other strings scanned as they are.
fn string_value(s: &str, path: &str, file_data: bool, ctx: &mut Ctx<'_>) -> Option<String> {
    let (prefix, b64) = match s.strip_prefix("data:").and_then(|r| r.split_once(";base64,")) {
        Some((mime, data)) => (Some(format!("data:{mime};base64,")), data),
        None if file_data => (None, s),
        None if embedded_json(s) => return nested_document(s, path, ctx),
        None if s.len() >= 12 && media_key(path) && decodes_to_media(s) => (None, s),
        None => return scan_string(s, path, Role::Content, ctx),
    };
    // Decoded as leniently as servers do (Python's b64decode): line breaks, missing padding,
    // non-zero trailing bits.
    let Some(decoded) = crate::text::lenient_base64(b64) else {
        let looks_base64 = b64.len() >= 64
            && b64
                .bytes()
                .filter(|b| b.is_ascii_alphanumeric() || b"+/=-_\r\n".contains(b))
                .count()
                * 10
                >= b64.len() * 9;
        if prefix.is_some() || looks_base64 {
            // Claimed or shaped as file content, and not base64: read as text, and say so.
            ctx.out.skip(path, "file data that is not valid base64", None, s.len());
        }
        return scan_string(s, path, Role::Content, ctx);
    };
    if decoded.len() > MAX_DECODED.min(ctx.budget) {
        ctx.out.skip(path, "decoded file over the limit", None, decoded.len());
        return None;
    }
    ctx.budget = ctx.budget.saturating_sub(decoded.len());
    let inner = format!("{path}(base64)");
    let mime = prefix
        .as_deref()
        .and_then(|p| p.strip_prefix("data:"))
        .map(|p| p.trim_end_matches(";base64,"));
    let depth = ctx.depth;
    let new = crate::extract::content(mime.map(str::as_bytes), &decoded, &inner, ctx, depth + 1)?;
    let enc = STANDARD.encode(new);
    Some(match prefix {
        Some(p) => p + &enc,
        None => enc,
    })
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
    use crate::extract::{Outcome, Request, inspect};
    use crate::{DetectorSet, Scanner};

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
        assert_eq!(o.unscanned_text(), ["$.file_data(base64) (binary data)"]);
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
        assert_eq!(o.unscanned_text(), ["$.img(a.png) (binary data)"]);
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
