//! Divert through the TUN, sans-IO: a flow to inspect is reset once and its destination
//! learned; the retry is steered to the listener from its SYN; replies come back with the
//! original addresses and MACs; the interception engine's upstream connection leaves with the
//! client's address and its replies return into the TUN.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, SocketAddr};

use etherparse::PacketBuilder;
use sluice_dataplane::engine::{
    Action, Carried, Closes, DirKey, DivertConfig, Engine, FastEntry, OffloadOp, Rewrite, Settings,
    Side,
};
use sluice_dataplane::record::Record;
use sluice_dataplane::wire::frame;
use sluice_dataplane::wire::frame::Proto;

const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const ROUTER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

fn engine() -> Engine {
    common::engine(Settings { divert: Some(DivertConfig::default()), ..Settings::default() })
}

use common::Drive;
use common::now;

fn hello() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/clienthello/curl-api.openai.com.bin"
    ))
    .unwrap()
}

#[derive(Clone, Copy)]
enum Flags {
    Syn,
    SynAck,
    Psh,
    Fin,
}

/// A TCP packet from `src` to `dst`, raw IP (`eth` None) or in an Ethernet frame.
fn tcp(
    eth: Option<([u8; 6], [u8; 6])>,
    src: SocketAddr,
    dst: SocketAddr,
    flags: Flags,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    macro_rules! finish {
        ($b:expr) => {{
            let seq = if matches!(flags, Flags::Psh) { 1001 } else { 1000 };
            let t = $b.tcp(src.port(), dst.port(), seq, 64_000);
            let t = match flags {
                Flags::Syn => t.syn(),
                Flags::SynAck => t.syn().ack(1001),
                Flags::Psh => t.psh().ack(5001),
                Flags::Fin => t.fin().ack(5001),
            };
            t.write(&mut out, payload).unwrap();
        }};
    }
    match (eth, src.ip(), dst.ip()) {
        (Some((s, d)), IpAddr::V4(a), IpAddr::V4(b)) => {
            finish!(PacketBuilder::ethernet2(s, d).ipv4(a.octets(), b.octets(), 64))
        }
        (Some((s, d)), IpAddr::V6(a), IpAddr::V6(b)) => {
            finish!(PacketBuilder::ethernet2(s, d).ipv6(a.octets(), b.octets(), 64))
        }
        (None, IpAddr::V4(a), IpAddr::V4(b)) => {
            finish!(PacketBuilder::ipv4(a.octets(), b.octets(), 64))
        }
        (None, IpAddr::V6(a), IpAddr::V6(b)) => {
            finish!(PacketBuilder::ipv6(a.octets(), b.octets(), 64))
        }
        _ => unreachable!(),
    }
    out
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ends(f: &frame::Frame<'_>) -> (SocketAddr, SocketAddr) {
    (SocketAddr::new(f.src, f.sport), SocketAddr::new(f.dst, f.dport))
}

fn divert_round_trip(client: SocketAddr, server: SocketAddr) {
    let mut e = engine();
    let mut out = Vec::new();
    let cfg = DivertConfig::default();
    let c2s = Some((CLIENT_MAC, ROUTER_MAC));
    let s2c = Some((ROUTER_MAC, CLIENT_MAC));

    // First connection: not diverted (nothing learned yet); its hello says inspect → reset,
    // destination learned.
    let first = SocketAddr::new(client.ip(), client.port() - 1);
    e.feed(Side::Inside, &tcp(c2s, first, server, Flags::Syn, &[]), now(0), &mut out);
    e.feed(Side::Outside, &tcp(s2c, server, first, Flags::SynAck, &[]), now(1), &mut out);
    let a = e.feed(Side::Inside, &tcp(c2s, first, server, Flags::Psh, &hello()), now(2), &mut out);
    assert_eq!(a, Action::Drop);
    assert_eq!(out.len(), 2, "reset both ways");
    assert_eq!(e.learned(server.ip(), now(3)), Some("api.openai.com"));
    assert_eq!(e.divert_counters.missed, 1);
    out.clear();

    // The retry is diverted at its SYN: into the TUN, toward the listener.
    let a = e.feed(Side::Inside, &tcp(c2s, client, server, Flags::Syn, &[]), now(10), &mut out);
    assert_eq!(a, Action::Drop);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, Side::Tun);
    let p = frame::parse_ip(&out[0].1).unwrap();
    assert_eq!(ends(&p), (client, cfg.listener(client.ip())));
    out.clear();
    let d = e.diverted(client).unwrap();
    assert_eq!((d.original_dst, d.client_mac), (server, CLIENT_MAC));

    // The listener's SYN-ACK, read from the TUN, leaves on the inside port as the server's.
    let synack = tcp(None, cfg.listener(client.ip()), client, Flags::SynAck, &[]);
    e.feed_tun(&synack, now(11), &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, Side::Inside);
    let f = frame::parse(&out[0].1).unwrap();
    assert_eq!(ends(&f), (server, client));
    assert_eq!((f.src_mac, f.dst_mac), (ROUTER_MAC, CLIENT_MAC));
    out.clear();

    // Client data follows into the TUN.
    let a =
        e.feed(Side::Inside, &tcp(c2s, client, server, Flags::Psh, &hello()), now(12), &mut out);
    assert_eq!(a, Action::Drop);
    assert_eq!(out[0].0, Side::Tun);
    assert_eq!(frame::parse_ip(&out[0].1).unwrap().payload, &hello()[..]);
    out.clear();

    // The interception engine's upstream connection leaves with the client's address.
    let port = e.open_upstream(client, server, now(13)).unwrap();
    assert_eq!(port, cfg.upstream_ports.0);
    let local = SocketAddr::new(cfg.local(client.ip()), port);
    e.feed_tun(&tcp(None, local, server, Flags::Syn, &[]), now(14), &mut out);
    assert_eq!(out[0].0, Side::Outside);
    let f = frame::parse(&out[0].1).unwrap();
    assert_eq!(ends(&f), (SocketAddr::new(client.ip(), port), server));
    assert_eq!((f.src_mac, f.dst_mac), (CLIENT_MAC, ROUTER_MAC));
    out.clear();
    // ... and its replies go back into the TUN.
    let reply = tcp(s2c, server, SocketAddr::new(client.ip(), port), Flags::SynAck, &[]);
    assert_eq!(e.feed(Side::Outside, &reply, now(15), &mut out), Action::Drop);
    assert_eq!(out[0].0, Side::Tun);
    assert_eq!(ends(&frame::parse_ip(&out[0].1).unwrap()), (server, local));
    out.clear();
    // A reply from anyone else to that port is not the upstream's: handled as any frame.
    let other = SocketAddr::new(server.ip(), 8443);
    let stray = tcp(s2c, other, SocketAddr::new(client.ip(), port), Flags::SynAck, &[]);
    e.feed(Side::Outside, &stray, now(16), &mut out);
    assert!(out.iter().all(|(s, _)| *s != Side::Tun));
    out.clear();

    // What the kernel sends into the TUN for no diverted connection is ignored.
    let before = e.divert_counters.tun_ignored;
    let unknown = SocketAddr::new(client.ip(), 1234);
    e.feed_tun(
        &tcp(None, cfg.listener(client.ip()), unknown, Flags::SynAck, &[]),
        now(17),
        &mut out,
    );
    e.feed_tun(&[0x60, 0, 0], now(17), &mut out);
    assert!(out.is_empty());
    assert_eq!(e.divert_counters.tun_ignored, before + 2);

    // The interception engine annotates the flow; the record says divert.
    e.annotate_diverted(client, |f| f.class.rule = Some("finance-openai-inspect".into()));
    e.shutdown(now(20));
    let records = e.records();
    let diverted = records
        .iter()
        .filter_map(|r| match r {
            Record::Flow(f) => Some(serde_json::to_value(f).unwrap()),
            _ => None,
        })
        .find(|v| v["sport"] == client.port())
        .unwrap();
    assert_eq!(diverted["verdict"], "divert");
    assert_eq!(diverted["rule"], "finance-openai-inspect");
    assert_eq!(diverted["pkts_in"], 1);
    assert_eq!(e.nat_entries(), (0, 0));
}

