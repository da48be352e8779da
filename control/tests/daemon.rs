//! The control daemon end to end on loopback: the real binary, real TLS, curl as the client.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Stdio};

mod common;

use common::*;

#[test]
fn tokens_roles_rule_versions_and_audit() {
    let d = start();
    // No token, a wrong token: 401. The analyst may read, not push: 403.
    assert_eq!(call(&d, "GET", "/v1/health", None, None).0, 401);
    assert_eq!(call(&d, "GET", "/v1/health", Some("wrong"), None).0, 401);
    let (code, body) = call(&d, "GET", "/v1/health", Some(ANALYST), None);
    assert_eq!((code, json(&body)["status"].as_str()), (200, Some("ok")));
    let default = rules(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../rules/default.toml")));
    assert_eq!(call(&d, "PUT", "/v1/rules", Some(ANALYST), Some(&default)).0, 403);
    assert_eq!(call(&d, "GET", "/v1/rules", Some(ADMIN), None).0, 404);

    // Admin pushes the default rules: version 1.
    let (code, body) = call(&d, "PUT", "/v1/rules", Some(ADMIN), Some(&default));
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["version"], 1);

    // A broken rule set: 422 with line and column, and version 1 stays in force.
    let broken =
        default.replace("action = \"block\"\ndescription", "action = \"blok\"\ndescription");
    assert_ne!(broken, default);
    let (code, body) = call(&d, "PUT", "/v1/rules", Some(ADMIN), Some(&broken));
    assert_eq!(code, 422, "{body}");
    let err = &json(&body)["errors"][0];
    assert!(err["line"].as_u64().unwrap() > 0 && err["col"].as_u64().unwrap() > 0, "{body}");
    let (_, body) = call(&d, "GET", "/v1/rules", Some(ANALYST), None);
    assert_eq!(json(&body)["version"], 1);
    assert_eq!(call(&d, "POST", "/v1/rules/validate", Some(ANALYST), Some(&broken)).0, 422);
    assert_eq!(call(&d, "POST", "/v1/rules/validate", Some(ANALYST), Some(&default)).0, 200);

    // A second version, its diff, a rollback.
    let stricter = default.replace(
        "action = \"allow\"                # traffic",
        "action = \"block\"                # traffic",
    );
    assert_ne!(stricter, default);
    let (code, body) = call(&d, "PUT", "/v1/rules", Some(ADMIN), Some(&stricter));
    assert_eq!((code, json(&body)["version"].as_i64()), (200, Some(2)), "{body}");
    let (code, body) = call(&d, "GET", "/v1/rules/diff?from=1&to=2", Some(ANALYST), None);
    assert_eq!(code, 200, "{body}");
    assert!(json(&body)["diff"]["defaults"].is_array(), "{body}");
    let (code, body) = call(&d, "POST", "/v1/rules/rollback/1", Some(ADMIN), None);
    assert_eq!((code, json(&body)["version"].as_i64()), (200, Some(3)), "{body}");
    let (_, body) = call(&d, "GET", "/v1/rules", Some(ANALYST), None);
    assert_eq!(json(&body)["text"].as_str(), Some(default.as_str()));
    let (_, body) = call(&d, "GET", "/v1/rules/history", Some(ANALYST), None);
    assert_eq!(json(&body).as_array().unwrap().len(), 3);

    // The audit log: who did what, including the refused push; analysts may not read it.
    assert_eq!(call(&d, "GET", "/v1/audit", Some(ANALYST), None).0, 403);
    let (_, body) = call(&d, "GET", "/v1/audit", Some(ADMIN), None);
    let all: Vec<String> = json(&body)
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    let actions: Vec<&String> = all.iter().filter(|a| !a.starts_with("token.")).collect();
    assert_eq!(actions, ["rules.rollback", "rules.push", "rules.push.refused", "rules.push"]);
    // Token use: each token's first use (once an hour), and the refused call.
    assert!(all.iter().filter(|a| *a == "token.use").count() >= 2, "{all:?}");
    assert!(all.iter().any(|a| a == "token.refused"), "{all:?}");
    assert!(!body.contains(ADMIN), "tokens never reach the log");

    // Flows (empty store), metrics, no CA configured.
    let (code, body) = call(&d, "GET", "/v1/flows?identity=finance&limit=5", Some(ANALYST), None);
    assert_eq!((code, json(&body)["records"].as_array().map(Vec::len)), (200, Some(0)));
    let (code, body) = call(&d, "GET", "/metrics", Some(ANALYST), None);
    assert_eq!(code, 200);
    assert!(body.contains("sluice_policy_version 3"), "{body}");
    assert_eq!(call(&d, "GET", "/v1/ca.pem", Some(ANALYST), None).0, 404);
    assert_eq!(call(&d, "GET", "/v1/nope", Some(ANALYST), None).0, 404);
}

