//! The compiled, immutable policy the data plane asks: `decide(source, sni, port)`. The
//! settings a rule carries are in `settings`, the rule-by-rule account of a decision in
//! `explain`.

use std::net::IpAddr;
use std::sync::Arc;

use hashbrown::HashMap;
use ipnet::IpNet;
use serde::Serialize;

use crate::apps::{AppCatalog, AppId, AppSet};
use crate::catset::CatSet;
use crate::domain::{DomainIndex, DomainPattern, MAX_NAME_LEN, normalize_into};
use crate::ident::{CidrTable, IdentityId, IdentityOverlay, Mac};
use crate::operation::{OpSet, Operation};
use crate::schema::{
    Action, CanaryPolicy, DivertMode, DlpAction, DnsEchPolicy, EchPolicy, FailMode, FragmentPolicy,
    MidstreamPolicy, QuicPolicy, QuicRefusal,
};

mod explain;
mod settings;

pub use explain::RuleExplanation;
pub use settings::{
    ApprovalPolicy, BrokerPolicy, HeaderPolicy, Measure, QuotaLimit, QuotaPolicy, Window,
    dictionary_hash, dictionary_hasher,
};

/// `[defaults]` after validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Defaults {
    /// Action for unmatched traffic (`allow` or `block`).
    pub action: Action,
    /// Name of sources that match no identity.
    pub unknown_identity: Arc<str>,
    /// What happens when inspection cannot happen.
    pub on_inspect_failure: FailMode,
    /// Largest request body buffered for inspection.
    pub max_inspect_bytes: u64,
    /// Flows first seen mid-stream.
    pub midstream: MidstreamPolicy,
    /// QUIC Initials whose SNI cannot be read.
    pub quic_unreadable: QuicPolicy,
    /// How refused QUIC flows are told.
    pub quic_refusal: QuicRefusal,
    /// IP fragments from the inside.
    pub ip_fragments: FragmentPolicy,
    /// ClientHellos whose server name ECH hides.
    pub ech: EchPolicy,
    /// Firefox's DoH canary.
    pub doh_canary: CanaryPolicy,
    /// The `ech` parameter of HTTPS/SVCB answers for categorised names.
    pub dns_ech: DnsEchPolicy,
    /// Which flows are diverted at their SYN.
    pub divert: DivertMode,
    /// TCP ports carrying TLS, sorted.
    pub tls_ports: Vec<u16>,
    /// The age X25519 public keys (`age1…`) recordings are encrypted to.
    pub recording_recipients: Vec<String>,
}

/// A named set of sources.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// Name.
    pub name: Arc<str>,
    /// Networks.
    pub cidrs: Vec<IpNet>,
    /// MAC addresses.
    pub macs: Vec<String>,
}

/// A named domain list, includes expanded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Category {
    /// Name.
    pub name: Arc<str>,
    /// Patterns, sorted and de-duplicated.
    pub domains: Vec<String>,
}

/// A DLP profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DlpProfile {
    /// Name.
    pub name: Arc<str>,
    /// Detector names from the registry.
    pub detectors: Vec<String>,
    /// What a finding triggers.
    pub action: DlpAction,
}

/// A custom DLP detector from the rule set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CustomDetector {
    /// Name.
    pub name: Arc<str>,
    /// How it matches.
    pub kind: CustomKind,
}

/// The matcher of a custom detector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum CustomKind {
    /// A regular expression (validated).
    Regex(String),
    /// Words and phrases, matched case-insensitively on word boundaries.
    Keywords(Vec<String>),
    /// Hashes of the entries ([`dictionary_hash`]), never the entries; `max_words` is the
    /// longest entry in words.
    Dictionary {
        /// Sorted, deduplicated entry hashes.
        #[serde(skip)]
        hashes: Vec<u64>,
        /// Number of entries.
        entries: usize,
        /// Words in the longest entry.
        max_words: usize,
    },
}

