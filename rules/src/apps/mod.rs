//! The app catalog (`rules/apps/*.toml`, shipped in the binary): which AI client a flow or a
//! request comes from (ARCHITECTURE.md, "Apps and discovery").
//!
//! Two kinds of evidence, two matchers, both pure:
//! - [`hello`]: the ClientHello's JA4 (with the server name where an entry is scoped to some
//!   names), readable on every flow, decrypted or not. It names the TLS stack (`python`,
//!   `chromium`, `curl`, …), or an app where the stack is its own (`codex-cli`).
//! - [`request`]: the headers and path of an inspected request (`User-Agent`, the SDKs'
//!   `X-Stainless-*`, Codex's `originator`), which name the app on that stack and its version.
//!
//! An app may say which stack it `runs_on`: its requests are believed only from a flow whose
//! hello is that stack's (headers are the client's to write; a claim the hello contradicts is
//! recorded as a claim, and the request counts as the hello's app).

use std::fmt;
use std::sync::{Arc, LazyLock};

use hashbrown::HashMap;
use serde::Deserialize;

pub mod hello;
pub mod request;

pub use hello::HelloMatch;
pub use request::{HeaderSource, RequestFacts, RequestMatch};

/// Most apps in a catalog (their sets are 128-bit).
pub const MAX_APPS: usize = 127;

/// The shipped catalog files: name and TOML text.
pub const SHIPPED_APPS: &[(&str, &str)] = &[
    ("stacks", include_str!("../../apps/stacks.toml")),
    ("openai", include_str!("../../apps/openai.toml")),
    ("tools", include_str!("../../apps/tools.toml")),
];

/// An app's index in its catalog.
pub type AppId = u8;

/// What kind of client an app is (informational: the inventory shows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AppKind {
    /// A TLS stack or language runtime many programs share.
    Stack,
    /// A provider's SDK.
    Sdk,
    /// A command-line tool or agent.
    Cli,
    /// A desktop app.
    Desktop,
    /// A web browser.
    Browser,
    /// A web app used in a browser.
    Web,
    /// A library or framework.
    Library,
}

/// One app of the catalog.
#[derive(Debug, Clone, serde::Serialize)]
pub struct App {
    /// Name, as rules and records write it (`openai-python`).
    pub name: Arc<str>,
    /// Human name.
    pub title: String,
    /// Kind.
    pub kind: AppKind,
    /// The stack whose hellos this app's requests come in, if known.
    #[serde(skip)]
    pub runs_on: Option<AppId>,
    /// The app and every stack below it.
    #[serde(skip)]
    pub reach: AppSet,
    /// A hello can name it (or a stack below it): rules naming it decide at the hello.
    #[serde(skip)]
    pub by_hello: bool,
    /// Its own hellos name it (fingerprints of its own, or a scope of names).
    #[serde(skip)]
    pub own_hello: bool,
    /// For an app with no stack of its own (a web app): the stacks its requests are believed
    /// from (the browsers).
    #[serde(skip)]
    pub stacks: Vec<AppId>,
}

/// Which observations matched: written into records (`ja4+sni`, `ua+headers`, …).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Evidence(u8);

impl Evidence {
    /// The ClientHello's JA4.
    pub const JA4: Evidence = Evidence(1);
    /// The server name (a JA4 entry scoped to some names).
    pub const SNI: Evidence = Evidence(2);
    /// The `User-Agent`.
    pub const UA: Evidence = Evidence(4);
    /// Other request headers.
    pub const HEADERS: Evidence = Evidence(8);
    /// The request path.
    pub const PATH: Evidence = Evidence(16);
    /// The request's host.
    pub const HOST: Evidence = Evidence(32);
    /// The headers named an app the hello contradicts (recorded as a claim).
    pub const MISMATCH: Evidence = Evidence(64);
    const NAMES: [&'static str; 7] = ["ja4", "sni", "ua", "headers", "path", "host", "mismatch"];

    /// Its name, `+`-joined (`ja4+ua+headers`; empty for none): every combination is
    /// named once, so records take a static name rather than a string of their own.
    pub fn as_str(self) -> &'static str {
        static NAMES: LazyLock<Vec<String>> = LazyLock::new(|| {
            (0..1u16 << Evidence::NAMES.len())
                .map(|bits| {
                    let on =
                        Evidence::NAMES.iter().enumerate().filter(|(i, _)| bits & (1 << i) != 0);
                    on.map(|(_, n)| *n).collect::<Vec<_>>().join("+")
                })
                .collect()
        });
        NAMES.get(usize::from(self.0)).map_or("", String::as_str)
    }

