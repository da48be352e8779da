//! App identification: flow lookups by JA4 and server name per second (target ≥ 5 M/s per
//! core), and request heads matched per second, with the shipped catalog.
//! Run: `cargo bench -p sluice-rules --bench apps`.

#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice_rules::apps::{HeaderSource, RequestFacts, shipped};

struct Heads(Vec<(&'static str, &'static [u8])>);

impl HeaderSource for Heads {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }
}

fn bench(c: &mut Criterion) {
    let catalog = shipped();
    // Known and unknown fingerprints, whole and matched by their first parts.
    let hellos = [
        ("t13d1812h1_85036bcba153_d41ae481755e", "api.openai.com"),
        ("t13d1516h2_8daaf6152771_0123456789ab", "chatgpt.com"),
        ("t13d3112h2_e8f1e7e78f70_b26ce05bbdd6", "api.openai.com"),
        ("t13d9999h2_000000000000_000000000000", "api.openai.com"),
    ];
    let mut g = c.benchmark_group("apps");
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    g.bench_function("by_hello (ja4+sni)", |b| {
        b.iter(|| {
            let (ja4, sni) = hellos[i % hellos.len()];
            i += 1;
            black_box(catalog.by_hello(black_box(ja4), Some(sni)))
        })
    });
    let sdk = Heads(vec![
        ("user-agent", b"OpenAI/Python 3.57.0"),
        ("x-stainless-lang", b"python"),
        ("x-stainless-package-version", b"3.57.0"),
        ("content-type", b"application/json"),
        ("authorization", b"Bearer sk-x"),
    ]);
    let browser = Heads(vec![(
        "user-agent",
        b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36",
    )]);
    g.bench_function("by_request (sdk)", |b| {
        let f = RequestFacts {
            authority: "api.openai.com",
            path: "/v1/chat/completions",
            headers: &sdk,
        };
        b.iter(|| black_box(catalog.by_request(black_box(&f))))
    });
    g.bench_function("by_request (browser, chatgpt)", |b| {
        let f = RequestFacts {
            authority: "chatgpt.com",
            path: "/backend-api/f/conversation",
            headers: &browser,
        };
        b.iter(|| black_box(catalog.by_request(black_box(&f))))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
