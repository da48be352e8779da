//! Which model a request asks for, read from wherever the endpoint carries it: the JSON body's
//! top-level `model` (escaped keys unescaped, as the server reads them), a multipart or
//! url-encoded form field `model` (audio, images), or the `model` query parameter (Realtime).
//! A request that names its model twice, or not as a string, is ambiguous: servers disagree on
//! which copy wins, so it is refused rather than guessed at. Pure; the body is the decoded one.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

/// Longest model name accepted.
const MAX_MODEL: usize = 200;

/// Why the model of a request could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The request names a model more than once (duplicate key, field or parameter, or two
    /// places that disagree), or repeats a top-level JSON key.
    #[error("the request is ambiguous: {0}")]
    Ambiguous(&'static str),
    /// The model is there but is not a string of at most 200 characters.
    #[error("the model is not a string")]
    NotString,
    /// The body could not be read as its type says.
    #[error("the body could not be read: {0}")]
    Unreadable(&'static str),
}

/// What kind of body this is, for model extraction and DLP.
fn kind(content_type: Option<&[u8]>, body: &[u8]) -> Kind {
    let ct = content_type.unwrap_or_default();
    let has = |needle: &[u8]| ct.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle));
    if has(b"multipart/") {
        Kind::Multipart
    } else if has(b"x-www-form-urlencoded") {
        Kind::Form
    } else if has(b"json") || body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        Kind::Json
    } else {
        Kind::Other
    }
}

enum Kind {
    Json,
    Multipart,
    Form,
    Other,
}

/// The model of a request: `target` is the request target (path and query), `body` the
/// decoded body. `Ok(None)`: the request names no model.
pub fn model_of(
    target: &str,
    content_type: Option<&[u8]>,
    body: &[u8],
) -> Result<Option<String>, ModelError> {
    let query = target.split_once('?').map(|(_, q)| q.split('#').next().unwrap_or(q));
    let from_query = match query {
        Some(q) => form_field(q.as_bytes())?,
        None => None,
    };
    let from_body = if body.is_empty() {
        None
    } else {
        match kind(content_type, body) {
            Kind::Json => json_model(body)?,
            Kind::Form => form_field(body)?,
            Kind::Multipart => multipart_model(content_type.unwrap_or_default(), body)?,
            Kind::Other => None,
        }
    };
    match (from_query, from_body) {
        (Some(q), Some(b)) if q != b => {
            Err(ModelError::Ambiguous("the query and the body name different models"))
        }
        (q, b) => Ok(q.or(b)),
    }
}

fn checked(s: Cow<'_, str>) -> Result<String, ModelError> {
    if s.chars().count() > MAX_MODEL {
        return Err(ModelError::NotString);
    }
    Ok(s.into_owned())
}

/// `model` of an url-encoded form (a query string or a form body), percent-decoded.
fn form_field(form: &[u8]) -> Result<Option<String>, ModelError> {
    let mut found = None;
    for pair in form.split(|b| *b == b'&') {
        let (k, v) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &[][..]),
        };
        if percent_decode(k).as_deref() != Some(b"model".as_slice()) {
            continue;
        }
        if found.is_some() {
            return Err(ModelError::Ambiguous("`model` given twice"));
        }
        let v = percent_decode(v).ok_or(ModelError::NotString)?;
        let v = String::from_utf8(v).map_err(|_| ModelError::NotString)?;
        found = Some(checked(Cow::Owned(v))?);
    }
    Ok(found)
}

/// Percent-decoding (`+` is a space, as forms have it); `None` on a broken escape.
fn percent_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

fn multipart_model(content_type: &[u8], body: &[u8]) -> Result<Option<String>, ModelError> {
    let boundary = sluice_dlp::body::boundary(content_type)
        .ok_or(ModelError::Unreadable("multipart body without a boundary"))?;
    let parts = sluice_dlp::body::split_multipart(body, &boundary)
        .ok_or(ModelError::Unreadable("malformed multipart body"))?;
    let mut found = None;
    for p in parts.iter().filter(|p| p.name == "model") {
        if found.is_some() {
            return Err(ModelError::Ambiguous("`model` given twice"));
        }
        let v = std::str::from_utf8(p.data).map_err(|_| ModelError::NotString)?;
        found = Some(checked(Cow::Borrowed(v.trim()))?);
    }
    Ok(found)
}

/// The top-level `model` of a JSON body; every top-level key is read unescaped, and a
/// repeated one is refused (servers disagree on which copy wins).
fn json_model(body: &[u8]) -> Result<Option<String>, ModelError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let out = de.deserialize_any(TopLevel).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            let msg = e.to_string();
            if msg.starts_with(DUPLICATE) {
                ModelError::Ambiguous("a top-level JSON key is repeated")
            } else if msg.starts_with(NOT_STRING) {
                ModelError::NotString
            } else {
                ModelError::Unreadable("the body is not valid JSON")
            }
        }
        _ => ModelError::Unreadable("the body is not valid JSON"),
    })?;
    de.end().map_err(|_| ModelError::Unreadable("trailing bytes after the JSON body"))?;
    Ok(out)
}

