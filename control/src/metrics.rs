//! `GET /metrics`: Prometheus text exposition of control's own state and of each data plane's
//! last statistics record (packets, bytes, flows, handshakes, divert, spool, emitted records),
//! plus records by kind and verdict and DLP findings by detector as they were stored.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use serde_json::Value;

use crate::hub::Hub;
use crate::link::DataplaneStatus;

/// What the exposition is made of.
#[derive(Debug)]
pub struct Inputs<'a> {
    /// Rule-set version in control's store.
    pub policy_version: i64,
    /// Flow records stored.
    pub stored_flows: u64,
    /// Request records stored.
    pub stored_requests: u64,
    /// Seconds since control started.
    pub uptime_s: u64,
    /// The data planes.
    pub dataplanes: Vec<DataplaneStatus>,
    /// Record counters.
    pub hub: &'a Hub,
    /// Distinct hosts per app in the inventory.
    pub hosts_per_app: Vec<(String, u64)>,
    /// Console sessions open.
    pub console_sessions: usize,
    /// TLS link peers refused after their handshake.
    pub link_refused: u64,
}

/// A label value with `\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: impl std::fmt::Display) {
        let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", label(v))).collect();
        if l.is_empty() {
            let _ = writeln!(self.0, "{name} {v}");
        } else {
            let _ = writeln!(self.0, "{name}{{{}}} {v}", l.join(","));
        }
    }
}

/// Engine counters exported per data plane: (field in `counters`, metric, help).
const ENGINE: &[(&str, &str, &str)] = &[
    ("frames", "sluice_packets_total", "Frames handled by the packet engine."),
    ("bytes", "sluice_bytes_total", "Bytes of the frames handled."),
    ("flows", "sluice_flows_total", "Flows created."),
    ("flows_refused", "sluice_flows_refused_total", "Flows refused at the table's cap."),
    ("flows_evicted", "sluice_flows_evicted_total", "Flows evicted at the table's cap."),
    (
        "embryonic_refused",
        "sluice_embryonic_refused_total",
        "SYNs refused at their source's embryonic-flow limit.",
    ),
    ("hellos", "sluice_handshakes_total", "TLS ClientHellos and QUIC Initials classified."),
    ("blocked", "sluice_flows_blocked_total", "Flows blocked by a verdict."),
    ("evasions", "sluice_evasions_total", "Reassembly evasions (conflicting overlaps) blocked."),
    ("resets", "sluice_resets_total", "TCP resets sent."),
    (
        "ring_drops",
        "sluice_ring_drops_total",
        "Frames the kernel dropped before the packet engine read them (receive rings full).",
    ),
];

