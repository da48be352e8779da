//! A rule's `apps` (or `app`) and `operations`, checked against the app catalog and the
//! operation names.

use crate::apps::shipped;
use crate::operation::{OpSet, Operation};
use crate::policy::AppRule;
use crate::schema::RuleDef;

use super::names::closest;
use super::{Cx, span_of};

impl Cx<'_> {
    /// The compiled `apps` of rule `name`, and the names as written.
    pub(super) fn rule_apps(&mut self, r: &RuleDef, name: &str) -> (Option<AppRule>, Vec<String>) {
        if let (Some(one), false) = (&r.app, r.apps.is_empty()) {
            self.err(
                span_of(one),
                format!("rule `{name}` has both `app` and `apps`: write the list in `apps`"),
            );
            return (None, Vec::new());
        }
        let written: Vec<_> = r.apps.iter().chain(r.app.as_ref()).collect();
        if written.is_empty() {
            return (None, Vec::new());
        }
        let catalog = shipped();
        let mut rule = AppRule::default();
        let mut names = Vec::new();
        for a in written {
            let n = a.get_ref();
            if n == "unknown" {
                rule.exact.insert_unknown();
                rule.hello.insert_unknown();
            } else if let Some(id) = catalog.id(n) {
                rule.exact.insert(id);
                let app = &catalog.apps()[id as usize];
                rule.hello.union_with(&catalog.reach(Some(id)));
                // A web app is believed from its browsers' hellos only: another hello rules
                // it out as surely as its own stack's would.
                for s in &app.stacks {
                    rule.hello.union_with(&catalog.reach(Some(*s)));
                }
                rule.by_request_only |= !app.by_hello && app.stacks.is_empty();
            } else {
                let known = catalog.apps().iter().map(|a| &*a.name).chain(["unknown"]);
                let hint = closest(n, known);
                self.err(
                    span_of(a),
                    format!(
                        "rule `{name}` names unknown app `{n}`{hint} (`sluicectl rules apps` lists the catalog)"
                    ),
                );
                continue;
            }
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        (Some(rule), names)
    }

    /// The compiled `operations` of rule `name`, and the names as written.
    pub(super) fn rule_operations(
        &mut self,
        r: &RuleDef,
        name: &str,
    ) -> (Option<OpSet>, Vec<String>) {
        if r.operations.is_empty() {
            return (None, Vec::new());
        }
        let mut set = OpSet::default();
        let mut names = Vec::new();
        for o in &r.operations {
            match Operation::parse(o.get_ref()) {
                Some(op) => {
                    set.insert(op);
                    if !names.iter().any(|n| n == op.as_str()) {
                        names.push(op.as_str().to_owned());
                    }
                }
                None => {
                    let hint = closest(o.get_ref(), Operation::ALL.iter().map(|o| o.as_str()));
                    self.err(
                        span_of(o),
                        format!("rule `{name}` names unknown operation `{}`{hint}", o.get_ref()),
                    );
                }
            }
        }
        (Some(set), names)
    }
}