    /// No evidence.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// True when every bit of `other` is set.
    pub fn contains(self, other: Evidence) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Evidence {
    type Output = Evidence;
    fn bitor(self, o: Evidence) -> Evidence {
        Evidence(self.0 | o.0)
    }
}

impl std::ops::BitOrAssign for Evidence {
    fn bitor_assign(&mut self, o: Evidence) {
        self.0 |= o.0;
    }
}

impl fmt::Display for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of apps, with `unknown` (no app identified) as a member of its own. Copyable.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AppSet {
    bits: u128,
    unknown: bool,
}

impl AppSet {
    /// Adds `id`.
    pub fn insert(&mut self, id: AppId) {
        self.bits |= 1u128 << (id as u32 % 128);
    }

    /// Adds `unknown`.
    pub fn insert_unknown(&mut self) {
        self.unknown = true;
    }

    /// True when `app` (`None`: unknown) is in the set.
    pub fn contains(&self, app: Option<AppId>) -> bool {
        match app {
            Some(id) => self.bits & (1u128 << (id as u32 % 128)) != 0,
            None => self.unknown,
        }
    }

    /// True when every member of `other` is in `self`.
    pub fn is_superset(&self, other: &AppSet) -> bool {
        other.bits & !self.bits == 0 && (!other.unknown || self.unknown)
    }

    /// True when the two sets share an app (`unknown` aside).
    pub fn meets(&self, other: &AppSet) -> bool {
        self.bits & other.bits != 0
    }

    /// Adds every member of `other`.
    pub fn union_with(&mut self, other: &AppSet) {
        self.bits |= other.bits;
        self.unknown |= other.unknown;
    }

    /// True when `unknown` is a member.
    pub fn has_unknown(&self) -> bool {
        self.unknown
    }
}

/// What identified a flow or request: the app (`None`: unknown), its version when the
/// request says it, and the evidence.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Identified {
    /// The app, or unknown.
    pub app: Option<AppId>,
    /// Its version, when a request header says it.
    pub version: Option<String>,
    /// What matched.
    pub evidence: Evidence,
    /// An app the request's headers named that its hello contradicts.
    pub claimed: Option<AppId>,
}

/// Errors in a catalog file (the shipped ones are tested to have none).
#[derive(Debug, thiserror::Error)]
#[error("app catalog `{file}`: {msg}")]
pub struct CatalogError {
    /// The file.
    pub file: String,
    /// What is wrong.
    pub msg: String,
}

/// The compiled catalog: apps, and the two matchers.
#[derive(Debug)]
pub struct AppCatalog {
    /// The catalog's version (the newest of its files' `version`).
    pub version: String,
    apps: Vec<App>,
    by_name: HashMap<Arc<str>, AppId>,
    hello: hello::Ja4Index,
    request: request::RequestMatcher,
    /// Some app is believed from its headers whatever the hello (no stack, no fingerprints).
    header_only: bool,
}

/// The catalog shipped in the binary.
pub fn shipped() -> &'static Arc<AppCatalog> {
    static CATALOG: LazyLock<Arc<AppCatalog>> = LazyLock::new(|| {
        // The shipped files are tested to compile; a broken build would name the file.
        Arc::new(AppCatalog::parse(SHIPPED_APPS).unwrap_or_else(|e| panic!("{e}")))
    });
    &CATALOG
}

/// A catalog file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFileDef {
    version: String,
    description: String,
    #[serde(default)]
    app: Vec<AppDef>,
}

/// One `[[app]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AppDef {
    name: String,
    title: String,
    kind: AppKind,
    runs_on: Option<String>,
    #[serde(default)]
    stacks: Vec<String>,
    #[serde(default)]
    ja4: Vec<String>,
    #[serde(default)]
    sni: Vec<String>,
    request: Option<request::RequestDef>,
}

