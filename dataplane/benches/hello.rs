//! ClientHello parse + policy decision per second (target ≥ 5 M/s per core).
//! Run: `cargo bench -p sluice-dataplane --bench hello`.
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice_dataplane::wire::tls::{HelloParse, parse_client_hello};
use sluice_rules::catalog::ShippedOnly;
use sluice_rules::{IdentityOverlay, Query};

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
            let q = Query { src, mac: None, sni: h.sni(), port: 443, now: 0 };
            black_box(policy.decide(&q, &overlay).action)
        })
    });
    let HelloParse::Hello(h) = parse_client_hello(&hello, &mut scratch) else { panic!() };
    g.bench_function("ja4", |b| b.iter(|| black_box(black_box(&h).ja4())));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
