//! `sluicectl evidence export --since … [--until …] [--recordings] --out bundle.tar.zst` (over
//! the API) and
//! `sluicectl evidence verify bundle.tar.zst [--key HEX]` (offline, no daemon); also
//! `sluicectl audit verify --bundle FILE`, the chains of a bundle reported as a store's are
//! (ARCHITECTURE.md, "Evidence"). Exit status 1 when anything is found.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use serde_json::Value;

use crate::audit_cli::{judge, print_report};
use crate::remote::{Api, Fail, Out, enc, print_json, usage, when};

/// Downloads the bundle of the window into `out` (written beside it, renamed when whole).
pub fn export(api: &Api, since: &str, until: Option<&str>, recordings: bool, out: &str) -> Out {
    let mut path = format!("/v1/evidence/export?since={}", enc(since));
    if let Some(u) = until {
        path.push_str(&format!("&until={}", enc(u)));
    }
    if recordings {
        path.push_str("&recordings=true");
    }
    let part = format!("{out}.part");
    // The records are the enterprise's: readable by the owner only.
    let mut f = std::fs::File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&part)
        .map_err(|e| usage(format!("{part}: {e}")))?;
    let written = api.download(&path, &mut f);
    let done = written.and_then(|n| {
        f.flush().and_then(|()| f.sync_all()).map_err(|e| Fail(format!("{part}: {e}"), 1))?;
        std::fs::rename(&part, out).map_err(|e| Fail(format!("{out}: {e}"), 1))?;
        Ok(n)
    });
    match done {
        Ok(n) => {
            if !api.json {
                println!("wrote {out} ({n} bytes); check it with: sluicectl evidence verify {out}");
            }
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            Err(e)
        }
    }
}

fn open_check(
    file: &str,
    key: Option<&str>,
) -> Result<sluice_control::evidence_bundle::BundleCheck, Fail> {
    // Without a pinned key, a bundle re-signed by anyone would check clean.
    let Some(key) = key else {
        return Err(usage(format!(
            "{file}: --key HEX is required: the key you pinned (`sluicectl audit key`), or anyone could re-sign a changed bundle"
        )));
    };
    let key = Some(key);
    let f = std::fs::File::open(file).map_err(|e| usage(format!("{file}: {e}")))?;
    sluice_control::evidence_bundle::check(std::io::BufReader::new(f), key)
        .map_err(|e| Fail(format!("{file}: {e}"), 1))
}

/// Checks a bundle offline: prints what was found, fails on anything.
pub fn verify(file: &str, key: Option<&str>, json: bool) -> Out {
    let c = open_check(file, key)?;
    let v = serde_json::to_value(&c).unwrap_or(Value::Null);
    if json {
        print_json(&v);
    } else {
        println!(
            "bundle {file}: window {} to {} UTC, {} files, {} records ({} in no chain)",
            when(&v["since_ms"]),
            when(&v["until_ms"]),
            c.files,
            c.records,
            c.unchained_records
        );
        if let Some(r) = c.recordings {
            println!(
                "  recordings: {} included, sealed to the customer's key ({} named by the records, no longer kept)",
                r.included, r.not_kept
            );
        }
        for p in &c.problems {
            println!("  {}: {}", p.file, p.detail);
        }
        let chains = serde_json::to_value(c.chains_only()).unwrap_or(Value::Null);
        print_report(&chains);
    }
    if key.is_none() {
        eprintln!(
            "note: no --key given: pin the key with `sluicectl audit key` and pass it, or anyone could re-sign a changed bundle"
        );
    }
    if c.clean {
        Ok(())
    } else {
        Err(Fail(format!("{file}: the bundle is not as it was exported"), 1))
    }
}

/// `sluicectl audit verify --bundle FILE`: the chains of a bundle, reported as a store's.
pub fn audit_verify(file: &str, key: Option<&str>, json: bool) -> Out {
    let c = open_check(file, key)?;
    let v = serde_json::to_value(c.chains_only()).unwrap_or(Value::Null);
    if json {
        print_json(&v);
    } else {
        print_report(&v);
    }
    judge(&v, key)
}
