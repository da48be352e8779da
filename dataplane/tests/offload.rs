//! Offload of decided flows to the kernel fast path, sans-IO: which flows the engine hands
//! over and when it takes them back, and how the fast path's counts reach the records.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::IpAddr;

use common::Drive;
use common::{engine, now};
use etherparse::PacketBuilder;
use sluice_dataplane::engine::{Action, DirKey, Engine, FastEntry, OffloadOp, Settings, Side};
use sluice_dataplane::flow::Timeouts;
use sluice_dataplane::record::Record;
use sluice_dataplane::wire::frame::Proto;

const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const ROUTER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

fn fast() -> Engine {
    engine(Settings { fast_path: true, ..Settings::default() })
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A TCP segment; `c2s` from `client` (inside) to `server`.
#[allow(clippy::too_many_arguments)]
fn tcp(
    client: (&str, u16),
    server: (&str, u16),
    c2s: bool,
    syn: bool,
    ack: bool,
    fin: bool,
    payload: &[u8],
) -> Vec<u8> {
    let ((s, sp), (d, dp), smac, dmac) = if c2s {
        (client, server, CLIENT_MAC, ROUTER_MAC)
    } else {
        (server, client, ROUTER_MAC, CLIENT_MAC)
    };
    let eth = PacketBuilder::ethernet2(smac, dmac);
    let b = match (ip(s), ip(d)) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => unreachable!(),
    };
    // The SYN takes sequence number 0; everything after it starts at 1.
    let mut t = b.tcp(sp, dp, u32::from(!syn), 64_000);
    if syn {
        t = t.syn();
    }
    if ack {
        t = t.ack(1);
    }
    if fin {
        t = t.fin();
    }
    let mut out = Vec::new();
    t.write(&mut out, payload).unwrap();
    out
}

fn udp(src: (&str, u16), dst: (&str, u16), payload: &[u8]) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (ip(src.0), ip(dst.0)) else { unreachable!() };
    let mut out = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, ROUTER_MAC)
        .ipv4(s.octets(), d.octets(), 64)
        .udp(src.1, dst.1)
        .write(&mut out, payload)
        .unwrap();
    out
}

fn ops(e: &mut Engine) -> Vec<OffloadOp> {
    let mut v = Vec::new();
    e.offload_ops_into(&mut v);
    v
}

const ALICE: (&str, u16) = ("10.20.1.10", 40_000);
const IPERF: (&str, u16) = ("198.51.100.80", 5201);

/// SYN, SYN-ACK, ACK of a flow from alice: what the engine offered after the SYN-ACK (the
/// handshake is complete from the wire's point of view there) and after the ACK.
fn handshake(e: &mut Engine, server: (&str, u16)) -> Vec<OffloadOp> {
    let mut out = Vec::new();
    let syn = tcp(ALICE, server, true, true, false, false, &[]);
    assert_eq!(e.feed(Side::Inside, &syn, now(1), &mut out), Action::Forward);
    assert!(ops(e).is_empty(), "nothing is offloaded at the SYN");
    let mut all = Vec::new();
    for (side, f) in [
        (Side::Outside, tcp(ALICE, server, false, true, true, false, &[])),
        (Side::Inside, tcp(ALICE, server, true, false, true, false, &[])),
    ] {
        assert_eq!(e.feed(side, &f, now(2), &mut out), Action::Forward);
        all.extend(ops(e));
    }
    all
}

fn added(server: (&str, u16)) -> OffloadOp {
    let [a, b] = expected_keys(server);
    OffloadOp::Add([FastEntry::forward(a), FastEntry::forward(b)])
}

fn expected_keys(server: (&str, u16)) -> [DirKey; 2] {
    let (c, s) = ((ip(ALICE.0), ALICE.1), (ip(server.0), server.1));
    [
        DirKey { ingress: Side::Inside, vlan: 0, proto: Proto::Tcp, src: c, dst: s },
        DirKey { ingress: Side::Outside, vlan: 0, proto: Proto::Tcp, src: s, dst: c },
    ]
}

