//! `explain`: rule by rule, why a query matched or not, and which rule decided
//! (`sluicectl rules explain`).

use serde::Serialize;

use super::{AppSeen, Policy, Query};
use crate::ident::IdentityOverlay;

/// Why one rule matched or did not, for `explain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleExplanation {
    /// Rule name.
    pub rule: String,
    /// True if every condition held.
    pub matched: bool,
    /// True if this rule decided (the first match).
    pub decided: bool,
    /// One line per condition.
    pub reasons: Vec<String>,
}

impl Policy {
    /// Says, for each rule in order, why it matched or not, and which one decided.
    pub fn explain(&self, q: &Query<'_>, overlay: &IdentityOverlay) -> Vec<RuleExplanation> {
        let who = self.resolve(q, overlay);
        let cats = self.sni_cats(q.sni);
        let ident = self.identity_name(who.id);
        let sni_cats: Vec<&str> =
            cats.iter().filter_map(|c| self.category_name(c)).map(|c| &**c).collect();
        let mut decided = false;
        let mut out = Vec::with_capacity(self.rules.len() + 1);
        for rule in &self.rules {
            let mut reasons = Vec::new();
            let src_ok = self.source_matches(rule, &who);
            reasons.push(if rule.any_source {
                "source: any".to_owned()
            } else {
                format!(
                    "source: identity `{ident}`{} {} identities {:?} / groups {:?}",
                    who.user
                        .map(|u| format!(" (user `{u}`, groups {:?})", who.groups))
                        .unwrap_or_default(),
                    if src_ok { "matches" } else { "is not in" },
                    rule.spec.identities,
                    rule.spec.groups
                )
            });
            let cat_ok = match &rule.cats {
                None => {
                    reasons.push("destination: any".to_owned());
                    true
                }
                Some(rc) => {
                    let ok = !rc.intersection(&cats).is_empty();
                    reasons.push(format!(
                        "destination: `{}` is in categories {:?}; rule wants {:?}",
                        q.sni.unwrap_or("(no server name)"),
                        sni_cats,
                        rule.spec.categories
                    ));
                    ok
                }
            };
            let port_ok = rule.spec.ports.is_empty() || rule.spec.ports.contains(&q.port);
            if !rule.spec.ports.is_empty() {
                reasons.push(format!(
                    "port: {} {} {:?}",
                    q.port,
                    if port_ok { "in" } else { "not in" },
                    rule.spec.ports
                ));
            }
            let app_ok = match &rule.apps {
                None => Some(true),
                Some(a) => {
                    let fit = self.app_fits(a, q.app);
                    let seen = match q.app {
                        AppSeen::Unseen => "not known yet".to_owned(),
                        AppSeen::Hello(h) => format!("`{}` (from the hello)", self.apps.name(h)),
                        AppSeen::Request { app, .. } => {
                            format!("`{}` (from the request)", self.apps.name(app))
                        }
                    };
                    let verdict = match fit {
                        Some(true) => "matches",
                        Some(false) => "is not in",
                        None => "is decided per request against",
                    };
                    reasons.push(format!("app: {seen} {verdict} {:?}", rule.spec.apps));
                    fit
                }
            };
            let op_ok = match rule.ops {
                None => Some(true),
                Some(ops) => {
                    let fit = q.op.map(|o| ops.contains(o));
                    reasons.push(format!(
                        "operation: {} {:?}",
                        match (q.op, fit) {
                            (Some(o), Some(true)) => format!("`{}` in", o.as_str()),
                            (Some(o), _) => format!("`{}` not in", o.as_str()),
                            (None, _) => "decided per request against".to_owned(),
                        },
                        rule.spec.operations
                    ));
                    fit
                }
            };
            let deferred = app_ok.is_none() || op_ok.is_none();
            let matched = src_ok
                && cat_ok
                && port_ok
                && app_ok != Some(false)
                && op_ok != Some(false)
                && !deferred;
            if src_ok
                && cat_ok
                && port_ok
                && deferred
                && app_ok != Some(false)
                && op_ok != Some(false)
            {
                reasons.push("only its requests can tell: the flow is inspected".to_owned());
            }
            out.push(RuleExplanation {
                rule: rule.spec.name.to_string(),
                matched,
                decided: matched && !decided,
                reasons,
            });
            decided |= matched;
        }
        out.push(RuleExplanation {
            rule: "default".to_owned(),
            matched: true,
            decided: !decided,
            reasons: vec![format!(
                "no rule matched: default action `{}`",
                self.defaults.action.as_str()
            )],
        });
        out
    }
}
