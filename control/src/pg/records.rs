//! The record store on PostgreSQL ([`crate::records`] has the traits, [`crate::store`] the
//! SQLite store): its schema and ingestion. Reads are in `records_read.rs`, the chains,
//! evidence and retention in `records_chains.rs`.
//!
//! One batch is one transaction, under an advisory lock per data plane, so that two controls
//! never place one data plane's records at once: the chain's head is read from
//! `chain_heads` in the transaction (no other control's ingest can move it meanwhile), the
//! rows go in with one `INSERT … SELECT FROM unnest(…) ON CONFLICT DO NOTHING RETURNING`
//! per table (a replayed row is skipped there), and the console's counts, the inventory and
//! the discoveries are upserted from arrays in sorted order, so that two controls' batches
//! lock shared rows in one order.

use std::collections::HashSet;

use sluice_audit::Link;
use tokio_postgres::Transaction;

use super::records_inventory::Pending;
use super::records_outbox;
use super::scrub::{has_nul, scrub};
use super::{Pg, big, wait};
use crate::chains::{Admit, Head, admit};
use crate::chainstore::{ChainNote, chain_note, refused};
use crate::inventory::Known;
use crate::outbox::{DISCOVERY, Note};
use crate::record::{Chain, RecordKind, Row};
use crate::store::StoreError;

pub(super) const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE flows (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dataplane TEXT NOT NULL, seq BIGINT NOT NULL, ts_ms BIGINT NOT NULL,
    identity TEXT, \"user\" TEXT, src TEXT, sni TEXT, category TEXT, verdict TEXT, rule TEXT,
    app TEXT, operation TEXT, virtual_key TEXT,
    record TEXT NOT NULL, ce BIGINT, cn BIGINT, link BYTEA,
    UNIQUE (dataplane, seq));
CREATE TABLE requests (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dataplane TEXT NOT NULL, seq BIGINT NOT NULL, ts_ms BIGINT NOT NULL,
    identity TEXT, \"user\" TEXT, src TEXT, sni TEXT, category TEXT, verdict TEXT, rule TEXT,
    app TEXT, operation TEXT, virtual_key TEXT,
    record TEXT NOT NULL, ce BIGINT, cn BIGINT, link BYTEA,
    detectors TEXT, model TEXT, quota TEXT,
    input_tokens BIGINT NOT NULL, output_tokens BIGINT NOT NULL, cached_tokens BIGINT NOT NULL,
    UNIQUE (dataplane, seq));
