//! The data planes' chains in the record store (ARCHITECTURE.md, "Evidence"): flow and
//! request rows carry their chain (`ce`, the data plane's epoch), position (`cn`) and link;
//! `chain_heads` keeps where each data plane's chain stands so ingest checks the next record
//! without a scan. This module places each record at ingest ([`place`], on the pure decision
//! of [`crate::chains::admit`], noting refusals, gaps and restarts), reads the rows back in
//! storage order for verification and cuts chains for retention, each at one position across
//! both tables.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;
use sluice_audit::Link;

use crate::chains::{Admit, Event, Head, admit};
use crate::record::{Chain, RecordKind, Row};
use crate::store::StoreError;

/// The record tables a chain runs through.
const TABLES: [&str; 2] = ["flows", "requests"];

/// Something an ingest said about a data plane's chain: a refused record, a gap, a restart.
/// Control writes each to its own chain (the audit log) and raises it as an alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainNote {
    /// The audit action (`chain.refused`, `chain.gap`, `chain.restart`).
    pub action: &'static str,
    /// The details, as JSON text (a refused record's text included).
    pub detail: String,
}

/// Where ingest puts a flow or request record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// At position `n` of chain `epoch`, with its link.
    Chain {
        /// The data plane's chain.
        epoch: u64,
        /// Position.
        n: u64,
        /// Its link.
        link: Link,
    },
    /// Outside any chain (a data plane that does not chain).
    Plain,
    /// Nowhere: a copy already stored, or refused (noted).
    Nowhere,
}

/// Decides where record `r` of `dataplane` goes, its chain standing at `head` (moved on);
/// what is worth saying about the chain is added to `notes`.
pub(crate) fn place(
    conn: &Connection,
    dataplane: &str,
    r: &Row<'_>,
    head: &mut Option<Head>,
    notes: &mut Vec<ChainNote>,
) -> Result<Place, StoreError> {
    Ok(match admit(head, &r.chain) {
        Admit::Plain => Place::Plain,
        Admit::Store { epoch, n, link, event } => {
            if let Some(e) = event {
                notes.push(chain_note(dataplane, r, &e, epoch, n));
            }
            Place::Chain { epoch, n, link }
        }
        Admit::Taken if stored(conn, r.kind, dataplane, i(r.seq))? => Place::Nowhere,
        Admit::Taken => {
            notes.push(refused(dataplane, r, "its chain position is taken", None));
            Place::Nowhere
        }
        Admit::Refuse(why) => {
            let at = match (r.chain, *head) {
                (Chain::Linked { n, .. }, Some(h)) if h.n == n => Some((h.epoch, n)),
                _ => None,
            };
            notes.push(refused(dataplane, r, why, at));
            Place::Nowhere
        }
    })
}

/// True when a record of `kind` with sequence number `seq` of `dataplane` is stored.
fn stored(
    conn: &Connection,
    kind: RecordKind,
    dataplane: &str,
    seq: i64,
) -> Result<bool, StoreError> {
    let t = if kind == RecordKind::Flow { "flows" } else { "requests" };
    let sql = format!("SELECT 1 FROM {t} WHERE dataplane = ?1 AND seq = ?2");
    Ok(conn.prepare_cached(&sql)?.exists(params![dataplane, seq])?)
}

/// The note of a record refused for `why` (its text kept in the note: records hold no secret);
/// `at`: the chain (epoch) and position it claimed, which stays empty in the store.
pub(crate) fn refused(
    dataplane: &str,
    r: &Row<'_>,
    why: &str,
    at: Option<(u64, u64)>,
) -> ChainNote {
    let record: Value = serde_json::from_str(&r.json).unwrap_or(Value::Null);
    let mut detail = serde_json::json!({
        "dataplane": dataplane, "seq": r.seq, "reason": why, "record": record,
    });
    if let Some((epoch, n)) = at {
        detail["chain"] = crate::chains::chain_name(dataplane, epoch).into();
        detail["n"] = n.into();
    }
    ChainNote { action: "chain.refused", detail: detail.to_string() }
}

/// The note of a discontinuity before record `r`, stored at position `n` of chain `epoch`.
pub(crate) fn chain_note(dataplane: &str, r: &Row<'_>, e: &Event, epoch: u64, n: u64) -> ChainNote {
    let mut detail = serde_json::json!({
        "dataplane": dataplane, "chain": crate::chains::chain_name(dataplane, epoch),
        "epoch": epoch, "seq": r.seq, "n": n,
    });
    if let Event::Gap { from, to } = e {
        detail["from"] = (*from).into();
        detail["to"] = (*to).into();
    }
    ChainNote { action: e.action(), detail: detail.to_string() }
}

