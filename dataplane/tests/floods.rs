//! SYN floods against the engine: one source's flood is held to its own embryonic limit, a
//! flood of spoofed sources evicts only embryonic flows, and what never completed is
//! summarised per source instead of recorded one by one.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::IpAddr;

use common::Drive;
use common::{CLIENT_MAC, ROUTER_MAC, engine, now};
use etherparse::PacketBuilder;
use sluice_dataplane::engine::{Action, Engine, Settings, Side};
use sluice_dataplane::record::Record;

const SERVER: &str = "198.51.100.80";
const SERVER6: &str = "2001:db8:100::80";

/// A TCP segment between `client`:`sport` and the server's port 443.
fn segment(client: &str, sport: u16, c2s: bool, flags: &str, seq: u32, ack: u32) -> Vec<u8> {
    segment_mac(client, CLIENT_MAC, sport, c2s, flags, seq, ack)
}

/// [`segment`] with the client's MAC.
fn segment_mac(
    client: &str,
    mac: [u8; 6],
    sport: u16,
    c2s: bool,
    flags: &str,
    seq: u32,
    ack: u32,
) -> Vec<u8> {
    let c: IpAddr = client.parse().unwrap();
    let s: IpAddr = if c.is_ipv4() { SERVER } else { SERVER6 }.parse().unwrap();
    let (smac, dmac, src, dst, sp, dp) =
        if c2s { (mac, ROUTER_MAC, c, s, sport, 443) } else { (ROUTER_MAC, mac, s, c, 443, sport) };
    let eth = PacketBuilder::ethernet2(smac, dmac);
    let ip = match (src, dst) {
        (IpAddr::V4(a), IpAddr::V4(b)) => eth.ipv4(a.octets(), b.octets(), 64),
        (IpAddr::V6(a), IpAddr::V6(b)) => eth.ipv6(a.octets(), b.octets(), 64),
        _ => unreachable!(),
    };
    let mut t = ip.tcp(sp, dp, seq, 64_000);
    if flags.contains('S') {
        t = t.syn();
    }
    if flags.contains('A') {
        t = t.ack(ack);
    }
    let mut out = Vec::new();
    t.write(&mut out, &[]).unwrap();
    out
}

fn syn(e: &mut Engine, client: &str, sport: u16, ms: u64) -> Action {
    e.feed(Side::Inside, &segment(client, sport, true, "S", 1000, 0), now(ms), &mut Vec::new())
}

/// SYN, SYN-ACK and ACK of `client`:`sport`.
fn handshake(e: &mut Engine, client: &str, sport: u16, ms: u64) {
    let mut out = Vec::new();
    assert_eq!(syn(e, client, sport, ms), Action::Forward);
    let synack = segment(client, sport, false, "SA", 5000, 1001);
    assert_eq!(e.feed(Side::Outside, &synack, now(ms), &mut out), Action::Forward);
    let ack = segment(client, sport, true, "A", 1001, 5001);
    assert_eq!(e.feed(Side::Inside, &ack, now(ms), &mut out), Action::Forward);
}

fn settings(max_flows: usize, per_source: usize) -> Settings {
    Settings { max_flows, max_embryonic_per_source: per_source, ..Settings::default() }
}

#[test]
fn one_sources_flood_is_held_to_its_own_limit() {
    let mut e = engine(settings(1000, 100));
    for port in 0..1000u16 {
        let a = syn(&mut e, "10.20.9.99", 10_000 + port, u64::from(port));
        // Past its limit, the flooding source's SYNs to a TLS port are dropped (fail closed).
        assert_eq!(a, if port < 100 { Action::Forward } else { Action::Drop });
    }
    assert_eq!(e.flow_count(), 100);
    assert_eq!(e.counters.embryonic_refused, 900);
    assert_eq!(e.counters.flows_evicted, 0, "nobody else's attempt was evicted");
    // Everyone else connects as before, IPv6 too.
    handshake(&mut e, "10.20.1.10", 40_000, 1000);
    handshake(&mut e, "fd00:20:1::10", 40_001, 1000);
    assert_eq!(e.flow_count(), 102);
    for port in 0..200u16 {
        syn(&mut e, "fd00:20:9::99", 20_000 + port, 1000);
    }
    assert_eq!(e.flow_count(), 202, "IPv6 sources are held the same way");
}

