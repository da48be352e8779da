//! The plaintext of a recording (ARCHITECTURE.md, "Recordings"), what is sealed: a JSON head
//! on one line (who, where, the request and response heads, WebSocket messages, and each
//! body's length), then the bodies' bytes as they passed, request first. The bodies are not
//! escaped into the JSON on the hot path; [`read`] puts them back in (as text, or base64 for
//! bytes that are not UTF-8) when a recording is opened. Version 1 recordings (the whole
//! exchange as one JSON document, bodies inside) read as they are.

use base64::Engine as _;
use serde::Serialize;
use serde_json::{Value, json};

/// The head of a version-2 plaintext (the bodies follow it).
#[derive(Serialize)]
pub(super) struct Head<'a> {
    pub version: u8,
    pub id: &'a str,
    pub ts_ms: u64,
    pub identity: Option<&'a str>,
    pub user: Option<&'a str>,
    pub src: &'a str,
    pub sni: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hello_app: Option<&'a str>,
    pub rule: Option<&'a str>,
    pub model: Option<&'a str>,
    pub request: RequestHead<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<ResponseHead<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<Message<'a>>,
    pub messages_truncated: bool,
}

#[derive(Serialize)]
pub(super) struct RequestHead<'a> {
    pub method: &'a str,
    pub target: &'a str,
    pub headers: &'a [(String, String)],
    pub body: BodyLen,
}

#[derive(Serialize)]
pub(super) struct ResponseHead<'a> {
    pub status: Option<u16>,
    pub content_type: Option<&'a str>,
    pub body: BodyLen,
}

#[derive(Serialize)]
pub(super) struct Message<'a> {
    pub from: &'a str,
    pub text: &'a str,
}

/// A body's place in the plaintext: its length, and whether the capture was cut.
#[derive(Serialize)]
pub(super) struct BodyLen {
    pub bytes: usize,
    pub truncated: bool,
}

/// The plaintext: `head` on one line, then the request body, then the response body.
pub(super) fn write(head: &Head<'_>, request: &[u8], response: &[u8]) -> Option<Vec<u8>> {
    // One allocation in the common case (the head's size is about its strings'); the head
    // goes first, so a head larger than that grows a buffer holding the head only, never the
    // bodies.
    let strings = head.request.target.len()
        + head.request.headers.iter().map(|(n, v)| n.len() + v.len() + 8).sum::<usize>()
        + head.messages.iter().map(|m| m.text.len() + 24).sum::<usize>();
    let mut out = Vec::with_capacity(768 + strings + request.len() + response.len());
    serde_json::to_writer(&mut out, head).ok()?;
    out.push(b'\n');
    out.reserve_exact(request.len() + response.len());
    out.extend_from_slice(request);
    out.extend_from_slice(response);
    Some(out)
}

/// Why a plaintext does not read as a recording.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlainError {
    /// The head is not a JSON object.
    #[error("the head is not a recording's: {0}")]
    Head(String),
    /// The bodies' lengths do not add up to the bytes after the head.
    #[error("the bodies are {have} bytes, the head says {said}")]
    Length {
        /// Bytes after the head.
        have: usize,
        /// What the head's lengths add up to.
        said: u64,
    },
    /// A version this build does not know.
    #[error("recording version {0} is not known")]
    Version(u64),
}

/// A body as the reader shows it: UTF-8 text, or base64 for bytes that are not.
fn shown(bytes: &[u8], truncated: bool) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(t) => json!({ "text": t, "truncated": truncated }),
        Err(_) => json!({
            "base64": base64::engine::general_purpose::STANDARD.encode(bytes),
            "truncated": truncated,
        }),
    }
}

/// The length a head gives the body at `v` (absent: none).
fn length(v: &Value) -> Result<u64, PlainError> {
    match v.get("bytes") {
        None => Ok(0),
        Some(n) => n.as_u64().ok_or_else(|| PlainError::Head("a body's length".into())),
    }
}

