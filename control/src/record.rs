//! What control reads of a record a data plane sent (ARCHITECTURE.md, "Records"): the fields
//! the store indexes, the counts the metrics keep, and the text stored. Read straight from the
//! record's JSON text, borrowing where the text has no escapes; no value tree is built and the
//! record is not serialised again. The stored text is the record as it came, with the data
//! plane's name added.

use std::borrow::Cow;

use serde_json::Value;

/// Tokens a response reported (0 when it said nothing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    /// Input tokens.
    pub input: u64,
    /// Output tokens.
    pub output: u64,
    /// Input tokens served from the prompt cache.
    pub cached: u64,
}

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A flow record (the packet path).
    Flow,
    /// A request record (the interception engine).
    Request,
    /// A data plane's statistics (not stored; its last one is kept in the link status).
    Stats,
    /// A data plane's alarm (records it lost): written to the audit log, logged as an error.
    Alarm,
    /// A sealed recording of an exchange (stored apart, never published).
    Recording,
    /// Anything else (not stored).
    Other,
}

impl RecordKind {
    fn of(t: Option<&str>) -> Self {
        match t {
            Some("flow") => RecordKind::Flow,
            Some("request") => RecordKind::Request,
            Some("stats") => RecordKind::Stats,
            Some("alarm") => RecordKind::Alarm,
            Some("recording") => RecordKind::Recording,
            _ => RecordKind::Other,
        }
    }
}

/// One record as control stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row<'a> {
    /// The data plane's sequence number.
    pub seq: u64,
    /// What it is.
    pub kind: RecordKind,
    /// Unix ms (0 when the record has none).
    pub ts_ms: u64,
    /// Indexed fields.
    pub identity: Option<Cow<'a, str>>,
    /// Feed user.
    pub user: Option<Cow<'a, str>>,
    /// Source address.
    pub src: Option<Cow<'a, str>>,
    /// Server name.
    pub sni: Option<Cow<'a, str>>,
    /// Category.
    pub category: Option<Cow<'a, str>>,
    /// Verdict.
    pub verdict: Option<Cow<'a, str>>,
    /// Rule name.
    pub rule: Option<Cow<'a, str>>,
    /// DLP findings: detector and count.
    pub findings: Vec<(Cow<'a, str>, u64)>,
    /// Model of a request.
    pub model: Option<Cow<'a, str>>,
    /// The quota subject that counted a request.
    pub quota: Option<Cow<'a, str>>,
    /// The `app` member as sent (flows without one may still carry [`Row::app`]: `unknown`).
    pub app_name: Option<Cow<'a, str>>,
    /// What the request does (`operation`).
    pub operation: Option<Cow<'a, str>>,
    /// The virtual key that made the request (`virtual_key`).
    pub virtual_key: Option<Cow<'a, str>>,
    /// Input, output and cached tokens a response reported.
    pub tokens: Tokens,
    /// What a `recording` record says besides (read in the same pass; its text is not
    /// copied into `json`, which stays empty).
    pub recording: Option<Box<RecordingFields<'a>>>,
    /// The app a flow's hello or a request showed, for the inventory (flows with a hello,
    /// requests).
    pub app: Option<Box<AppFields<'a>>>,
    /// Its place in the data plane's record chain (ARCHITECTURE.md, "Evidence").
    pub chain: Chain,
    /// The text stored: the record with `"dataplane"` naming the data plane it came from.
    pub json: String,
}

/// A record's place in its data plane's chain, as it says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chain {
    /// It has none (statistics, alarms, recordings; records of a data plane before chains).
    Unchained,
    /// Position `n`, after the record whose link is `prev`; `link` is its own, computed from
    /// the text as sent.
    Linked {
        /// Position in the chain.
        n: u64,
        /// The link it continues.
        prev: sluice_audit::Link,
        /// Its own link.
        link: sluice_audit::Link,
        /// The text as sent comes back from the text stored ([`as_sent`]), so the link can be
        /// checked again later (refused at ingest when not).
        storable: bool,
    },
    /// Chain members that cannot be read: refused at ingest.
    Malformed,
}

/// What the inventory reads of a flow or request record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppFields<'a> {
    /// The app (`unknown` for a hello the catalog does not know).
    pub app: Cow<'a, str>,
    /// Its version, as a request says it.
    pub version: Option<Cow<'a, str>>,
    /// The hello's JA4 (names an unknown client).
    pub ja4: Option<Cow<'a, str>>,
    /// A flow's last record (`event: end`): it counts as a flow, with its bytes.
    pub ended: bool,
    /// Bytes both ways (a request's bodies, an ended flow's packets).
    pub bytes: u64,
    /// The ChatGPT account, OpenAI organization and API key fingerprint it showed.
    pub chatgpt_account: Option<Cow<'a, str>>,
    /// `OpenAI-Organization`.
    pub openai_organization: Option<Cow<'a, str>>,
    /// `OpenAI-Project`.
    pub openai_project: Option<Cow<'a, str>>,
    /// The API key's fingerprint.
    pub api_key_fp: Option<Cow<'a, str>>,
    /// The accounts ChatGPT's answer listed (`workspace:ID`, `personal:ID`).
    pub chatgpt_listed: Vec<Cow<'a, str>>,
}

