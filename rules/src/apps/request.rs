//! A request's head to app: the `User-Agent`'s product token picks the few catalog entries
//! worth trying (one hash probe); each is then checked whole (its headers, paths, hosts), and
//! the entry with the most conditions met wins. No allocation; a header is read once at most.

use std::collections::BTreeMap;

use hashbrown::HashMap;
use serde::Deserialize;

use super::{AppId, Evidence};
use crate::domain::{DomainPattern, parse_pattern};

/// Most distinct header names the catalog reads (the user agent included).
const MAX_NAMES: usize = 24;
/// Longest product token a bucket is keyed by.
const MAX_TOKEN: usize = 32;
/// Longest version kept.
const MAX_VERSION: usize = 32;
/// Most conditions of one kind in one entry.
const MAX_CONDITIONS: usize = 16;

/// Header lookup, whatever the framing keeps them in.
pub trait HeaderSource {
    /// The first value of header `name` (lowercase).
    fn header(&self, name: &str) -> Option<&[u8]>;
}

/// A request's head as the matcher reads it.
#[derive(Clone, Copy)]
pub struct RequestFacts<'r> {
    /// The host it is for (without port).
    pub authority: &'r str,
    /// The path (with or without the query).
    pub path: &'r str,
    /// Its headers.
    pub headers: &'r dyn HeaderSource,
}

/// The app a request's head names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestMatch<'r> {
    /// The app.
    pub app: AppId,
    /// Its version, as the request says it (letters, digits, `.+_-`; at most 32).
    pub version: Option<&'r str>,
    /// What matched.
    pub evidence: Evidence,
}

/// `[app.request]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RequestDef {
    /// `User-Agent` prefixes (ASCII case ignored), or `*text` for text anywhere in it; any.
    #[serde(default)]
    user_agent: Vec<String>,
    /// Header name to value: exact (case ignored), `prefix*`, or `*` (present); all.
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// Path prefixes; any.
    #[serde(default)]
    paths: Vec<String>,
    /// Host patterns (`chatgpt.com`, `*.chatgpt.com`); any.
    #[serde(default)]
    hosts: Vec<String>,
    /// Where the version is: `header:NAME`, or `ua:PREFIX` (the token after PREFIX).
    version: Option<String>,
}

#[derive(Debug)]
enum Ua {
    Prefix(Vec<u8>),
    Contains(Box<memchr::memmem::Finder<'static>>),
}

#[derive(Debug)]
enum Value {
    Exact(Vec<u8>),
    Prefix(Vec<u8>),
    Present,
}

#[derive(Debug)]
enum Version {
    Header(usize),
    Ua(Box<memchr::memmem::Finder<'static>>),
}

#[derive(Debug)]
struct Sig {
    app: AppId,
    ua: Vec<Ua>,
    headers: Vec<(usize, Value)>,
    paths: Vec<String>,
    hosts: Vec<DomainPattern>,
    version: Option<Version>,
    score: u8,
}

/// The compiled request signatures.
#[derive(Debug, Default)]
pub(crate) struct RequestMatcher {
    names: Vec<String>,
    sigs: Vec<Sig>,
    buckets: HashMap<Box<[u8]>, Vec<u16>>,
    always: Vec<u16>,
}

/// The product token of a user agent (`OpenAI/Python 1.2` → `openai`), lowercased into `buf`.
fn token<'b>(ua: &[u8], buf: &'b mut [u8; MAX_TOKEN]) -> Option<&'b [u8]> {
    let end = ua.iter().position(|b| matches!(b, b'/' | b' ' | b';' | b'('))?;
    if end == 0 || end > MAX_TOKEN {
        return None;
    }
    for (o, b) in buf.iter_mut().zip(&ua[..end]) {
        *o = b.to_ascii_lowercase();
    }
    Some(&buf[..end])
}

fn starts_with_ci(s: &[u8], p: &[u8]) -> bool {
    s.len() >= p.len() && s[..p.len()].eq_ignore_ascii_case(p)
}

