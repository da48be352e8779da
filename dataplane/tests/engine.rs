//! The packet engine without sockets: frames in, verdicts and emitted frames out.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use etherparse::PacketBuilder;
use sluice_dataplane::engine::{Action, Engine, Settings, Side};
use sluice_dataplane::flow::Timeouts;
use sluice_dataplane::record::Record;
use sluice_dataplane::wire::frame;
use sluice_rules::IdentityOverlay;
use sluice_rules::catalog::ShippedOnly;

const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const ROUTER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const ISN: u32 = 1_000;
const SERVER_ISN: u32 = 77_000;

use common::Drive;
use common::engine;

fn hello() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/clienthello/curl-api.openai.com.bin"
    ))
    .unwrap()
}

struct Conn {
    client: IpAddr,
    server: IpAddr,
    sport: u16,
}

#[derive(Clone, Copy)]
enum Flags {
    Syn,
    SynAck,
    Ack,
    Psh,
}

impl Conn {
    fn frame(&self, c2s: bool, seq: u32, ack: u32, flags: Flags, payload: &[u8]) -> Vec<u8> {
        let (smac, dmac, src, dst, sp, dp) = if c2s {
            (CLIENT_MAC, ROUTER_MAC, self.client, self.server, self.sport, 443)
        } else {
            (ROUTER_MAC, CLIENT_MAC, self.server, self.client, 443, self.sport)
        };
        let eth = PacketBuilder::ethernet2(smac, dmac);
        let ip = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
            (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
            _ => unreachable!(),
        };
        let mut t = ip.tcp(sp, dp, seq, 64_000);
        t = match flags {
            Flags::Syn => t.syn(),
            Flags::SynAck => t.syn().ack(ack),
            Flags::Ack => t.ack(ack),
            Flags::Psh => t.psh().ack(ack),
        };
        let mut out = Vec::new();
        t.write(&mut out, payload).unwrap();
        out
    }
}

use common::now;

/// Runs the handshake, then sends `segments` (offset, bytes) of the client stream.
fn run(
    e: &mut Engine,
    c: &Conn,
    segments: &[(usize, Vec<u8>)],
) -> (Vec<Action>, Vec<(Side, Vec<u8>)>) {
    let mut out = Vec::new();
    assert_eq!(
        e.feed(Side::Inside, &c.frame(true, ISN, 0, Flags::Syn, &[]), now(0), &mut out),
        Action::Forward
    );
    assert_eq!(
        e.feed(
            Side::Outside,
            &c.frame(false, SERVER_ISN, ISN + 1, Flags::SynAck, &[]),
            now(1),
            &mut out
        ),
        Action::Forward
    );
    assert_eq!(
        e.feed(
            Side::Inside,
            &c.frame(true, ISN + 1, SERVER_ISN + 1, Flags::Ack, &[]),
            now(2),
            &mut out
        ),
        Action::Forward
    );
    let actions = segments
        .iter()
        .map(|(off, bytes)| {
            let f = c.frame(true, ISN + 1 + *off as u32, SERVER_ISN + 1, Flags::Psh, bytes);
            e.feed(Side::Inside, &f, now(3), &mut out)
        })
        .collect();
    (actions, out)
}

fn v4(client: &str) -> Conn {
    Conn {
        client: client.parse().unwrap(),
        server: "198.51.100.10".parse().unwrap(),
        sport: 40_000,
    }
}

fn assert_resets(out: &[(Side, Vec<u8>)], c: &Conn, client_next: u32) {
    assert_eq!(out.len(), 2, "two resets");
    let to_client = frame::parse(&out[0].1).unwrap();
    assert_eq!((out[0].0, to_client.src, to_client.dst), (Side::Inside, c.server, c.client));
    let t = to_client.tcp.unwrap();
    assert!(t.rst);
    assert_eq!((t.seq, t.ack), (SERVER_ISN + 1, client_next));
    let to_server = frame::parse(&out[1].1).unwrap();
    assert_eq!((out[1].0, to_server.src, to_server.dst), (Side::Outside, c.client, c.server));
    assert_eq!(to_server.tcp.unwrap().seq, ISN + 1);
}

