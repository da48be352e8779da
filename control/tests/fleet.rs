//! The fleet as an operator and an attacker meet it: `sluicectl fleet init / enrol / list /
//! revoke` against the real daemon, and data planes on the link's TLS listener: an enrolled
//! one is admitted under its own name only; a certificate of another CA, one the fleet CA
//! signed that control never issued, and a revoked one are refused; revocation ends a live
//! link; the records of each data plane are stored under its name.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{ADMIN, ANALYST, Daemon, FakeDataplane, call, json, sluicectl};
use sluice_link::Down;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Reads until control's welcome; panics on a refusal or the end.
fn welcomed(dp: &mut FakeDataplane) {
    loop {
        match dp.recv() {
            Some(Down::Welcome { .. }) => return,
            Some(Down::Refused { reason }) => panic!("refused: {reason}"),
            None => panic!("the link closed before a welcome"),
            Some(_) => {}
        }
    }
}

/// Reads until control refuses (its reason) or closes (`None`), skipping what else it says.
fn refused(dp: &mut FakeDataplane) -> Option<String> {
    loop {
        match dp.recv() {
            Some(Down::Refused { reason }) => return Some(reason),
            None => return None,
            Some(_) => {}
        }
    }
}

fn dir(d: &Daemon, name: &str) -> PathBuf {
    d.dir.join(name)
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn enrolled_dataplanes_are_admitted_under_their_names_and_strangers_and_the_revoked_are_not() {
    let link = free_port();
    let d = common::start_configured(&format!("link_listen = \"127.0.0.1:{link}\""), "", &[]);
    let edge1 = dir(&d, "edge-1");

    // Before `fleet init` there is no CA: nothing to enrol with, the listener admits nobody.
    let (code, out) = sluicectl(&d, ADMIN, &["fleet", "enrol", "edge-1", "--out", "x"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("fleet init"), "{out}");
    assert_eq!(
        json(&call(&d, "GET", "/v1/fleet", Some(ANALYST), None).1)["ca_sha256"],
        json("null")
    );
    // Only an admin makes the CA, once.
    assert_eq!(call(&d, "POST", "/v1/fleet/init", Some(ANALYST), None).0, 403);
    assert_eq!(call(&d, "POST", "/v1/fleet/init", None, None).0, 401);
    let (code, out) = sluicectl(&d, ADMIN, &["fleet", "init"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("fleet CA made"), "{out}");
    let (code, out) = sluicectl(&d, ADMIN, &["fleet", "init"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("HTTP 409") && out.contains("never replaced"), "{out}");
    assert_eq!(mode(&d.dir.join("state/fleet/ca.key")), 0o600);

    // Enrolment writes the data plane's files; the key never left this host.
    let (code, out) =
        sluicectl(&d, ADMIN, &["fleet", "enrol", "edge-1", "--out", edge1.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(mode(&edge1.join("dataplane.key")), 0o600);
    let (_, audit) = call(&d, "GET", "/v1/audit", Some(ADMIN), None);
    assert!(audit.contains("fleet.enrol") && audit.contains("fleet.init"), "{audit}");
    // An analyst cannot enrol; a name enrolled already, or a directory holding a key, is
    // refused; so is a name that cannot be one.
    let (code, out) = sluicectl(&d, ANALYST, &["fleet", "enrol", "edge-9", "--out", "/tmp/x9"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("HTTP 403"), "{out}");
    let again = dir(&d, "again");
    let (code, out) =
        sluicectl(&d, ADMIN, &["fleet", "enrol", "edge-1", "--out", again.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("HTTP 409") && out.contains("enrolled already"), "{out}");
    let (code, out) =
        sluicectl(&d, ADMIN, &["fleet", "enrol", "edge-2", "--out", edge1.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("holds a data plane key already"), "{out}");
    let body = r#"{"name":"../x","csr":"-----BEGIN CERTIFICATE REQUEST-----"}"#;
    let (code, out) = call(&d, "POST", "/v1/fleet/enrol", Some(ADMIN), Some(body));
    assert_eq!(code, 422, "{out}");
    let body = r#"{"name":"edge-3","csr":"not a request"}"#;
    let (code, out) = call(&d, "POST", "/v1/fleet/enrol", Some(ADMIN), Some(body));
    assert_eq!(code, 422, "{out}");

    // Enrolled but not connected: a push lists it offline (it gets the rules when it
    // connects), status and metrics show it down.
    let text = common::rules(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules/default.toml"),
    );
    let (code, body) = call(&d, "PUT", "/v1/rules", Some(ADMIN), Some(&text));
    assert_eq!(code, 200, "{body}");
    let answers = &json(&body)["dataplanes"];
    assert_eq!(answers, &json(r#"[{"dataplane": "edge-1", "status": "offline"}]"#), "{body}");
    let status = json(&call(&d, "GET", "/v1/status", Some(ANALYST), None).1);
    assert_eq!(status["dataplanes"][0]["name"], "edge-1", "{status}");
    assert_eq!(status["dataplanes"][0]["connected"], false, "{status}");
    let (_, metrics) = call(&d, "GET", "/metrics", Some(ANALYST), None);
    assert!(metrics.contains("sluice_dataplane_connected{dataplane=\"edge-1\"} 0"), "{metrics}");

    // The enrolled data plane is admitted, and its records are stored under its name.
    let mut dp = FakeDataplane::connect_tls(link, &edge1, "edge-1").unwrap();
    welcomed(&mut dp);
    let flow = serde_json::json!({"seq": 1, "type": "flow", "ts_ms": 1000, "src": "10.0.0.1", "verdict": "allow"});
    dp.send_records(&[flow]);
    let upto = loop {
        match dp.recv() {
            Some(Down::Ack { upto }) => break upto,
            Some(_) => {}
            None => panic!("the link closed"),
        }
    };
    assert_eq!(upto, 1);
    let (_, body) = call(&d, "GET", "/v1/flows?dataplane=edge-1", Some(ANALYST), None);
    assert_eq!(json(&body)["records"].as_array().unwrap().len(), 1, "{body}");
    let status = json(&call(&d, "GET", "/v1/status", Some(ANALYST), None).1);
    let me = &status["dataplanes"][0];
    assert_eq!(
        (&me["name"], &me["transport"], &me["connected"]),
        (&json("\"edge-1\""), &json("\"tls\""), &json("true"))
    );
    assert!(me["remote"].as_str().unwrap().starts_with("127.0.0.1:"), "{status}");
    let (code, out) = sluicectl(&d, ANALYST, &["fleet", "list"]);
    assert_eq!(code, 0, "{out}");
    let row = out.lines().find(|l| l.starts_with("edge-1")).unwrap();
    assert!(row.trim_end().ends_with("yes"), "{out}");

    // Its certificate cannot say hello as another data plane.
    let mut other = FakeDataplane::connect_tls(link, &edge1, "edge-2").unwrap();
    let reason = refused(&mut other).unwrap();
    assert!(reason.contains("issued to edge-1, not edge-2"), "{reason}");

    // A certificate from another fleet's CA fails the handshake.
    let foreign_ca = dir(&d, "foreign-ca");
    let foreign = sluice_certs::fleet::FleetCa::create(&foreign_ca).unwrap();
    let stranger = dir(&d, "stranger");
    let (k, csr) = sluice_certs::fleet::dataplane_request("edge-1").unwrap();
    let cert = foreign.sign_dataplane("edge-1", &csr).unwrap().cert_pem;
    // (It trusts our control, so only its own certificate is in question.)
    let ours = std::fs::read_to_string(d.dir.join("state/fleet/ca.crt")).unwrap();
    sluice_certs::fleet::write_enrolment(&stranger, &ours, &cert, &k).unwrap();
    // (TLS 1.3: the client may finish its side before control checks its certificate, so
    // the refusal is the handshake's failure or the alert that follows it.)
    let failure = match FakeDataplane::connect_tls(link, &stranger, "edge-1") {
        Err(e) => e,
        Ok(mut s) => loop {
            match s.try_recv() {
                Ok(Some(Down::Welcome { .. })) => panic!("a stranger was welcomed"),
                Ok(Some(_)) => {}
                Ok(None) => break "closed".to_owned(),
                Err(e) => break e.to_string(),
            }
        },
    };
    assert!(failure.contains("UnknownCA") || failure.contains("alert"), "{failure}");
    let status = json(&call(&d, "GET", "/v1/status", Some(ANALYST), None).1);
    assert_eq!(status["dataplanes"].as_array().unwrap().len(), 1, "{status}");

    // A certificate the fleet CA signed that control never issued (the CA key stolen, or a
    // record deleted) is refused after the handshake.
    let ca = sluice_certs::fleet::FleetCa::load(&d.dir.join("state/fleet")).unwrap();
    let forged = dir(&d, "forged");
    let (k, csr) = sluice_certs::fleet::dataplane_request("edge-1").unwrap();
    let cert = ca.sign_dataplane("edge-1", &csr).unwrap().cert_pem;
    sluice_certs::fleet::write_enrolment(&forged, ca.cert_pem(), &cert, &k).unwrap();
    let mut f = FakeDataplane::connect_tls(link, &forged, "edge-1").unwrap();
    let reason = refused(&mut f).unwrap();
    assert!(reason.contains("was not issued by this control"), "{reason}");

    // A connection admitted before a revocation that says hello after it is refused: the
    // certificate is checked again once its session is in place.
    let slow = FakeDataplane::handshake_tls(link, &edge1).unwrap();
    // Revocation ends the live link, and the next connection is refused.
    let (code, out) = sluicectl(&d, ADMIN, &["fleet", "revoke", "edge-1"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("its link was closed"), "{out}");
    let reason = refused(&mut dp).unwrap();
    assert!(reason.contains("revoked"), "{reason}");
    assert_eq!(dp.recv(), None, "the link ends");
    let mut back = FakeDataplane::connect_tls(link, &edge1, "edge-1").unwrap();
    let reason = refused(&mut back).unwrap();
    assert!(reason.contains("revoked"), "{reason}");
    let (_, metrics) = call(&d, "GET", "/metrics", Some(ANALYST), None);
    assert!(metrics.contains("sluice_link_refused_total 2"), "{metrics}");
    let mut slow = slow.hello("edge-1");
    let reason = refused(&mut slow).unwrap();
    assert!(reason.contains("revoked"), "{reason}");
    let status = json(&call(&d, "GET", "/v1/status", Some(ANALYST), None).1);
    assert_eq!(status["dataplanes"][0]["connected"], false, "{status}");
    let (code, out) = sluicectl(&d, ADMIN, &["fleet", "revoke", "edge-1"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("HTTP 404"), "{out}");

    // Enrolled again (a new key), the data plane is back.
    let renewed = dir(&d, "renewed");
    let (code, out) =
        sluicectl(&d, ADMIN, &["fleet", "enrol", "edge-1", "--out", renewed.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let mut dp = FakeDataplane::connect_tls(link, &renewed, "edge-1").unwrap();
    welcomed(&mut dp);
    // Replacing its certificate closes that link too.
    let newer = dir(&d, "newer");
    let (code, out) = sluicectl(
        &d,
        ADMIN,
        &["fleet", "enrol", "edge-1", "--replace", "--out", newer.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}");
    assert!(refused(&mut dp).unwrap().contains("replaced"));
    let (_, audit) = call(&d, "GET", "/v1/audit", Some(ADMIN), None);
    assert!(audit.contains("fleet.revoke"), "{audit}");
}
