//! Rules by app and operation: what a hello decides, what only requests can tell, and the
//! diagnostics of `apps`, `app`, `operations` and `chatgpt_accounts`.
#![allow(clippy::unwrap_used)]

use sluice_rules::catalog::ShippedOnly;
use sluice_rules::operation::Operation;
use sluice_rules::{Action, AppSeen, IdentityOverlay, Policy, Query, Severity, compile};

const RULES: &str = r#"
[[identity]]
name = "alice"
cidrs = ["10.20.1.10/32"]
[[identity]]
name = "bob"
cidrs = ["10.20.1.20/32"]
[[category]]
name = "ai"
include = ["openai-api", "chatgpt"]
[[dlp]]
name = "strict"
detectors = ["@credential"]
action = "block"
[[rule]]
name = "bob-no-upload"
identities = ["bob"]
categories = ["ai"]
operations = ["upload"]
action = "block"
[[rule]]
name = "approved"
categories = ["ai"]
apps = ["openai-python", "curl", "chatgpt-web"]
action = "inspect"
[[rule]]
name = "sandbox"
categories = ["ai"]
app = "unknown"
action = "inspect"
dlp = "strict"
"#;

fn policy(text: &str) -> Policy {
    let c = compile("t.toml", text, &ShippedOnly).unwrap_or_else(|e| panic!("{e:?}"));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    c.policy
}

fn q(src: &str, app: AppSeen, op: Option<Operation>) -> Query<'static> {
    Query {
        src: src.parse().unwrap(),
        mac: None,
        sni: Some("api.openai.com"),
        port: 443,
        now: 0,
        app,
        op,
    }
}

fn app(p: &Policy, name: &str) -> Option<u8> {
    Some(p.apps.id(name).unwrap_or_else(|| panic!("{name}")))
}

#[test]
fn hellos_decide_by_stack_and_requests_by_app() {
    let p = policy(RULES);
    let none = IdentityOverlay::default();
    let d = |a, op| {
        let d = p.decide(&q("10.20.1.10", a, op), &none);
        (d.action, d.rule_name().to_owned(), d.deferred.map(|r| r.name().to_owned()))
    };
    // The Python stack may be the SDK, or any other Python program: only its requests tell,
    // so the flow is inspected for them (an `allow` of the SDK must not pass every script),
    // with the settings of the approved rule.
    let py = AppSeen::Hello(app(&p, "python"));
    assert_eq!(d(py, None), (Action::Inspect, "default".into(), Some("approved".into())));
    let dd = p.decide(&q("10.20.1.10", py, None), &none);
    assert_eq!(dd.settings.map(|r| r.name()), Some("approved"));
    // curl's own hello is curl: decided at the hello.
    assert_eq!(
        d(AppSeen::Hello(app(&p, "curl")), None),
        (Action::Inspect, "approved".into(), None)
    );
    // An unknown hello is sandboxed at its hello: no request of it can be ChatGPT on the
    // web, which is believed from a browser's hello only.
    assert_eq!(d(AppSeen::Hello(None), None), (Action::Inspect, "sandbox".into(), None));
    // A browser may be ChatGPT on the web, which only its requests show: inspected for it.
    let (action, rule, deferred) = d(AppSeen::Hello(app(&p, "chromium")), None);
    assert_eq!(
        (action, rule.as_str(), deferred.as_deref()),
        (Action::Inspect, "default", Some("approved"))
    );
    // Requests: the SDK is approved, plain urllib on the same stack is not, nor unknown.
    let chat = Some(Operation::Chat);
    assert_eq!(
        d(AppSeen::Request { app: app(&p, "openai-python"), hello: None }, chat).1,
        "approved"
    );
    assert_eq!(
        d(AppSeen::Request { app: app(&p, "python-urllib"), hello: None }, chat).1,
        "default"
    );
    assert_eq!(d(AppSeen::Request { app: None, hello: None }, chat).1, "sandbox");
    assert_eq!(
        d(AppSeen::Request { app: app(&p, "chatgpt-web"), hello: None }, chat).1,
        "approved"
    );
    // Before the hello (a SYN): the flow is to be inspected, its requests will tell.
    assert_eq!(d(AppSeen::Unseen, None).0, Action::Inspect);
}

