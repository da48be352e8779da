//! Response masking for server-sent events: sensitive data in a model's streamed output is
//! replaced before the client sees them, including a value split across two events.
//!
//! The masker reads the text deltas of the stream: chat-completion chunks
//! (`choices[*].delta.content`, and tool-call arguments `choices[*].delta.tool_calls[*].function.arguments`),
//! Responses API and Realtime events (`delta` of `response.output_text.delta`,
//! `response.function_call_arguments.delta`, …, with their `event:` lines). Each stream of
//! text (a choice's content, one tool call's arguments, one output item's part) is a channel
//! of its own. A channel releases text only up to its last word boundary (whitespace or
//! brackets, quotes, commas) and carries the unfinished word into its next event, so a value
//! can never be cut in two by an event boundary; what it releases is scanned and redacted
//! first. Events keep their order; a carried word moves into a later event of its channel
//! (delta text concatenates, so clients see the same text). Pure and bounded: each carry is at
//! most [`MAX_CARRY`] bytes, and at most [`MAX_CHANNELS`] channels carry at once.

use serde_json::Value;

use super::json::redact;
use super::{DetectorSet, Scanner};

/// Most bytes carried between events before they are released anyway.
pub const MAX_CARRY: usize = 4096;
/// Most bytes of one pending (incomplete) event.
pub const MAX_EVENT: usize = 1 << 20;
/// Most channels carrying text at once; a new one releases the oldest first.
pub const MAX_CHANNELS: usize = 16;

/// One stream of text deltas: what it carries, and its last event (to carry it in).
#[derive(Debug)]
struct Channel {
    key: String,
    carry: String,
    /// The event's lines other than `data:` (`event: …`), and its JSON.
    template: (Vec<String>, Value),
}

/// The streaming masker of one response.
#[derive(Debug)]
pub struct SseMasker<'a> {
    scanner: &'a Scanner,
    set: DetectorSet,
    pending: Vec<u8>,
    channels: Vec<Channel>,
    /// Matches replaced so far, by detector.
    pub masked: Vec<&'static str>,
}

fn is_boundary(c: char) -> bool {
    c.is_whitespace() || ",;()[]{}\"'<>`".contains(c)
}

/// The channel of an event's text delta, if it has one: its key and the text.
fn delta_mut(v: &mut Value) -> Option<(String, &mut String)> {
    if v.get("choices").is_some() {
        let choice = v.pointer_mut("/choices/0")?;
        let index = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
        if choice.pointer("/delta/content").is_some_and(Value::is_string) {
            return match choice.pointer_mut("/delta/content") {
                Some(Value::String(s)) => Some((format!("choice {index}"), s)),
                _ => None,
            };
        }
        let call = choice.pointer_mut("/delta/tool_calls/0")?;
        let call_index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
        return match call.pointer_mut("/function/arguments") {
            Some(Value::String(s)) => Some((format!("choice {index} tool call {call_index}"), s)),
            _ => None,
        };
    }
    let num = |k: &str| v.get(k).and_then(Value::as_u64).map_or(String::new(), |n| n.to_string());
    let key = format!(
        "{} {} {} {}",
        v.get("type").and_then(Value::as_str).unwrap_or(""),
        num("output_index"),
        num("content_index"),
        v.get("item_id").and_then(Value::as_str).unwrap_or("")
    );
    match v.get_mut("delta") {
        Some(Value::String(s)) => Some((key, s)),
        _ => None,
    }
}

impl<'a> SseMasker<'a> {
    /// A masker replacing the matches of `set`.
    pub fn new(scanner: &'a Scanner, set: DetectorSet) -> Self {
        SseMasker { scanner, set, pending: Vec::new(), channels: Vec::new(), masked: Vec::new() }
    }

    fn mask(&mut self, text: &str) -> String {
        let mut ms = Vec::new();
        self.scanner.scan(text, &self.set, &mut ms);
        if ms.is_empty() {
            return text.to_owned();
        }
        self.masked.extend(ms.iter().map(|m| m.detector));
        redact(text, &ms)
    }

