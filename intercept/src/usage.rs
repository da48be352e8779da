//! Token usage read from model responses (ARCHITECTURE.md, "Interception phases"): the
//! `usage` object OpenAI's endpoints put at the end of a JSON body (chat completions,
//! responses, completions, embeddings) or in the last events of a stream (chat completions
//! with `stream_options.include_usage`, the Responses API's `response.completed`). A response
//! is not buffered for it: the drivers pass its de-framed bytes through a [`Tail`], which keeps
//! the last [`TAIL`] bytes, and the last `usage` object in them is read when the response is
//! over. Pure, bounded, fuzzed (`fuzz_targets/usage.rs`).

use serde::Deserialize;

/// Bytes of a response's end kept to find its usage.
pub const TAIL: usize = 16 * 1024;
/// Most `"usage"` occurrences tried, last first (the word may also be in generated text).
const TRIES: usize = 8;

/// Tokens a response says it used.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Input (prompt) tokens.
    pub input_tokens: u64,
    /// Output (completion) tokens.
    pub output_tokens: u64,
    /// Input tokens served from the prompt cache.
    pub cached_tokens: u64,
}

/// The end of a response body, as it passes.
#[derive(Debug, Default)]
pub struct Tail {
    buf: Vec<u8>,
}

impl Tail {
    /// Takes the next bytes of the body.
    pub fn feed(&mut self, bytes: &[u8]) {
        let bytes = &bytes[bytes.len().saturating_sub(TAIL)..];
        if self.buf.len() + bytes.len() > 2 * TAIL {
            let keep = TAIL.saturating_sub(bytes.len()).min(self.buf.len());
            self.buf.drain(..self.buf.len() - keep);
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The usage the body ended with, if any.
    pub fn usage(&self) -> Option<Usage> {
        let start = self.buf.len().saturating_sub(TAIL);
        last_usage(&self.buf[start..])
    }
}

#[derive(Deserialize)]
struct Details {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct Raw {
    #[serde(alias = "prompt_tokens")]
    input_tokens: Option<u64>,
    #[serde(alias = "completion_tokens")]
    output_tokens: Option<u64>,
    #[serde(alias = "prompt_tokens_details", alias = "input_token_details")]
    input_tokens_details: Option<Details>,
}

/// The last well-formed `"usage": {…}` object in `bytes` that counts tokens.
pub fn last_usage(bytes: &[u8]) -> Option<Usage> {
    const KEY: &[u8] = b"\"usage\"";
    let mut end = bytes.len();
    for _ in 0..TRIES {
        let at = bytes[..end].windows(KEY.len()).rposition(|w| w == KEY)?;
        end = at;
        let rest = &bytes[at + KEY.len()..];
        let skip = rest.iter().take_while(|b| b.is_ascii_whitespace()).count();
        let Some(rest) = rest[skip..].strip_prefix(b":") else { continue };
        let skip = rest.iter().take_while(|b| b.is_ascii_whitespace()).count();
        let rest = &rest[skip..];
        if rest.first() != Some(&b'{') {
            continue;
        }
        let mut it = serde_json::Deserializer::from_slice(rest).into_iter::<Raw>();
        let Some(Ok(raw)) = it.next() else { continue };
        if raw.input_tokens.is_none() && raw.output_tokens.is_none() {
            continue;
        }
        return Some(Usage {
            input_tokens: raw.input_tokens.unwrap_or(0),
            output_tokens: raw.output_tokens.unwrap_or(0),
            cached_tokens: raw.input_tokens_details.and_then(|d| d.cached_tokens).unwrap_or(0),
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_responses_and_streams_say_their_usage() {
        let chat = br#"{"id":"c","choices":[{"message":{"content":"the usage of words"}}],"usage":{"prompt_tokens":5,"completion_tokens":4,"total_tokens":9,"prompt_tokens_details":{"cached_tokens":2}}}"#;
        assert_eq!(
            last_usage(chat),
            Some(Usage { input_tokens: 5, output_tokens: 4, cached_tokens: 2 })
        );
        let responses = br#"{"id":"r","output":[],"usage":{"input_tokens":11,"input_tokens_details":{"cached_tokens":0},"output_tokens":7,"total_tokens":18},"user":null}"#;
        assert_eq!(
            last_usage(responses),
            Some(Usage { input_tokens: 11, output_tokens: 7, cached_tokens: 0 })
        );
        let sse = b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n\
                    data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n\
                    data: [DONE]\n\n";
        assert_eq!(
            last_usage(sse),
            Some(Usage { input_tokens: 3, output_tokens: 1, cached_tokens: 0 })
        );
        // The word in generated text, or a usage without counts, is passed over.
        let text =
            br#"{"usage":{"prompt_tokens":1,"completion_tokens":2},"x":"a \"usage\": {} here"}"#;
        assert_eq!(last_usage(text).map(|u| u.output_tokens), Some(2));
        assert_eq!(last_usage(br#"{"usage": null}"#), None);
        assert_eq!(last_usage(b"no usage here"), None);
    }

    #[test]
    fn the_tail_keeps_the_end_of_any_body() {
        let mut t = Tail::default();
        for _ in 0..1000 {
            t.feed(&[b'x'; 999]);
        }
        t.feed(br#"{"usage":{"input_tokens":4,"output_tokens":2}}"#);
        assert_eq!(t.usage().map(|u| u.input_tokens), Some(4));
        assert!(t.buf.len() <= 2 * TAIL);
        // Split anywhere, fed a byte at a time: the same.
        let body = br#"{"a":1,"usage":{"prompt_tokens":9,"completion_tokens":8}}"#;
        let mut t = Tail::default();
        for b in body {
            t.feed(&[*b]);
        }
        assert_eq!(t.usage().map(|u| (u.input_tokens, u.output_tokens)), Some((9, 8)));
        let mut big = Tail::default();
        big.feed(&[b'y'; 5 * TAIL]);
        assert!(big.buf.len() <= 2 * TAIL && big.usage().is_none());
    }
}
