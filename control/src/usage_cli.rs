//! `sluicectl usage [--by identity|user|sni|model|virtual_key] [--since 7d]`: requests and
//! tokens, as the model's responses said.

use crate::remote::{Api, Out, enc, print_json, s, table, when};

/// Prints usage per `by` since `since`.
pub fn usage(api: &Api, by: &str, since: &str) -> Out {
    let v = api.get(&format!("/v1/usage?by={}&since={}", enc(by), enc(since)))?;
    if api.json {
        print_json(&v);
        return Ok(());
    }
    println!("since {} (UTC)", when(&v["since_ms"]));
    let rows: Vec<Vec<String>> = v["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            vec![
                s(r, "key"),
                s(r, "requests"),
                s(r, "input_tokens"),
                s(r, "output_tokens"),
                s(r, "cached_tokens"),
            ]
        })
        .collect();
    table(&[&by.to_uppercase(), "REQUESTS", "INPUT", "OUTPUT", "CACHED"], &rows);
    Ok(())
}
