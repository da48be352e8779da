//! Response masking (`mask_responses`), the response body phase: credentials replaced before
//! the client sees them, in server-sent events event by event ([`sluice_dlp::stream::SseMasker`],
//! never buffered whole) and in JSON bodies held up to the inspection limit. Pure: drivers
//! feed the de-framed body and frame what comes out.

use sluice_dlp::stream::SseMasker;

use crate::phases::{Headers, Mask};

/// How a response body is masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskPlan {
    /// Server-sent events, masked event by event.
    Sse,
    /// A JSON body, buffered (up to the inspect limit) and masked whole.
    Json,
}

/// Whether (and how) a response with these headers is masked.
pub(crate) fn plan(_mask: &Mask, headers: &dyn Headers) -> Option<MaskPlan> {
    let ct = headers.header("content-type").unwrap_or_default().to_ascii_lowercase();
    let encoded =
        headers.header("content-encoding").is_some_and(|e| !e.eq_ignore_ascii_case(b"identity"));
    if ct.starts_with(b"text/event-stream") && !encoded {
        return Some(MaskPlan::Sse);
    }
    // JSON, and an event stream compressed although the request asked for none: decoded
    // and masked whole (buffered up to the inspection limit).
    if ct.windows(4).any(|w| w == b"json") || ct.starts_with(b"text/event-stream") {
        return Some(MaskPlan::Json);
    }
    None
}

/// An event stream being masked.
pub fn sse(mask: &Mask) -> SseMasker<'_> {
    SseMasker::new(&mask.scanner, mask.set)
}

/// A whole JSON body, masked.
#[derive(Debug)]
pub struct MaskedJson {
    /// What the client gets.
    pub body: Vec<u8>,
    /// The body is the decoded form of an encoded one: drop its Content-Encoding.
    pub decoded: bool,
    /// Detectors that matched (one per match).
    pub masked: Vec<&'static str>,
}

/// Masks a whole JSON response body, or a compressed event stream (`encoding`: its
/// Content-Encoding, decoded up to `limit`; a body that cannot be decoded goes as it came).
pub fn json(mask: &Mask, body: Vec<u8>, encoding: Option<&[u8]>, limit: usize) -> MaskedJson {
    let encoding = encoding.filter(|e| !e.eq_ignore_ascii_case(b"identity"));
    let decoded = encoding.and_then(|e| sluice_dlp::body::decode(e, &body, limit).ok());
    let plain = decoded.as_deref().unwrap_or(&body);
    if plain.starts_with(b"data:") || plain.starts_with(b"event:") {
        // A compressed event stream, decoded: masked event by event all the same.
        let mut m = sse(mask);
        let mut out = Vec::with_capacity(plain.len());
        m.feed(plain, &mut out);
        m.finish(&mut out);
        let masked = std::mem::take(&mut m.masked);
        let changed = !masked.is_empty();
        return match (changed, decoded.is_some()) {
            (false, _) => MaskedJson { body, decoded: false, masked },
            (true, d) => MaskedJson { body: out, decoded: d, masked },
        };
    }
    // Token log-probabilities repeat the answer token by token, where no detector sees a
    // whole value: they are dropped from a masked response.
    let stripped = serde_json::from_slice::<serde_json::Value>(plain).ok().and_then(|mut v| {
        sluice_dlp::stream::strip_logprobs(&mut v).then(|| serde_json::to_vec(&v).ok()).flatten()
    });
    let out = sluice_dlp::extract::inspect(
        &mask.scanner,
        &mask.set,
        sluice_dlp::extract::Request {
            content_type: Some(b"application/json"),
            body: stripped.as_deref().unwrap_or(plain),
            redact: true,
            salt: b"",
        },
    );
    let masked = out.findings.iter().map(|f| f.detector).collect();
    match (out.redacted, stripped) {
        (Some(r), _) => MaskedJson { body: r, decoded: decoded.is_some(), masked },
        (None, Some(s)) => MaskedJson { body: s, decoded: decoded.is_some(), masked },
        (None, None) => MaskedJson { body, decoded: false, masked },
    }
}
