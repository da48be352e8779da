//! PostgreSQL for control's shared stores (`store = "postgres://…"`; ARCHITECTURE.md, "The
//! stores"): a connection to the server, and the migrations of each store's schema.
//!
//! The stores' methods are synchronous (they run under the state's mutexes, often inside
//! async handlers), so a store's connection is driven by a small runtime of its own, the
//! `sluice-pg` thread, and a method waits on its query with `futures_executor::block_on`,
//! which works on any thread, inside a runtime or not (`postgres`, the sync crate, would
//! panic there). Waiting blocks the caller as a SQLite call does.

use std::future::Future;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{Client, Config};

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

/// The trust for TLS to the server, set once from `store_ca` ([`trust`]).
static TRUST: OnceLock<std::sync::Arc<rustls::ClientConfig>> = OnceLock::new();

/// Sets what a TLS connection to the server must chain to: the CA certificates in `ca` (PEM;
/// `store_ca`), or Mozilla's roots. Call it before the first connection; later calls change
/// nothing.
pub fn trust(ca: Option<&std::path::Path>) -> Result<(), StoreError> {
    let _ = TRUST.set(std::sync::Arc::new(client_tls(ca)?));
    Ok(())
}

/// The TLS client configuration trusting `ca` (PEM), or Mozilla's roots.
fn client_tls(ca: Option<&std::path::Path>) -> Result<rustls::ClientConfig, StoreError> {
    let mut cfg = (*crate::client::tls(ca).map_err(|e| StoreError::Tls(e.to_string()))?).clone();
    cfg.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(cfg)
}

/// What makes TLS connections to the server: trusting `ca` (PEM), or Mozilla's roots.
pub(crate) fn tls_trusting(
    ca: Option<&std::path::Path>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(client_tls(ca)?))
}

fn tls() -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    match TRUST.get() {
        Some(cfg) => Ok(tokio_postgres_rustls::MakeRustlsConnect::new((**cfg).clone())),
        None => tls_trusting(None),
    }
}

/// `url` parsed, TLS required (and the server's certificate verified) for a server on the
/// network unless the string says `sslmode` itself: never clear text to another host by
/// default. A Unix socket and loopback keep PostgreSQL's default (`prefer`).
pub fn parse(url: &str) -> Result<Config, StoreError> {
    let mut cfg: Config = url.parse()?;
    let remote = cfg.get_hosts().iter().any(|h| match h {
        Host::Tcp(name) => {
            name != "localhost" && !name.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback())
        }
        Host::Unix(_) => false,
    });
    if remote && !url.contains("sslmode") {
        cfg.ssl_mode(SslMode::Require);
    }
    Ok(cfg)
}

/// A connection's client, lent for a query.
pub(crate) struct ClientRef<'a>(MutexGuard<'a, Conn>);

impl std::ops::Deref for ClientRef<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.0.client
    }
}

/// Waits for `f` on the calling thread.
pub(crate) fn wait<F: Future>(f: F) -> F::Output {
    futures_executor::block_on(f)
}

/// One connection.
///
/// A store's connection ([`Pg::healing`]) is opened again when the server has closed it (an
/// ended backend, an idle-session timeout): the query that met the loss fails (the link then
/// does not acknowledge, so the data plane sends its records again), and the next one
/// reconnects. While the server stays away, an attempt is made at most [`REOPEN_EVERY`] after
/// the last one ended, each bounded by [`REOPEN_TIMEOUT`], and the queries between fail at
/// once. Readers holding a snapshot and the active lock's session never reconnect: their
/// state would be gone.
pub struct Pg {
    conn: Mutex<Conn>,
    /// How it connected (another connection to the same database: [`Pg::another`]).
    cfg: Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    heals: bool,
    /// How long one reconnection may take ([`REOPEN_TIMEOUT`]).
    reopen_within: Duration,
    /// A second connection in the same snapshot, once [`crate::records::EvidenceView::hold_snapshot`]
    /// made one: a walk reads its two tables at once, one on each (one connection answers
    /// one query at a time).
    pub(crate) beside: Option<Box<Pg>>,
}

/// The client, and when the last failed attempt to open it again ended.
struct Conn {
    client: Client,
    reopened: Option<Instant>,
}

