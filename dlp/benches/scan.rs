//! DLP throughput over 1 MB of mixed prompt JSON: the default blocking profile of
//! rules/default.toml (`block-sensitive`: every credential, cards, IBANs, SSNs, the custom
//! code names), then 10, 40 and all detectors, to show the cost does not grow with the
//! number of rules; the default profile over the same prompts in French (every string
//! normalised). Also the scan alone over the same text (no JSON).
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice_dlp::{DETECTORS, DetectorSet, Scanner, extract};

/// ~1 MB of chat-completion bodies: prose, code, numbers, ids, and a secret now and then.
fn corpus() -> Vec<u8> {
    let prose = "Please summarise the attached quarterly report for the board. Revenue grew 12% \
        year over year to 4.2 million; the order backlog stands at 1,284 units (order #88231907). \
        Draft a reply to the customer, keep it under 200 words, and mention ticket TASK-4711. ";
    let code = "fn main() { let v = vec![1, 2, 3]; println!(\"{:?}\", v.iter().sum::<i32>()); } // build 10.0.19045.2965 ";
    let secrets = [
        "my card is 4111 1111 1111 1111",
        "key AKIAIOSFODNN7EXAMPLE",
        "mail bob@example.com",
        "call +44 20 7946 0958",
        "token ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8",
    ];
    let mut out = Vec::new();
    out.extend_from_slice(b"{\"model\":\"gpt-4o-mini\",\"messages\":[");
    let mut i = 0;
    while out.len() < 1 << 20 {
        if i > 0 {
            out.push(b',');
        }
        let mut text = String::new();
        for k in 0..6usize {
            text.push_str(if (i + k).is_multiple_of(3) { code } else { prose });
        }
        if i.is_multiple_of(16) {
            text.push_str(secrets[(i / 16) % secrets.len()]);
        }
        let msg = serde_json::json!({"role": if i.is_multiple_of(2) { "user" } else { "assistant" }, "content": text});
        out.extend_from_slice(&serde_json::to_vec(&msg).unwrap());
        i += 1;
    }
    out.extend_from_slice(b"]}");
    out
}

fn bench(c: &mut Criterion) {
    let body = corpus();
    let text = String::from_utf8(body.clone()).unwrap();
    // The shipped default blocking profile, as rules/default.toml defines it.
    let compiled = sluice_rules::compile(
        "default.toml",
        include_str!("../../rules/default.toml"),
        &sluice_rules::catalog::ShippedOnly,
    )
    .unwrap();
    let policy = compiled.policy;
    let scanner = Scanner::with_custom(&policy.custom_detectors).unwrap();
    let profile = policy.dlp_profiles.iter().find(|p| &*p.name == "block-sensitive").unwrap();
    let default_set = scanner.profile(&profile.detectors).unwrap();
    let names: Vec<&str> = DETECTORS.iter().map(|d| d.name).collect();
    let default_label = format!("default profile ({})", default_set.len());
    let sets = [
        (default_label.as_str(), default_set),
        ("10 detectors", DetectorSet::from_names(&names[..10]).unwrap()),
        ("40 detectors", DetectorSet::from_names(&names[..40]).unwrap()),
        ("all detectors", DetectorSet::all()),
    ];
    // The same prompts in French: every string has accents, so each is normalised first.
    let accented = String::from_utf8(body.clone())
        .unwrap()
        .replace("Please summarise", "Résumez s\u{2019}il vous plaît")
        .replace("the board", "le conseil d\u{2019}administration, réservé")
        .into_bytes();
    let mut g = c.benchmark_group("dlp 1 MB prompt JSON");
    // Decimal units (MB/s, GB/s), as the issue states its target.
    g.throughput(Throughput::BytesDecimal(body.len() as u64));
    g.sample_size(20);
    for (label, set) in &sets {
        g.bench_function(format!("inspect, {label}"), |b| {
            b.iter(|| {
                extract::inspect(
                    &scanner,
                    set,
                    extract::Request {
                        content_type: Some(b"application/json"),
                        body: &body,
                        redact: false,
                        salt: b"s",
                    },
                )
            })
        });
    }
    g.bench_function(format!("inspect accented text, {default_label}"), |b| {
        b.iter(|| {
            extract::inspect(
                &scanner,
                &default_set,
                extract::Request {
                    content_type: Some(b"application/json"),
                    body: &accented,
                    redact: false,
                    salt: b"s",
                },
            )
        })
    });
    for (label, set) in &sets {
        g.bench_function(format!("scan only, {label}"), |b| {
            let mut out = Vec::new();
            b.iter(|| {
                out.clear();
                scanner.scan(&text, set, &mut out);
                out.len()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
