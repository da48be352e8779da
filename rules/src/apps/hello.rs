//! JA4 (and server name) to app: a hash probe or four per hello, no allocation.
//!
//! Catalog entries are whole fingerprints (`t13d1516h2_8daaf6152771_02713d6af862`) or their
//! first two parts (`t13d1516h2_8daaf6152771`: the version, counts, ALPN and cipher list,
//! whatever the extensions, which browsers change from release to release); either may write
//! `??` for the ALPN characters (the same program offering `h2` or not). An entry may be
//! scoped to server names (a browser's hello toward chatgpt.com is ChatGPT on the web).

use hashbrown::HashMap;

use super::{AppId, Evidence};
use crate::catset::CatSet;
use crate::domain::{DomainIndex, parse_pattern};

/// Length of a whole JA4 (`a_b_c`: 10 + 1 + 12 + 1 + 12).
const FULL: usize = 36;
/// Length of its first two parts.
const AB: usize = 23;
/// Where the two ALPN characters sit.
const ALPN: std::ops::Range<usize> = 8..10;
/// Most name scopes a catalog has.
const MAX_SCOPES: usize = crate::catset::MAX_CATEGORIES;

type Key = [u8; FULL];

/// What a hello showed: the app (`None`: unknown) and how.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HelloMatch {
    /// The app, or unknown.
    pub app: Option<AppId>,
    /// `ja4`, or `ja4+sni` for a scoped entry.
    pub evidence: Evidence,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    app: AppId,
    /// Names the entry is scoped to (an index into the scopes), or any name.
    scope: Option<u16>,
}

/// The compiled JA4 entries.
#[derive(Debug, Default)]
pub(crate) struct Ja4Index {
    map: HashMap<Key, Vec<Entry>>,
    masked: bool,
    partial: bool,
    scopes: DomainIndex,
    scope_count: usize,
}

fn key_of(ja4: &[u8]) -> Option<Key> {
    if ja4.len() != FULL && ja4.len() != AB {
        return None;
    }
    let mut k = [0u8; FULL];
    k[..ja4.len()].copy_from_slice(ja4);
    Some(k)
}

fn valid(p: &str) -> bool {
    let b = p.as_bytes();
    (b.len() == FULL || b.len() == AB)
        && b[10] == b'_'
        && (b.len() == AB || b[23] == b'_')
        && b.iter().enumerate().all(|(i, c)| {
            i == 10
                || i == 23
                || c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || (ALPN.contains(&i) && *c == b'?')
        })
}

impl Ja4Index {
    /// Adds `app`'s fingerprints, scoped to `sni` patterns when some are given.
    pub(crate) fn add(&mut self, app: AppId, ja4: &[&str], sni: &[String]) -> Result<(), String> {
        let scope = if sni.is_empty() {
            None
        } else {
            if self.scope_count >= MAX_SCOPES {
                return Err(format!("more than {MAX_SCOPES} name scopes"));
            }
            let id = self.scope_count;
            self.scope_count += 1;
            for n in sni {
                self.scopes.insert(&parse_pattern(n)?, id);
            }
            Some(id as u16)
        };
        for p in ja4 {
            if !valid(p) {
                return Err(format!(
                    "`{p}` is not a JA4: expected `t13d1516h2_8daaf6152771_02713d6af862` (or its first two parts; `??` for the ALPN)"
                ));
            }
            let Some(k) = key_of(p.as_bytes()) else { continue };
            self.masked |= k[ALPN] == *b"??";
            self.partial |= p.len() == AB;
            let list = self.map.entry(k).or_default();
            if list.iter().any(|e| e.scope == scope) {
                return Err(format!("`{p}` is already another app's for the same names"));
            }
            // Scoped entries are tried first.
            let at = if scope.is_some() { 0 } else { list.len() };
            list.insert(at, Entry { app, scope });
        }
        Ok(())
    }

    /// The app of a hello with fingerprint `ja4` toward `sni`.
    pub(crate) fn lookup(&self, ja4: &str, sni: Option<&str>) -> HelloMatch {
        let Some(mut k) = (ja4.len() == FULL).then(|| key_of(ja4.as_bytes())).flatten() else {
            return HelloMatch::default();
        };
        let mut scopes: Option<CatSet> = None;
        let alpn = [k[8], k[9]];
        for step in 0..4 {
            match step {
                0 => {}
                1 if self.masked => k[ALPN].copy_from_slice(b"??"),
                2 if self.partial => {
                    k[ALPN].copy_from_slice(&alpn);
                    k[AB..].fill(0);
                }
                3 if self.partial && self.masked => k[ALPN].copy_from_slice(b"??"),
                _ => continue,
            }
            let Some(list) = self.map.get(&k) else { continue };
            for e in list {
                match e.scope {
                    None => return HelloMatch { app: Some(e.app), evidence: Evidence::JA4 },
                    Some(s) => {
                        let set = scopes.get_or_insert_with(|| {
                            sni.map(|n| self.scopes.lookup(n)).unwrap_or_default()
                        });
                        if set.contains(usize::from(s)) {
                            return HelloMatch {
                                app: Some(e.app),
                                evidence: Evidence::JA4 | Evidence::SNI,
                            };
                        }
                    }
                }
            }
        }
        HelloMatch::default()
    }
}
