//! decide() throughput with every shipped catalog and 1,000 identities, and compile time for a
//! rule set of 100k domains. Run: `cargo bench -p sluice-rules --bench decide`.

#![allow(missing_docs, clippy::unwrap_used)]

use std::fmt::Write;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use sluice_rules::catalog::{SHIPPED, ShippedOnly};
use sluice_rules::{IdentityOverlay, Query, compile};

fn big_rule_set(identities: usize, extra_domains: usize) -> String {
    let mut t = String::new();
    for i in 0..identities {
        let _ = writeln!(
            t,
            "[[identity]]\nname = \"team{i}\"\ncidrs = [\"10.{}.{}.0/24\"]",
            i / 256,
            i % 256
        );
    }
    for (name, _) in SHIPPED {
        let _ = writeln!(t, "[[category]]\nname = \"{name}\"\ninclude = [\"{name}\"]");
    }
    if extra_domains > 0 {
        t.push_str("[[category]]\nname = \"bulk\"\ndomains = [\n");
        for i in 0..extra_domains {
            let _ = writeln!(t, "  \"host{i}.bulk{}.example\",", i % 997);
        }
        t.push_str("]\n");
    }
    for i in (0..identities).step_by(10) {
        let _ = writeln!(
            t,
            "[[rule]]\nname = \"r{i}\"\nidentities = [\"team{i}\"]\ncategories = [\"other-ai\"]\naction = \"block\""
        );
    }
    t.push_str("[[rule]]\nname = \"guests\"\nidentities = [\"unknown\"]\ncategories = [\"openai-api\", \"chatgpt\"]\naction = \"block\"\n");
    t.push_str("[[rule]]\nname = \"teams\"\ncategories = [\"openai-api\", \"chatgpt\"]\naction = \"allow\"\n");
    t
}

fn bench(c: &mut Criterion) {
    let text = big_rule_set(1000, 0);
    let policy = compile("bench.toml", &text, &ShippedOnly).unwrap().policy;
    let overlay = IdentityOverlay::default();
    let queries: Vec<(std::net::IpAddr, &str)> = vec![
        ("10.3.200.7".parse().unwrap(), "api.openai.com"),
        ("10.1.5.9".parse().unwrap(), "files.a1b2.oaiusercontent.com"),
        ("192.0.2.1".parse().unwrap(), "chatgpt.com"),
        ("10.0.7.1".parse().unwrap(), "www.example.org"),
    ];
    let mut i = 0usize;
    c.bench_function("decide/1000-identities/all-catalogs", |b| {
        b.iter(|| {
            let (src, sni) = queries[i % queries.len()];
            i += 1;
            let q = Query {
                src,
                mac: None,
                sni: Some(sni),
                port: 443,
                now: 0,
                app: Default::default(),
                op: None,
            };
            black_box(policy.decide(black_box(&q), &overlay).action)
        })
    });
    let big = big_rule_set(10, 100_000);
    let mut g = c.benchmark_group("compile");
    g.sample_size(10);
    g.bench_function("100k-domains", |b| {
        b.iter(|| compile("big.toml", black_box(&big), &ShippedOnly).unwrap().policy.domain_count())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
