//! What a rule set would do with a recorded request (ARCHITECTURE.md, "Recordings"): the
//! policy decides the flow from the recording's source and server name, and an inspected one
//! goes through the same phases a live request does (request filter, body filter with DLP, the
//! approval it would wait for), offline. `sluicectl sessions replay` prints the outcome, so a
//! team can try a new profile on last week's real traffic. Not replayed: key brokering (the
//! recording withholds credentials) and quota counts (a dry run spends no budget).

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;
use sluice_rules::apps::{AppCatalog, Evidence, HeaderSource, HelloMatch, RequestFacts};
use sluice_rules::{Action, IdentityOverlay, Policy};

use crate::DivertedConn;
use crate::access::Access;
use crate::block::Refusal;
use crate::decide::Decider;
use crate::phases::{Headers, HttpVersion, RequestView};

/// A recorded request.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Client address.
    pub src: SocketAddr,
    /// Server it went to.
    pub dst: SocketAddr,
    /// TLS server name.
    pub sni: String,
    /// Method.
    pub method: String,
    /// Target (path and query).
    pub target: String,
    /// Header fields (names lowercase; credentials withheld).
    pub headers: Vec<(String, String)>,
    /// The decoded body.
    pub body: Vec<u8>,
    /// The app the connection's hello showed (`unknown` for an unknown hello; `None`: not
    /// recorded, the hello is taken to be the one the request's headers suggest).
    pub hello_app: Option<String>,
}

struct Fields<'a>(&'a [(String, String)]);

impl Headers for Fields<'_> {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_bytes())
    }
    fn count(&self, name: &str) -> usize {
        self.0.iter().filter(|(n, _)| n == name).count()
    }
    fn each(&self, f: &mut dyn FnMut(&str, &[u8])) {
        for (n, v) in self.0 {
            f(n, v.as_bytes());
        }
    }
}

impl HeaderSource for Fields<'_> {
    fn header(&self, name: &str) -> Option<&[u8]> {
        Headers::header(self, name)
    }
}

/// The hello a recorded request came with: as the recording names it, so that rules by app
/// decide as they did on the wire. A recording made before hellos were kept (or naming an
/// app the catalog no longer has) is taken at its headers' word: the hello of the stack the
/// app they name is believed from (none: an unknown hello).
fn recorded_hello(apps: &AppCatalog, r: &Recorded, host: &str) -> HelloMatch {
    let named = |app| HelloMatch { app, evidence: Evidence::JA4 };
    match r.hello_app.as_deref().map(|n| (n, apps.id(n))) {
        Some(("unknown", _)) => return named(None),
        Some((_, Some(id))) => return named(Some(id)),
        _ => {}
    }
    let path = r.target.split(['?', '#']).next().unwrap_or("");
    let fields = Fields(&r.headers);
    let facts = RequestFacts { authority: host, path, headers: &fields };
    named(apps.by_request(&facts).map(|m| {
        let app = &apps.apps()[m.app as usize];
        app.stacks.first().copied().unwrap_or_else(|| apps.root(m.app))
    }))
}

/// What the rule set would have done.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// The flow's action: `allow` (spliced, not inspected), `block` or `inspect`.
    pub action: &'static str,
    /// The rule that decided (`None`: the default action).
    pub rule: Option<String>,
    /// The identity the source resolves to.
    pub identity: String,
    /// `allow` (forwarded), `block` (refused) or `hold` (waits for a reviewer first).
    pub verdict: &'static str,
    /// The refusal's status and code.
    pub status: Option<u16>,
    /// Its code.
    pub code: Option<&'static str>,
    /// Why.
    pub reason: Option<String>,
    /// What DLP did.
    pub dlp_action: Option<&'static str>,
    /// DLP findings: detector and count.
    pub findings: Vec<(String, usize)>,
}

