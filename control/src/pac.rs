//! The proxy auto-config file for the explicit proxy (ARCHITECTURE.md, "Explicit proxy"):
//! browsers and systems that cannot sit behind an inline appliance send the names of every
//! category some rule inspects or blocks to the proxies of `[proxy]`, the rest directly. No
//! `DIRECT` fallback for those names: a proxy that is down must not become a way around it.
//! Rendered from the current rule set (pure, [`render`]), cached per rule version, and served
//! on a plain-HTTP address of its own (`pac_listen`) at `/proxy.pac` and `/wpad.dat`, without a
//! token: it holds domain names and proxy addresses only, and clients fetch it before anyone
//! has signed in.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use sluice_rules::catalog::ShippedOnly;
use sluice_rules::{Action, compile};

use crate::state::AppState;

/// `[proxy]` in control's configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// The explicit proxies (`HOST:PORT`, in order) clients are sent to for the names rules
    /// inspect or block.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Plain-HTTP address serving `/proxy.pac` and `/wpad.dat`.
    pub pac_listen: Option<SocketAddr>,
}

impl ProxyConfig {
    /// Why the section is unusable, if it is.
    pub fn problem(&self) -> Option<String> {
        if self.pac_listen.is_some() && self.addresses.is_empty() {
            return Some("[proxy] pac_listen needs the proxies' addresses".into());
        }
        self.addresses.iter().find_map(|a| {
            let ok = a.rsplit_once(':').is_some_and(|(h, p)| {
                !h.is_empty()
                    && p.parse::<u16>().is_ok_and(|p| p > 0)
                    && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b))
            });
            (!ok).then(|| format!("[proxy] address `{a}`: expected HOST:PORT"))
        })
    }
}

/// The PAC file for `rules` (a rule set's text) and `proxies`; `Err` when the rules do not
/// compile.
pub fn render(rules: &str, proxies: &[String]) -> Result<String, String> {
    let policy = compile("rules.toml", rules, &ShippedOnly)
        .map_err(|d| format!("the current rule set does not compile ({} errors)", d.len()))?
        .policy;
    let wanted: std::collections::BTreeSet<&str> = policy
        .rules
        .iter()
        .filter(|r| matches!(r.spec.action, Action::Inspect | Action::Block))
        .flat_map(|r| r.spec.categories.iter().map(String::as_str))
        .collect();
    let mut exact = std::collections::BTreeSet::new();
    let mut below = std::collections::BTreeSet::new();
    for c in policy.categories.iter().filter(|c| wanted.contains(&*c.name)) {
        for d in &c.domains {
            // Patterns are validated names (letters, digits, `-`, `.`, a leading `*.`): safe
            // inside a JavaScript string.
            match d.strip_prefix("*.") {
                Some(suffix) => below.insert(suffix.to_ascii_lowercase()),
                None => exact.insert(d.to_ascii_lowercase()),
            };
        }
    }
    // A rule that applies to every name (no category, no port: an app-only rule), or a
    // default that is not `allow`: every name goes to the proxy. (Port-only rules concern
    // protocols that do not use a proxy, DNS over TLS in the shipped rules.)
    let everything = policy.defaults.action != Action::Allow
        || policy.rules.iter().any(|r| {
            matches!(r.spec.action, Action::Inspect | Action::Block)
                && r.spec.categories.is_empty()
                && r.spec.ports.is_empty()
        });
    let route: Vec<String> = proxies.iter().map(|p| format!("PROXY {p}")).collect();
    let mut out = String::new();
    let _ = writeln!(out, "// Sluice: the names its rules inspect or block go to the explicit");
    let _ = writeln!(out, "// proxy (never DIRECT: a proxy that is down is no way around them).");
    let _ = writeln!(out, "var everything = {everything};");
    let _ = writeln!(out, "var exact = {{");
    for d in &exact {
        let _ = writeln!(out, "  \"{d}\": 1,");
    }
    let _ = writeln!(out, "}};\nvar below = [");
    for d in &below {
        let _ = writeln!(out, "  \".{d}\",");
    }
    let _ = writeln!(out, "];");
    let _ = writeln!(
        out,
        "function FindProxyForURL(url, host) {{\n  host = host.toLowerCase().replace(/\\.$/, \"\");\n  if (everything || exact.hasOwnProperty(host)) return \"{r}\";\n  for (var i = 0; i < below.length; i++) {{\n    if (dnsDomainIs(host, below[i])) return \"{r}\";\n  }}\n  return \"DIRECT\";\n}}",
        r = route.join("; ")
    );
    Ok(out)
}

