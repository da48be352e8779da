//! `sluicectl`'s connection to the control API (the client, its errors, the human tables
//! every command prints unless `--json`), and the commands that read records: flows,
//! requests, the live tail, status and the CA. Rules and identities have their own files
//! (`rules_cli.rs`, `identities_cli.rs`), as the other command groups do.

use std::path::PathBuf;

use clap::Args;
use serde_json::Value;
use sluice_control::client::{Client, Reply};

/// Where the API is and who we are.
#[derive(Args, Debug, Clone)]
pub struct Conn {
    /// Control API URL.
    #[arg(long, env = "SLUICE_URL", global = true)]
    pub url: Option<String>,
    /// API token (prefer the environment: a flag shows in the process list).
    #[arg(long, env = "SLUICE_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// CA (PEM) to verify the API's certificate with (default: Mozilla's roots).
    #[arg(long, env = "SLUICE_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Record filters (`flows`, `requests`, `tail`).
#[derive(Args, Debug, Clone, Default)]
pub struct Filters {
    /// From: unix ms or a duration back from now (90s, 15m, 2h, 7d).
    #[arg(long)]
    since: Option<String>,
    /// Until: unix ms or a duration back from now.
    #[arg(long)]
    until: Option<String>,
    /// Identity name.
    #[arg(long)]
    identity: Option<String>,
    /// Feed user.
    #[arg(long)]
    user: Option<String>,
    /// Client address.
    #[arg(long)]
    src: Option<String>,
    /// Server name.
    #[arg(long)]
    sni: Option<String>,
    /// Category.
    #[arg(long)]
    category: Option<String>,
    /// Verdict (allow, block, divert).
    #[arg(long)]
    verdict: Option<String>,
    /// Rule name.
    #[arg(long)]
    rule: Option<String>,
    /// DLP detector with findings (requests only).
    #[arg(long)]
    detector: Option<String>,
    /// Data plane name.
    #[arg(long)]
    dataplane: Option<String>,
    /// App (`sluicectl rules apps`; `unknown` too).
    #[arg(long)]
    app: Option<String>,
    /// Operation (`chat`, `upload`, …; requests only).
    #[arg(long)]
    operation: Option<String>,
}

impl Filters {
    fn query(&self) -> Vec<(&'static str, String)> {
        [
            ("since", &self.since),
            ("until", &self.until),
            ("identity", &self.identity),
            ("user", &self.user),
            ("src", &self.src),
            ("sni", &self.sni),
            ("category", &self.category),
            ("verdict", &self.verdict),
            ("rule", &self.rule),
            ("detector", &self.detector),
            ("dataplane", &self.dataplane),
            ("app", &self.app),
            ("operation", &self.operation),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
        .collect()
    }
}

/// Percent-encodes a query value.
pub(crate) fn enc(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub(crate) fn qs(pairs: &[(&str, String)]) -> String {
    let s: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={}", enc(v))).collect();
    if s.is_empty() { String::new() } else { format!("?{}", s.join("&")) }
}

/// The failure of a command: message and exit code.
pub struct Fail(pub String, pub u8);

pub(crate) type Out = Result<(), Fail>;

pub(crate) fn usage(m: impl Into<String>) -> Fail {
    Fail(m.into(), 2)
}

pub(crate) struct Api {
    client: Client,
    rt: tokio::runtime::Runtime,
    pub json: bool,
}

impl Api {
    pub fn new(c: &Conn) -> Result<Api, Fail> {
        let url = c.url.as_deref().ok_or_else(|| usage("no API URL: --url or SLUICE_URL"))?;
        let token =
            c.token.as_deref().ok_or_else(|| usage("no token: SLUICE_TOKEN (or --token)"))?;
        let client = Client::new(url, token, c.ca.as_deref()).map_err(|e| usage(e.to_string()))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| usage(e.to_string()))?;
        Ok(Api { client, rt, json: c.json })
    }

    pub(crate) fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<(Vec<u8>, &str)>,
    ) -> Result<Value, Fail> {
        let r = self
            .rt
            .block_on(self.client.call(method, path, body))
            .map_err(|e| usage(e.to_string()))?;
        check(r)
    }

    pub(crate) fn get(&self, path: &str) -> Result<Value, Fail> {
        self.call("GET", path, None)
    }