#[test]
fn ipv4_divert_round_trip() {
    divert_round_trip(addr("10.20.1.10:40001"), addr("198.51.100.10:443"));
}

#[test]
fn ipv6_divert_round_trip() {
    divert_round_trip(addr("[fd20::1:10]:40001"), addr("[2001:db8:5100::10]:443"));
}

#[test]
fn blocked_identities_are_diverted_to_be_answered_allowed_ones_are_not() {
    let mut e = engine();
    let mut out = Vec::new();
    let server = addr("198.51.100.10:443");
    let alice = addr("10.20.1.10:40000");
    let c2s = Some((CLIENT_MAC, ROUTER_MAC));
    let s2c = Some((ROUTER_MAC, CLIENT_MAC));
    e.feed(Side::Inside, &tcp(c2s, alice, server, Flags::Syn, &[]), now(0), &mut out);
    e.feed(Side::Outside, &tcp(s2c, server, alice, Flags::SynAck, &[]), now(1), &mut out);
    e.feed(Side::Inside, &tcp(c2s, alice, server, Flags::Psh, &hello()), now(2), &mut out);
    assert!(e.learned(server.ip(), now(3)).is_some());
    out.clear();
    // guest's rule for the learned name is block: diverted, so the interception engine answers
    // with a block response instead of a reset.
    let guest = addr("10.20.9.99:40000");
    let a = e.feed(Side::Inside, &tcp(c2s, guest, server, Flags::Syn, &[]), now(4), &mut out);
    assert_eq!(a, Action::Drop);
    assert!(e.diverted(guest).is_some());
    out.clear();
    // Plain traffic to that server is not diverted, nor TLS to a server never learned.
    let web = addr("198.51.100.10:80");
    let a = e.feed(Side::Inside, &tcp(c2s, alice, web, Flags::Syn, &[]), now(5), &mut out);
    assert_eq!(a, Action::Forward);
    let other = addr("198.51.100.80:443");
    let a = e.feed(Side::Inside, &tcp(c2s, guest, other, Flags::Syn, &[]), now(6), &mut out);
    assert_eq!(a, Action::Forward);
    assert!(out.is_empty());
}

