//! `sluicectl keys …`: brokered provider keys and virtual keys (admin token). A provider key
//! is read from a file (never from the command line, where the shell's history and `ps` would
//! keep it); a virtual key is printed once, when issued. The DLP salt is listed and rotated
//! by id (`keys salt`, `keys rotate-salt`).

use std::path::Path;

use serde_json::{Value, json};

use crate::remote::{Api, Out, enc, print_json, s, table, usage, when};
use crate::rules_cli::report_push;

/// `keys set NAME --from-file F`.
pub fn set(api: &Api, name: &str, file: &Path) -> Out {
    let key =
        std::fs::read_to_string(file).map_err(|e| usage(format!("{}: {e}", file.display())))?;
    let key = key.trim().to_owned();
    let v = api.call(
        "PUT",
        &format!("/v1/keys/{}", enc(name)),
        Some((key.into_bytes(), "text/plain")),
    )?;
    if api.json {
        print_json(&v);
        return Ok(());
    }
    println!("key {} stored ({})", s(&v["result"], "name"), s(&v["result"], "fingerprint"));
    report_push(&v)
}

/// `keys rm NAME`.
pub fn rm(api: &Api, name: &str) -> Out {
    let v = api.call("DELETE", &format!("/v1/keys/{}", enc(name)), None)?;
    if api.json {
        print_json(&v);
        return Ok(());
    }
    println!("key {name} removed");
    report_push(&v)
}

/// `keys list`.
pub fn list(api: &Api) -> Out {
    let v = api.get("/v1/keys")?;
    if api.json {
        print_json(&v);
        return Ok(());
    }
    let rows = |k: &str, f: &dyn Fn(&Value) -> Vec<String>| -> Vec<Vec<String>> {
        v[k].as_array().into_iter().flatten().map(f).collect()
    };
    let keys = rows("keys", &|k| {
        vec![s(k, "name"), s(k, "fingerprint"), when(&k["updated_ms"]), s(k, "updated_by")]
    });
    table(&["KEY", "FINGERPRINT", "UPDATED", "BY"], &keys);
    let virtual_keys = rows("virtual_keys", &|k| {
        vec![
            s(k, "id"),
            s(k, "user"),
            s(k, "identity"),
            when(&k["created_ms"]),
            if k["revoked_ms"].is_null() { "-".into() } else { when(&k["revoked_ms"]) },
        ]
    });
    if !virtual_keys.is_empty() {
        println!();
        table(&["VIRTUAL KEY", "USER", "IDENTITY", "ISSUED", "REVOKED"], &virtual_keys);
    }
    Ok(())
}

/// `keys issue --user U [--identity I]`: prints the key (this once).
pub fn issue(api: &Api, user: &str, identity: Option<&str>) -> Out {
    let body = json!({ "user": user, "identity": identity });
    let v = api.call(
        "POST",
        "/v1/keys/virtual",
        Some((body.to_string().into_bytes(), "application/json")),
    )?;
    if api.json {
        print_json(&v);
        return Ok(());
    }
    let r = &v["result"];
    println!("{}", s(r, "key"));
    eprintln!(
        "virtual key {} for {} issued: shown this once, give it to the user as their API key",
        s(&r["virtual_key"], "id"),
        s(&r["virtual_key"], "user")
    );
    report_push(&v)
}

/// `keys revoke ID`.
pub fn revoke(api: &Api, id: &str) -> Out {
    let v = api.call("DELETE", &format!("/v1/keys/virtual/{}", enc(id)), None)?;
    if api.json {
        print_json(&v);
        return Ok(());
    }
    println!("virtual key {id} revoked");
    report_push(&v)
}

/// `keys salt`: the DLP salts by id.
pub fn salts(api: &Api) -> Out {
    let v = api.get("/v1/dlp/salt")?;
    if api.json {
        print_json(&v);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = v["salts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|k| {
            let retired = &k["retired_ms"];
            vec![
                s(k, "id"),
                when(&k["created_ms"]),
                s(k, "created_by"),
                if retired.is_null() {
                    "in force".into()
                } else {
                    format!("retired {}", when(retired))
                },
            ]
        })
        .collect();
    table(&["SALT", "MADE", "BY", "STATE"], &rows);
    Ok(())
}

/// `keys rotate-salt`.
pub fn rotate_salt(api: &Api) -> Out {
    let v = api.call("POST", "/v1/dlp/salt/rotate", None)?;
    if api.json {
        print_json(&v);
        return Ok(());
    }
    let r = &v["result"];
    match r["retired"].as_str() {
        Some(old) => println!("DLP salt {} in force; {old} destroyed", s(&r["salt"], "id")),
        None => println!("DLP salt {} in force", s(&r["salt"], "id")),
    }
    report_push(&v)
}
