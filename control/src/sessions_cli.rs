//! `sluicectl sessions …`: recorded exchanges (ARCHITECTURE.md, "Recordings"). Listing needs a
//! reading token; reading one needs the customer's age private key too (`--identity FILE`, as
//! `age-keygen` writes it): the recording is decrypted here, on the reader's machine, never by
//! control. `replay` runs a recorded request through a candidate rule file offline.

use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use serde_json::Value;
use sluice_intercept::dry_run::{Recorded, dry_run};

use crate::remote::{Api, Fail, Out, enc, print_json, s, table, usage, when};

/// `sessions keygen FILE`: a new age X25519 key pair; the private key is written to `out`
/// (created, mode 0600, never overwritten), the public key returned.
pub fn keygen(out: &Path) -> Result<String, String> {
    use age::secrecy::ExposeSecret as _;
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let key = age::x25519::Identity::generate();
    let public = key.to_public().to_string();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| format!("{}: {e}", out.display()))?;
    writeln!(f, "# public key: {public}\n{}", key.to_string().expose_secret())
        .map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(public)
}

/// `sessions list`.
pub fn list(api: &Api, since: &str, identity: Option<&str>, user: Option<&str>) -> Out {
    let mut q = format!("/v1/recordings?since={}", enc(since));
    if let Some(i) = identity {
        q.push_str(&format!("&identity={}", enc(i)));
    }
    if let Some(u) = user {
        q.push_str(&format!("&user={}", enc(u)));
    }
    let v = api.get(&q)?;
    if api.json {
        print_json(&v);
        return Ok(());
    }
    table(&["ID", "TIME (UTC)", "IDENTITY", "USER", "REQUEST", "BYTES", "THREAD"], &rows(&v));
    Ok(())
}

fn rows(v: &Value) -> Vec<Vec<String>> {
    v["recordings"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            vec![
                s(r, "id"),
                when(&r["ts_ms"]),
                s(r, "identity"),
                s(r, "user"),
                format!("{} {}{}", s(r, "method"), s(r, "sni"), s(r, "path")),
                r["bytes"].to_string(),
                s(r, "thread"),
            ]
        })
        .collect()
}

/// The identities of an age key file.
fn identities(file: &Path) -> Result<Vec<Box<dyn age::Identity>>, Fail> {
    let f = std::fs::File::open(file).map_err(|e| usage(format!("{}: {e}", file.display())))?;
    age::IdentityFile::from_buffer(BufReader::new(f))
        .map_err(|e| usage(format!("{}: {e}", file.display())))?
        .into_identities()
        .map_err(|e| usage(format!("{}: {e}", file.display())))
}

/// Fetches recording `id` and decrypts it with `keys`.
fn open(api: &Api, id: &str, keys: &[Box<dyn age::Identity>]) -> Result<Value, Fail> {
    let v = api.get(&format!("/v1/recordings/{}", enc(id)))?;
    let sealed: sluice_intercept::recording::Sealed =
        serde_json::from_value(v["sealed"].clone())
            .map_err(|e| Fail(format!("{id}: the stored recording is not one: {e}"), 1))?;
    let plain = sluice_intercept::recording::open(&sealed, id, keys).map_err(|e| {
        Fail(
            format!(
                "{id}: cannot decrypt with this identity ({e}): is it the key the recording was \
                 sealed to?"
            ),
            1,
        )
    })?;
    sluice_intercept::recording::read_plain(&plain)
        .map_err(|e| Fail(format!("{id}: not a recording: {e}"), 1))
}

/// `t` safe for a terminal: control characters (escape sequences a client may have sent)
/// shown escaped, newlines and tabs kept.
fn shown(t: &str) -> String {
    t.chars()
        .flat_map(|c| match c {
            '\n' | '\t' => vec![c],
            c if c.is_control() => c.escape_default().collect(),
            c => vec![c],
        })
        .collect()
}

fn text(body: &Value) -> String {
    match (body["text"].as_str(), body["base64"].as_str()) {
        (Some(t), _) => shown(t),
        (None, Some(b)) => format!("[{} bytes, base64] {b}", b.len() / 4 * 3),
        _ => String::new(),
    }
}