#[test]
fn bad_configurations_are_refused_clearly() {
    let p = Path::new("c.toml");
    let e = sluice_control::config::Config::parse(
        p,
        "listen = \"127.0.0.1:1\"\nstate_dir = \"/tmp/x\"\n",
    )
    .unwrap_err();
    assert!(e.to_string().contains("no admin token"), "{e}");
    let e = sluice_control::config::Config::parse(
        p,
        "listen = \"127.0.0.1:1\"\nstate_dir = \"/x\"\n[[tokens]]\nname = \"a\"\nrole = \"admin\"\nsha256 = \"plain-token\"\n",
    )
    .unwrap_err();
    assert!(e.to_string().contains("64 hex digits"), "{e}");
    let e = sluice_control::config::Config::parse(p, "listen = 5\n").unwrap_err();
    assert!(e.to_string().starts_with("c.toml: "), "{e}");
}

/// The fleet's quota counts: a stored request record that a quota counted is added up and
/// pushed to the data planes within a second, and a data plane connecting later gets them.
#[test]
fn quota_counts_are_added_up_and_pushed() {
    use sluice_link::Down;
    let d = start();
    let mut dp = FakeDataplane::connect(&d, "dp-q", sluice_link::PROTO_VERSION);
    let mut first = Vec::new();
    while !matches!(first.last(), Some(Down::Usage { .. })) {
        first.push(dp.recv().expect("the connect's messages"));
    }
    let now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
            as u64;
    let rec = |seq: u64, quota: Option<&str>| {
        serde_json::json!({"seq": seq, "type": "request", "ts_ms": now_ms, "verdict": "allow",
            "quota": quota, "input_tokens": 7, "output_tokens": 5})
    };
    dp.send_records(&[rec(1, Some("user:alice")), rec(2, None), rec(3, Some("user:alice"))]);
    assert_eq!(dp.recv(), Some(Down::Ack { upto: 3 }));
    let counts = match dp.recv() {
        Some(Down::Usage { counts }) => counts,
        other => panic!("expected the fleet's counts, got {other:?}"),
    };
    let day = counts.iter().find(|c| c.window == "day" && c.subject == "user:alice").unwrap();
    assert_eq!((day.requests, day.tokens), (2, 24));
    assert_eq!(counts.iter().filter(|c| c.subject == "user:alice").count(), 3, "{counts:?}");
    // A data plane connecting now is told at once.
    let mut other = FakeDataplane::connect(&d, "dp-q2", sluice_link::PROTO_VERSION);
    loop {
        match other.recv() {
            Some(Down::Usage { counts }) => {
                assert!(counts.iter().any(|c| c.subject == "user:alice" && c.requests == 2));
                break;
            }
            Some(_) => {}
            None => panic!("no counts on connect"),
        }
    }
}

