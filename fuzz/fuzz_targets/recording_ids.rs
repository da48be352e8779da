//! What a recording reads from attacker-supplied bytes: the ids of bodies (a request's
//! `conversation_id` and `previous_response_id`, a response's own `id`), and a recording's
//! plaintext as `sluicectl sessions` reads it back (a forged or damaged one): arbitrary bytes
//! never panic, an id read is short and printable, and a plaintext read names its version.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_intercept::recording::{read_plain, request_ids, response_id};

fuzz_target!(|data: &[u8]| {
    let (c, p) = request_ids(data);
    for id in [c, p].into_iter().flatten() {
        assert!(!id.is_empty() && id.len() <= 200);
    }
    if let Some(id) = response_id(data) {
        assert!(id.len() <= 200 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
    }
    if let Ok(v) = read_plain(data) {
        assert!(matches!(v["version"].as_u64(), Some(1 | 2)));
    }
});