#[test]
fn upstream_ports_are_unique_and_released() {
    let mut e = engine();
    let mut out = Vec::new();
    let server = addr("198.51.100.10:443");
    let c2s = Some((CLIENT_MAC, ROUTER_MAC));
    learn(&mut e, server);
    let client = addr("10.20.1.10:40001");
    e.feed(Side::Inside, &tcp(c2s, client, server, Flags::Syn, &[]), now(3), &mut out);
    // Not a diverted client: no port.
    assert!(e.open_upstream(addr("10.20.1.10:1"), server, now(3)).is_none());
    let a = e.open_upstream(client, server, now(4)).unwrap();
    let b = e.open_upstream(client, server, now(4)).unwrap();
    assert_ne!(a, b);
    e.release_upstream(a);
    assert_eq!(e.nat_entries(), (1, 1));
    // Idle upstream entries expire.
    e.handle_timeout(now(4 + 3_600_000));
    assert_eq!(e.nat_entries(), (0, 0));
}

fn ops(e: &mut Engine) -> Vec<OffloadOp> {
    let mut v = Vec::new();
    e.offload_ops_into(&mut v);
    v
}

/// A first flow from alice to `server` whose hello says inspect: reset, destination learned.
fn learn(e: &mut Engine, server: SocketAddr) {
    let mut out = Vec::new();
    let (c2s, s2c) = (Some((CLIENT_MAC, ROUTER_MAC)), Some((ROUTER_MAC, CLIENT_MAC)));
    let first = addr("10.20.1.10:40000");
    e.feed(Side::Inside, &tcp(c2s, first, server, Flags::Syn, &[]), now(0), &mut out);
    e.feed(Side::Outside, &tcp(s2c, server, first, Flags::SynAck, &[]), now(1), &mut out);
    e.feed(Side::Inside, &tcp(c2s, first, server, Flags::Psh, &hello()), now(2), &mut out);
    assert!(e.learned(server.ip(), now(3)).is_some());
    ops(e);
}

/// An engine with divert and the fast path on, and alice's server learned (its first flow was
/// reset): her next SYN to it is diverted.
fn fast_divert() -> (Engine, DivertConfig, SocketAddr) {
    let cfg = DivertConfig::default();
    let mut e =
        common::engine(Settings { divert: Some(cfg), fast_path: true, ..Settings::default() });
    let server = addr("198.51.100.10:443");
    learn(&mut e, server);
    (e, cfg, server)
}

/// The end records, as JSON, of the flows from client port `port`.
fn flow_ends(e: &mut Engine, port: u16) -> Vec<serde_json::Value> {
    e.records()
        .iter()
        .filter_map(|r| match r {
            Record::Flow(f) => Some(serde_json::to_value(f).unwrap()),
            _ => None,
        })
        .filter(|v| v["sport"] == port && v["event"] == "end")
        .collect()
}

