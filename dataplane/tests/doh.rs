//! DNS the appliance cannot read (issue: coverage): Firefox's DoH canary answered NXDOMAIN,
//! DNS over TLS refused where the shipped rules say so.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use etherparse::PacketBuilder;
use sluice_dataplane::engine::{Action, Settings, Side};
use sluice_dataplane::wire::{dns, frame};

use common::Drive;
use common::{CLIENT_MAC, ROUTER_MAC, engine, hello_file, now, tcp};

fn query(name: &str, id: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, ROUTER_MAC)
        .ipv4(src, dst, 64)
        .udp(sport, dport)
        .write(&mut f, payload)
        .unwrap();
    f
}

#[test]
fn the_doh_canary_is_answered_nxdomain_and_other_names_pass() {
    let mut e = engine(Settings::default());
    let mut out = Vec::new();
    let q = udp([10, 20, 1, 10], [10, 20, 0, 1], 5353, 53, &query("use-application-dns.net", 7));
    assert_eq!(e.feed(Side::Inside, &q, now(0), &mut out), Action::Drop);
    assert_eq!(out.len(), 1);
    let (side, answer) = &out[0];
    let p = frame::parse(answer).unwrap();
    assert_eq!(*side, Side::Inside);
    assert_eq!(
        (p.sport, p.dport, p.src.to_string(), p.dst.to_string()),
        (53, 5353, "10.20.0.1".into(), "10.20.1.10".into())
    );
    assert_eq!((p.payload[0], p.payload[1], p.payload[3] & 0x0f), (0, 7, 3));
    assert_eq!(dns::read(p.payload).unwrap().question.as_deref(), Some("use-application-dns.net"));
    assert_eq!(e.counters.canary_answers, 1);
    // Any other name goes to the resolver.
    out.clear();
    let q = udp([10, 20, 1, 10], [10, 20, 0, 1], 5353, 53, &query("api.openai.com", 8));
    assert_eq!(e.feed(Side::Inside, &q, now(1), &mut out), Action::Forward);
    assert!(out.is_empty());
}

#[test]
fn dns_over_tls_is_refused_to_the_inspected_teams() {
    // Finance on TCP 853: whatever the name, the shipped rules refuse it.
    let mut e = engine(Settings::default());
    let (c, s) = ("10.20.1.10", "198.51.100.53");
    let mut out = Vec::new();
    let at = |seq, ack, syn, payload: &[u8], c2s| {
        let mut f = tcp(c, s, c2s, seq, ack, syn, payload);
        // The helper builds port 443: make it 853.
        let p = frame::parse(&f).unwrap();
        let at = p.l4_offset + if c2s { 2 } else { 0 };
        f[at..at + 2].copy_from_slice(&853u16.to_be_bytes());
        frame::complete_l4_checksum(&mut f);
        f
    };
    e.feed(Side::Inside, &at(1, None, true, &[], true), now(0), &mut out);
    e.feed(Side::Outside, &at(900, Some(2), true, &[], false), now(0), &mut out);
    e.feed(Side::Inside, &at(2, Some(901), false, &[], true), now(0), &mut out);
    let hello = hello_file("openssl-example.org.bin");
    assert_eq!(
        e.feed(Side::Inside, &at(2, Some(901), false, &hello, true), now(1), &mut out),
        Action::Drop
    );
    assert_eq!(e.counters.blocked, 1);
    e.shutdown(now(2));
    let rec = e.records().into_iter().find_map(|r| match r {
        sluice_dataplane::record::Record::Flow(f) => Some(serde_json::to_value(&f).unwrap()),
        _ => None,
    });
    assert_eq!(rec.unwrap()["rule"], "inspected-no-dns-over-tls");
}
