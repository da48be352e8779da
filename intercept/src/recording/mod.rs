//! Session recording (ARCHITECTURE.md, "Recordings"): for a rule with `record`, the exchange's
//! decoded bodies (the request as the client sent it, the response as the client got it,
//! WebSocket messages both ways) are captured as they pass, bounded, then sealed at phase 7 to
//! the customer's age X25519 public keys ([`sealing`]; the plaintext's format is [`plain`]).
//! Only the sealed bytes leave this module: the request record names the recording (id, size,
//! conversation ids), and the binary writes the sealed bytes as a `recording` record beside
//! it. Nothing of a recording is ever in clear outside memory; credentials in headers are
//! withheld before capture.

use std::sync::Arc;

use serde::Serialize;
use sha2::Digest;
use sluice_rules::RecordMode;

use crate::phases::Headers;
use crate::record::RequestRecord;

pub mod plain;
mod sealing;

pub use plain::{PlainError, read as read_plain};
pub use sealing::{Sealed, SealedBytes, Sealer, open};

/// Most bytes captured per direction (a body, or WebSocket messages); past it the capture is
/// cut and says so. (A recording record stays well under the link's frame limit even when
/// every byte needs escaping.)
pub const MAX_CAPTURE: usize = 1 << 20;

/// Headers whose values are credentials: recorded as `[withheld]`.
const WITHHELD: [&str; 7] = [
    "authorization",
    "api-key",
    "x-api-key",
    "ocp-apim-subscription-key",
    "cookie",
    "proxy-authorization",
    "sec-websocket-protocol",
];

/// What a rule records, and to whom it is sealed.
#[derive(Clone)]
pub struct Recorder {
    /// Request only, or request and response.
    pub mode: RecordMode,
    recipients: Arc<[age::x25519::Recipient]>,
    /// The recipients as written (which data key they wrap).
    names: Arc<[String]>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("mode", &self.mode)
            .field("recipients", &self.recipients.len())
            .finish()
    }
}

impl Recorder {
    /// A recorder sealing to `recipients` (age1… public keys; the unreadable ones are left out,
    /// and with none left there is no recorder: the rule compiler refuses such a rule first).
    pub fn new(mode: RecordMode, recipients: &[String]) -> Option<Recorder> {
        let r: Vec<age::x25519::Recipient> =
            recipients.iter().filter_map(|r| r.parse().ok()).collect();
        (!r.is_empty()).then(|| Recorder {
            mode,
            recipients: r.into(),
            names: recipients.to_vec().into(),
        })
    }
}

/// One direction's bytes, bounded.
#[derive(Debug, Clone, Default)]
struct Bounded {
    bytes: Vec<u8>,
    cut: bool,
}

impl Bounded {
    fn push(&mut self, b: &[u8]) {
        let room = MAX_CAPTURE.saturating_sub(self.bytes.len());
        if b.len() > room {
            self.cut = true;
        }
        self.bytes.extend_from_slice(&b[..b.len().min(room)]);
    }
}

/// What is captured of one exchange, as it passes (its `Debug` shows sizes, never content).
#[derive(Clone, Default)]
pub struct Capture {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    request: Bounded,
    response_on: bool,
    status: Option<u16>,
    response_type: Option<String>,
    response: Bounded,
    messages: Vec<(&'static str, String)>,
    message_bytes: usize,
    messages_cut: bool,
    /// The app the connection's hello showed (`unknown` for an unknown hello), so that a
    /// replay decides rules by app as the wire did.
    pub(crate) hello_app: Option<Arc<str>>,
    /// What seals it, once the exchange is over (phase 7 hands it over; [`seal_captured`]
    /// uses it, off the interception thread).
    sealing: Option<Sealing>,
}

/// The recorder and data keys a finished capture is sealed with.
#[derive(Clone)]
struct Sealing {
    recorder: Recorder,
    access: Arc<crate::access::Access>,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("request_bytes", &self.request.bytes.len())
            .field("response_bytes", &self.response.bytes.len())
            .field("messages", &self.messages.len())
            .finish_non_exhaustive()
    }
}

