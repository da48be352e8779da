//! DNS message reader and the ECH hiding of HTTPS records: arbitrary UDP payloads; never
//! panics, bounded work, and a rewritten answer keeps its length.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_dataplane::wire::{dns, svcb};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = dns::read(data) {
        assert!(m.answers.len() <= 64);
    }
    if let Ok(Some(out)) = svcb::hide_ech(data, |n| n.len() % 2 == 0) {
        assert_eq!(out.len(), data.len());
    }
});
