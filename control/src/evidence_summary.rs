//! The summary report of an evidence bundle (ARCHITECTURE.md, "Evidence"): what the records
//! and control's audit log of a window say, counted, as JSON and as an HTML page an auditor
//! opens in a browser. Pure: records in, counts out; the same function runs at export and when
//! a bundle is verified, so a summary that does not say what its records say is found.
//! Never the matched text of a finding: only detectors, families, counts and actions.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// Distinct destinations kept apart in the residency table; the rest are counted together.
const MAX_DESTINATIONS: usize = 10_000;

/// Where a destination keeps data: `(provider, region)` by its name. OpenAI's EU residency
/// endpoint is `eu.api.openai.com`; its other names are global. An Azure OpenAI resource's
/// region is not in its name: `regions` maps resource names to regions (`[evidence]
/// azure_regions`), and one not mapped is reported as such.
pub fn residency(
    sni: &str,
    category: &str,
    regions: &BTreeMap<String, String>,
) -> (String, String) {
    let host = sni.trim_end_matches('.').to_ascii_lowercase();
    let azure = [".openai.azure.com", ".cognitiveservices.azure.com", ".services.ai.azure.com"];
    if let Some(res) = azure.iter().find_map(|s| host.strip_suffix(s)) {
        let region = regions.get(res).cloned().unwrap_or_else(|| "unmapped resource".into());
        return ("azure-openai".into(), region);
    }
    if host == "eu.api.openai.com" || host.ends_with(".eu.api.openai.com") {
        return ("openai".into(), "eu".into());
    }
    let openai = ["openai.com", "chatgpt.com", "oaiusercontent.com"];
    if openai.iter().any(|d| host == *d || host.ends_with(&format!(".{d}"))) {
        return ("openai".into(), "global".into());
    }
    let provider = if category.is_empty() { "other" } else { category };
    (provider.into(), "-".into())
}

/// The family of a DLP detector (`credential`, `financial`, `pii`; `custom` for a rule's own).
fn family(detector: &str) -> &'static str {
    sluice_rules::detectors::DETECTORS
        .iter()
        .find(|d| d.name == detector)
        .map_or("custom", |d| d.family)
}

/// The summary being counted.
#[derive(Debug, Default)]
pub struct Summary {
    since_ms: u64,
    until_ms: u64,
    regions: BTreeMap<String, String>,
    flows: u64,
    requests: u64,
    /// (kind, identity, category, verdict) → records.
    traffic: BTreeMap<(String, String, String, String), u64>,
    /// (family, detector, action) → (requests, matches).
    dlp: BTreeMap<(String, String, String), (u64, u64)>,
    /// (kind, identity, rule) → blocked records.
    blocks: BTreeMap<(String, String, String), u64>,
    /// (provider, region, destination) → (flows, requests).
    residency: BTreeMap<(String, String, String), (u64, u64)>,
    approvals: BTreeMap<String, u64>,
    rule_changes: Vec<Value>,
    /// DLP salt id → requests whose findings hash under it.
    dlp_salts: BTreeMap<String, u64>,
    /// Rotations of the DLP salt (control's `dlp.salt.rotate` entries).
    salt_rotations: Vec<Value>,
}

fn text(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or("").chars().take(256).collect()
}

impl Summary {
    /// An empty summary of the window `[since_ms, until_ms]`, Azure resources' regions from
    /// `regions`.
    pub fn new(since_ms: u64, until_ms: u64, regions: BTreeMap<String, String>) -> Summary {
        Summary { since_ms, until_ms, regions, ..Summary::default() }
    }

    /// The summary's settings as a summary JSON states them (a bundle's verification starts
    /// from them).
    pub fn from_json(v: &Value) -> Summary {
        let regions = v["azure_regions"]
            .as_object()
            .map(|m| {
                m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect()
            })
            .unwrap_or_default();
        let t = |k: &str| v["window"][k].as_u64().unwrap_or(0);
        Summary::new(t("since_ms"), t("until_ms"), regions)
    }

    /// Counts a flow or request record (as stored: JSON text with its data plane).
    pub fn record(&mut self, r: &Value) {
        let kind = match r["type"].as_str() {
            Some("flow") => {
                self.flows += 1;
                "flow"
            }
            Some("request") => {
                self.requests += 1;
                "request"
            }
            _ => return,
        };
        let (identity, category, verdict) =
            (text(r, "identity"), text(r, "category"), text(r, "verdict"));
        *self
            .traffic
            .entry((kind.into(), identity.clone(), category.clone(), verdict.clone()))
            .or_default() += 1;
        if verdict == "block" {
            *self.blocks.entry((kind.into(), identity, text(r, "rule"))).or_default() += 1;
        }
        let salt = text(r, "dlp_salt");
        if !salt.is_empty() && self.dlp_salts.len() < MAX_DESTINATIONS {
            *self.dlp_salts.entry(salt).or_default() += 1;
        }
        for f in r["dlp_findings"].as_array().into_iter().flatten() {
            let detector = text(f, "detector");
            let e =
                self.dlp.entry((family(&detector).into(), detector, verdict.clone())).or_default();
            e.0 += 1;
            e.1 += f["count"].as_u64().unwrap_or(1);
        }
        let sni = text(r, "sni");
        if !sni.is_empty() {
            let (provider, region) = residency(&sni, &category, &self.regions);
            let mut key = (provider, region, sni);
            if self.residency.len() >= MAX_DESTINATIONS && !self.residency.contains_key(&key) {
                key.2 = "(other destinations)".into();
            }
            let e = self.residency.entry(key).or_default();
            if kind == "flow" { e.0 += 1 } else { e.1 += 1 }
        }
    }

