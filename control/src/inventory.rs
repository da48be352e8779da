//! The inventory of AI clients (ARCHITECTURE.md, "Apps and discovery"): per (host, identity,
//! user, app, version), first and last seen, flows, requests, bytes, destinations and the
//! accounts seen, kept from the records as they are stored (in the same transaction); and a
//! `discovery` record the first time a host shows an app, or an unknown client (by its JA4).

use std::collections::BTreeSet;

use rusqlite::{OptionalExtension, Transaction, params};
use serde::Serialize;
use serde_json::{Value, json};

use crate::record::{AppFields, Row};
use crate::store::StoreError;

/// Most destinations, and most accounts, kept per row.
pub const MAX_LISTED: usize = 32;
/// Most unknown clients discovered per host per day (a client that changes its hello at
/// every connection is one discovery, not a flood).
pub const MAX_UNKNOWN_PER_DAY: i64 = 16;

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS inventory (
    host TEXT NOT NULL, identity TEXT NOT NULL, user TEXT NOT NULL,
    app TEXT NOT NULL, version TEXT NOT NULL,
    first_ms INTEGER NOT NULL, last_ms INTEGER NOT NULL,
    flows INTEGER NOT NULL, requests INTEGER NOT NULL, bytes INTEGER NOT NULL,
    destinations TEXT NOT NULL, accounts TEXT NOT NULL,
    PRIMARY KEY (host, identity, user, app, version)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS inventory_app ON inventory (app, last_ms);
CREATE TABLE IF NOT EXISTS discoveries (
    id INTEGER PRIMARY KEY,
    ts_ms INTEGER NOT NULL,
    last_ms INTEGER NOT NULL,
    host TEXT NOT NULL,
    client TEXT NOT NULL,
    record TEXT NOT NULL,
    UNIQUE (host, client)
);
CREATE INDEX IF NOT EXISTS discoveries_host ON discoveries (host, ts_ms);
";

/// One row of the inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InventoryRow {
    /// The client's address.
    pub host: String,
    /// Its identity.
    pub identity: String,
    /// The feed user (empty: none).
    pub user: String,
    /// The app (`unknown`: a client the catalog does not know).
    pub app: String,
    /// Its version (empty: not said; flows show no version).
    pub version: String,
    /// First seen (unix ms).
    pub first_seen_ms: u64,
    /// Last seen (unix ms).
    pub last_seen_ms: u64,
    /// Flows ended.
    pub flows: u64,
    /// Requests.
    pub requests: u64,
    /// Bytes both ways (ended flows, and requests' bodies).
    pub bytes: u64,
    /// Server names, at most 32.
    pub destinations: Vec<String>,
    /// Accounts seen (`chatgpt:…`, `org:…`, `key:sha256:…`), at most 32.
    pub accounts: Vec<String>,
}

/// Which rows [`query`] returns.
#[derive(Debug, Clone, Default)]
pub struct InventoryFilter {
    /// Only this app.
    pub app: Option<String>,
    /// Only this host.
    pub host: Option<String>,
    /// Only this identity.
    pub identity: Option<String>,
    /// Only this user.
    pub user: Option<String>,
    /// Seen at or after (unix ms).
    pub since_ms: Option<u64>,
}

/// An inventory row's key: host, identity, user, app, version.
pub(crate) type Key = (String, String, String, String, String);

#[path = "inventory_known.rs"]
mod known;
pub(crate) use known::Known;

/// What records add to one inventory row.
#[derive(Debug, Default)]
pub(crate) struct Delta {
    pub(crate) first: u64,
    pub(crate) last: u64,
    pub(crate) flows: u64,
    pub(crate) requests: u64,
    pub(crate) bytes: u64,
    pub(crate) destinations: BTreeSet<String>,
    pub(crate) accounts: BTreeSet<String>,
}

/// Bytes of a key's strings (and their headers).
pub(crate) fn key_bytes(k: &Key) -> usize {
    KeyRef(&k.0, &k.1, &k.2, &k.3, &k.4).bytes()
}