impl AppCatalog {
    /// Compiles catalog files (name, TOML text).
    pub fn parse(files: &[(&str, &str)]) -> Result<AppCatalog, CatalogError> {
        let mut defs = Vec::new();
        let mut version = String::new();
        for (file, text) in files {
            let err = |msg: String| CatalogError { file: (*file).to_owned(), msg };
            let f: CatalogFileDef = toml::from_str(text).map_err(|e| err(e.to_string()))?;
            if f.description.trim().is_empty() {
                return Err(err("no description".into()));
            }
            version = version.max(f.version);
            defs.extend(f.app.into_iter().map(|a| (*file, a)));
        }
        if defs.len() > MAX_APPS {
            return Err(CatalogError {
                file: "*".into(),
                msg: format!("{} apps: at most {MAX_APPS}", defs.len()),
            });
        }
        let mut by_name: HashMap<Arc<str>, AppId> = HashMap::new();
        for (i, (file, a)) in defs.iter().enumerate() {
            let ok = !a.name.is_empty()
                && a.name.len() <= 48
                && a.name != "unknown"
                && a.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            let err = |msg: String| CatalogError { file: (*file).to_owned(), msg };
            if !ok {
                return Err(err(format!(
                    "app name `{}`: expected lowercase letters, digits and `-` (not `unknown`)",
                    a.name
                )));
            }
            if by_name.insert(a.name.as_str().into(), i as AppId).is_some() {
                return Err(err(format!("app `{}` is defined twice", a.name)));
            }
        }
        let mut apps = Vec::with_capacity(defs.len());
        for (file, a) in &defs {
            let err = |msg: String| CatalogError { file: (*file).to_owned(), msg };
            let runs_on =
                match &a.runs_on {
                    Some(s) => Some(*by_name.get(s.as_str()).ok_or_else(|| {
                        err(format!("app `{}` runs on unknown app `{s}`", a.name))
                    })?),
                    None => None,
                };
            if runs_on.is_some() && !a.stacks.is_empty() {
                return Err(err(format!(
                    "app `{}` has both `runs_on` and `stacks`: `stacks` is for apps with no stack of their own",
                    a.name
                )));
            }
            let mut stacks = Vec::new();
            for s in &a.stacks {
                stacks.push(
                    *by_name.get(s.as_str()).ok_or_else(|| {
                        err(format!("app `{}` names unknown stack `{s}`", a.name))
                    })?,
                );
            }
            apps.push(App {
                name: a.name.as_str().into(),
                title: a.title.clone(),
                kind: a.kind,
                runs_on,
                reach: AppSet::default(),
                by_hello: !a.ja4.is_empty() || !a.sni.is_empty(),
                own_hello: !a.ja4.is_empty() || !a.sni.is_empty(),
                stacks,
            });
        }
        let mut hello = hello::Ja4Index::default();
        let mut request = request::RequestMatcher::default();
        for (i, (file, a)) in defs.iter().enumerate() {
            let err = |msg: String| CatalogError {
                file: (*file).to_owned(),
                msg: format!("app `{}`: {msg}", a.name),
            };
            let id = i as AppId;
            // An app scoped to names without fingerprints of its own takes its stack's.
            let ja4: Vec<&str> = if a.ja4.is_empty() && !a.sni.is_empty() {
                let Some(stack) = apps[i].runs_on else {
                    return Err(err("`sni` without `ja4` needs `runs_on`".into()));
                };
                defs[stack as usize].1.ja4.iter().map(String::as_str).collect()
            } else {
                a.ja4.iter().map(String::as_str).collect()
            };
            hello.add(id, &ja4, &a.sni).map_err(err)?;
            if let Some(r) = &a.request {
                request.add(id, r).map_err(err)?;
            }
        }
        for (i, app) in apps.iter().enumerate() {
            // A cycle of `runs_on` would make "the stack of" ill-defined.
            let mut seen = 0;
            let mut at = app.runs_on;
            while let Some(s) = at {
                seen += 1;
                if seen > apps.len() || s as usize == i {
                    return Err(CatalogError {
                        file: defs[i].0.to_owned(),
                        msg: format!("app `{}`: `runs_on` goes round in a circle", app.name),
                    });
                }
                at = apps[s as usize].runs_on;
            }
        }
        for i in 0..apps.len() {
            let mut reach = AppSet::default();
            let mut by_hello = false;
            let mut at = Some(i as AppId);
            while let Some(a) = at {
                reach.insert(a);
                by_hello |= apps[a as usize].by_hello;
                at = apps[a as usize].runs_on;
            }
            apps[i].reach = reach;
            apps[i].by_hello = by_hello;
        }
        request.finish();
        let header_only =
            apps.iter().any(|a| a.runs_on.is_none() && !a.own_hello && a.stacks.is_empty());
        Ok(AppCatalog { version, apps, by_name, hello, request, header_only })
    }