    /// Counts an entry of control's audit log (its JSON encoding, as chained).
    pub fn control_entry(&mut self, e: &Value) {
        let ts = e["ts_ms"].as_u64().unwrap_or(0);
        if ts < self.since_ms || ts >= self.until_ms {
            return;
        }
        let action = text(e, "action");
        match action.as_str() {
            "approval.approve" | "approval.deny" => {
                *self.approvals.entry(action).or_default() += 1;
            }
            a if a.starts_with("rules.") => self.rule_changes.push(json!({
                "ts_ms": ts, "who": text(e, "who"), "action": a,
                "version": e["version"], "detail": text(e, "detail"),
            })),
            "dlp.salt.rotate" => self.salt_rotations.push(json!({
                "ts_ms": ts, "who": text(e, "who"), "detail": text(e, "detail"),
            })),
            _ => {}
        }
    }

    /// The summary as JSON.
    pub fn to_json(&self) -> Value {
        let traffic: Vec<Value> = self
            .traffic
            .iter()
            .map(|((k, i, c, v), n)| json!({"kind": k, "identity": i, "category": c, "verdict": v, "records": n}))
            .collect();
        let dlp: Vec<Value> = self
            .dlp
            .iter()
            .map(|((f, d, a), (r, m))| json!({"family": f, "detector": d, "action": a, "requests": r, "matches": m}))
            .collect();
        let blocks: Vec<Value> = self
            .blocks
            .iter()
            .map(|((k, i, r), n)| json!({"kind": k, "identity": i, "rule": r, "records": n}))
            .collect();
        let residency: Vec<Value> = self
            .residency
            .iter()
            .map(|((p, g, d), (f, r))| json!({"provider": p, "region": g, "destination": d, "flows": f, "requests": r}))
            .collect();
        json!({
            "format": "sluice-evidence-summary/1",
            "window": {"since_ms": self.since_ms, "until_ms": self.until_ms},
            "azure_regions": self.regions,
            "flows": self.flows,
            "requests": self.requests,
            "traffic": traffic,
            "dlp_findings": dlp,
            "blocks": blocks,
            "approvals": {
                "approved": self.approvals.get("approval.approve").copied().unwrap_or(0),
                "denied": self.approvals.get("approval.deny").copied().unwrap_or(0),
            },
            "residency": residency,
            "rule_changes": self.rule_changes,
            "dlp_salts": self.dlp_salts.iter().map(|(id, n)| json!({"salt": id, "requests": n})).collect::<Vec<_>>(),
            "dlp_salt_rotations": self.salt_rotations,
        })
    }
}

/// `s` escaped for HTML text and attribute values.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => esc(s),
        Value::Null => "-".into(),
        v => esc(&v.to_string()),
    }
}