#[test]
fn a_host_spoofing_alices_address_fills_only_its_own_count() {
    let mut e = engine(settings(1000, 50));
    let mallory = [2, 0, 0, 0, 0, 0x66];
    for port in 0..200u16 {
        let f = segment_mac("10.20.1.10", mallory, 10_000 + port, true, "S", 1000, 0);
        e.feed(Side::Inside, &f, now(0), &mut Vec::new());
    }
    assert_eq!(e.attempts_of("10.20.1.10".parse().unwrap(), mallory), 50);
    assert_eq!(e.counters.embryonic_refused, 150);
    // alice, from her own MAC, still connects.
    handshake(&mut e, "10.20.1.10", 40_000, 1);
    assert_eq!(e.attempts_of("10.20.1.10".parse().unwrap(), CLIENT_MAC), 0);
}

#[test]
fn every_attempt_counted_is_released_whatever_ends_it() {
    let mut e = engine(settings(100, 1000));
    let alice: IpAddr = "10.20.1.10".parse().unwrap();
    let mut out = Vec::new();
    // Evicted at the cap.
    for port in 0..150u16 {
        syn(&mut e, "10.20.1.10", 10_000 + port, 0);
    }
    assert_eq!((e.attempts(), e.attempts_of(alice, CLIENT_MAC)), (100, 100));
    // Reset by the server, and the port used again by a new SYN.
    let mut rst = segment("10.20.1.10", 10_149, false, "A", 0, 1001);
    rst[14 + 20 + 13] |= 0x04;
    e.feed(Side::Outside, &rst, now(1), &mut out);
    syn(&mut e, "10.20.1.10", 10_149, 2);
    // Completed.
    let synack = segment("10.20.1.10", 10_148, false, "SA", 5000, 1001);
    e.feed(Side::Outside, &synack, now(3), &mut out);
    let ack = segment("10.20.1.10", 10_148, true, "A", 1001, 5001);
    e.feed(Side::Inside, &ack, now(3), &mut out);
    assert_eq!(e.attempts(), 99, "one completed");
    assert_eq!(e.attempts_of(alice, CLIENT_MAC), 99);
    // Timed out.
    e.handle_timeout(now(31_000));
    assert_eq!((e.attempts(), e.attempts_of(alice, CLIENT_MAC)), (0, 0));
    // Drained.
    syn(&mut e, "10.20.1.10", 20_000, 31_000);
    e.shutdown(now(31_001));
    assert_eq!((e.attempts(), e.attempts_of(alice, CLIENT_MAC)), (0, 0));
}

#[test]
fn a_blind_ack_or_a_reset_does_not_complete_a_handshake() {
    let mut e = engine(settings(10, 0));
    let mut out = Vec::new();
    for port in 0..10u16 {
        syn(&mut e, "10.20.9.99", 10_000 + port, 0);
        let synack = segment("10.20.9.99", 10_000 + port, false, "SA", 5000, 1001);
        e.feed(Side::Outside, &synack, now(0), &mut out);
        // A spoofer cannot see the server's sequence number: its ACK is blind.
        let blind = segment("10.20.9.99", 10_000 + port, true, "A", 1001, 12_345);
        e.feed(Side::Inside, &blind, now(0), &mut out);
    }
    assert_eq!(e.attempts(), 10, "still attempts");
    // A reset by the client neither: the flow stays evictable.
    let mut rst = segment("10.20.9.99", 10_000, true, "A", 1001, 5001);
    rst[14 + 20 + 13] |= 0x04;
    e.feed(Side::Inside, &rst, now(1), &mut out);
    handshake(&mut e, "10.20.1.10", 40_000, 2);
    assert_eq!(e.counters.flows_evicted, 1, "the oldest attempt made room for alice");
    assert_eq!(e.counters.flows_refused, 0);
}