#[test]
fn whole_hello_in_one_segment_is_decided_in_place() {
    let mut e = engine(Settings::default());
    let c = v4("10.20.1.10");
    let (actions, out) = run(&mut e, &c, &[(0, hello())]);
    assert_eq!(actions, vec![Action::Forward]);
    assert!(out.is_empty(), "nothing held, nothing copied");
    e.shutdown(now(9));
    let Record::Flow(f) = &e.records()[0] else { panic!("flow record first") };
    let v = serde_json::to_value(f).unwrap();
    assert_eq!((v["sni"].as_str(), v["verdict"].as_str()), (Some("api.openai.com"), Some("allow")));
}

#[test]
fn allowed_hello_is_held_then_released_in_order() {
    let mut e = engine(Settings::default());
    let c = v4("10.20.1.10");
    let h = hello();
    let (actions, out) = run(&mut e, &c, &[(0, h[..100].to_vec()), (100, h[100..].to_vec())]);
    assert_eq!(actions, vec![Action::Drop, Action::Drop]);
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|(s, _)| *s == Side::Outside));
    assert_eq!(frame::parse(&out[0].1).unwrap().payload, &h[..100]);
    assert_eq!(frame::parse(&out[1].1).unwrap().payload, &h[100..]);
    // Fast path afterwards.
    let mut o = Vec::new();
    let later = c.frame(true, ISN + 1 + h.len() as u32, SERVER_ISN + 1, Flags::Psh, b"x");
    assert_eq!(e.feed(Side::Inside, &later, now(4), &mut o), Action::Forward);
    assert!(o.is_empty());
}

#[test]
fn guest_is_reset_on_both_sides() {
    let mut e = engine(Settings::default());
    let c = v4("10.20.9.99");
    let h = hello();
    let (actions, out) = run(&mut e, &c, &[(0, h.clone())]);
    assert_eq!(actions, vec![Action::Drop]);
    assert_resets(&out, &c, ISN + 1 + h.len() as u32);
    // Later client segments are dropped.
    let mut o = Vec::new();
    assert_eq!(
        e.feed(
            Side::Inside,
            &c.frame(true, ISN + 1, SERVER_ISN + 1, Flags::Psh, &h),
            now(5),
            &mut o
        ),
        Action::Drop
    );
    e.handle_timeout(now(60_000));
    let recs: Vec<_> = e.records().into_iter().filter(|r| matches!(r, Record::Flow(_))).collect();
    assert_eq!(recs.len(), 1);
    let r = serde_json::to_value(&recs[0]).unwrap();
    assert_eq!(r["sni"], "api.openai.com");
    assert_eq!(r["rule"], "unknown-no-openai");
    assert_eq!(r["verdict"], "block");
    assert_eq!(r["identity"], "unknown");
    assert!(r["ja4"].as_str().unwrap().starts_with("t13d"));
}

#[test]
fn ipv6_guest_is_reset() {
    let mut e = engine(Settings::default());
    let c = Conn {
        client: "fd20::9:99".parse().unwrap(),
        server: "2001:db8:5100::10".parse().unwrap(),
        sport: 40_001,
    };
    let h = hello();
    let (_, out) = run(&mut e, &c, &[(0, h.clone())]);
    assert_resets(&out, &c, ISN + 1 + h.len() as u32);
}

#[test]
fn one_byte_segments_and_out_of_order() {
    let h = hello();
    let mut e = engine(Settings { max_held_frames: 4096, ..Settings::default() });
    let c = v4("10.20.9.99");
    let ones: Vec<_> = h.iter().enumerate().map(|(i, b)| (i, vec![*b])).collect();
    let (actions, out) = run(&mut e, &c, &ones);
    assert!(actions.iter().all(|a| *a == Action::Drop));
    assert_resets(&out, &c, ISN + 1 + h.len() as u32);

    let mut e = engine(Settings::default());
    let c = v4("10.20.1.10");
    let segs = vec![(300, h[300..].to_vec()), (0, h[..150].to_vec()), (150, h[150..300].to_vec())];
    let (_, out) = run(&mut e, &c, &segs);
    // Released in arrival order, all of them.
    let payloads: Vec<_> =
        out.iter().map(|(_, f)| frame::parse(f).unwrap().payload.to_vec()).collect();
    assert_eq!(payloads, segs.iter().map(|(_, b)| b.clone()).collect::<Vec<_>>());
}

