//! The ids a recording reads from attacker-supplied bodies (a request's `conversation_id` and
//! `previous_response_id`, a response's own `id`): arbitrary bytes never panic, and an id read
//! is short and printable.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_intercept::recording::{request_ids, response_id};

fuzz_target!(|data: &[u8]| {
    let (c, p) = request_ids(data);
    for id in [c, p].into_iter().flatten() {
        assert!(!id.is_empty() && id.len() <= 200);
    }
    if let Some(id) = response_id(data) {
        assert!(id.len() <= 200 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
    }
});
