//! The ClientHello parser on every prefix of real captured hellos (testdata/clienthello,
//! produced by testdata/clienthello/capture.sh).
#![allow(clippy::unwrap_used)]

use sluice_dataplane::wire::tls::{HelloParse, parse_client_hello};

fn load(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/testdata/clienthello/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn check_every_prefix(name: &str, sni: Option<&str>, alpn0: Option<&str>) -> String {
    let bytes = load(name);
    for cut in 0..bytes.len() {
        assert_eq!(
            parse_client_hello(&bytes[..cut], &mut Vec::new()),
            HelloParse::Incomplete,
            "{name}: prefix {cut}"
        );
    }
    let mut scratch = Vec::new();
    let HelloParse::Hello(h) = parse_client_hello(&bytes, &mut scratch) else {
        panic!("{name}: no hello")
    };
    assert_eq!(h.sni(), sni, "{name}");
    assert_eq!(h.alpn_strings().first().map(String::as_str), alpn0, "{name}");
    assert_eq!(h.version, 0x0304, "{name}");
    // Trailing bytes (the client's next records) do not change the result.
    let mut more = bytes.clone();
    more.extend_from_slice(&[0x17, 0x03, 0x03, 0x00, 0x01, 0x00]);
    let mut s2 = Vec::new();
    let HelloParse::Hello(h2) = parse_client_hello(&more, &mut s2) else {
        panic!("{name}: trailing bytes")
    };
    assert_eq!((h2.sni(), h2.ja4()), (h.sni(), h.ja4()));
    h.ja4()
}

#[test]
fn curl() {
    let ja4 = check_every_prefix("curl-api.openai.com.bin", Some("api.openai.com"), Some("h2"));
    assert!(ja4.starts_with("t13d") && ja4.contains("h2_"), "{ja4}");
}

#[test]
fn openssl() {
    let ja4 =
        check_every_prefix("openssl-api.openai.com.bin", Some("api.openai.com"), Some("http/1.1"));
    assert!(ja4.starts_with("t13d") && ja4[..10].ends_with("h1"), "{ja4}");
    check_every_prefix("openssl-example.org.bin", Some("example.org"), None);
    let ja4 = check_every_prefix("openssl-no-sni.bin", None, None);
    assert!(ja4.starts_with("t13i") && ja4[..10].ends_with("00"), "{ja4}");
}

#[test]
fn python_sdk() {
    check_every_prefix("python-sdk-api.openai.com.bin", Some("api.openai.com"), Some("http/1.1"));
}

#[test]
fn post_quantum_hello() {
    // Spans two TCP segments (1739 bytes); see testdata/clienthello/make-pq.py.
    let ja4 = check_every_prefix(
        "synth-x25519mlkem768-api.openai.com.bin",
        Some("api.openai.com"),
        Some("h2"),
    );
    assert!(ja4.starts_with("t13d"), "{ja4}");
    assert!(load("synth-x25519mlkem768-api.openai.com.bin").len() > 1460);
}

#[test]
fn hello_split_across_records() {
    // The same hello re-framed as two TLS records (as large post-quantum hellos may be).
    let bytes = load("curl-api.openai.com.bin");
    let body = &bytes[5..];
    let (a, b) = body.split_at(200);
    let mut two = Vec::new();
    for part in [a, b] {
        two.extend_from_slice(&[0x16, 0x03, 0x01]);
        two.extend_from_slice(&(part.len() as u16).to_be_bytes());
        two.extend_from_slice(part);
    }
    for cut in 0..two.len() {
        assert_eq!(
            parse_client_hello(&two[..cut], &mut Vec::new()),
            HelloParse::Incomplete,
            "prefix {cut}"
        );
    }
    let (mut s1, mut s2) = (Vec::new(), Vec::new());
    let (HelloParse::Hello(x), HelloParse::Hello(y)) =
        (parse_client_hello(&two, &mut s1), parse_client_hello(&bytes, &mut s2))
    else {
        panic!("not parsed")
    };
    assert_eq!((x.sni(), x.version, x.ja4()), (y.sni(), y.version, y.ja4()));
}

#[test]
fn mutations_never_panic() {
    for name in
        ["curl-api.openai.com.bin", "openssl-api.openai.com.bin", "python-sdk-api.openai.com.bin"]
    {
        let bytes = load(name);
        for i in 0..bytes.len() {
            for v in [0x00, 0xff, bytes[i].wrapping_add(1)] {
                let mut m = bytes.clone();
                m[i] = v;
                if let HelloParse::Hello(h) = parse_client_hello(&m, &mut Vec::new()) {
                    let _ = (h.ja4(), h.alpn_strings());
                }
            }
        }
    }
}
