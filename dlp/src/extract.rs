//! Extraction: a request body read for what it carries, whatever it claims to be. Compression
//! is recognised by its magic bytes (a gzip body without a Content-Encoding header is still
//! gzip), multipart parts by their content rather than their declared type (an
//! `application/octet-stream` part holding text is text; base64 and quoted-printable transfer
//! encodings are undone), form fields percent-decoded, every charset read
//! ([`crate::charset`]), JSON walked ([`crate::json`]) and anything else scanned as text.
//! What still cannot be read is named in [`Outcome::unscanned`] with the reason, never passed
//! over as clean. Redaction rebuilds each layer as it came (re-compressed, re-encoded). Pure.
//! ARCHITECTURE.md, "What DLP reads", describes the whole path.

use crate::body::Binary;
use crate::charset;
use crate::text::{Ctx, Role, scan_as, scan_string};
use crate::{DetectorSet, Finding, Scanner, body, form, json};

/// Most bytes one decoded layer (a compressed part, a base64 file) may expand to.
pub const MAX_DECODED: usize = 16 * 1024 * 1024;
/// Most bytes all the decoded layers of one request may expand to together (a thousand
/// small bombs in one body are one bomb).
pub const MAX_DECODED_TOTAL: usize = 64 * 1024 * 1024;
/// Layers (compression, parts, transfer encodings) inside each other that are still opened.
const MAX_NESTING: u8 = 6;

/// What inspecting one body found.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// Findings (never the matched text).
    pub findings: Vec<Finding>,
    /// The redacted body, when redaction was asked and something was found.
    pub redacted: Option<Vec<u8>>,
    /// Bytes of text scanned.
    pub scanned: usize,
    /// What could not be scanned.
    pub unscanned: Vec<Unscanned>,
    /// How content was read where it was not plain UTF-8 (`$ (gzip)`, `$.file (UTF-16LE)`).
    pub decoded: Vec<String>,
    /// Findings that redaction cannot replace where they are (a number split across two
    /// texts, text that cannot be written back in its charset), each as `path (reason)`.
    pub unredactable: Vec<String>,
    /// A finding spans two texts (see [`Outcome::unredactable`]).
    pub split: bool,
}

/// Content that was not scanned, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unscanned {
    /// Where it is (`$.file(a.png)`).
    pub path: String,
    /// Why (`PNG image`, `corrupt gzip body`).
    pub reason: String,
    /// A binary format the rule may let through (audio, files), or `None`: content that
    /// should have been readable and was not (`on_unscanned`).
    pub binary: Option<Binary>,
    /// Its size in bytes.
    pub bytes: usize,
}

impl std::fmt::Display for Unscanned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.path, self.reason)
    }
}

impl Outcome {
    /// What was not scanned, as records write it: `path (reason)`.
    pub fn unscanned_text(&self) -> Vec<String> {
        self.unscanned.iter().map(ToString::to_string).collect()
    }

    /// Notes that content at `path` was not scanned.
    pub(crate) fn skip(
        &mut self,
        path: &str,
        reason: impl Into<String>,
        binary: Option<Binary>,
        bytes: usize,
    ) {
        self.unscanned.push(Unscanned {
            path: path.to_owned(),
            reason: reason.into(),
            binary,
            bytes,
        });
    }

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
    /// The body (already de-chunked and decoded per its Content-Encoding).
    pub body: &'a [u8],
    /// Replace findings in a copy of the body.
    pub redact: bool,
    /// Salt of the finding hashes.
    pub salt: &'a [u8],
}

/// Inspects a request body.
pub fn inspect(scanner: &Scanner, set: &DetectorSet, req: Request<'_>) -> Outcome {
    let mut ctx = Ctx::new(scanner, set, req.redact, req.salt);
    let redacted = content(req.content_type, req.body, "$", &mut ctx, 0);
    if ctx.out.split {
        ctx.out.unredactable.push("a number split across texts".into());
    }
    ctx.out.redacted = redacted;
    ctx.out
}