    /// Feeds stream bytes (de-chunked); complete events, masked, are appended to `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) {
        self.pending.extend_from_slice(data);
        while let Some((end, sep)) = find_event_end(&self.pending) {
            let event: Vec<u8> = self.pending.drain(..end + sep).collect();
            self.event(&event[..end], out);
        }
        if self.pending.len() > MAX_EVENT {
            // Not SSE as we know it: pass it on (after what is carried).
            self.flush_all(out);
            out.append(&mut self.pending);
        }
    }

    /// Ends the stream: what is carried and pending leaves, masked.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.flush_all(out);
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            match std::str::from_utf8(&rest) {
                Ok(t) => {
                    let m = self.mask(t);
                    out.extend_from_slice(m.as_bytes());
                }
                Err(_) => out.extend_from_slice(&rest),
            }
        }
    }

    /// Releases every channel's carried text, oldest channel first.
    fn flush_all(&mut self, out: &mut Vec<u8>) {
        for ch in std::mem::take(&mut self.channels) {
            self.release(ch, out);
        }
    }

    /// Releases a channel's carried text in an event made from its last one.
    fn release(&mut self, ch: Channel, out: &mut Vec<u8>) {
        if ch.carry.is_empty() {
            return;
        }
        let masked = self.mask(&ch.carry);
        let (lines, mut v) = ch.template;
        if let Some((_, t)) = delta_mut(&mut v) {
            *t = masked;
        }
        write_event(&lines, &v, out);
    }

    fn event(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        let text = String::from_utf8_lossy(raw);
        let data: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:").map(|d| d.strip_prefix(' ').unwrap_or(d)))
            .collect();
        // `event:`, `id:` and `retry:` lines travel with their data; comments and anything
        // else make the event one that is masked as text.
        let lines: Vec<String> =
            text.lines().filter(|l| !l.starts_with("data:")).map(str::to_owned).collect();
        let known = lines
            .iter()
            .all(|l| l.starts_with("event:") || l.starts_with("id:") || l.starts_with("retry:"));
        let parsed = match (data.as_slice(), known) {
            ([one], true) => serde_json::from_str::<Value>(one).ok(),
            _ => None,
        };
        let Some(mut v) = parsed else {
            // Not a JSON data event ([DONE], comments): release what is carried first, then
            // the event, masked as text.
            self.flush_all(out);
            let masked = self.mask(&text);
            out.extend_from_slice(masked.as_bytes());
            out.extend_from_slice(b"\n\n");
            return;
        };
        strip_logprobs(&mut v);
        let Some((key, t)) = delta_mut(&mut v) else {
            // An event without a delta (a done event with the whole text, a usage event):
            // its channels' text goes first, and the event is masked as JSON.
            self.flush_all(out);
            let masked = self.mask_json(&v);
            write_event(&lines, &masked, out);
            return;
        };
        let delta = std::mem::take(t);
        let at = match self.channels.iter().position(|c| c.key == key) {
            Some(i) => i,
            None => {
                if self.channels.len() >= MAX_CHANNELS {
                    let oldest = self.channels.remove(0);
                    self.release(oldest, out);
                }
                self.channels.push(Channel {
                    key,
                    carry: String::new(),
                    template: (Vec::new(), Value::Null),
                });
                self.channels.len() - 1
            }
        };
        let mut whole = std::mem::take(&mut self.channels[at].carry);
        whole.push_str(&delta);
        let cut = if whole.len() > MAX_CARRY {
            whole.len()
        } else {
            whole
                .char_indices()
                .rfind(|(_, c)| is_boundary(*c))
                .map_or(0, |(i, c)| i + c.len_utf8())
        };
        let cut = if whole.is_char_boundary(cut) { cut } else { whole.len() };
        let cut = number_start(&whole, cut);
        let released = self.mask(&whole[..cut]);
        self.channels[at].carry = whole[cut..].to_owned();
        if let Some((_, t)) = delta_mut(&mut v) {
            *t = released;
        }
        self.channels[at].template = (lines.clone(), v.clone());
        write_event(&lines, &v, out);
    }

    /// An event's JSON with every string masked (a `done` event repeats the whole text).
    fn mask_json(&mut self, v: &Value) -> Value {
        match v {
            Value::String(s) => Value::String(self.mask(s)),
            Value::Array(a) => Value::Array(a.iter().map(|x| self.mask_json(x)).collect()),
            Value::Object(m) => {
                Value::Object(m.iter().map(|(k, x)| (k.clone(), self.mask_json(x))).collect())
            }
            other => other.clone(),
        }
    }
}

