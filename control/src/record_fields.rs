//! The members of a record control reads (ARCHITECTURE.md, "Records"), deserialised straight
//! from the record's text, borrowing where a string has no escapes; the others are skipped.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, IgnoredAny, Visitor};

use super::{AppFields, Chain, RecordKind, RecordingFields, Row, Tokens};

/// The members of a record control reads; the others are skipped unread.
#[derive(Deserialize)]
pub(super) struct Fields<'a> {
    seq: u64,
    #[serde(rename = "type", borrow, default)]
    pub(super) kind: Option<Text<'a>>,
    #[serde(default)]
    ts_ms: Option<u64>,
    #[serde(borrow, default)]
    identity: Option<Text<'a>>,
    #[serde(borrow, default)]
    user: Option<Text<'a>>,
    #[serde(borrow, default)]
    src: Option<Text<'a>>,
    #[serde(borrow, default)]
    sni: Option<Text<'a>>,
    #[serde(borrow, default)]
    category: Option<Text<'a>>,
    #[serde(borrow, default)]
    verdict: Option<Text<'a>>,
    #[serde(borrow, default)]
    rule: Option<Text<'a>>,
    #[serde(borrow, default)]
    dlp_findings: Option<Vec<Finding<'a>>>,
    #[serde(borrow, default)]
    model: Option<Text<'a>>,
    #[serde(borrow, default)]
    quota: Option<Text<'a>>,
    #[serde(borrow, default)]
    operation: Option<Text<'a>>,
    #[serde(borrow, default)]
    virtual_key: Option<Text<'a>>,
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cached_tokens: Option<u64>,
    #[serde(default)]
    pub(super) dataplane: Option<IgnoredAny>,
    // The record chain.
    #[serde(default)]
    pub(super) chain: Option<u64>,
    #[serde(borrow, default)]
    pub(super) prev: Option<Text<'a>>,
    // What the inventory reads.
    #[serde(borrow, default)]
    app: Option<Text<'a>>,
    #[serde(borrow, default)]
    app_version: Option<Text<'a>>,
    #[serde(borrow, default)]
    ja4: Option<Text<'a>>,
    #[serde(borrow, default)]
    event: Option<Text<'a>>,
    #[serde(default)]
    bytes_out: Option<u64>,
    #[serde(default)]
    bytes_in: Option<u64>,
    #[serde(borrow, default)]
    chatgpt_account: Option<Text<'a>>,
    #[serde(borrow, default)]
    openai_organization: Option<Text<'a>>,
    #[serde(borrow, default)]
    openai_project: Option<Text<'a>>,
    #[serde(borrow, default)]
    api_key_fp: Option<Text<'a>>,
    #[serde(borrow, default)]
    chatgpt_accounts_listed: Option<Vec<Text<'a>>>,
    // A recording's members.
    #[serde(borrow, default)]
    id: Option<Text<'a>>,
    #[serde(borrow, default)]
    method: Option<Text<'a>>,
    #[serde(borrow, default)]
    path: Option<Text<'a>>,
    #[serde(default)]
    bytes: Option<u64>,
    #[serde(borrow, default)]
    conversation: Option<Text<'a>>,
    #[serde(borrow, default)]
    previous_response: Option<Text<'a>>,
    #[serde(borrow, default)]
    response: Option<Text<'a>>,
    #[serde(borrow, default)]
    sealed: Option<&'a serde_json::value::RawValue>,
}

#[derive(Deserialize)]
struct Finding<'a> {
    #[serde(borrow)]
    detector: Text<'a>,
    #[serde(default)]
    count: Option<u64>,
}

