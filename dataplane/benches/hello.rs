//! ClientHello parse + policy decision per second (target ≥ 5 M/s per core), and what the
//! evasion checks add: the TCP checksum of the segment, and the guard over the decided bytes.
//! Run: `cargo bench -p sluice-dataplane --bench hello`.
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice_dataplane::flow::{Class, HelloNames};
use sluice_dataplane::guard::Guard;
use sluice_dataplane::wire::frame;
use sluice_dataplane::wire::tls::{HelloParse, parse_client_hello};
use sluice_rules::catalog::ShippedOnly;
use sluice_rules::{AppSeen, IdentityOverlay, Query};

/// A hello whose app is not looked up (unknown).
const HELLO: AppSeen = AppSeen::Hello(None);

fn bench(c: &mut Criterion) {
    let hello = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/clienthello/curl-api.openai.com.bin"
    ))
    .unwrap();
    let rules =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../rules/default.toml"))
            .unwrap();
    let policy = sluice_rules::compile("default.toml", &rules, &ShippedOnly).unwrap().policy;
    let overlay = IdentityOverlay::default();
    let src = "10.20.9.99".parse().unwrap();
    let mut g = c.benchmark_group("clienthello");
    g.throughput(Throughput::Elements(1));
    let mut scratch = Vec::new();
    g.bench_function("parse", |b| {
        b.iter(|| {
            matches!(parse_client_hello(black_box(&hello), &mut scratch), HelloParse::Hello(_))
        })
    });
    g.bench_function("parse+decide", |b| {
        b.iter(|| {
            let HelloParse::Hello(h) = parse_client_hello(black_box(&hello), &mut scratch) else {
                panic!()
            };
            let q = Query { src, mac: None, sni: h.sni(), port: 443, now: 0, app: HELLO, op: None };
            black_box(policy.decide(&q, &overlay).action)
        })
    });
    // What app identification adds to the engine's work at a hello, which computes the JA4
    // for the flow's record either way: the catalog lookup by JA4 and SNI.
    g.bench_function("parse+ja4+decide", |b| {
        b.iter(|| {
            let HelloParse::Hello(h) = parse_client_hello(black_box(&hello), &mut scratch) else {
                panic!()
            };
            let ja4 = h.ja4();
            let q = Query { src, mac: None, sni: h.sni(), port: 443, now: 0, app: HELLO, op: None };
            black_box((policy.decide(&q, &overlay).action, ja4))
        })
    });
    // The decision for a hello whose app was looked up.
    let decide_app = |sni: Option<&str>, app| {
        let q =
            Query { src, mac: None, sni, port: 443, now: 0, app: AppSeen::Hello(app), op: None };
        policy.decide(&q, &overlay).action
    };
    g.bench_function("parse+ja4+app+decide", |b| {
        b.iter(|| {
            let HelloParse::Hello(h) = parse_client_hello(black_box(&hello), &mut scratch) else {
                panic!()
            };
            let ja4 = h.ja4();
            let app = policy.apps.by_hello(&ja4, h.sni()).app;
            black_box((decide_app(h.sni(), app), ja4))
        })
    });
    // The hello as it arrives: one TCP segment in an Ethernet frame.
    let mut seg = Vec::new();
    etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
        .ipv4([10, 20, 9, 99], [198, 51, 100, 10], 64)
        .tcp(40000, 443, 1001, 64_000)
        .ack(5001)
        .write(&mut seg, &hello)
        .unwrap();
    g.bench_function("tcp checksum", |b| {
        let f = frame::parse(&seg).unwrap();
        b.iter(|| black_box(frame::tcp_checksum_ok(black_box(&seg), &f)))
    });
    g.bench_function("checksum+parse+decide+guard", |b| {
        let f = frame::parse(&seg).unwrap();
        b.iter(|| {
            assert!(frame::tcp_checksum_ok(black_box(&seg), &f));
            let HelloParse::Hello(h) = parse_client_hello(f.payload, &mut scratch) else {
                panic!()
            };
            let q = Query { src, mac: None, sni: h.sni(), port: 443, now: 0, app: HELLO, op: None };
            black_box(policy.decide(&q, &overlay).action);
            black_box(Guard::new(f.tcp.unwrap().seq, f.payload, Some(5001)))
        })
    });
    g.bench_function("frame+checksum+parse+decide+guard", |b| {
        b.iter(|| {
            let f = frame::parse(black_box(&seg)).unwrap();
            assert!(frame::tcp_checksum_ok(&seg, &f));
            let HelloParse::Hello(h) = parse_client_hello(f.payload, &mut scratch) else {
                panic!()
            };
            let q = Query { src, mac: None, sni: h.sni(), port: 443, now: 0, app: HELLO, op: None };
            black_box(policy.decide(&q, &overlay).action);
            black_box(Guard::new(f.tcp.unwrap().seq, f.payload, Some(5001)))
        })
    });
    // What the engine does at a hello, as it runs: the frame, the checksum, the hello parsed
    // and recorded into the flow's classification (SNI, ALPN, the JA4 remembered by the
    // hello's parts), the app looked up by JA4 and SNI, the decision, the guard.
    for (label, cap) in [
        ("engine hello path (frame..guard, ja4 memo, app)", 65_536),
        // The same with a memo that keeps nothing: a JA4 computed for every hello, as before
        // the memo (and as for each kind of hello the memo has not seen).
        ("engine hello path, no memo (ja4 per hello)", 0),
    ] {
        let mut names = HelloNames::new(cap);
        g.bench_function(label, |b| {
            b.iter(|| {
                let f = frame::parse(black_box(&seg)).unwrap();
                assert!(frame::tcp_checksum_ok(&seg, &f));
                let HelloParse::Hello(h) = parse_client_hello(f.payload, &mut scratch) else {
                    panic!()
                };
                let mut class = Class::default();
                class.set_hello(&h, &mut names);
                let app = policy.apps.by_hello(class.ja4.as_deref().unwrap(), h.sni()).app;
                black_box(decide_app(h.sni(), app));
                black_box((class, Guard::new(f.tcp.unwrap().seq, f.payload, Some(5001))))
            })
        });
    }
    let mut names = HelloNames::new(65_536);
    let HelloParse::Hello(h) = parse_client_hello(&hello, &mut scratch) else { panic!() };
    g.bench_function("ja4", |b| b.iter(|| black_box(black_box(&h).ja4())));
    g.bench_function("ja4 from the memo", |b| b.iter(|| black_box(names.ja4.ja4(black_box(&h)))));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