/// The PAC file of the current rule version, rendered once per version.
#[derive(Debug, Default)]
pub struct PacCache(Mutex<Option<(i64, Arc<str>)>>);

/// What the PAC listener serves from.
#[derive(Clone)]
struct Pac {
    state: Arc<AppState>,
    proxies: Arc<[String]>,
}

async fn pac(State(p): State<Pac>) -> Response {
    let current = p.state.rules.lock().unwrap_or_else(PoisonError::into_inner).current();
    let Ok(Some(v)) = current else {
        return (StatusCode::SERVICE_UNAVAILABLE, "no rule set yet\n").into_response();
    };
    let cache = &p.state.pac;
    let cached = cache.0.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let text = match cached {
        Some((version, text)) if version == v.version => text,
        _ => match render(&v.text, &p.proxies) {
            Ok(t) => {
                let t: Arc<str> = t.into();
                *cache.0.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some((v.version, t.clone()));
                t
            }
            Err(e) => {
                tracing::error!("proxy.pac: {e}");
                return (StatusCode::INTERNAL_SERVER_ERROR, "no PAC file\n").into_response();
            }
        },
    };
    ([(header::CONTENT_TYPE, "application/x-ns-proxy-autoconfig")], text.to_string())
        .into_response()
}

/// Serves `/proxy.pac` and `/wpad.dat` on `listener` forever.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    proxies: Vec<String>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/proxy.pac", get(pac))
        .route("/wpad.dat", get(pac))
        .with_state(Pac { state, proxies: proxies.into() });
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn inspected_and_blocked_names_go_to_the_proxy_and_nothing_else() {
        let rules = r#"
[[category]]
name = "ai"
domains = ["api.example-ai.com", "*.chat.example-ai.com"]

[[category]]
name = "bad"
domains = ["evil.example"]

[[category]]
name = "fine"
domains = ["docs.example"]

[[rule]]
name = "inspect-ai"
categories = ["ai"]
action = "inspect"

[[rule]]
name = "block-bad"
categories = ["bad"]
action = "block"

[[rule]]
name = "allow-fine"
categories = ["fine"]
action = "allow"
"#;
        let pac = render(rules, &["10.40.0.2:3128".into(), "10.40.0.3:3128".into()]).unwrap();
        assert!(pac.contains("\"api.example-ai.com\": 1"), "{pac}");
        assert!(pac.contains("\".chat.example-ai.com\""), "{pac}");
        assert!(pac.contains("\"evil.example\": 1"), "{pac}");
        assert!(!pac.contains("docs.example"), "allowed names stay direct: {pac}");
        assert!(pac.contains("return \"PROXY 10.40.0.2:3128; PROXY 10.40.0.3:3128\";"), "{pac}");
        assert!(!pac.contains("PROXY 10.40.0.3:3128; DIRECT"), "no way around the proxy");
        assert!(pac.contains("var everything = false;"), "{pac}");
        assert!(render("[[rule]]\nname = 1\n", &[]).is_err());
        // A rule for every name (an app-only rule), or a default that blocks: everything.
        let app_only = format!(
            "{rules}\n[[rule]]\nname = \"no-unknown\"\napps = [\"curl\"]\naction = \"block\"\n"
        );
        assert!(render(&app_only, &["p:1".into()]).unwrap().contains("var everything = true;"));
        let closed = format!("[defaults]\naction = \"block\"\n{rules}");
        assert!(render(&closed, &["p:1".into()]).unwrap().contains("var everything = true;"));
        // The shipped rules: the OpenAI API among what goes to the proxy.
        let shipped = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules/default.toml"),
        )
        .unwrap();
        let pac = render(&shipped, &["p:3128".into()]).unwrap();
        assert!(pac.contains("\"api.openai.com\": 1"), "{pac}");
        assert!(pac.contains("var everything = false;"), "the shipped port-853 rule is no reason");
    }

    #[test]
    fn the_section_is_checked() {
        let c = |a: &[&str], l: Option<&str>| ProxyConfig {
            addresses: a.iter().map(|s| (*s).to_owned()).collect(),
            pac_listen: l.map(|l| l.parse().unwrap()),
        };
        assert!(c(&["10.0.0.2:3128", "proxy.corp:8080"], Some("0.0.0.0:8081")).problem().is_none());
        assert!(c(&[], Some("0.0.0.0:8081")).problem().is_some());
        assert!(c(&["10.0.0.2"], None).problem().is_some());
        assert!(c(&["a:0"], None).problem().is_some());
        assert!(c(&["a\";alert(1);//:80"], None).problem().is_some(), "nothing to inject");
    }
}
