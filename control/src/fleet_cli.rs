//! `sluicectl fleet …` (ARCHITECTURE.md, "The fleet"): make the fleet CA, enrol a data plane
//! (its key and certificate request are made here, on the host that runs the command; only
//! the request goes to control, and the certificate comes back), list what was issued, and
//! revoke a data plane.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde_json::{Value, json};
use sluice_certs::fleet;

use crate::remote::{Api, Fail, Out, enc, print_json, s, table, usage, when};

/// `sluicectl fleet`.
#[derive(Subcommand, Debug)]
pub enum FleetCmd {
    /// Make the fleet CA that issues the data planes' link certificates (once).
    Init,
    /// Enrol a data plane: writes its key, certificate and the fleet CA into a directory,
    /// which the data plane reads with `--fleet-dir`. Run it on the data plane's host.
    Enrol {
        /// The data plane's name (its certificate names it; it may connect as no other).
        name: String,
        /// Directory to write `dataplane.key` (0600), `dataplane.crt` and `ca.crt` into.
        #[arg(long)]
        out: PathBuf,
        /// Replace the name's certificates (they are revoked, its live link closed).
        #[arg(long)]
        replace: bool,
    },
    /// The certificates issued, revoked or not, and which data planes are connected.
    List,
    /// Revoke a data plane: its link is closed and its next connection refused.
    Revoke {
        /// Its name.
        name: String,
    },
}

/// Runs a `fleet` command.
pub fn run(api: &Api, cmd: &FleetCmd) -> Out {
    match cmd {
        FleetCmd::Init => init(api),
        FleetCmd::Enrol { name, out, replace } => enrol(api, name, out, *replace),
        FleetCmd::List => list(api),
        FleetCmd::Revoke { name } => revoke(api, name),
    }
}

fn init(api: &Api) -> Out {
    let v = api.call("POST", "/v1/fleet/init", None)?;
    if api.json {
        print_json(&v);
        return Ok(());
    }
    println!("fleet CA made (sha256 {})", s(&v, "ca_sha256"));
    println!(
        "next: on each data plane's host, `sluicectl fleet enrol NAME --out /etc/sluice/fleet`"
    );
    Ok(())
}

fn enrol(api: &Api, name: &str, out: &Path, replace: bool) -> Out {
    if !fleet::valid_name(name) {
        return Err(usage(sluice_control::fleet::FleetError::BadName(name.into()).to_string()));
    }
    // Checked before anything is issued: a certificate whose key could not be kept is lost.
    if out.join("dataplane.key").exists() {
        return Err(usage(format!(
            "{} holds a data plane key already; enrol into an empty directory",
            out.display()
        )));
    }
    let (key, csr) = fleet::dataplane_request(name).map_err(|e| Fail(e.to_string(), 1))?;
    let body = json!({ "name": name, "csr": csr, "replace": replace });
    let v = api.call(
        "POST",
        "/v1/fleet/enrol",
        Some((body.to_string().into_bytes(), "application/json")),
    )?;
    let (Some(cert), Some(ca)) = (v["certificate"].as_str(), v["ca"].as_str()) else {
        return Err(Fail("control's answer holds no certificate".into(), 1));
    };
    fleet::write_enrolment(out, ca, cert, &key)
        .map_err(|e| Fail(format!("enrolled, but its files were not written: {e}"), 1))?;
    if api.json {
        print_json(&json!({ "name": name, "sha256": v["sha256"], "dir": out }));
        return Ok(());
    }
    println!(
        "{name} enrolled (certificate sha256 {}), files in {}",
        s(&v, "sha256"),
        out.display()
    );
    println!("run the data plane with: --control tls://CONTROL:PORT --fleet-dir {}", out.display());
    Ok(())
}

fn list(api: &Api) -> Out {
    let v = api.get("/v1/fleet")?;
    if api.json {
        print_json(&v);
        return Ok(());
    }
    match v["ca_sha256"].as_str() {
        Some(sha) => println!("fleet CA sha256 {sha}"),
        None => println!("no fleet CA yet: `sluicectl fleet init`"),
    }
    let rows: Vec<Vec<String>> = v["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c: &Value| {
            vec![
                s(c, "name"),
                s(c, "sha256").chars().take(16).collect(),
                when(&c["issued_ms"]),
                when(&json!(c["not_after"].as_i64().unwrap_or(0) * 1000)),
                if c["revoked_ms"].is_null() { "-".into() } else { when(&c["revoked_ms"]) },
                if c["connected"] == true { "yes".into() } else { "no".into() },
            ]
        })
        .collect();
    table(&["DATAPLANE", "SHA256", "ISSUED", "NOT AFTER", "REVOKED", "CONNECTED"], &rows);
    Ok(())
}

fn revoke(api: &Api, name: &str) -> Out {
    let v = api.call("POST", &format!("/v1/fleet/{}/revoke", enc(name)), None)?;
    if api.json {
        print_json(&v);
        return Ok(());
    }
    let closed = if v["disconnected"] == true { "; its link was closed" } else { "" };
    println!("{name} revoked ({} certificates){closed}", s(&v, "revoked"));
    Ok(())
}
