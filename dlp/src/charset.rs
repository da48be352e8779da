//! Bytes to text for scanning, whatever the sender claims. A body that is not UTF-8 is not
//! skipped: UTF-16 and UTF-32 are recognised by their byte-order mark or by the zero bytes of
//! their ASCII characters (RFC 4627's rule), a `charset` parameter is honoured (every
//! WHATWG encoding, through `encoding_rs`), and what is left is read as UTF-8 with invalid
//! sequences replaced, so one bad byte cannot hide the rest. Only bytes that are no text at
//! all (control bytes beyond a few per cent) are binary. Pure.

use std::borrow::Cow;

use encoding_rs::{Encoding, UTF_16BE, UTF_16LE};

/// How the text was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    /// The bytes were UTF-8 (a UTF-8 byte-order mark is dropped).
    Utf8,
    /// Decoded from this encoding.
    Decoded(&'static Encoding),
    /// UTF-32 (little-endian when true), decoded here (`encoding_rs` has no UTF-32).
    Utf32(bool),
    /// UTF-8 with invalid sequences replaced by U+FFFD.
    Lossy,
}

impl Charset {
    /// Name for records ("utf-16le", "latin-1 (windows-1252)", …); `None` for plain UTF-8.
    pub fn label(self) -> Option<&'static str> {
        match self {
            Charset::Utf8 => None,
            Charset::Decoded(e) => Some(e.name()),
            Charset::Utf32(true) => Some("UTF-32LE"),
            Charset::Utf32(false) => Some("UTF-32BE"),
            Charset::Lossy => Some("invalid UTF-8"),
        }
    }

    /// The text back in this charset (for a redacted body); `None` when it cannot be
    /// written in it exactly.
    pub fn encode(self, text: &str) -> Option<Vec<u8>> {
        match self {
            Charset::Utf8 | Charset::Lossy => Some(text.as_bytes().to_vec()),
            Charset::Decoded(e) if e == UTF_16LE => {
                Some(text.encode_utf16().flat_map(u16::to_le_bytes).collect())
            }
            Charset::Decoded(e) if e == UTF_16BE => {
                Some(text.encode_utf16().flat_map(u16::to_be_bytes).collect())
            }
            Charset::Decoded(e) => {
                let (out, _, unmappable) = e.encode(text);
                (!unmappable).then(|| out.into_owned())
            }
            Charset::Utf32(le) => Some(
                text.chars()
                    .flat_map(
                        |c| if le { (c as u32).to_le_bytes() } else { (c as u32).to_be_bytes() },
                    )
                    .collect(),
            ),
        }
    }
}

/// The `charset` parameter of a Content-Type.
fn declared(content_type: Option<&[u8]>) -> Option<&'static Encoding> {
    let ct = std::str::from_utf8(content_type?).ok()?;
    ct.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| Encoding::for_label(v.trim().trim_matches('"').as_bytes()))?
    })
}

/// UTF-16 or UTF-32 recognised from a byte-order mark or zero bytes.
fn wide(b: &[u8]) -> Option<Charset> {
    match b {
        [0xFF, 0xFE, 0, 0, ..] => return Some(Charset::Utf32(true)),
        [0, 0, 0xFE, 0xFF, ..] => return Some(Charset::Utf32(false)),
        [0xFF, 0xFE, ..] => return Some(Charset::Decoded(UTF_16LE)),
        [0xFE, 0xFF, ..] => return Some(Charset::Decoded(UTF_16BE)),
        _ => {}
    }
    if b.len() < 4 {
        return None;
    }
    // Mostly-ASCII text in a wide encoding has zero bytes in fixed lanes.
    let sample = &b[..b.len().min(512) & !3];
    let zeros = |lane: usize, step: usize| {
        sample.iter().skip(lane).step_by(step).filter(|&&x| x == 0).count() * step * 10
            >= sample.len() * 9
    };
    if zeros(1, 4) && zeros(2, 4) && zeros(3, 4) {
        return Some(Charset::Utf32(true));
    }
    if zeros(0, 4) && zeros(1, 4) && zeros(2, 4) {
        return Some(Charset::Utf32(false));
    }
    if zeros(1, 2) {
        return Some(Charset::Decoded(UTF_16LE));
    }
    if zeros(0, 2) {
        return Some(Charset::Decoded(UTF_16BE));
    }
    None
}

fn utf32(b: &[u8], le: bool) -> String {
    let body = match (le, b) {
        (true, [0xFF, 0xFE, 0, 0, rest @ ..]) | (false, [0, 0, 0xFE, 0xFF, rest @ ..]) => rest,
        _ => b,
    };
    body.chunks(4)
        .map(|c| {
            let mut w = [0u8; 4];
            w[..c.len()].copy_from_slice(c);
            let v = if le { u32::from_le_bytes(w) } else { u32::from_be_bytes(w) };
            char::from_u32(v).unwrap_or('\u{fffd}')
        })
        .collect()
}