/// Adds the chain columns to a store made before chains, and the heads' table.
pub(crate) fn migrate(conn: &Connection) -> Result<(), StoreError> {
    for t in TABLES {
        let has: bool = conn
            .prepare(&format!("SELECT 1 FROM pragma_table_info('{t}') WHERE name = 'cn'"))?
            .exists([])?;
        if !has {
            conn.execute_batch(&format!(
                "ALTER TABLE {t} ADD COLUMN ce INTEGER;
                 ALTER TABLE {t} ADD COLUMN cn INTEGER;
                 ALTER TABLE {t} ADD COLUMN link BLOB;"
            ))?;
        }
    }
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS chain_heads (
             dataplane TEXT PRIMARY KEY, epoch INTEGER NOT NULL, n INTEGER NOT NULL,
             link BLOB NOT NULL);",
    )?;
    Ok(())
}

fn link_of(b: &[u8]) -> Link {
    let mut l = [0u8; 32];
    if b.len() == 32 {
        l.copy_from_slice(b);
    }
    Link(l)
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Where `dataplane`'s chain stands, as stored.
pub(crate) fn load_head(conn: &Connection, dataplane: &str) -> Result<Option<Head>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT epoch, n, link FROM chain_heads WHERE dataplane = ?1",
            [dataplane],
            |r| {
                Ok(Head {
                    epoch: u(r.get(0)?),
                    n: u(r.get(1)?),
                    link: link_of(&r.get::<_, Vec<u8>>(2)?),
                })
            },
        )
        .optional()?)
}

/// Where every data plane's current chain stands.
pub(crate) fn current_heads(conn: &Connection) -> Result<Vec<(String, Head)>, StoreError> {
    let mut st = conn.prepare("SELECT dataplane, epoch, n, link FROM chain_heads")?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            Head { epoch: u(r.get(1)?), n: u(r.get(2)?), link: link_of(&r.get::<_, Vec<u8>>(3)?) },
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Keeps where `dataplane`'s chain stands.
pub(crate) fn save_head(conn: &Connection, dataplane: &str, h: &Head) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO chain_heads (dataplane, epoch, n, link) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (dataplane) DO UPDATE SET epoch = ?2, n = ?3, link = ?4",
    )?
    .execute(params![dataplane, i(h.epoch), i(h.n), &h.link.0[..]])?;
    Ok(())
}

/// (data plane, epoch) → (position, link) of each chain's last record.
pub type Heads = BTreeMap<(String, u64), (u64, Link)>;

/// Every data plane chain the store knows: (data plane, epoch) → its head as last stored
/// (the newest epoch of each data plane is in `chain_heads`; older epochs are read from their
/// rows).
pub fn heads(conn: &Connection) -> Result<Heads, StoreError> {
    type Entry = ((String, u64), (u64, Link));
    let read = |r: &rusqlite::Row<'_>| -> rusqlite::Result<Entry> {
        Ok(((r.get(0)?, u(r.get(1)?)), (u(r.get(2)?), link_of(&r.get::<_, Vec<u8>>(3)?))))
    };
    let mut out = BTreeMap::new();
    for t in TABLES {
        let mut st = conn.prepare(&format!(
            // SQLite: a bare column beside MAX() is read from the row holding the maximum.
            "SELECT dataplane, ce, MAX(cn), link FROM {t} WHERE cn IS NOT NULL
             GROUP BY dataplane, ce"
        ))?;
        for row in st.query_map([], read)? {
            let (k, v) = row?;
            let e = out.entry(k).or_insert(v);
            if v.0 > e.0 {
                *e = v;
            }
        }
    }
    let mut st = conn.prepare("SELECT dataplane, epoch, n, link FROM chain_heads")?;
    for row in st.query_map([], read)? {
        let (k, v) = row?;
        out.insert(k, v);
    }
    Ok(out)
}