fn version_token(s: &[u8]) -> Option<&str> {
    let n = s
        .iter()
        .take(MAX_VERSION + 1)
        .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'_' | b'-'))
        .count();
    (n > 0 && n <= MAX_VERSION && s[0].is_ascii_alphanumeric())
        .then(|| std::str::from_utf8(&s[..n]).ok())
        .flatten()
}

impl RequestMatcher {
    fn name_index(&mut self, name: &str) -> Result<usize, String> {
        let name = name.to_ascii_lowercase();
        if name.is_empty()
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!("`{name}` is not a header name"));
        }
        if let Some(i) = self.names.iter().position(|n| *n == name) {
            return Ok(i);
        }
        if self.names.len() >= MAX_NAMES {
            return Err(format!("more than {MAX_NAMES} header names in the catalog"));
        }
        self.names.push(name);
        Ok(self.names.len() - 1)
    }

    /// Adds `app`'s request signature.
    pub(crate) fn add(&mut self, app: AppId, d: &RequestDef) -> Result<(), String> {
        if self.names.is_empty() {
            self.names.push("user-agent".into());
        }
        if d.user_agent.is_empty() && d.headers.is_empty() && d.paths.is_empty() {
            return Err("`request` needs `user_agent`, `headers` or `paths`".into());
        }
        for n in [d.user_agent.len(), d.headers.len(), d.paths.len(), d.hosts.len()] {
            if n > MAX_CONDITIONS {
                return Err(format!("more than {MAX_CONDITIONS} conditions of one kind"));
            }
        }
        let mut ua = Vec::new();
        let mut keys: Vec<Box<[u8]>> = Vec::new();
        for p in &d.user_agent {
            if p.is_empty() || !p.is_ascii() {
                return Err(format!("user agent pattern `{p}`: expected ASCII text"));
            }
            match p.strip_prefix('*') {
                Some(text) if !text.is_empty() => {
                    ua.push(Ua::Contains(Box::new(
                        memchr::memmem::Finder::new(text.as_bytes()).into_owned(),
                    )));
                }
                Some(_) => return Err("user agent pattern `*`: expected `*text`".into()),
                None => {
                    let mut buf = [0u8; MAX_TOKEN];
                    match token(p.as_bytes(), &mut buf) {
                        Some(t) => keys.push(t.into()),
                        None => keys.push(Box::default()),
                    }
                    ua.push(Ua::Prefix(p.as_bytes().to_vec()));
                }
            }
        }
        let mut headers = Vec::new();
        for (name, v) in &d.headers {
            if name.eq_ignore_ascii_case("user-agent") {
                return Err("match the user agent with `user_agent`".into());
            }
            let i = self.name_index(name)?;
            let v = if v == "*" {
                Value::Present
            } else if let Some(p) = v.strip_suffix('*') {
                Value::Prefix(p.as_bytes().to_vec())
            } else {
                Value::Exact(v.as_bytes().to_vec())
            };
            headers.push((i, v));
        }
        for p in &d.paths {
            if !p.starts_with('/') {
                return Err(format!("path `{p}`: expected a prefix starting with `/`"));
            }
        }
        let hosts = d.hosts.iter().map(|h| parse_pattern(h)).collect::<Result<Vec<_>, _>>()?;
        let version = match d.version.as_deref() {
            None => None,
            Some(v) => Some(match (v.strip_prefix("header:"), v.strip_prefix("ua:")) {
                (Some(h), _) => Version::Header(self.name_index(h)?),
                (_, Some(p)) if !p.is_empty() => {
                    Version::Ua(Box::new(memchr::memmem::Finder::new(p.as_bytes()).into_owned()))
                }
                _ => return Err(format!("version `{v}`: expected `header:NAME` or `ua:PREFIX`")),
            }),
        };
        let score = 2 * u8::from(!ua.is_empty())
            + 2 * headers.len() as u8
            + u8::from(!d.paths.is_empty())
            + u8::from(!hosts.is_empty());
        let at = self.sigs.len() as u16;
        // Entries whose every user-agent pattern has a product token are tried only for user
        // agents with that token; the others for every request.
        if !ua.is_empty()
            && ua.iter().all(|u| matches!(u, Ua::Prefix(_)))
            && keys.iter().all(|k| !k.is_empty())
        {
            for k in keys {
                let list = self.buckets.entry(k).or_default();
                if !list.contains(&at) {
                    list.push(at);
                }
            }
        } else {
            self.always.push(at);
        }
        self.sigs.push(Sig { app, ua, headers, paths: d.paths.clone(), hosts, version, score });
        Ok(())
    }

    /// Done adding.
    pub(crate) fn finish(&mut self) {
        self.names.shrink_to_fit();
    }

    /// The best entry for a request head.
    pub(crate) fn lookup<'r>(&self, req: &RequestFacts<'r>) -> Option<RequestMatch<'r>> {
        if self.sigs.is_empty() {
            return None;
        }
        let mut vals: [Option<&'r [u8]>; MAX_NAMES] = [None; MAX_NAMES];
        let mut read = 0u32;
        let mut get = |i: usize, vals: &mut [Option<&'r [u8]>; MAX_NAMES]| -> Option<&'r [u8]> {
            if read & (1 << i) == 0 {
                read |= 1 << i;
                vals[i] = self.names.get(i).and_then(|n| req.headers.header(n));
            }
            vals[i]
        };
        let ua = get(0, &mut vals).unwrap_or_default();
        let mut buf = [0u8; MAX_TOKEN];
        let bucket =
            token(ua, &mut buf).and_then(|t| self.buckets.get(t)).map_or(&[][..], |v| &v[..]);
        let mut best: Option<(u8, u16, Evidence)> = None;
        for &at in bucket.iter().chain(&self.always) {
            let Some(sig) = self.sigs.get(at as usize) else { continue };
            if best.is_some_and(|(s, b, _)| s > sig.score || (s == sig.score && b < at)) {
                continue;
            }
            let mut ev = Evidence::default();
            if !sig.ua.is_empty() {
                let hit = sig.ua.iter().any(|u| match u {
                    Ua::Prefix(p) => starts_with_ci(ua, p),
                    Ua::Contains(f) => f.find(ua).is_some(),
                });
                if !hit {
                    continue;
                }
                ev |= Evidence::UA;
            }
            let headers_ok = sig.headers.iter().all(|(i, v)| match (get(*i, &mut vals), v) {
                (None, _) => false,
                (Some(_), Value::Present) => true,
                (Some(h), Value::Exact(e)) => h.trim_ascii().eq_ignore_ascii_case(e),
                (Some(h), Value::Prefix(p)) => starts_with_ci(h.trim_ascii(), p),
            });
            if !headers_ok {
                continue;
            }
            if !sig.headers.is_empty() {
                ev |= Evidence::HEADERS;
            }
            if !sig.paths.is_empty() {
                if !sig.paths.iter().any(|p| req.path.starts_with(p.as_str())) {
                    continue;
                }
                ev |= Evidence::PATH;
            }
            if !sig.hosts.is_empty() {
                let host = req.authority.strip_suffix('.').unwrap_or(req.authority);
                let hit = sig.hosts.iter().any(|h| match h {
                    DomainPattern::Exact(n) => host.eq_ignore_ascii_case(n),
                    DomainPattern::Wildcard(n) => {
                        host.len() > n.len() + 1
                            && host.as_bytes()[host.len() - n.len() - 1] == b'.'
                            && host[host.len() - n.len()..].eq_ignore_ascii_case(n)
                    }
                });
                if !hit {
                    continue;
                }
                ev |= Evidence::HOST;
            }
            best = Some((sig.score, at, ev));
        }
        let (_, at, evidence) = best?;
        let sig = self.sigs.get(at as usize)?;
        let version = match &sig.version {
            None => None,
            Some(Version::Header(i)) => {
                get(*i, &mut vals).and_then(|v| version_token(v.trim_ascii()))
            }
            Some(Version::Ua(f)) => {
                f.find(ua).and_then(|p| version_token(&ua[p + f.needle().len()..]))
            }
        };
        Some(RequestMatch { app: sig.app, version, evidence })
    }
}
