//! Reading token usage from a response's end: arbitrary bytes, fed in arbitrary pieces; never
//! panics, holds at most twice its window, and reads the same whole or in pieces.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_intercept::usage::{Tail, last_usage};

fuzz_target!(|data: &[u8]| {
    let [step, rest @ ..] = data else { return };
    let step = usize::from(*step).max(1);
    let mut t = Tail::default();
    for piece in rest.chunks(step) {
        t.feed(piece);
    }
    let whole = last_usage(&rest[rest.len().saturating_sub(sluice_intercept::usage::TAIL)..]);
    assert_eq!(t.usage(), whole);
});
