//! One active control per shared store (ARCHITECTURE.md, "The stores"): a control on
//! PostgreSQL serves only while it holds the store's session advisory lock, on a connection
//! of its own kept for its life. A second control started on the same store is a standby:
//! it waits for the lock, and takes over when the active one stops (its session ends and
//! PostgreSQL releases the lock). An active control whose lock connection fails stops at
//! once, before another could take over beside it.

use std::time::Duration;

use super::{Pg, wait};
use crate::store::StoreError;

/// The lock's key (`pg_try_advisory_lock` of its hash), with the store's schema: two
/// deployments in one database, each in its schema (`search_path`), have a lock each.
const LOCK: &str = "sluice-control-active:";

/// The active control's lock, held while this lives.
#[derive(Debug)]
pub struct Active {
    pg: Pg,
}

/// Takes the store's lock, waiting as a standby while another control holds it; `waiting`
/// is called before each wait of `every`.
pub fn acquire(
    cfg: tokio_postgres::Config,
    every: Duration,
    mut waiting: impl FnMut(),
) -> Result<Active, StoreError> {
    let pg = Pg::connect_with(cfg)?;
    loop {
        let row = wait(pg.client_ref().query_one(
            "SELECT pg_try_advisory_lock(hashtextextended($1 || current_schema(), 0))",
            &[&LOCK],
        ))?;
        if row.try_get::<_, bool>(0)? {
            return Ok(Active { pg });
        }
        waiting();
        std::thread::sleep(every);
    }
}

impl Active {
    /// Whether the lock's session is still there.
    pub fn held(&self) -> bool {
        wait(self.pg.client_ref().simple_query("SELECT 1")).is_ok()
    }

    /// Checks the session every `every` on a thread of its own; when it is gone, calls
    /// `lost` (which should end the process: another control may be active now).
    pub fn watch(self, every: Duration, lost: impl FnOnce() + Send + 'static) {
        std::thread::Builder::new()
            .name("sluice-active".into())
            .spawn(move || {
                while self.held() {
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
        assert!(first.held());
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
        drop(first);
        let (second, waits) = second.join().unwrap();
        assert!(waits >= 2 && second.held());
        drop(second);
        // Another schema is another store: its lock is free.
        let other = crate::pg::testing::fresh().unwrap();
        let third = acquire(other, Duration::from_millis(10), || panic!("another store's lock"));
        assert!(third.unwrap().held());
    }
}
