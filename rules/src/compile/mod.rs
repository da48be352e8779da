//! Validation and compilation of a rule file into a [`Policy`]. Every problem is reported with
//! file, line and column; compilation never panics, whatever the input.

use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::Arc;

use hashbrown::HashMap;
use ipnet::IpNet;
use toml::Spanned;

mod access;
mod apps;
mod broker;
mod custom;
mod names;
mod scopes;

use names::{closest, is_uuid, name_msg, valid_name};

use crate::catalog::IncludeLoader;
use crate::catset::{CatSet, MAX_CATEGORIES};
use crate::diag::{Diagnostic, Severity, Source};
use crate::domain::{DomainIndex, DomainPattern, parse_pattern};
use crate::ident::{CidrTable, IdentityId, Mac, format_mac, parse_mac};
use crate::policy::{
    Category, Defaults, HeaderPolicy, Identity, Policy, Rule, RuleSpec, pattern_string,
};
use crate::schema::{
    Action, CanaryPolicy, CatalogFile, DivertMode, DlpAction, DnsEchPolicy, EchPolicy, FailMode,
    FilePolicy, FragmentPolicy, MidstreamPolicy, MissingOrgProject, QuicPolicy, QuicRefusal,
    RuleDef, RuleFile, Unscanned,
};

/// Most custom detectors in a rule set (with the built-in ones they share a 128-entry set).
pub const MAX_CUSTOM_DETECTORS: usize = 64;
/// Most words in one dictionary entry.
pub const MAX_DICTIONARY_WORDS: usize = 8;

/// Largest rule file accepted (bytes).
pub const MAX_RULE_FILE: usize = 16 << 20;
/// Default `max_inspect_bytes`.
pub const DEFAULT_MAX_INSPECT: u64 = 8 << 20;

/// A successful compilation: the policy and any warnings.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The policy.
    pub policy: Policy,
    /// Warnings (e.g. shadowed rules).
    pub warnings: Vec<Diagnostic>,
}

/// Compiles rule-file text. `name` is used in diagnostics; includes go through `loader`.
/// On failure returns every error found (and warnings), sorted by position.
pub fn compile(
    name: &str,
    text: &str,
    loader: &dyn IncludeLoader,
) -> Result<Compiled, Vec<Diagnostic>> {
    let src = Source { name: name.into(), text };
    let mut cx = Cx { src: src.clone(), diags: Vec::new() };
    if text.len() > MAX_RULE_FILE {
        return Err(vec![
            src.error(0..0, format!("rule file is larger than {MAX_RULE_FILE} bytes")),
        ]);
    }
    let file: RuleFile = match toml::from_str(text) {
        Ok(f) => f,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            return Err(vec![src.error(span, e.message().trim().to_owned())]);
        }
    };
    let policy = cx.build(&file, loader);
    let mut diags = cx.diags;
    diags.sort_by_key(|d| (d.severity == Severity::Warning, d.file.clone(), d.line, d.col));
    if diags.iter().any(|d| d.severity == Severity::Error) {
        return Err(diags);
    }
    Ok(Compiled { policy, warnings: diags })
}

struct Cx<'a> {
    src: Source<'a>,
    diags: Vec<Diagnostic>,
}

fn span_of<T>(s: &Spanned<T>) -> Range<usize> {
    s.span()
}