#[test]
fn a_completed_handshake_frees_its_sources_slot() {
    let mut e = engine(settings(1000, 4));
    for port in 0..4 {
        assert_eq!(syn(&mut e, "10.20.1.10", 30_000 + port, 0), Action::Forward);
    }
    assert_eq!(syn(&mut e, "10.20.1.10", 30_010, 0), Action::Drop, "at its limit");
    // One of the four completes: the next SYN of that source is taken again.
    let mut out = Vec::new();
    let synack = segment("10.20.1.10", 30_000, false, "SA", 5000, 1001);
    e.feed(Side::Outside, &synack, now(1), &mut out);
    let ack = segment("10.20.1.10", 30_000, true, "A", 1001, 5001);
    e.feed(Side::Inside, &ack, now(1), &mut out);
    assert_eq!(syn(&mut e, "10.20.1.10", 30_011, 2), Action::Forward);
    // A timed-out attempt frees its slot too.
    e.handle_timeout(now(31_000));
    assert_eq!(e.flow_count(), 1, "only the established flow is left");
    for port in 0..4 {
        assert_eq!(syn(&mut e, "10.20.1.10", 31_000 + port, 31_000), Action::Forward);
    }
}

#[test]
fn a_spoofed_flood_at_the_cap_evicts_only_embryonic_flows() {
    let mut e = engine(settings(500, 0));
    for port in 0..10 {
        handshake(&mut e, "10.20.1.10", 40_000 + port, 0);
    }
    // 20,000 SYNs from 20,000 addresses: each is one attempt, under any per-source limit.
    // The server answers each; no client acknowledges: they stay embryonic.
    for i in 0..20_000u32 {
        let src = format!("10.{}.{}.{}", 100 + i / 65_536, (i / 256) % 256, i % 256);
        syn(&mut e, &src, 50_000, 1);
        let synack = segment(&src, 50_000, false, "SA", 5000, 1001);
        e.feed(Side::Outside, &synack, now(1), &mut Vec::new());
    }
    assert_eq!(e.flow_count(), 500, "the table stays at its cap");
    assert_eq!(e.counters.flows_evicted, 20_000 - 490);
    // alice's established flows are all still there: their next segments pass as before.
    for port in 0..10 {
        let ack = segment("10.20.1.10", 40_000 + port, true, "A", 1001, 5001);
        assert_eq!(e.feed(Side::Inside, &ack, now(2), &mut Vec::new()), Action::Forward);
    }
    assert_eq!(e.flow_count(), 500);
    // And a new connection of hers is taken (evicting the oldest attempt).
    handshake(&mut e, "10.20.1.10", 41_000, 3);
    assert_eq!(e.counters.flows_evicted, 20_000 - 490 + 1);
}