#[test]
fn retransmits_are_fine_but_conflicting_overlap_is_blocked() {
    let h = hello();
    let mut e = engine(Settings::default());
    let c = v4("10.20.1.10");
    let (_, out) = run(
        &mut e,
        &c,
        &[(0, h[..200].to_vec()), (100, h[100..200].to_vec()), (200, h[200..].to_vec())],
    );
    assert_eq!(out.len(), 3);
    assert!(out.iter().all(|(s, _)| *s == Side::Outside));

    let mut e = engine(Settings::default());
    let mut forged = h[100..200].to_vec();
    forged[10] ^= 0xff;
    let (_, out) = run(&mut e, &c, &[(0, h[..200].to_vec()), (100, forged)]);
    assert_resets(&out, &c, ISN + 1 + 200);
    e.shutdown(now(10));
    let r = serde_json::to_value(&e.records()[0]).unwrap();
    assert_eq!(r["verdict"], "block");
    assert!(r["reason"].as_str().unwrap().contains("evasion"));
}

#[test]
fn non_ip_and_plain_traffic_pass_untouched() {
    let mut e = engine(Settings::default());
    let mut out = Vec::new();
    let mut arp = vec![0xff; 6];
    arp.extend(CLIENT_MAC);
    arp.extend([0x08, 0x06]);
    arp.extend([0u8; 28]);
    assert_eq!(e.feed(Side::Inside, &arp, now(0), &mut out), Action::Forward);
    let udp = {
        let b = PacketBuilder::ethernet2(CLIENT_MAC, ROUTER_MAC)
            .ipv4([10, 20, 1, 10], [10, 20, 0, 1], 64)
            .udp(5555, 53);
        let mut v = Vec::new();
        b.write(&mut v, b"query").unwrap();
        v
    };
    assert_eq!(e.feed(Side::Inside, &udp, now(0), &mut out), Action::Forward);
    assert!(out.is_empty());
    assert_eq!(e.flow_count(), 1);
}

#[test]
fn flow_table_cap_evicts_embryonic_first() {
    let mut e =
        engine(Settings { max_flows: 8, timeouts: Timeouts::default(), ..Settings::default() });
    let mut out = Vec::new();
    for port in 0..100u16 {
        let c = Conn {
            client: "10.20.9.99".parse().unwrap(),
            server: "198.51.100.80".parse().unwrap(),
            sport: 20_000 + port,
        };
        e.feed(
            Side::Inside,
            &c.frame(true, ISN, 0, Flags::Syn, &[]),
            now(u64::from(port)),
            &mut out,
        );
        assert!(e.flow_count() <= 8);
    }
    assert_eq!(e.flow_count(), 8);
    assert_eq!(e.counters.flows_evicted, 92);
    // Attempts that never completed are summarised at the next stats record, not one by one.
    assert!(e.records().is_empty());
    e.handle_timeout(now(60_000));
    let records = e.records();
    let Some(Record::Embryonic(s)) = records.first() else { panic!("a summary first") };
    // The 92 evicted and, timed out by then, the 8 left.
    assert_eq!((s.src.as_str(), s.flows, s.evicted), ("10.20.9.99", 100, 92));
}

fn quic_datagram(client: &str, server: &str, payload: &[u8]) -> Vec<u8> {
    let (IpAddr::V4(c), IpAddr::V4(s)) = (client.parse().unwrap(), server.parse().unwrap()) else {
        unreachable!()
    };
    let b = PacketBuilder::ethernet2(CLIENT_MAC, ROUTER_MAC)
        .ipv4(c.octets(), s.octets(), 64)
        .udp(50_000, 443);
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

fn rfc9001_initial() -> Vec<u8> {
    let hex: String = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/quic/rfc9001-a2-client-initial.hex"
    ))
    .unwrap()
    .split_whitespace()
    .collect();
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
}

