//! The data plane's link client against a hand-driven control end: it says hello, applies a
//! pushed policy and identity feed, sends spooled records once welcomed, resumes after control's
//! last stored record, and forgets what control acknowledged.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use sluice_dataplane::link::{self, Enforced, LinkConfig, Spool, compile_pushed, text_sha256};
use sluice_link::{Decoder, Down, Identity, PROTO_VERSION, Up, UpMessage, encode};
use sluice_rules::IdentityOverlay;

struct Control {
    sock: UnixStream,
    dec: Decoder,
}

impl Control {
    fn send(&mut self, m: &Down) {
        let mut buf = Vec::new();
        encode(m, &mut buf).unwrap();
        self.sock.write_all(&buf).unwrap();
    }

    fn recv(&mut self) -> UpMessage {
        let mut buf = [0u8; 65536];
        loop {
            if let Some(m) = self.dec.up_message().unwrap() {
                return m;
            }
            let n = self.sock.read(&mut buf).unwrap();
            assert!(n > 0, "the data plane closed the link");
            self.dec.push(&buf[..n]);
        }
    }
}

/// A record's `seq`.
fn seq(record: &str) -> u64 {
    serde_json::from_str::<serde_json::Value>(record).unwrap()["seq"].as_u64().unwrap()
}

#[test]
fn link_client_round_trip() {
    let dir = std::env::temp_dir().join(format!("sluice-link-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("control.sock");
    let listener = UnixListener::bind(&path).unwrap();

    let boot = "[defaults]\naction = \"allow\"\n";
    let policy = Arc::new(ArcSwap::from_pointee(compile_pushed(boot).unwrap()));
    let overlay = Arc::new(ArcSwap::from_pointee(IdentityOverlay::default()));
    let enforced =
        Arc::new(Enforced::new(policy.clone(), overlay.clone(), &dir, None, text_sha256(boot)));
    let spool = Arc::new(Mutex::new(Spool::open(&dir.join("spool"), 1 << 30).unwrap()));
    // Records emitted before control is reachable wait in the spool (seq 1..=3).
    spool
        .lock()
        .unwrap()
        .append(&(1..=3).map(|i| format!("{{\"type\":\"flow\",\"i\":{i}}}")).collect::<Vec<_>>())
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let connected = Arc::new(AtomicBool::new(false));
    let client = {
        let cfg = LinkConfig { to: link::Endpoint::Unix(path.clone()), name: "edge-1".into() };
        let (s, e, c, st) = (spool.clone(), enforced.clone(), connected.clone(), stop.clone());
        std::thread::spawn(move || link::run(cfg, s, e, c, st))
    };

    let (sock, _) = listener.accept().unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut c = Control { sock, dec: Decoder::new() };
    match c.recv() {
        UpMessage::Other(Up::Hello {
            proto,
            dataplane,
            next_seq,
            policy_version,
            policy_sha256,
        }) => {
            assert_eq!((proto, dataplane.as_str(), next_seq), (PROTO_VERSION, "edge-1", 4));
            assert_eq!((policy_version, policy_sha256), (None, text_sha256(boot)));
        }
        other => panic!("expected a hello, got {other:?}"),
    }
    // Control already holds record 1: the data plane sends from 2 on.
    c.send(&Down::Welcome { proto: PROTO_VERSION, last_seq: Some(1) });
    let block = "[defaults]\naction = \"block\"\n";
    c.send(&Down::Policy { version: 7, text: block.into() });
    let mut seqs = Vec::new();
    let (mut acked_policy, mut in_force) = (false, false);
    while !(acked_policy && in_force && seqs.len() == 2) {
        match c.recv() {
            UpMessage::Records(records) => seqs.extend(records.iter().map(seq)),
            UpMessage::Other(Up::PolicyAck { version: 7, error: None }) => {
                assert!(in_force, "the acknowledgement follows what is in force");
                acked_policy = true;
            }
            // What is in force after the push, said before it is acknowledged.
            UpMessage::Other(Up::PolicyInForce { policy_version, policy_sha256 }) => {
                assert!(!acked_policy, "what is in force comes before the acknowledgement");
                assert_eq!((policy_version, policy_sha256), (Some(7), text_sha256(block)));
                in_force = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seqs, vec![2, 3]);
    assert_eq!(enforced.current(), (Some(7), text_sha256(block)));
    assert_eq!(link::saved_policy(&dir), Some((7, block.to_owned())), "kept for a restart");

    // A broken push is refused with the reason; the policy in force stays.
    c.send(&Down::Policy { version: 8, text: "[defaults]\naction = 3\n".into() });
    match c.recv() {
        UpMessage::Other(Up::PolicyAck { version: 8, error: Some(e) }) => {
            assert!(e.contains("pushed rules:2:"), "{e}")
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(enforced.current().0, Some(7));

    // A rule file loaded on the appliance (SIGHUP): control is told, with no version.
    let local = "[defaults]\naction = \"allow\"\n# edited on the box\n";
    enforced.set_local(compile_pushed(local).unwrap(), text_sha256(local));
    assert_eq!(
        c.recv(),
        UpMessage::Other(Up::PolicyInForce {
            policy_version: None,
            policy_sha256: text_sha256(local)
        })
    );

    c.send(&Down::Identities {
        generation: 1,
        entries: vec![Identity {
            ip: "10.0.0.7".parse().unwrap(),
            user: "gina".into(),
            groups: vec![],
            expires_at: None,
        }],
    });
    assert_eq!(c.recv(), UpMessage::Other(Up::IdentitiesAck { generation: 1, entries: 1 }));
    assert!(overlay.load().get("10.0.0.7".parse().unwrap(), 0).is_some());

    // New records flow as they are spooled; an ack lets the spool forget them.
    spool.lock().unwrap().append(&[r#"{"type":"flow","i":4}"#]).unwrap();
    match c.recv() {
        UpMessage::Records(records) => assert_eq!(records.iter().map(seq).collect::<Vec<_>>(), [4]),
        other => panic!("unexpected {other:?}"),
    }
    c.send(&Down::Ack { upto: 4 });
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while spool.lock().unwrap().depth() != 0 {
        assert!(std::time::Instant::now() < deadline, "the ack did not empty the spool");
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(c);
    client.join().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
