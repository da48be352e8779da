//! IP fragments before classification (issue: coverage): a ClientHello cut into IP fragments
//! is reassembled and decided like a whole one; allowed flows get their fragments unchanged;
//! overlaps that disagree, and `ip_fragments = "block"`, drop them.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use etherparse::PacketBuilder;
use sluice_dataplane::engine::{Action, Engine, Settings, Side};
use sluice_dataplane::wire::frame;

use common::Drive;
use common::{CLIENT_MAC, ROUTER_MAC, engine, hello_file, now, tcp};

const ISN: u32 = 5_000;
const SERVER_ISN: u32 = 90_000;

fn hello() -> Vec<u8> {
    hello_file("curl-api.openai.com.bin")
}

/// Cuts an Ethernet + IPv4 frame into fragments of `size` payload bytes (a multiple of 8).
fn fragments_v4(frame: &[u8], size: usize, id: u16) -> Vec<Vec<u8>> {
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let (head, payload) = frame.split_at(14 + ihl);
    payload
        .chunks(size)
        .enumerate()
        .map(|(i, chunk)| {
            let mut f = head.to_vec();
            let off = (i * size / 8) as u16;
            let more = (i + 1) * size < payload.len();
            let ip = &mut f[14..14 + ihl];
            ip[2..4].copy_from_slice(&((ihl + chunk.len()) as u16).to_be_bytes());
            ip[4..6].copy_from_slice(&id.to_be_bytes());
            let flags = off | if more { 0x2000 } else { 0 };
            ip[6..8].copy_from_slice(&flags.to_be_bytes());
            ip[10..12].copy_from_slice(&[0, 0]);
            let sum = etherparse::checksum::Sum16BitWords::new().add_slice(ip).ones_complement();
            ip[10..12].copy_from_slice(&sum.to_ne_bytes());
            f.extend_from_slice(chunk);
            f
        })
        .collect()
}

/// Cuts an Ethernet + IPv6 frame (no extension headers) into fragments of `size` bytes.
fn fragments_v6(frame: &[u8], size: usize, id: u32) -> Vec<Vec<u8>> {
    let (head, payload) = frame.split_at(14 + 40);
    let next = head[14 + 6];
    payload
        .chunks(size)
        .enumerate()
        .map(|(i, chunk)| {
            let mut f = head.to_vec();
            f[14 + 4..14 + 6].copy_from_slice(&((8 + chunk.len()) as u16).to_be_bytes());
            f[14 + 6] = 44;
            let more = (i + 1) * size < payload.len();
            let off = ((i * size / 8) as u16) << 3 | u16::from(more);
            f.extend_from_slice(&[next, 0]);
            f.extend_from_slice(&off.to_be_bytes());
            f.extend_from_slice(&id.to_be_bytes());
            f.extend_from_slice(chunk);
            f
        })
        .collect()
}

/// The handshake of a flow from `client` to `server`, through `e`.
fn handshake(e: &mut Engine, client: &str, server: &str) {
    let mut out = Vec::new();
    for (side, f) in [
        (Side::Inside, tcp(client, server, true, ISN, None, true, &[])),
        (Side::Outside, tcp(client, server, false, SERVER_ISN, Some(ISN + 1), true, &[])),
        (Side::Inside, tcp(client, server, true, ISN + 1, Some(SERVER_ISN + 1), false, &[])),
    ] {
        assert_eq!(e.feed(side, &f, now(0), &mut out), Action::Forward);
    }
}

/// Sends `frags` from the inside; returns the actions and what the engine emitted.
fn send(e: &mut Engine, frags: &[Vec<u8>]) -> (Vec<Action>, Vec<(Side, Vec<u8>)>) {
    let mut out = Vec::new();
    let actions = frags.iter().map(|f| e.feed(Side::Inside, f, now(5), &mut out)).collect();
    (actions, out)
}

