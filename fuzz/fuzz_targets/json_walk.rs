//! The DLP JSON reader against serde_json on hostile bytes: the same verdict and the same
//! texts (strings, keys, numbers) with the same paths, except numbers beyond f64 (which serde_json refuses and the
//! reader, which never converts numbers, accepts). Never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_dlp::walk;

fuzz_target!(|data: &[u8]| {
    let mut ours: Vec<walk::Seen> = Vec::new();
    let a = walk::strings(data, "$", &mut |p, t, k| {
        ours.push((p.to_owned(), t.to_owned(), k));
        None
    });
    let mut theirs: Vec<walk::Seen> = Vec::new();
    let b = walk::strings_serde(data, "$", &mut |p, t, k| {
        theirs.push((p.to_owned(), t.to_owned(), k));
        None
    });
    match (a, b) {
        (Ok(()), Ok(())) => assert!(walk::same_visits(&ours, &theirs), "{ours:?} {theirs:?}"),
        (Err(_), Err(_)) => {}
        (Ok(()), Err(e)) => assert!(e.to_string().contains("number out of range"), "{e}"),
        (Err(e), Ok(())) => panic!("serde_json accepts what the reader refuses: {e}"),
    }
});
