//! Brokered credentials (ARCHITECTURE.md, "Key brokering"): the provider keys control holds
//! and pushes, and the virtual keys it issued, held in memory as one snapshot swapped whole
//! ([`KeyRing`]). A rule with `broker_key` sends the named key upstream in place of whatever
//! credential the client presented; a virtual key names its user in the request record. Keys
//! are read per request, so a rotated key applies to the next request of every connection.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use sluice_link::{BrokerKey, Secret, VirtualKey};

use crate::block::Refusal;
use crate::phases::{Headers, RequestView, Session};
use crate::record::RequestRecord;

/// The key ring, swapped whole by its owner when control pushes keys.
pub type Keys = Arc<ArcSwap<KeyRing>>;

/// The keys in force.
#[derive(Debug, Default)]
pub struct KeyRing {
    /// Generation control pushed (0: none yet).
    pub generation: u64,
    keys: HashMap<String, Secret>,
    virtual_keys: HashMap<[u8; 32], VirtualKey>,
}

impl KeyRing {
    /// The ring of a push. Virtual keys whose hash is not 64 hex digits are left out.
    pub fn new(generation: u64, keys: Vec<BrokerKey>, virtual_keys: Vec<VirtualKey>) -> Self {
        KeyRing {
            generation,
            keys: keys.into_iter().map(|k| (k.name, k.secret)).collect(),
            virtual_keys: virtual_keys
                .into_iter()
                .filter_map(|v| Some((hex32(&v.sha256)?, v)))
                .collect(),
        }
    }

    /// Number of provider keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when no provider key is held.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The provider key named `name`.
    pub fn key(&self, name: &str) -> Option<&Secret> {
        self.keys.get(name)
    }

    /// The virtual key `presented` is, if control issued it.
    pub fn virtual_key(&self, presented: &str) -> Option<&VirtualKey> {
        if self.virtual_keys.is_empty() {
            return None;
        }
        self.virtual_keys.get(&<[u8; 32]>::from(Sha256::digest(presented.as_bytes())))
    }
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        *o = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// Where a request's credential came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialHeader {
    /// `Authorization: Bearer …` (OpenAI).
    Authorization,
    /// `api-key: …` (Azure OpenAI).
    ApiKey,
}

impl CredentialHeader {
    /// The header's name (lowercase).
    pub fn name(self) -> &'static str {
        match self {
            CredentialHeader::Authorization => "authorization",
            CredentialHeader::ApiKey => "api-key",
        }
    }
}

/// The credential a request presents: a bearer token or an `api-key` value (trimmed), and
/// where; `None` when it has neither (or a non-bearer `Authorization`).
pub fn presented(headers: &dyn Headers) -> Option<(CredentialHeader, &str)> {
    let text = |n| headers.header(n).and_then(|v| std::str::from_utf8(v).ok()).map(str::trim);
    if let Some(a) = text("authorization") {
        let (scheme, rest) = a.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| (CredentialHeader::Authorization, rest.trim()));
    }
    text("api-key").map(|k| (CredentialHeader::ApiKey, k))
}

/// Whether `key` is shaped like a real provider key (a client holding one where the appliance
/// brokers would bypass attribution): OpenAI's and Anthropic's `sk-…` keys, Azure OpenAI's 32
/// hexadecimal digits. Placeholders and virtual keys (`svk-…`) are not.
pub fn looks_real(key: &str) -> bool {
    (key.starts_with("sk-") && key.len() >= 20)
        || (key.len() == 32 && key.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl Session {
    /// A request's credential in its record: a virtual key names its user and its id.
    pub(crate) fn note_credential(&self, req: &RequestView<'_>, rec: &mut RequestRecord) {
        let Some((_, key)) = presented(req.headers) else { return };
        if let Some(v) = self.keys.load().virtual_key(key) {
            rec.user = Some(v.user.clone());
            rec.virtual_key = Some(v.id.clone());
        }
    }

    /// Phase 2, for a rule that brokers a key: the key must be held, a virtual key used from
    /// its identity, and a real provider key is refused unless the rule swaps it.
    pub(crate) fn broker_filter(&self, req: &RequestView<'_>) -> Result<(), Refusal> {
        let Some(b) = &self.headers.broker else { return Ok(()) };
        let rule = self.rule.as_deref();
        if req.headers.header("authorization").is_some() && req.headers.header("api-key").is_some()
        {
            return Err(Refusal {
                status: 400,
                code: "ambiguous_request",
                message: "the request carries both an Authorization and an api-key header".into(),
                rule: self.rule.clone(),
            });
        }
        let ring = self.keys.load();
        if ring.key(&b.key).is_none() {
            return Err(Refusal {
                status: 503,
                code: "broker_key_unavailable",
                message: format!(
                    "the key `{}` this rule sends is not held by the appliance (not stored in \
                     control, or control has not pushed it since the data plane started)",
                    b.key
                ),
                rule: self.rule.clone(),
            });
        }
        let Some((_, key)) = presented(req.headers) else { return Ok(()) };
        if let Some(v) = ring.virtual_key(key) {
            return match &v.identity {
                Some(id) if *id != self.identity => Err(Refusal::forbidden(
                    "virtual_key_identity",
                    format!("this virtual key may be used only from identity `{id}`"),
                    rule,
                )),
                _ => Ok(()),
            };
        }
        if looks_real(key) && !b.swap_real_keys {
            return Err(Refusal::forbidden(
                "real_key_refused",
                "the appliance holds the key for this service: send a placeholder or your \
                 virtual key, not a provider key",
                rule,
            ));
        }
        Ok(())
    }

    /// Phase 4, for a rule that brokers a key: the header that carries it upstream (the one
    /// the client used, `Authorization` when none). The record names the key, never holds it.
    pub(crate) fn broker_header(
        &self,
        req: &RequestView<'_>,
        rec: &mut RequestRecord,
    ) -> Option<(&'static str, String)> {
        let b = self.headers.broker.as_ref()?;
        let ring = self.keys.load();
        let secret = ring.key(&b.key)?;
        rec.broker_key = Some(b.key.clone());
        Some(match presented(req.headers) {
            Some((CredentialHeader::ApiKey, _)) => ("api-key", secret.expose().to_owned()),
            _ => ("authorization", format!("Bearer {}", secret.expose())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_keys_are_found_by_their_hash_only() {
        let key = "svk-4f3a9c0e1b2d";
        let sha = Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
        let ring = KeyRing::new(
            1,
            vec![BrokerKey { name: "prod".into(), secret: Secret::new("sk-real".into()) }],
            vec![
                VirtualKey { id: "vk_1".into(), sha256: sha, user: "alice".into(), identity: None },
                VirtualKey {
                    id: "bad".into(),
                    sha256: "zz".into(),
                    user: "x".into(),
                    identity: None,
                },
            ],
        );
        assert_eq!(ring.virtual_key(key).map(|v| v.user.as_str()), Some("alice"));
        assert!(ring.virtual_key("svk-other").is_none());
        assert_eq!(ring.key("prod").map(Secret::expose), Some("sk-real"));
        assert_eq!(ring.len(), 1);
    }

    #[test]
    fn real_keys_are_told_from_placeholders() {
        assert!(looks_real("sk-proj-abcdefghijklmnopqrstuvwxyz"));
        assert!(looks_real("sk-0123456789abcdefghij"));
        assert!(looks_real("0123456789abcdef0123456789ABCDEF"));
        for p in ["placeholder", "sk-short", "svk-0123456789abcdefghijklmnop", "", "x"] {
            assert!(!looks_real(p), "{p}");
        }
    }
}