fn is_reset(f: &[u8]) -> bool {
    frame::parse(f).and_then(|p| p.tcp).is_some_and(|t| t.rst)
}

#[test]
fn hello_in_16_byte_ipv4_fragments_is_read_and_blocked() {
    // A guest (unknown identity): api.openai.com is refused to it. Before reassembly, the
    // fragments passed as "other" and the hello reached the server.
    let mut e = engine(Settings::default());
    handshake(&mut e, "10.20.9.99", "198.51.100.10");
    let whole =
        tcp("10.20.9.99", "198.51.100.10", true, ISN + 1, Some(SERVER_ISN + 1), false, &hello());
    let frags = fragments_v4(&whole, 16, 7);
    assert!(frags.len() > 10);
    let (actions, out) = send(&mut e, &frags);
    assert!(actions.iter().all(|a| *a == Action::Drop), "no fragment goes on by itself");
    assert_eq!(out.len(), 2, "a reset each way, nothing else: {out:?}");
    assert!(out.iter().all(|(_, f)| is_reset(f)));
    assert_eq!(e.counters.fragments, frags.len() as u64);
    assert_eq!(e.counters.fragments_reassembled, 1);
    assert_eq!(e.counters.blocked, 1);
}

#[test]
fn hello_in_ipv6_fragments_out_of_order_is_blocked() {
    let mut e = engine(Settings::default());
    let (c, s) = ("fd20::9:99", "2001:db8:5100::10");
    handshake(&mut e, c, s);
    let whole = tcp(c, s, true, ISN + 1, Some(SERVER_ISN + 1), false, &hello());
    let mut frags = fragments_v6(&whole, 64, 0xdead_beef);
    frags.reverse();
    let (_, out) = send(&mut e, &frags);
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|(_, f)| is_reset(f)));
    assert_eq!(e.counters.fragments_reassembled, 1);
}

#[test]
fn allowed_flows_get_their_fragments_unchanged() {
    // Finance may use the API; this data plane has no interception, so the flow is passed.
    let mut e = engine(Settings::default());
    handshake(&mut e, "10.20.1.10", "198.51.100.10");
    let whole =
        tcp("10.20.1.10", "198.51.100.10", true, ISN + 1, Some(SERVER_ISN + 1), false, &hello());
    let frags = fragments_v4(&whole, 256, 9);
    let (actions, out) = send(&mut e, &frags);
    assert!(actions.iter().all(|a| *a == Action::Drop));
    let sent: Vec<&Vec<u8>> = out
        .iter()
        .map(|(side, f)| {
            assert_eq!(*side, Side::Outside);
            f
        })
        .collect();
    assert_eq!(sent, frags.iter().collect::<Vec<_>>(), "the fragments as they came, in order");
    // Later fragments of the allowed flow go on unchanged too.
    let more = tcp(
        "10.20.1.10",
        "198.51.100.10",
        true,
        ISN + 1 + hello().len() as u32,
        Some(SERVER_ISN + 1),
        false,
        &[7u8; 600],
    );
    let frags = fragments_v4(&more, 296, 10);
    let (_, out) = send(&mut e, &frags);
    assert_eq!(out.iter().map(|(_, f)| f).collect::<Vec<_>>(), frags.iter().collect::<Vec<_>>());
}