/// The chains with records of `since ≤ ts < until`, and the span of their positions there.
pub fn ranges(
    conn: &Connection,
    since_ms: i64,
    until_ms: i64,
) -> Result<crate::records::ChainRanges, StoreError> {
    let mut ranges = BTreeMap::new();
    for t in TABLES {
        let mut st = conn.prepare(&format!(
            "SELECT dataplane, ce, MIN(cn), MAX(cn) FROM {t}
             WHERE ts_ms >= ?1 AND ts_ms < ?2 AND cn IS NOT NULL GROUP BY dataplane, ce"
        ))?;
        let rows = st.query_map(params![since_ms, until_ms], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        for row in rows {
            let (dp, ce, a, b) = row?;
            let e = ranges.entry((dp, ce.unsigned_abs())).or_insert((u64::MAX, 0));
            e.0 = e.0.min(a.unsigned_abs());
            e.1 = e.1.max(b.unsigned_abs());
        }
    }
    Ok(ranges)
}

/// One stored row of a chain, as verification reads it.
#[derive(Debug, Clone)]
pub struct ChainRow {
    /// `f` or `r` (flows, requests) and the row id: where it is stored.
    pub table: char,
    /// Row id.
    pub id: i64,
    /// Position.
    pub n: u64,
    /// Stored link.
    pub link: Link,
    /// Stored text.
    pub record: String,
    /// The indexed columns as stored.
    pub columns: Columns,
}

/// A record row's indexed columns (queries filter on them, retention goes by `ts_ms`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Columns {
    /// `ts_ms`.
    pub ts_ms: u64,
    /// `identity`.
    pub identity: Option<String>,
    /// `user`.
    pub user: Option<String>,
    /// `src`.
    pub src: Option<String>,
    /// `sni`.
    pub sni: Option<String>,
    /// `category`.
    pub category: Option<String>,
    /// `verdict`.
    pub verdict: Option<String>,
    /// `rule`.
    pub rule: Option<String>,
    /// `detectors` (requests only).
    pub detectors: Option<String>,
}

/// Calls `f` with every row of chain (`dataplane`, `epoch`) after position `after`, in storage
/// order: each table by row id, the two merged by position (so two rows stored in each other's
/// place in a table come out in that order, for the verifier to see).
pub fn walk(
    conn: &Connection,
    dataplane: &str,
    epoch: u64,
    after: u64,
    mut f: impl FnMut(ChainRow),
) -> Result<(), StoreError> {
    let sql = |t: &str| {
        let detectors = if t == "requests" { "detectors" } else { "NULL" };
        format!(
            "SELECT id, cn, link, record, ts_ms, identity, user, src, sni, category, verdict, rule,
                    {detectors}
             FROM {t} WHERE dataplane = ?1 AND ce = ?2 AND cn > ?3 ORDER BY id"
        )
    };
    let (mut a, mut b) = (conn.prepare(&sql("flows"))?, conn.prepare(&sql("requests"))?);
    let read = |table: char| {
        move |r: &rusqlite::Row<'_>| {
            Ok(ChainRow {
                table,
                id: r.get(0)?,
                n: u(r.get(1)?),
                link: link_of(&r.get::<_, Vec<u8>>(2).unwrap_or_default()),
                record: r.get(3)?,
                columns: Columns {
                    ts_ms: u(r.get(4)?),
                    identity: r.get(5)?,
                    user: r.get(6)?,
                    src: r.get(7)?,
                    sni: r.get(8)?,
                    category: r.get(9)?,
                    verdict: r.get(10)?,
                    rule: r.get(11)?,
                    detectors: r.get(12)?,
                },
            })
        }
    };
    let args = params![dataplane, i(epoch), i(after)];
    let mut fa = a.query_map(args, read('f'))?.peekable();
    let mut fb = b.query_map(args, read('r'))?.peekable();
    loop {
        let take_a = match (fa.peek(), fb.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(Ok(x)), Some(Ok(y))) => x.n <= y.n,
            (Some(Err(_)), _) => true,
            (_, Some(Err(_))) => false,
        };
        let next = if take_a { fa.next() } else { fb.next() };
        if let Some(row) = next {
            f(row?);
        }
    }
    Ok(())
}

/// Where retention cuts a chain: every row at or before `n` goes; `link` is the link at `n`,
/// which a checkpoint keeps before they go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// The data plane.
    pub dataplane: String,
    /// Its chain's epoch.
    pub epoch: u64,
    /// The last position deleted.
    pub n: u64,
    /// Its link.
    pub link: Link,
}

/// The cuts retention makes: per chain, the highest position among rows older than
/// `older_than_ms` or among the oldest beyond `max_rows` of their table.
pub fn cuts(conn: &Connection, older_than_ms: u64, max_rows: u64) -> Result<Vec<Cut>, StoreError> {
    // Per chain: the highest position due by age, and by count.
    let mut at = Due::new();
    for t in TABLES {
        let threshold: i64 = conn
            .query_row(
                &format!("SELECT id FROM {t} ORDER BY id DESC LIMIT 1 OFFSET ?1"),
                [i(max_rows)],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0);
        for (criterion, by_age) in [("ts_ms < ?1", true), ("id <= ?1", false)] {
            let mut st = conn.prepare(&format!(
                "SELECT dataplane, ce, MAX(cn) FROM {t}
                 WHERE cn IS NOT NULL AND {criterion} GROUP BY dataplane, ce"
            ))?;
            let bound = if by_age { i(older_than_ms) } else { threshold };
            let rows = st.query_map([bound], |r| {
                Ok(((r.get::<_, String>(0)?, u(r.get(1)?)), u(r.get(2)?)))
            })?;
            for row in rows {
                let (k, n) = row?;
                due_at(&mut at, k, n, by_age);
            }
        }
    }
    decide_cuts(
        at,
        older_than_ms,
        |dp, epoch, n| row_at(conn, dp, epoch, n),
        |dp, epoch| old_by_record(conn, dp, epoch, older_than_ms),
    )
}

