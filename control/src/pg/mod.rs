//! PostgreSQL for control's shared stores (`store = "postgres://…"`; ARCHITECTURE.md, "The
//! stores"): a connection to the server, and the migrations of each store's schema.
//!
//! The stores' methods are synchronous (they run under the state's mutexes, often inside
//! async handlers), so a store's connection is driven by a small runtime of its own, the
//! `sluice-pg` thread, and a method waits on its query with `futures_executor::block_on`,
//! which works on any thread, inside a runtime or not (`postgres`, the sync crate, would
//! panic there). Waiting blocks the caller as a SQLite call does.

use std::future::Future;
use std::sync::OnceLock;

use tokio_postgres::{Client, Config, NoTls};

use crate::store::StoreError;

/// The runtime that drives every PostgreSQL connection of this process.
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sluice-pg")
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot start the PostgreSQL runtime: {e}"))
    })
}

/// Waits for `f` on the calling thread.
pub(crate) fn wait<F: Future>(f: F) -> F::Output {
    futures_executor::block_on(f)
}

/// One connection.
pub struct Pg {
    client: Client,
    /// How it connected (another connection to the same database: [`Pg::another`]).
    cfg: Config,
    /// A second connection in the same snapshot, once [`crate::records::EvidenceView::hold_snapshot`]
    /// made one: a walk reads its two tables at once, one on each (one connection answers
    /// one query at a time).
    pub(crate) beside: Option<Box<Pg>>,
}

impl std::fmt::Debug for Pg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pg").field("closed", &self.client.is_closed()).finish()
    }
}

impl Pg {
    /// Connects to `url` (a `postgres://` URL or libpq's `key=value` form), without TLS:
    /// over a Unix socket or a management network the operator trusts.
    pub fn connect(url: &str) -> Result<Pg, StoreError> {
        let cfg: Config = url.parse()?;
        Pg::connect_with(cfg)
    }

    /// Connects with `cfg`.
    pub fn connect_with(mut cfg: Config) -> Result<Pg, StoreError> {
        cfg.application_name("sluice-control");
        let at = cfg.clone();
        let (client, conn) = wait(runtime().spawn(async move { at.connect(NoTls).await }))
            .map_err(|e| StoreError::Closed(e.to_string()))??;
        runtime().spawn(async move {
            if let Err(e) = conn.await {
                tracing::error!("PostgreSQL connection: {e}");
            }
        });
        Ok(Pg { client, cfg, beside: None })
    }

    /// Another connection to the same database (a reader beside the writer).
    pub fn another(&self) -> Result<Pg, StoreError> {
        Pg::connect_with(self.cfg.clone())
    }

    /// The client, for a store's transactions (wait on them with [`wait`]).
    pub(crate) fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// The client, for a store's queries.
    pub(crate) fn client_ref(&self) -> &Client {
        &self.client
    }

    /// Brings store `store`'s schema up to date: applies the steps of `steps` not applied
    /// yet, in order, each in its own transaction, under an advisory lock so that two
    /// controls starting at once apply each step once.
    pub fn migrate(&mut self, store: &str, steps: &[&str]) -> Result<(), StoreError> {
        wait(async {
            let there: bool = self
                .client
                .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
                .await?
                .try_get(0)?;
            if !there {
                self.client
                    .batch_execute(
                        "CREATE TABLE IF NOT EXISTS schema_migrations (
                             store TEXT NOT NULL, step INTEGER NOT NULL,
                             at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (store, step))",
                    )
                    .await
                    .or_else(|e| {
                        // Two controls creating the table at once: the loser sees a unique
                        // violation on the catalog; the table is there.
                        if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    })?;
            }
            for (i, step) in steps.iter().enumerate() {
                let n = i32::try_from(i + 1).unwrap_or(i32::MAX);
                let tx = self.client.transaction().await?;
                tx.execute(
                    "SELECT pg_advisory_xact_lock(hashtext('sluice-migrate:' || current_schema()))",
                    &[],
                )
                .await?;
                let done = tx
                    .query_opt(
                        "SELECT 1 FROM schema_migrations WHERE store = $1 AND step = $2",
                        &[&store, &n],
                    )
                    .await?
                    .is_some();
                if !done {
                    tx.batch_execute(step).await?;
                    tx.execute(
                        "INSERT INTO schema_migrations (store, step) VALUES ($1, $2)",
                        &[&store, &n],
                    )
                    .await?;
                }
                tx.commit().await?;
            }
            Ok(())
        })
    }
}

