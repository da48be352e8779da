//! Tests of the JSON reader: against serde_json on generated documents, paths, limits, and
//! the SIMD search for a string's end.

use super::*;

/// The search for a string's end gives the SSE2 loop's answer, whichever loop the CPU
/// runs, at every start in random text of quotes, backslashes, control and high bytes.
#[test]
fn special_agrees_with_the_sse2_loop() {
    let mut rnd = crate::xorshift(0x0dd_ba11);
    let alphabet = b"abc xyz0123\"\\\x01\x1f\x7f\x80\xff\xc3\xa9";
    for _ in 0..3000 {
        let len = (rnd() % 200) as usize;
        let b: Vec<u8> = (0..len)
            .map(|_| match rnd() % 40 {
                0..3 => alphabet[(rnd() % alphabet.len() as u64) as usize],
                _ => b'a' + (rnd() % 26) as u8,
            })
            .collect();
        for at in 0..=b.len() {
            assert_eq!(special(&b, at), special_sse2(&b, at), "{b:?} at {at}");
        }
    }
}

fn both(body: &[u8]) -> (Result<Vec<Seen>, WalkError>, Result<Vec<Seen>, String>) {
    let mut a = Vec::new();
    let ra = strings(body, "$", &mut |p, t, k| {
        a.push((p.to_owned(), t.to_owned(), k));
        None
    });
    let mut b = Vec::new();
    let rb = strings_serde(body, "$", &mut |p, t, k| {
        b.push((p.to_owned(), t.to_owned(), k));
        None
    });
    (ra.map(|()| a), rb.map(|()| b).map_err(|e| e.to_string()))
}

/// Same verdict and the same texts as serde_json, or serde_json refused a number.
fn agree(body: &[u8]) {
    match both(body) {
        (Ok(a), Ok(b)) => {
            assert!(same_visits(&a, &b), "{:?}: {a:?} {b:?}", String::from_utf8_lossy(body))
        }
        (Err(_), Err(_)) => {}
        (Ok(_), Err(e)) if e.contains("number out of range") => {}
        (a, b) => panic!("{:?}: reader {a:?}, serde_json {b:?}", String::from_utf8_lossy(body)),
    }
}

#[test]
fn paths_escapes_and_file_data() {
    let body = br#" {"a\"b":[1,-0.5e+3,true,null,{"k":["x","y\u00e9\ud83d\ude00\n"]}],"file_data":"QUJD","n":{"file_data":[ "z" ]}} "#;
    let (a, _) = both(body);
    let a = a.unwrap();
    let k = |p: &str, t: &str| (p.to_owned(), t.to_owned(), Kind::Key);
    let v = |p: &str, t: &str, kind| (p.to_owned(), t.to_owned(), kind);
    assert_eq!(
        a,
        [
            k("$", "a\"b"),
            v("$.a\"b[0]", "1", Kind::Number),
            v("$.a\"b[1]", "-0.5e+3", Kind::Number),
            k("$.a\"b[4]", "k"),
            v("$.a\"b[4].k[0]", "x", Kind::Value),
            v("$.a\"b[4].k[1]", "y\u{e9}\u{1f600}\n", Kind::Value),
            k("$", "file_data"),
            v("$.file_data", "QUJD", Kind::FileData),
            k("$", "n"),
            k("$.n", "file_data"),
            v("$.n.file_data[0]", "z", Kind::Value),
        ]
    );
    let mut paths = Vec::new();
    let hide = |p: &str, t: &str, kind| {
        paths.push(p.to_owned());
        (kind == Kind::Key && t == "k").then(|| "[hidden]".to_owned())
    };
    let mut hide = hide;
    strings(body, "$", &mut hide).unwrap();
    assert!(paths.contains(&"$.a\"b[4].[hidden][1]".to_owned()), "{paths:?}");
    agree(body);
}

#[test]
fn agrees_with_serde_json_on_edge_cases() {
    let cases: &[&[u8]] = &[
        b"",
        b" ",
        b"{}",
        b"[]",
        b"{} x",
        b"[1,]",
        b"[,1]",
        b"{\"a\"}",
        b"{\"a\":}",
        b"{,}",
        b"{\"a\":1,}",
        b"\"\\ud800\"",
        b"\"\\udc00\"",
        b"\"\\ud800\\u0041\"",
        b"\"\\ud800\\n\"",
        b"\"\\u12\"",
        b"\"\\x\"",
        b"\"a\tb\"",
        b"\"a\x01\"",
        b"\"\xff\"",
        b"01",
        b"-",
        b"1.",
        b"1.e5",
        b"1e",
        b"1e+",
        b"-01",
        b"0.0e-0",
        b"tru",
        b"truex",
        b"nul",
        b"[true false]",
        b"\"abc",
        b"\"\\",
        b"[\"a\" \"b\"]",
        b"\xef\xbb\xbf{}",
        b"{\"a\":\"b\"}}",
        b"1e400",
        b"123456789012345678901234567890",
        b"\"\\/\\b\\f\\r\\t\"",
        b"{\"a\" : [ ] , \"b\" :{ }}",
    ];
    for c in cases {
        agree(c);
    }
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    for n in [126, 127, 128, 129] {
        agree(deep(n).as_bytes());
    }
    assert!(strings(deep(127).as_bytes(), "$", &mut |_, _, _| None).is_ok());
    assert_eq!(strings(deep(128).as_bytes(), "$", &mut |_, _, _| None), Err(WalkError::Depth));
}

/// Every prefix, and random byte mutations, of documents with escapes, long strings
/// (past the sixteen-byte steps) and nesting.
#[test]
fn agrees_with_serde_json_on_prefixes_and_mutations() {
    let docs: [&[u8]; 3] = [
        br#"{"model":"gpt-4o","messages":[{"role":"user","content":"fn main() { println!(\"{:?}\", v); } // a string well past sixteen bytes"}],"n":[1,2.5e-3,{"x":null}]}"#,
        br#"[{"input":[{"type":"input_file","file_data":"data:text/plain;base64,QUJD"}]},"\u00e9\ud83d\ude00 \\ \/ tail of a long enough string"]"#,
        "{\"é\":\"ünïcödé text that runs on and on\",\"k\":[[[\"deep\"]]]}".as_bytes(),
    ];
    for d in docs {
        for cut in 0..=d.len() {
            agree(&d[..cut]);
        }
    }
    let mut rnd = crate::xorshift(0x2545_f491_4f6c_dd1du64);
    let bytes = b"\"\\{}[],: 0123456789.eE+-tfnulrsa\x01\x1f\xc3\xa9u";
    for round in 0..20_000 {
        let mut d = docs[round % docs.len()].to_vec();
        for _ in 0..=(rnd() % 3) {
            let at = (rnd() % d.len() as u64) as usize;
            let b = bytes[(rnd() % bytes.len() as u64) as usize];
            match rnd() % 3 {
                0 => d[at] = b,
                1 => d.insert(at, b),
                _ => {
                    d.remove(at);
                }
            }
        }
        agree(&d);
    }
}