#[test]
fn dataplane_link_policy_records_dedup_identities() {
    use sluice_link::{Down, Up};
    let d = start();
    let default = rules(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../rules/default.toml")));
    assert_eq!(call(&d, "PUT", "/v1/rules", Some(ADMIN), Some(&default)).0, 200);

    let mut dp = FakeDataplane::connect(&d, "dp-test", sluice_link::PROTO_VERSION);
    assert_eq!(
        dp.recv(),
        Some(Down::Welcome { proto: sluice_link::PROTO_VERSION, last_seq: None })
    );
    match dp.recv() {
        Some(Down::Policy { version: 1, text }) => assert_eq!(text, default),
        other => panic!("expected the current policy, got {other:?}"),
    }
    assert!(matches!(dp.recv(), Some(Down::Identities { .. })));
    let first_salt = match dp.recv() {
        Some(Down::Keys { keys, dlp_salt: Some(salt), .. }) if keys.is_empty() => salt,
        other => panic!("expected the keys and the deployment's salt, got {other:?}"),
    };
    assert_eq!(dp.recv(), Some(Down::Usage { counts: Vec::new() }));
    dp.send(&Up::PolicyAck { version: 1, error: None });
    // The data plane says what it enforces: control's current set, then a local rule file
    // (SIGHUP), which status and metrics flag and the audit log keeps.
    let policy_of = |d: &Daemon| {
        let (_, body) = call(d, "GET", "/v1/status", Some(ANALYST), None);
        let dp = json(&body)["dataplanes"][0].clone();
        (dp["policy_version"].as_i64(), dp["policy_current"].as_bool())
    };
    let sha = sluice_control::evidence::text_sha256(&default);
    dp.send(&Up::PolicyInForce { policy_version: Some(1), policy_sha256: sha.clone() });
    until_eq(|| policy_of(&d), (Some(1), Some(true)));
    let local = "ab".repeat(32);
    dp.send(&Up::PolicyInForce { policy_version: None, policy_sha256: local.clone() });
    until_eq(|| policy_of(&d), (None, Some(false)));
    let (_, body) = call(&d, "GET", "/metrics", Some(ANALYST), None);
    assert!(body.contains("sluice_dataplane_policy_diverged{dataplane=\"dp-test\"} 1"), "{body}");
    let (_, body) = call(&d, "GET", "/v1/audit", Some(ADMIN), None);
    let local_entry = json(&body)
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "rules.local")
        .cloned()
        .unwrap_or_else(|| panic!("no rules.local entry: {body}"));
    assert_eq!(local_entry["who"], "dataplane:dp-test", "{local_entry}");
    assert!(local_entry["detail"].as_str().unwrap().contains(&local), "{local_entry}");
    // Control's set again (as after the push control makes at the next connection).
    dp.send(&Up::PolicyInForce { policy_version: Some(1), policy_sha256: sha });
    until_eq(|| policy_of(&d), (Some(1), Some(true)));

    let flow = |seq: u64| serde_json::json!({"seq": seq, "type": "flow", "ts_ms": 1000 + seq, "src": "10.0.0.1", "verdict": "allow"});
    let request = serde_json::json!({"seq": 3, "type": "request", "ts_ms": 1003, "src": "10.0.0.1", "verdict": "block",
        "dlp_findings": [{"detector": "credit_card", "count": 1, "paths": ["$.messages[0].content"], "hashes": []}]});
    dp.send_records(&[flow(1), flow(2), request.clone()]);
    assert_eq!(dp.recv(), Some(Down::Ack { upto: 3 }));
    // A replay (after a reconnect) stores nothing twice.
    dp.send_records(&[flow(2), request]);
    assert_eq!(dp.recv(), Some(Down::Ack { upto: 3 }));
    let (_, body) = call(&d, "GET", "/v1/flows", Some(ANALYST), None);
    assert_eq!(json(&body)["records"].as_array().unwrap().len(), 2, "{body}");
    let (_, body) = call(&d, "GET", "/v1/requests?detector=credit_card", Some(ANALYST), None);
    let reqs = json(&body)["records"].as_array().unwrap().clone();
    assert_eq!(reqs.len(), 1, "{body}");
    assert_eq!(reqs[0]["dataplane"], "dp-test", "stored records name their data plane");
    let (_, body) = call(&d, "GET", "/v1/flows?dataplane=elsewhere", Some(ANALYST), None);
    assert_eq!(json(&body)["records"].as_array().unwrap().len(), 0, "{body}");

    // Apps: the inventory, its discoveries, the filters by app and operation, the gauge.
    let sdk = serde_json::json!({"seq": 5, "type": "request", "ts_ms": 1005, "src": "10.0.0.1",
        "identity": "finance", "user": "alice", "sni": "api.openai.com", "verdict": "allow",
        "app": "openai-python", "app_version": "3.57.0", "operation": "upload"});
    dp.send_records(&[sdk]);
    assert_eq!(dp.recv(), Some(Down::Ack { upto: 5 }));
    let (code, body) =
        call(&d, "GET", "/v1/inventory?app=openai-python&since=0", Some(ANALYST), None);
    assert_eq!(code, 200, "{body}");
    let rows = json(&body)["rows"].as_array().unwrap().clone();
    assert_eq!(
        (rows.len(), &rows[0]["user"], &rows[0]["version"]),
        (1, &serde_json::json!("alice"), &serde_json::json!("3.57.0")),
        "{body}"
    );
    let (_, body) = call(&d, "GET", "/v1/inventory?unknown=true", Some(ANALYST), None);
    assert_eq!(json(&body)["rows"].as_array().unwrap().len(), 0, "{body}");
    for bad in [
        "/v1/inventory?app=x&unknown=true",
        "/v1/inventory?colour=red",
        "/v1/inventory?since=soon",
        "/v1/discoveries?limit=0",
    ] {
        assert_eq!(call(&d, "GET", bad, Some(ANALYST), None).0, 400, "{bad}");
    }
    assert_eq!(call(&d, "GET", "/v1/inventory", None, None).0, 401);
    let (_, body) = call(&d, "GET", "/v1/discoveries", Some(ANALYST), None);
    let found = json(&body)["records"].as_array().unwrap().clone();
    assert_eq!(
        (found.len(), &found[0]["type"], &found[0]["event"]),
        (1, &serde_json::json!("discovery"), &serde_json::json!("new-app")),
        "{body}"
    );
    let (_, body) =
        call(&d, "GET", "/v1/requests?operation=upload&app=openai-python", Some(ANALYST), None);
    assert_eq!(json(&body)["records"].as_array().unwrap().len(), 1, "{body}");
    let (_, body) = call(&d, "GET", "/v1/requests?operation=chat", Some(ANALYST), None);
    assert_eq!(json(&body)["records"].as_array().unwrap().len(), 0, "{body}");
    let (_, body) = call(&d, "GET", "/metrics", Some(ANALYST), None);
    assert!(body.contains("sluice_inventory_hosts{app=\"openai-python\"} 1"), "{body}");

    // An alarm (the data plane lost records) lands in the audit log, once however often sent.
    let alarm = serde_json::json!({"seq": 4, "type": "alarm", "alarm": "records_dropped", "ts_ms": 1004,
        "records": 17, "dropped_total": 17});
    for _ in 0..2 {
        dp.send_records(std::slice::from_ref(&alarm));
        assert_eq!(dp.recv(), Some(Down::Ack { upto: 4 }));
    }
    let (_, body) = call(&d, "GET", "/v1/audit", Some(ADMIN), None);
    let alarms: Vec<_> = json(&body)
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "alarm.records_dropped")
        .cloned()
        .collect();
    assert_eq!(alarms.len(), 1, "{body}");
    assert_eq!(alarms[0]["who"], "dataplane:dp-test");
    assert!(alarms[0]["detail"].as_str().unwrap().contains("\"records\":17"), "{body}");

    // A second data plane with the same name, or another protocol version, is refused.
    let mut twin = FakeDataplane::connect(&d, "dp-test", sluice_link::PROTO_VERSION);
    assert!(
        matches!(twin.recv(), Some(Down::Refused { reason }) if reason.contains("already connected"))
    );
    let mut old = FakeDataplane::connect(&d, "dp-old", 0);
    assert!(matches!(old.recv(), Some(Down::Refused { reason }) if reason.contains("version")));

    // A rule push goes down the link and waits for the answer; a refusal is reported.
    let edited = default.replace("max_inspect_bytes = 8388608", "max_inspect_bytes = 4194304");
    let pusher = {
        let (port, dir) = (d.port, d.dir.clone());
        std::thread::spawn(move || {
            call_at(port, &dir, "PUT", "/v1/rules", Some(ADMIN), Some(&edited))
        })
    };
    match dp.recv() {
        Some(Down::Policy { version: 2, .. }) => {}
        other => panic!("expected version 2, got {other:?}"),
    }
    dp.send(&Up::PolicyAck { version: 2, error: Some("line 1: no".into()) });
    let (code, body) = pusher.join().unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["dataplanes"][0]["status"], "refused", "{body}");

    // The identity feed goes down whole on every change; the call answers with the ack.
    let feeder = {
        let (port, dir) = (d.port, d.dir.clone());
        std::thread::spawn(move || {
            let body = r#"{"user": "gina@corp", "groups": ["finance"], "ttl": 60}"#;
            call_at(port, &dir, "PUT", "/v1/identities/10.0.0.9", Some(ADMIN), Some(body))
        })
    };
    let generation = match dp.recv() {
        Some(Down::Identities { generation, entries }) => {
            assert_eq!(entries.len(), 1);
            assert_eq!(
                (entries[0].user.as_str(), entries[0].groups.as_slice()),
                ("gina@corp", &["finance".to_owned()][..])
            );
            assert!(entries[0].expires_at.is_some());
            generation
        }
        other => panic!("expected the identity feed, got {other:?}"),
    };
    dp.send(&Up::IdentitiesAck { generation, entries: 1 });
    let (code, body) = feeder.join().unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["dataplanes"][0]["status"], "applied", "{body}");
    // A provider key goes down the link (to the data plane only: no API answer holds it);
    // an analyst cannot store one.
    let key = "sk-proj-DAEMONTESTKEY0123456789";
    let refused = call(&d, "PUT", "/v1/keys/openai-prod", Some(ANALYST), Some(key));
    assert_eq!(refused.0, 403, "{}", refused.1);
    let setter = {
        let (port, dir) = (d.port, d.dir.clone());
        std::thread::spawn(move || {
            call_at(port, &dir, "PUT", "/v1/keys/openai-prod", Some(ADMIN), Some(key))
        })
    };
    let generation = match dp.recv() {
        Some(Down::Keys { generation, keys, virtual_keys, dlp_salt }) => {
            assert_eq!(dlp_salt.as_ref(), Some(&first_salt), "the salt stays until rotated");
            assert_eq!(
                (keys.len(), keys[0].name.as_str(), keys[0].secret.expose()),
                (1, "openai-prod", key)
            );
            assert!(virtual_keys.is_empty());
            generation
        }
        other => panic!("expected the keys, got {other:?}"),
    };
    dp.send(&Up::KeysAck { generation, keys: 1, dlp_salt: None });
    let (code, body) = setter.join().unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["dataplanes"][0]["status"], "applied", "{body}");
    assert!(!body.contains("DAEMONTESTKEY"), "{body}");
    for path in ["/v1/keys", "/v1/audit"] {
        let (code, body) = call(&d, "GET", path, Some(ADMIN), None);
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("openai-prod") && !body.contains("DAEMONTESTKEY"), "{path}: {body}");
    }
    // The DLP salt: rotated by an admin only, pushed, listed by id (never the salt).
    assert_eq!(call(&d, "POST", "/v1/dlp/salt/rotate", Some(ANALYST), None).0, 403);
    let rotator = {
        let (port, dir) = (d.port, d.dir.clone());
        std::thread::spawn(move || {
            call_at(port, &dir, "POST", "/v1/dlp/salt/rotate", Some(ADMIN), None)
        })
    };
    let (generation, salt) = match dp.recv() {
        Some(Down::Keys { generation, dlp_salt: Some(salt), .. }) => (generation, salt),
        other => panic!("expected the keys with a new salt, got {other:?}"),
    };
    assert_ne!(salt.id, first_salt.id);
    assert_ne!(salt.salt, first_salt.salt);
    dp.send(&Up::KeysAck { generation, keys: 1, dlp_salt: Some(salt.id.clone()) });
    let (code, body) = rotator.join().unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["result"]["salt"]["id"], salt.id.as_str(), "{body}");
    assert_eq!(json(&body)["result"]["retired"], first_salt.id.as_str(), "{body}");
    assert_eq!(json(&body)["dataplanes"][0]["status"], "applied", "{body}");
    for path in ["/v1/dlp/salt", "/v1/audit"] {
        let (code, body) = call(&d, "GET", path, Some(ADMIN), None);
        assert_eq!(code, 200, "{body}");
        assert!(body.contains(&salt.id) && body.contains(&first_salt.id), "{path}: {body}");
        for secret in [salt.salt.expose(), first_salt.salt.expose()] {
            assert!(!body.contains(secret), "{path}: {body}");
        }
    }
    assert_eq!(call(&d, "GET", "/v1/dlp/salt", Some(ANALYST), None).0, 403);
    let (_, body) = call(&d, "GET", "/v1/status", Some(ANALYST), None);
    assert_eq!(json(&body)["dataplanes"][0]["dlp_salt"], salt.id.as_str(), "{body}");
    let (_, body) = call(&d, "GET", "/v1/status", Some(ANALYST), None);
    let st = json(&body);
    assert_eq!(st["dataplanes"][0]["name"], "dp-test");
    assert_eq!(st["dataplanes"][0]["connected"], true);
    assert_eq!(st["dataplanes"][0]["policy_version"], 1, "version 2 was refused");

    // Reconnecting: control says where its records end.
    drop(dp);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut dp = FakeDataplane::connect(&d, "dp-test", sluice_link::PROTO_VERSION);
    assert_eq!(
        dp.recv(),
        Some(Down::Welcome { proto: sluice_link::PROTO_VERSION, last_seq: Some(5) })
    );
}

