//! Behaviour of the shipped default rule set and of the compiler's diagnostics.
#![allow(clippy::unwrap_used)]

use std::net::IpAddr;

use sluice_rules::apps::{AppId, shipped};
use sluice_rules::catalog::{SHIPPED, ShippedOnly};
use sluice_rules::operation::Operation;
use sluice_rules::{
    Action, AppSeen, IdentityOverlay, OverlayEntry, Policy, Query, Severity, compile, diff::diff,
};

const DEFAULT: &str = include_str!("../default.toml");

fn default_policy() -> Policy {
    let c = compile("default.toml", DEFAULT, &ShippedOnly).expect("default rules compile");
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    c.policy
}

/// A flow of `src` to `sni` whose hello is curl's (an app both teams approve).
fn q<'a>(src: &str, sni: &'a str) -> Query<'a> {
    Query {
        src: src.parse().unwrap(),
        mac: None,
        sni: Some(sni),
        port: 443,
        now: 1_000,
        app: AppSeen::Hello(app("curl")),
        op: None,
    }
}

fn app(name: &str) -> Option<AppId> {
    Some(shipped().id(name).unwrap_or_else(|| panic!("{name} is in the catalog")))
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
fn default_rules_behave_as_documented() {
    let p = default_policy();
    let none = IdentityOverlay::default();
    let d = p.decide(&q("10.20.1.10", "api.openai.com"), &none);
    assert_eq!(
        (d.action, d.rule_name(), &**d.identity, d.category.map(|c| &**c)),
        (Action::Inspect, "finance-openai-inspect", "finance", Some("openai-api"))
    );
    assert_eq!(d.dlp.unwrap().name.as_ref(), "block-sensitive");
    let hp = &d.rule.unwrap().spec.headers;
    assert_eq!(
        hp.chatgpt_workspace_header.as_deref(),
        Some("00000000-0000-4000-8000-00000000f1a0")
    );
    let d = p.decide(&q("10.20.1.10", "chatgpt.com"), &none);
    assert_eq!((d.action, d.category.map(|c| &**c)), (Action::Inspect, Some("chatgpt")));
    let d = p.decide(&q("10.20.2.20", "api.openai.com"), &none);
    assert_eq!(
        (d.action, d.rule_name(), d.dlp.unwrap().name.as_ref()),
        (Action::Inspect, "engineering-api-redact", "redact-sensitive")
    );
    // bob's ChatGPT is not named by any rule: allowed without decryption.
    let d = p.decide(&q("10.20.2.20", "chatgpt.com"), &none);
    assert_eq!(
        (d.action, d.rule_name(), d.category.map(|c| &**c)),
        (Action::Allow, "default", Some("chatgpt"))
    );
    for sni in ["api.openai.com", "CHATGPT.com.", "ab.chatgpt.com", "auth.openai.com", "sora.com"] {
        let d = p.decide(&q("10.20.9.99", sni), &none);
        assert_eq!(
            (d.action, d.rule_name(), &**d.identity),
            (Action::Block, "unknown-no-openai", "unknown"),
            "{sni}"
        );
    }
    let d = p.decide(&q("fd20::9:99", "api.openai.com"), &none);
    assert_eq!(d.action, Action::Block);
    let d = p.decide(&q("fd20::1:10", "api.openai.com"), &none);
    assert_eq!(&**d.identity, "finance");
    for src in ["10.20.9.99", "10.20.1.10"] {
        let d = p.decide(&q(src, "expired.badssl.lab"), &none);
        assert_eq!((d.action, d.rule_name()), (Action::Inspect, "badssl-inspect"));
        let d = p.decide(&q(src, "example.org"), &none);
        assert_eq!(
            (d.action, d.rule_name(), d.category.map(|c| &**c)),
            (Action::Allow, "default", None)
        );
    }
    // No SNI: only rules without categories can match.
    let d = p.decide(&Query { sni: None, ..q("10.20.9.99", "") }, &none);
    assert_eq!(d.action, Action::Allow);
    assert!(p.may_inspect("10.20.1.10".parse().unwrap(), None, 443, 0, &none));
    assert!(p.is_inspected_name("api.openai.com") && !p.is_inspected_name("example.org"));
}

/// The app sandbox of the default rules: approved apps inspected as before, an unknown
/// client refused at its hello, a known app nobody approved refused per request.
#[test]
fn default_rules_sandbox_unapproved_apps() {
    let p = default_policy();
    let none = IdentityOverlay::default();
    let with = |src, sni, app| Query { app, ..q(src, sni) };
    for (src, sandbox) in
        [("10.20.1.10", "finance-unapproved-apps"), ("10.20.2.20", "engineering-unapproved-apps")]
    {
        // An unknown hello: refused before decryption.
        let d = p.decide(&with(src, "api.openai.com", AppSeen::Hello(None)), &none);
        assert_eq!((d.action, d.rule_name(), d.deferred.is_none()), (Action::Block, sandbox, true));
        // Python's hello: an approved stack, inspected at once.
        let d = p.decide(&with(src, "api.openai.com", AppSeen::Hello(app("python"))), &none);
        assert_eq!((d.action, d.deferred.is_none()), (Action::Inspect, true), "{src}");
        // Node's: only requests tell the approved SDK from other Node programs.
        let d = p.decide(&with(src, "api.openai.com", AppSeen::Hello(app("node"))), &none);
        assert_eq!(
            (d.action, d.rule_name(), d.deferred.is_some()),
            (Action::Inspect, sandbox, true)
        );
        let settings = d.settings.map(|r| r.name());
        assert!(
            settings.is_some_and(|n| n.ends_with("-inspect") || n.ends_with("-redact")),
            "{settings:?}"
        );
        for (request, verdict) in
            [("openai-node", Action::Inspect), ("vercel-ai-sdk", Action::Block)]
        {
            let a = AppSeen::Request { app: app(request), hello: app("node") };
            let d = p.decide(
                &Query { op: Some(Operation::Chat), ..with(src, "api.openai.com", a) },
                &none,
            );
            assert_eq!(d.action, verdict, "{src} {request}");
        }
        // Before the hello (a SYN): the flow is diverted, for the hello to decide.
        let d = p.decide(&with(src, "api.openai.com", AppSeen::Unseen), &none);
        assert_eq!(d.action, Action::Inspect);
    }
    // Rust's TLS stack (rustls): the Codex CLI runs on it, other Rust programs too; only
    // requests tell them apart.
    let rustls = with("10.20.1.10", "api.openai.com", AppSeen::Hello(app("rustls")));
    let d = p.decide(&rustls, &none);
    assert_eq!(
        (d.action, d.rule_name(), d.deferred.map(|r| r.name())),
        (Action::Inspect, "finance-unapproved-apps", Some("finance-openai-inspect"))
    );
    for (request, verdict) in [("codex-cli", Action::Inspect), ("rustls", Action::Block)] {
        let a = AppSeen::Request { app: app(request), hello: app("rustls") };
        let d = p.decide(&Query { app: a, op: Some(Operation::CodeAgent), ..rustls }, &none);
        assert_eq!(d.action, verdict, "{request}");
    }
    // A browser reaches ChatGPT as the web app for finance, and the API as nothing approved.
    let d = p.decide(&with("10.20.1.10", "chatgpt.com", AppSeen::Hello(app("chromium"))), &none);
    assert_eq!(d.action, Action::Inspect);
    let web = AppSeen::Request { app: app("chromium"), hello: app("chromium") };
    let d = p.decide(
        &Query { op: Some(Operation::Chat), ..with("10.20.1.10", "api.openai.com", web) },
        &none,
    );
    assert_eq!((d.action, d.rule_name()), (Action::Block, "finance-unapproved-apps"));
}

#[test]
fn overlay_moves_a_source_without_recompiling() {
    let p = default_policy();
    let guest: IpAddr = "10.20.9.99".parse().unwrap();
    let overlay = IdentityOverlay::new([(
        guest,
        OverlayEntry {
            user: "gina@corp".into(),
            groups: vec!["finance".into()],
            expires_at: Some(2_000),
        },
    )]);
    let d = p.decide(&q("10.20.9.99", "api.openai.com"), &overlay);
    assert_eq!(
        (d.action, &**d.identity, d.user.map(|u| &**u)),
        (Action::Inspect, "finance", Some("gina@corp"))
    );
    let later = Query { now: 2_000, ..q("10.20.9.99", "api.openai.com") };
    assert_eq!(p.decide(&later, &overlay).action, Action::Block);
}

#[test]
fn groups_macs_and_ports() {
    let text = r#"
[[identity]]
name = "kiosk"
macs = ["02:00:00:00:00:01"]
[[identity]]
name = "lab"
cidrs = ["10.0.0.0/8"]
[[category]]
name = "ai"
include = ["openai-api", "other-ai"]
[[rule]]
name = "contractors-block"
groups = ["contractors"]
categories = ["ai"]
action = "block"
[[rule]]
name = "kiosk-block"
identities = ["kiosk"]
action = "block"
[[rule]]
name = "alt-port"
categories = ["ai"]
ports = [8443]
action = "block"
"#;
    let p = compile("t.toml", text, &ShippedOnly).unwrap().policy;
    let none = IdentityOverlay::default();
    let mut query = q("10.1.2.3", "api.anthropic.com");
    assert_eq!(p.decide(&query, &none).action, Action::Allow);
    query.port = 8443;
    assert_eq!(p.decide(&query, &none).rule_name(), "alt-port");
    query.port = 443;
    query.mac = Some([2, 0, 0, 0, 0, 1]);
    let d = p.decide(&query, &none);
    assert_eq!((d.rule_name(), &**d.identity), ("kiosk-block", "kiosk"));
    let ov = IdentityOverlay::new([(
        query.src,
        OverlayEntry { user: "c".into(), groups: vec!["contractors".into()], expires_at: None },
    )]);
    assert_eq!(p.decide(&query, &ov).rule_name(), "contractors-block");
    let ex = p.explain(&query, &ov);
    assert_eq!(ex.len(), 4);
    assert!(ex[0].decided && ex[1].matched && !ex[1].decided && !ex[3].decided);
}

#[test]
fn errors_point_at_line_and_column() {
    let e = errors("[[rule]]\nname = \"r\"\ncategories = [\"nope\"]\naction = \"block\"\n");
    assert_eq!(e, vec!["t.toml:3:15: error: rule `r` names unknown category `nope`"]);
    let e = errors("[[identity]]\nname = \"a\"\ncidrs = [\"10.0.0.0/33\"]\n");
    assert!(e[0].starts_with("t.toml:3:10: error: `10.0.0.0/33` is not a CIDR"), "{e:?}");
    let e = errors(
        "[[identity]]\nname = \"a\"\ncidrs = [\"10.0.0.0/8\"]\n[[identity]]\nname = \"b\"\ncidrs = [\"10.1.0.0/16\"]\n",
    );
    assert!(
        e[0].starts_with("t.toml:6:10: error: `10.1.0.0/16` overlaps `10.0.0.0/8` of identity `a`"),
        "{e:?}"
    );
    let e = errors(
        "[[identity]]\nname = \"a\"\ncidrs = [\"10.0.0.0/8\"]\n[[identity]]\nname = \"a\"\ncidrs = [\"11.0.0.0/8\"]\n",
    );
    assert!(e[0].contains("5:8: error: duplicate identity `a`"), "{e:?}");
    let e = errors("[[dlp]]\nname = \"p\"\ndetectors = [\"credit_crad\"]\naction = \"block\"\n");
    assert_eq!(
        e,
        vec!["t.toml:3:14: error: unknown detector `credit_crad`: did you mean `credit_card`?"]
    );
    let e = errors(
        "[[rule]]\nname = \"r\"\naction = \"inspect\"\nchatgpt_workspaces = [\"not-a-uuid\"]\n",
    );
    assert!(e[0].starts_with("t.toml:4:23: error: `not-a-uuid` is not a UUID"), "{e:?}");
    let e = errors("[[rule]]\nname = \"r\"\nidentities = [\"finanse\"]\naction = \"allow\"\n");
    assert!(e[0].contains("3:15") && e[0].contains("unknown identity `finanse`"), "{e:?}");
    let e = errors("[[rule]]\nname = \"r\"\naction = \"allw\"\n");
    assert!(e[0].starts_with("t.toml:3:10: error:") && e[0].contains("allow"), "{e:?}");
    let e = errors("[[rule]]\nname = \"r\"\naction = \"block\"\ncolour = 1\n");
    assert!(e[0].starts_with("t.toml:4:1: error:") && e[0].contains("colour"), "{e:?}");
    let e = errors("[[category]]\nname = \"c\"\ninclude = [\"openai-apj\"]\n");
    assert!(e[0].contains("3:12") && e[0].contains("unknown catalog"), "{e:?}");
    let e = errors("[[category]]\nname = \"c\"\ndomains = [\"b\u{fc}cher.de\"]\n");
    assert!(e[0].contains("3:12") && e[0].contains("A-label"), "{e:?}");
    let e = errors("[defaults]\naction = \"inspect\"\n");
    assert!(e[0].starts_with("t.toml:2:10: error: the default action"), "{e:?}");
    let e = errors("[[rule]]\nname = \"r\"\naction = \"allow\"\ndlp = \"x\"\n");
    assert!(e[0].contains("4:7") && e[0].contains("only to `inspect`"), "{e:?}");
    let e = errors("[[rule\n");
    assert!(e[0].starts_with("t.toml:1:"), "{e:?}");
    // Several errors are all reported, in order.
    let e = errors(
        "[[rule]]\nname = \"r\"\ncategories = [\"x\"]\nidentities = [\"y\"]\naction = \"block\"\n",
    );
    assert_eq!(e.len(), 2);
    assert!(e[0].contains(":3:") && e[1].contains(":4:"), "{e:?}");
}

#[test]
fn shadowed_rules_are_warnings() {
    let text = "[[category]]\nname = \"c\"\ndomains = [\"a.com\"]\n[[rule]]\nname = \"all\"\naction = \"block\"\n[[rule]]\nname = \"late\"\ncategories = [\"c\"]\naction = \"allow\"\n";
    let c = compile("t.toml", text, &ShippedOnly).unwrap();
    assert_eq!(c.warnings.len(), 1);
    assert_eq!(
        c.warnings[0].to_string(),
        "t.toml:8:8: warning: rule `late` is shadowed by earlier rule `all`, which matches every flow it would"
    );
}

#[test]
fn every_shipped_catalog_compiles() {
    for (name, _) in SHIPPED {
        let text = format!("[[category]]\nname = \"c\"\ninclude = [\"{name}\"]\n");
        let p = compile("t.toml", &text, &ShippedOnly)
            .unwrap_or_else(|e| panic!("{name}: {e:?}"))
            .policy;
        assert!(!p.categories[0].domains.is_empty(), "{name}");
    }
}

#[test]
fn diff_reports_rule_and_domain_changes() {
    let old = default_policy();
    let new_text = DEFAULT
        .replace("name = \"badssl-inspect\"", "name = \"badssl-block\"")
        .replace("domains = [\"*.badssl.lab\"]", "domains = [\"*.badssl.lab\", \"bad.example\"]")
        .replacen(
            "identities = [\"engineering\"]\ncategories = [\"openai-api\"]",
            "identities = [\"engineering\"]\ncategories = [\"openai-api\", \"chatgpt\"]",
            1,
        );
    let new = compile("new.toml", &new_text, &ShippedOnly).unwrap().policy;
    let d = diff(&old, &new);
    assert_eq!(d.rules_added.len(), 1);
    assert_eq!(&*d.rules_added[0].name, "badssl-block");
    assert_eq!(&*d.rules_removed[0].name, "badssl-inspect");
    assert_eq!(d.rules_changed.len(), 1);
    assert_eq!(d.rules_changed[0].name, "engineering-api-redact");
    assert_eq!(d.categories_changed[0].added, vec!["bad.example".to_owned()]);
    assert!(diff(&old, &old).is_empty());
}

#[test]
fn never_panics_on_mangled_input() {
    // Every truncation and a set of byte mutations of the default file: errors, never panics.
    for cut in 0..DEFAULT.len() {
        if DEFAULT.is_char_boundary(cut) {
            let _ = compile("t.toml", &DEFAULT[..cut], &ShippedOnly);
        }
    }
    let bytes = DEFAULT.as_bytes();
    for i in (0..bytes.len()).step_by(7) {
        for b in [b'"', b'[', b'\n', b'0', b'*', 0xff] {
            let mut m = bytes.to_vec();
            m[i] = b;
            if let Ok(s) = std::str::from_utf8(&m) {
                let _ = compile("t.toml", s, &ShippedOnly);
            }
        }
    }
}

#[test]
fn custom_detectors_are_validated_and_usable_in_profiles() {
    struct Files;
    impl sluice_rules::catalog::IncludeLoader for Files {
        fn load(&self, name: &str) -> Result<(String, String), String> {
            ShippedOnly.load(name)
        }
        fn load_data(&self, name: &str) -> Result<(String, String), String> {
            match name {
                "customers.txt" => {
                    Ok((name.into(), "# lab customers\nAcme Corp\n\nGlobex\nacme corp\n".into()))
                }
                _ => Err(format!("cannot read {name}: no such file")),
            }
        }
    }
    let text = r#"
[[detector]]
name = "customer_id"
kind = "regex"
pattern = '\bCUST-[0-9]{6}\b'

[[detector]]
name = "codenames"
kind = "keywords"
words = ["Project Bluebird"]

[[detector]]
name = "customers"
kind = "dictionary"
file = "customers.txt"

[[dlp]]
name = "internal"
detectors = ["customer_id", "codenames", "customers", "email"]
action = "block"
"#;
    let c = compile("t.toml", text, &Files).unwrap();
    assert_eq!(c.policy.custom_detectors.len(), 3);
    match &c.policy.custom_detectors[2].kind {
        sluice_rules::CustomKind::Dictionary { hashes, entries, max_words } => {
            assert_eq!((hashes.len(), *entries, *max_words), (2, 3, 2), "deduplicated by hash");
            assert!(hashes.contains(&sluice_rules::dictionary_hash(["ACME", "corp"])));
        }
        k => panic!("{k:?}"),
    }
    assert_eq!(c.policy.dlp_profiles[0].detectors.len(), 4);

    let bad = |extra: &str| -> Vec<String> {
        match compile("t.toml", extra, &Files) {
            Ok(_) => panic!("compiled: {extra}"),
            Err(d) => d
                .iter()
                .filter(|d| d.severity == Severity::Error)
                .map(ToString::to_string)
                .collect(),
        }
    };
    let e = bad("[[detector]]\nname = \"x\"\nkind = \"regex\"\npattern = \"(unclosed\"\n");
    assert!(e[0].starts_with("t.toml:4:11: error: invalid regular expression"), "{e:?}");
    let e = bad("[[detector]]\nname = \"email\"\nkind = \"keywords\"\nwords = [\"a\"]\n");
    assert!(e[0].contains("`email` is a built-in detector"), "{e:?}");
    let e = bad("[[detector]]\nname = \"d\"\nkind = \"dictionary\"\nfile = \"missing.txt\"\n");
    assert!(e[0].contains("4:8") && e[0].contains("no such file"), "{e:?}");
    let e = bad("[[detector]]\nname = \"r\"\nkind = \"regex\"\npattern = \"a*\"\n");
    assert!(e[0].contains("matches the empty string"), "{e:?}");
    let e = bad("[[detector]]\nname = \"k\"\nkind = \"keywords\"\n");
    assert!(e[0].contains("needs `words`"), "{e:?}");
    let e = bad(
        "[[detector]]\nname = \"cust\"\nkind = \"keywords\"\nwords = [\"x\"]\n[[dlp]]\nname = \"p\"\ndetectors = [\"cusd\"]\naction = \"alert\"\n",
    );
    assert!(e[0].contains("unknown detector `cusd`: did you mean `cust`?"), "{e:?}");
}

#[test]
fn profiles_name_families_with_exclusions_and_rules_choose_on_unscanned() {
    let text = r#"
[[detector]]
name = "codenames"
kind = "keywords"
words = ["Project Bluebird"]

[[category]]
name = "c"
domains = ["api.example"]

[[dlp]]
name = "wide"
detectors = ["@credential", "@financial", "@custom", "us_ssn"]
exclude = ["stripe_test_key"]
action = "block"

[[dlp]]
name = "soft"
detectors = ["@pii"]
action = "alert"

[[rule]]
name = "a"
identities = ["unknown"]
ports = [1]
action = "inspect"
dlp = "wide"

[[rule]]
name = "b"
identities = ["unknown"]
ports = [2]
action = "inspect"
dlp = "soft"

[[rule]]
name = "c"
identities = ["unknown"]
ports = [3]
action = "inspect"
dlp = "wide"
on_unscanned = "allow"

[[rule]]
name = "d"
identities = ["unknown"]
ports = [4]
action = "inspect"
dlp = "soft"
on_unscanned = "block"
"#;
    let c = compile("t.toml", text, &ShippedOnly).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let wide = &c.policy.dlp_profiles[0].detectors;
    let credentials = sluice_rules::detectors::DETECTORS
        .iter()
        .filter(|d| d.family == "credential" && d.name != "stripe_test_key");
    for d in credentials {
        assert!(wide.contains(&d.name.to_owned()), "{} missing", d.name);
    }
    for d in ["credit_card", "iban", "codenames", "us_ssn"] {
        assert!(wide.contains(&d.to_owned()), "{d} missing");
    }
    assert!(!wide.contains(&"stripe_test_key".to_owned()) && !wide.contains(&"email".to_owned()));
    let soft = &c.policy.dlp_profiles[1].detectors;
    assert!(soft.contains(&"email".to_owned()) && !soft.contains(&"ip_address".to_owned()));
    let blocks: Vec<bool> = c.policy.rules.iter().map(|r| r.spec.headers.block_unscanned).collect();
    assert_eq!(blocks, [true, false, false, true], "defaults follow the profile's action");

    let e = errors("[[dlp]]\nname = \"p\"\ndetectors = [\"@credentail\"]\naction = \"block\"\n");
    assert!(e[0].starts_with("t.toml:3:14: error: unknown detector family `@credentail`"), "{e:?}");
    let e = errors(
        "[[dlp]]\nname = \"p\"\ndetectors = [\"email\"]\nexclude = [\"@pii\"]\naction = \"block\"\n",
    );
    assert!(e[0].contains("the profile's exclusions leave no detector"), "{e:?}");
    let e = errors("[[rule]]\nname = \"r\"\naction = \"inspect\"\non_unscanned = \"block\"\n");
    assert!(e[0].contains("`on_unscanned` needs a `dlp` profile"), "{e:?}");
}

#[test]
fn missing_org_project_needs_an_allow_list() {
    let ok = "[[rule]]\nname = \"r\"\naction = \"inspect\"\nallowed_organizations = [\"org-a\"]\nmissing_org_project = \"inject\"\n";
    let c = compile("t.toml", ok, &ShippedOnly).unwrap();
    assert!(c.policy.rules[0].spec.headers.inject_missing_org_project);
    let e =
        errors("[[rule]]\nname = \"r\"\naction = \"inspect\"\nmissing_org_project = \"inject\"\n");
    assert!(e[0].contains("`missing_org_project` needs `allowed_organizations`"), "{e:?}");
}
