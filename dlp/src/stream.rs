//! Response masking for server-sent events: credentials in a model's streamed output are
//! replaced before the client sees them, including a credential split across two events.
//!
//! The masker reads the text deltas of the stream (`choices[*].delta.content` of chat
//! completion chunks, `delta` of Responses API text events). It releases text only up to the
//! last word boundary (whitespace or brackets, quotes, commas) and carries the unfinished word
//! into the next event, so a key can never be cut in two by an event boundary; what it
//! releases is scanned and redacted first. Events keep their order; a carried word moves into
//! a later event (delta text concatenates, so clients see the same text). Pure and bounded:
//! the carry is at most [`MAX_CARRY`] bytes.

use serde_json::Value;

use super::json::redact;
use super::{DetectorSet, Scanner};

/// Most bytes carried between events before they are released anyway.
pub const MAX_CARRY: usize = 4096;
/// Most bytes of one pending (incomplete) event.
pub const MAX_EVENT: usize = 1 << 20;

/// The streaming masker of one response.
#[derive(Debug)]
pub struct SseMasker<'a> {
    scanner: &'a Scanner,
    set: DetectorSet,
    pending: Vec<u8>,
    carry: String,
    template: Option<Value>,
    /// Matches replaced so far, by detector.
    pub masked: Vec<&'static str>,
}

fn is_boundary(c: char) -> bool {
    c.is_whitespace() || ",;()[]{}\"'<>`".contains(c)
}

/// The text delta of an event's JSON, if it has one.
fn text_mut(v: &mut Value) -> Option<&mut String> {
    if v.get("choices").is_some() {
        return match v.pointer_mut("/choices/0/delta/content") {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
    }
    match v.get_mut("delta") {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

impl<'a> SseMasker<'a> {
    /// A masker replacing the matches of `set`.
    pub fn new(scanner: &'a Scanner, set: DetectorSet) -> Self {
        SseMasker {
            scanner,
            set,
            pending: Vec::new(),
            carry: String::new(),
            template: None,
            masked: Vec::new(),
        }
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
            self.flush(out);
            out.append(&mut self.pending);
        }
    }

    /// Ends the stream: what is carried and pending leaves, masked.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.flush(out);
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

    /// Releases the carried text in an event made from the last text event.
    fn flush(&mut self, out: &mut Vec<u8>) {
        if self.carry.is_empty() {
            return;
        }
        let carry = std::mem::take(&mut self.carry);
        let masked = self.mask(&carry);
        match self.template.clone() {
            Some(mut v) => {
                if let Some(t) = text_mut(&mut v) {
                    *t = masked;
                }
                write_event(&v, out);
            }
            None => out.extend_from_slice(masked.as_bytes()),
        }
    }

    fn event(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        let text = String::from_utf8_lossy(raw);
        let data: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:").map(|d| d.strip_prefix(' ').unwrap_or(d)))
            .collect();
        let others = text.lines().any(|l| !l.starts_with("data:") && !l.is_empty());
        let parsed = if data.len() == 1 && !others {
            serde_json::from_str::<Value>(data[0]).ok()
        } else {
            None
        };
        let Some(mut v) = parsed else {
            // Not a JSON data event ([DONE], comments, named events): release what is
            // carried first, then the event, masked as text.
            self.flush(out);
            let masked = self.mask(&text);
            out.extend_from_slice(masked.as_bytes());
            out.extend_from_slice(b"\n\n");
            return;
        };
        let Some(t) = text_mut(&mut v) else {
            self.flush(out);
            write_event(&v, out);
            return;
        };
        let mut whole = std::mem::take(&mut self.carry);
        whole.push_str(t);
        let cut = if whole.len() > MAX_CARRY {
            whole.len()
        } else {
            whole
                .char_indices()
                .rfind(|(_, c)| is_boundary(*c))
                .map_or(0, |(i, c)| i + c.len_utf8())
        };
        let cut = if whole.is_char_boundary(cut) { cut } else { whole.len() };
        self.carry = whole[cut..].to_owned();
        let released = self.mask(&whole[..cut]);
        if let Some(t) = text_mut(&mut v) {
            *t = released;
        }
        self.template = Some(v.clone());
        write_event(&v, out);
    }
}

fn write_event(v: &Value, out: &mut Vec<u8>) {
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
}