/// Inspects texts outside the body (the query's fields, the path, free-text headers), each
/// under its own path; nothing is redacted.
pub fn inspect_fields<'t>(
    scanner: &Scanner,
    set: &DetectorSet,
    salt: &[u8],
    fields: impl IntoIterator<Item = (&'t str, &'t str)>,
) -> Outcome {
    let mut ctx = Ctx::new(scanner, set, false, salt);
    for (path, text) in fields {
        scan_string(text, path, Role::Alone, &mut ctx);
    }
    ctx.out
}

/// Token-id input of an API path ([`crate::token_ids`]): the text it encodes scanned under
/// `path(tokens)`, or, when it cannot be decoded, named unscanned. `None` when the path
/// takes no token ids or the body has none.
pub fn inspect_token_ids(
    scanner: &Scanner,
    set: &DetectorSet,
    salt: &[u8],
    path: &str,
    body: &[u8],
) -> Option<Outcome> {
    let field = crate::token_ids::field_for(path)?;
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let decoded = crate::token_ids::decode(&v, field)?;
    let mut ctx = Ctx::new(scanner, set, false, salt);
    match decoded {
        Ok(texts) => {
            for (p, text) in texts {
                scan_string(&text, &format!("{p}(tokens)"), Role::Content, &mut ctx);
            }
            if !ctx.out.findings.is_empty() {
                ctx.out.unredactable.push(format!("$.{field} (token ids)"));
            }
        }
        Err(e) => ctx.out.skip(&format!("$.{field}"), e.to_string(), None, body.len()),
    }
    Some(ctx.out)
}

/// One body, part or decoded layer under `label`. `Some(bytes)`: its redacted form.
pub(crate) fn content(
    ct: Option<&[u8]>,
    bytes: &[u8],
    label: &str,
    ctx: &mut Ctx<'_>,
    depth: u8,
) -> Option<Vec<u8>> {
    if bytes.is_empty() {
        return None;
    }
    if depth > MAX_NESTING {
        ctx.out.skip(label, "layers nested too deeply", None, bytes.len());
        return None;
    }
    let outer = std::mem::replace(&mut ctx.depth, depth);
    let new = layer(ct, bytes, label, ctx, depth);
    ctx.depth = outer;
    new
}

/// [`content`] at its depth.
fn layer(
    ct: Option<&[u8]>,
    bytes: &[u8],
    label: &str,
    ctx: &mut Ctx<'_>,
    depth: u8,
) -> Option<Vec<u8>> {
    if let Some(enc) = body::sniff_compression(bytes) {
        let limit = MAX_DECODED.min(ctx.budget);
        return match body::decode(enc.as_bytes(), bytes, limit) {
            Ok(plain) => {
                ctx.budget = ctx.budget.saturating_sub(plain.len());
                ctx.out.decoded.push(format!("{label} ({enc})"));
                let new = content(ct, &plain, label, ctx, depth + 1)?;
                body::encode(enc, &new)
            }
            Err(_) if enc == "deflate" => content_text(ct, bytes, label, ctx, depth),
            Err(e) => {
                ctx.out.skip(label, e.to_string(), None, bytes.len());
                None
            }
        };
    }
    content_text(ct, bytes, label, ctx, depth)
}

