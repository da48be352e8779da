//! The data-plane link's frame decoder on arbitrary bytes, split at an arbitrary point: it
//! never panics, never allocates beyond the frame bound, and what it decodes re-encodes to a
//! frame that decodes to the same message (records frames included, as control reads them).
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_link::{Decoder, Down, UpMessage, encode, encode_records};

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| usize::from(*b) % (data.len().max(1)));
    for up in [true, false] {
        let mut d = Decoder::new();
        d.push(&data[..split]);
        d.push(&data[split..]);
        loop {
            if up {
                match d.up_message() {
                    Ok(Some(m)) => {
                        let mut buf = Vec::new();
                        match &m {
                            UpMessage::Records(r) => {
                                let texts: Vec<&str> = r.iter().collect();
                                assert_eq!(texts.len(), r.len());
                                encode_records(&texts, &mut buf).expect("re-encodes")
                            }
                            UpMessage::Other(o) => encode(o, &mut buf).expect("re-encodes"),
                        }
                        let mut again = Decoder::new();
                        again.push(&buf);
                        assert_eq!(again.up_message().expect("decodes"), Some(m));
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
