//! Session recording (ARCHITECTURE.md, "Recordings"): for a rule with `record`, the exchange's
//! decoded bodies (the request as the client sent it, the response as the client got it,
//! WebSocket messages both ways) are captured as they pass, bounded, then sealed at phase 7 with
//! age to the customer's X25519 public keys. Only the sealed bytes leave this module: the
//! request record names the recording (id, size, conversation ids), and the binary writes the
//! sealed bytes as a `recording` record beside it. Nothing of a recording is ever in clear
//! outside memory; credentials in headers are withheld before capture. Sealing is envelope
//! encryption: a random AES-256-GCM data key, age-encrypted to the recipients once per ten
//! minutes, seals each recording (its id bound as associated data) and travels with it, so a
//! recording opens on its own with the private key.

use std::io::Write as _;
use std::sync::Arc;

use base64::Engine as _;
use serde::Serialize;
use sluice_rules::RecordMode;

use crate::phases::Headers;
use crate::record::RequestRecord;

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

/// How long one data key seals recordings, and for how many at most.
const KEY_LIFE: std::time::Duration = std::time::Duration::from_secs(600);
const KEY_USES: u64 = 1 << 20;

/// The data key recordings are sealed with (AES-256-GCM), wrapped with age to the recipients
/// once per [`KEY_LIFE`]: the X25519 work is paid once per key, not per recording.
struct DataKey {
    for_recipients: Arc<[String]>,
    key: ring::aead::LessSafeKey,
    /// The key, age-encrypted to the recipients (base64): carried by every recording it seals,
    /// so each opens on its own.
    wrapped: String,
    born: std::time::Instant,
    uses: u64,
}

/// The data keys of a data plane (shared by its connections).
#[derive(Default)]
pub struct Sealer {
    current: std::sync::Mutex<Option<DataKey>>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(…)")
    }
}

/// A sealed recording: the age-wrapped data key, the nonce and the AES-256-GCM ciphertext
/// (the recording's id is the associated data), each base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Sealed {
    /// `aes-256-gcm+age`.
    pub alg: String,
    /// The data key, age-encrypted to the recipients.
    pub key: String,
    /// The nonce.
    pub nonce: String,
    /// The ciphertext and tag.
    pub data: String,
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

    fn new_key(&self) -> Result<DataKey, String> {
        let rng = ring::rand::SystemRandom::new();
        let mut raw = [0u8; 32];
        ring::rand::SecureRandom::fill(&rng, &mut raw).map_err(|_| "no randomness".to_owned())?;
        let enc = age::Encryptor::with_recipients(
            self.recipients.iter().map(|r| r as &dyn age::Recipient),
        )
        .map_err(|e| e.to_string())?;
        let mut wrapped = Vec::with_capacity(256);
        let mut w = enc.wrap_output(&mut wrapped).map_err(|e| e.to_string())?;
        w.write_all(&raw).map_err(|e| e.to_string())?;
        w.finish().map_err(|e| e.to_string())?;
        let key = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &raw)
            .map_err(|_| "bad key".to_owned())?;
        zeroize::Zeroize::zeroize(&mut raw);
        Ok(DataKey {
            for_recipients: self.names.clone(),
            key: ring::aead::LessSafeKey::new(key),
            wrapped: base64::engine::general_purpose::STANDARD.encode(&wrapped),
            born: std::time::Instant::now(),
            uses: 0,
        })
    }

    /// Seals `plaintext` (the recording `id` bound as associated data) with the current data
    /// key, made anew when there is none, it is old or it wraps other recipients.
    fn seal(&self, sealer: &Sealer, id: &str, plaintext: &[u8]) -> Result<Sealed, String> {
        let mut cur = sealer.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let stale = cur.as_ref().is_none_or(|k| {
            k.for_recipients != self.names || k.born.elapsed() > KEY_LIFE || k.uses >= KEY_USES
        });
        if stale {
            *cur = Some(self.new_key()?);
        }
        let Some(k) = cur.as_mut() else { return Err("no data key".into()) };
        k.uses += 1;
        let mut nonce = [0u8; ring::aead::NONCE_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
            .map_err(|_| "no randomness".to_owned())?;
        let mut data = plaintext.to_vec();
        k.key
            .seal_in_place_append_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(id.as_bytes()),
                &mut data,
            )
            .map_err(|_| "sealing failed".to_owned())?;
        let b64 = &base64::engine::general_purpose::STANDARD;
        Ok(Sealed {
            alg: "aes-256-gcm+age".into(),
            key: k.wrapped.clone(),
            nonce: b64.encode(nonce),
            data: b64.encode(&data),
        })
    }
}

/// Opens a recording sealed by [`Recorder`] (`sluicectl sessions show`): the data key with
/// the age `identities`, then the ciphertext.
pub fn open(
    sealed: &Sealed,
    id: &str,
    identities: &[Box<dyn age::Identity>],
) -> Result<Vec<u8>, String> {
    let b64 = &base64::engine::general_purpose::STANDARD;
    if sealed.alg != "aes-256-gcm+age" {
        return Err(format!("unknown sealing {}", sealed.alg));
    }
    let wrapped = b64.decode(&sealed.key).map_err(|e| format!("key: {e}"))?;
    let d = age::Decryptor::new_buffered(&wrapped[..]).map_err(|e| format!("key: {e}"))?;
    let mut r = d
        .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut r, &mut raw).map_err(|e| e.to_string())?;
    let key = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &raw)
        .map_err(|_| "the data key is not 32 bytes".to_owned())?;
    zeroize::Zeroize::zeroize(&mut raw);
    let nonce: [u8; ring::aead::NONCE_LEN] =
        b64.decode(&sealed.nonce).ok().and_then(|n| n.try_into().ok()).ok_or("bad nonce")?;
    let mut data = b64.decode(&sealed.data).map_err(|e| format!("data: {e}"))?;
    let plain = ring::aead::LessSafeKey::new(key)
        .open_in_place(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            ring::aead::Aad::from(id.as_bytes()),
            &mut data,
        )
        .map_err(|_| "the recording does not open: altered, or another recording's".to_owned())?;
    Ok(plain.to_vec())
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
        if self.message_bytes + text.len() > MAX_CAPTURE {
            self.messages_cut = true;
            return;
        }
        self.message_bytes += text.len();
        self.messages.push((from, String::from_utf8_lossy(text).into_owned()));
    }
}