const DUPLICATE: &str = "sluice: duplicate key";
const NOT_STRING: &str = "sluice: model not a string";

struct TopLevel;

impl<'de> Visitor<'de> for TopLevel {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        // A set, not a list: a hostile body may have many top-level keys.
        let mut keys: HashSet<Cow<'de, str>> = HashSet::new();
        let mut model = None;
        while let Some(key) = map.next_key::<CowKey<'de>>()? {
            let key = key.0;
            if key == "model" {
                let v: serde_json::Value = map.next_value()?;
                match v {
                    serde_json::Value::String(s) if s.chars().count() <= MAX_MODEL => {
                        model = Some(s);
                    }
                    serde_json::Value::Null => {}
                    _ => return Err(de::Error::custom(NOT_STRING)),
                }
            } else {
                map.next_value::<IgnoredAny>()?;
            }
            if !keys.insert(key) {
                return Err(de::Error::custom(DUPLICATE));
            }
        }
        Ok(model)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// A key, borrowed when it has no escapes, unescaped otherwise.
struct CowKey<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for CowKey<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CowKey<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(CowKey(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowKey(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(CowKey(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: Option<&[u8]> = Some(b"application/json");

    #[test]
    fn json_bodies() {
        let m = |b: &str| model_of("/v1/chat/completions", JSON, b.as_bytes());
        assert_eq!(m(r#"{"model":"gpt-4o","messages":[]}"#), Ok(Some("gpt-4o".into())));
        assert_eq!(m(r#"{"messages":[{"model":"x"}]}"#), Ok(None), "only the top level");
        assert_eq!(m(r#"{"mod\u0065l":"o3"}"#), Ok(Some("o3".into())), "escaped key");
        assert_eq!(m(r#"{"model":null}"#), Ok(None));
        assert_eq!(m(r#"[1,2]"#), Ok(None));
        assert_eq!(
            m(r#"{"model":"a","model":"b"}"#),
            Err(ModelError::Ambiguous("a top-level JSON key is repeated"))
        );
        assert_eq!(m(r#"{"model":"a","mod\u0065l":"b"}"#).map_err(|_| ()), Err(()));
        assert_eq!(m(r#"{"x":1,"x":2}"#).map_err(|_| ()), Err(()));
        assert_eq!(m(r#"{"model":["gpt-4o"]}"#), Err(ModelError::NotString));
        assert_eq!(m(r#"{"model":5}"#), Err(ModelError::NotString));
        assert_eq!(m(r#"{"model":{"id":"gpt-4o"}}"#), Err(ModelError::NotString));
        assert!(matches!(m(r#"{"model":"a""#), Err(ModelError::Unreadable(_))));
        assert!(matches!(m(r#"{"model":"a"} x"#), Err(ModelError::Unreadable(_))));
        // Without a JSON content type, a body that starts like JSON is read as JSON.
        assert_eq!(
            model_of("/v1/x", Some(b"text/plain"), br#" {"model":"o1"}"#),
            Ok(Some("o1".into()))
        );
        let long = format!(r#"{{"model":"{}"}}"#, "m".repeat(201));
        assert_eq!(m(&long), Err(ModelError::NotString));
    }

    #[test]
    fn query_forms_and_multipart() {
        assert_eq!(
            model_of("/v1/realtime?model=gpt-4o-realtime-preview", None, b""),
            Ok(Some("gpt-4o-realtime-preview".into()))
        );
        assert_eq!(model_of("/v1/realtime?%6dodel=o1&x=y", None, b""), Ok(Some("o1".into())));
        assert!(matches!(
            model_of("/v1/realtime?model=a&model=b", None, b""),
            Err(ModelError::Ambiguous(_))
        ));
        assert_eq!(model_of("/v1/realtime?model=%ff", None, b""), Err(ModelError::NotString));
        assert_eq!(
            model_of("/v1/x?model=a", JSON, br#"{"model":"a"}"#),
            Ok(Some("a".into())),
            "the same model twice in two places is not ambiguous"
        );
        assert!(matches!(
            model_of("/v1/x?model=a", JSON, br#"{"model":"b"}"#),
            Err(ModelError::Ambiguous(_))
        ));
        let ct = b"multipart/form-data; boundary=XX";
        let body = b"--XX\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nRIFF\r\n--XX--\r\n";
        assert_eq!(
            model_of("/v1/audio/transcriptions", Some(ct), body),
            Ok(Some("whisper-1".into()))
        );
        let twice = b"--XX\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\na\r\n--XX\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nb\r\n--XX--\r\n";
        assert!(matches!(model_of("/", Some(ct), twice), Err(ModelError::Ambiguous(_))));
        assert!(matches!(model_of("/", Some(ct), b"garbage"), Err(ModelError::Unreadable(_))));
        assert_eq!(
            model_of("/", Some(b"application/x-www-form-urlencoded"), b"model=dall-e-3&n=1"),
            Ok(Some("dall-e-3".into()))
        );
        assert_eq!(model_of("/v1/files", Some(b"application/octet-stream"), b"\x00\x01"), Ok(None));
    }
}