/// Runs `r` through `policy`, as the interception engine would have.
pub fn dry_run(policy: Arc<Policy>, r: &Recorded) -> Outcome {
    let scanner = match sluice_dlp::Scanner::new() {
        Ok(s) => Arc::new(s),
        Err(e) => {
            return Outcome {
                verdict: "block",
                reason: Some(format!("the DLP scanner could not be built: {e}")),
                ..Outcome::default()
            };
        }
    };
    let decider = Decider::new(
        Arc::new(ArcSwap::new(policy.clone())),
        Arc::new(ArcSwap::from_pointee(IdentityOverlay::default())),
        scanner,
        b"dry-run",
        Arc::new(Access::default()),
    );
    let conn = DivertedConn { original_dst: r.dst, client_mac: [0; 6] };
    let host = r.sni.strip_suffix('.').unwrap_or(&r.sni).to_ascii_lowercase();
    let hello = recorded_hello(&policy.apps, r, &host);
    let d = decider.decide_hello(r.src, &conn, Some(&r.sni), hello);
    let mut out = Outcome {
        action: d.action.as_str(),
        rule: d.note.rule.clone(),
        identity: d.note.identity.clone(),
        ..Outcome::default()
    };
    match d.action {
        Action::Allow => {
            out.verdict = "allow";
            return out;
        }
        Action::Block => {
            out.verdict = "block";
            out.code = Some("blocked_by_policy");
            return out;
        }
        Action::Inspect => {}
    }
    let mut s = d.session(r.sni.clone(), r.src, r.dst, None);
    s.headers.broker = None;
    s.headers.quota = None;
    let fields = Fields(&r.headers);
    let view = RequestView {
        method: &r.method,
        target: &r.target,
        authority: &host,
        version: HttpVersion::Http11,
        headers: &fields,
    };
    let mut ctx = s.request(Some(&view));
    let result = s
        .request_filter(&view, &mut ctx)
        .and_then(|()| s.request_body_filter(&view, r.body.clone(), &mut ctx).map(|_| ()));
    let refused = |out: &mut Outcome, e: Refusal| {
        out.verdict = "block";
        out.status = Some(e.status);
        out.code = Some(e.code);
        out.reason = Some(e.message);
    };
    match result {
        Ok(()) if ctx.hold.is_some() => out.verdict = "hold",
        Ok(()) => out.verdict = "allow",
        Err(e) => refused(&mut out, e),
    }
    out.dlp_action = ctx.rec.dlp_action;
    out.findings = ctx.rec.dlp_findings.iter().map(|f| (f.detector.to_owned(), f.count)).collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(action: &str) -> Arc<Policy> {
        let text = format!(
            "[[identity]]\nname = \"finance\"\ncidrs = [\"10.20.1.0/24\"]\n\n[[category]]\nname = \"ai\"\ndomains = [\"api.openai.com\"]\n\n[[dlp]]\nname = \"p\"\ndetectors = [\"credit_card\"]\naction = \"{action}\"\n\n[[rule]]\nname = \"fin\"\nidentities = [\"finance\"]\ncategories = [\"ai\"]\naction = \"inspect\"\ndlp = \"p\"\n"
        );
        Arc::new(
            sluice_rules::compile("t.toml", &text, &sluice_rules::catalog::ShippedOnly)
                .unwrap()
                .policy,
        )
    }

    fn recorded(body: &str) -> Recorded {
        Recorded {
            src: "10.20.1.10:40000".parse().unwrap(),
            dst: "198.51.100.10:443".parse().unwrap(),
            sni: "api.openai.com".into(),
            method: "POST".into(),
            target: "/v1/chat/completions".into(),
            headers: vec![
                ("host".into(), "api.openai.com".into()),
                ("content-type".into(), "application/json".into()),
                ("authorization".into(), "[withheld]".into()),
            ],
            body: body.as_bytes().to_vec(),
            hello_app: None,
        }
    }

    #[test]
    fn a_stricter_profile_blocks_what_a_lenient_one_let_through() {
        let card =
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"4111 1111 1111 1111"}]}"#;
        let lenient = dry_run(policy("alert"), &recorded(card));
        assert_eq!(
            (lenient.action, lenient.verdict, lenient.dlp_action),
            ("inspect", "allow", Some("alert"))
        );
        let strict = dry_run(policy("block"), &recorded(card));
        assert_eq!((strict.verdict, strict.code), ("block", Some("dlp_violation")));
        assert_eq!(strict.findings, [("credit_card".to_owned(), 1)]);
        let held = dry_run(policy("approve"), &recorded(card));
        assert_eq!(held.verdict, "hold");
        let clean = dry_run(policy("block"), &recorded(r#"{"model":"gpt-4o","messages":[]}"#));
        assert_eq!(clean.verdict, "allow");
        let mut other = recorded(card);
        other.src = "10.99.0.1:1".parse().unwrap();
        let d = dry_run(policy("block"), &other);
        assert_eq!((d.action, d.verdict, d.identity.as_str()), ("allow", "allow", "unknown"));
    }

    /// A rule naming apps decides a replay by the app the recorded hello showed, as it did
    /// on the wire: a stack it approves passes, an unknown hello is refused.
    #[test]
    fn rules_by_app_see_the_recorded_hello() {
        let text = "[[identity]]\nname = \"finance\"\ncidrs = [\"10.20.1.0/24\"]\n\n[[category]]\nname = \"ai\"\ndomains = [\"api.openai.com\"]\n\n[[rule]]\nname = \"approved\"\nidentities = [\"finance\"]\ncategories = [\"ai\"]\napps = [\"python\"]\naction = \"inspect\"\n\n[[rule]]\nname = \"sandbox\"\nidentities = [\"finance\"]\ncategories = [\"ai\"]\naction = \"block\"\n";
        let policy = Arc::new(
            sluice_rules::compile("t.toml", text, &sluice_rules::catalog::ShippedOnly)
                .unwrap()
                .policy,
        );
        let chat = r#"{"model":"gpt-4o","messages":[]}"#;
        let mut python = recorded(chat);
        python.hello_app = Some("python".into());
        let d = dry_run(policy.clone(), &python);
        assert_eq!(
            (d.action, d.verdict, d.rule.as_deref()),
            ("inspect", "allow", Some("approved"))
        );
        let mut unknown = recorded(chat);
        unknown.hello_app = Some("unknown".into());
        let d = dry_run(policy.clone(), &unknown);
        assert_eq!((d.action, d.verdict, d.rule.as_deref()), ("block", "block", Some("sandbox")));
        // A recording that kept no hello: its headers name the SDK, whose stack is Python's.
        let mut older = recorded(chat);
        older.headers.push(("user-agent".into(), "OpenAI/Python 3.57.0".into()));
        older.headers.push(("x-stainless-lang".into(), "python".into()));
        let d = dry_run(policy.clone(), &older);
        assert_eq!(
            (d.action, d.verdict, d.rule.as_deref()),
            ("inspect", "allow", Some("approved"))
        );
        // Nor headers that name anything: an unknown client.
        let d = dry_run(policy, &recorded(chat));
        assert_eq!((d.action, d.verdict), ("block", "block"));
    }
}