/// The members of a `recording` record control stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingFields<'a> {
    /// The recording's id.
    pub id: Cow<'a, str>,
    /// The request's method.
    pub method: Option<Cow<'a, str>>,
    /// The request's path.
    pub path: Option<Cow<'a, str>>,
    /// Plaintext bytes sealed.
    pub bytes: u64,
    /// ChatGPT's conversation id.
    pub conversation: Option<Cow<'a, str>>,
    /// The response the request continues.
    pub previous_response: Option<Cow<'a, str>>,
    /// The response's own id.
    pub response: Option<Cow<'a, str>>,
    /// The sealed recording as sent (JSON text).
    pub sealed: Cow<'a, str>,
}

impl<'a> Row<'a> {
    /// Reads the record `text` from data plane `dataplane`. `None` when it is not a JSON
    /// object with a `seq` (nothing can be stored of it).
    pub fn read(text: &'a str, dataplane: &str) -> Option<Row<'a>> {
        match serde_json::from_str::<Fields<'a>>(text) {
            Ok(f) if f.dataplane.is_none() => {
                let recording =
                    RecordKind::of(f.kind.as_ref().map(|t| t.0.as_ref())) == RecordKind::Recording;
                let json = if recording { String::new() } else { with_dataplane(text, dataplane)? };
                let chain = chain_of(f.chain, f.prev.as_ref(), text, &json, dataplane);
                let mut row = f.into_row(json);
                row.chain = chain;
                Some(row)
            }
            // A record naming a data plane itself, a duplicate key or a field of another type:
            // read through a value tree, as a generic JSON reader would (the last copy of a
            // key wins), with the name set by control.
            _ => Self::read_value(serde_json::from_str(text).ok()?, dataplane),
        }
    }

    /// [`Row::read`] for a record already parsed.
    pub fn read_value(mut v: Value, dataplane: &str) -> Option<Row<'static>> {
        let obj = v.as_object_mut()?;
        let seq = obj.get("seq")?.as_u64()?;
        obj.insert("dataplane".into(), dataplane.into());
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(|s| Cow::Owned(s.to_owned()));
        let findings = v
            .get("dlp_findings")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|f| {
                let d = f.get("detector")?.as_str()?;
                Some((
                    Cow::Owned(d.to_owned()),
                    f.get("count").and_then(Value::as_u64).unwrap_or(1),
                ))
            })
            .collect();
        let kind = RecordKind::of(v.get("type").and_then(Value::as_str));
        // Read through a value tree, its text is not kept as sent: its link could not be
        // checked again.
        let chain = if v.get("chain").is_some() || v.get("prev").is_some() {
            Chain::Malformed
        } else {
            Chain::Unchained
        };
        let recording = (kind == RecordKind::Recording)
            .then(|| {
                Some(Box::new(RecordingFields {
                    id: text("id")?,
                    method: text("method"),
                    path: text("path"),
                    bytes: v.get("bytes").and_then(Value::as_u64).unwrap_or(0),
                    conversation: text("conversation"),
                    previous_response: text("previous_response"),
                    response: text("response"),
                    sealed: Cow::Owned(v.get("sealed").filter(|s| s.is_object())?.to_string()),
                }))
            })
            .flatten();
        let num = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        let app = app_fields(
            kind,
            text("app"),
            text("ja4"),
            AppExtra {
                version: text("app_version"),
                ended: v.get("event").and_then(Value::as_str) == Some("end"),
                bytes: num("bytes_out").saturating_add(num("bytes_in")),
                chatgpt_account: text("chatgpt_account"),
                openai_organization: text("openai_organization"),
                openai_project: text("openai_project"),
                api_key_fp: text("api_key_fp"),
                chatgpt_listed: v
                    .get("chatgpt_accounts_listed")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|a| Some(Cow::Owned(a.as_str()?.to_owned())))
                    .collect(),
            },
        );
        Some(Row {
            seq,
            kind,
            app,
            ts_ms: v.get("ts_ms").and_then(Value::as_u64).unwrap_or(0),
            identity: text("identity"),
            user: text("user"),
            src: text("src"),
            sni: text("sni"),
            category: text("category"),
            verdict: text("verdict"),
            rule: text("rule"),
            findings,
            model: text("model"),
            quota: text("quota"),
            app_name: text("app"),
            operation: text("operation"),
            virtual_key: text("virtual_key"),
            tokens: Tokens {
                input: v.get("input_tokens").and_then(Value::as_u64).unwrap_or(0),
                output: v.get("output_tokens").and_then(Value::as_u64).unwrap_or(0),
                cached: v.get("cached_tokens").and_then(Value::as_u64).unwrap_or(0),
            },
            json: if kind == RecordKind::Recording { String::new() } else { v.to_string() },
            recording,
            chain,
        })
    }

    /// The detectors of the findings as `,a,b,` (the store matches it with LIKE `%,a,%`).
    pub fn detectors(&self) -> Option<String> {
        if self.findings.is_empty() {
            return None;
        }
        let mut s = String::from(",");
        for (d, _) in &self.findings {
            s.push_str(d);
            s.push(',');
        }
        Some(s)
    }
}

