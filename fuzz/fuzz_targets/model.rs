//! Reading the model of a request: arbitrary target, content type and body; never panics, and
//! a model it reads is at most 200 characters.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_intercept::model::model_of;

fuzz_target!(|data: &[u8]| {
    // First byte: how much of the rest is the target; second: which content type.
    let [cut, kind, rest @ ..] = data else { return };
    let cut = usize::from(*cut).min(rest.len());
    let (target, body) = rest.split_at(cut);
    let target = String::from_utf8_lossy(target);
    let ctype: Option<&[u8]> = match kind % 5 {
        0 => None,
        1 => Some(b"application/json"),
        2 => Some(b"multipart/form-data; boundary=XX"),
        3 => Some(b"application/x-www-form-urlencoded"),
        _ => Some(b"text/plain"),
    };
    if let Ok(Some(m)) = model_of(&target, ctype, body) {
        assert!(m.chars().count() <= 200);
    }
});
