//! WebSocket frames and messages as either side sends them, permessage-deflate on or off:
//! arbitrary bytes, any split; never panics, every event is bounded by the limit, and the
//! events do not depend on how the bytes were split.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_intercept::ws::deflate::Inflater;
use sluice_intercept::ws::frame::Side;
use sluice_intercept::ws::message::{Assembler, Event};

const MAX: usize = 64 * 1024;

fn run(data: &[u8], side: Side, deflate: bool, split: usize) -> Vec<Event> {
    let inflater = || deflate.then(|| Inflater::new(false));
    let mut a = Assembler::new(side, inflater(), MAX);
    let mut buf = Vec::new();
    let mut events = Vec::new();
    for part in [&data[..split], &data[split..]] {
        buf.extend_from_slice(part);
        loop {
            match a.next(&mut buf) {
                Ok(Some(e)) => {
                    if let Event::Message { payload, .. } = &e {
                        assert!(payload.len() <= MAX);
                    }
                    events.push(e);
                }
                Ok(None) => break,
                Err(_) => return events,
            }
        }
    }
    events
}

fuzz_target!(|data: &[u8]| {
    let [flags, rest @ ..] = data else { return };
    let side = if flags & 1 == 0 { Side::Client } else { Side::Server };
    let deflate = flags & 2 != 0;
    let split = usize::from(flags >> 2).min(rest.len());
    assert_eq!(run(rest, side, deflate, 0), run(rest, side, deflate, split));
});
