//! Prompts sent as token ids. `/v1/embeddings` (`input`) and `/v1/completions` (`prompt`)
//! accept an array of integers, or an array of such arrays, instead of text: the model reads
//! the text they encode, so DLP decodes them with the model's tokenizer (tiktoken's
//! encodings, shipped in `tiktoken-rs`) and scans that. Input that cannot be decoded (a
//! model whose tokenizer is not known, ids outside the vocabulary) is an error naming why,
//! and the caller treats it as content DLP could not read. Pure; each encoding is loaded
//! once per process.

use serde_json::Value;
use tiktoken_rs::CoreBPE;
use tiktoken_rs::tokenizer::{Tokenizer, get_tokenizer};

/// Most token ids decoded from one request.
pub const MAX_TOKENS: usize = 1 << 20;

/// Why token ids could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenIdError {
    /// The request names no model, or one whose tokenizer is not known.
    #[error("token ids for a model whose tokenizer is not known ({0})")]
    UnknownModel(String),
    /// An id outside the tokenizer's vocabulary.
    #[error("token ids outside the vocabulary of {0}")]
    OutOfRange(&'static str),
    /// More ids than decoded.
    #[error("more than {MAX_TOKENS} token ids")]
    TooMany,
}

/// The body field that may hold token ids on an API path (`/v1/embeddings`: `input`,
/// `/v1/completions`: `prompt`).
pub fn field_for(path: &str) -> Option<&'static str> {
    match path.trim_end_matches('/') {
        "/v1/embeddings" => Some("input"),
        "/v1/completions" => Some("prompt"),
        _ => None,
    }
}

/// The texts token-id input encodes, with their paths (`$.input`, `$.input[1]`): `None` when
/// the request's `field` is not token ids (text, or absent).
pub fn decode(body: &Value, field: &str) -> Option<Result<Vec<(String, String)>, TokenIdError>> {
    let seqs = sequences(body.get(field)?, field)?;
    let model = body.get("model").and_then(Value::as_str).unwrap_or("");
    Some(decode_all(model, seqs))
}

fn decode_all(
    model: &str,
    seqs: Vec<(String, Vec<u32>)>,
) -> Result<Vec<(String, String)>, TokenIdError> {
    if seqs.iter().map(|(_, s)| s.len()).sum::<usize>() > MAX_TOKENS {
        return Err(TokenIdError::TooMany);
    }
    let (name, bpe) = encoding(model)
        .ok_or_else(|| TokenIdError::UnknownModel(model.chars().take(64).collect()))?;
    seqs.into_iter()
        .map(|(path, ids)| {
            let bytes = bpe.decode_bytes(&ids).map_err(|_| TokenIdError::OutOfRange(name))?;
            // Tokens can split a character; the text is what the model reads either way.
            Ok((path, String::from_utf8_lossy(&bytes).into_owned()))
        })
        .collect()
}

/// `[1, 2, 3]` or `[[1, 2], [3]]` as id sequences with their paths; `None` for anything else.
fn sequences(v: &Value, field: &str) -> Option<Vec<(String, Vec<u32>)>> {
    let ids = |a: &[Value]| {
        a.iter()
            .map(|x| x.as_u64().and_then(|n| u32::try_from(n).ok()))
            .collect::<Option<Vec<u32>>>()
    };
    let items = v.as_array()?;
    if items.is_empty() {
        return None;
    }
    if items.iter().all(Value::is_number) {
        return Some(vec![(format!("$.{field}"), ids(items)?)]);
    }
    if items.iter().all(Value::is_array) {
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            out.push((format!("$.{field}[{i}]"), ids(item.as_array()?)?));
        }
        return Some(out);
    }
    None
}

/// The encoding a model's ids are in, loaded once.
fn encoding(model: &str) -> Option<(&'static str, &'static CoreBPE)> {
    use tiktoken_rs::*;
    Some(match get_tokenizer(model)? {
        Tokenizer::O200kBase => ("o200k_base", o200k_base_singleton()),
        Tokenizer::O200kHarmony => ("o200k_harmony", o200k_harmony_singleton()),
        Tokenizer::Cl100kBase => ("cl100k_base", cl100k_base_singleton()),
        Tokenizer::P50kBase => ("p50k_base", p50k_base_singleton()),
        Tokenizer::P50kEdit => ("p50k_edit", p50k_edit_singleton()),
        Tokenizer::R50kBase | Tokenizer::Gpt2 => ("r50k_base", r50k_base_singleton()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_and_completions_ids_are_decoded() {
        let text = "my card is 4111 1111 1111 1111";
        let ids = tiktoken_rs::cl100k_base_singleton().encode_with_special_tokens(text);
        let body = serde_json::json!({"model": "text-embedding-3-small", "input": ids});
        assert_eq!(decode(&body, "input"), Some(Ok(vec![("$.input".to_owned(), text.to_owned())])));
        let o200k = tiktoken_rs::o200k_base_singleton().encode_with_special_tokens(text);
        let body = serde_json::json!({"model": "gpt-4o-mini", "prompt": [o200k, [9906]]});
        let got = decode(&body, "prompt").unwrap().unwrap();
        assert_eq!(got[0], ("$.prompt[0]".to_owned(), text.to_owned()));
        assert_eq!(got[1].0, "$.prompt[1]");
    }

    #[test]
    fn text_input_is_not_token_ids_and_bad_ids_are_errors() {
        assert_eq!(decode(&serde_json::json!({"model": "gpt-4o", "input": "hi"}), "input"), None);
        assert_eq!(
            decode(&serde_json::json!({"model": "gpt-4o", "input": ["a", "b"]}), "input"),
            None
        );
        assert_eq!(decode(&serde_json::json!({"model": "gpt-4o"}), "input"), None);
        let unknown = serde_json::json!({"model": "mystery-model", "input": [1, 2]});
        assert_eq!(
            decode(&unknown, "input"),
            Some(Err(TokenIdError::UnknownModel("mystery-model".into())))
        );
        let out = serde_json::json!({"model": "text-embedding-3-small", "input": [1, 4_000_000]});
        assert_eq!(decode(&out, "input"), Some(Err(TokenIdError::OutOfRange("cl100k_base"))));
    }
}