/// A rule as written, names resolved: what the diff and the UI show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleSpec {
    /// Name.
    pub name: Arc<str>,
    /// Identity names (empty with no groups: any source).
    pub identities: Vec<String>,
    /// Feed groups.
    pub groups: Vec<String>,
    /// Category names (empty: any destination).
    pub categories: Vec<String>,
    /// Ports (empty: any).
    pub ports: Vec<u16>,
    /// Apps, `unknown` among them (empty: any).
    pub apps: Vec<String>,
    /// Operations (empty: any).
    pub operations: Vec<String>,
    /// Action.
    pub action: Action,
    /// DLP profile name for inspect.
    pub dlp: Option<String>,
    /// Header policy.
    pub headers: HeaderPolicy,
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The rule as written.
    pub spec: RuleSpec,
    pub(crate) ids: Vec<IdentityId>,
    pub(crate) any_source: bool,
    pub(crate) match_unknown: bool,
    pub(crate) cats: Option<CatSet>,
    pub(crate) apps: Option<AppRule>,
    pub(crate) ops: Option<OpSet>,
    pub(crate) dlp: Option<usize>,
}

/// A rule's `apps`, compiled.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct AppRule {
    /// The apps named (`unknown` too).
    pub exact: AppSet,
    /// What a hello may show of them: the apps and the stacks they run on.
    pub hello: AppSet,
    /// Some app named is known only from requests, whatever the hello (no hello names it,
    /// its stack or, for a web app, its browsers).
    pub by_request_only: bool,
}

impl Rule {
    /// The rule's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The rule has conditions a request decides (apps, operations).
    pub fn per_request(&self) -> bool {
        self.apps.is_some() || self.ops.is_some()
    }
}

/// What is known of the app a flow or request comes from, as [`Policy::decide`] is asked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AppSeen {
    /// Nothing yet (a SYN, a DNS query): a rule naming apps may match, so it makes the flow
    /// inspected (where its requests will say).
    #[default]
    Unseen,
    /// The ClientHello's app (`None`: unknown). A rule matches a hello of an app it names
    /// (or of one running on it); a hello of the stack an app it names runs on (Python's, for
    /// the Python SDK), or any hello for an app no hello shows, makes the flow inspected:
    /// only its requests can tell.
    Hello(Option<AppId>),
    /// A request: the app its headers showed and the hello believed (`app`, `None`:
    /// unknown), and its connection's hello app. A rule naming an app matches the request's
    /// app, the apps that run on it, and the hello's.
    Request {
        /// The request's app.
        app: Option<AppId>,
        /// The hello's app.
        hello: Option<AppId>,
    },
}

/// The name of the default action's "rule", shared.
static DEFAULT_RULE: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| "default".into());

/// Who a flow comes from and where it goes: the input of [`Policy::decide`].
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    /// Source IP.
    pub src: IpAddr,
    /// Source MAC, if known.
    pub mac: Option<Mac>,
    /// Server name (SNI, or the DNS name the destination was learned from).
    pub sni: Option<&'a str>,
    /// Destination port.
    pub port: u16,
    /// Unix time in seconds (for overlay expiry).
    pub now: u64,
    /// The app, as far as it is known.
    pub app: AppSeen,
    /// The request's operation (`None`: a flow, not a request).
    pub op: Option<Operation>,
}

/// The identity a source resolved to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved<'a> {
    /// Declared identity, or `None` for unknown sources.
    pub id: Option<IdentityId>,
    /// User from the identity feed.
    pub user: Option<&'a Arc<str>>,
    /// Groups from the identity feed.
    pub groups: &'a [Arc<str>],
}