/// A new, empty schema `PREFIX_PID_NANOS` on the server `url` names, for tests and benches:
/// the connection string that works in it (`search_path` set), and its name.
pub fn fresh_schema(url: &str, prefix: &str) -> Result<(String, String), StoreError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let schema = format!("{prefix}_{}_{n}_{nanos}", std::process::id());
    let pg = Pg::connect(url)?;
    wait(pg.client_ref().batch_execute(&format!("CREATE SCHEMA {schema}")))?;
    let url = if url.contains("://") {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}options=-csearch_path%3D{schema}")
    } else {
        format!("{url} options='-csearch_path={schema}'")
    };
    Ok((url, schema))
}

/// Drops a schema [`fresh_schema`] made, with what is in it.
pub fn drop_schema(url: &str, schema: &str) -> Result<(), StoreError> {
    let pg = Pg::connect(url)?;
    wait(pg.client_ref().batch_execute(&format!("DROP SCHEMA {schema} CASCADE")))?;
    Ok(())
}

/// Reads every flow row's chain columns and record in storage order, as verification does,
/// and returns the records' bytes (the benches' reference for verification).
pub fn count_record_bytes(pg: &Pg) -> Result<usize, StoreError> {
    use futures_util::StreamExt;
    wait(async {
        let rows = pg
            .client_ref()
            .query_raw(
                "SELECT id, cn, link, record FROM flows ORDER BY id",
                std::iter::empty::<i64>(),
            )
            .await?;
        let mut rows = Box::pin(rows);
        let mut bytes = 0;
        while let Some(r) = rows.next().await {
            bytes += r?.try_get::<_, &str>(3)?.len();
        }
        Ok(bytes)
    })
}

/// `v` as PostgreSQL's BIGINT (saturating).
pub(crate) fn big(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Makes each named test function (taking a store) two tests, `sqlite::NAME` and
/// `postgres::NAME`: the same suite against both stores. The PostgreSQL store comes from a
/// fresh schema ([`testing::fresh`]).
#[cfg(test)]
macro_rules! both_stores {
    (sqlite: $sqlite:expr, postgres: $pg:expr; $($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $name() { super::$name($sqlite) })*
        }
        mod postgres {
            $(#[test] fn $name() {
                if let Some(cfg) = $crate::pg::testing::fresh() {
                    #[allow(clippy::redundant_closure_call)]
                    super::$name(($pg)(cfg))
                }
            })*
        }
    };
}
#[cfg(test)]
pub(crate) use both_stores;

#[cfg(test)]
pub(crate) mod testing {
    //! A fresh schema per test on the server `SLUICE_TEST_POSTGRES` names (scripts/test
    //! starts one; `scripts/postgres start DIR` by hand). Without it the PostgreSQL variant
    //! of a store test fails, unless the variable says `skip`.

    use tokio_postgres::Config;

    /// The configuration of a new, empty schema, or `None` when told to skip.
    pub fn fresh() -> Option<Config> {
        let url = match std::env::var("SLUICE_TEST_POSTGRES") {
            Ok(u) if u == "skip" => {
                eprintln!("SLUICE_TEST_POSTGRES=skip: the PostgreSQL variant is not run");
                return None;
            }
            Ok(u) => u,
            Err(_) => panic!(
                "SLUICE_TEST_POSTGRES is not set: start a server with `scripts/postgres start DIR` \
                 and export what it prints (or set it to `skip`)"
            ),
        };
        let (url, _) = super::fresh_schema(&url, "t").expect("a test schema");
        let cfg: Config = url.parse().expect("SLUICE_TEST_POSTGRES parses");
        Some(cfg)
    }
}

pub mod active;
pub mod identities;
mod record_store;
pub mod records;
mod records_chains;
mod records_inventory;
mod records_read;
pub mod rules;