/// Where a number written with separators (`4111 1111`) that ends `whole[..cut]` starts: it
/// may go on in the next event, so it is carried whole (within [`MAX_CARRY`]).
fn number_start(whole: &str, cut: usize) -> usize {
    if whole.len() > MAX_CARRY {
        return cut;
    }
    let b = &whole.as_bytes()[..cut];
    let mut i = cut;
    while i > 0 && (b[i - 1].is_ascii_digit() || matches!(b[i - 1], b' ' | b'-' | b'.')) {
        i -= 1;
    }
    // The number starts at its first digit, which must start a word (`Mn34` is no number).
    let Some(first) = b[i..].iter().position(u8::is_ascii_digit).map(|k| i + k) else {
        return cut;
    };
    let starts_word = first == 0 || whole[..first].chars().next_back().is_some_and(is_boundary);
    if starts_word { first } else { cut }
}

/// Removes token log-probabilities (`logprobs`, `top_logprobs`) wherever they are: they
/// repeat the answer's tokens one by one, where no detector sees a whole value. True when
/// something was removed.
pub fn strip_logprobs(v: &mut Value) -> bool {
    match v {
        Value::Object(m) => {
            let mut removed = m.remove("logprobs").is_some() | m.remove("top_logprobs").is_some();
            for x in m.values_mut() {
                removed |= strip_logprobs(x);
            }
            removed
        }
        Value::Array(a) => a.iter_mut().fold(false, |r, x| strip_logprobs(x) | r),
        _ => false,
    }
}