fn key(ingress: Side, src: SocketAddr, dst: SocketAddr) -> DirKey {
    DirKey {
        ingress,
        vlan: 0,
        proto: Proto::Tcp,
        src: (src.ip(), src.port()),
        dst: (dst.ip(), dst.port()),
    }
}

#[test]
fn divert_nat_is_offloaded_after_the_syn_and_withdrawn_at_the_close() {
    let (mut e, cfg, server) = fast_divert();
    let mut out = Vec::new();
    let c2s = Some((CLIENT_MAC, ROUTER_MAC));
    let s2c = Some((ROUTER_MAC, CLIENT_MAC));
    let client = addr("10.20.1.10:40001");
    let listener = cfg.listener(client.ip());
    e.feed(Side::Inside, &tcp(c2s, client, server, Flags::Syn, &[]), now(10), &mut out);
    let to_listener = key(Side::Inside, client, server);
    let from_listener = key(Side::Tun, listener, client);
    assert_eq!(
        ops(&mut e),
        vec![OffloadOp::Add([
            FastEntry { key: to_listener, rewrite: Rewrite::ToTun { dst: listener }, syn: true },
            FastEntry {
                key: from_listener,
                rewrite: Rewrite::ToPort {
                    src: server,
                    out: Side::Inside,
                    src_mac: ROUTER_MAC,
                    dst_mac: CLIENT_MAC,
                    vlan: None,
                },
                syn: true,
            },
        ])],
        "at the SYN, which itself went through the engine; the listener's SYN-ACK need not"
    );
    // A SYN-ACK the engine sees anyway (the entry was not in the kernel yet) is NAT-ed too.
    let synack = tcp(None, listener, client, Flags::SynAck, &[]);
    e.feed_tun(&synack, now(10), &mut out);
    assert!(ops(&mut e).is_empty());
    // The upstream connection: NAT-ed by the kernel from the port reservation on.
    let port = e.open_upstream(client, server, now(11)).unwrap();
    let local = SocketAddr::new(cfg.local(client.ip()), port);
    let public = SocketAddr::new(client.ip(), port);
    let up_out = key(Side::Tun, local, server);
    let up_in = key(Side::Outside, server, public);
    assert_eq!(
        ops(&mut e),
        vec![OffloadOp::Add([
            FastEntry {
                key: up_out,
                rewrite: Rewrite::ToPort {
                    src: public,
                    out: Side::Outside,
                    src_mac: CLIENT_MAC,
                    dst_mac: ROUTER_MAC,
                    vlan: None,
                },
                syn: true,
            },
            FastEntry { key: up_in, rewrite: Rewrite::ToTun { dst: local }, syn: true },
        ])],
        "upstream SYNs are NAT-ed by the kernel too"
    );
    // What the kernel carried reaches the diverted flow's record; upstream traffic keeps its
    // entry from idling out.
    e.offload_counts(&to_listener, 5, 2_000, now(20));
    e.offload_counts(&from_listener, 7, 9_000, now(3_599_000));
    e.offload_counts(&up_out, 3, 2_100, now(3_600_000));
    e.handle_timeout(now(3_600_001));
    assert_eq!(e.nat_entries().1, 1, "upstream still in use");
    // The upstream closes (FIN both ways, through the engine): withdrawn.
    e.feed_tun(&tcp(None, local, server, Flags::Fin, &[]), now(3_600_002), &mut out);
    assert!(ops(&mut e).is_empty());
    e.feed(Side::Outside, &tcp(s2c, server, public, Flags::Fin, &[]), now(3_600_003), &mut out);
    assert_eq!(ops(&mut e), vec![OffloadOp::Remove([up_out, up_in])]);
    // The client's connection closes: withdrawn too, once.
    e.feed(Side::Inside, &tcp(c2s, client, server, Flags::Fin, &[]), now(3_600_004), &mut out);
    assert!(ops(&mut e).is_empty());
    e.feed_tun(&tcp(None, listener, client, Flags::Fin, &[]), now(3_600_005), &mut out);
    assert_eq!(ops(&mut e), vec![OffloadOp::Remove([to_listener, from_listener])]);
    e.shutdown(now(3_600_006));
    assert!(ops(&mut e).is_empty());
    let v = flow_ends(&mut e, client.port()).remove(0);
    // SYN and FIN by the engine, 5 by the kernel; SYN-ACK and FIN back by the engine, 7 by
    // the kernel.
    assert_eq!((v["pkts_out"].as_u64(), v["pkts_in"].as_u64()), (Some(7), Some(9)));
    assert_eq!(v["bytes_in"].as_u64(), Some(9_000));
}