/// Slow and greedy API clients cannot hold the control plane: a connection that sends part of
/// a request head is closed after the head timeout (10 s), and one client address gets at most
/// 32 connections (the 33rd is closed at once, and slots come back when connections end).
#[test]
fn slow_heads_are_cut_and_connections_per_client_are_bounded() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let d = start();
    let addr = format!("127.0.0.1:{}", d.port);
    let held: Vec<std::net::TcpStream> =
        (0..32).map(|_| std::net::TcpStream::connect(&addr).unwrap()).collect();
    let mut extra = std::net::TcpStream::connect(&addr).unwrap();
    extra.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut b = [0u8; 16];
    assert!(matches!(extra.read(&mut b), Ok(0)), "the 33rd connection is closed at once");
    drop(held);
    std::thread::sleep(Duration::from_millis(500));
    let (status, _) = call(&d, "GET", "/v1/status", Some(ANALYST), None);
    assert_eq!(status, 200, "slots come back");

    // Over TLS, at the same time: part of a head then silence, and nothing at all.
    let client = |first: &[u8]| {
        let mut s = Command::new("openssl")
            .args(["s_client", "-quiet", "-ign_eof", "-connect", &addr])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = s.stdin.take().unwrap();
        stdin.write_all(first).unwrap();
        stdin.flush().unwrap();
        (s, stdin)
    };
    let mut clients = [client(b"GET /v1/status HTTP/1.1\r\nHost: control\r\n"), client(b"")];
    let t0 = Instant::now();
    for (i, (s, _)) in clients.iter_mut().enumerate() {
        let closed = loop {
            if s.try_wait().unwrap().is_some() {
                break true;
            }
            if t0.elapsed() > Duration::from_secs(25) {
                let _ = s.kill();
                break false;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(closed, "client {i} (a partial head, then a silent one) was held past 25 s");
    }
    assert!(t0.elapsed() >= Duration::from_secs(8), "closed after {:?}", t0.elapsed());
}

/// (status, body) of a request with the headers given as they are (curl, as [`call`]).
fn call_with_headers(
    d: &Daemon,
    method: &str,
    path: &str,
    headers: &[&str],
    body: Option<&str>,
) -> (u16, String) {
    let cert = d.dir.join("state").join("api.crt");
    let mut c = Command::new("curl");
    c.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "--cacert"]).arg(&cert).args([
        "--resolve",
        &format!("localhost:{}:127.0.0.1", d.port),
        "-X",
        method,
    ]);
    for h in headers {
        c.args(["-H", h]);
    }
    if let Some(b) = body {
        c.args(["--data-binary", b]);
    }
    let out = c.arg(format!("https://localhost:{}{path}", d.port)).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_owned())
}