/// Least time between two attempts to reconnect while the server stays away.
pub const REOPEN_EVERY: Duration = Duration::from_secs(2);
/// Longest wait for one reconnection, all of it (connecting, TLS, start-up).
pub const REOPEN_TIMEOUT: Duration = Duration::from_secs(5);

impl std::fmt::Debug for Pg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never waits: a query in progress holds the client.
        let closed = self.conn.try_lock().ok().map(|c| c.client.is_closed());
        f.debug_struct("Pg").field("closed", &closed).finish()
    }
}

/// Opens a connection with `cfg` on [`runtime`], which then drives it; waits at most `within`
/// for the whole of it (connecting, TLS, start-up) when given. The caller blocks on a channel,
/// not an executor, so a store may reconnect from inside a query it waits for.
fn open(
    cfg: &Config,
    tls: &tokio_postgres_rustls::MakeRustlsConnect,
    within: Option<Duration>,
) -> Result<Client, StoreError> {
    let at = cfg.clone();
    let tls = tls.clone();
    // A Unix socket carries no TLS (and its path is no name to verify a certificate by).
    let local = cfg.get_hosts().iter().all(|h| matches!(h, Host::Unix(_)));
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime().spawn(async move {
        let connect = async move {
            if local {
                let (client, conn) = at.connect(tokio_postgres::NoTls).await?;
                tokio::spawn(drive(conn));
                Ok(client)
            } else {
                let (client, conn) = at.connect(tls).await?;
                tokio::spawn(drive(conn));
                Ok(client)
            }
        };
        let r = match within {
            Some(d) => tokio::time::timeout(d, connect).await.unwrap_or_else(|_| {
                Err(StoreError::Closed(format!("no connection to the server within {d:?}")))
            }),
            None => connect.await,
        };
        let _ = tx.send(r);
    });
    rx.recv().map_err(|_| StoreError::Closed("the PostgreSQL runtime is gone".into()))?
}

/// Drives one connection until it ends.
async fn drive<S, T>(conn: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(e) = conn.await {
        tracing::error!("PostgreSQL connection: {e}");
    }
}

impl Conn {
    /// Opens the connection again when it is closed, unless an attempt failed less than
    /// [`REOPEN_EVERY`] ago; an attempt waits at most `within`.
    fn heal(
        &mut self,
        cfg: &Config,
        tls: &tokio_postgres_rustls::MakeRustlsConnect,
        within: Duration,
    ) {
        if !self.client.is_closed() || self.reopened.is_some_and(|t| t.elapsed() < REOPEN_EVERY) {
            return;
        }
        match open(cfg, tls, Some(within)) {
            Ok(c) => {
                self.client = c;
                self.reopened = None;
                tracing::warn!("PostgreSQL: the connection was lost; connected again");
            }
            Err(e) => {
                // From the attempt's end: one that waited its whole bound is not followed by
                // another at once.
                self.reopened = Some(Instant::now());
                tracing::error!("PostgreSQL: the connection is lost; connecting again: {e}");
            }
        }
    }
}

impl Pg {
    /// Connects to `url` (a `postgres://` URL or libpq's `key=value` form): TLS as its
    /// `sslmode` says, required for a server on the network by default ([`parse`]), the
    /// server's certificate verified against [`trust`].
    pub fn connect(url: &str) -> Result<Pg, StoreError> {
        Pg::connect_with(parse(url)?)
    }

    /// Connects with `cfg`.
    pub fn connect_with(cfg: Config) -> Result<Pg, StoreError> {
        Pg::connect_using(cfg, tls()?)
    }

    /// Connects with `cfg`, TLS made by `tls`.
    pub(crate) fn connect_using(
        mut cfg: Config,
        tls: tokio_postgres_rustls::MakeRustlsConnect,
    ) -> Result<Pg, StoreError> {
        cfg.application_name("sluice-control");
        let client = open(&cfg, &tls, None)?;
        Ok(Pg {
            conn: Mutex::new(Conn { client, reopened: None }),
            cfg,
            tls,
            heals: false,
            reopen_within: REOPEN_TIMEOUT,
            beside: None,
        })
    }

    /// This connection, opened again when the server has closed it (a store's).
    pub(crate) fn healing(mut self) -> Pg {
        self.heals = true;
        self
    }