#[test]
fn closes_the_kernel_carried_are_followed_by_the_engine() {
    let (mut e, cfg, server) = fast_divert();
    let mut out = Vec::new();
    let c2s = Some((CLIENT_MAC, ROUTER_MAC));
    let client = addr("10.20.1.10:40001");
    let listener = cfg.listener(client.ip());
    // Only the client's SYN reaches the engine; the SYN-ACK and everything after are the
    // kernel's.
    e.feed(Side::Inside, &tcp(c2s, client, server, Flags::Syn, &[]), now(10), &mut out);
    let to_listener = key(Side::Inside, client, server);
    let from_listener = key(Side::Tun, listener, client);
    let port = e.open_upstream(client, server, now(11)).unwrap();
    let local = SocketAddr::new(cfg.local(client.ip()), port);
    let up_out = key(Side::Tun, local, server);
    let up_in = key(Side::Outside, server, SocketAddr::new(client.ip(), port));
    ops(&mut e);
    let fin = Closes { fin: true, rst: false };
    e.offload_counts(&from_listener, 1, 0, now(500));
    e.offload_counts(&to_listener, 2, 517, now(500));
    // Past the embryonic timeout: the kernel's SYN-ACK count made it established.
    e.handle_timeout(now(40_000));
    assert_eq!(e.nat_entries(), (1, 1), "an established diverted flow does not idle out");
    assert!(ops(&mut e).is_empty());
    // The upstream closes, one FIN each way, both carried: withdrawn once, when both are in.
    e.offload_closed(&up_out, fin, now(40_001));
    assert!(ops(&mut e).is_empty(), "half closed");
    e.offload_closed(&up_out, fin, now(40_002));
    e.offload_closed(&up_in, fin, now(40_003));
    assert_eq!(ops(&mut e), vec![OffloadOp::Remove([up_out, up_in])]);
    e.offload_closed(&up_in, fin, now(40_004));
    assert!(ops(&mut e).is_empty(), "a close noted again changes nothing");
    // The port lingers a moment after the close, then is free.
    e.handle_timeout(now(40_100));
    assert_eq!(e.nat_entries().1, 1);
    e.handle_timeout(now(41_600));
    assert_eq!(e.nat_entries().1, 0);
    // The client's side: the listener's FIN, then the client's; the record ends as closed.
    e.offload_closed(&from_listener, fin, now(41_700));
    assert!(ops(&mut e).is_empty());
    e.offload_carried(
        &Carried { key: to_listener, packets: 9, bytes: 2_600, closes: fin },
        now(41_800),
    );
    assert_eq!(ops(&mut e), vec![OffloadOp::Remove([to_listener, from_listener])]);
    e.handle_timeout(now(41_800 + 11_000));
    let v = flow_ends(&mut e, client.port()).remove(0);
    assert_eq!(v["end_reason"], "closed", "{v}");
    // The SYN by the engine, 9 by the kernel; 1 back by the kernel.
    assert_eq!((v["pkts_out"].as_u64(), v["pkts_in"].as_u64()), (Some(10), Some(1)));
    assert_eq!(e.nat_entries(), (0, 0));
}

#[test]
fn a_port_reused_within_the_linger_is_a_new_diverted_flow() {
    let (mut e, cfg, server) = fast_divert();
    let mut out = Vec::new();
    let c2s = Some((CLIENT_MAC, ROUTER_MAC));
    let client = addr("10.20.1.10:40001");
    let to_listener = key(Side::Inside, client, server);
    let from_listener = key(Side::Tun, cfg.listener(client.ip()), client);
    let fin = Closes { fin: true, rst: false };
    e.feed(Side::Inside, &tcp(c2s, client, server, Flags::Syn, &[]), now(10), &mut out);
    e.offload_closed(&from_listener, fin, now(100));
    e.offload_closed(&to_listener, fin, now(101));
    assert!(matches!(ops(&mut e).as_slice(), [OffloadOp::Add(_), OffloadOp::Remove(_)]));
    // The same port again, a second later (the closed flow lingers for ten).
    out.clear();
    e.feed(Side::Inside, &tcp(c2s, client, server, Flags::Syn, &[]), now(1_100), &mut out);
    assert_eq!(out.len(), 1, "the SYN goes to the listener");
    let got = ops(&mut e);
    assert!(
        matches!(got.as_slice(), [OffloadOp::Add([a, b])] if a.key == to_listener && b.key == from_listener),
        "its NAT is in the kernel again: {got:?}"
    );
    let ends = flow_ends(&mut e, client.port());
    assert_eq!(ends.len(), 1, "the first connection's record ends: {ends:?}");
    assert_eq!(ends[0]["end_reason"], "closed");
    assert_eq!(e.nat_entries().0, 1);
}