/// Whether text has so many control characters (or replaced invalid bytes) that it is
/// binary data, not text: more than one in twenty of its first 16 KiB.
pub fn is_binary(text: &str) -> bool {
    let b = &text.as_bytes()[..text.len().min(16 * 1024)];
    // Counted without an early exit, so the loop vectorises.
    let control =
        b.iter().filter(|&&c| c < b' ' && !matches!(c, b'\t' | b'\n' | b'\r' | 0x0c)).count();
    let replaced = match b.is_ascii() {
        true => 0,
        false => memchr::memmem::find_iter(b, "\u{fffd}".as_bytes()).count(),
    };
    let bad = control + replaced;
    bad > 0 && bad * 20 > b.len().max(1)
}

/// The text of `bytes` and how it was read. UTF-8 (the common case) is borrowed.
pub fn decode<'a>(content_type: Option<&[u8]>, bytes: &'a [u8]) -> (Cow<'a, str>, Charset) {
    // Validated once: the common case (UTF-8, no BOM) is borrowed from this.
    let valid = std::str::from_utf8(bytes).ok();
    // A declared charset the bytes belie is not believed: UTF-8 without a zero byte is not
    // UTF-16 (whose ASCII has zero bytes), whatever the header says.
    let plain_utf8 = valid.is_some() && memchr::memchr(0, bytes).is_none();
    let declared = declared(content_type)
        .filter(|e| *e != encoding_rs::UTF_8)
        .filter(|e| !(plain_utf8 && (*e == UTF_16LE || *e == UTF_16BE)));
    let sniffed = wide(bytes).filter(|_| declared.is_none_or(|e| e == UTF_16LE || e == UTF_16BE));
    match sniffed {
        Some(Charset::Utf32(le)) => return (Cow::Owned(utf32(bytes, le)), Charset::Utf32(le)),
        Some(Charset::Decoded(e)) => {
            return (e.decode_with_bom_removal(bytes).0, Charset::Decoded(e));
        }
        _ => {}
    }
    if let Some(e) = declared {
        return (e.decode_with_bom_removal(bytes).0, Charset::Decoded(e));
    }
    match valid {
        Some(t) => (Cow::Borrowed(t.strip_prefix('\u{feff}').unwrap_or(t)), Charset::Utf8),
        None => {
            let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
            (String::from_utf8_lossy(body), Charset::Lossy)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utf16le(s: &str) -> Vec<u8> {
        s.encode_utf16().flat_map(u16::to_le_bytes).collect()
    }

    #[test]
    fn every_way_of_writing_json_is_read() {
        let json = r#"{"messages":[{"content":"card 4111 1111 1111 1111"}]}"#;
        let (t, c) = decode(Some(b"application/json"), json.as_bytes());
        assert_eq!((t.as_ref(), c), (json, Charset::Utf8));
        let le = utf16le(json);
        assert_eq!(decode(None, &le).0, json, "UTF-16LE without a BOM");
        let mut bom = vec![0xFF, 0xFE];
        bom.extend_from_slice(&le);
        assert_eq!(decode(None, &bom).0, json, "with a BOM");
        let be: Vec<u8> = json.encode_utf16().flat_map(u16::to_be_bytes).collect();
        assert_eq!(decode(Some(b"application/json; charset=utf-16be"), &be).0, json);
        let u32le: Vec<u8> = json.chars().flat_map(|c| (c as u32).to_le_bytes()).collect();
        assert_eq!(decode(None, &u32le), (Cow::Owned(json.to_owned()), Charset::Utf32(true)));
        let latin1 = b"{\"content\":\"caf\xe9 4111 1111 1111 1111\"}";
        let (t, c) = decode(Some(b"application/json; charset=ISO-8859-1"), latin1);
        assert_eq!(t, "{\"content\":\"café 4111 1111 1111 1111\"}");
        assert_eq!(c.label(), Some("windows-1252"));
        assert_eq!(c.encode(&t).unwrap(), latin1, "written back as it came");
        let (t, c) = decode(None, latin1);
        assert!(t.contains("4111 1111 1111 1111") && c == Charset::Lossy, "one bad byte");
        assert!(!is_binary(&t));
        assert_eq!(Charset::Decoded(UTF_16LE).encode(json).unwrap(), le);
    }

    #[test]
    fn binary_is_binary() {
        let png =
            b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\x01\0\0\0\x01\0\x08\x06\0\0\0\x5c\x72\xa8\x66";
        let (t, _) = decode(None, png);
        assert!(is_binary(&t));
        assert!(!is_binary("plain text\twith tabs\r\n"));
    }
}