#[test]
fn edges_are_refused_and_every_error_is_json() {
    let d = start();
    let err = |(code, body): (u16, String)| -> (u16, String) {
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|_| panic!("{code}: not JSON: {body}"));
        (code, v["error"].as_str().unwrap_or_else(|| panic!("no error: {body}")).to_owned())
    };
    // Pages: limit 0 and a negative or zero cursor are refused, not read as 1 or as "none".
    for q in ["limit=0", "limit=1001", "cursor=-1", "cursor=0", "cursor=x"] {
        let (code, msg) = err(call(&d, "GET", &format!("/v1/flows?{q}"), Some(ANALYST), None));
        assert_eq!(code, 400, "{q}: {msg}");
    }
    assert_eq!(call(&d, "GET", "/v1/flows?limit=1000&cursor=5", Some(ANALYST), None).0, 200);
    // Two Authorization headers: refused whichever comes first.
    for pair in [[ADMIN, "wrong"], ["wrong", ADMIN]] {
        let auth = pair.map(|t| format!("Authorization: Bearer {t}"));
        let (code, msg) =
            err(call_with_headers(&d, "GET", "/v1/health", &[&auth[0], &auth[1]], None));
        assert_eq!(code, 400, "{msg}");
        assert!(msg.contains("Authorization"), "{msg}");
    }
    // The identity feed takes one host's address, not the unspecified, broadcast or a
    // multicast one (nor their IPv4-mapped forms).
    let entry = r#"{"user": "mallory@corp", "groups": ["finance"]}"#;
    for ip in ["0.0.0.0", "::", "255.255.255.255", "224.0.0.1", "ff02::1", "::ffff:255.255.255.255"]
    {
        let path = format!("/v1/identities/{}", ip.replace(':', "%3A"));
        let (code, msg) = err(call(&d, "PUT", &path, Some(ADMIN), Some(entry)));
        assert_eq!(code, 422, "{ip}: {msg}");
    }
    let bulk =
        r#"{"identities": [{"ip": "10.0.0.1", "user": "a"}, {"ip": "0.0.0.0", "user": "b"}]}"#;
    let (code, body) = call(&d, "POST", "/v1/identities", Some(ADMIN), Some(bulk));
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("identities[1]"), "{body}");
    let (_, body) = call(&d, "GET", "/v1/identities", Some(ADMIN), None);
    assert!(!body.contains("10.0.0.1"), "nothing changed: {body}");
    // What axum answers itself is JSON too: a body past the limit, a malformed path, a
    // method the route does not take, an unauthenticated call.
    let big = d.dir.join("big.toml");
    std::fs::write(&big, vec![b'#'; 9 << 20]).unwrap();
    // (Expect: 100-continue, so curl sends nothing of a body refused by its length alone and
    // reads the answer, not a reset.)
    let auth = format!("Authorization: Bearer {ADMIN}");
    let headers = [auth.as_str(), "Expect: 100-continue"];
    let body = format!("@{}", big.display());
    let (code, _) = err(call_with_headers(&d, "PUT", "/v1/rules", &headers, Some(&body)));
    assert_eq!(code, 413);
    let (code, _) = err(call(&d, "POST", "/v1/rules/rollback/abc", Some(ADMIN), None));
    assert_eq!(code, 400);
    let (code, _) = err(call(&d, "DELETE", "/v1/rules/history", Some(ADMIN), None));
    assert_eq!(code, 405);
    let (code, _) = err(call(&d, "GET", "/v1/health", None, None));
    assert_eq!(code, 401);
}