    /// True when some app is believed from its headers whatever the hello: a request on an
    /// unknown hello may then be a known app.
    pub fn has_header_only_apps(&self) -> bool {
        self.header_only
    }

    /// Every app, by id.
    pub fn apps(&self) -> &[App] {
        &self.apps
    }

    /// The app named `name`.
    pub fn id(&self, name: &str) -> Option<AppId> {
        self.by_name.get(name).copied()
    }

    /// The name of `app`, or `unknown`.
    pub fn name(&self, app: Option<AppId>) -> &str {
        app.and_then(|a| self.apps.get(a as usize)).map_or("unknown", |a| &a.name)
    }

    /// The shared name of `app`, if any.
    pub fn shared_name(&self, app: AppId) -> Option<&Arc<str>> {
        self.apps.get(app as usize).map(|a| &a.name)
    }

    /// The shared name of `app`, or `unknown` (shared too: no allocation).
    pub fn shared_name_or_unknown(&self, app: Option<AppId>) -> Arc<str> {
        static UNKNOWN: LazyLock<Arc<str>> = LazyLock::new(|| "unknown".into());
        app.and_then(|a| self.shared_name(a)).unwrap_or(&UNKNOWN).clone()
    }

    /// The app a ClientHello's JA4 (and server name) shows. Allocation-free.
    pub fn by_hello(&self, ja4: &str, sni: Option<&str>) -> HelloMatch {
        self.hello.lookup(ja4, sni)
    }

    /// The app a request's head names, before the hello is considered. Allocation-free.
    pub fn by_request<'r>(&self, req: &RequestFacts<'r>) -> Option<RequestMatch<'r>> {
        self.request.lookup(req)
    }

    /// `app` and every stack below it (`None`: nothing).
    pub fn reach(&self, app: Option<AppId>) -> AppSet {
        app.and_then(|a| self.apps.get(a as usize)).map(|a| a.reach).unwrap_or_default()
    }

    /// True when `app` is `stack` or runs on it (through any number of steps).
    pub fn runs_on(&self, app: AppId, stack: AppId) -> bool {
        let mut at = Some(app);
        let mut steps = 0;
        while let Some(a) = at {
            if a == stack {
                return true;
            }
            steps += 1;
            if steps > self.apps.len() {
                return false;
            }
            at = self.apps.get(a as usize).and_then(|x| x.runs_on);
        }
        false
    }

    /// The stack at the bottom of `app`'s `runs_on` chain (`app` itself when it names none).
    pub fn root(&self, app: AppId) -> AppId {
        let mut at = app;
        for _ in 0..self.apps.len() {
            match self.apps.get(at as usize).and_then(|a| a.runs_on) {
                Some(s) => at = s,
                None => break,
            }
        }
        at
    }

    /// The app of a request: what its headers say, believed when the hello agrees;
    /// otherwise the hello's app, with the header app kept as a claim. An app with a stack
    /// (`runs_on`, or fingerprints of its own) is believed from a hello of that stack (two
    /// apps on one stack agree); a web app from a hello of one of its `stacks`; an app the
    /// catalog knows no hello of, whatever the hello.
    pub fn identify(&self, hello: HelloMatch, req: Option<RequestMatch<'_>>) -> Identified {
        let Some(r) = req else {
            return Identified {
                app: hello.app,
                version: None,
                evidence: hello.evidence,
                claimed: None,
            };
        };
        let believed = match (self.apps.get(r.app as usize), hello.app) {
            (None, _) => false,
            (Some(a), h) if a.runs_on.is_some() || a.own_hello => {
                h.is_some_and(|h| self.root(r.app) == self.root(h))
            }
            (Some(a), h) if !a.stacks.is_empty() => {
                h.is_some_and(|h| a.stacks.iter().any(|s| self.root(*s) == self.root(h)))
            }
            (Some(_), _) => true,
        };
        if believed {
            Identified {
                app: Some(r.app),
                version: r.version.map(str::to_owned),
                evidence: hello.evidence | r.evidence,
                claimed: None,
            }
        } else {
            Identified {
                app: hello.app,
                version: None,
                evidence: hello.evidence | Evidence::MISMATCH,
                claimed: Some(r.app),
            }
        }
    }

    /// Apps that run on `stack` (directly or not), and `stack`.
    pub fn on_stack(&self, stack: AppId) -> impl Iterator<Item = AppId> + '_ {
        (0..self.apps.len() as AppId).filter(move |a| self.runs_on(*a, stack))
    }
}

#[cfg(test)]
mod tests;
