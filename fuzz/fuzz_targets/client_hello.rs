//! ClientHello parser: any bytes, any prefix; never panics, never reads out of bounds. The
//! JA4 memo gives every hello the fingerprint computed from it, seen before or not.
#![no_main]
use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use sluice_dataplane::wire::tls::{HelloParse, parse_client_hello};

thread_local! {
    static MEMO: RefCell<sluice_dataplane::wire::tls::Ja4Memo> = RefCell::new(sluice_dataplane::wire::tls::Ja4Memo::new(64));
}

fuzz_target!(|data: &[u8]| {
    let mut scratch = Vec::new();
    if let HelloParse::Hello(h) = parse_client_hello(data, &mut scratch) {
        let ja4 = h.ja4();
        assert!(ja4.len() > 10);
        MEMO.with(|m| assert_eq!(*m.borrow_mut().ja4(&h), *ja4));
        let _ = (h.sni(), h.alpn_strings(), h.alpn_raw());
    }
});
