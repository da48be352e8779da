//! Document text extraction (zip/OOXML archives and PDF text layers) on hostile bytes: never
//! panics, never returns more than the limit, and a zip bomb or a PDF bomb is an error, not an
//! allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_dlp::docs;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the container the rest is read as.
    let (kind, rest) = data.split_first().map_or((0, data), |(k, r)| (*k, r));
    let mut doc = match kind % 3 {
        0 => b"%PDF-1.7\n".to_vec(),
        1 => b"PK\x03\x04".to_vec(),
        _ => Vec::new(),
    };
    doc.extend_from_slice(rest);
    if let Ok(d) = docs::extract(&doc, 1 << 16) {
        assert!(d.text.len() <= 4 * (1 << 16) + doc.len(), "bounded by the limit");
    }
});
