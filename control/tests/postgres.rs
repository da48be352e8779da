//! Control on PostgreSQL (`store = "postgres://…"`), as a fleet runs it: the real daemon on a
//! real server (scripts/test starts one; `SLUICE_TEST_POSTGRES` names it). Rule versions,
//! identities, the audit chain and a data plane's records go to the shared store; a second
//! control on the same store waits as a standby, and when the active one stops it takes over
//! with everything the first one stored, its chains verifying.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{ADMIN, ANALYST, Daemon, FakeDataplane, call, json, rules, sluicectl};

/// A connection string for a fresh schema on the test server and the schema's name, or
/// `None` when told to skip.
fn fresh_store() -> Option<(String, String)> {
    let url = match std::env::var("SLUICE_TEST_POSTGRES") {
        Ok(u) if u == "skip" => return None,
        Ok(u) => u,
        Err(_) => panic!(
            "SLUICE_TEST_POSTGRES is not set: start a server with `scripts/postgres start DIR` \
             and export what it prints (or set it to `skip`)"
        ),
    };
    Some(sluice_control::pg::fresh_schema(&url, "daemon").unwrap())
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

#[test]
fn a_standby_control_takes_over_the_shared_store_with_everything_the_active_one_stored() {
    let Some((store, _)) = fresh_store() else { return };
    let top = format!("store = \"{}\"", store.replace('\\', "\\\\").replace('"', "\\\""));
    let a = common::start_configured(&top, "", &[]);

    // Through A: a rule version, an identity, and a data plane's records.
    let file = a.dir.join("rules.toml");
    let default =
        std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../rules/default.toml"));
    std::fs::write(&file, rules(default)).unwrap();
    let (code, out) = sluicectl(&a, ADMIN, &["rules", "push", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let (code, body) = call(
        &a,
        "PUT",
        "/v1/identities/10.20.1.10",
        Some(ADMIN),
        Some(r#"{"user":"alice@corp","groups":["finance"]}"#),
    );
    assert_eq!(code, 200, "{body}");
    let mut dp = FakeDataplane::connect(&a, "edge-1", sluice_link::PROTO_VERSION);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let now = u64::try_from(now.as_millis()).unwrap();
    let records: Vec<serde_json::Value> = (1..=20u64)
        .map(|seq| {
            serde_json::json!({"seq": seq, "type": "flow", "event": "end", "ts_ms": now + seq,
                "src": "10.20.1.10", "identity": "finance", "sni": "api.openai.com",
                "verdict": if seq % 4 == 0 { "block" } else { "allow" }})
        })
        .collect();
    dp.send_records(&records);
    let stored = |d: &Daemon| {
        json(&call(d, "GET", "/v1/flows?limit=100&dataplane=edge-1", Some(ANALYST), None).1)
            ["records"]
            .as_array()
            .map_or(0, Vec::len)
    };
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while stored(&a) < 20 && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(stored(&a), 20);

    // B on the same store, with a copy of A's state directory (its keys): a standby.
    let b_dir = std::env::temp_dir().join(format!("sluice-control-standby-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&b_dir);
    copy_dir(&a.dir.join("state"), &b_dir.join("state"));
    let _ = std::fs::remove_file(b_dir.join("state/dataplane.sock"));
    let (child, port, log) = common::spawn_in(&b_dir, &top, "", &[]);
    let mut b = Daemon { child, port, dir: b_dir };
    assert!(
        common::wait_for(&log, "standby", Duration::from_secs(20)).is_some(),
        "B says it is a standby"
    );
    assert!(
        common::wait_for(&log, "sluice-control serving", Duration::from_secs(3)).is_none(),
        "a standby does not serve while A is active"
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", b.port)).is_err(), "nothing listens");

    // A stops; B takes over with what A stored.
    drop(dp);
    drop(a);
    assert!(
        common::wait_for(&log, "sluice-control serving", Duration::from_secs(30)).is_some(),
        "B serves once A is gone"
    );
    let history = json(&call(&b, "GET", "/v1/rules/history", Some(ANALYST), None).1);
    assert_eq!(history[0]["version"], 1, "{history}");
    let ids = call(&b, "GET", "/v1/identities", Some(ADMIN), None).1;
    assert!(ids.contains("alice@corp") && ids.contains("10.20.1.10"), "{ids}");
    assert_eq!(stored(&b), 20, "{}", call(&b, "GET", "/v1/flows?limit=3", Some(ANALYST), None).1);
    let blocked =
        json(&call(&b, "GET", "/v1/flows?verdict=block&dataplane=edge-1", Some(ANALYST), None).1);
    assert_eq!(blocked["records"].as_array().unwrap().len(), 5, "{blocked}");
    // The audit log A wrote is B's, one chain, and every chain verifies.
    let audit = call(&b, "GET", "/v1/audit", Some(ADMIN), None).1;
    assert!(audit.contains("rules.push") && audit.contains("identities.set"), "{audit}");
    let (code, v) = call(&b, "GET", "/v1/audit/verify", Some(ADMIN), None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(json(&v)["clean"], true, "{v}");

    // B's data plane carries on where the store stands: a replay stores nothing twice.
    let mut dp = FakeDataplane::connect(&b, "edge-1", sluice_link::PROTO_VERSION);
    dp.send_records(&records[15..]);
    let more: Vec<serde_json::Value> = (21..=25u64)
        .map(|seq| serde_json::json!({"seq": seq, "type": "flow", "event": "end", "ts_ms": now + seq, "src": "10.20.1.11"}))
        .collect();
    dp.send_records(&more);
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while stored(&b) < 25 && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(stored(&b), 25);
    let _ = b.child.kill();
}

/// Runs `sql` on the test server as the test's user.
fn admin_sql(sql: &str) -> Vec<tokio_postgres::Row> {
    let url = std::env::var("SLUICE_TEST_POSTGRES").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        c.query(sql, &[]).await.unwrap()
    })
}

/// An active control whose lock's session ends (killed, or its path to the server gone) stops
/// at once, and the standby takes over; it writes nothing meanwhile (its writes are fenced).
#[test]
fn an_active_control_that_loses_its_lock_stops_and_the_standby_takes_over() {
    let Some((store, schema)) = fresh_store() else { return };
    let top = format!("store = \"{}\"", store.replace('\\', "\\\\").replace('"', "\\\""));
    let mut a = common::start_configured(&top, "", &[]);
    let b_dir =
        std::env::temp_dir().join(format!("sluice-control-standby2-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&b_dir);
    copy_dir(&a.dir.join("state"), &b_dir.join("state"));
    let _ = std::fs::remove_file(b_dir.join("state/dataplane.sock"));
    let (child, port, log) = common::spawn_in(&b_dir, &top, "", &[]);
    let b = Daemon { child, port, dir: b_dir };
    assert!(common::wait_for(&log, "standby", Duration::from_secs(20)).is_some());

    // The lock's session, found by its key, is ended from the server's side.
    let lock = format!(
        "SELECT pid FROM pg_locks, (SELECT hashtextextended('sluice-control-active:{schema}', 0) AS k) l
         WHERE locktype = 'advisory' AND granted AND objsubid = 1
           AND classid = ((l.k >> 32) & 4294967295)::oid AND objid = (l.k & 4294967295)::oid"
    );
    let holders = admin_sql(&lock);
    assert_eq!(holders.len(), 1, "A holds the lock");
    let pid: i32 = holders[0].get(0);
    // (The test's role owns A's sessions: it may end them.)
    admin_sql(&format!("SELECT pg_terminate_backend({pid})"));
    let until = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(st) = a.child.try_wait().unwrap() {
            break st;
        }
        assert!(std::time::Instant::now() < until, "A did not stop after losing its lock");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success(), "A stops with an error: {status}");
    assert!(
        common::wait_for(&log, "sluice-control serving", Duration::from_secs(30)).is_some(),
        "B serves once A's lock is gone"
    );
    let holders = admin_sql(&lock);
    assert_eq!(holders.len(), 1, "B holds the lock");
    assert_ne!(holders[0].get::<_, i32>(0), pid);
    assert_eq!(call(&b, "GET", "/v1/status", Some(ANALYST), None).0, 200);
}