#[test]
fn overlapping_fragments_that_disagree_are_dropped_as_evasion() {
    let mut e = engine(Settings::default());
    handshake(&mut e, "10.20.1.10", "198.51.100.10");
    let decoy =
        tcp("10.20.1.10", "198.51.100.10", true, ISN + 1, Some(SERVER_ISN + 1), false, &hello());
    let mut other = hello();
    other[100] ^= 0xff;
    let real =
        tcp("10.20.1.10", "198.51.100.10", true, ISN + 1, Some(SERVER_ISN + 1), false, &other);
    let a = fragments_v4(&decoy, 64, 11);
    let b = fragments_v4(&real, 64, 11);
    // The first half from one, then a fragment of the other covering a byte that differs.
    let k = 120 / 64;
    let mut frags: Vec<Vec<u8>> = a[..=k].to_vec();
    frags.push(b[k].clone());
    frags.extend(a[k + 1..].iter().cloned());
    let (_, out) = send(&mut e, &frags);
    assert!(out.is_empty(), "nothing forwarded: {out:?}");
    assert_eq!(e.counters.evasions, 1);
    assert!(e.counters.fragments_dropped >= 1);
    assert_eq!(e.counters.fragments_reassembled, 0);
    // An identical duplicate is a harmless retransmission.
    let mut e = engine(Settings::default());
    handshake(&mut e, "10.20.1.10", "198.51.100.10");
    let mut frags = a.clone();
    frags.insert(2, a[1].clone());
    let (_, out) = send(&mut e, &frags);
    assert_eq!(out.len(), frags.len());
    assert_eq!(e.counters.evasions, 0);
}

#[test]
fn the_block_setting_drops_fragments_of_undecided_tls_flows() {
    let mut e = common::engine_with(
        &[("ip_fragments = \"reassemble\"", "ip_fragments = \"block\"")],
        Settings::default(),
    );
    handshake(&mut e, "10.20.1.10", "198.51.100.10");
    let whole =
        tcp("10.20.1.10", "198.51.100.10", true, ISN + 1, Some(SERVER_ISN + 1), false, &hello());
    let frags = fragments_v4(&whole, 256, 12);
    let (_, out) = send(&mut e, &frags);
    assert!(out.is_empty());
    assert_eq!(e.counters.fragments_dropped, frags.len() as u64);
    // Not a TLS port: passed.
    let frags = plain_udp_fragments(13);
    let (actions, out) = send(&mut e, &frags);
    assert!(actions.iter().all(|a| *a == Action::Forward) && out.is_empty());
}

/// A UDP datagram to port 5001 (nothing classified there), in three fragments.
fn plain_udp_fragments(id: u16) -> Vec<Vec<u8>> {
    let plain = PacketBuilder::ethernet2(CLIENT_MAC, ROUTER_MAC)
        .ipv4([10, 20, 1, 10], [198, 51, 100, 10], 64)
        .udp(5000, 5001);
    let mut whole = Vec::new();
    plain.write(&mut whole, &[1u8; 900]).unwrap();
    fragments_v4(&whole, 400, id)
}

#[test]
fn fragments_to_ports_nothing_is_read_on_are_not_held() {
    // In order: each goes on at once, not held until the datagram is whole.
    let mut e = engine(Settings::default());
    let frags = plain_udp_fragments(21);
    assert_eq!(frags.len(), 3);
    let (actions, out) = send(&mut e, &frags);
    assert_eq!(actions, vec![Action::Forward; 3]);
    assert!(out.is_empty());
    assert_eq!(e.counters.fragments_reassembled, 0);
    // Out of order: held until the first shows the port, then let through together.
    let frags = plain_udp_fragments(22);
    let mut out = Vec::new();
    assert_eq!(e.feed(Side::Inside, &frags[2], now(7), &mut out), Action::Drop);
    assert_eq!(e.feed(Side::Inside, &frags[0], now(7), &mut out), Action::Forward);
    assert_eq!(out, vec![(Side::Outside, frags[2].clone())]);
    assert_eq!(e.feed(Side::Inside, &frags[1], now(7), &mut out), Action::Forward);
}

#[test]
fn fragments_of_other_protocols_pass_at_once() {
    let mut e = engine(Settings::default());
    let icmp = PacketBuilder::ethernet2(CLIENT_MAC, ROUTER_MAC)
        .ipv4([10, 20, 9, 99], [198, 51, 100, 10], 64)
        .icmpv4_echo_request(1, 1);
    let mut whole = Vec::new();
    icmp.write(&mut whole, &[0u8; 3000]).unwrap();
    let frags = fragments_v4(&whole, 1480, 14);
    let (actions, _) = send(&mut e, &frags);
    assert!(actions.iter().all(|a| *a == Action::Forward));
    assert_eq!(e.counters.fragments, 0);
}