/// What the policy says about one flow. Borrowed from the policy: no allocation.
#[derive(Debug, Clone, Copy)]
pub struct Decision<'a> {
    /// The action.
    pub action: Action,
    /// The rule that matched (`None`: the default action).
    pub rule: Option<&'a Rule>,
    /// The matching category of the destination, if any (shared with the policy).
    pub category: Option<&'a Arc<str>>,
    /// Identity name (the unknown name when none matched).
    pub identity: &'a Arc<str>,
    /// Feed user, if any.
    pub user: Option<&'a Arc<str>>,
    /// DLP profile for inspect.
    pub dlp: Option<&'a DlpProfile>,
    /// An earlier rule whose apps or operations only the requests can tell (`Unseen` apps, a
    /// flow's operations) and that would otherwise apply: the flow is inspected so that each
    /// request is decided (`action` is then `inspect` whatever `rule` says).
    pub deferred: Option<&'a Rule>,
    /// The rule whose settings (DLP profile, headers, masking, recording) an inspected
    /// connection takes: the deciding rule when it inspects, else the first deferred rule
    /// that inspects, else the deciding rule.
    pub settings: Option<&'a Rule>,
}

impl Decision<'_> {
    /// The rule name, or `default`.
    pub fn rule_name(&self) -> &str {
        self.rule.map_or("default", |r| r.name())
    }

    /// The rule name, or `default`, shared (no allocation for who keeps it).
    pub fn shared_rule_name(&self) -> Arc<str> {
        self.rule.map_or_else(|| DEFAULT_RULE.clone(), |r| r.spec.name.clone())
    }
}

/// The compiled policy: immutable, shared by `Arc`, swapped whole.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Name of the rule file it was compiled from.
    pub source_name: Arc<str>,
    /// Defaults.
    pub defaults: Defaults,
    /// Identities in declaration order.
    pub identities: Vec<Identity>,
    /// Categories in declaration order.
    pub categories: Vec<Category>,
    /// Custom DLP detectors.
    pub custom_detectors: Vec<CustomDetector>,
    /// DLP profiles.
    pub dlp_profiles: Vec<DlpProfile>,
    /// Rules in match order.
    pub rules: Vec<Rule>,
    pub(crate) identity_by_name: HashMap<Arc<str>, IdentityId>,
    pub(crate) cidrs: CidrTable,
    pub(crate) macs: HashMap<Mac, IdentityId>,
    pub(crate) domains: DomainIndex,
    /// The app catalog rules were checked against.
    pub apps: Arc<AppCatalog>,
    pub(crate) per_request: bool,
}

/// How a rule's conditions hold for a query.
enum Fit<'a> {
    No,
    /// They hold (with the first category in common).
    Yes(Option<&'a Arc<str>>),
    /// Only requests can tell (apps or operations not known yet).
    Maybe,
}

impl Policy {
    /// Resolves the source of `q`: a feed group naming an identity first, then MAC, then CIDR.
    pub fn resolve<'o>(&self, q: &Query<'_>, overlay: &'o IdentityOverlay) -> Resolved<'o> {
        let entry = overlay.get(q.src, q.now);
        let from_feed = entry.and_then(|e| {
            e.groups.iter().find_map(|g| self.identity_by_name.get(g.as_ref()).copied())
        });
        let id = from_feed
            .or_else(|| q.mac.and_then(|m| self.macs.get(&m).copied()))
            .or_else(|| self.cidrs.lookup(q.src));
        Resolved {
            id,
            user: entry.map(|e| &e.user),
            groups: entry.map_or(&[][..], |e| &e.groups[..]),
        }
    }

    /// The categories of a server name.
    pub fn categories_of(&self, sni: &str) -> CatSet {
        self.domains.lookup(sni)
    }

    /// The name of category `id`.
    pub fn category_name(&self, id: usize) -> Option<&Arc<str>> {
        self.categories.get(id).map(|c| &c.name)
    }

    /// The name of identity `id`, or the unknown name.
    pub fn identity_name(&self, id: Option<IdentityId>) -> &Arc<str> {
        id.and_then(|i| self.identities.get(i as usize))
            .map_or(&self.defaults.unknown_identity, |i| &i.name)
    }