impl Cx<'_> {
    fn err(&mut self, span: Range<usize>, msg: impl Into<String>) {
        let d = self.src.error(span, msg);
        self.diags.push(d);
    }

    fn warn(&mut self, span: Range<usize>, msg: impl Into<String>) {
        let d = self.src.warning(span, msg);
        self.diags.push(d);
    }

    fn build(&mut self, file: &RuleFile, loader: &dyn IncludeLoader) -> Policy {
        let defaults = self.defaults(file);
        let (identities, by_name, cidrs, macs) = self.identities(file, &defaults);
        let (categories, cat_index, domains) = self.categories(file, loader);
        let custom_detectors = self.custom_detectors(file, loader);
        let (dlp_profiles, dlp_index) = self.dlp(file, &custom_detectors);
        let dlp_actions: Vec<DlpAction> = dlp_profiles.iter().map(|p| p.action).collect();
        let mut rules = Vec::with_capacity(file.rule.len());
        let mut rule_names: HashMap<String, Range<usize>> = HashMap::new();
        for r in &file.rule {
            if let Some(prev) = rule_names.get(r.get_ref().name.get_ref()) {
                let (l, c) = self.src.position(prev.start);
                let msg = format!(
                    "duplicate rule name `{}` (first defined at {l}:{c})",
                    r.get_ref().name.get_ref()
                );
                self.err(span_of(&r.get_ref().name), msg);
            } else {
                rule_names.insert(r.get_ref().name.get_ref().clone(), span_of(&r.get_ref().name));
            }
            if let Some(rule) =
                self.rule(r.get_ref(), &defaults, &by_name, &cat_index, &dlp_index, &dlp_actions)
            {
                if rule.per_request() && rule.spec.categories.is_empty() {
                    self.warn(
                        span_of(&r.get_ref().name),
                        format!(
                            "rule `{}` names apps or operations but no category: every TLS flow of its sources is inspected so that its requests can be decided (and their QUIC refused); name the categories it is for",
                            rule.spec.name
                        ),
                    );
                }
                rules.push((span_of(&r.get_ref().name), rule));
            }
        }
        self.shadowing(&rules);
        Policy {
            source_name: self.src.name.clone(),
            defaults,
            identities,
            categories,
            custom_detectors,
            dlp_profiles,
            per_request: rules.iter().any(|(_, r)| r.per_request()),
            rules: rules.into_iter().map(|(_, r)| r).collect(),
            identity_by_name: by_name,
            cidrs,
            macs,
            domains,
            apps: crate::apps::shipped().clone(),
        }
    }

    fn defaults(&mut self, file: &RuleFile) -> Defaults {
        let d = file.defaults.as_ref();
        let action = d.and_then(|d| d.action.as_ref());
        if let Some(a) = action
            && *a.get_ref() == Action::Inspect
        {
            self.err(span_of(a), "the default action must be `allow` or `block`: inspection needs a rule with a DLP profile");
        }
        let unknown: Arc<str> = match d.and_then(|d| d.unknown_identity.as_ref()) {
            Some(u) => {
                if !valid_name(u.get_ref()) {
                    self.err(span_of(u), name_msg("unknown_identity", u.get_ref()));
                }
                u.get_ref().as_str().into()
            }
            None => "unknown".into(),
        };
        let max_inspect = match d.and_then(|d| d.max_inspect_bytes.as_ref()) {
            Some(m) if *m.get_ref() < 1024 || *m.get_ref() > (1 << 30) => {
                self.err(span_of(m), "max_inspect_bytes must be between 1024 and 1073741824");
                DEFAULT_MAX_INSPECT
            }
            Some(m) => *m.get_ref(),
            None => DEFAULT_MAX_INSPECT,
        };
        let mut tls_ports: Vec<u16> = vec![443];
        if let Some(p) = d.and_then(|d| d.tls_ports.as_ref()) {
            if p.get_ref().is_empty() {
                self.err(span_of(p), "tls_ports must list at least one port");
            }
            tls_ports = Vec::new();
            for port in p.get_ref() {
                if *port.get_ref() == 0 {
                    self.err(span_of(port), "port 0 is not a valid port: expected 1-65535");
                } else if tls_ports.contains(port.get_ref()) {
                    self.err(span_of(port), format!("port {} is listed twice", port.get_ref()));
                } else {
                    tls_ports.push(*port.get_ref());
                }
            }
            tls_ports.sort_unstable();
        }
        Defaults {
            action: match action.map(|a| *a.get_ref()) {
                Some(Action::Block) => Action::Block,
                _ => Action::Allow,
            },
            unknown_identity: unknown,
            on_inspect_failure: d.and_then(|d| d.on_inspect_failure).unwrap_or(FailMode::Block),
            max_inspect_bytes: max_inspect,
            midstream: d.and_then(|d| d.midstream).unwrap_or(MidstreamPolicy::Allow),
            quic_unreadable: d.and_then(|d| d.quic_unreadable).unwrap_or(QuicPolicy::Restricted),
            quic_refusal: d.and_then(|d| d.quic_refusal).unwrap_or(QuicRefusal::Unreachable),
            ip_fragments: d.and_then(|d| d.ip_fragments).unwrap_or(FragmentPolicy::Reassemble),
            ech: d.and_then(|d| d.ech).unwrap_or(EchPolicy::Restricted),
            doh_canary: d.and_then(|d| d.doh_canary).unwrap_or(CanaryPolicy::Pass),
            dns_ech: d.and_then(|d| d.dns_ech).unwrap_or(DnsEchPolicy::Strip),
            divert: d.and_then(|d| d.divert).unwrap_or(DivertMode::Learned),
            tls_ports,
            recording_recipients: self.recording_recipients(d),
        }
    }

    fn rule(
        &mut self,
        r: &RuleDef,
        defaults: &Defaults,
        ids: &HashMap<Arc<str>, IdentityId>,
        cats: &HashMap<String, usize>,
        dlps: &HashMap<String, usize>,
        dlp_actions: &[DlpAction],
    ) -> Option<Rule> {
        let errors_before = self.error_count();
        let name = r.name.get_ref();
        if !valid_name(name) {
            self.err(span_of(&r.name), name_msg("rule name", name));
        }
        let mut id_list = Vec::new();
        for i in &r.identities {
            match ids.get(i.get_ref().as_str()) {
                Some(id) => id_list.push(*id),
                None if **i.get_ref() == *defaults.unknown_identity => {}
                None => {
                    let hint = closest(
                        i.get_ref(),
                        ids.keys().map(|k| &**k).chain([&*defaults.unknown_identity]),
                    );
                    self.err(
                        span_of(i),
                        format!("rule `{name}` names unknown identity `{}`{hint}", i.get_ref()),
                    );
                }
            }
        }
        for g in &r.groups {
            if !valid_name(g.get_ref()) {
                self.err(span_of(g), name_msg("group", g.get_ref()));
            }
        }
        let mut cat_set = CatSet::default();
        for c in &r.categories {
            match cats.get(c.get_ref()) {
                Some(id) => cat_set.insert(*id),
                None => {
                    let hint = closest(c.get_ref(), cats.keys().map(String::as_str));
                    self.err(
                        span_of(c),
                        format!("rule `{name}` names unknown category `{}`{hint}", c.get_ref()),
                    );
                }
            }
        }
        for p in &r.ports {
            if *p.get_ref() == 0 {
                self.err(span_of(p), "port 0 is not a valid port: expected 1-65535");
            }
        }
        let (apps, app_names) = self.rule_apps(r, name);
        let (ops, op_names) = self.rule_operations(r, name);
        let written = *r.action.get_ref();
        let action = written.flow();
        let dlp = match (&r.dlp, action) {
            (Some(d), Action::Inspect) => match dlps.get(d.get_ref()) {
                Some(i) => Some(*i),
                None => {
                    let hint = closest(d.get_ref(), dlps.keys().map(String::as_str));
                    self.err(
                        span_of(d),
                        format!("rule `{name}` names unknown DLP profile `{}`{hint}", d.get_ref()),
                    );
                    None
                }
            },
            (Some(d), _) => {
                self.err(
                    span_of(d),
                    format!(
                        "`dlp` applies only to `inspect` rules; rule `{name}` is `{}`",
                        action.as_str()
                    ),
                );
                None
            }
            (None, _) => None,
        };
        let mut headers = self.headers(r, action);
        headers.mask_responses =
            self.inspect_flag(r.mask_responses.as_ref(), "mask_responses", name, action);
        headers.block_audio =
            self.inspect_flag(r.block_audio.as_ref(), "block_audio", name, action);
        for (field, span) in [
            ("files", r.files.as_ref().map(span_of)),
            ("max_file_bytes", r.max_file_bytes.as_ref().map(span_of)),
        ] {
            if let (Some(span), false) = (span, action == Action::Inspect) {
                self.err(
                    span,
                    format!(
                        "`{field}` applies only to `inspect` rules; rule `{name}` is `{}`",
                        action.as_str()
                    ),
                );
            }
        }
        headers.block_files = r.files.as_ref().is_some_and(|f| *f.get_ref() == FilePolicy::Block);
        headers.max_file_bytes = r.max_file_bytes.as_ref().map(|m| *m.get_ref());
        headers.block_chatgpt_anonymous = self.inspect_flag(
            r.block_chatgpt_anonymous.as_ref(),
            "block_chatgpt_anonymous",
            name,
            action,
        );
        if let Some(m) = &r.mask_profile {
            if action != Action::Inspect {
                self.err(
                    span_of(m),
                    format!(
                        "`mask_profile` applies only to `inspect` rules; rule `{name}` is `{}`",
                        action.as_str()
                    ),
                );
            } else if !dlps.contains_key(m.get_ref()) {
                let hint = closest(m.get_ref(), dlps.keys().map(String::as_str));
                self.err(
                    span_of(m),
                    format!("rule `{name}` names unknown DLP profile `{}`{hint}", m.get_ref()),
                );
            } else {
                headers.mask_responses = true;
                headers.mask_profile = Some(m.get_ref().clone());
            }
        }
        headers.inject_missing_org_project = match &r.missing_org_project {
            Some(m) if r.allowed_organizations.is_empty() && r.allowed_projects.is_empty() => {
                self.err(
                    span_of(m),
                    format!("`missing_org_project` needs `allowed_organizations` or `allowed_projects`; rule `{name}` has neither"),
                );
                false
            }
            Some(m) => *m.get_ref() == MissingOrgProject::Inject,
            None => false,
        };
        headers.broker = self.broker(r, name, action);
        headers.quota = self.quota(r, name, action);
        let approves = dlp.and_then(|i| dlp_actions.get(i)) == Some(&DlpAction::Approve);
        headers.approval = self.approval(r, name, written, approves);
        headers.record = self.record(r, name, action, defaults);
        headers.block_unscanned = match &r.on_unscanned {
            Some(u) if r.dlp.is_none() => {
                self.err(
                    span_of(u),
                    format!("`on_unscanned` needs a `dlp` profile; rule `{name}` has none"),
                );
                false
            }
            Some(u) => *u.get_ref() == Unscanned::Block,
            None => dlp.and_then(|i| dlp_actions.get(i)).is_some_and(|a| *a == DlpAction::Block),
        };
        if self.error_count() > errors_before {
            return None;
        }
        let mut ports: Vec<u16> = r.ports.iter().map(|p| *p.get_ref()).collect();
        ports.sort_unstable();
        ports.dedup();
        Some(Rule {
            spec: RuleSpec {
                name: name.as_str().into(),
                identities: r.identities.iter().map(|i| i.get_ref().clone()).collect(),
                groups: r.groups.iter().map(|g| g.get_ref().clone()).collect(),
                categories: r.categories.iter().map(|c| c.get_ref().clone()).collect(),
                ports,
                apps: app_names,
                operations: op_names,
                action,
                dlp: r.dlp.as_ref().map(|d| d.get_ref().clone()),
                headers,
            },
            ids: id_list,
            any_source: r.identities.is_empty() && r.groups.is_empty(),
            match_unknown: r.identities.iter().any(|i| **i.get_ref() == *defaults.unknown_identity),
            cats: (!r.categories.is_empty()).then_some(cat_set),
            apps,
            ops,
            dlp,
        })
    }

    /// A rule setting that only `inspect` rules take: its value, or an error on another rule.
    fn inspect_flag(
        &mut self,
        flag: Option<&Spanned<bool>>,
        field: &str,
        name: &str,
        action: Action,
    ) -> bool {
        let Some(f) = flag else { return false };
        if action != Action::Inspect {
            self.err(
                span_of(f),
                format!(
                    "`{field}` applies only to `inspect` rules; rule `{name}` is `{}`",
                    action.as_str()
                ),
            );
            return false;
        }
        *f.get_ref()
    }

    fn headers(&mut self, r: &RuleDef, action: Action) -> HeaderPolicy {
        let lists = [
            ("chatgpt_workspaces", &r.chatgpt_workspaces),
            ("chatgpt_accounts", &r.chatgpt_accounts),
            ("openai_allowed_orgs", &r.openai_allowed_orgs),
            ("allowed_organizations", &r.allowed_organizations),
            ("allowed_projects", &r.allowed_projects),
            ("allowed_models", &r.allowed_models),
        ];
        for (key, list) in lists {
            if action != Action::Inspect
                && let Some(first) = list.first()
            {
                self.err(span_of(first), format!("`{key}` applies only to `inspect` rules (headers are seen only once TLS is re-terminated)"));
            }
            for v in list {
                let s = v.get_ref();
                let ok = match key {
                    "chatgpt_workspaces" => is_uuid(s),
                    _ => {
                        !s.is_empty()
                            && s.len() <= 256
                            && s.bytes().all(|b| b.is_ascii_graphic() && b != b',')
                    }
                };
                if !ok {
                    let msg = if key == "chatgpt_workspaces" {
                        format!(
                            "`{s}` is not a UUID: expected 8-4-4-4-12 hex digits like `00000000-0000-4000-8000-00000000f1a0`"
                        )
                    } else {
                        format!(
                            "`{s}` is not a valid {key} value: expected a non-empty token without spaces or commas"
                        )
                    };
                    self.err(span_of(v), msg);
                }
            }
        }
        let join = |l: &Vec<Spanned<String>>| {
            (!l.is_empty()).then(|| {
                l.iter().map(|v| v.get_ref().to_ascii_lowercase()).collect::<Vec<_>>().join(",")
            })
        };
        let plain =
            |l: &Vec<Spanned<String>>| l.iter().map(|v| v.get_ref().clone()).collect::<Vec<_>>();
        HeaderPolicy {
            chatgpt_workspace_header: join(&r.chatgpt_workspaces),
            openai_allowed_orgs_header: (!r.openai_allowed_orgs.is_empty())
                .then(|| plain(&r.openai_allowed_orgs).join(",")),
            allowed_organizations: plain(&r.allowed_organizations),
            allowed_projects: plain(&r.allowed_projects),
            allowed_models: plain(&r.allowed_models),
            mask_responses: false,
            block_audio: false,
            block_chatgpt_anonymous: false,
            block_files: false,
            max_file_bytes: None,
            block_unscanned: false,
            inject_missing_org_project: false,
            mask_profile: None,
            broker: None,
            quota: None,
            approval: None,
            record: None,
            chatgpt_accounts: plain(&r.chatgpt_accounts),
        }
    }

    /// Warns about rules that can never match because an earlier rule matches everything they do.
    fn shadowing(&mut self, rules: &[(Range<usize>, Rule)]) {
        for (j, (span, later)) in rules.iter().enumerate() {
            if let Some((_, earlier)) = rules[..j].iter().find(|(_, e)| covers(e, later)) {
                self.warn(
                    span.clone(),
                    format!("rule `{}` is shadowed by earlier rule `{}`, which matches every flow it would", later.spec.name, earlier.spec.name),
                );
            }
        }
    }

    fn error_count(&self) -> usize {
        self.diags.iter().filter(|d| d.severity == Severity::Error).count()
    }
}