impl<'a> Fields<'a> {
    pub(super) fn into_row(self, json: String) -> Row<'a> {
        let t = |v: Option<Text<'a>>| v.map(|t| t.0);
        let kind = RecordKind::of(self.kind.as_ref().map(|t| t.0.as_ref()));
        let recording = match (kind, self.id, self.sealed) {
            (RecordKind::Recording, Some(id), Some(sealed)) if sealed.get().starts_with('{') => {
                Some(Box::new(RecordingFields {
                    id: id.0,
                    method: t(self.method),
                    path: t(self.path),
                    bytes: self.bytes.unwrap_or(0),
                    conversation: t(self.conversation),
                    previous_response: t(self.previous_response),
                    response: t(self.response),
                    sealed: Cow::Borrowed(sealed.get()),
                }))
            }
            _ => None,
        };
        let app_name = self.app.as_ref().map(|a| a.0.clone());
        let app = app_fields(
            kind,
            t(self.app),
            t(self.ja4),
            AppExtra {
                version: t(self.app_version),
                ended: self.event.is_some_and(|e| e.0 == "end"),
                bytes: self.bytes_out.unwrap_or(0).saturating_add(self.bytes_in.unwrap_or(0)),
                chatgpt_account: t(self.chatgpt_account),
                openai_organization: t(self.openai_organization),
                openai_project: t(self.openai_project),
                api_key_fp: t(self.api_key_fp),
                chatgpt_listed: self
                    .chatgpt_accounts_listed
                    .unwrap_or_default()
                    .into_iter()
                    .map(|t| t.0)
                    .collect(),
            },
        );
        Row {
            seq: self.seq,
            kind,
            app,
            ts_ms: self.ts_ms.unwrap_or(0),
            identity: t(self.identity),
            user: t(self.user),
            src: t(self.src),
            sni: t(self.sni),
            category: t(self.category),
            verdict: t(self.verdict),
            rule: t(self.rule),
            findings: self
                .dlp_findings
                .unwrap_or_default()
                .into_iter()
                .map(|f| (f.detector.0, f.count.unwrap_or(1)))
                .collect(),
            model: t(self.model),
            quota: t(self.quota),
            app_name,
            operation: t(self.operation),
            virtual_key: t(self.virtual_key),
            tokens: Tokens {
                input: self.input_tokens.unwrap_or(0),
                output: self.output_tokens.unwrap_or(0),
                cached: self.cached_tokens.unwrap_or(0),
            },
            recording,
            chain: Chain::Unchained,
            json,
        }
    }
}

/// The rest of what the inventory reads of a record.
pub(super) struct AppExtra<'a> {
    pub(super) version: Option<Cow<'a, str>>,
    pub(super) ended: bool,
    pub(super) bytes: u64,
    pub(super) chatgpt_account: Option<Cow<'a, str>>,
    pub(super) openai_organization: Option<Cow<'a, str>>,
    pub(super) openai_project: Option<Cow<'a, str>>,
    pub(super) api_key_fp: Option<Cow<'a, str>>,
    pub(super) chatgpt_listed: Vec<Cow<'a, str>>,
}

/// The inventory's fields of a flow that saw a hello (its app, or `unknown`) or of a request.
pub(super) fn app_fields<'a>(
    kind: RecordKind,
    app: Option<Cow<'a, str>>,
    ja4: Option<Cow<'a, str>>,
    x: AppExtra<'a>,
) -> Option<Box<AppFields<'a>>> {
    let app = match kind {
        RecordKind::Flow if ja4.is_some() => app.unwrap_or(Cow::Borrowed("unknown")),
        RecordKind::Request => app?,
        _ => return None,
    };
    Some(Box::new(AppFields {
        app,
        version: x.version,
        ja4,
        ended: x.ended,
        bytes: x.bytes,
        chatgpt_account: x.chatgpt_account,
        openai_organization: x.openai_organization,
        openai_project: x.openai_project,
        api_key_fp: x.api_key_fp,
        chatgpt_listed: x.chatgpt_listed,
    }))
}

/// A JSON string borrowed from the text when it has no escapes (serde borrows a `Cow` only
/// when it is not inside an `Option`).
pub(super) struct Text<'a>(pub(super) Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}