impl Capture {
    /// The capture of a request head (credentials withheld, and the query's values: a key
    /// may ride there); `response`: the response is recorded too.
    pub fn new(method: &str, target: &str, headers: &dyn Headers, response: bool) -> Capture {
        let target = match target.split_once('?') {
            Some((path, q)) => {
                let names: Vec<&str> =
                    q.split('&').map(|kv| kv.split('=').next().unwrap_or("")).collect();
                format!("{path}?{}", names.join("=[withheld]&") + "=[withheld]")
            }
            None => target.to_owned(),
        };
        let mut hs = Vec::new();
        headers.each(&mut |n, v| {
            let v = if WITHHELD.contains(&n) {
                "[withheld]".to_owned()
            } else {
                String::from_utf8_lossy(v).into_owned()
            };
            hs.push((n.to_owned(), v));
        });
        Capture {
            method: method.to_owned(),
            target,
            headers: hs,
            response_on: response,
            ..Capture::default()
        }
    }

    /// The request body as sent (`decoded`: its Content-Encoding was undone, which the
    /// recorded head then no longer names).
    pub fn request_body(&mut self, body: &[u8], decoded: bool) {
        self.request.push(body);
        if decoded {
            self.headers.retain(|(n, _)| n != "content-encoding");
        }
    }

    /// The response head.
    pub fn response_head(&mut self, status: u16, content_type: Option<&[u8]>) {
        if self.response_on {
            self.status = Some(status);
            self.response_type = content_type.map(|c| String::from_utf8_lossy(c).into_owned());
        }
    }

    /// The next bytes of the response body as the client gets them.
    pub fn response_body(&mut self, bytes: &[u8]) {
        if self.response_on {
            self.response.push(bytes);
        }
    }

    /// A WebSocket text message (`client` or `server`; server messages only when responses
    /// are recorded).
    pub fn message(&mut self, from: &'static str, text: &[u8]) {
        if from == "server" && !self.response_on {
            return;
        }
        // Counted as the recording's JSON head will hold it (escapes, replacement characters
        // and each message's wrapper included): the capture's bound is the sealed size's.
        let text = String::from_utf8_lossy(text);
        let size = json_size(&text) + MESSAGE_WRAPPER;
        if self.message_bytes + size > MAX_CAPTURE {
            self.messages_cut = true;
            return;
        }
        self.message_bytes += size;
        self.messages.push((from, text.into_owned()));
    }
}

/// Bytes of a message's JSON object besides its text (`{"from":"client","text":""},`).
const MESSAGE_WRAPPER: usize = 32;

/// Bytes `text` takes as a JSON string's contents.
fn json_size(text: &str) -> usize {
    text.chars()
        .map(|c| match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            c if u32::from(c) < 0x20 => 6,
            c => c.len_utf8(),
        })
        .sum()
}

/// What a request record says of its recording.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RecordingNote {
    /// The recording's id (`rec_` and 24 hex digits).
    pub id: String,
    /// Bytes of plaintext sealed.
    pub bytes: u64,
    /// ChatGPT's `conversation_id`, when the request names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation: Option<String>,
    /// The Responses API's `previous_response_id`, when the request names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_response: Option<String>,
    /// The id of the response (`resp_…`, `chatcmpl-…`), when it names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
    /// SHA-256 (hex) of the sealed form exactly as its `recording` record carries it (its
    /// `sealed` member's JSON text): the chained request record binds the ciphertext.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sealed_sha256: Option<String>,
}

/// The ids a request body names that thread a conversation.
pub fn request_ids(body: &[u8]) -> (Option<String>, Option<String>) {
    // Most bodies name neither (and spell no key with an escape): not parsed again. The
    // searchers are built once (this runs for every recording; each is a SIMD pass).
    use memchr::memmem::Finder;
    static KEYS: std::sync::LazyLock<[Finder<'static>; 3]> = std::sync::LazyLock::new(|| {
        [Finder::new("conversation_id"), Finder::new("previous_response_id"), Finder::new("\\u")]
    });
    if KEYS.iter().all(|k| k.find(body).is_none()) {
        return (None, None);
    }
    #[derive(serde::Deserialize)]
    struct Ids {
        conversation_id: Option<serde_json::Value>,
        previous_response_id: Option<serde_json::Value>,
    }
    let Ok(ids) = serde_json::from_slice::<Ids>(body) else { return (None, None) };
    let id = |v: Option<serde_json::Value>| match v {
        Some(serde_json::Value::String(s)) if !s.is_empty() && s.len() <= 200 => Some(s),
        _ => None,
    };
    (id(ids.conversation_id), id(ids.previous_response_id))
}

