//! DLP over hostile bodies: the scanner, extraction (JSON, base64, multipart, forms,
//! charsets, sniffed compression, normalisation), redaction and Content-Encoding decoding
//! never panic; findings have sane spans and matches never overlap.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sluice_dlp::{DetectorSet, Scanner, body, extract};

static SCANNER: OnceLock<Option<Scanner>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Some(scanner) = SCANNER.get_or_init(|| Scanner::new().ok()).as_ref() else { return };
    let set = DetectorSet::all();
    // The first byte picks the body's declared type.
    let (kind, rest) = data.split_first().map_or((0, data), |(k, r)| (*k, r));
    let ct: Option<&[u8]> = match kind % 7 {
        0 => Some(b"application/json"),
        1 => Some(b"text/plain"),
        2 => Some(b"multipart/form-data; boundary=XX"),
        3 => Some(b"application/x-www-form-urlencoded"),
        4 => Some(b"application/json; charset=utf-16le"),
        5 => None,
        _ => Some(b"application/octet-stream"),
    };
    let out = extract::inspect(
        scanner,
        &set,
        extract::Request { content_type: ct, body: rest, redact: true, salt: b"s" },
    );
    for f in &out.findings {
        assert!(f.start <= f.end);
    }
    if let Ok(text) = std::str::from_utf8(rest) {
        let mut ms = Vec::new();
        scanner.scan(text, &set, &mut ms);
        for w in ms.windows(2) {
            assert!(w[0].end <= w[1].start, "overlapping matches");
        }
        for m in &ms {
            assert!(text.is_char_boundary(m.start) && text.is_char_boundary(m.end));
        }
    }
    // A hostile server's event stream, fed in two pieces.
    let mut masker = sluice_dlp::stream::SseMasker::new(scanner, set);
    let mut out = Vec::new();
    let cut = rest.len() / 2;
    masker.feed(&rest[..cut], &mut out);
    masker.feed(&rest[cut..], &mut out);
    masker.finish(&mut out);
    for enc in [&b"gzip"[..], b"deflate", b"br", b"zstd"] {
        let _ = body::decode(enc, rest, 1 << 16);
    }
});
