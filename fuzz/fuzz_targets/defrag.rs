//! IP fragment reassembly on a sequence of arbitrary frames: never panics, stays within its
//! limits, every datagram it makes whole is an unfragmented IP packet, and expiry gives
//! back everything it held.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_dataplane::defrag::{self, Defrag, Limits};
use sluice_dataplane::wire::frame;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        fragments_per_datagram: 16,
        datagrams_per_source: 4,
        bytes_per_source: 16 << 10,
        bytes: 32 << 10,
        timeout_ms: 1_000,
    };
    let mut d = Defrag::new(limits);
    let mut rest = data;
    let mut t = 0u64;
    // Each frame: [len hi][len lo][frame bytes].
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let f = &rest[2..2 + len];
        rest = &rest[2 + len..];
        t += 100;
        if let Some(frag) = defrag::fragment(f)
            && let Ok(Some(whole)) = d.add(&frag, f, t)
        {
            // Not fragmented any more (its transport may still be malformed: the engine
            // then drops it).
            assert!(frame::parse(&whole.frame).is_none_or(|p| !p.fragmented));
            assert!(!whole.fragments.is_empty());
        }
        assert!(d.bytes() <= limits.bytes);
    }
    d.expire(t + limits.timeout_ms);
    assert_eq!((d.pending(), d.bytes()), (0, 0));
});