    /// Another connection to the same database (a reader beside the writer).
    pub fn another(&self) -> Result<Pg, StoreError> {
        Pg::connect_with(self.cfg.clone())
    }

    /// The client, for a store's transactions (wait on them with [`wait`]).
    pub(crate) fn client(&mut self) -> &mut Client {
        let conn = self.conn.get_mut().unwrap_or_else(PoisonError::into_inner);
        if self.heals {
            conn.heal(&self.cfg, &self.tls, self.reopen_within);
        }
        &mut conn.client
    }

    /// The client, for a store's queries (held until the guard is dropped).
    pub(crate) fn client_ref(&self) -> ClientRef<'_> {
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        if self.heals {
            conn.heal(&self.cfg, &self.tls, self.reopen_within);
        }
        ClientRef(conn)
    }

    /// Whether the server answers on this connection (the watchdog's check).
    pub(crate) fn alive(&self) -> bool {
        wait(self.client_ref().simple_query("SELECT 1")).is_ok()
    }

    /// Brings store `store`'s schema up to date: applies the steps of `steps` not applied
    /// yet, in order, each in its own transaction, under an advisory lock so that two
    /// controls starting at once apply each step once.
    pub fn migrate(&mut self, store: &str, steps: &[&str]) -> Result<(), StoreError> {
        wait(async {
            let client = self.client();
            let there: bool = client
                .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
                .await?
                .try_get(0)?;
            if !there {
                // Under the migration lock: two controls creating the table at once would
                // race on the catalog (a unique violation, or "type already exists").
                let tx = client.transaction().await?;
                tx.execute(
                    "SELECT pg_advisory_xact_lock(hashtext('sluice-migrate:' || current_schema()))",
                    &[],
                )
                .await?;
                tx.batch_execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (
                         store TEXT NOT NULL, step INTEGER NOT NULL,
                         at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (store, step))",
                )
                .await?;
                tx.commit().await?;
            }
            for (i, step) in steps.iter().enumerate() {
                let n = i32::try_from(i + 1).unwrap_or(i32::MAX);
                let tx = client.transaction().await?;
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
mod tests {
    use super::*;

    #[test]
    fn a_server_on_the_network_gets_tls_unless_the_string_says_otherwise() {
        let mode = |u: &str| parse(u).unwrap().get_ssl_mode();
        assert_eq!(mode("host=db.corp dbname=sluice"), SslMode::Require);
        assert_eq!(mode("postgres://sluice@10.1.2.3/sluice"), SslMode::Require);
        assert_eq!(mode("host=db.corp sslmode=disable"), SslMode::Disable);
        assert_eq!(mode("host=/run/postgresql dbname=sluice"), SslMode::Prefer);
        assert_eq!(mode("host=localhost dbname=sluice"), SslMode::Prefer);
        assert_eq!(mode("postgres://sluice@[::1]/sluice"), SslMode::Prefer);
        assert!(parse("host=db port=notaport").is_err());
    }

    /// TLS to the test server (scripts/postgres serves it on loopback with a CA of its own):
    /// the server's certificate is verified, so Mozilla's roots refuse it.
    #[test]
    fn tls_to_the_server_is_verified() {
        let Some(_) = testing::fresh() else { return };
        let url = std::env::var("SLUICE_TEST_POSTGRES_TLS")
            .expect("SLUICE_TEST_POSTGRES_TLS (scripts/postgres writes it in DIR/tls.env)");
        let ca = std::env::var("SLUICE_TEST_POSTGRES_CA").expect("SLUICE_TEST_POSTGRES_CA");
        let cfg = parse(&url).unwrap();
        assert_eq!(cfg.get_ssl_mode(), SslMode::Require);
        let pg =
            Pg::connect_using(cfg.clone(), tls_trusting(Some(std::path::Path::new(&ca))).unwrap())
                .unwrap();
        let ssl: bool = wait(
            pg.client_ref()
                .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]),
        )
        .unwrap()
        .get(0);
        assert!(ssl);
        let refused = Pg::connect_using(cfg, tls_trusting(None).unwrap()).unwrap_err();
        assert!(refused.to_string().contains("TLS"), "{refused}");
    }

    /// Ends the server's backend of `pg` (as a restart or a failover would) and waits until
    /// the client has seen its connection close.
    fn end_backend(pg: &Pg, cfg: &Config) {
        let pid: i32 =
            wait(pg.client_ref().query_one("SELECT pg_backend_pid()", &[])).unwrap().get(0);
        let other = Pg::connect_with(cfg.clone()).unwrap();
        let ended: bool =
            wait(other.client_ref().query_one("SELECT pg_terminate_backend($1)", &[&pid]))
                .unwrap()
                .get(0);
        assert!(ended);
        let t = Instant::now();
        while !pg.conn.lock().unwrap().client.is_closed() {
            assert!(t.elapsed() < Duration::from_secs(10), "the client never saw the end");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn backend(pg: &Pg) -> Result<i32, tokio_postgres::Error> {
        Ok(wait(pg.client_ref().query_one("SELECT pg_backend_pid()", &[]))?.get(0))
    }

    /// A store's connection that the server ended is opened again by the next query, in the
    /// same schema; a reader's (a snapshot's, the active lock's session) is not: its state
    /// is gone, so its queries fail.
    #[test]
    fn a_store_connection_the_server_ended_is_opened_again() {
        let Some(cfg) = testing::fresh() else { return };
        let healing = Pg::connect_with(cfg.clone()).unwrap().healing();
        wait(
            healing
                .client_ref()
                .batch_execute("CREATE TABLE kept (n INT); INSERT INTO kept VALUES (7)"),
        )
        .unwrap();
        let before = backend(&healing).unwrap();
        end_backend(&healing, &cfg);
        assert_ne!(backend(&healing).unwrap(), before);
        let n: i32 =
            wait(healing.client_ref().query_one("SELECT n FROM kept", &[])).unwrap().get(0);
        assert_eq!(n, 7);

        let reader = Pg::connect_with(cfg.clone()).unwrap();
        end_backend(&reader, &cfg);
        assert!(backend(&reader).is_err());
        assert!(backend(&reader).is_err());
    }

    /// A reconnection waits at most its bound, all of it: here a server that accepts and never
    /// answers. The next attempt is due [`REOPEN_EVERY`] after the end of this one; the
    /// queries before fail at once.
    #[test]
    fn a_reconnection_is_bounded_and_attempts_are_spaced() {
        let Some(cfg) = testing::fresh() else { return };
        let mut pg = Pg::connect_with(cfg.clone()).unwrap().healing();
        end_backend(&pg, &cfg);
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        pg.cfg = format!("host=127.0.0.1 port={port} user=nobody sslmode=disable").parse().unwrap();
        pg.reopen_within = Duration::from_millis(300);
        let t = Instant::now();
        assert!(backend(&pg).is_err());
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(5), "{took:?}");
        let stamped = pg.conn.lock().unwrap().reopened.expect("an attempt was made");
        assert!(stamped >= t + Duration::from_millis(300), "stamped before the attempt ended");
        assert!(backend(&pg).is_err());
        assert_eq!(pg.conn.lock().unwrap().reopened, Some(stamped), "tried again at once");
        drop(silent);
    }

    /// The record store goes on after its connection was lost: the batch after is stored,
    /// and nothing stored before is lost.
    #[test]
    fn the_record_store_stores_after_its_connection_was_lost() {
        use crate::records::RecordStore;
        let Some(cfg) = testing::fresh() else { return };
        let mut s = records::PgRecordStore::open_with(cfg.clone()).unwrap();
        let row = |n: u64| {
            let text =
                format!("{{\"seq\":{n},\"type\":\"flow\",\"ts_ms\":{n},\"verdict\":\"allow\"}}");
            crate::record::Row::read_value(serde_json::from_str(&text).unwrap(), "dp").unwrap()
        };
        assert_eq!(s.ingest("dp", &[row(1), row(2)]).unwrap(), [true, true]);
        end_backend(&s.pg, &cfg);
        assert_eq!(s.ingest("dp", &[row(3)]).unwrap(), [true]);
        assert_eq!(s.count().unwrap(), 3);
        assert_eq!(s.last_seq("dp").unwrap(), Some(3));
        // A write that asks for the client inside the query it waits for (the inventory's
        // flush) reconnects too.
        end_backend(&s.pg, &cfg);
        s.write_inventory().unwrap();
        assert_eq!(s.count().unwrap(), 3);
    }
}

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
mod records_outbox;
mod records_read;
pub mod rules;
mod scrub;