/// A table of `rows` (objects) by `cols` (key, heading).
fn table(title: &str, rows: &Value, cols: &[(&str, &str)]) -> String {
    let mut h = format!("<h2>{}</h2>\n", esc(title));
    let rows = rows.as_array().map(Vec::as_slice).unwrap_or_default();
    if rows.is_empty() {
        h.push_str("<p>None in the window.</p>\n");
        return h;
    }
    h.push_str("<table>\n<tr>");
    for (_, head) in cols {
        h.push_str(&format!("<th>{}</th>", esc(head)));
    }
    h.push_str("</tr>\n");
    for r in rows {
        h.push_str("<tr>");
        for (k, _) in cols {
            h.push_str(&format!("<td>{}</td>", cell(&r[*k])));
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n");
    h
}

/// The summary JSON `s` as a self-contained HTML page (no script, no outside resource). The
/// same JSON always gives the same page, so a bundle's verification can compare them.
pub fn html(s: &Value) -> String {
    let when = |k: &str| {
        let t = crate::utc::from_unix_ms(s["window"][k].as_u64().unwrap_or(0));
        format!(
            "{}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            t.year, t.month, t.day, t.hour, t.minute, t.second
        )
    };
    let mut h = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n\
         <title>Sluice evidence summary</title>\n<style>body{font-family:sans-serif;margin:2em;color:#222}\
         table{border-collapse:collapse;margin-bottom:1.5em}th,td{border:1px solid #bbb;padding:.25em .6em;text-align:left}\
         th{background:#eee}td:last-child{text-align:right}</style></head><body>\n",
    );
    h.push_str(&format!(
        "<h1>Sluice evidence summary</h1>\n<p>Window: {} to {}. Flows: {}. Requests: {}. Approvals: {} approved, {} denied.</p>\n\
         <p>Counts only: no prompt text and no matched value is in this report. Check the bundle with <code>sluicectl evidence verify</code>.</p>\n",
        esc(&when("since_ms")),
        esc(&when("until_ms")),
        cell(&s["flows"]),
        cell(&s["requests"]),
        cell(&s["approvals"]["approved"]),
        cell(&s["approvals"]["denied"]),
    ));
    h.push_str(&table(
        "Traffic by identity, category and verdict",
        &s["traffic"],
        &[
            ("kind", "kind"),
            ("identity", "identity"),
            ("category", "category"),
            ("verdict", "verdict"),
            ("records", "records"),
        ],
    ));
    h.push_str(&table(
        "DLP findings by detector family and action",
        &s["dlp_findings"],
        &[
            ("family", "family"),
            ("detector", "detector"),
            ("action", "action"),
            ("matches", "matches"),
            ("requests", "requests"),
        ],
    ));
    h.push_str(&table(
        "Blocks",
        &s["blocks"],
        &[("kind", "kind"), ("identity", "identity"), ("rule", "rule"), ("records", "records")],
    ));
    h.push_str(&table(
        "Residency: destinations by provider and region",
        &s["residency"],
        &[
            ("provider", "provider"),
            ("region", "region"),
            ("destination", "destination"),
            ("requests", "requests"),
            ("flows", "flows"),
        ],
    ));
    h.push_str(&table(
        "Rule changes",
        &s["rule_changes"],
        &[
            ("ts_ms", "unix ms"),
            ("who", "who"),
            ("action", "action"),
            ("version", "version"),
            ("detail", "detail"),
        ],
    ));
    h.push_str(&table(
        "DLP salts: finding hashes compare only under one salt",
        &s["dlp_salts"],
        &[("salt", "salt"), ("requests", "requests with findings")],
    ));
    h.push_str(&table(
        "DLP salt rotations",
        &s["dlp_salt_rotations"],
        &[("ts_ms", "unix ms"), ("who", "who"), ("detail", "detail")],
    ));
    h.push_str("</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_identity_detector_family_and_region_without_matched_text() {
        let mut regions = BTreeMap::new();
        regions.insert("contoso-eu".to_owned(), "westeurope".to_owned());
        let mut s = Summary::new(0, 100, regions);
        s.record(
            &json!({"type":"request","identity":"finance","category":"openai","verdict":"block",
            "sni":"api.openai.com","rule":"no-cards",
            "dlp_salt":"salt:0123456789ab",
            "dlp_findings":[{"detector":"credit_card","count":2,"hashes":["ab12"]}]}),
        );
        s.record(&json!({"type":"flow","identity":"finance","category":"openai","verdict":"allow","sni":"contoso-eu.openai.azure.com"}));
        s.record(&json!({"type":"flow","identity":"eng","category":"openai","verdict":"allow","sni":"eu.api.openai.com"}));
        s.record(&json!({"type":"stats"}));
        s.control_entry(
            &json!({"ts_ms":5,"who":"ops","action":"rules.push","detail":"1 bytes","version":2}),
        );
        s.control_entry(&json!({"ts_ms":6,"who":"sec","action":"approval.deny","detail":"{}"}));
        s.control_entry(&json!({"ts_ms":500,"who":"ops","action":"rules.push","version":3}));
        s.control_entry(&json!({"ts_ms":7,"who":"ops","action":"dlp.salt.rotate","detail":"salt:b replaces salt:a (destroyed)"}));
        let j = s.to_json();
        assert_eq!((j["flows"].as_u64(), j["requests"].as_u64()), (Some(2), Some(1)));
        assert_eq!(j["dlp_findings"][0]["family"], "financial");
        assert_eq!(j["dlp_findings"][0]["matches"], 2);
        assert_eq!(j["dlp_findings"][0]["action"], "block");
        assert_eq!(j["blocks"][0]["rule"], "no-cards");
        let regions: Vec<(&str, &str)> = j["residency"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["provider"].as_str().unwrap(), r["region"].as_str().unwrap()))
            .collect();
        assert_eq!(
            regions,
            [("azure-openai", "westeurope"), ("openai", "eu"), ("openai", "global")]
        );
        assert_eq!(
            j["rule_changes"].as_array().unwrap().len(),
            1,
            "outside the window: not counted"
        );
        assert_eq!(j["approvals"]["denied"], 1);
        assert_eq!(j["dlp_salts"], json!([{"salt": "salt:0123456789ab", "requests": 1}]));
        assert_eq!(j["dlp_salt_rotations"][0]["detail"], "salt:b replaces salt:a (destroyed)");
        assert!(!j.to_string().contains("ab12"), "no finding's hash or text");
        // The settings read back; the page is the same for the same JSON, and escaped.
        assert_eq!(Summary::from_json(&j).to_json()["azure_regions"], j["azure_regions"]);
        assert_eq!(html(&j), html(&j));
        let mut evil = j.clone();
        evil["traffic"][0]["identity"] = json!("<script>alert(1)</script>");
        assert!(!html(&evil).contains("<script>") && html(&evil).contains("&lt;script&gt;"));
    }
}
