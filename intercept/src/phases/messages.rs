//! The WebSocket message phases: what a client's message (audio, the model it names, DLP over
//! its text) and a server's message (masking) go through, between the upgrade's request
//! phases and the connection's record. Pure; called by the WebSocket driver
//! ([`crate::ws`]).

use crate::block::Refusal;
use crate::dlp;
use crate::mask;
use crate::model::ModelError;
use crate::record::RequestRecord;

use super::Session;

/// What a WebSocket message phase decided.
#[derive(Debug, PartialEq, Eq)]
pub enum MessageVerdict {
    /// Relay the message as it came.
    Forward,
    /// Relay this text instead (redacted or masked).
    Replace(Vec<u8>),
    /// Close the connection (1008) and say why.
    Refuse(Refusal),
}

/// The Realtime event that streams audio.
const AUDIO_EVENT: &str = "input_audio_buffer.append";

#[derive(serde::Deserialize)]
struct Event {
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// The `type` of a JSON event (Realtime, Responses over WebSocket), if it has one.
pub fn event_type(text: &[u8]) -> Option<String> {
    let e: Event = serde_json::from_slice(text).ok()?;
    e.kind.filter(|k| k.len() <= 100)
}

/// Whether an event names its `type` twice: which one the server acts on is its choice, so
/// the engine cannot know what the event does.
fn type_repeated(text: &[u8]) -> bool {
    match serde_json::from_slice::<Event>(text) {
        Err(e) => e.to_string().contains("duplicate field `type`"),
        Ok(_) => false,
    }
}

/// The model a WebSocket event names: its own `model`, or that of the response or session it
/// creates or updates (Realtime `session.update`, `response.create`; Responses
/// `response.create`). A model that is not a string, or an event that is not JSON, cannot be
/// read.
pub fn event_model(text: &[u8]) -> Result<Option<String>, ModelError> {
    let v: serde_json::Value = serde_json::from_slice(text)
        .map_err(|_| ModelError::Unreadable("the event is not valid JSON"))?;
    let mut found: Option<String> = None;
    let places = [v.get("model"), v.pointer("/response/model"), v.pointer("/session/model")];
    for m in places.into_iter().flatten() {
        match m {
            serde_json::Value::Null => {}
            serde_json::Value::String(s) if s.chars().count() <= 200 => match &found {
                Some(f) if f != s => {
                    return Err(ModelError::Ambiguous("the event names two models"));
                }
                _ => found = Some(s.clone()),
            },
            _ => return Err(ModelError::NotString),
        }
    }
    Ok(found)
}

/// Events whose `usage` says what a finished response used, quoted as JSON writes them.
const FINISHED: [&[u8]; 2] = [b"\"response.done\"", b"\"response.completed\""];

/// The client event that asks for a response (counted by a quota like a request).
const CREATE: &str = "response.create";

/// The usage of a server event that finishes a response, if `payload` is one. (Most server
/// messages are deltas: a byte search goes first, the JSON is read only for a candidate.)
fn finished_usage(payload: &[u8]) -> Option<crate::usage::Usage> {
    if !FINISHED.iter().any(|e| payload.windows(e.len()).any(|w| w == *e)) {
        return None;
    }
    let kind = event_type(payload)?;
    if !FINISHED.iter().any(|e| e[1..e.len() - 1] == *kind.as_bytes()) {
        return None;
    }
    crate::usage::last_usage(payload)
}

impl Session {
    /// Request phase of a client's WebSocket message (`text`: a text message, its payload
    /// decoded): audio is counted and refused when the rule says so, text runs the rule's DLP
    /// profile (prompt text in Realtime `conversation.item.create`, `response.create` and
    /// `session.update`, Codex `response.create`: every string of the event is scanned).
    /// `rec` is the message's own record; `stats` the connection's counts.
    pub fn client_message(
        &self,
        text: bool,
        payload: &[u8],
        rec: &mut RequestRecord,
        stats: &mut crate::record::WsStats,
    ) -> MessageVerdict {
        stats.messages_out += 1;
        if !text {
            stats.binary_out += 1;
        }
        // A binary message that is a JSON event is read as text: servers may accept events
        // either way. Other binary messages are audio.
        let json =
            || payload.iter().find(|b| !b.is_ascii_whitespace()).is_some_and(|b| b"{[".contains(b));
        let readable = text || (json() && std::str::from_utf8(payload).is_ok());
        if readable && type_repeated(payload) {
            return MessageVerdict::Refuse(Refusal {
                status: 400,
                code: "ambiguous_request",
                message: "the event names its type twice".into(),
                rule: self.rule.clone(),
                retry_after: None,
            });
        }
        let event = if readable { event_type(payload) } else { None };
        if !readable || event.as_deref() == Some(AUDIO_EVENT) {
            stats.audio_out += 1;
            if self.headers.block_audio {
                return MessageVerdict::Refuse(Refusal::forbidden(
                    "audio_not_allowed",
                    "audio may not be streamed to this service",
                    self.rule.as_deref(),
                ));
            }
            // Audio is not text: nothing for DLP.
            return MessageVerdict::Forward;
        }
        let creates = event.as_deref() == Some(CREATE);
        rec.websocket =
            Some(crate::record::WsStats { record: "message", event, ..Default::default() });
        // Each response asked for is counted by the rule's quota, as a request is.
        if creates && let Err(r) = self.quota_admit(rec) {
            return MessageVerdict::Refuse(r);
        }
        if !self.headers.allowed_models.is_empty() {
            match event_model(payload) {
                Ok(None) => {}
                Ok(Some(m)) if self.headers.allowed_models.contains(&m) => {
                    rec.model = Some(m);
                }
                Ok(Some(m)) => {
                    let r = Refusal::forbidden(
                        "model_not_allowed",
                        format!("model {m} is not allowed"),
                        self.rule.as_deref(),
                    );
                    rec.model = Some(m);
                    return MessageVerdict::Refuse(r);
                }
                Err(e) => return MessageVerdict::Refuse(self.model_refusal(&e)),
            }
        }
        let Some(profile) = &self.dlp else { return MessageVerdict::Forward };
        let input = dlp::Input {
            req: None,
            content_type: Some(b"application/json"),
            body: payload,
            policy: &self.headers,
        };
        match dlp::scan(profile, &input, self.rule.as_deref(), rec) {
            Ok(Some(redacted)) => MessageVerdict::Replace(redacted),
            // A message cannot wait for a reviewer inside a live socket: refused (fail
            // closed), the findings recorded.
            Ok(None) if rec.dlp_action == Some("approve") => {
                MessageVerdict::Refuse(Refusal::forbidden(
                    "approval_required",
                    "this message needs a reviewer's approval, which a WebSocket message cannot \
                     wait for",
                    self.rule.as_deref(),
                ))
            }
            Ok(None) => MessageVerdict::Forward,
            Err(r) => MessageVerdict::Refuse(r),
        }
    }

