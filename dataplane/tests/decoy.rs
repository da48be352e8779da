//! Decoy and second ClientHellos (issue: coverage): a hello that never reaches the server must
//! not decide, and a decided hello cannot be replaced by another one afterwards.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use sluice_dataplane::engine::OffloadOp;
use sluice_dataplane::engine::{Action, Engine, Settings, Side};
use sluice_dataplane::wire::frame;

use common::Drive;
use common::{engine, hello_file, now, tcp};

const GUEST: &str = "10.20.9.99";
const API: &str = "198.51.100.10";
const ISN: u32 = 3_000;
const SERVER_ISN: u32 = 70_000;

fn handshake(e: &mut Engine) {
    let mut out = Vec::new();
    for (side, f) in [
        (Side::Inside, tcp(GUEST, API, true, ISN, None, true, &[])),
        (Side::Outside, tcp(GUEST, API, false, SERVER_ISN, Some(ISN + 1), true, &[])),
        (Side::Inside, tcp(GUEST, API, true, ISN + 1, Some(SERVER_ISN + 1), false, &[])),
    ] {
        assert_eq!(e.feed(side, &f, now(0), &mut out), Action::Forward);
    }
}

/// A client segment at stream offset `off`.
fn client(off: u32, payload: &[u8]) -> Vec<u8> {
    tcp(GUEST, API, true, ISN + 1 + off, Some(SERVER_ISN + 1), false, payload)
}

/// A server segment at its stream offset `off`, acknowledging client offset `ack`.
fn server(off: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
    tcp(GUEST, API, false, SERVER_ISN + 1 + off, Some(ISN + 1 + ack), false, payload)
}

fn resets(out: &[(Side, Vec<u8>)]) -> usize {
    out.iter().filter(|(_, f)| frame::parse(f).and_then(|p| p.tcp).is_some_and(|t| t.rst)).count()
}

fn record(typ: u8, body: &[u8]) -> Vec<u8> {
    let mut r = vec![typ, 3, 3];
    r.extend_from_slice(&(body.len() as u16).to_be_bytes());
    r.extend_from_slice(body);
    r
}

/// A HelloRetryRequest (a ServerHello with RFC 8446's special random).
fn hello_retry_request() -> Vec<u8> {
    let mut body = vec![0x02, 0, 0, 70, 3, 3];
    body.extend_from_slice(&[
        0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8,
        0x91, 0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8,
        0x33, 0x9c,
    ]);
    body.extend_from_slice(&[0; 38]);
    record(0x16, &body)
}

#[test]
fn a_decoy_with_a_bad_checksum_does_not_decide() {
    // The guest may not reach api.openai.com; a hello for example.org would pass.
    let mut e = engine(Settings::default());
    handshake(&mut e);
    let mut decoy = client(0, &hello_file("openssl-example.org.bin"));
    let n = decoy.len();
    decoy[n - 1] ^= 0x5a; // the checksum no longer matches
    let mut out = Vec::new();
    assert_eq!(e.feed(Side::Inside, &decoy, now(1), &mut out), Action::Drop);
    assert!(out.is_empty());
    assert_eq!((e.counters.bad_checksums, e.counters.hellos), (1, 0));
    // The real hello decides: refused.
    let real = client(0, &hello_file("curl-api.openai.com.bin"));
    assert_eq!(e.feed(Side::Inside, &real, now(2), &mut out), Action::Drop);
    assert_eq!(resets(&out), 2);
    assert_eq!(e.counters.blocked, 1);
}

#[test]
fn a_decoy_that_expires_past_the_appliance_is_caught_by_the_real_hello() {
    let mut e = engine(Settings::default());
    handshake(&mut e);
    let decoy = hello_file("openssl-example.org.bin");
    let mut out = Vec::new();
    // A valid decoy (its TTL runs out past the appliance): decided, allowed, forwarded.
    assert_eq!(e.feed(Side::Inside, &client(0, &decoy), now(1), &mut out), Action::Forward);
    // Its retransmission is fine.
    assert_eq!(e.feed(Side::Inside, &client(0, &decoy), now(2), &mut out), Action::Forward);
    assert!(out.is_empty());
    // The real hello in the same sequence range disagrees: evasion, reset both ways.
    let real = client(0, &hello_file("curl-api.openai.com.bin"));
    assert_eq!(e.feed(Side::Inside, &real, now(3), &mut out), Action::Drop);
    assert_eq!(resets(&out), 2);
    assert_eq!((e.counters.evasions, e.counters.blocked), (1, 1));
    // Everything after is dropped.
    let mut out = Vec::new();
    assert_eq!(
        e.feed(Side::Outside, &server(0, 0, b"\x16\x03\x03"), now(4), &mut out),
        Action::Drop
    );
}

