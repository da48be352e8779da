//! Scanner throughput over mixed prompt JSON (see BENCHMARKS.md).
#![allow(missing_docs, clippy::unwrap_used)]
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
fn bench(_c: &mut Criterion) {}
criterion_group!(benches, bench);
criterion_main!(benches);
