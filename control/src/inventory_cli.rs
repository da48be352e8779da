//! `sluicectl inventory [--app X] [--unknown] [--since 7d] [--host H]`: the AI clients seen,
//! and `sluicectl inventory --discoveries`: the events of new ones.

use crate::remote::{Api, Out, enc, print_json, s, table, when};

/// What to list.
pub struct Ask<'a> {
    /// Only this app.
    pub app: Option<&'a str>,
    /// Only clients the catalog does not know.
    pub unknown: bool,
    /// Seen since.
    pub since: Option<&'a str>,
    /// Only this host.
    pub host: Option<&'a str>,
    /// The discovery events instead.
    pub discoveries: bool,
}

/// Prints the inventory (or the discoveries).
pub fn inventory(api: &Api, ask: &Ask<'_>) -> Out {
    let mut q = Vec::new();
    if let Some(s) = ask.since {
        q.push(format!("since={}", enc(s)));
    }
    if ask.discoveries {
        let v = api.get(&format!("/v1/discoveries?limit=1000&{}", q.join("&")))?;
        if api.json {
            print_json(&v);
            return Ok(());
        }
        let rows: Vec<Vec<String>> = v["records"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                vec![
                    when(&r["ts_ms"]),
                    s(r, "event"),
                    s(r, "src"),
                    s(r, "identity"),
                    s(r, "user"),
                    s(r, "app"),
                    s(r, "app_version"),
                    s(r, "sni"),
                    s(r, "ja4"),
                ]
            })
            .collect();
        table(
            &["WHEN", "EVENT", "HOST", "IDENTITY", "USER", "APP", "VERSION", "SNI", "JA4"],
            &rows,
        );
        return Ok(());
    }
    if let Some(a) = ask.app {
        q.push(format!("app={}", enc(a)));
    }
    if ask.unknown {
        q.push("unknown=true".into());
    }
    if let Some(h) = ask.host {
        q.push(format!("host={}", enc(h)));
    }
    let v = api.get(&format!("/v1/inventory?{}", q.join("&")))?;
    if api.json {
        print_json(&v);
        return Ok(());
    }
    let list = |r: &serde_json::Value, k: &str| {
        r[k].as_array()
            .map(|a| a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(","))
            .unwrap_or_default()
    };
    let rows: Vec<Vec<String>> = v["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            vec![
                s(r, "host"),
                s(r, "identity"),
                s(r, "user"),
                s(r, "app"),
                s(r, "version"),
                when(&r["first_seen_ms"]),
                when(&r["last_seen_ms"]),
                s(r, "flows"),
                s(r, "requests"),
                s(r, "bytes"),
                list(r, "destinations"),
                list(r, "accounts"),
            ]
        })
        .collect();
    table(
        &[
            "HOST",
            "IDENTITY",
            "USER",
            "APP",
            "VERSION",
            "FIRST SEEN",
            "LAST SEEN",
            "FLOWS",
            "REQUESTS",
            "BYTES",
            "DESTINATIONS",
            "ACCOUNTS",
        ],
        &rows,
    );
    Ok(())
}
