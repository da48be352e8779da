//! Responses the interception engine writes itself, for their reader (ARCHITECTURE.md,
//! "Interception phases"): API clients get OpenAI's error shape with `x-should-retry: false`
//! (the SDKs raise `PermissionDeniedError` and do not retry); browsers get a page saying what
//! was blocked, by which rule, and whom to ask. Pure.

use std::fmt::Write as _;

/// Why the engine answers instead of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status (403, 400, 413, 502).
    pub status: u16,
    /// Machine-readable code (`blocked_by_policy`, `domain_fronting`, …).
    pub code: &'static str,
    /// Human-readable reason (never a payload value or a secret).
    pub message: String,
    /// The rule that decided, if any.
    pub rule: Option<String>,
    /// Seconds after which the same request may succeed (a quota's window ends): the answer
    /// says `retry-after` and `x-should-retry: true`. `None`: retrying will not help.
    pub retry_after: Option<u64>,
}

impl Refusal {
    /// A refusal with status 403.
    pub fn forbidden(code: &'static str, message: impl Into<String>, rule: Option<&str>) -> Self {
        Refusal {
            status: 403,
            code,
            message: message.into(),
            rule: rule.map(str::to_owned),
            retry_after: None,
        }
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        403 => "Forbidden",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

fn json_escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

fn html_escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
}

/// True when the request comes from a browser (it asks for HTML), which gets a page rather
/// than JSON.
pub fn wants_html(accept: Option<&[u8]>) -> bool {
    accept.is_some_and(|a| a.windows(9).any(|w| w.eq_ignore_ascii_case(b"text/html")))
}

/// A request id for a refusal (`req_sluice_` and 24 random hex digits), quoted by users to
/// their security team.
pub fn request_id() -> String {
    random_id("req_sluice_")
}

/// `prefix` and 24 random hex digits (request and approval ids).
pub fn random_id(prefix: &str) -> String {
    hex_id(prefix, &[])
}

/// `prefix` and 24 hex digits: the Unix time in ms (12 digits), then 12 random ones. Such ids
/// sort by time, so a store's index of them grows at its end (recording ids).
pub fn time_ordered_id(prefix: &str, now_ms: u64) -> String {
    hex_id(prefix, &now_ms.to_be_bytes()[2..])
}

/// `prefix`, then 24 hex digits: those of `lead` (at most 12 bytes), then random ones (the
/// thread's CSPRNG, seeded from the OS: no system call per id).
fn hex_id(prefix: &str, lead: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut b = [0u8; 12];
    let n = lead.len().min(12);
    b[..n].copy_from_slice(&lead[..n]);
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut b[n..]);
    let mut s = String::with_capacity(prefix.len() + 24);
    s.push_str(prefix);
    for x in b {
        s.push(char::from(HEX[usize::from(x >> 4)]));
        s.push(char::from(HEX[usize::from(x & 15)]));
    }
    s
}

/// The body of the answer to `r`: its content type and bytes (OpenAI's error shape, or a page
/// for browsers).
pub fn body(r: &Refusal, html: bool, request_id: &str) -> (&'static str, String) {
    let mut message = format!("Blocked by Sluice: {}", r.message);
    if let Some(rule) = &r.rule {
        let _ = write!(message, " (rule {rule})");
    }
    if html {
        let mut b = String::from(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>Blocked by Sluice</title>\
             </head><body><h1>This request was blocked</h1><p>",
        );
        html_escape(&r.message, &mut b);
        b.push_str("</p><p>Rule: <code>");
        html_escape(r.rule.as_deref().unwrap_or("(none)"), &mut b);
        b.push_str("</code> &middot; Code: <code>");
        b.push_str(r.code);
        b.push_str("</code> &middot; Request id: <code>");
        html_escape(request_id, &mut b);
        b.push_str(
            "</code></p><p>If you need this for your work, ask your IT security team and quote \
             the request id.</p></body></html>\n",
        );
        ("text/html; charset=utf-8", b)
    } else {
        let mut b = String::from("{\"error\":{\"message\":\"");
        json_escape(&message, &mut b);
        // A budget used up reads as OpenAI's own rate limits do (the SDKs raise
        // `RateLimitError`); anything else is the policy's.
        let kind = if r.retry_after.is_some() { "rate_limit_exceeded" } else { "policy_violation" };
        b.push_str("\",\"type\":\"");
        b.push_str(kind);
        b.push_str("\",\"param\":null,\"code\":\"");
        b.push_str(r.code);
        b.push_str("\"}}");
        ("application/json", b)
    }
}

/// The full HTTP/1.1 response (head and body) for `r`; the connection closes after it.
pub fn response(r: &Refusal, html: bool, request_id: &str) -> Vec<u8> {
    let (ctype, body) = body(r, html, request_id);
    let retry = match r.retry_after {
        Some(secs) => format!("x-should-retry: true\r\nretry-after: {secs}\r\n"),
        None => "x-should-retry: false\r\n".to_owned(),
    };
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\n{retry}\
         x-request-id: {request_id}\r\nx-sluice-code: {}\r\ncache-control: no-store\r\n\
         connection: close\r\n\r\n",
        r.status,
        reason_phrase(r.status),
        body.len(),
        r.code,
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_24_hex_digits_and_time_ordered_ones_sort_by_time() {
        let (a, b) = (random_id("req_"), random_id("req_"));
        assert!(a.len() == 28 && a[4..].bytes().all(|c| c.is_ascii_hexdigit()) && a != b);
        let early = time_ordered_id("rec_", 1_764_000_000_000);
        let late = time_ordered_id("rec_", 1_764_000_000_001);
        assert_eq!(&early[..16], "rec_019ab697e800", "{early}");
        assert!(early.len() == 28 && early < late);
        assert_ne!(early, time_ordered_id("rec_", 1_764_000_000_000), "random past the time");
    }

    #[test]
    fn json_shape_for_api_clients() {
        let r = Refusal::forbidden("blocked_by_policy", "say \"no\"", Some("r1"));
        let bytes = response(&r, false, "req_1");
        let text = String::from_utf8(bytes).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 403 Forbidden\r\n"));
        assert!(head.contains("x-should-retry: false") && head.contains("x-request-id: req_1"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["type"], "policy_violation");
        assert_eq!(v["error"]["code"], "blocked_by_policy");
        assert!(v["error"]["param"].is_null());
        assert_eq!(v["error"]["message"], "Blocked by Sluice: say \"no\" (rule r1)");
    }

    #[test]
    fn a_used_up_budget_says_when_to_retry() {
        let r = Refusal {
            status: 429,
            code: "quota_exceeded",
            message: "over".into(),
            rule: None,
            retry_after: Some(42),
        };
        let text = String::from_utf8(response(&r, false, "req_3")).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 429 Too Many Requests\r\n"), "{head}");
        assert!(head.contains("x-should-retry: true\r\nretry-after: 42\r\n"), "{head}");
        assert!(!head.contains("x-should-retry: false"));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["type"], "rate_limit_exceeded");
    }

    #[test]
    fn html_for_browsers_is_escaped() {
        assert!(wants_html(Some(b"text/html,application/xhtml+xml")));
        assert!(!wants_html(Some(b"application/json")) && !wants_html(None));
        let r = Refusal::forbidden("blocked_by_policy", "<script>", Some("r&d"));
        let text = String::from_utf8(response(&r, true, "req_2")).unwrap();
        assert!(text.contains("&lt;script&gt;") && text.contains("r&amp;d"));
        assert!(!text.contains("<script>"));
    }
}
