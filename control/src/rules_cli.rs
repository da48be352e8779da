//! `sluicectl rules`: pushes, validation, the current set, history, diffs and rollbacks
//! through the control API, and how each data plane took a push.

use std::path::PathBuf;

use serde_json::Value;

use crate::remote::{Api, Fail, Out, print_json, qs, s, table, usage, when};

/// `rules push|validate FILE`.
pub fn send(api: &Api, file: &PathBuf, push: bool) -> Out {
    let text = std::fs::read(file).map_err(|e| usage(format!("{}: {e}", file.display())))?;
    let (method, path) = if push { ("PUT", "/v1/rules") } else { ("POST", "/v1/rules/validate") };
    let v = api
        .call(method, path, Some((text, "application/toml")))
        .map_err(|Fail(m, c)| Fail(m.replace("rules.toml:", &format!("{}:", file.display())), c))?;
    if api.json {
        print_json(&v);
        return Ok(());
    }
    for w in v["warnings"].as_array().into_iter().flatten() {
        eprintln!("{}:{}:{}: warning: {}", file.display(), w["line"], w["col"], s(w, "message"));
    }
    if !push {
        println!("{}: valid", file.display());
        return Ok(());
    }
    println!("version {} stored", s(&v, "version"));
    report_push(&v)
}

/// Says how each data plane took a push; exit 1 if any refused it or did not answer.
pub(crate) fn report_push(v: &Value) -> Out {
    let dps = v["dataplanes"].as_array().cloned().unwrap_or_default();
    if dps.is_empty() {
        println!("no data plane connected: it will be enforced when one connects");
    }
    let mut bad = false;
    for d in &dps {
        let st = s(d, "status");
        // An enrolled data plane that is offline gets the rules when it connects: said, not
        // a failure of the push.
        bad |= st != "applied" && st != "offline";
        match d.get("error").and_then(Value::as_str) {
            Some(e) => println!("  {}: {st}: {e}", s(d, "dataplane")),
            None if st == "offline" => {
                println!("  {}: offline (it gets them when it connects)", s(d, "dataplane"));
            }
            None => println!("  {}: {st}", s(d, "dataplane")),
        }
    }
    if bad { Err(Fail("not every data plane enforces it".into(), 1)) } else { Ok(()) }
}

/// `rules show`: the current rule set (its text on stdout, who and when on stderr).
pub fn show(api: &Api) -> Out {
    let v = api.get("/v1/rules")?;
    if api.json {
        print_json(&v);
    } else {
        eprintln!(
            "# version {} by {} ({} UTC)",
            s(&v, "version"),
            s(&v, "author"),
            when(&v["ts_ms"])
        );
        print!("{}", v["text"].as_str().unwrap_or(""));
    }
    Ok(())
}

/// `rules history`.
pub fn history(api: &Api) -> Out {
    let v = api.get("/v1/rules/history")?;
    if api.json {
        print_json(&v);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| vec![s(h, "version"), when(&h["ts_ms"]), s(h, "author"), s(h, "note")])
        .collect();
    table(&["version", "time", "author", "note"], &rows);
    Ok(())
}

/// `rules diff FROM [TO]` against the server's versions.
pub fn diff(api: &Api, from: i64, to: Option<i64>) -> Out {
    let mut q = vec![("from", from.to_string())];
    if let Some(t) = to {
        q.push(("to", t.to_string()));
    }
    print_json(&api.get(&format!("/v1/rules/diff{}", qs(&q)))?);
    Ok(())
}

/// `rules rollback VERSION`.
pub fn rollback(api: &Api, version: i64) -> Out {
    let v = api.call("POST", &format!("/v1/rules/rollback/{version}"), None)?;
    if api.json {
        print_json(&v);
        return Ok(());
    }
    println!("version {} stored (the text of version {version})", s(&v, "version"));
    report_push(&v)
}