/// [`content`] past the compression layer.
fn content_text(
    ct: Option<&[u8]>,
    bytes: &[u8],
    label: &str,
    ctx: &mut Ctx<'_>,
    depth: u8,
) -> Option<Vec<u8>> {
    // Magic bytes name a binary format only when the bytes are not text: `GIF89a` or `ID3`
    // at the start of a prompt does not make it an image or a song.
    let sniffed = body::sniff_binary(bytes).filter(|_| looks_binary(bytes));
    if let Some((name, kind)) = sniffed {
        match kind {
            Binary::Document => match crate::docs::extract(bytes, MAX_DECODED.min(ctx.budget)) {
                Err(e) => ctx.out.skip(label, format!("{name}: {e}"), None, bytes.len()),
                Ok(doc) => {
                    ctx.budget = ctx.budget.saturating_sub(doc.text.len());
                    for (i, kind) in &doc.skipped {
                        let what = match kind {
                            Some(_) => "an image or media file inside the document",
                            None => "an embedded object the document holds",
                        };
                        ctx.out.skip(&format!("{label}[entry {i}]"), what, *kind, 0);
                    }
                    let text = doc.text;
                    ctx.out.decoded.push(format!("{label} ({name}: text extracted)"));
                    // Nothing is redacted inside a document: a finding there is refused.
                    if scan_as(&text, label, Role::Content, false, ctx).1 {
                        ctx.out.unredactable.push(format!("{label} (inside a {name})"));
                    }
                }
            },
            Binary::Opaque => ctx.out.skip(label, name, None, bytes.len()),
            other => ctx.out.skip(label, name, Some(other), bytes.len()),
        }
        return None;
    }
    if let Some(b) = ct.and_then(body::boundary) {
        return multipart(bytes, &b, label, ctx, depth);
    }
    if ct.is_some_and(form::is_form) {
        return form::inspect(bytes, label, ctx);
    }
    let (text, charset) = charset::decode(ct, bytes);
    if charset::is_binary(&text) {
        ctx.out.skip(label, "binary data", None, bytes.len());
        return None;
    }
    if let Some(l) = charset.label() {
        ctx.out.decoded.push(format!("{label} ({l})"));
    }
    if ct.is_none_or(|c| !c.windows(4).any(|w| w.eq_ignore_ascii_case(b"json")))
        && let Some(b) = body::first_boundary(bytes)
        && let Some(new) = multipart_parts(bytes, &b, label, ctx, depth)
    {
        // Multipart without the header that says so.
        return new;
    }
    let is_json = json::looks_json(ct, &text);
    let new = match is_json.then(|| json::document(&text, label, ctx).ok()).flatten() {
        Some(redacted) => redacted.map(String::from_utf8).and_then(Result::ok),
        None => {
            let new = scan_string(&text, label, Role::Content, ctx);
            if is_json {
                // JSON the reader refuses (too deep, NaN) that a lenient server may read:
                // its escapes (`\u0034`) decoded, so they hide nothing.
                unescaped(&text, label, ctx);
            }
            new
        }
    }?;
    match charset.encode(&new) {
        Some(b) => Some(b),
        None => {
            let why = charset.label().unwrap_or("charset");
            ctx.out.unredactable.push(format!("{label} (cannot be written back in {why})"));
            None
        }
    }
}

/// Scans `text` with JSON string escapes decoded, when it has any; findings not already
/// made are added, and cannot be redacted where they are.
fn unescaped(text: &str, label: &str, ctx: &mut Ctx<'_>) {
    if !text.contains('\\') {
        return;
    }
    let plain = json::unescape_loose(text);
    let known: Vec<String> = ctx.out.findings.iter().map(|f| f.hash.clone()).collect();
    let before = ctx.out.findings.len();
    scan_as(&plain, &format!("{label}(unescaped)"), Role::Alone, false, ctx);
    let mut i = before;
    while i < ctx.out.findings.len() {
        if known.contains(&ctx.out.findings[i].hash) {
            ctx.out.findings.remove(i);
        } else {
            i += 1;
        }
    }
    if ctx.out.findings.len() > before {
        ctx.out
            .unredactable
            .push(format!("{label} (behind JSON escapes in a body that is not JSON)"));
    }
}

/// Whether bytes are binary: not text in UTF-8 or a wide encoding (first 16 KiB).
fn looks_binary(bytes: &[u8]) -> bool {
    let head = &bytes[..bytes.len().min(16 * 1024)];
    let (text, _) = charset::decode(None, head);
    charset::is_binary(&text)
}

