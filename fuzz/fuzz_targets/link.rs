//! The data-plane link's frame decoder on arbitrary bytes, split at an arbitrary point: it
//! never panics, never allocates beyond the frame bound, and what it decodes re-encodes to a
//! frame that decodes to the same message.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_link::{Decoder, Down, Up, encode};

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| usize::from(*b) % (data.len().max(1)));
    for up in [true, false] {
        let mut d = Decoder::new();
        d.push(&data[..split]);
        d.push(&data[split..]);
        loop {
            if up {
                match d.message::<Up>() {
                    Ok(Some(m)) => {
                        let mut buf = Vec::new();
                        encode(&m, &mut buf).expect("re-encodes");
                        let mut again = Decoder::new();
                        again.push(&buf);
                        assert_eq!(again.message::<Up>().expect("decodes"), Some(m));
                    }
                    _ => break,
                }
            } else {
                match d.message::<Down>() {
                    Ok(Some(m)) => {
                        let mut buf = Vec::new();
                        encode(&m, &mut buf).expect("re-encodes");
                        let mut again = Decoder::new();
                        again.push(&buf);
                        assert_eq!(again.message::<Down>().expect("decodes"), Some(m));
                    }
                    _ => break,
                }
            }
        }
    }
});