/// A body as the recording holds it: UTF-8 text, or base64 for bytes that are not.
#[derive(Serialize)]
struct Body<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<std::borrow::Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    base64: Option<String>,
    truncated: bool,
}

fn body(b: &Bounded) -> Body<'_> {
    match std::str::from_utf8(&b.bytes) {
        Ok(t) => Body { text: Some(t.into()), base64: None, truncated: b.cut },
        Err(_) => Body {
            text: None,
            base64: Some(base64::engine::general_purpose::STANDARD.encode(&b.bytes)),
            truncated: b.cut,
        },
    }
}

/// The plaintext of a recording (what `sluicectl sessions show` prints after decrypting).
#[derive(Serialize)]
struct Plain<'a> {
    version: u8,
    id: &'a str,
    ts_ms: u64,
    identity: Option<&'a str>,
    user: Option<&'a str>,
    src: &'a str,
    sni: Option<&'a str>,
    rule: Option<&'a str>,
    model: Option<&'a str>,
    request: PlainRequest<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<PlainResponse<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    messages: Vec<PlainMessage<'a>>,
    messages_truncated: bool,
}

#[derive(Serialize)]
struct PlainRequest<'a> {
    method: &'a str,
    target: &'a str,
    headers: &'a [(String, String)],
    body: Body<'a>,
}

#[derive(Serialize)]
struct PlainResponse<'a> {
    status: Option<u16>,
    content_type: Option<&'a str>,
    body: Body<'a>,
}

#[derive(Serialize)]
struct PlainMessage<'a> {
    from: &'a str,
    text: &'a str,
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
}

/// The ids a request body names that thread a conversation.
pub fn request_ids(body: &[u8]) -> (Option<String>, Option<String>) {
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

/// Seals the capture of `rec` (phase 7): the record gets its note, `sealed` the ciphertext.
pub(crate) fn seal(recorder: &Recorder, sealer: &Sealer, rec: &mut RequestRecord) {
    let Some(c) = rec.capture.take() else { return };
    let id = crate::block::random_id("rec_");
    let (conversation, previous_response) = request_ids(&c.request.bytes);
    let plain = Plain {
        version: 1,
        id: &id,
        ts_ms: rec.ts_ms,
        identity: rec.identity.as_deref(),
        user: rec.user.as_deref(),
        src: &rec.src,
        sni: rec.sni.as_deref(),
        rule: rec.rule.as_deref(),
        model: rec.model.as_deref(),
        request: PlainRequest {
            method: &c.method,
            target: &c.target,
            headers: &c.headers,
            body: body(&c.request),
        },
        response: c.response_on.then(|| PlainResponse {
            status: c.status,
            content_type: c.response_type.as_deref(),
            body: body(&c.response),
        }),
        messages: c.messages.iter().map(|(from, text)| PlainMessage { from, text }).collect(),
        messages_truncated: c.messages_cut,
    };
    let Ok(text) = serde_json::to_vec(&plain) else { return };
    match recorder.seal(sealer, &id, &text) {
        Ok(sealed) => {
            rec.recording = Some(RecordingNote {
                id,
                bytes: text.len() as u64,
                conversation,
                previous_response,
                response: response_id(&c.response.bytes),
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
/// (the sealed bytes in base64), written beside the request record.
pub fn recording_line(rec: &RequestRecord) -> Option<String> {
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
        sealed: &'a Sealed,
    }
    let (note, sealed) = (rec.recording.as_ref()?, rec.sealed.as_ref()?);
    serde_json::to_string(&Line {
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
        sealed,
    })
    .ok()
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
        let sealed = rec.sealed.clone().unwrap();
        let id = rec.recording.clone().unwrap().id;
        let mine: Vec<Box<dyn age::Identity>> = vec![Box::new(key)];
        let plain = open(&sealed, &id, &mine).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&plain).unwrap();
        assert_eq!(v["request"]["body"]["text"], "my secret prompt");
        assert_eq!(v["response"]["body"]["truncated"], true);
        let theirs: Vec<Box<dyn age::Identity>> = vec![Box::new(other)];
        assert!(open(&sealed, &id, &theirs).is_err(), "another key cannot read it");
        assert!(open(&sealed, "rec_other", &mine).is_err(), "bound to its id");
        let line = recording_line(&rec).unwrap();
        assert!(line.contains("\"type\":\"recording\"") && !line.contains("secret"));
        assert!(Recorder::new(RecordMode::Request, &["nope".into()]).is_none());
        // The data key is made once and reused (one X25519 wrap for many recordings).
        let mut again = RequestRecord {
            capture: Some(Box::new(Capture::default())),
            ..RequestRecord::default()
        };
        seal(&r, &sealer, &mut again);
        assert_eq!(again.sealed.unwrap().key, sealed.key);
    }
}
