//! One active control per shared store (ARCHITECTURE.md, "The stores"): a control on
//! PostgreSQL serves only while it holds the store's session advisory lock, on a connection
//! of its own kept for its life. A second control started on the same store is a standby:
//! it waits for the lock, and takes over when the active one stops (its session ends and
//! PostgreSQL releases the lock). An active control whose lock's session is gone (or does not
//! answer within a bound) stops. Until it does, its writes are fenced: every write
//! transaction of the stores first checks, in `pg_locks`, that the lock is still held by this
//! control's lock session ([`fence`]), so a control that lost its lock writes nothing beside
//! the one that took it.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::{Pg, runtime, wait};
use crate::store::StoreError;

/// The lock's key (`pg_try_advisory_lock` of its hash), with the store's schema: two
/// deployments in one database, each in its schema (`search_path`), have a lock each.
const LOCK: &str = "sluice-control-active:";

/// The active control's lock, held while this lives.
#[derive(Debug)]
pub struct Active {
    pg: Arc<Pg>,
    /// The lock session's backend and the lock's key.
    lock: (i32, i64),
}

/// The lock session's backend and the lock's key, once this process fences its writes
/// ([`Active::fence_writes`]).
static FENCE: OnceLock<(i32, i64)> = OnceLock::new();

/// Refuses a write transaction of a control that does not hold its store's lock any more
/// (a process that never took it, in tests and tools, is not fenced).
pub(crate) async fn fence(
    c: &(impl tokio_postgres::GenericClient + Sync),
) -> Result<(), StoreError> {
    match FENCE.get() {
        Some(lock) => fence_on(c, *lock).await,
        None => Ok(()),
    }
}

/// [`fence`] for the lock `(pid, key)`.
async fn fence_on(
    c: &(impl tokio_postgres::GenericClient + Sync),
    (pid, key): (i32, i64),
) -> Result<(), StoreError> {
    let held: bool = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted
                 AND pid = $1 AND objsubid = 1
                 AND classid = (($2::bigint >> 32) & 4294967295)::oid
                 AND objid = ($2::bigint & 4294967295)::oid)",
            &[&pid, &key],
        )
        .await?
        .try_get(0)?;
    if held { Ok(()) } else { Err(StoreError::NotActive) }
}

/// Takes the store's lock, waiting as a standby while another control holds it; `waiting`
/// is called before each wait of `every`.
pub fn acquire(
    mut cfg: tokio_postgres::Config,
    every: Duration,
    mut waiting: impl FnMut(),
) -> Result<Active, StoreError> {
    // A path to the server that goes silent ends the session within seconds, not hours.
    cfg.keepalives(true)
        .keepalives_idle(Duration::from_secs(5))
        .keepalives_interval(Duration::from_secs(2))
        .keepalives_retries(3);
    let pg = Pg::connect_with(cfg)?;
    loop {
        let row = wait(pg.client_ref().query_one(
            "SELECT pg_try_advisory_lock(k), pg_backend_pid(), k
             FROM (SELECT hashtextextended($1 || current_schema(), 0) AS k) AS l",
            &[&LOCK],
        ))?;
        if row.try_get::<_, bool>(0)? {
            return Ok(Active { pg: Arc::new(pg), lock: (row.try_get(1)?, row.try_get(2)?) });
        }
        waiting();
        std::thread::sleep(every);
    }
}

impl Active {
    /// From now on, every write transaction of this process's PostgreSQL stores checks that
    /// this lock is still held ([`fence`]).
    pub fn fence_writes(&self) {
        let _ = FENCE.set(self.lock);
    }

    /// Whether the lock's session answers within `within`.
    pub fn held(&self, within: Duration) -> bool {
        // The timer is the runtime's; the query is waited for on this thread.
        let _rt = runtime().enter();
        matches!(
            wait(tokio::time::timeout(within, self.pg.client_ref().simple_query("SELECT 1"))),
            Ok(Ok(_))
        )
    }

    /// Checks the session every `every` on a thread of its own; when it is gone or does not
    /// answer within `every`, calls `lost` (which should end the process: another control
    /// may be active now; its writes are fenced meanwhile).
    pub fn watch(self, every: Duration, lost: impl FnOnce() + Send + 'static) {
        std::thread::Builder::new()
            .name("sluice-active".into())
            .spawn(move || {
                while self.held(every) {
                    std::thread::sleep(every);
                }
                lost();
            })
            .map(|_| ())
            .unwrap_or_else(|e| panic!("cannot start the active lock's watch: {e}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_control_is_active_at_a_time_and_a_standby_takes_over() {
        let Some(cfg) = crate::pg::testing::fresh() else { return };
        let url = cfg;
        let first =
            acquire(url.clone(), Duration::from_millis(10), || panic!("nobody holds it")).unwrap();
        assert!(first.held(Duration::from_secs(5)));
        // A second waits while the first holds the lock.
        let (tx, rx) = std::sync::mpsc::channel();
        let u = url.clone();
        let second = std::thread::spawn(move || {
            let mut waits = 0;
            let a = acquire(u, Duration::from_millis(20), || {
                waits += 1;
                let _ = tx.send(());
            })
            .unwrap();
            (a, waits)
        });
        rx.recv_timeout(Duration::from_secs(10)).expect("the second waits");
        rx.recv_timeout(Duration::from_secs(10)).expect("and goes on waiting");
        // While the first holds it, a write fenced on it passes, one fenced on the second's
        // (waiting) session does not.
        let mut pg = Pg::connect_with(url.clone()).unwrap();
        let tx = wait(pg.client().transaction()).unwrap();
        assert!(wait(fence_on(&tx, first.lock)).is_ok());
        let not_held = (first.lock.0 + 1, first.lock.1);
        assert!(matches!(wait(fence_on(&tx, not_held)), Err(StoreError::NotActive)));
        drop(tx);
        let lock = first.lock;
        drop(first);
        let (second, waits) = second.join().unwrap();
        // Once the first is gone, its fence refuses: the second holds the lock.
        let tx = wait(pg.client().transaction()).unwrap();
        assert!(matches!(wait(fence_on(&tx, lock)), Err(StoreError::NotActive)));
        assert!(wait(fence_on(&tx, second.lock)).is_ok());
        drop(tx);
        assert!(waits >= 2 && second.held(Duration::from_secs(5)));
        drop(second);
        // Another schema is another store: its lock is free.
        let other = crate::pg::testing::fresh().unwrap();
        let third = acquire(other, Duration::from_millis(10), || panic!("another store's lock"));
        assert!(third.unwrap().held(Duration::from_secs(5)));
    }
}
