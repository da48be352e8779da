//! Differences between two compiled rule sets, for the control plane's history and review.

use serde::Serialize;

use crate::policy::{Defaults, Policy, RuleSpec};

/// Domains added to and removed from one category.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CategoryChange {
    /// Category name.
    pub name: String,
    /// Patterns only in the new set.
    pub added: Vec<String>,
    /// Patterns only in the old set.
    pub removed: Vec<String>,
}

/// A rule present in both sets whose definition or position changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleChange {
    /// Rule name.
    pub name: String,
    /// Position in the old set.
    pub old_position: usize,
    /// Position in the new set.
    pub new_position: usize,
    /// Old definition.
    pub old: RuleSpec,
    /// New definition.
    pub new: RuleSpec,
}

/// What changed from one rule set to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyDiff {
    /// Defaults, when they changed: (old, new).
    pub defaults: Option<(Defaults, Defaults)>,
    /// Rules only in the new set.
    pub rules_added: Vec<RuleSpec>,
    /// Rules only in the old set.
    pub rules_removed: Vec<RuleSpec>,
    /// Rules in both whose definition or position changed.
    pub rules_changed: Vec<RuleChange>,
    /// Categories only in the new set.
    pub categories_added: Vec<String>,
    /// Categories only in the old set.
    pub categories_removed: Vec<String>,
    /// Categories in both whose domain list changed.
    pub categories_changed: Vec<CategoryChange>,
    /// Identities added, removed or changed (by name).
    pub identities_changed: Vec<String>,
    /// DLP profiles added, removed or changed (by name).
    pub dlp_changed: Vec<String>,
}

impl PolicyDiff {
    /// True when the two sets behave the same.
    pub fn is_empty(&self) -> bool {
        self.defaults.is_none()
            && self.rules_added.is_empty()
            && self.rules_removed.is_empty()
            && self.rules_changed.is_empty()
            && self.categories_added.is_empty()
            && self.categories_removed.is_empty()
            && self.categories_changed.is_empty()
            && self.identities_changed.is_empty()
            && self.dlp_changed.is_empty()
    }
}

fn changed_names<T: PartialEq>(old: &[T], new: &[T], name: impl Fn(&T) -> &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for o in old {
        match new.iter().find(|n| name(n) == name(o)) {
            Some(n) if n == o => {}
            _ => out.push(name(o).to_owned()),
        }
    }
    for n in new {
        if !old.iter().any(|o| name(o) == name(n)) {
            out.push(name(n).to_owned());
        }
    }
    out
}

/// Compares two policies.
pub fn diff(old: &Policy, new: &Policy) -> PolicyDiff {
    let pos = |p: &Policy, name: &str| p.rules.iter().position(|r| &*r.spec.name == name);
    let mut rules_changed = Vec::new();
    let mut rules_removed = Vec::new();
    for (i, r) in old.rules.iter().enumerate() {
        match pos(new, &r.spec.name) {
            None => rules_removed.push(r.spec.clone()),
            Some(j) => {
                let n = &new.rules[j].spec;
                if *n != r.spec || i != j {
                    rules_changed.push(RuleChange {
                        name: r.spec.name.to_string(),
                        old_position: i,
                        new_position: j,
                        old: r.spec.clone(),
                        new: n.clone(),
                    });
                }
            }
        }
    }
    let rules_added = new
        .rules
        .iter()
        .filter(|r| pos(old, &r.spec.name).is_none())
        .map(|r| r.spec.clone())
        .collect();
    let mut categories_changed = Vec::new();
    let mut categories_removed = Vec::new();
    for c in &old.categories {
        match new.categories.iter().find(|n| n.name == c.name) {
            None => categories_removed.push(c.name.to_string()),
            Some(n) => {
                let added: Vec<String> =
                    n.domains.iter().filter(|d| !c.domains.contains(d)).cloned().collect();
                let removed: Vec<String> =
                    c.domains.iter().filter(|d| !n.domains.contains(d)).cloned().collect();
                if !added.is_empty() || !removed.is_empty() {
                    categories_changed.push(CategoryChange {
                        name: c.name.to_string(),
                        added,
                        removed,
                    });
                }
            }
        }
    }
    let categories_added = new
        .categories
        .iter()
        .filter(|n| !old.categories.iter().any(|c| c.name == n.name))
        .map(|n| n.name.to_string())
        .collect();
    PolicyDiff {
        defaults: (old.defaults != new.defaults)
            .then(|| (old.defaults.clone(), new.defaults.clone())),
        rules_added,
        rules_removed,
        rules_changed,
        categories_added,
        categories_removed,
        categories_changed,
        identities_changed: changed_names(&old.identities, &new.identities, |i| &i.name),
        dlp_changed: changed_names(&old.dlp_profiles, &new.dlp_profiles, |d| &d.name),
    }
}