/// Bytes of a list's strings (and their headers).
pub(crate) fn listed_bytes(l: &BTreeSet<String>) -> usize {
    l.iter().map(|s| s.len() + 24).sum()
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn bounded(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Adds `v` to `set` while it has room; returns the bytes it added.
fn add_bounded(set: &mut BTreeSet<String>, v: &str) -> usize {
    if set.len() >= MAX_LISTED || set.contains(v) {
        return 0;
    }
    set.insert(v.to_owned());
    v.len() + 24
}

/// A row's key as a record's borrowed fields, hashed and compared as [`Key`] is (a tuple of
/// strings hashes each in order), so that a row already pending is found without copies.
#[derive(Hash)]
struct KeyRef<'a>(&'a str, &'a str, &'a str, &'a str, &'a str);

impl KeyRef<'_> {
    /// Bytes of the strings (and their headers) as a [`Key`].
    fn bytes(&self) -> usize {
        self.0.len() + self.1.len() + self.2.len() + self.3.len() + self.4.len() + 5 * 24
    }
}

impl From<&KeyRef<'_>> for Key {
    fn from(k: &KeyRef<'_>) -> Key {
        (k.0.into(), k.1.into(), k.2.into(), k.3.into(), k.4.into())
    }
}

impl hashbrown::Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, k: &Key) -> bool {
        (self.0, self.1, self.2, self.3, self.4)
            == (k.0.as_str(), k.1.as_str(), k.2.as_str(), k.3.as_str(), k.4.as_str())
    }
}

fn accounts<'r>(a: &'r AppFields<'_>) -> impl Iterator<Item = String> + 'r {
    let tagged = |tag: &'static str, v: &Option<std::borrow::Cow<'_, str>>| {
        v.as_deref().filter(|v| !v.is_empty()).map(|v| format!("{tag}{}", bounded(v, 80)))
    };
    // The accounts ChatGPT listed for the session: `chatgpt-workspace:ID`, `chatgpt-personal:ID`.
    let listed = a.chatgpt_listed.iter().filter_map(|l| {
        let (structure, id) = l.split_once(':')?;
        (!id.is_empty()).then(|| format!("chatgpt-{}:{}", bounded(structure, 16), bounded(id, 80)))
    });
    [
        tagged("chatgpt:", &a.chatgpt_account),
        tagged("org:", &a.openai_organization),
        tagged("project:", &a.openai_project),
        tagged("key:", &a.api_key_fp),
    ]
    .into_iter()
    .flatten()
    .chain(listed)
}

/// The maps keyed by what clients send, hashed fast (foldhash, seeded per map).
type Map<K, V> = hashbrown::HashMap<K, V>;

/// What records add to the inventory's rows, by row.
#[derive(Debug, Default)]
pub(crate) struct Deltas {
    rows: Map<Key, Delta>,
    /// Bytes of the strings held, roughly (clients choose them).
    pub(crate) bytes: usize,
}

impl Deltas {
    /// Rows with something to add.
    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there is nothing to add.
    pub(crate) fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// What a record says of the inventory: its row's key, bounded, and the client whose
/// discovery it may be (an app, or an unknown hello by its JA4).
pub(crate) struct Seen<'r> {
    pub(crate) host: &'r str,
    pub(crate) identity: &'r str,
    pub(crate) user: &'r str,
    pub(crate) app: &'r str,
    pub(crate) version: &'r str,
    pub(crate) client: Option<std::borrow::Cow<'r, str>>,
}

/// What record `r` (with app fields `a`) says of the inventory; `None` without a host.
pub(crate) fn seen<'r>(r: &'r Row<'_>, a: &'r AppFields<'_>) -> Option<Seen<'r>> {
    let host = bounded(r.src.as_deref().unwrap_or(""), 64);
    if host.is_empty() {
        return None;
    }
    let app = bounded(&a.app, 64);
    // A request shows no JA4: its flow names the unknown client.
    let client = match (app, &a.ja4) {
        ("unknown", Some(j)) => Some(format!("unknown:{}", bounded(j, 40)).into()),
        ("unknown", None) => None,
        (name, _) => Some(name.into()),
    };
    Some(Seen {
        host,
        identity: bounded(r.identity.as_deref().unwrap_or(""), 64),
        user: bounded(r.user.as_deref().unwrap_or(""), 128),
        app,
        version: bounded(a.version.as_deref().unwrap_or(""), 32),
        client,
    })
}