#[test]
fn quic_initial_is_read_and_decided() {
    // The RFC 9001 Initial names example.com: a rule blocking it for guests drops the flow.
    let text = "[[category]]\nname = \"c\"\ndomains = [\"example.com\"]\n[[rule]]\nname = \"no-example\"\ncategories = [\"c\"]\naction = \"block\"\n";
    let policy = sluice_rules::compile("t.toml", text, &ShippedOnly).unwrap().policy;
    let mut e = Engine::new(
        Arc::new(ArcSwap::from_pointee(policy)),
        Arc::new(ArcSwap::from_pointee(IdentityOverlay::default())),
        Settings::default(),
    );
    let dgram = quic_datagram("10.20.9.99", "198.51.100.80", &rfc9001_initial());
    let mut out = Vec::new();
    assert_eq!(e.feed(Side::Inside, &dgram, now(0), &mut out), Action::Drop);
    // Refused with an ICMP port unreachable back to the client, for each Initial it sends.
    assert_eq!(out.len(), 1);
    let icmp = frame::parse(&out[0].1).unwrap();
    assert_eq!(
        (out[0].0, icmp.proto, icmp.src, icmp.dst),
        (
            Side::Inside,
            frame::Proto::Icmp,
            "198.51.100.80".parse().unwrap(),
            "10.20.9.99".parse().unwrap()
        )
    );
    assert_eq!(e.feed(Side::Inside, &dgram, now(1), &mut out), Action::Drop);
    assert_eq!(out.len(), 2);
    assert_eq!(e.counters.unreachables, 2);
    out.clear();
    e.shutdown(now(2));
    let r = serde_json::to_value(&e.records()[0]).unwrap();
    assert_eq!(
        (r["sni"].as_str(), r["verdict"].as_str(), r["proto"].as_str()),
        (Some("example.com"), Some("block"), Some("udp"))
    );
    assert!(r["ja4"].as_str().unwrap().starts_with("q13d"));

    // The default rules allow example.com: the held datagram is released at once.
    let mut e = engine(Settings::default());
    assert_eq!(e.feed(Side::Inside, &dgram, now(0), &mut out), Action::Drop);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0], (Side::Outside, dgram.clone()));
    out.clear();
    assert_eq!(e.feed(Side::Inside, &dgram, now(1), &mut out), Action::Forward);

    // Not QUIC on UDP 443: follows quic_unreadable, "restricted" by default: refused from a
    // source some inspect or block rule applies to (every identity of the default rules)...
    let mut e = engine(Settings::default());
    let junk = quic_datagram("10.20.9.99", "198.51.100.10", b"hello, not quic");
    out.clear();
    assert_eq!(e.feed(Side::Inside, &junk, now(0), &mut out), Action::Drop);
    assert_eq!(out.len(), 1);
    assert_eq!(frame::parse(&out[0].1).unwrap().proto, frame::Proto::Icmp);
    // ...and passed for one no such rule applies to.
    let text = "[[category]]\nname = \"c\"\ndomains = [\"example.com\"]\n[[rule]]\nname = \"r\"\nidentities = [\"nobody\"]\ncategories = [\"c\"]\naction = \"block\"\n[[identity]]\nname = \"nobody\"\ncidrs = [\"192.0.2.0/24\"]\n";
    let policy = sluice_rules::compile("t.toml", text, &ShippedOnly).unwrap().policy;
    let mut e = Engine::new(
        Arc::new(ArcSwap::from_pointee(policy)),
        Arc::new(ArcSwap::from_pointee(IdentityOverlay::default())),
        Settings::default(),
    );
    out.clear();
    assert_eq!(e.feed(Side::Inside, &junk, now(0), &mut out), Action::Drop);
    assert_eq!(out, vec![(Side::Outside, junk)]);
}

#[test]
fn post_quantum_hello_in_two_segments() {
    let h = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/clienthello/synth-x25519mlkem768-api.openai.com.bin"
    ))
    .unwrap();
    let mut e = engine(Settings::default());
    let c = v4("10.20.9.99");
    let (actions, out) = run(&mut e, &c, &[(0, h[..1448].to_vec()), (1448, h[1448..].to_vec())]);
    assert_eq!(actions, vec![Action::Drop, Action::Drop]);
    assert_resets(&out, &c, ISN + 1 + h.len() as u32);
    let mut e = engine(Settings::default());
    let c = v4("10.20.1.10");
    let (_, out) = run(&mut e, &c, &[(1448, h[1448..].to_vec()), (0, h[..1448].to_vec())]);
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|(s, _)| *s == Side::Outside));
}

