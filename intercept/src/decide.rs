//! The decision for one diverted connection: the policy snapshot asked with the client's
//! address and MAC and the ClientHello's SNI, and what the rule brings (header policy, DLP
//! profile, response masking), owned for the connection's life. Also the clients that
//! refused the minted certificate (spliced for a while when the policy fails open).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use sluice_rules::apps::HelloMatch;
use sluice_rules::{Action as RuleAction, AppSeen, FailMode, IdentityOverlay, Policy, Query};
use tracing::warn;

use crate::DivertedConn;
use crate::dlp::{CREDENTIALS, Dlp};
use crate::phases::{AppContext, Mask, PerRequest, Session};
use crate::record::DecisionNote;

/// How long a client that refused the minted certificate is spliced for that name.
const PINNED_TTL: Duration = Duration::from_secs(3600);
/// Most remembered (client, name) pairs that refused the minted certificate.
const MAX_PINNED: usize = 65_536;

/// Who refused the minted certificate: the client's address, the name, and the JA4 of its
/// hello, so that one program refusing it (a pinned app, a tool without the enterprise CA)
/// does not take inspection away from every other client behind that address.
pub(crate) type PinKey = (IpAddr, String, String);

/// The decision for one connection, owned.
#[derive(Debug)]
pub(crate) struct Decided {
    pub action: RuleAction,
    pub note: DecisionNote,
    pub headers: sluice_rules::HeaderPolicy,
    pub fail_open: bool,
    pub max_body: u64,
    pub dlp: Option<Dlp>,
    pub mask: Option<Mask>,
    pub access: Arc<crate::access::Access>,
    pub recorder: Option<crate::recording::Recorder>,
    pub apps: AppContext,
}

impl Decided {
    /// Whether a client that refuses the minted certificate may be spliced uninspected: the
    /// policy fails open and the rule has no access control that needs its requests.
    pub fn may_splice(&self) -> bool {
        let h = &self.headers;
        self.fail_open
            && h.broker.is_none()
            && h.quota.is_none()
            && h.approval.is_none()
            && h.record.is_none()
            && h.chatgpt_accounts.is_empty()
            && self.apps.per_request.is_none()
    }

    /// The session of an inspected connection (`refuse`: why every request is refused).
    pub fn session(
        self,
        sni: String,
        client: SocketAddr,
        original_dst: SocketAddr,
        refuse: Option<crate::block::Refusal>,
    ) -> Session {
        Session {
            sni,
            client,
            original_dst,
            identity: self.note.identity,
            user: self.note.user,
            category: self.note.category,
            rule: self.note.rule,
            headers: self.headers,
            max_body: self.max_body,
            fail_open: self.fail_open,
            refuse,
            dlp: self.dlp,
            mask: self.mask,
            access: self.access,
            recorder: self.recorder,
            apps: self.apps,
        }
    }
}

/// Decides connections with the current policy; keeps what is derived from a policy version.
pub(crate) struct Decider {
    policy: Arc<ArcSwap<Policy>>,
    overlay: Arc<ArcSwap<IdentityOverlay>>,
    /// The built-in scanner (used when a policy's custom detectors cannot be built).
    scanner: Arc<sluice_dlp::Scanner>,
    /// The salt of this run, used until control pushes the deployment's.
    salt: Arc<crate::dlp::Salt>,
    /// The scanner of the current policy, with the policy it was built for (holding the
    /// policy keeps its address, the key, from being reused).
    cache: Mutex<Option<(Arc<Policy>, Arc<sluice_dlp::Scanner>)>>,
    pinned: Mutex<HashMap<PinKey, Instant>>,
    access: Arc<crate::access::Access>,
}

