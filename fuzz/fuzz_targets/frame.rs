//! Frame summary and the packet engine's reassembly on arbitrary frames.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_dataplane::reassembly::Reassembly;
use sluice_dataplane::wire::frame::parse;

fuzz_target!(|data: &[u8]| {
    if let Some(f) = parse(data)
        && let Some(t) = f.tcp
    {
        let mut r = Reassembly::new(t.ack);
        let _ = r.add(t.seq, f.payload);
        let _ = r.contiguous();
    }
});