/// The recording of `plain` as one JSON document (bodies as `{text|base64, truncated}`),
/// whichever version wrote it. Pure; reads nothing past `plain`.
pub fn read(plain: &[u8]) -> Result<Value, PlainError> {
    let (head, rest) = match plain.iter().position(|b| *b == b'\n') {
        Some(at) => (&plain[..at], &plain[at + 1..]),
        None => (plain, &[][..]),
    };
    let mut v: Value = serde_json::from_slice(head).map_err(|e| PlainError::Head(e.to_string()))?;
    if !v.is_object() {
        return Err(PlainError::Head("not an object".into()));
    }
    match v.get("version").and_then(Value::as_u64) {
        Some(1) if rest.is_empty() => return Ok(v),
        Some(2) => {}
        Some(n) => return Err(PlainError::Version(n)),
        None => return Err(PlainError::Head("no version".into())),
    }
    let req = length(&v["request"]["body"])?;
    let resp = match v.get("response") {
        Some(r) => length(&r["body"])?,
        None => 0,
    };
    let said = req.saturating_add(resp);
    if said != rest.len() as u64 {
        return Err(PlainError::Length { have: rest.len(), said });
    }
    let (req_bytes, resp_bytes) = rest.split_at(req as usize);
    let cut = |b: &Value| b.get("truncated").and_then(Value::as_bool).unwrap_or(false);
    let body = shown(req_bytes, cut(&v["request"]["body"]));
    match v.get_mut("request").and_then(Value::as_object_mut) {
        Some(r) => r.insert("body".into(), body),
        None => return Err(PlainError::Head("no request".into())),
    };
    if let Some(r) = v.get_mut("response").and_then(Value::as_object_mut) {
        let body = shown(resp_bytes, r.get("body").is_some_and(cut));
        r.insert("body".into(), body);
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head<'a>(headers: &'a [(String, String)], req: usize, resp: Option<usize>) -> Head<'a> {
        Head {
            version: 2,
            id: "rec_1",
            ts_ms: 5,
            identity: Some("finance"),
            user: None,
            src: "10.0.0.1",
            sni: Some("api.openai.com"),
            hello_app: Some("python"),
            rule: Some("r"),
            model: None,
            request: RequestHead {
                method: "POST",
                target: "/v1/responses",
                headers,
                body: BodyLen { bytes: req, truncated: false },
            },
            response: resp.map(|n| ResponseHead {
                status: Some(200),
                content_type: Some("application/json"),
                body: BodyLen { bytes: n, truncated: true },
            }),
            messages: vec![Message { from: "client", text: "hi\nthere" }],
            messages_truncated: false,
        }
    }

    #[test]
    fn bodies_read_back_as_text_or_base64() {
        let hs = vec![("content-type".to_owned(), "application/json".to_owned())];
        let req = b"{\"input\":\"line one\nline \\\"two\\\"\"}";
        let resp = [0xff, 0x00, b'x'];
        let plain = write(&head(&hs, req.len(), Some(resp.len())), req, &resp).unwrap();
        let v = read(&plain).unwrap();
        assert_eq!(v["request"]["body"]["text"], std::str::from_utf8(req).unwrap());
        assert_eq!(v["request"]["headers"][0][1], "application/json");
        assert_eq!(v["hello_app"], "python");
        assert_eq!(v["response"]["body"]["base64"], "/wB4");
        assert_eq!(v["response"]["body"]["truncated"], true);
        assert_eq!(v["messages"][0]["text"], "hi\nthere");
        // Request only.
        let plain = write(&head(&hs, 2, None), b"ab", b"").unwrap();
        assert_eq!(read(&plain).unwrap()["request"]["body"]["text"], "ab");
    }

    #[test]
    fn lengths_that_do_not_add_up_and_unknown_versions_are_errors() {
        let plain = write(&head(&[], 3, Some(1)), b"abc", b"").unwrap();
        assert_eq!(read(&plain), Err(PlainError::Length { have: 3, said: 4 }));
        let mut plain = write(&head(&[], 1, None), b"a", b"").unwrap();
        plain.push(b'!');
        assert!(matches!(read(&plain), Err(PlainError::Length { .. })));
        assert_eq!(read(b"{\"version\":9}\n"), Err(PlainError::Version(9)));
        assert!(read(b"[1]\n").is_err() && read(b"").is_err() && read(b"{}\nxx").is_err());
        let huge = br#"{"version":2,"request":{"body":{"bytes":18446744073709551615}},"response":{"body":{"bytes":9}}}"#;
        assert!(read(huge).is_err(), "lengths that overflow are refused");
    }

    #[test]
    fn version_one_reads_as_it_was_written() {
        let v1 =
            br#"{"version":1,"id":"rec_1","request":{"body":{"text":"hi","truncated":false}}}"#;
        assert_eq!(read(v1).unwrap()["request"]["body"]["text"], "hi");
    }
}