/// The chain members `n` and `prev` of the record `text`, stored as `stored`.
fn chain_of(
    n: Option<u64>,
    prev: Option<&Text<'_>>,
    text: &str,
    stored: &str,
    dataplane: &str,
) -> Chain {
    match (n, prev) {
        (None, None) => Chain::Unchained,
        (Some(n), Some(prev)) => match sluice_audit::Link::from_hex(&prev.0) {
            Some(prev) => Chain::Linked {
                n,
                prev,
                link: sluice_audit::link(&prev, n, text.as_bytes()),
                // Verification reads `prev` back from the prefix the data plane writes.
                storable: chain_prev(text.as_bytes()) == Some(prev)
                    && stored_as_sent(stored, dataplane, text),
            },
            None => Chain::Malformed,
        },
        _ => Chain::Malformed,
    }
}

/// True when [`as_sent`] of `stored` is `text` (compared in place).
fn stored_as_sent(stored: &str, dataplane: &str, text: &str) -> bool {
    let Some(body) = text.strip_suffix('}') else { return false };
    let Some(tail) = stored.strip_prefix(body) else { return false };
    let Ok(name) = serde_json::to_string(dataplane) else { return false };
    let tail = tail.strip_prefix(',').unwrap_or(tail);
    !body.ends_with(char::is_whitespace)
        && (body.ends_with('{') || stored.as_bytes().get(body.len()) == Some(&b','))
        && tail.strip_prefix("\"dataplane\":").and_then(|t| t.strip_prefix(name.as_str()))
            == Some("}")
}

/// The text a data plane sent of a record stored as `stored` (its `"dataplane"` member, which
/// control added last, taken off again), or `None` when it does not end with it.
pub fn as_sent(stored: &str, dataplane: &str) -> Option<String> {
    let name = serde_json::to_string(dataplane).ok()?;
    let inner = stored.strip_suffix('}')?.strip_suffix(name.as_str())?;
    let inner = inner.strip_suffix("\"dataplane\":")?;
    let inner = inner.strip_suffix(',').or_else(|| inner.ends_with('{').then_some(inner))?;
    Some(format!("{inner}}}"))
}

/// The link a chained record as sent says comes before it (read from its prefix,
/// `{"seq":S,"chain":N,"prev":"…"`, as the data plane writes it).
pub fn chain_prev(text: &[u8]) -> Option<sluice_audit::Link> {
    let rest = text.strip_prefix(b"{\"seq\":")?;
    let rest = &rest[rest.iter().take_while(|b| b.is_ascii_digit()).count()..];
    let rest = rest.strip_prefix(b",\"chain\":")?;
    let rest = &rest[rest.iter().take_while(|b| b.is_ascii_digit()).count()..];
    let rest = rest.strip_prefix(b",\"prev\":\"")?;
    sluice_audit::Link::from_hex(std::str::from_utf8(rest.get(..64)?).ok()?)
}

/// `text` (one JSON object) with `"dataplane":name` added as its last member.
fn with_dataplane(text: &str, dataplane: &str) -> Option<String> {
    let inner = text.trim_end().strip_suffix('}')?.trim_end();
    let name = serde_json::to_string(dataplane).ok()?;
    let mut out = String::with_capacity(inner.len() + name.len() + 16);
    out.push_str(inner);
    if !inner.ends_with('{') {
        out.push(',');
    }
    out.push_str("\"dataplane\":");
    out.push_str(&name);
    out.push('}');
    Some(out)
}

#[path = "record_fields.rs"]
mod fields;
use fields::{AppExtra, Fields, Text, app_fields};

#[cfg(test)]
#[path = "record_tests.rs"]
mod tests;