    /// Response phase of a server's WebSocket text message: the tokens a finished response
    /// reports (Realtime `response.done`, Responses `response.completed`) add up in the
    /// connection's record `rec` and are charged to its quota; credentials are masked as in
    /// server-sent events. `Some`: the masked text to relay instead.
    pub fn server_message(
        &self,
        payload: &[u8],
        rec: &mut RequestRecord,
        stats: &mut crate::record::WsStats,
    ) -> Option<Vec<u8>> {
        stats.messages_in += 1;
        if let Some(u) = finished_usage(payload) {
            let add = |t: &mut Option<u64>, n: u64| *t = Some(t.unwrap_or(0).saturating_add(n));
            add(&mut rec.input_tokens, u.input_tokens);
            add(&mut rec.output_tokens, u.output_tokens);
            add(&mut rec.cached_tokens, u.cached_tokens);
            self.charge_tokens(rec, u.input_tokens.saturating_add(u.output_tokens));
        }
        let m = self.mask.as_ref()?;
        let limit = usize::try_from(self.max_body).unwrap_or(usize::MAX);
        let masked = mask::json(m, payload.to_vec(), None, limit);
        if masked.masked.is_empty() {
            return None;
        }
        rec.response_masked.extend(masked.masked);
        Some(masked.body)
    }
}
