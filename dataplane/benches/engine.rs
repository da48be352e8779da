//! Frames per second through `Engine::handle` on the fast path (an established, allowed TCP
//! flow) and for new flows (SYN + ClientHello + verdict). Run:
//! `cargo bench -p sluice-dataplane --bench engine`.
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::Arc;

use arc_swap::ArcSwap;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use etherparse::PacketBuilder;
use sluice_dataplane::engine::{Engine, Now, Settings, Side};
use sluice_rules::IdentityOverlay;
use sluice_rules::catalog::ShippedOnly;

fn tcp(sport: u16, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([10, 20, 1, 10], [198, 51, 100, 10], 64)
        .tcp(sport, 443, seq, 64_000);
    let b = match flags {
        0 => b.syn(),
        _ => b.ack(1).psh(),
    };
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

fn bench(c: &mut Criterion) {
    let rules =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../rules/default.toml"))
            .unwrap();
    let policy = sluice_rules::compile("default.toml", &rules, &ShippedOnly).unwrap().policy;
    let hello = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/clienthello/curl-api.openai.com.bin"
    ))
    .unwrap();
    let mut e = Engine::new(
        Arc::new(ArcSwap::from_pointee(policy)),
        Arc::new(ArcSwap::from_pointee(IdentityOverlay::default())),
        Settings::default(),
    );
    let now = Now { mono_ms: 1, unix_ms: 1 };
    e.handle(Side::Inside, &tcp(40_000, 100, 0, &[]), now);
    e.handle(Side::Inside, &tcp(40_000, 101, 1, &hello), now);
    let data = tcp(40_000, 101 + hello.len() as u32, 1, &[0u8; 1400]);
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(1));
    g.bench_function("established-frame", |b| {
        b.iter(|| black_box(e.handle(Side::Inside, black_box(&data), now)))
    });
    // Every iteration a new flow: the source address and port are patched into templates
    // (the engine does not verify checksums; the kernel did on the way in).
    let mut syn = tcp(10_000, 5, 0, &[]);
    let mut hello_frame = tcp(10_000, 6, 1, &hello);
    let mut i = 0u32;
    g.bench_function("new-tls-flow(syn+hello+verdict)", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let ip = u32::from_be_bytes([10, 20, 1, 10]).wrapping_add(i >> 14).to_be_bytes();
            let port = (10_000 + (i & 0x3fff)) as u16;
            for f in [&mut syn, &mut hello_frame] {
                f[26..30].copy_from_slice(&ip);
                f[34..36].copy_from_slice(&port.to_be_bytes());
            }
            e.handle(Side::Inside, &syn, now);
            let a = e.handle(Side::Inside, &hello_frame, now);
            // Records of evicted flows are written out, as the driver does.
            while let Some(r) = e.poll_record() {
                black_box(r);
            }
            black_box(a)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
