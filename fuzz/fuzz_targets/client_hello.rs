//! ClientHello parser: any bytes, any prefix; never panics, never reads out of bounds.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_dataplane::wire::tls::{HelloParse, parse_client_hello};

fuzz_target!(|data: &[u8]| {
    let mut scratch = Vec::new();
    if let HelloParse::Hello(h) = parse_client_hello(data, &mut scratch) {
        assert!(h.ja4().len() > 10);
        let _ = (h.sni(), h.alpn_strings());
    }
});
