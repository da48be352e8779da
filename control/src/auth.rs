//! Bearer tokens and roles. Tokens are compared as SHA-256 hashes in constant time; a request
//! without a valid token is refused (401), one whose role does not allow the call gets 403.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::TokenDef;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Admin,
    /// Read logs and rules.
    Analyst,
    /// The identity feed only.
    Feeder,
    /// Held requests only: list them and decide (approve or deny).
    Approver,
    /// Read-only: records, rules and their history, the audit log and evidence (verify,
    /// export); no rule, identity, key or approval management.
    Auditor,
}

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Reading rules, flows, status.
    Read,
    /// Changing rules; the audit log.
    Admin,
    /// Feeding identities.
    Feed,
    /// Listing and deciding held requests.
    Approve,
    /// The audit log, verification and evidence exports.
    Evidence,
    /// Anything a valid token may see (the audit public key).
    Any,
}

impl Role {
    /// True when the role allows `need`.
    pub fn allows(self, need: Need) -> bool {
        matches!(
            (self, need),
            (Role::Admin, _)
                | (_, Need::Any)
                | (Role::Auditor, Need::Read | Need::Evidence)
                | (Role::Analyst, Need::Read)
                | (Role::Feeder, Need::Feed)
                | (Role::Approver, Need::Approve)
        )
    }

    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Analyst => "analyst",
            Role::Feeder => "feeder",
            Role::Approver => "approver",
            Role::Auditor => "auditor",
        }
    }
}

/// The caller a valid token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Token name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The person holding it, when the configuration says (a reviewer may not decide a
    /// request of their own).
    pub user: Option<String>,
}

/// The configured tokens.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    entries: Vec<([u8; 32], Caller)>,
}

/// The hex SHA-256 of a token, as the configuration stores it.
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Tokens {
    /// The tokens of the configuration (entries with malformed hashes are skipped; the
    /// configuration loader refuses them first).
    pub fn new(defs: &[TokenDef]) -> Self {
        let entries = defs
            .iter()
            .filter_map(|d| {
                Some((
                    unhex(&d.sha256.to_ascii_lowercase())?,
                    Caller { name: d.name.clone(), role: d.role, user: d.user.clone() },
                ))
            })
            .collect();
        Tokens { entries }
    }

    /// The caller of an `Authorization` header value, if its bearer token is valid.
    pub fn check(&self, authorization: Option<&str>) -> Option<Caller> {
        let token = authorization?.strip_prefix("Bearer ")?.trim();
        if token.is_empty() {
            return None;
        }
        self.by_hash(&Sha256::digest(token.as_bytes()).into())
    }

    /// The caller of the token whose SHA-256 is `h` (a console session keeps the hash, never
    /// the token, and looks its caller up again on every request).
    pub fn by_hash(&self, h: &[u8; 32]) -> Option<Caller> {
        let mut found = None;
        // Every entry is compared, each in constant time.
        for (stored, caller) in &self.entries {
            let diff = stored.iter().zip(h.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                found = Some(caller.clone());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_roles() {
        let defs = vec![
            TokenDef {
                name: "ops".into(),
                role: Role::Admin,
                sha256: token_hash("admin-secret"),
                user: None,
            },
            TokenDef {
                name: "soc".into(),
                role: Role::Analyst,
                sha256: token_hash("analyst-secret"),
                user: Some("sam@corp".into()),
            },
        ];
        let t = Tokens::new(&defs);
        assert_eq!(t.check(Some("Bearer admin-secret")).unwrap().role, Role::Admin);
        assert_eq!(t.check(Some("Bearer analyst-secret")).unwrap().name, "soc");
        assert!(t.check(Some("Bearer nope")).is_none());
        assert!(t.check(Some("admin-secret")).is_none());
        assert!(t.check(None).is_none());
        assert!(Role::Analyst.allows(Need::Read) && !Role::Analyst.allows(Need::Admin));
        assert!(Role::Feeder.allows(Need::Feed) && !Role::Feeder.allows(Need::Read));
        assert!(Role::Approver.allows(Need::Approve) && !Role::Approver.allows(Need::Read));
        assert!(Role::Admin.allows(Need::Approve) && !Role::Analyst.allows(Need::Approve));
        assert!(Role::Auditor.allows(Need::Read) && Role::Auditor.allows(Need::Evidence));
        assert!(!Role::Auditor.allows(Need::Admin) && !Role::Auditor.allows(Need::Approve));
        assert!(!Role::Auditor.allows(Need::Feed) && !Role::Analyst.allows(Need::Evidence));
        assert!(Role::Feeder.allows(Need::Any) && Role::Approver.allows(Need::Any));
        assert_eq!(
            t.check(Some("Bearer analyst-secret")).unwrap().user.as_deref(),
            Some("sam@corp")
        );
    }
}
