//! Precision and recall per detector family over the labelled corpus
//! (testdata/corpus.jsonl, written by testdata/make-corpus.py): both must reach 0.98.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use sluice_dlp::{DETECTORS, DetectorSet, Scanner};

fn family(name: &str) -> &'static str {
    DETECTORS.iter().find(|d| d.name == name).unwrap().family
}

#[test]
fn precision_and_recall_per_family() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/corpus.jsonl"))
            .unwrap();
    let scanner = Scanner::new().unwrap();
    let set = DetectorSet::all();
    // family -> (tp, fp, fn)
    let mut stats: BTreeMap<&str, (u32, u32, u32)> = BTreeMap::new();
    let mut misses = Vec::new();
    let (mut positives, mut negatives) = (0, 0);
    for line in text.lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        let t = row["text"].as_str().unwrap();
        let expect: Vec<&str> =
            row["expect"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        if expect.is_empty() {
            negatives += 1
        } else {
            positives += 1
        }
        let mut found = Vec::new();
        scanner.scan(t, &set, &mut found);
        let names: Vec<&str> = found.iter().map(|m| m.detector).collect();
        for e in &expect {
            let s = stats.entry(family(e)).or_default();
            if names.contains(e) {
                s.0 += 1
            } else {
                s.2 += 1;
                misses.push(format!("missed {e}: {t}"))
            }
        }
        for n in &names {
            if !expect.contains(n) {
                stats.entry(family(n)).or_default().1 += 1;
                misses.push(format!("false {n}: {t}"));
            }
        }
    }
    assert!(positives >= 500 && negatives >= 500, "{positives} positives, {negatives} negatives");
    for m in misses.iter().take(40) {
        eprintln!("{m}");
    }
    for (fam, (tp, fp, fnn)) in &stats {
        let p = f64::from(*tp) / f64::from(tp + fp).max(1.0);
        let r = f64::from(*tp) / f64::from(tp + fnn).max(1.0);
        eprintln!("{fam:<11} precision {p:.4} recall {r:.4} (tp {tp}, fp {fp}, fn {fnn})");
        assert!(p >= 0.98, "{fam}: precision {p:.4}");
        assert!(r >= 0.98, "{fam}: recall {r:.4}");
    }
}