/// The first `"id": "…"` of a response body (its own id comes first in OpenAI's answers and
/// in the first event of a stream).
pub fn response_id(body: &[u8]) -> Option<String> {
    const KEY: &[u8] = b"\"id\"";
    let at = body.windows(KEY.len()).position(|w| w == KEY)?;
    let rest = &body[at + KEY.len()..];
    let rest = rest.trim_ascii_start().strip_prefix(b":")?.trim_ascii_start();
    let rest = rest.strip_prefix(b"\"")?;
    let end = rest.iter().position(|b| *b == b'"')?;
    let id = std::str::from_utf8(&rest[..end]).ok()?;
    let ok = !id.is_empty()
        && id.len() <= 200
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    ok.then(|| id.to_owned())
}

/// Phase 7: the capture of `rec`, the exchange over, is to be sealed with `recorder`'s
/// recipients and `access`'s data keys. Sealing (the plaintext's head, AES-GCM over every
/// byte) is left to [`seal_captured`], which the record writer runs: the interception thread
/// goes back to the traffic.
pub(crate) fn hand_over(
    recorder: &Recorder,
    access: &Arc<crate::access::Access>,
    rec: &mut RequestRecord,
) {
    if let Some(c) = rec.capture.as_mut() {
        c.sealing = Some(Sealing { recorder: recorder.clone(), access: Arc::clone(access) });
    }
}

/// Seals the capture a request record carries (phase 7 handed it over): the record gets its
/// note, `sealed` the ciphertext, and the plaintext is dropped. Run by whoever writes request
/// records, before [`recording_line`] and the request record's own line (which names the
/// recording). A capture without its sealing is dropped unsealed.
pub fn seal_captured(rec: &mut RequestRecord) {
    let Some(s) = rec.capture.as_mut().and_then(|c| c.sealing.take()) else {
        rec.capture = None;
        return;
    };
    seal(&s.recorder, &s.access.sealer, rec);
}

/// Seals the capture of `rec`: the record gets its note, `sealed` the ciphertext.
pub(crate) fn seal(recorder: &Recorder, sealer: &Sealer, rec: &mut RequestRecord) {
    let Some(c) = rec.capture.take() else { return };
    let id = crate::block::time_ordered_id("rec_", crate::record::now_ms());
    let (conversation, previous_response) = request_ids(&c.request.bytes);
    let response = c.response_on.then_some(&c.response);
    let head = plain::Head {
        version: 2,
        id: &id,
        ts_ms: rec.ts_ms,
        identity: rec.identity.as_deref(),
        user: rec.user.as_deref(),
        src: &rec.src,
        sni: rec.sni.as_deref(),
        hello_app: c.hello_app.as_deref(),
        rule: rec.rule.as_deref(),
        model: rec.model.as_deref(),
        request: plain::RequestHead {
            method: &c.method,
            target: &c.target,
            headers: &c.headers,
            body: plain::BodyLen { bytes: c.request.bytes.len(), truncated: c.request.cut },
        },
        response: response.map(|r| plain::ResponseHead {
            status: c.status,
            content_type: c.response_type.as_deref(),
            body: plain::BodyLen { bytes: r.bytes.len(), truncated: r.cut },
        }),
        messages: c.messages.iter().map(|(from, text)| plain::Message { from, text }).collect(),
        messages_truncated: c.messages_cut,
    };
    let resp_bytes = response.map_or(&[][..], |r| &r.bytes);
    let Some(text) = plain::write(&head, &c.request.bytes, resp_bytes) else { return };
    let bytes = text.len() as u64;
    match sealing::seal(sealer, &recorder.recipients, &recorder.names, &id, text) {
        Ok(sealed) => {
            rec.recording = Some(RecordingNote {
                id,
                bytes,
                conversation,
                previous_response,
                response: response_id(&c.response.bytes),
                sealed_sha256: None,
            });
            rec.sealed = Some(sealed);
        }
        Err(e) => {
            tracing::warn!("a recording could not be sealed (not kept): {e}");
            rec.reason.get_or_insert_with(|| format!("recording not sealed: {e}"));
        }
    }
}

