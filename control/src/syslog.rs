//! Export of flow and request records to a syslog collector: RFC 5424 messages with the
//! record as JSON (structured for SIEMs that parse JSON), or ArcSight CEF, over UDP (one
//! datagram per record) or TCP (octet-counted framing, RFC 6587). The formatting is pure; the
//! exporter task owns the socket and reconnects.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// Transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// One datagram per record.
    Udp,
    /// A stream, each message prefixed by its length.
    Tcp,
}

/// Message format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// RFC 5424 with the JSON record as the message.
    #[default]
    Rfc5424,
    /// ArcSight Common Event Format inside an RFC 5424 header.
    Cef,
}

/// `[syslog]` in the daemon's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    /// Collector address.
    pub target: SocketAddr,
    /// `udp` or `tcp`.
    pub transport: Transport,
    /// `rfc5424` (default) or `cef`.
    #[serde(default)]
    pub format: Format,
    /// HOSTNAME field (default: this host's name).
    pub hostname: Option<String>,
}

fn s<'a>(r: &'a Value, k: &str) -> &'a str {
    r.get(k).and_then(Value::as_str).unwrap_or("")
}

/// RFC 5424 timestamp of unix ms.
fn timestamp(ms: u64) -> String {
    let t = crate::utc::from_unix_ms(ms);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second, t.millis
    )
}

/// A header field: printable US-ASCII without spaces, or `-`.
fn field(v: &str, max: usize) -> String {
    let f: String = v.chars().filter(|c| c.is_ascii_graphic()).take(max).collect();
    if f.is_empty() { "-".into() } else { f }
}

/// CEF header value: `\` and `|` escaped.
fn cef_header(v: &str) -> String {
    v.replace('\\', "\\\\").replace('|', "\\|").replace(['\r', '\n'], " ")
}

/// CEF extension value: `\` and `=` escaped, line breaks as `\n`.
fn cef_ext(v: &str) -> String {
    v.replace('\\', "\\\\").replace('=', "\\=").replace("\r\n", "\\n").replace(['\n', '\r'], "\\n")
}

/// One record as a syslog message (without transport framing).
pub fn format(r: &Value, fmt: Format, hostname: &str) -> String {
    let kind = s(r, "type");
    let verdict = s(r, "verdict");
    let blocked = verdict == "block";
    // A request DLP let through with findings (`alert` profiles): what a SOC watches for.
    let alert = kind == "request" && s(r, "dlp_action") == "alert";
    // Facility local0 (16); warning (4) for blocks and DLP alerts, notice (5) otherwise.
    let pri = 16 * 8 + if blocked || alert { 4 } else { 5 };
    let ts = timestamp(r.get("ts_ms").and_then(Value::as_u64).unwrap_or(0));
    let msgid = field(kind, 32);
    let head = format!("<{pri}>1 {ts} {} sluice - {msgid} -", field(hostname, 255));
    match fmt {
        Format::Rfc5424 => format!("{head} {r}"),
        Format::Cef => {
            let (sig, name) = match (kind, blocked) {
                ("discovery", _) => ("discovery", "New AI client on a host"),
                ("checkpoint", _) => ("audit-checkpoint", "Signed checkpoint of a record chain"),
                ("alert", _) => ("record-chain-break", "A data plane's record chain broke"),
                ("request", true) => ("request-block", "AI request blocked"),
                ("request", false) if alert => {
                    ("request-dlp-alert", "AI request with DLP findings")
                }
                ("request", false) => ("request-allow", "AI request"),
                (_, true) => ("flow-block", "Flow blocked"),
                _ => ("flow-allow", "Flow"),
            };
            let severity = match (blocked, alert) {
                _ if kind == "discovery" => 5,
                _ if kind == "checkpoint" => 3,
                _ if kind == "alert" => 8,
                (true, _) => 7,
                (false, true) => 5,
                _ => 3,
            };
            let mut ext = String::new();
            let mut add = |k: &str, v: &str| {
                if !v.is_empty() {
                    let _ =
                        write!(ext, "{}{k}={}", if ext.is_empty() { "" } else { " " }, cef_ext(v));
                }
            };
            let num = |k: &str| {
                r.get(k).and_then(Value::as_u64).map(|n| n.to_string()).unwrap_or_default()
            };
            add("rt", &num("ts_ms"));
            let about_traffic = !matches!(kind, "checkpoint" | "alert");
            if about_traffic {
                add("src", s(r, "src"));
                add("spt", &num("sport"));
                add("dst", s(r, "dst"));
                add("dpt", &num("dport"));
                add("suser", s(r, "user"));
                add("act", verdict);
                add("cs1Label", "identity");
                add("cs1", s(r, "identity"));
                add("cs2Label", "sni");
                add("cs2", s(r, "sni"));
                add("cs3Label", "category");
                add("cs3", s(r, "category"));
                add("cs4Label", "rule");
                add("cs4", s(r, "rule"));
                add("reason", s(r, "reason"));
            }
            if kind == "checkpoint" {
                // The whole signed line: a collector keeps what an auditor verifies against.
                add("msg", s(r, "line"));
            } else if kind == "alert" {
                add("cs1Label", "alert");
                add("cs1", s(r, "alert"));
                add("cs2Label", "dataplane");
                add("cs2", s(r, "dataplane"));
                add("msg", &r.get("detail").map(|d| d.to_string()).unwrap_or_default());
            } else if kind == "discovery" {
                add("cs5Label", "app");
                add("cs5", s(r, "app"));
                add("cs6Label", "ja4");
                add("cs6", s(r, "ja4"));
                add("msg", s(r, "event"));
            } else if kind == "request" {
                add("requestMethod", s(r, "method"));
                add("request", s(r, "path"));
                add("cs5Label", "model");
                add("cs5", s(r, "model"));
                let dets: Vec<&str> = r
                    .get("dlp_findings")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(|f| f.get("detector")?.as_str()).collect())
                    .unwrap_or_default();
                add("cs6Label", "dlp");
                add("cs6", &dets.join(","));
                add("out", &num("bytes_out"));
                add("in", &num("bytes_in"));
            } else {
                add("proto", s(r, "proto"));
                add("out", &num("bytes_out"));
                add("in", &num("bytes_in"));
            }
            format!(
                "{head} CEF:0|Sluice|Sluice|{}|{sig}|{}|{severity}|{ext}",
                cef_header(env!("CARGO_PKG_VERSION")),
                cef_header(name)
            )
        }
    }
}