#[test]
fn an_allowed_flow_is_offloaded_once_established_and_withdrawn_at_its_close() {
    let mut e = fast();
    let keys = expected_keys(IPERF);
    assert_eq!(handshake(&mut e, IPERF), vec![added(IPERF)]);
    let mut out = Vec::new();
    // Later frames (say, a retransmission the kernel passed up) add nothing.
    let data = tcp(ALICE, IPERF, true, false, true, false, b"hello");
    assert_eq!(e.feed(Side::Inside, &data, now(3), &mut out), Action::Forward);
    assert!(ops(&mut e).is_empty());
    // The kernel forwarded 10 + 4 frames.
    e.offload_counts(&keys[0], 10, 14_000, now(500));
    e.offload_counts(&keys[1], 4, 0, now(500));
    // Counts are totals: the same figure again adds nothing.
    e.offload_counts(&keys[0], 10, 14_000, now(600));
    // FIN both ways: withdrawn at the close.
    let fin_c = tcp(ALICE, IPERF, true, false, true, true, &[]);
    let fin_s = tcp(ALICE, IPERF, false, false, true, true, &[]);
    e.feed(Side::Inside, &fin_c, now(700), &mut out);
    assert!(ops(&mut e).is_empty(), "half closed: still offloaded");
    e.feed(Side::Outside, &fin_s, now(701), &mut out);
    assert_eq!(ops(&mut e), vec![OffloadOp::Remove(keys)]);
    // The last counts read when the entry was removed still reach the record.
    e.offload_counts(&keys[0], 12, 16_000, now(702));
    e.handle_timeout(now(60_000));
    let rec = e.records();
    let Some(Record::Flow(f)) = rec.first() else { panic!("a flow record: {rec:?}") };
    let v = serde_json::to_value(f).unwrap();
    // Engine: SYN, ACK, data, FIN out (4; 5 bytes) + kernel 12 (16,000 bytes);
    // SYN-ACK, FIN in (2) + kernel 4.
    assert_eq!((v["pkts_out"].as_u64(), v["bytes_out"].as_u64()), (Some(16), Some(16_005)));
    assert_eq!((v["pkts_in"].as_u64(), v["bytes_in"].as_u64()), (Some(6), Some(0)));
    assert_eq!(e.counters.offloaded, 1);
    assert_eq!(e.counters.offloaded_frames, 16);
    assert!(ops(&mut e).is_empty(), "withdrawn once");
}

#[test]
fn kernel_counts_keep_an_offloaded_flow_from_idling_out() {
    let timeouts = Timeouts { tcp_established: 10_000, ..Timeouts::default() };
    let mut e = engine(Settings { fast_path: true, timeouts, ..Settings::default() });
    let keys = expected_keys(IPERF);
    assert_eq!(handshake(&mut e, IPERF).len(), 1);
    for (i, t) in [5_000u64, 10_000, 15_000].into_iter().enumerate() {
        e.offload_counts(&keys[0], 100 * (i as u64 + 1), 0, now(t));
        e.handle_timeout(now(t + 1));
        assert!(e.records().iter().all(|r| !matches!(r, Record::Flow(_))));
    }
    assert_eq!(e.flow_count(), 1);
    // Then silence: the flow idles out and leaves the kernel.
    e.handle_timeout(now(26_000));
    assert_eq!(e.flow_count(), 0);
    assert_eq!(ops(&mut e), vec![OffloadOp::Remove(keys)]);
}

/// `frame` (TCP) with sequence number `seq` acknowledging `ack`, its checksum written again.
fn with_seq_ack(frame: &[u8], seq: u32, ack: u32) -> Vec<u8> {
    let mut f = frame.to_vec();
    let at = sluice_dataplane::wire::frame::parse(&f).unwrap().l4_offset;
    f[at + 4..at + 8].copy_from_slice(&seq.to_be_bytes());
    f[at + 8..at + 12].copy_from_slice(&ack.to_be_bytes());
    sluice_dataplane::wire::frame::complete_l4_checksum(&mut f);
    f
}