fn covers(a: &Rule, b: &Rule) -> bool {
    let src = a.any_source
        || (!b.any_source
            && b.spec.identities.iter().all(|i| a.spec.identities.contains(i))
            && b.spec.groups.iter().all(|g| a.spec.groups.contains(g)));
    let dst = match (&a.cats, &b.cats) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(x), Some(y)) => x.is_superset(y),
    };
    let ports = a.spec.ports.is_empty()
        || (!b.spec.ports.is_empty() && b.spec.ports.iter().all(|p| a.spec.ports.contains(p)));
    let apps = match (&a.apps, &b.apps) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(x), Some(y)) => x.exact.is_superset(&y.exact),
    };
    let ops = match (a.ops, b.ops) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(x), Some(y)) => x.is_superset(y),
    };
    src && dst && ports && apps && ops
}

fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let net: IpNet = match s.parse::<IpNet>() {
        Ok(n) => n,
        Err(_) => match s.parse::<std::net::IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => {
                return Err(format!(
                    "`{s}` is not a CIDR: expected an address with a prefix length, like `10.20.1.0/24` or `fd20::/64`"
                ));
            }
        },
    };
    if net.trunc() != net {
        return Err(format!("`{s}` has host bits set: did you mean `{}`?", net.trunc()));
    }
    Ok(net)
}

/// Compiles a rule file of one category (`c`: `api.example`) and one rule `r` with `rule`'s
/// lines (the access tests'); the errors joined, one per line.
#[cfg(test)]
fn one_rule(rule: &str) -> Result<Compiled, String> {
    let text = format!(
        "[[category]]\nname = \"c\"\ndomains = [\"api.example\"]\n\n[[rule]]\nname = \"r\"\ncategories = [\"c\"]\n{rule}\n"
    );
    compile("t.toml", &text, &crate::catalog::ShippedOnly)
        .map_err(|e| e.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))
}

#[cfg(test)]
mod tests;
