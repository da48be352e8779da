//! `sluicectl identities`: the identity feed (who is behind an address) through the control
//! API: one entry set or removed, a file loaded, the feed listed.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::remote::{Api, Out, enc, print_json, s, table, usage, when};
use crate::rules_cli::report_push;

/// `identities set IP USER`.
pub fn set(api: &Api, ip: &str, user: &str, groups: &[String], ttl: Option<u64>) -> Out {
    let body = json!({ "user": user, "groups": groups, "ttl": ttl });
    let v = api.call(
        "PUT",
        &format!("/v1/identities/{}", enc(ip)),
        Some((body.to_string().into_bytes(), "application/json")),
    )?;
    done(api, &v)
}

/// `identities rm IP`.
pub fn rm(api: &Api, ip: &str) -> Out {
    let v = api.call("DELETE", &format!("/v1/identities/{}", enc(ip)), None)?;
    done(api, &v)
}

/// `identities load FILE`: a JSON array (or JSON lines) of `{ip, user, groups, ttl}`.
pub fn load(api: &Api, file: &PathBuf, replace: bool) -> Out {
    let text =
        std::fs::read_to_string(file).map_err(|e| usage(format!("{}: {e}", file.display())))?;
    let entries: Vec<Value> = match serde_json::from_str::<Value>(&text) {
        Ok(Value::Array(a)) => a,
        _ => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()
            .map_err(|e| {
                usage(format!("{}: expected a JSON array or JSON lines: {e}", file.display()))
            })?,
    };
    let body = json!({ "identities": entries, "replace": replace });
    let v = api.call(
        "POST",
        "/v1/identities",
        Some((body.to_string().into_bytes(), "application/json")),
    )?;
    done(api, &v)
}

fn done(api: &Api, v: &Value) -> Out {
    if api.json {
        print_json(v);
        return Ok(());
    }
    println!("{} entries in the feed", s(v, "entries"));
    report_push(v)
}

/// `identities list`.
pub fn list(api: &Api) -> Out {
    let v = api.get("/v1/identities")?;
    if api.json {
        print_json(&v);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let groups: Vec<String> = e["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|g| g.as_str().map(str::to_owned))
                .collect();
            vec![
                s(e, "ip"),
                s(e, "user"),
                groups.join(","),
                if e["expires_at"].is_null() {
                    "-".into()
                } else {
                    when(&json!(e["expires_at"].as_u64().unwrap_or(0) * 1000))
                },
            ]
        })
        .collect();
    table(&["ip", "user", "groups", "expires (UTC)"], &rows);
    Ok(())
}
