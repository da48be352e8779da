//! `application/x-www-form-urlencoded` bodies (and query strings): each field percent-decoded
//! and scanned under `$.name`, names too; redaction writes the form back encoded. Pure.

use crate::text::{Ctx, Role, scan_as, scan_string};

/// Whether a Content-Type is a urlencoded form.
pub(crate) fn is_form(content_type: &[u8]) -> bool {
    let ct = content_type.trim_ascii_start();
    ct.len() >= 33 && ct[..33].eq_ignore_ascii_case(b"application/x-www-form-urlencoded")
}

/// The fields of a urlencoded form or query, decoded (invalid UTF-8 replaced).
pub fn fields(bytes: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(bytes).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

/// Scans every field of a form body; `Some(body)` re-encoded when one was redacted.
pub(crate) fn inspect(bytes: &[u8], label: &str, ctx: &mut Ctx<'_>) -> Option<Vec<u8>> {
    let mut changed = false;
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (i, (name, value)) in fields(bytes).into_iter().enumerate() {
        // The name is scanned too, and shown in paths only when nothing was found in it.
        let (key_new, found) =
            scan_as(&name, &format!("{label}[field {i}](name)"), Role::Alone, ctx.redact, ctx);
        let path = match found {
            true => format!("{label}[field {i}]"),
            false => format!("{label}.{name}"),
        };
        let value_new = scan_string(&value, &path, Role::Content, ctx);
        changed |= key_new.is_some() || value_new.is_some();
        out.append_pair(
            key_new.as_deref().unwrap_or(&name),
            value_new.as_deref().unwrap_or(&value),
        );
    }
    changed.then(|| out.finish().into_bytes())
}
