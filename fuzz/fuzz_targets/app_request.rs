//! The app catalog's matchers: any request head (the first line is the host and path, the
//! others `name: value`) and any JA4 text; never panics, versions stay bounded tokens.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_rules::apps::{HeaderSource, RequestFacts, shipped};

struct Heads<'a>(Vec<(String, &'a [u8])>);

impl HeaderSource for Heads<'_> {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }
}

fuzz_target!(|data: &[u8]| {
    let catalog = shipped();
    let mut lines = data.split(|b| *b == b'\n');
    let first = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let (authority, path) = first.split_once(' ').unwrap_or((&first, "/"));
    let heads = Heads(
        lines
            .filter_map(|l| {
                let at = l.iter().position(|b| *b == b':')?;
                let name = String::from_utf8_lossy(&l[..at]).to_ascii_lowercase();
                Some((name, l[at + 1..].trim_ascii()))
            })
            .collect(),
    );
    let facts = RequestFacts { authority, path, headers: &heads };
    let r = catalog.by_request(&facts);
    if let Some(m) = r {
        assert!((m.app as usize) < catalog.apps().len());
        if let Some(v) = m.version {
            assert!(!v.is_empty() && v.len() <= 32);
            assert!(v.bytes().all(|b| b.is_ascii_alphanumeric() || b".+_-".contains(&b)));
        }
    }
    let ja4 = String::from_utf8_lossy(&data[..data.len().min(36)]).into_owned();
    let hello = catalog.by_hello(&ja4, Some(authority));
    let id = catalog.identify(hello, r);
    let _ = (catalog.name(id.app), id.evidence.to_string());
});