#[test]
fn the_guard_lets_go_once_the_server_has_the_hello_and_answered() {
    let mut e = engine(Settings { fast_path: true, ..Settings::default() });
    handshake(&mut e);
    let decoy = hello_file("openssl-example.org.bin");
    let len = decoy.len() as u32;
    let mut out = Vec::new();
    e.feed(Side::Inside, &client(0, &decoy), now(1), &mut out);
    let mut ops = Vec::new();
    e.offload_ops_into(&mut ops);
    assert!(ops.is_empty());
    // The server acknowledges and answers with a ServerHello: the flow may leave the engine.
    let mut sh = hello_retry_request();
    sh[20] ^= 1; // an ordinary random
    e.feed(Side::Outside, &server(0, len, &sh), now(2), &mut out);
    // The client's next record is read, and until the server has its header too the flow
    // stays with the engine.
    e.feed(Side::Inside, &client(len, &record(0x17, &[0; 30])), now(3), &mut out);
    e.offload_ops_into(&mut ops);
    assert!(ops.is_empty(), "{ops:?}");
    e.feed(Side::Outside, &server(sh.len() as u32, len + 35, &[]), now(4), &mut out);
    e.offload_ops_into(&mut ops);
    assert!(matches!(ops.as_slice(), [OffloadOp::Add(_)]), "{ops:?}");
}

#[test]
fn a_second_hello_after_a_retry_is_decided_afresh() {
    let mut e = engine(Settings::default());
    handshake(&mut e);
    let first = hello_file("openssl-example.org.bin");
    let len = first.len() as u32;
    let mut out = Vec::new();
    assert_eq!(e.feed(Side::Inside, &client(0, &first), now(1), &mut out), Action::Forward);
    // The server asks to retry; the client's new hello names a server refused to it,
    // after a change-cipher-spec record (middlebox compatibility).
    e.feed(Side::Outside, &server(0, len, &hello_retry_request()), now(2), &mut out);
    let mut flight = record(0x14, &[1]);
    flight.extend(hello_file("curl-api.openai.com.bin"));
    assert_eq!(e.feed(Side::Inside, &client(len, &flight), now(3), &mut out), Action::Drop);
    assert_eq!(resets(&out), 2);
    assert_eq!(e.counters.hellos, 2);
    assert_eq!(e.counters.blocked, 1);
    // The flow's record names the second hello's server.
    e.handle_timeout(now(400_000));
    let recs = e.records();
    let flow = recs
        .iter()
        .filter_map(|r| serde_json::to_value(r).ok())
        .find(|r| r["type"] == "flow")
        .unwrap();
    assert_eq!(
        (flow["sni"].as_str(), flow["verdict"].as_str()),
        (Some("api.openai.com"), Some("block"))
    );
}

#[test]
fn a_second_hello_for_the_same_server_after_a_retry_passes() {
    let mut e = engine(Settings::default());
    handshake(&mut e);
    let first = hello_file("openssl-example.org.bin");
    let len = first.len() as u32;
    let mut out = Vec::new();
    e.feed(Side::Inside, &client(0, &first), now(1), &mut out);
    e.feed(Side::Outside, &server(0, len, &hello_retry_request()), now(2), &mut out);
    let second = client(len, &first);
    let action = e.feed(Side::Inside, &second, now(3), &mut out);
    // Decided again (allowed): the held segment goes on.
    assert!(
        action == Action::Forward || out.iter().any(|(s, f)| *s == Side::Outside && *f == second)
    );
    assert_eq!(resets(&out), 0);
    assert_eq!(e.counters.blocked, 0);
}

#[test]
fn the_servers_side_forged_from_the_inside_is_dropped() {
    // After a decoy, the client forges the server's acknowledgment and answer from the inside,
    // to release the guard before sending the real hello.
    let mut e = engine(Settings::default());
    handshake(&mut e);
    let decoy = hello_file("openssl-example.org.bin");
    let len = decoy.len() as u32;
    let mut out = Vec::new();
    e.feed(Side::Inside, &client(0, &decoy), now(1), &mut out);
    let forged = server(0, len + 6, &record(0x16, &[0x02; 60]));
    assert_eq!(e.feed(Side::Inside, &forged, now(2), &mut out), Action::Drop);
    let real = client(0, &hello_file("curl-api.openai.com.bin"));
    assert_eq!(e.feed(Side::Inside, &real, now(3), &mut out), Action::Drop);
    assert_eq!(resets(&out), 2);
    assert_eq!(e.counters.evasions, 2);
}

#[test]
fn two_hellos_in_one_flight_are_refused() {
    let mut e = engine(Settings::default());
    handshake(&mut e);
    let mut both = hello_file("openssl-example.org.bin");
    both.extend(hello_file("curl-api.openai.com.bin"));
    let mut out = Vec::new();
    assert_eq!(e.feed(Side::Inside, &client(0, &both), now(1), &mut out), Action::Drop);
    assert_eq!(resets(&out), 2);
    assert_eq!((e.counters.evasions, e.counters.blocked), (1, 1));
}

#[test]
fn a_stream_that_is_not_tls_has_no_guard() {
    // Plain bytes on 443, allowed as not TLS: later bytes that happen to look like a record
    // header are not read as one.
    let mut e = engine(Settings::default());
    handshake(&mut e);
    let mut out = Vec::new();
    let first = b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n";
    assert_eq!(e.feed(Side::Inside, &client(0, first), now(1), &mut out), Action::Forward);
    let next = client(first.len() as u32, &[0x14, 0x03, 0x03, 0x00, 0x05, 0x01, 0x02]);
    assert_eq!(e.feed(Side::Inside, &next, now(2), &mut out), Action::Forward);
    assert_eq!((e.counters.evasions, e.counters.blocked), (0, 0));
    assert!(out.is_empty());
}