/// The `recording` record of a request record that carries a sealed recording: one JSON line
/// (the sealed bytes in base64), written beside the request record. The request record's
/// note gets the SHA-256 of the sealed form as written (write the request record after).
pub fn recording_line(rec: &mut RequestRecord) -> Option<String> {
    #[derive(Serialize)]
    struct Line<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        ts_ms: u64,
        id: &'a str,
        identity: Option<&'a str>,
        user: Option<&'a str>,
        src: &'a str,
        sni: Option<&'a str>,
        method: &'a str,
        path: &'a str,
        rule: Option<&'a str>,
        bytes: u64,
        conversation: Option<&'a str>,
        previous_response: Option<&'a str>,
        response: Option<&'a str>,
    }
    let (note, sealed) = (rec.recording.as_ref()?, rec.sealed.as_ref()?);
    let mut meta = Vec::with_capacity(512 + sealed.json_len());
    serde_json::to_writer(
        &mut meta,
        &Line {
            kind: "recording",
            ts_ms: rec.ts_ms,
            id: &note.id,
            identity: rec.identity.as_deref(),
            user: rec.user.as_deref(),
            src: &rec.src,
            sni: rec.sni.as_deref(),
            method: &rec.method,
            path: &rec.path,
            rule: rec.rule.as_deref(),
            bytes: note.bytes,
            conversation: note.conversation.as_deref(),
            previous_response: note.previous_response.as_deref(),
            response: note.response.as_deref(),
        },
    )
    .ok()?;
    // The sealed bytes are appended as the last member, base64 written straight in.
    let mut line = String::from_utf8(meta).ok()?;
    line.pop();
    line.push_str(",\"sealed\":");
    let start = line.len();
    sealed.write_json(&mut line);
    let digest = sha2::Sha256::digest(&line.as_bytes()[start..]);
    line.push('}');
    if let Some(note) = rec.recording.as_mut() {
        note.sealed_sha256 = Some(digest.iter().map(|b| format!("{b:02x}")).collect());
    }
    Some(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_thread_a_conversation_are_read() {
        assert_eq!(
            request_ids(br#"{"model":"m","previous_response_id":"resp_1","input":"x"}"#),
            (None, Some("resp_1".into()))
        );
        assert_eq!(request_ids(br#"{"conversation_id":"c-9"}"#), (Some("c-9".into()), None));
        assert_eq!(request_ids(br#"{"conversation_id":5}"#), (None, None));
        assert_eq!(request_ids(b"not json"), (None, None));
        assert_eq!(request_ids(br#"{"model":"m","input":"x"}"#), (None, None));
        assert_eq!(
            request_ids(br#"{"previous\u005fresponse_id":"resp_2"}"#),
            (None, Some("resp_2".into())),
            "a key spelled with an escape is still read"
        );
        assert_eq!(
            response_id(br#"{ "id" : "resp_abc", "object":"response"}"#),
            Some("resp_abc".into())
        );
        assert_eq!(
            response_id(br#"data: {"id":"chatcmpl-1","choices":[]}"#),
            Some("chatcmpl-1".into())
        );
        assert_eq!(response_id(br#"{"id":"a b"}"#), None);
        assert_eq!(response_id(b"{}"), None);
    }

    #[test]
    fn a_capture_is_bounded_and_sealed_to_the_recipients_only() {
        let key = age::x25519::Identity::generate();
        let other = age::x25519::Identity::generate();
        let r = Recorder::new(RecordMode::RequestResponse, &[key.to_public().to_string()]).unwrap();
        let mut c = Capture { response_on: true, ..Capture::default() };
        c.request_body(b"my secret prompt", false);
        assert!(!format!("{c:?}").contains("secret"), "Debug shows no content");
        c.response_body(&vec![b'x'; MAX_CAPTURE + 10]);
        assert!(c.response.cut && c.response.bytes.len() == MAX_CAPTURE);
        let mut rec = RequestRecord { capture: Some(Box::new(c)), ..RequestRecord::default() };
        let sealer = Sealer::default();
        seal(&r, &sealer, &mut rec);
        let id = rec.recording.clone().unwrap().id;
        // What ships: the recording record, its sealed member opened with the right key.
        let line = recording_line(&mut rec).unwrap();
        assert!(line.contains("\"type\":\"recording\"") && !line.contains("secret"));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["id"], id.as_str());
        // The request record binds the sealed form exactly as written.
        #[derive(serde::Deserialize)]
        struct Raw<'a> {
            #[serde(borrow)]
            sealed: &'a serde_json::value::RawValue,
        }
        let raw: Raw<'_> = serde_json::from_str(&line).unwrap();
        let want: String =
            sha2::Sha256::digest(raw.sealed.get()).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(rec.recording.as_ref().unwrap().sealed_sha256.as_deref(), Some(want.as_str()));
        let sealed: Sealed = serde_json::from_value(v["sealed"].clone()).unwrap();
        let mine: Vec<Box<dyn age::Identity>> = vec![Box::new(key)];
        let plain = open(&sealed, &id, &mine).unwrap();
        let v = read_plain(&plain).unwrap();
        assert_eq!(v["request"]["body"]["text"], "my secret prompt");
        assert_eq!(v["response"]["body"]["truncated"], true);
        assert_eq!(v["response"]["body"]["text"].as_str().unwrap().len(), MAX_CAPTURE);
        let theirs: Vec<Box<dyn age::Identity>> = vec![Box::new(other)];
        assert!(open(&sealed, &id, &theirs).is_err(), "another key cannot read it");
        assert!(open(&sealed, "rec_other", &mine).is_err(), "bound to its id");
        assert!(Recorder::new(RecordMode::Request, &["nope".into()]).is_none());
        // WebSocket messages count as the head holds them: escapes and empty messages too.
        let mut ws = Capture { response_on: true, ..Capture::default() };
        for _ in 0..(MAX_CAPTURE / MESSAGE_WRAPPER + 1) {
            ws.message("client", b"");
        }
        assert!(ws.messages_cut && ws.messages.len() == MAX_CAPTURE / MESSAGE_WRAPPER);
        let mut ws = Capture::default();
        ws.message("client", &vec![0u8; MAX_CAPTURE / 5]);
        assert!(ws.messages_cut, "a NUL is six bytes escaped");
        assert_eq!(json_size("a\"\u{1}é"), 1 + 2 + 6 + 2);
        // The data key is made once and reused (one X25519 wrap for many recordings).
        let mut again = RequestRecord {
            capture: Some(Box::new(Capture::default())),
            ..RequestRecord::default()
        };
        seal(&r, &sealer, &mut again);
        assert_eq!(*again.sealed.unwrap().key, sealed.key);
    }

    #[test]
    fn a_capture_handed_over_is_sealed_by_the_writer_and_one_without_sealing_is_dropped() {
        let key = age::x25519::Identity::generate();
        let r = Recorder::new(RecordMode::Request, &[key.to_public().to_string()]).unwrap();
        let access = Arc::new(crate::access::Access::default());
        let mut c = Capture::default();
        c.request_body(b"the prompt", false);
        let mut rec =
            RequestRecord { capture: Some(Box::new(c.clone())), ..RequestRecord::default() };
        hand_over(&r, &access, &mut rec);
        assert!(rec.recording.is_none() && rec.sealed.is_none(), "not sealed at phase 7");
        seal_captured(&mut rec);
        assert!(rec.capture.is_none(), "the plaintext is dropped");
        let id = rec.recording.clone().unwrap().id;
        let line = recording_line(&mut rec).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let sealed: Sealed = serde_json::from_value(v["sealed"].clone()).unwrap();
        let mine: Vec<Box<dyn age::Identity>> = vec![Box::new(key)];
        let plain = read_plain(&open(&sealed, &id, &mine).unwrap()).unwrap();
        assert_eq!(plain["request"]["body"]["text"], "the prompt");
        // Sealed with the access state's data key, the one later recordings share.
        let mut next =
            RequestRecord { capture: Some(Box::new(c.clone())), ..RequestRecord::default() };
        hand_over(&r, &access, &mut next);
        seal_captured(&mut next);
        assert_eq!(*next.sealed.unwrap().key, sealed.key);
        // Never handed over: dropped, nothing recorded.
        let mut stray = RequestRecord { capture: Some(Box::new(c)), ..RequestRecord::default() };
        seal_captured(&mut stray);
        assert!(stray.capture.is_none() && stray.recording.is_none() && stray.sealed.is_none());
    }
}