#[test]
fn a_half_closed_diverted_flow_still_idles_out() {
    let (mut e, cfg, server) = fast_divert();
    let mut out = Vec::new();
    let client = addr("10.20.1.10:40001");
    let c2s = Some((CLIENT_MAC, ROUTER_MAC));
    e.feed(Side::Inside, &tcp(c2s, client, server, Flags::Syn, &[]), now(10), &mut out);
    let from_listener = key(Side::Tun, cfg.listener(client.ip()), client);
    e.offload_counts(&from_listener, 1, 0, now(20));
    ops(&mut e);
    // The map says "FIN" at every count of it; that is not traffic.
    let fin = Carried {
        key: from_listener,
        packets: 2,
        bytes: 0,
        closes: Closes { fin: true, rst: false },
    };
    let established = Settings::default().timeouts.tcp_established;
    let mut t = 1_000;
    while t < established + 2_000 {
        e.offload_carried(&fin, now(t));
        e.handle_timeout(now(t));
        t += 1_000;
    }
    assert_eq!(e.nat_entries().0, 0, "idled out despite the repeated note");
}

#[test]
fn an_expired_diverted_flow_leaves_the_kernel() {
    let (mut e, _, server) = fast_divert();
    let mut out = Vec::new();
    let c2s = Some((CLIENT_MAC, ROUTER_MAC));
    let client = addr("10.20.1.10:40001");
    e.feed(Side::Inside, &tcp(c2s, client, server, Flags::Syn, &[]), now(10), &mut out);
    let port = e.open_upstream(client, server, now(11)).unwrap();
    ops(&mut e);
    // The engine could not bind the port: its entries go at once.
    e.release_upstream(port);
    assert!(matches!(ops(&mut e).as_slice(), [OffloadOp::Remove(_)]));
    // Nothing more: the embryonic diverted flow idles out and its NAT is withdrawn.
    e.handle_timeout(now(10 + 31_000));
    let got = ops(&mut e);
    assert!(
        matches!(got.as_slice(), [OffloadOp::Remove([a, b])]
            if a.ingress == Side::Inside && b.ingress == Side::Tun),
        "{got:?}"
    );
    assert_eq!(e.nat_entries(), (0, 0));
}

/// A diverted connection the interception engine accepted and reset at once (its cap): the
/// kernel carried its handshake, the engine saw only the SYN, yet it is recorded as a flow
/// with the engine's reason, not summarised as an attempt that never completed.
#[test]
fn a_diverted_connection_refused_by_the_interception_engine_is_recorded() {
    let (client, server) = (addr("10.20.1.10:40100"), addr("198.51.100.10:443"));
    let mut e = engine();
    let mut out = Vec::new();
    let c2s = Some((CLIENT_MAC, ROUTER_MAC));
    let s2c = Some((ROUTER_MAC, CLIENT_MAC));
    // Learn the destination (a first connection's hello), then the diverted SYN.
    let first = SocketAddr::new(client.ip(), client.port() - 1);
    e.feed(Side::Inside, &tcp(c2s, first, server, Flags::Syn, &[]), now(0), &mut out);
    e.feed(Side::Outside, &tcp(s2c, server, first, Flags::SynAck, &[]), now(1), &mut out);
    e.feed(Side::Inside, &tcp(c2s, first, server, Flags::Psh, &hello()), now(2), &mut out);
    e.feed(Side::Inside, &tcp(c2s, client, server, Flags::Syn, &[]), now(10), &mut out);
    e.annotate_diverted(client, |f| {
        f.class.action = Some("block");
        f.class.reason = Some("interception engine at its connection cap: reset");
    });
    e.shutdown(now(20));
    let records = e.records();
    let rec = records
        .iter()
        .find_map(|r| match r {
            Record::Flow(f) if f.sport == client.port() => Some(f),
            _ => None,
        })
        .expect("a flow record of the refused connection");
    assert_eq!(rec.class.reason, Some("interception engine at its connection cap: reset"));
}
