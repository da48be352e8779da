//! The DLP JSON reader against serde_json on hostile bytes: the same verdict and the same
//! strings with the same paths, except numbers beyond f64 (which serde_json refuses and the
//! reader, which never converts numbers, accepts). Never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_dlp::walk;

fuzz_target!(|data: &[u8]| {
    let mut ours = Vec::new();
    let a = walk::strings(data, "$", &mut |p, t, f| ours.push((p.to_owned(), t.to_owned(), f)));
    let mut theirs = Vec::new();
    let b = walk::strings_serde(data, "$", &mut |p, t, f| {
        theirs.push((p.to_owned(), t.to_owned(), f))
    });
    match (a, b) {
        (Ok(()), Ok(())) => assert_eq!(ours, theirs),
        (Err(_), Err(_)) => {}
        (Ok(()), Err(e)) => assert!(e.to_string().contains("number out of range"), "{e}"),
        (Err(e), Ok(())) => panic!("serde_json accepts what the reader refuses: {e}"),
    }
});
