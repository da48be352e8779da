//! What evidence verification reads from bytes an attacker may have written: checkpoint
//! lines (read back exactly as written, or refused) and stored rows of any sequence numbers,
//! links and order, and missing ranges said of them (the walk ends with a report, never a
//! panic or an overflow).
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_audit::{Checkpoint, Link, Row, Signer, Verifier, link};

fuzz_target!(|data: &[u8]| {
    if let Ok(line) = std::str::from_utf8(data)
        && let Ok(cp) = Checkpoint::parse_line(line)
    {
        assert_eq!(Checkpoint::parse_line(&cp.to_line()), Ok(cp));
    }
    // Rows from the bytes: each 11-byte chunk is a sequence number (8 bytes, the first of
    // them often small so chains form), a prev choice, a link choice and a record.
    let signer = Signer::from_secret(&[3; 32]);
    let cp = signer.sign("c", 3, Link([9; 32]), 1);
    let mut v = Verifier::new("c", &signer.public(), cp.into_iter().collect());
    // Ranges said missing, from the first bytes.
    if let [a, b, ..] = data {
        v.expect_gap(u64::from(*a), u64::from(*b), "said");
        v.expect_gap(u64::from(*b), u64::from(*a).saturating_add(3), "also");
    }
    let mut last = Link([0; 32]);
    for (i, c) in data.chunks(11).enumerate() {
        let mut seq = [0u8; 8];
        for (d, s) in seq.iter_mut().zip(c) {
            *d = *s;
        }
        let seq = if c[0] & 0x80 == 0 { u64::from(c[0]) } else { u64::from_le_bytes(seq) };
        let record = c.get(8..).unwrap_or(&[]);
        let prev = if c.get(8).is_some_and(|b| b & 1 == 0) { last } else { Link([c[0]; 32]) };
        let l = if c.get(9).is_some_and(|b| b & 1 == 0) { link(&prev, seq, record) } else { Link([c[1 % c.len()]; 32]) };
        v.push(Row { pos: i as u64, seq, prev, link: l, record });
        last = l;
    }
    let report = v.finish();
    assert!(report.records as usize <= data.len().div_ceil(11));
    for f in &report.findings {
        let _ = f.to_string();
    }
});