fn print_exchange(p: &Value) {
    let r = &p["request"];
    println!(
        "== {} {}  {}  {} ({})  rule {}",
        s(p, "id"),
        when(&p["ts_ms"]),
        s(p, "sni"),
        s(p, "user"),
        s(p, "identity"),
        s(p, "rule")
    );
    println!("> {} {}", shown(&s(r, "method")), shown(&s(r, "target")));
    for h in r["headers"].as_array().into_iter().flatten() {
        let (n, v) = (h[0].as_str().unwrap_or(""), h[1].as_str().unwrap_or(""));
        println!("> {}: {}", shown(n), shown(v));
    }
    println!(">\n{}", text(&r["body"]));
    if let Some(resp) = p.get("response") {
        println!("< {} {}", resp["status"], s(resp, "content_type"));
        println!("{}", text(&resp["body"]));
    }
    for m in p["messages"].as_array().into_iter().flatten() {
        let arrow = if m["from"] == "client" { ">" } else { "<" };
        println!("{arrow} {}", shown(&s(m, "text")));
    }
}

/// `sessions show ID --identity FILE`.
pub fn show(api: &Api, id: &str, key: &Path) -> Out {
    let keys = identities(key)?;
    let p = open(api, id, &keys)?;
    if api.json {
        print_json(&p);
    } else {
        print_exchange(&p);
    }
    Ok(())
}

/// `sessions thread KEY --identity FILE`: a conversation's recordings, oldest first.
pub fn thread(api: &Api, thread: &str, key: &Path) -> Out {
    let keys = identities(key)?;
    let v = api.get(&format!("/v1/recordings?thread={}&limit=1000", enc(thread)))?;
    let ids: Vec<String> =
        v["recordings"].as_array().into_iter().flatten().map(|r| s(r, "id")).collect();
    if ids.is_empty() {
        return Err(Fail(format!("no recording in thread {thread}"), 1));
    }
    let mut all = Vec::new();
    for id in &ids {
        all.push(open(api, id, &keys)?);
    }
    if api.json {
        print_json(&Value::Array(all));
    } else {
        for p in &all {
            print_exchange(p);
            println!();
        }
    }
    Ok(())
}

/// `sessions replay ID --identity FILE --rules CANDIDATE`.
pub fn replay(api: &Api, id: &str, key: &Path, rules: &Path) -> Out {
    let keys = identities(key)?;
    let compiled =
        sluice_rules::load_file(rules).map_err(|e| Fail(format!("{}: {e}", rules.display()), 1))?;
    let p = open(api, id, &keys)?;
    let r = &p["request"];
    let body = match (r["body"]["text"].as_str(), r["body"]["base64"].as_str()) {
        (Some(t), _) => t.as_bytes().to_vec(),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD.decode(b).unwrap_or_default(),
        _ => Vec::new(),
    };
    let src = format!("{}:0", s(&p, "src"));
    let src = src
        .parse()
        .or_else(|_| format!("[{}]:0", s(&p, "src")).parse())
        .map_err(|_| Fail(format!("{id}: the recording names no client address"), 1))?;
    let rec = Recorded {
        src,
        dst: "0.0.0.0:443".parse().map_err(|_| Fail("address".into(), 1))?,
        sni: s(&p, "sni"),
        method: s(r, "method"),
        target: s(r, "target"),
        headers: r["headers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|h| {
                (h[0].as_str().unwrap_or("").to_owned(), h[1].as_str().unwrap_or("").to_owned())
            })
            .collect(),
        body,
        hello_app: p["hello_app"].as_str().map(str::to_owned),
    };
    let out = dry_run(Arc::new(compiled.policy), &rec);
    if api.json {
        print_json(&serde_json::to_value(&out).unwrap_or_default());
        return Ok(());
    }
    println!(
        "{id}: {} {}{} from {} ({})",
        rec.method,
        rec.sni,
        rec.target,
        s(&p, "user"),
        out.identity
    );
    println!("  rule:    {}", out.rule.as_deref().unwrap_or("(default)"));
    println!("  flow:    {}", out.action);
    let mut verdict = out.verdict.to_owned();
    if let (Some(status), Some(code)) = (out.status, out.code) {
        verdict = format!("{verdict} ({status} {code})");
    }
    println!("  request: {verdict}");
    if let Some(why) = &out.reason {
        println!("  why:     {why}");
    }
    if !out.findings.is_empty() {
        let f: Vec<String> = out.findings.iter().map(|(d, n)| format!("{d} ({n})")).collect();
        println!("  dlp:     {} [{}]", out.dlp_action.unwrap_or("-"), f.join(", "));
    }
    Ok(())
}
