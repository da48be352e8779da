//! QUIC Initial reader: arbitrary datagrams; never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_dataplane::wire::{quic, tls};

fuzz_target!(|data: &[u8]| {
    if let Ok(init) = quic::read_initial(data) {
        for c in &init.crypto {
            if let Ok(Some(body)) = quic::hello_body(&init.payload[c.start..c.end]) {
                let _ = tls::parse_hello_body(body, true).map(|h| h.ja4());
            }
        }
    }
});