/// Per chain (data plane, epoch): the highest position due by age, and by count.
pub(crate) type Due = BTreeMap<(String, u64), (u64, u64)>;

/// Notes position `n` of chain `k` as due by age or by count.
pub(crate) fn due_at(due: &mut Due, k: (String, u64), n: u64, by_age: bool) {
    let e = due.entry(k).or_default();
    if by_age {
        e.0 = e.0.max(n);
    } else {
        e.1 = e.1.max(n);
    }
}

/// The cuts of what is `due`, whichever store reads the rows: `row_at(dp, epoch, n)` gives
/// the link and the record's own time at a position, `old_by_record(dp, epoch)` the highest
/// position old by column and record alike.
pub(crate) fn decide_cuts(
    due: Due,
    older_than_ms: u64,
    mut row_at: impl FnMut(&str, u64, u64) -> Result<Option<(Link, u64)>, StoreError>,
    mut old_by_record: impl FnMut(&str, u64) -> Result<u64, StoreError>,
) -> Result<Vec<Cut>, StoreError> {
    let mut out = Vec::new();
    for ((dataplane, epoch), (by_age, by_count)) in due {
        let mut n = by_count;
        // The age comes from an indexed column: believed only when the record says the same
        // (a row made to look old would otherwise take every position before it along).
        if by_age > n {
            match row_at(&dataplane, epoch, by_age)? {
                Some((_, ts)) if ts < older_than_ms => n = by_age,
                _ => {
                    tracing::error!(
                        dataplane,
                        position = by_age,
                        "retention: a row's ts_ms column says it is old and its record does not; not cut there"
                    );
                    n = n.max(old_by_record(&dataplane, epoch)?);
                }
            }
        }
        if n == 0 {
            continue;
        }
        if let Some((link, _)) = row_at(&dataplane, epoch, n)? {
            out.push(Cut { dataplane, epoch, n, link });
        }
    }
    Ok(out)
}

/// The highest position of a chain old by its column and by its record alike.
fn old_by_record(
    conn: &Connection,
    dataplane: &str,
    epoch: u64,
    older_than_ms: u64,
) -> Result<u64, StoreError> {
    let mut n = 0;
    for t in TABLES {
        let m: Option<i64> = conn.query_row(
            &format!(
                "SELECT MAX(cn) FROM {t} WHERE dataplane = ?1 AND ce = ?2 AND ts_ms < ?3
                 AND json_extract(record, '$.ts_ms') < ?3"
            ),
            params![dataplane, i(epoch), i(older_than_ms)],
            |r| r.get(0),
        )?;
        n = n.max(m.map_or(0, u));
    }
    Ok(n)
}

/// The link and the record's own `ts_ms` of position `n` of a chain.
fn row_at(
    conn: &Connection,
    dataplane: &str,
    epoch: u64,
    n: u64,
) -> Result<Option<(Link, u64)>, StoreError> {
    for t in TABLES {
        let row = conn
            .query_row(
                &format!(
                    "SELECT link, json_extract(record, '$.ts_ms') FROM {t}
                     WHERE dataplane = ?1 AND ce = ?2 AND cn = ?3"
                ),
                params![dataplane, i(epoch), i(n)],
                |r| {
                    Ok((
                        link_of(&r.get::<_, Vec<u8>>(0)?),
                        u(r.get::<_, Option<i64>>(1)?.unwrap_or(0)),
                    ))
                },
            )
            .optional()?;
        if row.is_some() {
            return Ok(row);
        }
    }
    Ok(None)
}

/// Deletes the chained rows at or before each cut. Returns how many.
pub fn apply_cuts(conn: &Connection, cuts: &[Cut]) -> Result<u64, StoreError> {
    let mut n = 0;
    for c in cuts {
        for t in TABLES {
            n += conn.execute(
                &format!("DELETE FROM {t} WHERE dataplane = ?1 AND ce = ?2 AND cn <= ?3"),
                params![c.dataplane, i(c.epoch), i(c.n)],
            )?;
        }
    }
    Ok(n as u64)
}