/// Polls `f` (every 50 ms, up to 10 s) until it answers `want`.
fn until_eq<T: PartialEq + std::fmt::Debug>(f: impl Fn() -> T, want: T) {
    let start = std::time::Instant::now();
    loop {
        let got = f();
        if got == want {
            return;
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(10), "{got:?}, not {want:?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn tells_systemd_it_serves_and_lives() {
    use std::os::unix::net::UnixDatagram;
    let dir = std::env::temp_dir().join(format!("sluice-control-notify-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let p = path.to_str().unwrap();
    let d = start_with_env("", &[("NOTIFY_SOCKET", p), ("WATCHDOG_USEC", "400000")]);
    let mut buf = [0u8; 64];
    let mut said = || {
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(said(), "READY=1");
    // It serves once it said so; then it pings at half the watchdog's interval.
    assert_eq!(call(&d, "GET", "/v1/health", Some(ANALYST), None).0, 200);
    let at = std::time::Instant::now();
    assert_eq!(said(), "WATCHDOG=1");
    assert_eq!(said(), "WATCHDOG=1");
    assert!(at.elapsed() < std::time::Duration::from_secs(5));
    drop(d);
    // A watchdog meant for another process is not this one's.
    let d = start_with_env(
        "",
        &[("NOTIFY_SOCKET", p), ("WATCHDOG_USEC", "200000"), ("WATCHDOG_PID", "1")],
    );
    assert_eq!(said(), "READY=1");
    sock.set_read_timeout(Some(std::time::Duration::from_millis(600))).unwrap();
    assert!(sock.recv(&mut buf).is_err(), "no ping for another process's watchdog");
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}