#[test]
fn operations_are_decided_per_request() {
    let p = policy(RULES);
    let none = IdentityOverlay::default();
    let py = app(&p, "openai-python");
    // bob's flow is inspected for the rules only requests can tell, with the settings of
    // the first of them that inspects.
    let d = p.decide(&q("10.20.1.20", AppSeen::Hello(app(&p, "python")), None), &none);
    assert_eq!(
        (d.action, d.rule_name(), d.deferred.map(|r| r.name())),
        (Action::Inspect, "default", Some("bob-no-upload"))
    );
    assert_eq!(d.settings.map(|r| r.name()), Some("approved"));
    // An allow of the SDK alone does not pass every Python program at the hello.
    let allow_sdk = policy(
        "[[category]]\nname = \"ai\"\ninclude = [\"openai-api\"]\n[[rule]]\nname = \"sdk\"\ncategories = [\"ai\"]\napps = [\"openai-python\"]\naction = \"allow\"\n[[rule]]\nname = \"rest\"\naction = \"block\"\n",
    );
    let d = allow_sdk.decide(&q("10.20.1.20", AppSeen::Hello(app(&p, "python")), None), &none);
    assert_eq!(
        (d.action, d.rule_name(), d.deferred.map(|r| r.name())),
        (Action::Inspect, "rest", Some("sdk"))
    );
    let urllib = AppSeen::Request { app: app(&p, "python-urllib"), hello: app(&p, "python") };
    assert_eq!(
        allow_sdk.decide(&q("10.20.1.20", urllib, Some(Operation::Chat)), &none).action,
        Action::Block
    );
    let sdk = AppSeen::Request { app: py, hello: app(&p, "python") };
    assert_eq!(
        allow_sdk.decide(&q("10.20.1.20", sdk, Some(Operation::Chat)), &none).action,
        Action::Allow
    );
    // A request is its app and its hello's: a rule naming the browser matches ChatGPT in it.
    let browser = policy(
        "[[category]]\nname = \"ai\"\ninclude = [\"openai-api\"]\n[[rule]]\nname = \"chrome\"\ncategories = [\"ai\"]\napps = [\"chromium\"]\naction = \"inspect\"\n[[rule]]\nname = \"rest\"\naction = \"block\"\n",
    );
    let web = AppSeen::Request { app: app(&p, "chatgpt-web"), hello: app(&p, "chromium") };
    assert_eq!(
        browser.decide(&q("10.20.1.20", web, Some(Operation::Chat)), &none).rule_name(),
        "chrome"
    );
    let d = p.decide(
        &q("10.20.1.20", AppSeen::Request { app: py, hello: None }, Some(Operation::Upload)),
        &none,
    );
    assert_eq!((d.action, d.rule_name()), (Action::Block, "bob-no-upload"));
    let d = p.decide(
        &q("10.20.1.20", AppSeen::Request { app: py, hello: None }, Some(Operation::Chat)),
        &none,
    );
    assert_eq!((d.action, d.rule_name()), (Action::Inspect, "approved"));
    // alice's uploads are hers.
    let d = p.decide(
        &q("10.20.1.10", AppSeen::Request { app: py, hello: None }, Some(Operation::Upload)),
        &none,
    );
    assert_eq!(d.rule_name(), "approved");
    assert!(p.decides_requests());
    // A rule only requests can tell makes its flows inspected, even under an allow default,
    // and its sources diverted.
    let text = "[[rule]]\nname = \"no-uploads\"\noperations = [\"upload\"]\naction = \"block\"\n";
    let only = compile("t.toml", text, &ShippedOnly).unwrap();
    assert!(
        only.warnings[0].to_string().contains("no category: every TLS flow"),
        "{:?}",
        only.warnings
    );
    let only = only.policy;
    let d = only.decide(&q("10.1.1.1", AppSeen::Hello(None), None), &none);
    assert_eq!(
        (d.action, d.rule_name(), d.deferred.map(|r| r.name())),
        (Action::Inspect, "default", Some("no-uploads"))
    );
    assert!(only.may_inspect("10.1.1.1".parse().unwrap(), None, 443, 0, &none));
    assert!(only.is_inspected_name("example.org"));
    let plain = policy(
        "[[rule]]\nname = \"b\"\naction = \"block\"\ncategories = [\"c\"]\n[[category]]\nname = \"c\"\ndomains = [\"x.org\"]\n",
    );
    assert!(!plain.decides_requests());
}