#[test]
fn idle_timeouts_follow_protocol_and_state() {
    let t = Timeouts {
        tcp_embryonic: 1_000,
        tcp_established: 10_000,
        tcp_closing: 500,
        udp: 3_000,
        other: 2_000,
    };
    let mut e = engine(Settings { timeouts: t, ..Settings::default() });
    let mut out = Vec::new();
    // An embryonic TCP flow (SYN only), an established one, a UDP one.
    let emb = Conn {
        client: "10.20.1.10".parse().unwrap(),
        server: "198.51.100.80".parse().unwrap(),
        sport: 1,
    };
    e.feed(Side::Inside, &emb.frame(true, ISN, 0, Flags::Syn, &[]), now(0), &mut out);
    let est = v4("10.20.1.10");
    run(&mut e, &est, &[]);
    let udp = quic_datagram("10.20.1.10", "198.51.100.80", b"x");
    let mut dns = udp.clone();
    dns[36..38].copy_from_slice(&5353u16.to_be_bytes()); // dport 443 -> 5353: plain UDP
    e.feed(Side::Inside, &dns, now(0), &mut out);
    assert_eq!(e.flow_count(), 3);
    e.handle_timeout(now(1_500));
    assert_eq!(e.flow_count(), 2, "embryonic gone after 1 s");
    e.handle_timeout(now(3_500));
    assert_eq!(e.flow_count(), 1, "udp gone after 3 s");
    e.handle_timeout(now(9_000));
    assert_eq!(e.flow_count(), 1, "established stays");
    e.handle_timeout(now(12_100));
    assert_eq!(e.flow_count(), 0);
    let reasons: Vec<String> = e
        .records()
        .into_iter()
        .filter_map(|r| match r {
            Record::Flow(f) => {
                Some(serde_json::to_value(&f).unwrap()["end_reason"].as_str().unwrap().to_owned())
            }
            Record::Stats(_) => None,
            // The attempt that never completed: summarised at the stats interval (floods.rs).
            Record::Embryonic(_) => Some("summarised".into()),
        })
        .collect();
    assert_eq!(reasons, vec!["idle", "idle"]);
}

#[test]
fn midstream_flows_follow_the_policy() {
    for (mode, want) in [("allow", Action::Forward), ("block", Action::Drop)] {
        let setting = format!("midstream = \"{mode}\"");
        let mut e =
            common::engine_with(&[("midstream = \"allow\"", &setting)], Settings::default());
        let c = v4("10.20.1.10");
        let mut out = Vec::new();
        // Data of a connection the engine never saw start (e.g. after a restart).
        let f = c.frame(true, 5_000, 9_000, Flags::Psh, b"\x17\x03\x03\x00\x05hello");
        assert_eq!(e.feed(Side::Inside, &f, now(0), &mut out), want, "{mode}");
        if mode == "block" {
            let rst = frame::parse(&out[0].1).unwrap();
            assert_eq!((out[0].0, rst.dst, rst.tcp.unwrap().seq), (Side::Inside, c.client, 9_000));
        } else {
            assert!(out.is_empty());
        }
        // A stray ACK without a flow is not tracked.
        let ack = Conn { sport: 40_999, ..v4("10.20.1.10") }.frame(true, 1, 1, Flags::Ack, &[]);
        assert_eq!(e.feed(Side::Inside, &ack, now(0), &mut out), Action::Forward);
        assert_eq!(e.flow_count(), 1);
    }
}

#[test]
fn policy_swap_applies_to_new_flows_only() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../rules/default.toml"))
            .unwrap();
    let policy = Arc::new(ArcSwap::from_pointee(
        sluice_rules::compile("t.toml", &text, &ShippedOnly).unwrap().policy,
    ));
    let mut e = Engine::new(
        policy.clone(),
        Arc::new(ArcSwap::from_pointee(IdentityOverlay::default())),
        Settings::default(),
    );
    let h = hello();
    let c = v4("10.20.1.10");
    let (actions, out) = run(&mut e, &c, &[(0, h.clone())]);
    assert_eq!(
        (actions[0], out.len()),
        (Action::Forward, 0),
        "alice allowed: the hello is forwarded in place"
    );
    // Now everyone is blocked from the API.
    let strict = text.replacen("[[rule]]", "[[rule]]\nname = \"nobody\"\ncategories = [\"openai-api\"]\naction = \"block\"\n\n[[rule]]", 1);
    policy.store(Arc::new(sluice_rules::compile("t.toml", &strict, &ShippedOnly).unwrap().policy));
    let mut o = Vec::new();
    let later = c.frame(true, ISN + 1 + h.len() as u32, SERVER_ISN + 1, Flags::Psh, b"data");
    assert_eq!(
        e.feed(Side::Inside, &later, now(5), &mut o),
        Action::Forward,
        "established flow keeps its verdict"
    );
    let c2 = Conn { sport: 40_500, ..v4("10.20.1.10") };
    let (_, out) = run(&mut e, &c2, &[(0, h)]);
    assert_eq!(out.len(), 2, "a new flow is reset under the new policy");
}