/// A multipart body with its declared boundary; one whose boundary is wrong is split with
/// the boundary its first line shows, and one that cannot be split at all is scanned as text
/// and named unscanned.
fn multipart(
    bytes: &[u8],
    boundary: &str,
    label: &str,
    ctx: &mut Ctx<'_>,
    depth: u8,
) -> Option<Vec<u8>> {
    if let Some(new) = multipart_parts(bytes, boundary, label, ctx, depth) {
        return new;
    }
    if let Some(b) = body::first_boundary(bytes).filter(|b| b != boundary)
        && let Some(new) = multipart_parts(bytes, &b, label, ctx, depth)
    {
        ctx.out.decoded.push(format!("{label} (boundary differs from the declared one)"));
        return new;
    }
    ctx.out.skip(label, "malformed multipart body", None, bytes.len());
    let (text, _) = charset::decode(None, bytes);
    if !charset::is_binary(&text) {
        scan_string(&text, label, Role::Content, ctx);
    }
    None
}

/// The parts of a multipart body, each inspected as a body of its own. `None` when it does
/// not split with `boundary`; `Some(Some(bytes))` when a part was redacted.
fn multipart_parts(
    bytes: &[u8],
    boundary: &str,
    label: &str,
    ctx: &mut Ctx<'_>,
    depth: u8,
) -> Option<Option<Vec<u8>>> {
    let parts = body::split_multipart(bytes, boundary)?;
    let mut rebuilt: Vec<u8> = Vec::new();
    let mut any_change = false;
    for (i, p) in parts.iter().enumerate() {
        // The part's name and file name reach the server too: scanned, and shown in paths
        // only when nothing was found in them.
        let names = format!("{} {}", p.name, p.filename.as_deref().unwrap_or(""));
        let (_, found) =
            scan_as(&names, &format!("{label}[part {i}](names)"), Role::Alone, false, ctx);
        if found {
            ctx.out.unredactable.push(format!("{label}[part {i}] (its name)"));
        }
        let shown = |n: &str| match n.len() <= 128 && !found {
            true => n.to_owned(),
            false => format!("[part {i}]"),
        };
        let name = shown(&p.name);
        let file = p.filename.as_deref().map(shown);
        let plabel = match (file, label) {
            (Some(f), "$") => format!("$.{name}({f})"),
            (None, "$") => format!("$.{name}"),
            (Some(f), _) => format!("{label}.{name}({f})"),
            (None, _) => format!("{label}.{name}"),
        };
        let mut data = std::borrow::Cow::Borrowed(p.data);
        let transfer = p.transfer_encoding.as_deref();
        let decoded = match transfer {
            Some(t) => match body::transfer_decode(t, p.data) {
                Ok(d) => {
                    ctx.out.decoded.push(format!("{plabel} ({t})"));
                    Some(d)
                }
                Err(e) => {
                    ctx.out.skip(&plabel, e.to_string(), None, p.data.len());
                    None
                }
            },
            None => None,
        };
        if transfer.is_none() || decoded.is_some() {
            let ct = p.content_type.as_deref().map(str::as_bytes);
            let inner = decoded.as_deref().unwrap_or(p.data);
            if let Some(new) = content(ct, inner, &plabel, ctx, depth + 1) {
                data = std::borrow::Cow::Owned(match transfer {
                    Some(t) => body::transfer_encode(t, &new),
                    None => new,
                });
                any_change = true;
            }
        }
        for piece in [&b"--"[..], boundary.as_bytes(), b"\r\n", p.head, b"\r\n\r\n", &data, b"\r\n"]
        {
            rebuilt.extend_from_slice(piece);
        }
    }
    for piece in [&b"--"[..], boundary.as_bytes(), b"--\r\n"] {
        rebuilt.extend_from_slice(piece);
    }
    Some(any_change.then_some(rebuilt))
}