/// Renders the exposition.
pub fn render(i: &Inputs<'_>) -> String {
    let mut o = Out(String::new());
    o.family("sluice_policy_version", "gauge", "Rule-set version in control's store.");
    o.sample("sluice_policy_version", &[], i.policy_version);
    o.family("sluice_records_stored", "gauge", "Records in the store, by kind.");
    o.sample("sluice_records_stored", &[("kind", "flow")], i.stored_flows);
    o.sample("sluice_records_stored", &[("kind", "request")], i.stored_requests);
    o.family("sluice_inventory_hosts", "gauge", "Hosts seen with each app (the inventory).");
    for (app, n) in &i.hosts_per_app {
        o.sample("sluice_inventory_hosts", &[("app", app)], n);
    }
    o.family("sluice_control_uptime_seconds", "counter", "Seconds since the daemon started.");
    o.sample("sluice_control_uptime_seconds", &[], i.uptime_s);
    o.family("sluice_console_sessions", "gauge", "Web console sessions open.");
    o.sample("sluice_console_sessions", &[], i.console_sessions);
    o.family(
        "sluice_records_ingested_total",
        "counter",
        "Records stored since control started, by kind and verdict.",
    );
    for ((kind, verdict), n) in i.hub.by_verdict() {
        o.sample("sluice_records_ingested_total", &[("kind", &kind), ("verdict", &verdict)], n);
    }
    o.family(
        "sluice_dlp_findings_total",
        "counter",
        "DLP findings in stored request records, by detector.",
    );
    for (det, n) in i.hub.by_detector() {
        o.sample("sluice_dlp_findings_total", &[("detector", &det)], n);
    }
    let usage = i.hub.usage();
    o.family(
        "sluice_usage_requests_total",
        "counter",
        "Request records stored since control started, by identity, user and model.",
    );
    for ((id, user, model), u) in &usage {
        o.sample(
            "sluice_usage_requests_total",
            &[("identity", id), ("user", user), ("model", model)],
            u.requests,
        );
    }
    o.family(
        "sluice_usage_tokens_total",
        "counter",
        "Tokens the responses reported, by identity, user, model and kind (input, output, cached).",
    );
    for ((id, user, model), u) in &usage {
        for (kind, n) in [("input", u.input), ("output", u.output), ("cached", u.cached)] {
            o.sample(
                "sluice_usage_tokens_total",
                &[("identity", id), ("user", user), ("model", model), ("kind", kind)],
                n,
            );
        }
    }
    o.family(
        "sluice_syslog_dropped_total",
        "counter",
        "Records the syslog exporter dropped (queue full).",
    );
    o.sample("sluice_syslog_dropped_total", &[], i.hub.syslog_dropped.load(Ordering::Relaxed));
    o.family(
        "sluice_link_refused_total",
        "counter",
        "Data-plane link peers refused after the TLS handshake (certificate not issued by this control, or revoked).",
    );
    o.sample("sluice_link_refused_total", &[], i.link_refused);
    o.family("sluice_dataplane_connected", "gauge", "1 while the data plane is connected.");
    for d in &i.dataplanes {
        o.sample("sluice_dataplane_connected", &[("dataplane", &d.name)], u8::from(d.connected));
    }
    o.family(
        "sluice_dataplane_policy_version",
        "gauge",
        "Rule-set version the data plane acknowledged.",
    );
    for d in &i.dataplanes {
        o.sample(
            "sluice_dataplane_policy_version",
            &[("dataplane", &d.name)],
            d.policy_version.unwrap_or(0),
        );
    }
    o.family(
        "sluice_dataplane_policy_diverged",
        "gauge",
        "1 while the data plane enforces rules other than control's current set (by hash).",
    );
    for d in &i.dataplanes {
        let diverged = d.policy_current == Some(false);
        o.sample("sluice_dataplane_policy_diverged", &[("dataplane", &d.name)], u8::from(diverged));
    }
    let stat = |d: &DataplaneStatus, path: &[&str]| -> Option<u64> {
        let mut v: &Value = d.stats.as_ref()?;
        for k in path {
            v = v.get(k)?;
        }
        v.as_u64()
    };
    for (field, name, help) in ENGINE {
        o.family(name, "counter", help);
        for d in &i.dataplanes {
            if let Some(n) = stat(d, &["counters", field]) {
                o.sample(name, &[("dataplane", &d.name)], n);
            }
        }
    }
    o.family(
        "sluice_diverted_flows_total",
        "counter",
        "Flows diverted to the interception engine.",
    );
    o.family(
        "sluice_spool_depth",
        "gauge",
        "Records spooled by the data plane, not yet acknowledged.",
    );
    o.family(
        "sluice_spool_dropped_total",
        "counter",
        "Records the data plane's spool dropped at its bound.",
    );
    o.family("sluice_records_emitted_total", "counter", "Records the data plane emitted, by kind.");
    for d in &i.dataplanes {
        let l = [("dataplane", d.name.as_str())];
        if let Some(n) = stat(d, &["divert", "flows"]) {
            o.sample("sluice_diverted_flows_total", &l, n);
        }
        if let Some(n) = stat(d, &["link", "spool_depth"]) {
            o.sample("sluice_spool_depth", &l, n);
        }
        if let Some(n) = stat(d, &["link", "spool_dropped"]) {
            o.sample("sluice_spool_dropped_total", &l, n);
        }
        for kind in ["flow", "request"] {
            if let Some(n) = stat(d, &["records_emitted", kind]) {
                o.sample(
                    "sluice_records_emitted_total",
                    &[("dataplane", &d.name), ("kind", kind)],
                    n,
                );
            }
        }
    }
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_families_and_escapes_labels() {
        let hub = Hub::new(None);
        let read = |t: &'static str| crate::record::Row::read(t, "dp").unwrap();
        hub.publish(&read(r#"{"seq":1,"type":"flow","verdict":"block"}"#));
        hub.publish(&read(
            r#"{"seq":2,"type":"request","verdict":"block","dlp_findings":[{"detector":"credit_card","count":2}]}"#,
        ));
        hub.publish(&read(
            r#"{"seq":3,"type":"request","verdict":"allow","identity":"fin","user":"a@x","model":"gpt-4o","input_tokens":7,"output_tokens":5}"#,
        ));
        let d = DataplaneStatus {
            name: "dp\"1".into(),
            connected: true,
            policy_version: Some(3),
            policy_current: Some(false),
            stats: Some(
                json!({"counters": {"frames": 10, "bytes": 600, "hellos": 2, "ring_drops": 9},
                               "link": {"spool_depth": 4, "spool_dropped": 0},
                               "records_emitted": {"flow": 7, "request": 1}}),
            ),
            ..Default::default()
        };
        let text = render(&Inputs {
            policy_version: 3,
            stored_flows: 7,
            stored_requests: 1,
            uptime_s: 5,
            dataplanes: vec![d],
            hub: &hub,
            hosts_per_app: vec![("openai-python".into(), 2)],
            console_sessions: 2,
            link_refused: 3,
        });
        for want in [
            "sluice_link_refused_total 3",
            "sluice_packets_total{dataplane=\"dp\\\"1\"} 10",
            "sluice_bytes_total{dataplane=\"dp\\\"1\"} 600",
            "sluice_handshakes_total{dataplane=\"dp\\\"1\"} 2",
            "sluice_ring_drops_total{dataplane=\"dp\\\"1\"} 9",
            "sluice_spool_depth{dataplane=\"dp\\\"1\"} 4",
            "sluice_dataplane_policy_diverged{dataplane=\"dp\\\"1\"} 1",
            "sluice_records_ingested_total{kind=\"flow\",verdict=\"block\"} 1",
            "sluice_dlp_findings_total{detector=\"credit_card\"} 2",
            "sluice_records_emitted_total{dataplane=\"dp\\\"1\",kind=\"flow\"} 7",
            "sluice_dataplane_policy_version{dataplane=\"dp\\\"1\"} 3",
            "sluice_usage_requests_total{identity=\"fin\",user=\"a@x\",model=\"gpt-4o\"} 1",
            "sluice_usage_tokens_total{identity=\"fin\",user=\"a@x\",model=\"gpt-4o\",kind=\"output\"} 5",
            "sluice_console_sessions 2",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
        // Every sample's family is declared.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} undeclared");
        }
    }
}