/// The discovery record of `s`'s client, first seen in record `r` of `dataplane`.
pub(crate) fn discovery(dataplane: &str, r: &Row<'_>, a: &AppFields<'_>, s: &Seen<'_>) -> Value {
    let mut rec = json!({
        "type": "discovery",
        "ts_ms": r.ts_ms,
        "dataplane": dataplane,
        "event": if s.app == "unknown" { "new-unknown-client" } else { "new-app" },
        "src": s.host,
        "identity": s.identity,
        "app": s.app,
        "sni": r.sni.as_deref().unwrap_or(""),
    });
    if !s.user.is_empty() {
        rec["user"] = json!(s.user);
    }
    if !s.version.is_empty() {
        rec["app_version"] = json!(s.version);
    }
    if let Some(j) = &a.ja4 {
        rec["ja4"] = json!(bounded(j, 40));
    }
    rec
}

impl Deltas {
    /// Counts record `r` (app fields `a`, seen as `s`) into its row.
    pub(crate) fn add(&mut self, s: &Seen<'_>, r: &Row<'_>, a: &AppFields<'_>) {
        let at = KeyRef(s.host, s.identity, s.user, s.app, s.version);
        let d = match self.rows.get_mut(&at) {
            Some(d) => d,
            None => {
                self.bytes += at.bytes();
                let new = Delta { first: r.ts_ms, ..Delta::default() };
                self.rows.entry(Key::from(&at)).or_insert(new)
            }
        };
        d.first = d.first.min(r.ts_ms);
        d.last = d.last.max(r.ts_ms);
        if r.kind == crate::record::RecordKind::Request {
            d.requests += 1;
            d.bytes = d.bytes.saturating_add(a.bytes);
        } else if a.ended {
            d.flows += 1;
            d.bytes = d.bytes.saturating_add(a.bytes);
        }
        if let Some(sni) = r.sni.as_deref().filter(|s| !s.is_empty()) {
            self.bytes += add_bounded(&mut d.destinations, bounded(sni, 253));
        }
        for acc in accounts(a) {
            self.bytes += add_bounded(&mut d.accounts, &acc);
        }
    }

    /// The rows and what they gain.
    pub(crate) fn into_rows(self) -> impl Iterator<Item = (Key, Delta)> {
        self.rows.into_iter()
    }
}