#[test]
fn incomplete_datagrams_expire() {
    let mut e = engine(Settings::default());
    handshake(&mut e, "10.20.9.99", "198.51.100.10");
    let whole =
        tcp("10.20.9.99", "198.51.100.10", true, ISN + 1, Some(SERVER_ISN + 1), false, &hello());
    let frags = fragments_v4(&whole, 64, 15);
    let (_, out) = send(&mut e, &frags[1..]);
    assert!(out.is_empty());
    e.handle_timeout(now(31_000));
    assert_eq!(e.counters.fragments_dropped, (frags.len() - 1) as u64);
    // The missing first fragment, late, starts a new datagram that never completes.
    let (_, out) = send(&mut e, &frags[..1]);
    assert!(out.is_empty());
}

/// IPv6 fragments of `frame` whose first fragment carries a destination-options header after
/// the Fragment header, and whose other fragments name another next header (59, no next
/// header): only the first one's counts (RFC 8200 §4.5).
fn fragments_v6_with_options(frame: &[u8], size: usize, id: u32) -> Vec<Vec<u8>> {
    let (head, transport) = frame.split_at(14 + 40);
    let mut payload = vec![6, 0, 1, 4, 0, 0, 0, 0]; // dest options: next TCP, PadN
    payload.extend_from_slice(transport);
    payload
        .chunks(size)
        .enumerate()
        .map(|(i, chunk)| {
            let mut f = head.to_vec();
            f[14 + 4..14 + 6].copy_from_slice(&((8 + chunk.len()) as u16).to_be_bytes());
            f[14 + 6] = 44;
            let more = (i + 1) * size < payload.len();
            let off = ((i * size / 8) as u16) << 3 | u16::from(more);
            f.extend_from_slice(&[if i == 0 { 60 } else { 59 }, 0]);
            f.extend_from_slice(&off.to_be_bytes());
            f.extend_from_slice(&id.to_be_bytes());
            f.extend_from_slice(chunk);
            f
        })
        .collect()
}

#[test]
fn ipv6_fragments_naming_other_headers_are_still_reassembled() {
    let mut e = engine(Settings::default());
    let (c, s) = ("fd20::9:99", "2001:db8:5100::10");
    handshake(&mut e, c, s);
    let whole = tcp(c, s, true, ISN + 1, Some(SERVER_ISN + 1), false, &hello());
    let frags = fragments_v6_with_options(&whole, 64, 77);
    let (actions, out) = send(&mut e, &frags);
    assert!(actions.iter().all(|a| *a == Action::Drop), "none passes on its own");
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(out.iter().all(|(_, f)| is_reset(f)));
    assert_eq!(e.counters.fragments_reassembled, 1);
}

#[test]
fn a_fragment_etherparse_cannot_read_is_still_held() {
    // A first fragment cut inside its destination-options header: etherparse refuses the
    // frame, which must not make it "not IP" and pass.
    let mut e = engine(Settings::default());
    let (c, s) = ("fd20::9:99", "2001:db8:5100::10");
    handshake(&mut e, c, s);
    let whole = tcp(c, s, true, ISN + 1, Some(SERVER_ISN + 1), false, &hello());
    let frags = fragments_v6_with_options(&whole, 64, 78);
    let mut first = frags[0][..14 + 40 + 8 + 4].to_vec();
    first[14 + 4..14 + 6].copy_from_slice(&12u16.to_be_bytes());
    first[14 + 40 + 3] |= 1; // more fragments
    assert!(frame::parse(&first).is_none(), "etherparse reads it after all");
    let (actions, out) = send(&mut e, &[first]);
    assert_eq!(actions, vec![Action::Drop]);
    assert!(out.is_empty());
}