fn write_event(lines: &[String], v: &Value, out: &mut Vec<u8>) {
    for l in lines {
        out.extend_from_slice(l.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(&serde_json::to_vec(v).unwrap_or_default());
    out.extend_from_slice(b"\n\n");
}

/// End of the first event (index of its blank line and the separator's length).
fn find_event_end(b: &[u8]) -> Option<(usize, usize)> {
    let lf = b.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = b.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(c)) => Some(if a.0 <= c.0 { a } else { c }),
        (a, c) => a.or(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(s: &str) -> String {
        format!(
            "data: {}\n\n",
            serde_json::json!({"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": s}}]})
        )
    }

    fn texts(out: &[u8]) -> String {
        String::from_utf8_lossy(out)
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|v| {
                v.pointer("/choices/0/delta/content").and_then(Value::as_str).map(str::to_owned)
            })
            .collect()
    }

    #[test]
    fn a_key_split_across_events_is_masked() {
        let scanner = Scanner::new().unwrap();
        let set = DetectorSet::from_names(&["openai_api_key", "aws_access_key_id"]).unwrap();
        let mut m = SseMasker::new(&scanner, set);
        let mut out = Vec::new();
        let key = "sk-proj-Ab12Cd34Ef56Gh78Ij90Kl12Mn34";
        let parts = [
            "Here is the key: ",
            &key[..10],
            &key[10..],
            " and the AWS id AKIAIOSF",
            "ODNN7EXAMPLE.",
            " Done.",
        ];
        // Fed in odd slices of the byte stream, events split anywhere.
        let stream: String =
            parts.iter().map(|p| chunk(p)).collect::<String>() + "data: [DONE]\n\n";
        for piece in stream.as_bytes().chunks(7) {
            m.feed(piece, &mut out);
        }
        m.finish(&mut out);
        let text = texts(&out);
        assert_eq!(
            text,
            "Here is the key: [REDACTED:openai_api_key] and the AWS id [REDACTED:aws_access_key_id]. Done."
        );
        assert!(!String::from_utf8_lossy(&out).contains("Ab12"));
        assert!(String::from_utf8_lossy(&out).ends_with("data: [DONE]\n\n"));
        assert_eq!(m.masked, ["openai_api_key", "aws_access_key_id"]);
    }

    #[test]
    fn plain_streams_pass_with_the_same_text() {
        let scanner = Scanner::new().unwrap();
        let mut m = SseMasker::new(&scanner, DetectorSet::all());
        let mut out = Vec::new();
        for p in ["Hello", " world", ", how", " are you?"] {
            m.feed(chunk(p).as_bytes(), &mut out);
        }
        m.feed(b": comment\n\n", &mut out);
        m.finish(&mut out);
        assert_eq!(texts(&out), "Hello world, how are you?");
        assert!(m.masked.is_empty());
    }

    fn responses_event(kind: &str, delta: &str, output: u64) -> String {
        format!(
            "event: {kind}\ndata: {}\n\n",
            serde_json::json!({"type": kind, "item_id": "msg_1", "output_index": output, "content_index": 0, "delta": delta})
        )
    }

    #[test]
    fn responses_streams_and_tool_call_deltas_are_masked_per_channel() {
        let scanner = Scanner::new().unwrap();
        let set = DetectorSet::from_names(&["openai_api_key", "credit_card"]).unwrap();
        let mut m = SseMasker::new(&scanner, set);
        let mut out = Vec::new();
        let key = "sk-proj-Ab12Cd34Ef56Gh78Ij90Kl12Mn34";
        // Text on output 0 and function arguments on output 1, interleaved, each value split.
        let stream = [
            responses_event("response.output_text.delta", "key: ", 0),
            responses_event("response.output_text.delta", &key[..12], 0),
            responses_event("response.function_call_arguments.delta", "{\"card\":\"4111 1111", 1),
            responses_event("response.output_text.delta", &key[12..], 0),
            responses_event("response.function_call_arguments.delta", " 1111 1111\"}", 1),
            responses_event("response.output_text.delta", " ok", 0),
            format!(
                "event: response.output_text.done\ndata: {}\n\n",
                serde_json::json!({"type": "response.output_text.done", "text": format!("key: {key} ok")})
            ),
        ]
        .concat();
        for piece in stream.as_bytes().chunks(5) {
            m.feed(piece, &mut out);
        }
        m.finish(&mut out);
        let out = String::from_utf8(out).unwrap();
        assert!(!out.contains("Ab12Cd34") && !out.contains("1111 1111"), "{out}");
        let mut by_output = [String::new(), String::new()];
        for e in out.split("\n\n").filter(|e| !e.is_empty()) {
            assert!(e.starts_with("event: response."), "event lines kept: {e}");
            let v: Value = serde_json::from_str(e.split_once("data: ").unwrap().1).unwrap();
            if let (Some(d), Some(o)) = (v["delta"].as_str(), v["output_index"].as_u64()) {
                by_output[o as usize].push_str(d);
            }
        }
        assert_eq!(by_output[0], "key: [REDACTED:openai_api_key] ok");
        assert_eq!(by_output[1], "{\"card\":\"[REDACTED:credit_card]\"}");
        assert!(
            out.contains("\"text\":\"key: [REDACTED:openai_api_key] ok\""),
            "done event: {out}"
        );
    }

    #[test]
    fn chat_tool_call_argument_deltas_are_masked() {
        let scanner = Scanner::new().unwrap();
        let set = DetectorSet::from_names(&["credit_card"]).unwrap();
        let mut m = SseMasker::new(&scanner, set);
        let mut out = Vec::new();
        for piece in ["{\"card\": \"4111 11", "11 1111 1111\"}"] {
            let ev = serde_json::json!({"choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "function": {"arguments": piece}}]}}]});
            m.feed(format!("data: {ev}\n\n").as_bytes(), &mut out);
        }
        m.feed(b"data: [DONE]\n\n", &mut out);
        m.finish(&mut out);
        let args: String = String::from_utf8(out)
            .unwrap()
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|v| {
                v.pointer("/choices/0/delta/tool_calls/0/function/arguments")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(args, "{\"card\": \"[REDACTED:credit_card]\"}");
    }
}