/// Counts the stored records `rows` (those newly stored) of data plane `dataplane` into
/// `deltas`; with `discover`, inside the ingest's transaction, also makes the discovery
/// records of hosts seen with an app (or an unknown client) for the first time, stored, and
/// returns them.
pub(crate) fn observe(
    tx: &Transaction<'_>,
    dataplane: &str,
    rows: &[&Row<'_>],
    known: &mut Known,
    deltas: &mut Deltas,
    discover: bool,
) -> Result<Vec<Value>, StoreError> {
    let mut found: Vec<Value> = Vec::new();
    let mut seen_clients: BTreeSet<(String, String)> = BTreeSet::new();
    let mut new_client = tx.prepare_cached(
        "INSERT OR IGNORE INTO discoveries (ts_ms, last_ms, host, client, record)
         VALUES (?1, ?1, ?2, ?3, ?4)",
    )?;
    let mut seen_again = tx.prepare_cached(
        "UPDATE discoveries SET last_ms = MAX(last_ms, ?3) WHERE host = ?1 AND client = ?2",
    )?;
    let mut unknowns_today = tx.prepare_cached(
        "SELECT COUNT(*) FROM discoveries WHERE host = ?1 AND client LIKE 'unknown:%' AND ts_ms >= ?2",
    )?;
    for r in rows {
        let Some(a) = r.app.as_deref() else { continue };
        let Some(s) = seen(r, a) else { continue };
        let host = s.host;
        let ts = i64::try_from(r.ts_ms).unwrap_or(i64::MAX);
        // Once per client and batch: its discovery is seen again (retention keeps it), or
        // made (unknown clients at most so many a day per host).
        if let Some(client) = s.client.as_deref()
            && discover
            && !known.client_fresh(host, client, r.ts_ms)
            && seen_clients.insert((host.to_owned(), client.to_owned()))
            && !match seen_again.execute(params![host, client, ts])? {
                0 => false,
                _ => {
                    known.client_written(host, client, r.ts_ms);
                    true
                }
            }
            && (s.app != "unknown"
                || unknowns_today
                    .query_row(params![host, ts - 86_400_000], |c| c.get::<_, i64>(0))?
                    < MAX_UNKNOWN_PER_DAY)
        {
            let rec = discovery(dataplane, r, a, &s);
            if new_client.execute(params![ts, host, client, rec.to_string()])? == 1 {
                known.client_written(host, client, r.ts_ms);
                found.push(rec);
            }
        }
        deltas.add(&s, r, a);
    }
    Ok(found)
}

/// Writes `deltas` to the inventory's rows: a known row that gains nothing but counts gets
/// them bumped; any other is read, merged and upserted.
pub(crate) fn write(
    tx: &Transaction<'_>,
    deltas: Deltas,
    known: &mut Known,
) -> Result<(), StoreError> {
    let mut read = tx.prepare_cached(
        "SELECT destinations, accounts FROM inventory
         WHERE host = ?1 AND identity = ?2 AND user = ?3 AND app = ?4 AND version = ?5",
    )?;
    let mut write = tx.prepare_cached(
        "INSERT INTO inventory (host, identity, user, app, version, first_ms, last_ms, flows,
                                requests, bytes, destinations, accounts)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
         ON CONFLICT (host, identity, user, app, version) DO UPDATE SET
           first_ms = MIN(first_ms, excluded.first_ms), last_ms = MAX(last_ms, excluded.last_ms),
           flows = flows + excluded.flows, requests = requests + excluded.requests,
           bytes = bytes + excluded.bytes, destinations = excluded.destinations,
           accounts = excluded.accounts",
    )?;
    let mut bump = tx.prepare_cached(
        "UPDATE inventory SET first_ms = MIN(first_ms, ?6), last_ms = MAX(last_ms, ?7),
           flows = flows + ?8, requests = requests + ?9, bytes = bytes + ?10
         WHERE host = ?1 AND identity = ?2 AND user = ?3 AND app = ?4 AND version = ?5",
    )?;
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    for (key, mut d) in deltas.rows {
        if known.covers(&key, &d) {
            let (host, identity, user, app, version) = &key;
            let counts = params![
                host,
                identity,
                user,
                app,
                version,
                n(d.first),
                n(d.last),
                n(d.flows),
                n(d.requests),
                n(d.bytes)
            ];
            if bump.execute(counts)? == 1 {
                continue;
            }
        }
        let (host, identity, user, app, version) = &key;
        let old: Option<(String, String)> = read
            .query_row(params![host, identity, user, app, version], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if let Some((dest, acc)) = old {
            let list = |t: &str| serde_json::from_str::<Vec<String>>(t).unwrap_or_default();
            let (mut dests, mut accs) = (BTreeSet::new(), BTreeSet::new());
            for v in list(&dest) {
                add_bounded(&mut dests, &v);
            }
            for v in list(&acc) {
                add_bounded(&mut accs, &v);
            }
            for v in std::mem::take(&mut d.destinations) {
                add_bounded(&mut dests, &v);
            }
            for v in std::mem::take(&mut d.accounts) {
                add_bounded(&mut accs, &v);
            }
            d.destinations = dests;
            d.accounts = accs;
        }
        write.execute(params![
            host,
            identity,
            user,
            app,
            version,
            n(d.first),
            n(d.last),
            n(d.flows),
            n(d.requests),
            n(d.bytes),
            serde_json::to_string(&d.destinations)?,
            serde_json::to_string(&d.accounts)?,
        ])?;
        known.row_written(key, d.destinations, d.accounts);
    }
    Ok(())
}

/// The rows matching `f`, most recently seen first (at most 10,000).
pub fn query(
    conn: &rusqlite::Connection,
    f: &InventoryFilter,
) -> Result<Vec<InventoryRow>, StoreError> {
    let mut sql = String::from(
        "SELECT host, identity, user, app, version, first_ms, last_ms, flows, requests, bytes,
                destinations, accounts FROM inventory WHERE 1=1",
    );
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    for (col, v) in
        [("app", &f.app), ("host", &f.host), ("identity", &f.identity), ("user", &f.user)]
    {
        if let Some(v) = v {
            sql.push_str(&format!(" AND {col} = ?"));
            args.push(v.clone().into());
        }
    }
    if let Some(t) = f.since_ms {
        sql.push_str(" AND last_ms >= ?");
        args.push(i64::try_from(t).unwrap_or(i64::MAX).into());
    }
    sql.push_str(" ORDER BY last_ms DESC LIMIT 10000");
    let mut st = conn.prepare(&sql)?;
    let u = |v: i64| u64::try_from(v).unwrap_or(0);
    let list = |t: String| serde_json::from_str::<Vec<String>>(&t).unwrap_or_default();
    let rows = st.query_map(rusqlite::params_from_iter(args.iter()), |r| {
        Ok(InventoryRow {
            host: r.get(0)?,
            identity: r.get(1)?,
            user: r.get(2)?,
            app: r.get(3)?,
            version: r.get(4)?,
            first_seen_ms: u(r.get(5)?),
            last_seen_ms: u(r.get(6)?),
            flows: u(r.get(7)?),
            requests: u(r.get(8)?),
            bytes: u(r.get(9)?),
            destinations: list(r.get(10)?),
            accounts: list(r.get(11)?),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Distinct hosts per app (the metrics' gauge).
pub fn hosts_per_app(conn: &rusqlite::Connection) -> Result<Vec<(String, u64)>, StoreError> {
    let mut st =
        conn.prepare_cached("SELECT app, COUNT(DISTINCT host) FROM inventory GROUP BY app")?;
    let rows =
        st.query_map([], |r| Ok((r.get(0)?, u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0))))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Discovery records since `since_ms`, newest first (at most `limit`).
pub fn discoveries(
    conn: &rusqlite::Connection,
    since_ms: u64,
    limit: usize,
) -> Result<Vec<Value>, StoreError> {
    let mut st = conn.prepare_cached(
        "SELECT record FROM discoveries WHERE ts_ms >= ?1 ORDER BY id DESC LIMIT ?2",
    )?;
    let rows = st.query_map(
        params![i64::try_from(since_ms).unwrap_or(i64::MAX), i64::try_from(limit).unwrap_or(1000)],
        |r| r.get::<_, String>(0),
    )?;
    let mut out = Vec::new();
    for t in rows {
        out.push(serde_json::from_str(&t?)?);
    }
    Ok(out)
}

/// Forgets what was last seen before `older_than_ms` (retention): rows, and discoveries of
/// clients not seen since (a host seen again after that is discovered again).
pub(crate) fn prune(
    conn: &rusqlite::Connection,
    older_than_ms: u64,
    known: &Known,
) -> Result<u64, StoreError> {
    known.write_seen(conn)?;
    let t = i64::try_from(older_than_ms).unwrap_or(i64::MAX);
    let mut n = conn.execute("DELETE FROM inventory WHERE last_ms < ?1", [t])?;
    n += conn.execute("DELETE FROM discoveries WHERE last_ms < ?1", [t])?;
    Ok(n as u64)
}

#[cfg(test)]
#[path = "inventory_tests.rs"]
mod tests;