#[test]
fn tls_flows_are_offloaded_only_after_an_allowing_hello_and_blocked_ones_never() {
    let hello = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/clienthello/curl-api.openai.com.bin"
    ))
    .unwrap();
    let api = ("198.51.100.10", 443);
    // alice (finance): allowed (inspect without a TUN passes it), offloaded after the hello.
    let mut e = fast();
    assert!(handshake(&mut e, api).is_empty(), "pending until the hello");
    let mut out = Vec::new();
    let h = tcp(ALICE, api, true, false, true, false, &hello);
    assert_eq!(e.feed(Side::Inside, &h, now(3), &mut out), Action::Forward);
    assert!(ops(&mut e).is_empty(), "decided on this frame; the next one offloads");
    // Not before the server has acknowledged the hello (a decoy could still be replaced) and
    // the client's next record was read (a second hello could still come).
    let reply = tcp(ALICE, api, false, false, true, false, b"server hello");
    assert_eq!(e.feed(Side::Outside, &reply, now(4), &mut out), Action::Forward);
    assert!(ops(&mut e).is_empty(), "the hello is not acknowledged yet");
    let end = 1 + hello.len() as u32;
    let next = with_seq_ack(
        &tcp(ALICE, api, true, false, true, false, b"\x17\x03\x03\x00\x02ab"),
        end,
        13,
    );
    assert_eq!(e.feed(Side::Inside, &next, now(4), &mut out), Action::Forward);
    assert!(ops(&mut e).is_empty(), "the record after the hello is not acknowledged yet");
    let acked = with_seq_ack(&tcp(ALICE, api, false, false, true, false, &[]), 13, end + 6);
    assert_eq!(e.feed(Side::Outside, &acked, now(4), &mut out), Action::Forward);
    assert_eq!(ops(&mut e), vec![added(api)]);

    // guest (no identity): blocked at the hello, never offloaded.
    let mut e = fast();
    let guest = ("10.20.9.99", 40_001);
    let mut out = Vec::new();
    for (side, f) in [
        (Side::Inside, tcp(guest, api, true, true, false, false, &[])),
        (Side::Outside, tcp(guest, api, false, true, true, false, &[])),
        (Side::Inside, tcp(guest, api, true, false, true, false, &[])),
        (Side::Inside, tcp(guest, api, true, false, true, false, &hello)),
        (Side::Outside, tcp(guest, api, false, false, true, false, b"late")),
    ] {
        e.feed(side, &f, now(5), &mut out);
    }
    assert!(ops(&mut e).is_empty());
    assert_eq!(e.counters.blocked, 1);
    assert_eq!(e.counters.offloaded, 0);
}

#[test]
fn udp_is_offloaded_at_once_but_dns_stays_with_the_engine() {
    let mut e = fast();
    let mut out = Vec::new();
    let d = udp(ALICE, ("198.51.100.80", 5201), b"x");
    assert_eq!(e.feed(Side::Inside, &d, now(1), &mut out), Action::Forward);
    let got = ops(&mut e);
    assert!(matches!(got.as_slice(), [OffloadOp::Add([a, b])]
        if a.key.proto == Proto::Udp && a.key.ingress == Side::Inside
            && b.key.ingress == Side::Outside));
    let q = udp(ALICE, ("10.20.0.1", 53), b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00");
    for t in 2..5 {
        e.feed(Side::Inside, &q, now(t), &mut out);
    }
    assert!(ops(&mut e).is_empty(), "DNS answers are snooped: never offloaded");
}

#[test]
fn without_the_fast_path_nothing_is_offered() {
    let mut e = engine(Settings::default());
    assert!(handshake(&mut e, IPERF).is_empty());
    let mut out = Vec::new();
    e.feed(Side::Inside, &udp(ALICE, IPERF, b"x"), now(3), &mut out);
    assert!(ops(&mut e).is_empty());
    // Counts for a flow the engine never offloaded are ignored.
    e.offload_counts(&expected_keys(IPERF)[0], 1_000, 1_000, now(4));
    e.shutdown(now(5));
    // The TCP flow's record (the table ends flows in no particular order).
    let tcp = e
        .records()
        .iter()
        .filter_map(|r| match r {
            Record::Flow(f) => Some(serde_json::to_value(f).unwrap()),
            _ => None,
        })
        .find(|v| v["proto"] == "tcp")
        .unwrap();
    assert_eq!(tcp["pkts_out"].as_u64(), Some(2), "SYN and ACK only: {tcp}");
}

#[test]
fn a_refused_offload_is_not_retried_nor_withdrawn() {
    let mut e = fast();
    let keys = expected_keys(IPERF);
    assert_eq!(handshake(&mut e, IPERF), vec![added(IPERF)]);
    e.offload_refused(&keys[0]);
    assert_eq!(e.counters.offload_refused, 1);
    let mut out = Vec::new();
    for f in [
        tcp(ALICE, IPERF, true, false, true, false, b"more"),
        tcp(ALICE, IPERF, true, false, true, true, &[]),
        tcp(ALICE, IPERF, false, false, true, true, &[]),
    ] {
        e.feed(Side::Inside, &f, now(9), &mut out);
    }
    assert!(ops(&mut e).is_empty());
}

#[test]
fn shutdown_withdraws_every_offloaded_flow() {
    let mut e = fast();
    handshake(&mut e, IPERF);
    let mut out = Vec::new();
    e.feed(Side::Inside, &udp(ALICE, ("198.51.100.80", 9), b"x"), now(3), &mut out);
    assert_eq!(ops(&mut e).len(), 1);
    e.shutdown(now(4));
    let got = ops(&mut e);
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|o| matches!(o, OffloadOp::Remove(_))));
}
