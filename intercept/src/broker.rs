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
use crate::phases::{Headers, RequestCtx, RequestView, Session};
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

/// Headers that carry a credential some provider reads, besides the one brokered: refused
/// where a key is brokered (the client's own key would reach the server beside it).
const OTHER_CREDENTIALS: [&str; 2] = ["x-api-key", "ocp-apim-subscription-key"];

/// The WebSocket subprotocol by which browsers pass a key to the Realtime API.
const WS_KEY_PROTOCOL: &str = "openai-insecure-api-key.";

/// The keys a `Sec-WebSocket-Protocol` offer carries, and the offer without them.
fn ws_protocols(headers: &dyn Headers) -> (Vec<String>, Vec<String>) {
    let offer = headers
        .header("sec-websocket-protocol")
        .and_then(|v| std::str::from_utf8(v).ok())
        .unwrap_or("");
    let (keys, rest): (Vec<&str>, Vec<&str>) =
        offer.split(',').map(str::trim).filter(|p| !p.is_empty()).partition(|p| {
            p.len() > WS_KEY_PROTOCOL.len()
                && p[..WS_KEY_PROTOCOL.len()].eq_ignore_ascii_case(WS_KEY_PROTOCOL)
        });
    (
        keys.iter().map(|k| k[WS_KEY_PROTOCOL.len()..].to_owned()).collect(),
        rest.into_iter().map(str::to_owned).collect(),
    )
}

/// Whether a request target's query names an `api-key` (Azure OpenAI reads one there).
fn key_in_query(target: &str) -> bool {
    let Some((_, q)) = target.split_once('?') else { return false };
    q.split('&').any(|kv| {
        let name = kv.split('=').next().unwrap_or("");
        name.eq_ignore_ascii_case("api-key") || name.eq_ignore_ascii_case("api%2Dkey")
    })
}

impl Session {
    /// A request's credential in its record: a virtual key names its user and its id (on a
    /// rule that brokers; elsewhere it is a placeholder like any other).
    pub(crate) fn note_credential(&self, req: &RequestView<'_>, rec: &mut RequestRecord) {
        if self.headers.broker.is_none() {
            return;
        }
        let Some((_, key)) = presented(req.headers) else { return };
        if let Some(v) = self.access.keys.load().virtual_key(key)
            && v.identity.as_ref().is_none_or(|id| *id == self.identity)
        {
            rec.user = Some(v.user.clone());
            rec.virtual_key = Some(v.id.clone());
        }
    }

    /// Phase 2, for a rule that brokers a key: what would step around the broker is refused
    /// (both credential headers, another provider's credential header, a key in the query,
    /// a real provider key unless the rule swaps it, a virtual key from another identity), and
    /// the key must be held. The header that will carry it is taken now, so phase 4 sends
    /// exactly what was checked.
    pub(crate) fn broker_filter(
        &self,
        req: &RequestView<'_>,
        ctx: &mut RequestCtx,
    ) -> Result<(), Refusal> {
        let Some(b) = &self.headers.broker else { return Ok(()) };
        let rule = self.rule.as_deref();
        let bad = |code, message: &str| Refusal {
            status: 400,
            code,
            message: message.into(),
            rule: self.rule.clone(),
            retry_after: None,
        };
        if req.headers.header("authorization").is_some() && req.headers.header("api-key").is_some()
        {
            return Err(bad(
                "ambiguous_request",
                "the request carries both an Authorization and an api-key header",
            ));
        }
        if let Some(h) = OTHER_CREDENTIALS.iter().find(|h| req.headers.header(h).is_some()) {
            return Err(bad(
                "credential_not_brokered",
                &format!("the appliance holds the key for this service: remove the {h} header"),
            ));
        }
        if key_in_query(req.target) {
            return Err(bad(
                "credential_not_brokered",
                "the appliance holds the key for this service: remove api-key from the query",
            ));
        }
        let (ws_keys, ws_rest) = ws_protocols(req.headers);
        if !ws_keys.is_empty() && ws_rest.is_empty() {
            return Err(bad(
                "credential_not_brokered",
                "the WebSocket upgrade offers only a key as its subprotocol",
            ));
        }
        let ring = self.access.keys.load();
        let Some(secret) = ring.key(&b.key) else {
            return Err(Refusal {
                status: 503,
                code: "broker_key_unavailable",
                message: format!(
                    "the key `{}` this rule sends is not held by the appliance (not stored in \
                     control, or control has not pushed it since the data plane started)",
                    b.key
                ),
                rule: self.rule.clone(),
                retry_after: None,
            });
        };
        let header = presented(req.headers);
        let keys = header.map(|(_, k)| k.to_owned()).into_iter().chain(ws_keys);
        for key in keys {
            if let Some(v) = ring.virtual_key(&key) {
                match &v.identity {
                    Some(id) if *id != self.identity => {
                        return Err(Refusal::forbidden(
                            "virtual_key_identity",
                            format!("this virtual key may be used only from identity `{id}`"),
                            rule,
                        ));
                    }
                    _ => continue,
                }
            }
            if looks_real(&key) && !b.swap_real_keys {
                return Err(Refusal::forbidden(
                    "real_key_refused",
                    "the appliance holds the key for this service: send a placeholder or your \
                     virtual key, not a provider key",
                    rule,
                ));
            }
        }
        ctx.brokered = Some(match header {
            Some((CredentialHeader::ApiKey, _)) => ("api-key", secret.expose().to_owned()),
            _ => ("authorization", format!("Bearer {}", secret.expose())),
        });
        if req.headers.header("sec-websocket-protocol").is_some() {
            ctx.ws_protocols = Some(ws_rest.join(", "));
        }
        ctx.rec.broker_key = Some(b.key.clone());
        Ok(())
    }

    /// Phase 4, for a rule that brokers a key: the headers that carry it upstream (the one
    /// the client used, `Authorization` when none), as phase 2 took them; and the WebSocket
    /// offer without keys. The record names the key, never holds it.
    pub(crate) fn broker_headers(&self, ctx: &mut RequestCtx) -> Vec<(&'static str, String)> {
        let mut out: Vec<(&'static str, String)> = ctx.brokered.take().into_iter().collect();
        if let Some(p) = ctx.ws_protocols.take() {
            out.push(("sec-websocket-protocol", p));
        }
        out
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