impl Decider {
    pub fn new(
        policy: Arc<ArcSwap<Policy>>,
        overlay: Arc<ArcSwap<IdentityOverlay>>,
        scanner: Arc<sluice_dlp::Scanner>,
        salt: &[u8],
        access: Arc<crate::access::Access>,
    ) -> Self {
        Decider {
            policy,
            overlay,
            scanner,
            salt: Arc::new(crate::dlp::Salt::new(salt)),
            access,
            cache: Mutex::new(None),
            pinned: Mutex::new(HashMap::new()),
        }
    }

    /// The scanner of `policy` (built-in and custom detectors), built once per version.
    fn scanner_for(&self, policy: &Arc<Policy>) -> Arc<sluice_dlp::Scanner> {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((p, s)) = cache.as_ref()
            && Arc::ptr_eq(p, policy)
        {
            return s.clone();
        }
        let s = match sluice_dlp::Scanner::with_custom(&policy.custom_detectors) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                warn!("custom DLP detectors unusable, built-in detectors only: {e}");
                self.scanner.clone()
            }
        };
        *cache = Some((policy.clone(), s.clone()));
        s
    }

    /// Decides the connection from `peer` to `conn` for `sni`, whose hello's JA4 is `ja4`;
    /// with `user` (an explicit proxy's authenticated user, and the groups the identity feed
    /// gives them) in place of what the feed says of `peer`.
    pub fn decide(
        &self,
        peer: SocketAddr,
        conn: &DivertedConn,
        sni: Option<&str>,
        ja4: Option<&str>,
        user: Option<sluice_rules::OverlayEntry>,
    ) -> Decided {
        let policy = self.policy.load_full();
        let hello = ja4.map(|j| policy.apps.by_hello(j, sni));
        let overlay = match user {
            None => self.overlay.clone(),
            Some(entry) => {
                Arc::new(ArcSwap::from_pointee(IdentityOverlay::new([(peer.ip(), entry)])))
            }
        };
        self.decide_with(policy, &overlay, peer, conn, sni, hello)
    }

    /// The identity of `peer`'s address (the policy's identities and the identity feed), with
    /// nothing else decided: where an explicit proxy's credentials are used from.
    pub fn identity_of(&self, peer: SocketAddr) -> String {
        let policy = self.policy.load();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let q = Query {
            src: peer.ip(),
            mac: None,
            sni: None,
            port: 0,
            now,
            app: AppSeen::Unseen,
            op: None,
        };
        let overlay = self.overlay.load();
        let who = policy.resolve(&q, &overlay);
        policy.identity_name(who.id).to_string()
    }

    /// Whether the policy refuses an encrypted ClientHello (its real name hidden behind an
    /// ECH public name) from `peer` (with its MAC, as the decision takes it) to `conn`, as the
    /// packet engine decides inline.
    pub fn ech_refused(&self, peer: SocketAddr, conn: &DivertedConn) -> bool {
        let policy = self.policy.load();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        match policy.defaults.ech {
            sluice_rules::EchPolicy::Allow => false,
            sluice_rules::EchPolicy::Block => true,
            sluice_rules::EchPolicy::Restricted => {
                let port = conn.original_dst.port();
                policy.may_restrict(
                    peer.ip(),
                    Some(conn.client_mac),
                    port,
                    now,
                    &self.overlay.load(),
                )
            }
        }
    }

    /// The identity feed's entry for the user `name`, for an explicit proxy's authenticated
    /// user: their groups (of every live entry of theirs), whichever address they come from.
    pub fn feed_entry(&self, name: &str) -> sluice_rules::OverlayEntry {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let overlay = self.overlay.load();
        let mut groups: Vec<Arc<str>> = Vec::new();
        for (_, e) in overlay.iter() {
            if &*e.user == name && e.expires_at.is_none_or(|t| t > now) {
                for g in &e.groups {
                    if !groups.contains(g) {
                        groups.push(g.clone());
                    }
                }
            }
        }
        sluice_rules::OverlayEntry { user: name.into(), groups, expires_at: None }
    }

    /// Decides as [`Decider::decide`] does, for a hello already identified (a recording
    /// replayed with the app its hello showed).
    pub fn decide_hello(
        &self,
        peer: SocketAddr,
        conn: &DivertedConn,
        sni: Option<&str>,
        hello: HelloMatch,
    ) -> Decided {
        self.decide_with(self.policy.load_full(), &self.overlay, peer, conn, sni, Some(hello))
    }

    fn decide_with(
        &self,
        policy: Arc<Policy>,
        overlays: &Arc<ArcSwap<IdentityOverlay>>,
        peer: SocketAddr,
        conn: &DivertedConn,
        sni: Option<&str>,
        seen: Option<HelloMatch>,
    ) -> Decided {
        let overlay = overlays.load();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let hello = seen.unwrap_or_default();
        let q = Query {
            src: peer.ip(),
            mac: Some(conn.client_mac),
            sni,
            port: conn.original_dst.port(),
            now,
            app: AppSeen::Hello(hello.app),
            op: None,
        };
        let d = policy.decide(&q, &overlay);
        // The rule whose settings the connection takes (see `Decision::settings`).
        let rule = d.settings;
        let profile = rule.and_then(|r| policy.rule_dlp(r));
        let apps = AppContext {
            catalog: policy.apps.clone(),
            hello,
            // Only where a rule the hello could not tell would apply: otherwise every request
            // would be decided as the hello was (a rule the hello ruled out cannot match a
            // request of that hello), and the flow keeps splicing after a refused certificate
            // and streaming over the inspection limit where the rule allows them.
            per_request: d.deferred.is_some().then(|| PerRequest {
                policy: policy.clone(),
                overlay: overlays.clone(),
                mac: conn.client_mac,
                port: conn.original_dst.port(),
            }),
        };
        Decided {
            action: d.action,
            note: DecisionNote {
                identity: d.identity.to_string(),
                user: d.user.map(|u| u.to_string()),
                category: d.category.map(|c| c.to_string()),
                rule: rule.map(|r| r.name().to_owned()),
                app: seen.map(|_| policy.apps.shared_name_or_unknown(hello.app)),
                app_evidence: hello.app.map(|_| hello.evidence.as_str()),
            },
            headers: rule.map(|r| r.spec.headers.clone()).unwrap_or_default(),
            fail_open: policy.defaults.on_inspect_failure == FailMode::Allow,
            max_body: policy.defaults.max_inspect_bytes,
            apps,
            dlp: profile.and_then(|p| {
                let scanner = self.scanner_for(&policy);
                // Names were validated against the registry and the custom detectors.
                let set = scanner.profile(&p.detectors).ok()?;
                Some(Dlp {
                    profile: p.name.to_string(),
                    set,
                    action: p.action,
                    scanner,
                    salt: self.access.dlp_salt.load_full().unwrap_or_else(|| self.salt.clone()),
                })
            }),
            access: self.access.clone(),
            recorder: rule.and_then(|r| r.spec.headers.record).and_then(|m| {
                crate::recording::Recorder::new(m, &policy.defaults.recording_recipients)
            }),
            mask: rule.filter(|r| r.spec.headers.mask_responses).map(|r| {
                let scanner = self.scanner_for(&policy);
                // Credentials always; then the mask profile's detectors, or the rule's own.
                let profile = match &r.spec.headers.mask_profile {
                    Some(name) => policy.dlp_profiles.iter().find(|p| &*p.name == name.as_str()),
                    None => profile,
                };
                let extra = profile.and_then(|p| scanner.profile(&p.detectors).ok());
                let set = CREDENTIALS.union(&extra.unwrap_or_default());
                Mask { scanner, set }
            }),
        }
    }

    /// True when `key` refused the minted certificate within the last hour.
    pub fn is_pinned(&self, key: &PinKey) -> bool {
        let map = self.pinned.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(key).is_some_and(|t| t.elapsed() < PINNED_TTL)
    }

    /// Remembers that `key` refused the minted certificate (bounded).
    pub fn remember_pinned(&self, key: PinKey) {
        let mut map = self.pinned.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX_PINNED {
            map.retain(|_, t| t.elapsed() < PINNED_TTL);
            if map.len() >= MAX_PINNED {
                return;
            }
        }
        map.insert(key, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A decider over the rules `text`.
    fn decider(text: &str) -> Decider {
        let policy = sluice_rules::compile("t.toml", text, &sluice_rules::catalog::ShippedOnly)
            .unwrap()
            .policy;
        Decider::new(
            Arc::new(ArcSwap::from_pointee(policy)),
            Arc::new(ArcSwap::from_pointee(IdentityOverlay::default())),
            Arc::new(sluice_dlp::Scanner::new().unwrap()),
            b"t",
            Arc::new(crate::access::Access::default()),
        )
    }

    /// The detector set response masking gets from a rule with `extra` lines.
    fn mask_of(extra: &str) -> Option<sluice_dlp::DetectorSet> {
        let text = format!(
            "[[identity]]\nname = \"finance\"\ncidrs = [\"10.20.1.0/24\"]\n\n[[category]]\nname = \"ai\"\ndomains = [\"api.openai.com\"]\n\n[[dlp]]\nname = \"cards\"\ndetectors = [\"credit_card\"]\naction = \"block\"\n\n[[dlp]]\nname = \"people\"\ndetectors = [\"us_ssn\"]\naction = \"redact\"\n\n[[rule]]\nname = \"fin\"\nidentities = [\"finance\"]\ncategories = [\"ai\"]\naction = \"inspect\"\ndlp = \"cards\"\n{extra}"
        );
        let decider = decider(&text);
        let conn =
            DivertedConn { original_dst: "198.51.100.10:443".parse().unwrap(), client_mac: [0; 6] };
        let d = decider.decide(
            "10.20.1.10:40000".parse().unwrap(),
            &conn,
            Some("api.openai.com"),
            None,
            None,
        );
        assert_eq!(d.action, RuleAction::Inspect);
        d.mask.map(|m| m.set)
    }

    #[test]
    fn masking_takes_the_mask_profile_or_the_rule_s_own_and_always_credentials() {
        let id = |n| sluice_dlp::detector_id(n).unwrap();
        assert!(mask_of("").is_none(), "no masking unless the rule asks");
        let own = mask_of("mask_responses = true\n").unwrap();
        assert!(own.contains(id("credit_card")) && !own.contains(id("us_ssn")));
        let named = mask_of("mask_profile = \"people\"\n").unwrap();
        assert!(named.contains(id("us_ssn")) && !named.contains(id("credit_card")));
        for set in [own, named] {
            assert!(set.contains(id("openai_api_key")), "credentials are always masked");
        }
    }

    /// A client known by its MAC alone: an ECH hello from it is refused as on the packet path
    /// (`ech = "restricted"`, the default: refused where some inspect rule applies), and
    /// another MAC at the same address is not.
    #[test]
    fn ech_is_refused_by_the_identity_the_mac_gives() {
        let text = "[[identity]]\nname = \"kiosk\"\nmacs = [\"02:00:00:00:00:01\"]\n\n[[category]]\nname = \"ai\"\ndomains = [\"api.openai.com\"]\n\n[[rule]]\nname = \"kiosk\"\nidentities = [\"kiosk\"]\ncategories = [\"ai\"]\naction = \"inspect\"\n";
        let decider = decider(text);
        let peer = "10.20.9.50:40000".parse().unwrap();
        let at = |mac| DivertedConn {
            original_dst: "198.51.100.10:443".parse().unwrap(),
            client_mac: mac,
        };
        assert!(decider.ech_refused(peer, &at([2, 0, 0, 0, 0, 1])));
        assert!(!decider.ech_refused(peer, &at([2, 0, 0, 0, 0, 2])));
    }
}