    /// Decides what to do with a flow. Allocation-free; cost grows with the number of labels
    /// in the name and the number of rules tried, never with the size of the domain lists.
    ///
    /// A rule naming apps or operations that only the requests can tell (see [`AppSeen`])
    /// does not decide; when one would apply, the decision is `inspect` (the rule that
    /// matched after it still named) so that each request is decided with what it shows.
    pub fn decide<'a>(&'a self, q: &Query<'_>, overlay: &'a IdentityOverlay) -> Decision<'a> {
        let who = self.resolve(q, overlay);
        let cats = self.sni_cats(q.sni);
        let mut deferred = None;
        let mut deferred_inspect = None;
        let mut d = None;
        for rule in &self.rules {
            match self.rule_fits(rule, &who, &cats, q) {
                Fit::No => {}
                Fit::Maybe => {
                    deferred = deferred.or(Some(rule));
                    if rule.spec.action == Action::Inspect {
                        deferred_inspect = deferred_inspect.or(Some(rule));
                    }
                }
                Fit::Yes(category) => {
                    d = Some(Decision {
                        action: rule.spec.action,
                        rule: Some(rule),
                        category,
                        identity: self.identity_name(who.id),
                        user: who.user,
                        dlp: rule.dlp.and_then(|i| self.dlp_profiles.get(i)),
                        deferred,
                        settings: Some(rule),
                    });
                    break;
                }
            }
        }
        let mut d = d.unwrap_or_else(|| Decision {
            action: self.defaults.action,
            rule: None,
            category: cats.first().and_then(|c| self.category_name(c)),
            identity: self.identity_name(who.id),
            user: who.user,
            dlp: None,
            deferred,
            settings: None,
        });
        if d.deferred.is_some() {
            if d.action != Action::Inspect {
                d.settings = deferred_inspect.or(d.rule);
            }
            d.action = Action::Inspect;
        }
        d
    }

    /// The DLP profile of `rule`.
    pub fn rule_dlp(&self, rule: &Rule) -> Option<&DlpProfile> {
        rule.dlp.and_then(|i| self.dlp_profiles.get(i))
    }

    /// True when some rule names apps or operations: inspected requests are decided again
    /// with what they show.
    pub fn decides_requests(&self) -> bool {
        self.per_request
    }

    /// True when some `inspect` rule could apply to this source on this port, whatever the
    /// destination: the packet engine's question at a SYN.
    pub fn may_inspect(
        &self,
        src: IpAddr,
        mac: Option<Mac>,
        port: u16,
        now: u64,
        overlay: &IdentityOverlay,
    ) -> bool {
        let q = Query { src, mac, sni: None, port, now, app: AppSeen::Unseen, op: None };
        self.some_rule(&q, overlay, |a| a == Action::Inspect)
    }

    /// True when some `inspect` or `block` rule could apply to this source on this port,
    /// whatever the destination: a flow whose destination cannot be read must then not pass
    /// (`quic_unreadable = "restricted"`, `ech = "restricted"`).
    pub fn may_restrict(
        &self,
        src: IpAddr,
        mac: Option<Mac>,
        port: u16,
        now: u64,
        overlay: &IdentityOverlay,
    ) -> bool {
        let q = Query { src, mac, sni: None, port, now, app: AppSeen::Unseen, op: None };
        self.some_rule(&q, overlay, |a| matches!(a, Action::Inspect | Action::Block))
    }

    /// True when a rule whose action passes `action` (or one that makes flows inspected for
    /// their requests) could apply to the source and port of `q`.
    fn some_rule(
        &self,
        q: &Query<'_>,
        overlay: &IdentityOverlay,
        action: impl Fn(Action) -> bool,
    ) -> bool {
        let who = self.resolve(q, overlay);
        self.rules.iter().any(|r| {
            (action(r.spec.action) || (r.per_request() && action(Action::Inspect)))
                && self.source_matches(r, &who)
                && (r.spec.ports.is_empty() || r.spec.ports.contains(&q.port))
        })
    }

    pub(super) fn sni_cats(&self, sni: Option<&str>) -> CatSet {
        let mut buf = [0u8; MAX_NAME_LEN];
        sni.and_then(|s| normalize_into(s, &mut buf))
            .map(|n| self.domains.lookup_normalized(n))
            .unwrap_or_default()
    }

    pub(super) fn source_matches(&self, rule: &Rule, who: &Resolved<'_>) -> bool {
        if rule.any_source {
            return true;
        }
        let by_identity = match who.id {
            Some(id) => rule.ids.contains(&id),
            None => rule.match_unknown,
        };
        by_identity
            || (!rule.spec.groups.is_empty()
                && who.groups.iter().any(|g| rule.spec.groups.iter().any(|rg| **rg == **g)))
    }

    /// Whether `rule` applies to `q` (the category being the first one in common).
    fn rule_fits<'a>(
        &'a self,
        rule: &Rule,
        who: &Resolved<'_>,
        cats: &CatSet,
        q: &Query<'_>,
    ) -> Fit<'a> {
        if !rule.spec.ports.is_empty() && !rule.spec.ports.contains(&q.port) {
            return Fit::No;
        }
        // Cheapest test first: a bitset intersection.
        let category = match &rule.cats {
            None => cats.first().and_then(|c| self.category_name(c)),
            Some(rc) => match rc.intersection(cats).first().and_then(|c| self.category_name(c)) {
                Some(c) => Some(c),
                None => return Fit::No,
            },
        };
        if !self.source_matches(rule, who) {
            return Fit::No;
        }
        let mut maybe = false;
        if let Some(a) = &rule.apps {
            match self.app_fits(a, q.app) {
                Some(true) => {}
                Some(false) => return Fit::No,
                None => maybe = true,
            }
        }
        if let Some(ops) = rule.ops {
            match q.op {
                Some(op) if ops.contains(op) => {}
                Some(_) => return Fit::No,
                None => maybe = true,
            }
        }
        if maybe { Fit::Maybe } else { Fit::Yes(category) }
    }

    /// Whether a rule's apps hold for what is seen (`None`: only requests can tell).
    pub(super) fn app_fits(&self, a: &AppRule, seen: AppSeen) -> Option<bool> {
        match seen {
            AppSeen::Unseen => None,
            // (Unless the catalog believes some app from its headers on any hello: a request
            // may then name one, which is no unknown client.)
            AppSeen::Hello(None) if a.exact.has_unknown() => {
                (!self.apps.has_header_only_apps()).then_some(true)
            }
            // The hello is an app the rule names, or runs on one.
            AppSeen::Hello(h) if h.is_some() && a.exact.meets(&self.apps.reach(h)) => Some(true),
            // The hello is the stack of an app the rule names: so may be every other program
            // on it, which only requests tell apart (an `allow` must not pass them all).
            AppSeen::Hello(h) if h.is_some() && a.hello.meets(&self.apps.reach(h)) => None,
            AppSeen::Hello(_) if a.by_request_only => None,
            AppSeen::Hello(_) => Some(false),
            AppSeen::Request { app: None, .. } => Some(a.exact.has_unknown()),
            AppSeen::Request { app, hello } => {
                let mut seen = self.apps.reach(app);
                seen.union_with(&self.apps.reach(hello));
                Some(a.exact.meets(&seen))
            }
        }
    }

    /// True when `name` belongs to a category some inspect rule names (or any, if an inspect
    /// rule names no category; rules deciding per request count as inspect rules): DNS
    /// answers for such names teach the divert which IPs to steer.
    pub fn is_inspected_name(&self, name: &str) -> bool {
        let cats = self.domains.lookup(name);
        self.rules.iter().any(|r| {
            (r.spec.action == Action::Inspect || r.per_request())
                && match &r.cats {
                    None => true,
                    Some(rc) => !rc.intersection(&cats).is_empty(),
                }
        })
    }

    /// Number of distinct domain patterns compiled.
    pub fn domain_count(&self) -> usize {
        self.domains.len()
    }
}

pub(crate) fn pattern_string(p: &DomainPattern) -> String {
    p.to_string()
}
