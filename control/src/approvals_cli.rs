//! `sluicectl approvals …`: held requests (approver or admin token): list them, show one
//! (with its prompt while it waits, when the rule lets reviewers read it), approve (once, or
//! for a while: `--for 30m`) or deny with a reason.

use serde_json::{Value, json};

use crate::remote::{Api, Out, enc, print_json, s, table, usage, when};

/// `approvals list [--state S]`.
pub fn list(api: &Api, state: &str) -> Out {
    let v = api.get(&format!("/v1/approvals?state={}", enc(state)))?;
    if api.json {
        print_json(&v);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = v["approvals"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            let r = &a["request"];
            let findings: Vec<String> = r["findings"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|f| format!("{}({})", s(f, "detector"), f["count"]))
                .collect();
            vec![
                s(a, "id"),
                s(a, "state"),
                when(&r["ts_ms"]),
                s(r, "identity"),
                s(r, "user"),
                s(r, "destination"),
                s(r, "model"),
                if findings.is_empty() { s(r, "why") } else { findings.join(",") },
                s(a, "decided_by"),
            ]
        })
        .collect();
    table(
        &["ID", "STATE", "SINCE (UTC)", "IDENTITY", "USER", "DESTINATION", "MODEL", "WHY", "BY"],
        &rows,
    );
    Ok(())
}

/// `approvals show ID`.
pub fn show(api: &Api, id: &str) -> Out {
    let v = api.get(&format!("/v1/approvals/{}", enc(id)))?;
    if api.json {
        print_json(&v);
        return Ok(());
    }
    let r = &v["request"];
    for (k, val) in [
        ("id", s(&v, "id")),
        ("state", s(&v, "state")),
        ("identity", s(r, "identity")),
        ("user", s(r, "user")),
        ("source", s(r, "src")),
        ("request", format!("{} {}{}", s(r, "method"), s(r, "destination"), s(r, "path"))),
        ("model", s(r, "model")),
        ("rule", s(r, "rule")),
        ("why", s(r, "why")),
        ("findings", r["findings"].to_string()),
        ("waits up to", format!("{} s", r["timeout_s"])),
    ] {
        println!("{k:>12}: {val}");
    }
    if let Some(p) = v["prompt"].as_str() {
        println!("\n{p}");
    }
    Ok(())
}

/// Minutes in `d` (`30`, `30m`, `2h`).
fn minutes(d: &str) -> Result<u32, crate::remote::Fail> {
    let bad = || usage(format!("--for {d}: expected minutes like 30, 30m or 2h"));
    let (n, mult) = match d.strip_suffix('h') {
        Some(h) => (h, 60),
        None => (d.strip_suffix('m').unwrap_or(d), 1),
    };
    n.parse::<u32>().ok().and_then(|n| n.checked_mul(mult)).filter(|m| *m > 0).ok_or_else(bad)
}

/// `approvals approve ID [--for 30m]` and `approvals deny ID --reason R`.
pub fn decide(api: &Api, id: &str, approve: bool, for_: Option<&str>, reason: Option<&str>) -> Out {
    let mut body = json!({ "decision": if approve { "approve" } else { "deny" } });
    if let Some(d) = for_ {
        body["minutes"] = json!(minutes(d)?);
    }
    if let Some(r) = reason {
        body["reason"] = json!(r);
    }
    let v = api.call(
        "POST",
        &format!("/v1/approvals/{}", enc(id)),
        Some((body.to_string().into_bytes(), "application/json")),
    )?;
    if api.json {
        print_json(&v);
        return Ok(());
    }
    let a: &Value = &v["approval"];
    println!(
        "{} {} by {} (sent to {} data plane(s))",
        s(a, "id"),
        s(a, "state"),
        s(a, "decided_by"),
        v["delivered_to"]
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_minutes() {
        assert_eq!(minutes("30").ok(), Some(30));
        assert_eq!(minutes("30m").ok(), Some(30));
        assert_eq!(minutes("2h").ok(), Some(120));
        assert!(minutes("0").is_err() && minutes("x").is_err() && minutes("5d").is_err());
    }
}
