//! The engine's timers, driven only by what it asks for (`poll_timeout`), as the binary
//! drives it: idle flows end within the sweep's period past their timeout, statistics come
//! once per interval, and a call at the deadline always moves it (no busy loop).
#![allow(clippy::unwrap_used)]

mod common;

use common::Drive;
use common::{CLIENT_MAC, ROUTER_MAC, engine, now};
use sluice_dataplane::engine::{Action, Settings, Side};
use sluice_dataplane::flow::Timeouts;
use sluice_dataplane::record::Record;

fn udp(sport: u16) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(CLIENT_MAC, ROUTER_MAC)
        .ipv4([10, 20, 1, 10], [198, 51, 100, 80], 64)
        .udp(sport, 5555);
    let mut v = Vec::new();
    b.write(&mut v, b"ping").unwrap();
    v
}

#[test]
fn driven_by_poll_timeout_alone_flows_end_on_time_and_stats_come_each_interval() {
    let timeouts = Timeouts { udp: 2_000, ..Timeouts::default() };
    let mut e = engine(Settings { timeouts, report_interval_ms: 5_000, ..Settings::default() });
    let mut out = Vec::new();
    assert_eq!(e.feed(Side::Inside, &udp(1000), now(0), &mut out), Action::Forward);
    // A second flow, seen later: it ends later.
    assert_eq!(e.feed(Side::Inside, &udp(1001), now(1_234), &mut out), Action::Forward);
    let (mut t, mut stats, mut ends) = (0, Vec::new(), Vec::new());
    while t < 20_000 {
        let next = e.poll_timeout();
        assert!(next >= t, "a deadline in the past: {next} < {t}");
        // The sweep's period bounds the wait (a quarter of the 2 s timeout).
        assert!(next <= t.max(1) + 500, "waits too long: {t} -> {next}");
        t = next;
        e.handle_timeout(now(t));
        assert!(e.poll_timeout() > t, "the deadline did not move at {t}");
        for r in e.records() {
            match r {
                Record::Stats(s) => stats.push(s.ts_ms - now(0).unix_ms),
                Record::Flow(f) if f.event == "end" => ends.push((f.sport, t)),
                _ => {}
            }
        }
    }
    assert_eq!(stats, [5_000, 10_000, 15_000, 20_000]);
    assert_eq!(ends.len(), 2, "{ends:?}");
    for (sport, at) in ends {
        let idle_from = if sport == 1000 { 0 } else { 1_234 };
        let late = at - idle_from - 2_000;
        assert!(late <= 500, "flow {sport} ended {late} ms past its timeout");
    }
}
