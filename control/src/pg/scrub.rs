//! NULs in records' fields: PostgreSQL's text cannot hold one (a record's JSON text escapes
//! it; the fields read from it do not), so a row is stored with U+FFFD in their place, as
//! ingest and the inventory's recount read it (ARCHITECTURE.md, "The stores").

use crate::record::Row;

/// Whether a text of `r` holds a NUL, which PostgreSQL's text cannot (a record's JSON text
/// escapes it; the fields read from it do not).
pub(super) fn has_nul(r: &Row<'_>) -> bool {
    let nul =
        |v: &Option<std::borrow::Cow<'_, str>>| v.as_deref().is_some_and(|v| v.contains('\0'));
    [
        &r.identity,
        &r.user,
        &r.src,
        &r.sni,
        &r.category,
        &r.verdict,
        &r.rule,
        &r.model,
        &r.quota,
        &r.app_name,
        &r.operation,
        &r.virtual_key,
    ]
    .into_iter()
    .any(nul)
        || r.findings.iter().any(|(d, _)| d.contains('\0'))
        || r.app.as_deref().is_some_and(|a| {
            a.app.contains('\0')
                || [
                    &a.version,
                    &a.ja4,
                    &a.chatgpt_account,
                    &a.openai_organization,
                    &a.openai_project,
                    &a.api_key_fp,
                ]
                .into_iter()
                .any(nul)
                || a.chatgpt_listed.iter().any(|l| l.contains('\0'))
        })
        || r.recording.as_deref().is_some_and(|s| {
            s.id.contains('\0')
                || [&s.method, &s.path, &s.conversation, &s.previous_response, &s.response]
                    .into_iter()
                    .any(nul)
        })
}

/// `r` with every NUL in its fields replaced by U+FFFD (the record's text keeps its escape).
pub(super) fn scrub<'a>(r: &Row<'a>) -> Row<'a> {
    fn fix(v: &mut Option<std::borrow::Cow<'_, str>>) {
        if let Some(s) = v.as_mut().filter(|s| s.contains('\0')) {
            *s = s.replace('\0', "\u{fffd}").into();
        }
    }
    let mut r = r.clone();
    for v in [
        &mut r.identity,
        &mut r.user,
        &mut r.src,
        &mut r.sni,
        &mut r.category,
        &mut r.verdict,
        &mut r.rule,
        &mut r.model,
        &mut r.quota,
        &mut r.app_name,
        &mut r.operation,
        &mut r.virtual_key,
    ] {
        fix(v);
    }
    for (d, _) in &mut r.findings {
        if d.contains('\0') {
            *d = d.replace('\0', "\u{fffd}").into();
        }
    }
    if let Some(a) = r.app.as_deref_mut() {
        let mut app = Some(std::mem::take(&mut a.app));
        fix(&mut app);
        a.app = app.unwrap_or_default();
        for v in [
            &mut a.version,
            &mut a.ja4,
            &mut a.chatgpt_account,
            &mut a.openai_organization,
            &mut a.openai_project,
            &mut a.api_key_fp,
        ] {
            fix(v);
        }
        for l in &mut a.chatgpt_listed {
            if l.contains('\0') {
                *l = l.replace('\0', "\u{fffd}").into();
            }
        }
    }
    if let Some(s) = r.recording.as_deref_mut() {
        let mut id = Some(std::mem::take(&mut s.id));
        fix(&mut id);
        s.id = id.unwrap_or_default();
        for v in [
            &mut s.method,
            &mut s.path,
            &mut s.conversation,
            &mut s.previous_response,
            &mut s.response,
        ] {
            fix(v);
        }
    }
    r
}
