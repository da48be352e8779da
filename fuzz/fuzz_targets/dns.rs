//! DNS message reader: arbitrary UDP payloads; never panics, bounded work.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_dataplane::wire::dns;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = dns::read(data) {
        assert!(m.answers.len() <= 64);
    }
});