#[test]
fn explain_says_what_requests_decide() {
    let p = policy(RULES);
    let none = IdentityOverlay::default();
    let lines = p.explain(&q("10.20.1.20", AppSeen::Hello(app(&p, "chromium")), None), &none);
    let text: String =
        lines.iter().flat_map(|l| l.reasons.iter()).map(|r| format!("{r}\n")).collect();
    assert!(text.contains("operation: decided per request against [\"upload\"]"), "{text}");
    assert!(
        text.contains("app: `chromium` (from the hello) is decided per request against"),
        "{text}"
    );
    assert!(text.contains("only its requests can tell: the flow is inspected"), "{text}");
    let lines = p.explain(
        &q(
            "10.20.1.20",
            AppSeen::Request { app: app(&p, "curl"), hello: None },
            Some(Operation::Upload),
        ),
        &none,
    );
    assert!(lines[0].decided, "{lines:?}");
}

fn errors(text: &str) -> Vec<String> {
    match compile("t.toml", text, &ShippedOnly) {
        Ok(c) => panic!("expected errors, compiled with warnings {:?}", c.warnings),
        Err(d) => {
            d.iter().filter(|d| d.severity == Severity::Error).map(ToString::to_string).collect()
        }
    }
}

#[test]
fn app_and_operation_names_are_checked() {
    let rule = |body: &str| format!("[[rule]]\nname = \"r\"\naction = \"inspect\"\n{body}\n");
    let e = errors(&rule("apps = [\"openai-pyton\"]"));
    assert!(e[0].contains("unknown app `openai-pyton`") && e[0].contains("openai-python"), "{e:?}");
    assert!(e[0].contains("t.toml:4:"), "{e:?}");
    let e = errors(&rule("apps = [\"curl\"]\napp = \"unknown\""));
    assert!(e[0].contains("both `app` and `apps`"), "{e:?}");
    let e = errors(&rule("operations = [\"uplod\"]"));
    assert!(e[0].contains("unknown operation `uplod`") && e[0].contains("upload"), "{e:?}");
    let e = errors("[[rule]]\nname = \"r\"\naction = \"allow\"\nchatgpt_accounts = [\"a1\"]\n");
    assert!(e[0].contains("`chatgpt_accounts` applies only to `inspect` rules"), "{e:?}");
    let e = errors(&rule("chatgpt_accounts = [\"a b\"]"));
    assert!(e[0].contains("not a valid chatgpt_accounts value"), "{e:?}");
    let c = compile(
        "t.toml",
        &rule("operations = [\"tool-call\"]\nchatgpt_accounts = [\"acc-1\"]"),
        &ShippedOnly,
    )
    .unwrap();
    assert_eq!(c.policy.rules[0].spec.operations, ["connector"]);
    assert_eq!(c.policy.rules[0].spec.headers.chatgpt_accounts, ["acc-1"]);
}

#[test]
fn shadowing_counts_apps_and_operations() {
    let warn = |text: &str| {
        let c = compile("t.toml", text, &ShippedOnly).unwrap();
        c.warnings.iter().filter(|w| w.to_string().contains("shadowed")).count()
    };
    let r = |name: &str, extra: &str| {
        format!("[[rule]]\nname = \"{name}\"\naction = \"block\"\n{extra}\n")
    };
    // A rule with apps covers a later one only for fewer apps.
    assert_eq!(warn(&(r("a", "apps = [\"curl\"]") + &r("b", ""))), 0);
    assert_eq!(warn(&(r("a", "apps = [\"curl\", \"go\"]") + &r("b", "apps = [\"curl\"]"))), 1);
    assert_eq!(
        warn(&(r("a", "operations = [\"upload\"]") + &r("b", "operations = [\"chat\"]"))),
        0
    );
    assert_eq!(warn(&(r("a", "") + &r("b", "operations = [\"chat\"]"))), 1);
}