    /// A GET whose body is written to `out` as it arrives (an evidence bundle). Returns the
    /// bytes written; a non-200 answer is the server's error.
    pub(crate) fn download(&self, path: &str, out: &mut impl std::io::Write) -> Result<u64, Fail> {
        let (mut n, mut err) = (0u64, None);
        let r = self
            .rt
            .block_on(self.client.stream(path, |chunk| match out.write_all(chunk) {
                Ok(()) => {
                    n += chunk.len() as u64;
                    true
                }
                Err(e) => {
                    err = Some(e);
                    false
                }
            }))
            .map_err(|e| usage(e.to_string()))?;
        if let Some(e) = err {
            return Err(Fail(format!("writing the download: {e}"), 1));
        }
        if r.status != 200 {
            check(r)?;
        }
        Ok(n)
    }
}

/// The JSON of a 2xx answer, or the server's error as a failure (exit 1).
fn check(r: Reply) -> Result<Value, Fail> {
    let v: Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&r.body).into_owned()));
    if (200..300).contains(&r.status) {
        return Ok(v);
    }
    let mut msg = format!(
        "HTTP {}: {}",
        r.status,
        v.get("error").and_then(Value::as_str).unwrap_or(&v.to_string())
    );
    for e in v.get("errors").and_then(Value::as_array).into_iter().flatten() {
        match e {
            Value::String(s) => msg.push_str(&format!("\n  {s}")),
            d => msg.push_str(&format!(
                "\n  {}:{}:{}: {}",
                d["file"].as_str().unwrap_or("rules"),
                d["line"],
                d["col"],
                d["message"].as_str().unwrap_or("")
            )),
        }
    }
    Err(Fail(msg, 1))
}

pub(crate) fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub(crate) fn s(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

/// Unix ms as `YYYY-MM-DD HH:MM:SS` (UTC).
pub(crate) fn when(ms: &Value) -> String {
    let Some(ms) = ms.as_u64() else { return "-".into() };
    let t = sluice_control::utc::from_unix_ms(ms);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// Prints rows as a table with a header, columns as wide as their widest cell.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> =
            cells.iter().enumerate().map(|(i, c)| format!("{c:<0$}", w[i])).collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_uppercase()).collect());
    for r in rows {
        line(r.clone());
    }
}

fn flow_row(r: &Value) -> Vec<String> {
    vec![
        when(&r["ts_ms"]),
        s(r, "identity"),
        format!("{}:{}", s(r, "src"), s(r, "sport")),
        format!("{}:{}", s(r, "dst"), s(r, "dport")),
        s(r, "proto"),
        s(r, "sni"),
        s(r, "verdict"),
        s(r, "rule"),
        format!("{}/{}", s(r, "bytes_out"), s(r, "bytes_in")),
    ]
}

fn request_row(r: &Value) -> Vec<String> {
    let dlp: Vec<String> = r["dlp_findings"]
        .as_array()
        .map(|a| a.iter().map(|f| format!("{}x{}", s(f, "detector"), s(f, "count"))).collect())
        .unwrap_or_default();
    vec![
        when(&r["ts_ms"]),
        s(r, "identity"),
        s(r, "src"),
        s(r, "sni"),
        format!("{} {}", s(r, "method"), s(r, "path")),
        s(r, "model"),
        s(r, "status"),
        s(r, "verdict"),
        if dlp.is_empty() {
            "-".into()
        } else {
            format!("{} {}", s(r, "dlp_action"), dlp.join(","))
        },
    ]
}

const FLOW_HEAD: [&str; 9] =
    ["time", "identity", "src", "dst", "proto", "sni", "verdict", "rule", "bytes out/in"];
const REQ_HEAD: [&str; 9] =
    ["time", "identity", "src", "sni", "request", "model", "status", "verdict", "dlp"];

