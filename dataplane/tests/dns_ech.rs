//! ECH kept out of reach through DNS (issue: coverage): answers for categorised names lose the
//! `ech` parameter of their HTTPS records on the way in, so clients never try ECH for them;
//! other names, and `dns_ech = "pass"`, leave answers as they are.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use etherparse::PacketBuilder;
use sluice_dataplane::engine::{Action, Settings, Side};
use sluice_dataplane::wire::frame;

use common::Drive;
use common::{CLIENT_MAC, ROUTER_MAC, engine, engine_with, now};

const ECH: &[u8] = b"\xfe\x0d\x00\x3aECH config list";

/// A response to an HTTPS query for `name`: one record with alpn, ipv4hint, ech, ipv6hint.
fn answer(name: &str) -> Vec<u8> {
    let mut m = vec![0, 9, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
    for label in name.split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.extend_from_slice(&[0, 0, 65, 0, 1]);
    let mut r = vec![0, 1, 0];
    for (k, v) in [(1u16, &b"\x02h2"[..]), (4, &[198, 51, 100, 20]), (5, ECH), (6, &[0x20; 16])] {
        r.extend_from_slice(&k.to_be_bytes());
        r.extend_from_slice(&(v.len() as u16).to_be_bytes());
        r.extend_from_slice(v);
    }
    m.extend_from_slice(&[0xc0, 12, 0, 65, 0, 1, 0, 0, 0, 60]);
    m.extend_from_slice(&(r.len() as u16).to_be_bytes());
    m.extend_from_slice(&r);
    m
}

/// A response to an HTTPS query for `name` that CNAMEs to `target`, whose HTTPS record
/// (with ech) is owned by the target.
fn answer_via_cname(name: &str, target: &str) -> Vec<u8> {
    let labels = |n: &str| {
        let mut v = Vec::new();
        for label in n.split('.') {
            v.push(label.len() as u8);
            v.extend_from_slice(label.as_bytes());
        }
        v.push(0);
        v
    };
    let mut m = vec![0, 9, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0];
    m.extend_from_slice(&labels(name));
    m.extend_from_slice(&[0, 65, 0, 1]);
    let t = labels(target);
    m.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60]);
    m.extend_from_slice(&(t.len() as u16).to_be_bytes());
    m.extend_from_slice(&t);
    m.extend_from_slice(&t);
    // After the header, the question (7 + 4 bytes) and the record head (2 + 10).
    let rdata = &answer("x.lab")[12 + 7 + 4 + 12..];
    m.extend_from_slice(&[0, 65, 0, 1, 0, 0, 0, 60]);
    m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    m.extend_from_slice(rdata);
    m
}

/// The answer as the resolver sends it to alice: from the outside, v4 or v6.
fn from_resolver(payload: &[u8], v6: bool) -> Vec<u8> {
    let mut f = Vec::new();
    let b = PacketBuilder::ethernet2(ROUTER_MAC, CLIENT_MAC);
    let b = match v6 {
        false => b.ipv4([10, 20, 0, 1], [10, 20, 1, 10], 64),
        true => b.ipv6(
            "fd20::1".parse::<std::net::Ipv6Addr>().unwrap().octets(),
            "fd20::1:10".parse::<std::net::Ipv6Addr>().unwrap().octets(),
            64,
        ),
    };
    b.udp(53, 5353).write(&mut f, payload).unwrap();
    f
}

fn has_ech(payload: &[u8]) -> bool {
    payload.windows(ECH.len()).any(|w| w == ECH)
}

#[test]
fn ech_is_hidden_from_answers_for_categorised_names() {
    let mut e = engine(Settings::default());
    for v6 in [false, true] {
        let mut out = Vec::new();
        let f = from_resolver(&answer("chatgpt.com"), v6);
        assert_eq!(e.feed(Side::Outside, &f, now(0), &mut out), Action::Drop);
        assert_eq!(out.len(), 1);
        let (side, sent) = &out[0];
        assert_eq!(*side, Side::Inside);
        assert_eq!(sent.len(), f.len(), "same length: only the parameter changed");
        let p = frame::parse(sent).unwrap();
        assert!(!has_ech(p.payload), "the ECH configuration is gone");
        assert!(p.payload.windows(3).any(|w| w == b"\x02h2"), "alpn kept");
        // The rewritten datagram's checksum is right (a receiver would drop it otherwise).
        let mut check = sent.clone();
        frame::complete_l4_checksum(&mut check);
        assert_eq!(&check, sent);
    }
    assert_eq!(e.counters.ech_hidden, 2);
    // A name in no category: passed untouched.
    let mut out = Vec::new();
    let f = from_resolver(&answer("www.example.org"), false);
    assert_eq!(e.feed(Side::Outside, &f, now(1), &mut out), Action::Forward);
    assert!(out.is_empty());
}

#[test]
fn ech_is_hidden_behind_a_cname_too() {
    // chatgpt.com -> a CDN name in no category, whose HTTPS record carries the ech.
    let mut e = engine(Settings::default());
    let m = answer_via_cname("chatgpt.com", "chatgpt.cdn.example.net");
    assert!(has_ech(&m));
    let mut out = Vec::new();
    let f = from_resolver(&m, false);
    assert_eq!(e.feed(Side::Outside, &f, now(0), &mut out), Action::Drop);
    let p = frame::parse(&out[0].1).unwrap();
    assert!(!has_ech(p.payload));
    // The same CDN record answering a question for an uncategorised name passes.
    out.clear();
    let f = from_resolver(&answer_via_cname("www.example.org", "chatgpt.cdn.example.net"), false);
    assert_eq!(e.feed(Side::Outside, &f, now(1), &mut out), Action::Forward);
}

#[test]
fn dns_ech_pass_leaves_answers_alone() {
    let mut e = engine_with(&[("dns_ech = \"strip\"", "dns_ech = \"pass\"")], Settings::default());
    let mut out = Vec::new();
    let f = from_resolver(&answer("chatgpt.com"), false);
    assert_eq!(e.feed(Side::Outside, &f, now(0), &mut out), Action::Forward);
    assert!(out.is_empty());
    assert_eq!(e.counters.ech_hidden, 0);
}