#[test]
fn attempts_that_never_complete_are_summarised_per_source() {
    let mut e = engine(settings(10_000, 50));
    for port in 0..80u16 {
        syn(&mut e, "10.20.9.99", 10_000 + port, 10);
    }
    // Two attempts of alice's: one reset by the server, one answered.
    syn(&mut e, "10.20.1.10", 40_000, 20);
    let mut rst = segment("10.20.1.10", 40_000, false, "A", 0, 1001);
    rst[14 + 20 + 13] |= 0x04; // RST
    e.feed(Side::Outside, &rst, now(21), &mut Vec::new());
    handshake(&mut e, "10.20.1.10", 40_001, 30);
    // Past the embryonic timeout and the close linger, one stats interval later.
    e.handle_timeout(now(60_000));
    let records = e.records();
    let flows: Vec<_> = records.iter().filter(|r| matches!(r, Record::Flow(_))).collect::<Vec<_>>();
    assert!(flows.is_empty(), "no attempt recorded one by one: {flows:?}");
    let sums: Vec<_> = records
        .iter()
        .filter_map(|r| match r {
            Record::Embryonic(s) => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(sums.len(), 2, "{sums:?}");
    let alice = sums.iter().find(|s| s.src == "10.20.1.10").unwrap();
    assert_eq!((alice.flows, alice.refused, alice.dports.as_slice()), (1, 0, &[443][..]));
    assert_eq!(alice.dsts, [SERVER]);
    let flood = sums.iter().find(|s| s.src == "10.20.9.99").unwrap();
    assert_eq!((flood.flows, flood.refused, flood.evicted), (50, 30, 0));
    assert_eq!(
        (flood.identity.as_deref(), alice.identity.as_deref()),
        (Some("unknown"), Some("finance"))
    );
    let v = serde_json::to_value(flood).unwrap();
    assert_eq!((v["type"].as_str(), v["event"].as_str()), (Some("flow"), Some("embryonic")));
    // The next interval starts empty.
    e.handle_timeout(now(120_000));
    assert!(!e.records().iter().any(|r| matches!(r, Record::Embryonic(_))));
    // alice's answered flow is still in the table, and recorded at its end as before.
    assert_eq!(e.flow_count(), 1);
    e.shutdown(now(130_000));
    let ended: Vec<_> = e
        .records()
        .into_iter()
        .filter_map(|r| match r {
            Record::Flow(f) => Some((f.src, f.sport)),
            _ => None,
        })
        .collect();
    assert_eq!(ended, [("10.20.1.10".to_owned(), 40_001)]);
}

#[test]
fn past_256_sources_an_interval_the_rest_share_one_summary() {
    let mut e = engine(settings(10_000, 0));
    for i in 0..300u32 {
        syn(&mut e, &format!("10.30.{}.{}", i / 256, i % 256), 50_000, 1);
    }
    e.handle_timeout(now(60_000));
    let sums: Vec<_> = e
        .records()
        .into_iter()
        .filter_map(|r| match r {
            Record::Embryonic(s) => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(sums.len(), 257);
    let rest = sums.last().unwrap();
    assert_eq!((rest.src.as_str(), rest.flows, rest.src_mac.is_none()), ("*", 44, true));
    assert_eq!(sums.iter().map(|s| s.flows).sum::<u64>(), 300);
}

#[test]
fn attempts_in_their_handshake_get_no_periodic_records() {
    let mut e = engine(Settings { report_interval_ms: 1000, ..settings(10_000, 0) });
    for port in 0..100u16 {
        syn(&mut e, "10.20.9.99", 10_000 + port, 0);
    }
    handshake(&mut e, "10.20.1.10", 40_000, 0);
    for s in 1..=5 {
        e.handle_timeout(now(s * 1000));
    }
    let updates: Vec<_> = e
        .records()
        .into_iter()
        .filter_map(|r| match r {
            Record::Flow(f) => Some(f.src),
            _ => None,
        })
        .collect();
    assert_eq!(updates, ["10.20.1.10"; 5], "only the established flow reports");
}

#[test]
fn a_completed_handshake_reset_before_any_data_is_recorded_as_a_flow() {
    // A server that accepts, then resets before any data: a connection that happened,
    // recorded, not summarised as an attempt.
    let mut e = engine(settings(1000, 0));
    handshake(&mut e, "10.20.1.10", 40_000, 0);
    let mut rst = segment("10.20.1.10", 40_000, false, "A", 5001, 1001);
    rst[14 + 20 + 13] |= 0x04;
    e.feed(Side::Outside, &rst, now(1), &mut Vec::new());
    e.shutdown(now(2));
    let records = e.records();
    assert!(records.iter().any(|r| matches!(r, Record::Flow(f) if f.sport == 40_000)));
    assert!(!records.iter().any(|r| matches!(r, Record::Embryonic(_))));
}