/// `flows` / `requests`: one page (`limit`) or every page (`all`), newest first.
pub fn records(api: &Api, kind: &str, f: &Filters, limit: usize, all: bool) -> Out {
    let mut q = f.query();
    q.push(("limit", limit.clamp(1, 1000).to_string()));
    let mut out = Vec::new();
    let mut cursor: Option<i64> = None;
    loop {
        let mut page_q = q.clone();
        if let Some(c) = cursor {
            page_q.push(("cursor", c.to_string()));
        }
        let page = api.get(&format!("/v1/{kind}{}", qs(&page_q)))?;
        out.extend(page["records"].as_array().cloned().unwrap_or_default());
        cursor = page["next_cursor"].as_i64();
        if !all || cursor.is_none() {
            break;
        }
    }
    if api.json {
        for r in &out {
            println!("{r}");
        }
        return Ok(());
    }
    type Row = fn(&Value) -> Vec<String>;
    let (head, row): (&[&str], Row) =
        if kind == "flows" { (&FLOW_HEAD, flow_row) } else { (&REQ_HEAD, request_row) };
    table(head, &out.iter().map(row).collect::<Vec<_>>());
    Ok(())
}

/// `tail`: new records as they are stored, until interrupted.
pub fn tail(api: &Api, f: &Filters, kind: Option<&str>) -> Out {
    let mut q = f.query();
    if let Some(k) = kind {
        q.push(("type", k.to_owned()));
    }
    let mut buf = String::new();
    let json = api.json;
    let r = api
        .rt
        .block_on(api.client.stream(&format!("/v1/flows/stream{}", qs(&q)), |chunk| {
            buf.push_str(&String::from_utf8_lossy(chunk));
            while let Some(end) = buf.find("\n\n") {
                let event: String = buf.drain(..end + 2).collect();
                let mut name = "";
                let mut data = String::new();
                for line in event.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                let Ok(v) = serde_json::from_str::<Value>(&data) else { continue };
                if json {
                    println!("{v}");
                } else {
                    match name {
                        "flow" => println!("flow     {}", flow_row(&v).join("  ")),
                        "request" => println!("request  {}", request_row(&v).join("  ")),
                        "lagged" => eprintln!(
                            "sluicectl: {} records missed (reader too slow)",
                            s(&v, "missed")
                        ),
                        _ => {}
                    }
                }
                use std::io::Write;
                if std::io::stdout().flush().is_err() {
                    return false;
                }
            }
            true
        }))
        .map_err(|e| usage(e.to_string()))?;
    if r.status != 200 {
        check(r)?;
    }
    Ok(())
}

/// `status`.
pub fn status(api: &Api) -> Out {
    let v = api.get("/v1/status")?;
    if api.json {
        print_json(&v);
        return Ok(());
    }
    println!(
        "rules version {}   identities {}   stored flows {}   requests {}   up {} s",
        s(&v, "rules_version"),
        s(&v, "identities"),
        s(&v["stored"], "flows"),
        s(&v["stored"], "requests"),
        s(&v, "uptime_s")
    );
    let rows: Vec<Vec<String>> = v["dataplanes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            let link = &d["stats"]["link"];
            vec![
                s(d, "name"),
                if d["connected"] == true {
                    format!("connected ({})", s(d, "transport"))
                } else {
                    "away".into()
                },
                when(&d["since_ms"]),
                // A data plane enforcing other rules than control's (a local file) is flagged.
                match (d["policy_version"].as_i64(), d["policy_current"].as_bool()) {
                    (_, Some(false)) => format!("{} (DIVERGED)", s(d, "policy_version")),
                    (None, Some(true)) => "local (= current)".into(),
                    _ => s(d, "policy_version"),
                },
                d.get("policy_error")
                    .and_then(Value::as_str)
                    .map_or("-".into(), |e| e.chars().take(40).collect()),
                s(d, "last_seq"),
                s(link, "spool_depth"),
                s(link, "spool_dropped"),
            ]
        })
        .collect();
    table(
        &[
            "dataplane",
            "link",
            "since (UTC)",
            "policy",
            "policy error",
            "last seq",
            "spooled",
            "dropped",
        ],
        &rows,
    );
    Ok(())
}

/// `ca get`.
pub fn ca_get(api: &Api) -> Out {
    let r = api
        .rt
        .block_on(api.client.call("GET", "/v1/ca.pem", None))
        .map_err(|e| usage(e.to_string()))?;
    if r.status != 200 {
        check(r)?;
        return Ok(());
    }
    print!("{}", String::from_utf8_lossy(&r.body));
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn query_strings_are_encoded() {
        assert_eq!(
            qs(&[("sni", "a b&c".into()), ("since", "15m".into())]),
            "?sni=a%20b%26c&since=15m"
        );
        assert_eq!(qs(&[]), "");
        assert_eq!(when(&json!(0)), "1970-01-01 00:00:00");
    }
}