CREATE INDEX flows_ts ON flows USING BRIN (ts_ms);
CREATE INDEX flows_src ON flows (src, id);
CREATE INDEX flows_user ON flows (\"user\", id) WHERE \"user\" IS NOT NULL;
CREATE INDEX flows_identity ON flows (identity, id);
CREATE INDEX flows_sni ON flows (sni, id);
CREATE INDEX flows_rule ON flows (rule, id);
CREATE INDEX flows_chain ON flows (dataplane, ce, cn) WHERE cn IS NOT NULL;
CREATE INDEX requests_ts ON requests USING BRIN (ts_ms);
CREATE INDEX requests_src ON requests (src, id);
CREATE INDEX requests_user ON requests (\"user\", id) WHERE \"user\" IS NOT NULL;
CREATE INDEX requests_identity ON requests (identity, id);
CREATE INDEX requests_sni ON requests (sni, id);
CREATE INDEX requests_rule ON requests (rule, id);
CREATE INDEX requests_chain ON requests (dataplane, ce, cn) WHERE cn IS NOT NULL;
CREATE TABLE chain_heads (
    dataplane TEXT PRIMARY KEY, epoch BIGINT NOT NULL, n BIGINT NOT NULL, link BYTEA NOT NULL);
CREATE TABLE series (
    minute BIGINT PRIMARY KEY, flows BIGINT NOT NULL DEFAULT 0,
    requests BIGINT NOT NULL DEFAULT 0, blocked BIGINT NOT NULL DEFAULT 0,
    findings BIGINT NOT NULL DEFAULT 0);
CREATE TABLE inventory (
    host TEXT NOT NULL, identity TEXT NOT NULL, \"user\" TEXT NOT NULL,
    app TEXT NOT NULL, version TEXT NOT NULL,
    first_ms BIGINT NOT NULL, last_ms BIGINT NOT NULL,
    flows BIGINT NOT NULL, requests BIGINT NOT NULL, bytes BIGINT NOT NULL,
    destinations TEXT[] NOT NULL, accounts TEXT[] NOT NULL,
    PRIMARY KEY (host, identity, \"user\", app, version))
    WITH (fillfactor = 70);
-- (app) alone: an update that moves last_ms stays a heap-only one.
CREATE INDEX inventory_app ON inventory (app);
CREATE TABLE discoveries (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts_ms BIGINT NOT NULL, last_ms BIGINT NOT NULL,
    host TEXT NOT NULL, client TEXT NOT NULL, record TEXT NOT NULL,
    UNIQUE (host, client));
CREATE TABLE recordings (
    id TEXT PRIMARY KEY, dataplane TEXT NOT NULL, seq BIGINT NOT NULL, ts_ms BIGINT NOT NULL,
    identity TEXT, \"user\" TEXT, src TEXT, sni TEXT, method TEXT, path TEXT, rule TEXT,
    bytes BIGINT NOT NULL, thread TEXT NOT NULL, response TEXT, sealed TEXT NOT NULL);
CREATE INDEX recordings_ts ON recordings (ts_ms);
CREATE INDEX recordings_threads ON recordings (thread, ts_ms) WHERE thread <> id;
CREATE INDEX recordings_chain ON recordings (response) WHERE substr(response, 1, 5) = 'resp_';
-- A list of an inventory row (destinations, accounts) with new entries added while it has
-- room (32), those it holds first.
CREATE FUNCTION sluice_merge(old TEXT[], new TEXT[]) RETURNS TEXT[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN cardinality(old) >= 32 THEN old ELSE ARRAY(
        SELECT x FROM (SELECT x, 0 AS o FROM unnest(old) x
                       UNION ALL SELECT x, 1 FROM unnest(new) x WHERE NOT x = ANY(old)) t
        ORDER BY o, x LIMIT 32) END $$;
-- A record's own ts_ms, when it is a number (retention believes a row's age only then).
-- NULL for a record PostgreSQL's json cannot read (one with an escaped NUL); at most
-- BIGINT's largest.
CREATE FUNCTION sluice_record_ts(record TEXT) RETURNS BIGINT
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN CASE WHEN json_typeof(record::json -> 'ts_ms') = 'number'
                THEN LEAST((record::json ->> 'ts_ms')::numeric, 9223372036854775807)::bigint END;
EXCEPTION WHEN others THEN
    RETURN NULL;
END $$;
",
    "
-- The inventory's mark: per record table, the last id its rows count
-- (`records_inventory.rs`).
CREATE TABLE inventory_applied (tbl TEXT PRIMARY KEY, upto BIGINT NOT NULL);
-- A store of the first step wrote its rows with every ingest: they count what is stored.
INSERT INTO inventory_applied SELECT 'flows', COALESCE(MAX(id), 0) FROM flows;
INSERT INTO inventory_applied SELECT 'requests', COALESCE(MAX(id), 0) FROM requests;
",
    "
-- What ingests said for the audit log, until it is written there (`records_outbox.rs`).
CREATE TABLE notes_outbox (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dataplane TEXT NOT NULL, action TEXT NOT NULL, detail TEXT NOT NULL);
",
];

/// The record store on PostgreSQL.
#[derive(Debug)]
pub struct PgRecordStore {
    pub(super) pg: Pg,
    /// What the ingests put in the outbox since the last `take_notes`.
    pub(super) notes: Vec<Note>,
    /// What is known of the outbox (`records_outbox.rs`).
    pub(super) waiting: crate::outbox::Waiting,
    /// The clients whose discoveries this control wrote lately: a client seen again within
    /// the slack of its `last_ms` is not written again until retention (which writes what
    /// is pending first) or the slack passes. Cleared when a batch fails or retention runs.
    pub(super) known: Known,
    /// The inventory's counts not yet written.
    pub(super) pending: Pending,
}

impl PgRecordStore {
    /// Connects to `url` and brings the schema up to date.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        Self::with(Pg::connect(url)?)
    }

    /// Connects with `cfg`.
    pub fn open_with(cfg: tokio_postgres::Config) -> Result<Self, StoreError> {
        Self::with(Pg::connect_with(cfg)?)
    }

    fn with(pg: Pg) -> Result<Self, StoreError> {
        let mut pg = pg.healing();
        pg.migrate("records", MIGRATIONS)?;
        Ok(PgRecordStore {
            pg,
            notes: Vec::new(),
            waiting: crate::outbox::Waiting::default(),
            known: Known::default(),
            pending: Pending::default(),
        })
    }

    /// Writes the inventory's pending counts (before it is read), in a transaction of its
    /// own.
    pub(super) fn flush_inventory(&mut self) -> Result<(), StoreError> {
        let pending = &mut self.pending;
        let result = wait(async {
            let tx = self.pg.client().transaction().await?;
            super::active::fence(&tx).await?;
            pending.write(&tx).await?;
            tx.commit().await?;
            Ok::<_, StoreError>(())
        });
        if result.is_err() {
            self.pending.lost();
        }
        result
    }

    /// Stores a batch (see [`crate::records::RecordStore::ingest`]), once more if two
    /// controls' transactions deadlocked or failed to serialise.
    pub(super) fn ingest_rows(
        &mut self,
        dataplane: &str,
        rows: &[Row<'_>],
    ) -> Result<Vec<bool>, StoreError> {
        let scrubbed: Vec<Row<'_>>;
        let rows = if rows.iter().any(has_nul) {
            scrubbed = rows.iter().map(scrub).collect();
            &scrubbed[..]
        } else {
            rows
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut out = Ingested::default();
            let mut state = (&mut self.known, &mut self.pending);
            let result = wait(ingest(self.pg.client(), dataplane, rows, &mut out, &mut state));
            if result.is_err() {
                // What the failed transaction wrote of discoveries and counts is not there.
                self.known.clear();
                self.pending.lost();
                // Its commit may have happened: what it put in the outbox may be there.
                self.waiting.maybe = true;
            }
            match result {
                Ok(()) => {
                    self.notes.extend(out.notes);
                    return Ok(out.fresh);
                }
                Err(StoreError::Postgres(e)) if attempt < 3 && retryable(&e) => {
                    tracing::info!("record store: batch of {dataplane} tried again: {e}");
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn retryable(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    matches!(e.code(), Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE)
}

/// What one batch made.
#[derive(Default)]
struct Ingested {
    fresh: Vec<bool>,
    /// What it put in the outbox.
    notes: Vec<Note>,
}

/// Where a flow or request record goes.
enum Place {
    Plain,
    Chain { epoch: u64, n: u64, link: Link },
    Nowhere,
}

/// The columns of one table's new rows, as arrays.
#[derive(Default)]
struct Columns<'r> {
    row: Vec<usize>,
    seq: Vec<i64>,
    ts: Vec<i64>,
    text: [Vec<Option<&'r str>>; 10],
    record: Vec<&'r str>,
    ce: Vec<Option<i64>>,
    cn: Vec<Option<i64>>,
    link: Vec<Option<Vec<u8>>>,
    // Requests only.
    detectors: Vec<Option<String>>,
    model: Vec<Option<&'r str>>,
    quota: Vec<Option<&'r str>>,
    tokens: [Vec<i64>; 3],
}

impl<'r> Columns<'r> {
    fn push(&mut self, k: usize, r: &'r Row<'r>, chain: Option<(u64, u64, Link)>) {
        self.row.push(k);
        self.seq.push(big(r.seq));
        self.ts.push(big(r.ts_ms));
        let cols = [
            &r.identity,
            &r.user,
            &r.src,
            &r.sni,
            &r.category,
            &r.verdict,
            &r.rule,
            &r.app_name,
            &r.operation,
            &r.virtual_key,
        ];
        for (a, v) in self.text.iter_mut().zip(cols) {
            a.push(v.as_deref());
        }
        self.record.push(&r.json);
        self.ce.push(chain.map(|c| big(c.0)));
        self.cn.push(chain.map(|c| big(c.1)));
        self.link.push(chain.map(|c| c.2.0.to_vec()));
        if r.kind == RecordKind::Request {
            self.detectors.push(r.detectors());
            self.model.push(r.model.as_deref());
            self.quota.push(r.quota.as_deref());
            self.tokens[0].push(big(r.tokens.input));
            self.tokens[1].push(big(r.tokens.output));
            self.tokens[2].push(big(r.tokens.cached));
        }
    }
}

const COLUMNS: &str = "dataplane, seq, ts_ms, identity, \"user\", src, sni, category, verdict, rule, \
                       app, operation, virtual_key, record, ce, cn, link";
const UNNEST: &str = "$2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], \
                      $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], \
                      $14::text[], $15::bigint[], $16::bigint[], $17::bytea[]";

/// Inserts one table's rows; returns the sequence numbers stored, or `None` when all
/// were: with `fresh` (no row can be one stored already: the batch's numbers are all above
/// the data plane's highest stored, each once), a plain insert, without the speculative
/// insertion `ON CONFLICT` costs per row.
async fn insert(
    tx: &Transaction<'_>,
    dataplane: &str,
    table: &str,
    c: &Columns<'_>,
    fresh: bool,
) -> Result<Option<HashSet<i64>>, StoreError> {
    if c.row.is_empty() {
        return Ok(Some(HashSet::new()));
    }
    let tail = if fresh { "" } else { "ON CONFLICT (dataplane, seq) DO NOTHING RETURNING seq" };
    let t = &c.text;
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![
        &dataplane, &c.seq, &c.ts, &t[0], &t[1], &t[2], &t[3], &t[4], &t[5], &t[6], &t[7], &t[8],
        &t[9], &c.record, &c.ce, &c.cn, &c.link,
    ];
    let sql = if table == "requests" {
        params.extend([
            &c.detectors as &(dyn tokio_postgres::types::ToSql + Sync),
            &c.model,
            &c.quota,
            &c.tokens[0],
            &c.tokens[1],
            &c.tokens[2],
        ]);
        format!(
            "INSERT INTO requests ({COLUMNS}, detectors, model, quota, input_tokens,
                                   output_tokens, cached_tokens)
             SELECT $1, s, t, i, u, c, n, g, v, r, a, o, k, j, e, p, l, d, m, q, x, y, z
             FROM unnest({UNNEST}, $18::text[], $19::text[], $20::text[], $21::bigint[],
                         $22::bigint[], $23::bigint[])
                  WITH ORDINALITY AS b(s, t, i, u, c, n, g, v, r, a, o, k, j, e, p, l, d, m, q,
                                       x, y, z, ord)
             ORDER BY ord {tail}"
        )
    } else {
        format!(
            "INSERT INTO {table} ({COLUMNS})
             SELECT $1, s, t, i, u, c, n, g, v, r, a, o, k, j, e, p, l
             FROM unnest({UNNEST})
                  WITH ORDINALITY AS b(s, t, i, u, c, n, g, v, r, a, o, k, j, e, p, l, ord)
             ORDER BY ord {tail}"
        )
    };
    if fresh {
        tx.execute(&sql, &params).await?;
        return Ok(None);
    }
    let rows = tx.query(&sql, &params).await?;
    rows.iter().map(|r| Ok(r.try_get::<_, i64>(0)?)).collect::<Result<_, _>>().map(Some)
}

/// One batch, in one transaction.
async fn ingest(
    client: &mut tokio_postgres::Client,
    dataplane: &str,
    rows: &[Row<'_>],
    out: &mut Ingested,
    (known, pending): &mut (&mut Known, &mut Pending),
) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('sluice-ingest:' || current_schema() || ':' || $1, 0))",
        &[&dataplane],
    )
    .await?;
    super::active::fence(&tx).await?;
    pending.sync(&tx).await?;
    let mut head = load_head(&tx, dataplane).await?;
    let before = head;
    // Where each record goes; notes by the record they are about.
    let mut notes: Vec<(usize, ChainNote)> = Vec::new();
    let mut taken: Vec<usize> = Vec::new();
    // What this batch placed: a record twice in it is its copy, as one stored already is.
    let mut placed: HashSet<(bool, u64)> = HashSet::new();
    let (mut flows, mut requests) = (Columns::default(), Columns::default());
    for (k, r) in rows.iter().enumerate() {
        if !matches!(r.kind, RecordKind::Flow | RecordKind::Request) {
            continue;
        }
        let place = match admit(&mut head, &r.chain) {
            Admit::Plain => Place::Plain,
            Admit::Store { epoch, n, link, event } => {
                if let Some(e) = event {
                    notes.push((k, chain_note(dataplane, r, &e, epoch, n)));
                }
                Place::Chain { epoch, n, link }
            }
            Admit::Taken => {
                if !placed.contains(&(r.kind == RecordKind::Flow, r.seq)) {
                    taken.push(k);
                }
                Place::Nowhere
            }
            Admit::Refuse(why) => {
                let at = match (r.chain, head) {
                    (Chain::Linked { n, .. }, Some(h)) if h.n == n => Some((h.epoch, n)),
                    _ => None,
                };
                notes.push((k, refused(dataplane, r, why, at)));
                Place::Nowhere
            }
        };
        if !matches!(place, Place::Nowhere) {
            placed.insert((r.kind == RecordKind::Flow, r.seq));
        }
        let chain = match place {
            Place::Plain => None,
            Place::Chain { epoch, n, link } => Some((epoch, n, link)),
            Place::Nowhere => continue,
        };
        if r.kind == RecordKind::Flow {
            flows.push(k, r, chain);
        } else {
            requests.push(k, r, chain);
        }
    }
    // A position taken by a record stored already is its copy sent again; any other is
    // refused.
    if !taken.is_empty() {
        let seqs = |kind| -> Vec<i64> {
            taken.iter().filter(|&&k| rows[k].kind == kind).map(|&k| big(rows[k].seq)).collect()
        };
        let stored: HashSet<(bool, i64)> = tx
            .query(
                "SELECT true, seq FROM flows WHERE dataplane = $1 AND seq = ANY($2)
                 UNION ALL SELECT false, seq FROM requests WHERE dataplane = $1 AND seq = ANY($3)",
                &[&dataplane, &seqs(RecordKind::Flow), &seqs(RecordKind::Request)],
            )
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, StoreError>>()?;
        for &k in &taken {
            let r = &rows[k];
            if !stored.contains(&(r.kind == RecordKind::Flow, big(r.seq))) {
                notes.push((k, refused(dataplane, r, "its chain position is taken", None)));
            }
        }
        notes.sort_by_key(|(k, _)| *k);
    }
    out.fresh = vec![false; rows.len()];
    // A batch after what is stored, each number once (a data plane's batches as sent): no
    // row can conflict. A replay after a reconnect takes the checked way.
    let highest: Option<i64> = tx
        .query_one(
            "SELECT GREATEST((SELECT MAX(seq) FROM flows WHERE dataplane = $1),
                             (SELECT MAX(seq) FROM requests WHERE dataplane = $1))",
            &[&dataplane],
        )
        .await?
        .try_get(0)?;
    let mut seqs = HashSet::with_capacity(flows.seq.len() + requests.seq.len());
    let fresh = flows.seq.iter().chain(&requests.seq).all(|s| seqs.insert(*s))
        && seqs.iter().min().is_none_or(|m| highest.is_none_or(|h| *m > h));
    for (table, c) in [("flows", &flows), ("requests", &requests)] {
        match insert(&tx, dataplane, table, c, fresh).await? {
            None => c.row.iter().for_each(|&k| out.fresh[k] = true),
            Some(mut stored) => {
                for (&k, seq) in c.row.iter().zip(&c.seq) {
                    // A sequence number twice in one batch is stored once: the first.
                    out.fresh[k] = stored.remove(seq);
                }
            }
        }
    }
    for (k, r) in rows.iter().enumerate() {
        if r.kind == RecordKind::Recording {
            out.fresh[k] = super::records_read::insert_recording(&tx, dataplane, r).await?;
        }
    }
    let fresh: Vec<&Row<'_>> =
        rows.iter().zip(&out.fresh).filter(|(_, f)| **f).map(|(r, _)| r).collect();
    write_series(&tx, &fresh).await?;
    let found = pending.observe(&tx, dataplane, &fresh, known).await?;
    if pending.due(std::time::Instant::now()) {
        pending.write(&tx).await?;
    }
    if let Some(h) = head.filter(|_| head != before) {
        tx.execute(
            "INSERT INTO chain_heads (dataplane, epoch, n, link) VALUES ($1, $2, $3, $4)
             ON CONFLICT (dataplane) DO UPDATE SET epoch = $2, n = $3, link = $4",
            &[&dataplane, &big(h.epoch), &big(h.n), &&h.link.0[..]],
        )
        .await?;
    }
    for d in &found {
        let d = d.to_string();
        out.notes.push(records_outbox::put(&tx, dataplane, DISCOVERY, &d).await?);
    }
    for (_, n) in &notes {
        out.notes.push(records_outbox::put(&tx, dataplane, n.action, &n.detail).await?);
    }
    tx.commit().await?;
    Ok(())
}

/// Where `dataplane`'s chain stands.
pub(super) async fn load_head(
    tx: &Transaction<'_>,
    dataplane: &str,
) -> Result<Option<Head>, StoreError> {
    let row = tx
        .query_opt("SELECT epoch, n, link FROM chain_heads WHERE dataplane = $1", &[&dataplane])
        .await?;
    row.map(|r| head_of(&r, 0)).transpose()
}

/// A head from columns `at` (epoch), `at + 1` (n), `at + 2` (link).
pub(super) fn head_of(r: &tokio_postgres::Row, at: usize) -> Result<Head, StoreError> {
    Ok(Head {
        epoch: r.try_get::<_, i64>(at)?.unsigned_abs(),
        n: r.try_get::<_, i64>(at + 1)?.unsigned_abs(),
        link: link_of(r.try_get(at + 2)?),
    })
}

pub(super) use crate::rulestore::link_of;

/// Adds the new rows' counts to their minutes.
async fn write_series(tx: &Transaction<'_>, fresh: &[&Row<'_>]) -> Result<(), StoreError> {
    let mut tally = crate::series::Tally::default();
    for r in fresh {
        tally.add(r);
    }
    let mut minutes = tally.into_minutes();
    if minutes.is_empty() {
        return Ok(());
    }
    minutes.sort_by_key(|(m, _)| *m);
    let col = |f: fn(&crate::series::Counts) -> u64| -> Vec<i64> {
        minutes.iter().map(|(_, c)| big(f(c))).collect()
    };
    let m: Vec<i64> = minutes.iter().map(|(m, _)| *m).collect();
    tx.execute(
        "INSERT INTO series AS s (minute, flows, requests, blocked, findings)
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[])
         ON CONFLICT (minute) DO UPDATE SET flows = s.flows + EXCLUDED.flows,
           requests = s.requests + EXCLUDED.requests, blocked = s.blocked + EXCLUDED.blocked,
           findings = s.findings + EXCLUDED.findings",
        &[&m, &col(|c| c.flows), &col(|c| c.requests), &col(|c| c.blocked), &col(|c| c.findings)],
    )
    .await?;
    Ok(())
}