#[test]
fn long_flows_get_periodic_records() {
    let mut e = engine(Settings { report_interval_ms: 10_000, ..Settings::default() });
    let c = v4("10.20.1.10");
    run(&mut e, &c, &[(0, hello())]);
    let mut out = Vec::new();
    let mut updates = 0;
    for s in 1..=35u64 {
        let f = c.frame(false, SERVER_ISN + 1, ISN + 1, Flags::Psh, b"event");
        e.feed(Side::Outside, &f, now(s * 1_000), &mut out);
        e.handle_timeout(now(s * 1_000));
        for r in e.records() {
            if let Record::Flow(f) = r {
                let v = serde_json::to_value(&f).unwrap();
                assert_eq!(v["event"], "update");
                assert!(v["end_reason"].is_null());
                updates += 1;
            }
        }
    }
    assert_eq!(updates, 3, "one record per 10 s interval of a 35 s flow");
}

#[test]
fn unreadable_quic_follows_the_drop_policy() {
    let mut e = common::engine_with(
        &[
            ("quic_unreadable = \"restricted\"", "quic_unreadable = \"drop\""),
            ("quic_refusal = \"unreachable\"", "quic_refusal = \"drop\""),
        ],
        Settings::default(),
    );
    let mut out = Vec::new();
    let junk = quic_datagram(
        "10.20.1.10",
        "198.51.100.80",
        &[0xc3, 0, 0, 0, 1, 8, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0x41, 0],
    );
    assert_eq!(e.feed(Side::Inside, &junk, now(0), &mut out), Action::Drop);
    assert_eq!(e.feed(Side::Inside, &junk, now(1), &mut out), Action::Drop);
    assert!(out.is_empty(), "nothing released");
    e.shutdown(now(2));
    let Record::Flow(f) = &e.records()[0] else { panic!("flow record first") };
    let v = serde_json::to_value(f).unwrap();
    assert_eq!(
        (v["verdict"].as_str(), v["reason"].as_str()),
        (Some("block"), Some("QUIC Initial unreadable"))
    );
}

#[test]
fn tcp_fast_open_hello_in_the_syn() {
    let h = hello();
    let syn_with = |c: &Conn, data: &[u8]| {
        let b = PacketBuilder::ethernet2(CLIENT_MAC, ROUTER_MAC)
            .ipv4(
                match c.client {
                    IpAddr::V4(a) => a.octets(),
                    _ => unreachable!(),
                },
                [198, 51, 100, 10],
                64,
            )
            .tcp(c.sport, 443, ISN, 64_000)
            .syn();
        let mut v = Vec::new();
        b.write(&mut v, data).unwrap();
        v
    };
    let mut out = Vec::new();
    // Guest: refused in the SYN, the client gets a reset acknowledging its SYN.
    let mut e = engine(Settings::default());
    let g = v4("10.20.9.99");
    assert_eq!(e.feed(Side::Inside, &syn_with(&g, &h), now(0), &mut out), Action::Drop);
    assert_eq!(out.len(), 1);
    let rst = frame::parse(&out[0].1).unwrap();
    assert_eq!(
        (out[0].0, rst.dst, rst.tcp.unwrap().rst, rst.tcp.unwrap().ack),
        (Side::Inside, g.client, true, ISN + 1)
    );
    // Alice: allowed, the SYN goes on with its data.
    out.clear();
    let a = v4("10.20.1.10");
    assert_eq!(e.feed(Side::Inside, &syn_with(&a, &h), now(0), &mut out), Action::Forward);
    assert!(out.is_empty());
    // Half a hello in the SYN: dropped; the retry without data is classified as usual.
    let mut e = engine(Settings::default());
    assert_eq!(e.feed(Side::Inside, &syn_with(&g, &h[..100]), now(0), &mut out), Action::Drop);
    let (_, out) = run(&mut e, &g, &[(0, h.clone())]);
    assert_resets(&out, &g, ISN + 1 + h.len() as u32);
}