/// Sends queued records to the collector until the queue closes; reconnects TCP with
/// back-off (records that arrive while the collector is down wait in the queue, bounded).
pub async fn export(cfg: SyslogConfig, mut rx: mpsc::Receiver<Arc<Value>>) {
    let hostname = cfg.hostname.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default()
    });
    tracing::info!(target = %cfg.target, transport = ?cfg.transport, format = ?cfg.format, "syslog export on");
    match cfg.transport {
        Transport::Udp => {
            let bind: SocketAddr =
                if cfg.target.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
            let sock = match tokio::net::UdpSocket::bind(bind).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("syslog: cannot open a UDP socket: {e}");
                    return;
                }
            };
            while let Some(r) = rx.recv().await {
                let msg = format(&r, cfg.format, &hostname);
                if let Err(e) = sock.send_to(msg.as_bytes(), cfg.target).await {
                    tracing::warn!("syslog: send to {}: {e}", cfg.target);
                }
            }
        }
        Transport::Tcp => {
            let mut pending: Option<Arc<Value>> = None;
            loop {
                let mut conn = match tokio::net::TcpStream::connect(cfg.target).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("syslog: connect {}: {e}", cfg.target);
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        continue;
                    }
                };
                loop {
                    let r = match pending.take() {
                        Some(r) => r,
                        None => match rx.recv().await {
                            Some(r) => r,
                            None => return,
                        },
                    };
                    let msg = format(&r, cfg.format, &hostname);
                    let framed = format!("{} {msg}", msg.len());
                    if let Err(e) = conn.write_all(framed.as_bytes()).await {
                        tracing::warn!("syslog: {}: {e}", cfg.target);
                        pending = Some(r);
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc5424_header_and_json() {
        let r = json!({"type": "flow", "ts_ms": 1_700_000_000_123u64, "verdict": "block", "src": "10.0.0.1"});
        let m = format(&r, Format::Rfc5424, "appliance 1");
        assert!(
            m.starts_with("<132>1 2023-11-14T22:13:20.123Z appliance1 sluice - flow - {"),
            "{m}"
        );
        let json: Value = serde_json::from_str(&m[m.find('{').unwrap()..]).unwrap();
        assert_eq!(json, r);
        let allow = format(&json!({"type": "request", "verdict": "allow"}), Format::Rfc5424, "");
        assert!(
            allow.starts_with("<133>1 1970-01-01T00:00:00.000Z - sluice - request - "),
            "{allow}"
        );
    }

    #[test]
    fn cef_escapes_and_names_fields() {
        let r = json!({"type": "request", "ts_ms": 5, "verdict": "block", "src": "10.20.1.10", "sport": 4000,
                       "identity": "finance", "user": "a=b\\c", "sni": "api.openai.com", "rule": "r|1",
                       "method": "POST", "path": "/v1/chat/completions", "model": "gpt-4o",
                       "dlp_findings": [{"detector": "credit_card"}, {"detector": "us_ssn"}]});
        let m = format(&r, Format::Cef, "h");
        let cef = &m[m.find("CEF:").unwrap()..];
        assert!(cef.starts_with("CEF:0|Sluice|Sluice|"), "{cef}");
        assert!(cef.contains("|request-block|AI request blocked|7|"), "{cef}");
        assert!(cef.contains("suser=a\\=b\\\\c"), "{cef}");
        assert!(cef.contains("cs4=r|1"), "pipes need no escape in extensions: {cef}");
        assert!(cef.contains("cs6=credit_card,us_ssn"), "{cef}");
        assert!(cef.contains("src=10.20.1.10 spt=4000"), "{cef}");
        assert!(!cef.contains('\n'));
        let alert = json!({"type": "request", "verdict": "allow", "dlp_action": "alert",
                           "dlp_findings": [{"detector": "aws_access_key_id"}]});
        let m = format(&alert, Format::Cef, "h");
        assert!(m.starts_with("<132>1 "), "a DLP alert is a warning: {m}");
        assert!(m.contains("|request-dlp-alert|AI request with DLP findings|5|"), "{m}");
        assert!(format(&alert, Format::Rfc5424, "h").starts_with("<132>1 "));
    }

    #[test]
    fn discoveries_are_named_with_their_app() {
        let d = json!({"type": "discovery", "ts_ms": 5, "event": "new-unknown-client", "src": "10.20.1.10",
            "identity": "finance", "app": "unknown", "ja4": "t13d0000h2_000000000000_000000000000"});
        let cef = format(&d, Format::Cef, "h");
        assert!(cef.contains("|discovery|New AI client on a host|5|"), "{cef}");
        assert!(cef.contains("cs5Label=app cs5=unknown cs6Label=ja4 cs6=t13d0000h2_"), "{cef}");
        assert!(cef.contains("msg=new-unknown-client"), "{cef}");
        assert!(cef.starts_with("<133>1 "), "notice, not a warning: {cef}");
    }

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(timestamp(1_795_000_000_999), "2026-11-18T11:06:40.999Z");
    }
}
