//! Encrypted ClientHello on the packet path (issue: coverage): a hello whose real name ECH
//! hides is refused where rules restrict the source; GREASE ECH is a hello like any other.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use sluice_dataplane::engine::{Action, Engine, LearnedEntry, Settings, Side};
use sluice_dataplane::record::Record;
use sluice_dataplane::wire::frame;

use common::Drive;
use common::{engine, hello_file, now, tcp};

const ISN: u32 = 8_000;
const SERVER_ISN: u32 = 60_000;

/// Sends `hello` from `client` to `server` after a handshake; the action on the hello and
/// the flow's record.
fn send(e: &mut Engine, client: &str, server: &str, hello: &[u8]) -> (Action, serde_json::Value) {
    let mut out = Vec::new();
    for (side, f) in [
        (Side::Inside, tcp(client, server, true, ISN, None, true, &[])),
        (Side::Outside, tcp(client, server, false, SERVER_ISN, Some(ISN + 1), true, &[])),
        (Side::Inside, tcp(client, server, true, ISN + 1, Some(SERVER_ISN + 1), false, &[])),
    ] {
        e.feed(side, &f, now(0), &mut out);
    }
    let h = tcp(client, server, true, ISN + 1, Some(SERVER_ISN + 1), false, hello);
    let action = e.feed(Side::Inside, &h, now(1), &mut out);
    if action == Action::Drop {
        let resets = out.iter().filter(|(_, f)| frame::parse(f).unwrap().tcp.unwrap().rst);
        assert_eq!(resets.count(), 2, "a refused hello is reset both ways");
    }
    e.shutdown(now(2));
    let rec = e
        .records()
        .into_iter()
        .find_map(|r| match r {
            Record::Flow(f) => Some(serde_json::to_value(&f).unwrap()),
            _ => None,
        })
        .unwrap();
    (action, rec)
}

fn with(setting: &str) -> Engine {
    common::engine_with(&[("ech = \"restricted\"", setting)], Settings::default())
}

#[test]
fn a_hidden_name_is_refused_where_rules_restrict_the_source() {
    let ech = hello_file("synth-ech-cloudflare-ech.com.bin");
    // Finance's API traffic is inspected: a name it cannot read is refused.
    let (action, rec) = send(&mut engine(Settings::default()), "10.20.1.10", "198.51.100.10", &ech);
    assert_eq!(action, Action::Drop);
    assert_eq!((rec["verdict"].as_str(), rec["ech"].as_str()), (Some("block"), Some("hidden")));
    assert!(rec["reason"].as_str().unwrap().starts_with("ECH"), "{rec}");
    assert_eq!(rec["sni"], "cloudflare-ech.com");
    // `ech = "allow"`: passed, and the record still says so.
    let (action, rec) = send(&mut with("ech = \"allow\""), "10.20.1.10", "198.51.100.10", &ech);
    assert_eq!(action, Action::Forward);
    assert_eq!((rec["verdict"].as_str(), rec["ech"].as_str()), (Some("allow"), Some("hidden")));
}

#[test]
fn grease_ech_is_a_hello_like_any_other() {
    // The outer name is the real one: decided on it, by the rules, as any hello. (This
    // synthetic hello is no client the app catalog knows: the default sandbox refuses it, and
    // passes it where finance approves unknown clients.)
    let grease = hello_file("synth-grease-ech-api.openai.com.bin");
    let (action, rec) =
        send(&mut engine(Settings::default()), "10.20.1.10", "198.51.100.10", &grease);
    assert_eq!(action, Action::Drop);
    assert_eq!(
        (rec["sni"].as_str(), rec["ech"].as_str(), rec["rule"].as_str(), rec["app"].as_str()),
        (Some("api.openai.com"), Some("grease"), Some("finance-unapproved-apps"), Some("unknown"))
    );
    let approved = [("apps = [\"chatgpt-web\"", "apps = [\"unknown\", \"chatgpt-web\"")];
    let mut e = common::engine_with(&approved, Settings::default());
    let (action, rec) = send(&mut e, "10.20.1.10", "198.51.100.10", &grease);
    assert_eq!(action, Action::Forward);
    assert_eq!(
        (rec["sni"].as_str(), rec["ech"].as_str(), rec["rule"].as_str()),
        (Some("api.openai.com"), Some("grease"), Some("finance-openai-inspect"))
    );
    // A hello without the extension says nothing of ECH.
    let plain = hello_file("curl-api.openai.com.bin");
    let (_, rec) = send(&mut engine(Settings::default()), "10.20.1.10", "198.51.100.10", &plain);
    assert!(rec.get("ech").is_none());
}

#[test]
fn an_outer_name_that_is_not_the_learned_one_is_recorded_as_suspect() {
    // The address was learned for api.openai.com; an ECH hello to it naming example.org
    // outside may hide its name (an ECH public name not listed), or be Chrome's GREASE to
    // another site on a shared CDN address: recorded, not refused.
    let mut e = engine(Settings::default());
    let entry = LearnedEntry {
        ip: "198.51.100.10".parse().unwrap(),
        name: "api.openai.com".into(),
        expires_unix_ms: now(0).unix_ms + 600_000,
    };
    assert_eq!(e.restore_learned(vec![entry], now(0)), 1);
    let (action, rec) =
        send(&mut e, "10.20.1.10", "198.51.100.10", &hello_file("synth-ech-example.org.bin"));
    assert_eq!(action, Action::Forward);
    assert_eq!(rec["ech"], "suspect");
    // Elsewhere, example.org with the extension is GREASE as far as can be told.
    let (action, rec) = send(
        &mut engine(Settings::default()),
        "10.20.1.10",
        "198.51.100.80",
        &hello_file("synth-ech-example.org.bin"),
    );
    assert_eq!(action, Action::Forward);
    assert_eq!(rec["ech"], "grease");
}
