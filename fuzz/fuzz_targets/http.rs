//! HTTP request/response heads, explicit-proxy request heads and chunked bodies: arbitrary
//! bytes, any split; never panics, and a chunked body decodes the same whichever way it is
//! split.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_intercept::http::{chunked::ChunkedDecoder, head, proxy_head};

fuzz_target!(|data: &[u8]| {
    let _ = head::parse_request(data);
    let _ = head::parse_response(data, "GET");
    if let Ok(Some(p)) = proxy_head::parse(data) {
        assert!(p.len <= data.len() && p.len <= proxy_head::MAX_PROXY_HEAD);
    }
    let mut whole = Vec::new();
    let r1 = ChunkedDecoder::new().feed(data, &mut whole);
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let mut d = ChunkedDecoder::new();
    let mut parts = Vec::new();
    let r2 = d
        .feed(&data[..split], &mut parts)
        .and_then(|p| if p.consumed < split { Ok(p) } else { d.feed(&data[split..], &mut parts) });
    if let (Ok(a), Ok(b)) = (r1, r2)
        && a.done
        && b.done
    {
        assert_eq!(whole, parts);
    }
});
