//! `sluicectl audit key` and `sluicectl audit verify [--since …] [--dataplane …] [--key HEX]`:
//! the public key checkpoints are signed with, and the walk of every record chain against them
//! (ARCHITECTURE.md, "Evidence"). Exit status 1 when anything is found, or when the key the
//! daemon verified with is not the one pinned.

use serde_json::Value;

use crate::remote::{Api, Fail, Out, enc, print_json, s, when};

/// Prints the public key.
pub fn key(api: &Api) -> Out {
    let v = api.get("/v1/audit/key")?;
    if api.json {
        print_json(&v);
    } else {
        println!("{}", s(&v, "public_key"));
    }
    Ok(())
}

/// Verifies, prints what was found, fails on any finding.
pub fn verify(
    api: &Api,
    since: Option<&str>,
    dataplane: Option<&str>,
    pinned: Option<&str>,
) -> Out {
    let mut q = Vec::new();
    if let Some(s) = since {
        q.push(format!("since={}", enc(s)));
    }
    if let Some(d) = dataplane {
        q.push(format!("dataplane={}", enc(d)));
    }
    let path = if q.is_empty() {
        "/v1/audit/verify".into()
    } else {
        format!("/v1/audit/verify?{}", q.join("&"))
    };
    let v = api.get(&path)?;
    if api.json {
        print_json(&v);
    } else {
        print_report(&v);
    }
    judge(&v, pinned)
}

/// The exit of a verification answer `v`: clean, and verified with the pinned key if one is.
pub fn judge(v: &Value, pinned: Option<&str>) -> Out {
    if let Some(p) = pinned
        && !s(v, "key").eq_ignore_ascii_case(p.trim())
    {
        return Err(Fail(
            format!("the checkpoints were verified with key {}, not the pinned {p}", s(v, "key")),
            1,
        ));
    }
    let n: usize = chains(v).map(|c| c["findings"].as_array().map_or(0, Vec::len)).sum();
    if v["clean"] == Value::Bool(true) && n == 0 {
        Ok(())
    } else {
        Err(Fail(format!("{n} finding(s): the records are not as they were written"), 1))
    }
}

fn chains(v: &Value) -> impl Iterator<Item = &Value> {
    v["chains"].as_array().into_iter().flatten()
}

/// Prints a verification answer for people.
pub fn print_report(v: &Value) {
    println!("checkpoints verified with key {}", s(v, "key"));
    for c in chains(v) {
        let owner = match c["dataplane"].as_str() {
            Some(d) => format!("data plane {d}"),
            None => "control's audit log".into(),
        };
        let range = match (c["first_seq"].as_u64(), c["last_seq"].as_u64()) {
            (Some(a), Some(b)) => format!(", positions {a}..{b}"),
            _ => String::new(),
        };
        println!(
            "{} ({owner}): {} records{range}, {} checkpoints matched",
            s(c, "chain"),
            s(c, "records"),
            s(c, "checkpoints_matched")
        );
        if let Some(cp) = c["from_checkpoint"].as_u64() {
            println!(
                "  verified from the checkpoint at {cp} (earlier records deleted by retention or before --since); kept from {} UTC",
                when(&c["first_ts_ms"])
            );
        }
        for f in c["findings"].as_array().into_iter().flatten() {
            let range = match f["last_seq"].as_u64() {
                Some(l) if Some(l) != f["seq"].as_u64() => format!("..{l}"),
                _ => String::new(),
            };
            let row = f["row"].as_str().map(|r| format!(" ({r})")).unwrap_or_default();
            println!(
                "  {} at {}{range}{row}: {}",
                s(f, "kind").to_uppercase(),
                s(f, "seq"),
                s(f, "detail")
            );
        }
    }
    let n: usize = chains(v).map(|c| c["findings"].as_array().map_or(0, Vec::len)).sum();
    if n == 0 {
        println!("clean: every chain is as written");
    } else {
        println!("{n} finding(s)");
    }
}
