//! Key brokering in the phases, through the HTTP/1.1 driver: the brokered key replaces the
//! client's credential upstream, the record names the key (never holds it), a virtual key
//! names its user, real provider keys are refused or swapped as the rule says, and a key the
//! appliance does not hold fails closed.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use arc_swap::ArcSwap;
use common::{send, session};
use sha2::{Digest, Sha256};
use sluice_intercept::Session;
use sluice_intercept::access::Access;
use sluice_intercept::broker::KeyRing;
use sluice_link::{BrokerKey, Secret, VirtualKey};
use sluice_rules::BrokerPolicy;

const REAL: &str = "sk-proj-REALKEYREALKEYREALKEY";
const VIRTUAL: &str = "svk-0123456789abcdef0123456789abcdef0123456789abcdef";

fn ring(real: &str) -> Arc<ArcSwap<KeyRing>> {
    let sha = Sha256::digest(VIRTUAL.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    Arc::new(ArcSwap::from_pointee(KeyRing::new(
        1,
        vec![BrokerKey { name: "openai-prod".into(), secret: Secret::new(real.into()) }],
        vec![VirtualKey {
            id: "vk_a1".into(),
            sha256: sha,
            user: "alice@corp".into(),
            identity: Some("finance".into()),
        }],
    )))
}

fn brokered(swap: bool) -> Session {
    let mut s = session("api.openai.com");
    s.headers.broker = Some(BrokerPolicy { key: "openai-prod".into(), swap_real_keys: swap });
    s.access = Arc::new(Access { keys: ring(REAL), ..Access::default() });
    s
}

fn get(auth: &str) -> String {
    format!("GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\n{auth}\r\n")
}

#[tokio::test]
async fn a_placeholder_goes_up_as_the_brokered_key() {
    let o = send(brokered(false), &get("Authorization: Bearer placeholder\r\n"), b"").await;
    let up = String::from_utf8_lossy(&o.upstream);
    assert!(up.contains(&format!("authorization: Bearer {REAL}\r\n")), "{up}");
    assert!(!up.contains("placeholder"), "{up}");
    assert_eq!(o.record.broker_key.as_deref(), Some("openai-prod"));
    let rec = serde_json::to_string(&o.record).unwrap();
    assert!(!rec.contains("REALKEY"), "{rec}");
    // No credential at all: the key is added.
    let o = send(brokered(false), &get(""), b"").await;
    assert!(String::from_utf8_lossy(&o.upstream).contains(&format!("Bearer {REAL}")));
}

#[tokio::test]
async fn an_azure_client_gets_the_key_in_its_own_header() {
    let o = send(brokered(false), &get("api-key: placeholder\r\n"), b"").await;
    let up = String::from_utf8_lossy(&o.upstream);
    assert!(up.contains(&format!("api-key: {REAL}\r\n")) && !up.contains("placeholder"), "{up}");
    assert!(!up.to_ascii_lowercase().contains("authorization"), "{up}");
    // Both headers: which one the server reads is its choice, so neither goes.
    let o = send(brokered(false), &get("api-key: a\r\nAuthorization: Bearer b\r\n"), b"").await;
    assert!(o.upstream.is_empty());
    assert_eq!(o.record.code, Some("ambiguous_request"));
}

#[tokio::test]
async fn a_virtual_key_names_its_user_and_only_from_its_identity() {
    let o = send(brokered(false), &get(&format!("Authorization: Bearer {VIRTUAL}\r\n")), b"").await;
    assert_eq!(o.record.user.as_deref(), Some("alice@corp"));
    assert_eq!(o.record.virtual_key.as_deref(), Some("vk_a1"));
    let up = String::from_utf8_lossy(&o.upstream);
    assert!(up.contains(REAL) && !up.contains(VIRTUAL), "{up}");
    // From another identity: refused.
    let mut s = brokered(false);
    s.identity = "guests".into();
    let o = send(s, &get(&format!("Authorization: Bearer {VIRTUAL}\r\n")), b"").await;
    assert!(o.upstream.is_empty());
    assert!(o.client.starts_with("HTTP/1.1 403") && o.client.contains("virtual_key_identity"));
}

#[tokio::test]
async fn a_real_provider_key_is_refused_or_swapped_as_the_rule_says() {
    let own = "Authorization: Bearer sk-proj-MINEMINEMINEMINEMINE\r\n";
    let o = send(brokered(false), &get(own), b"").await;
    assert!(o.upstream.is_empty(), "a real key must not reach the server");
    assert!(o.client.starts_with("HTTP/1.1 403") && o.client.contains("real_key_refused"));
    assert_eq!(o.record.code, Some("real_key_refused"));
    let o = send(brokered(true), &get(own), b"").await;
    let up = String::from_utf8_lossy(&o.upstream);
    assert!(up.contains(REAL) && !up.contains("MINEMINE"), "{up}");
}

#[tokio::test]
async fn a_key_the_appliance_does_not_hold_fails_closed_and_a_rotation_applies_next() {
    let mut s = brokered(false);
    s.headers.broker = Some(BrokerPolicy { key: "missing".into(), swap_real_keys: false });
    let o = send(s, &get("Authorization: Bearer placeholder\r\n"), b"").await;
    assert!(o.upstream.is_empty());
    assert!(o.client.starts_with("HTTP/1.1 503") && o.client.contains("broker_key_unavailable"));
    // The ring swapped between two requests of one session: the second uses the new key.
    let s = brokered(false);
    let keys = s.access.keys.clone();
    let o = send(s.clone(), &get(""), b"").await;
    assert!(String::from_utf8_lossy(&o.upstream).contains(REAL));
    keys.store(ring("sk-proj-ROTATEDROTATEDROTATED").load_full());
    let o = send(s, &get(""), b"").await;
    assert!(String::from_utf8_lossy(&o.upstream).contains("ROTATEDROTATED"));
}

#[tokio::test]
async fn credentials_beside_the_brokered_one_are_refused_or_stripped() {
    // Another provider's credential header, a key in the query: refused (400).
    for head in [
        get("Authorization: Bearer placeholder\r\nx-api-key: sk-ant-SOMEONESKEYSOMEONESKEY\r\n"),
        get("Ocp-Apim-Subscription-Key: 0123\r\n"),
        "GET /v1/models?api-key=0123456789abcdef0123456789abcdef HTTP/1.1\r\nHost: api.openai.com\r\n\r\n"
            .to_owned(),
        "GET /v1/models?x=1&API-KEY=abc HTTP/1.1\r\nHost: api.openai.com\r\n\r\n".to_owned(),
    ] {
        let o = send(brokered(true), &head, b"").await;
        assert!(o.upstream.is_empty(), "{head}");
        assert_eq!(o.record.code, Some("credential_not_brokered"), "{head}");
    }
    // A Realtime upgrade passing a key as a subprotocol: a real one is refused, a placeholder
    // is taken out of the offer and the brokered key goes in Authorization.
    let ws = |protocols: &str| {
        format!(
            "GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: api.openai.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {protocols}\r\n\r\n"
        )
    };
    let o = send(
        brokered(false),
        &ws("realtime, openai-insecure-api-key.sk-proj-MINEMINEMINEMINEMINE"),
        b"",
    )
    .await;
    assert!(o.upstream.is_empty());
    assert_eq!(o.record.code, Some("real_key_refused"));
    let o = send(
        brokered(false),
        &ws("realtime, openai-insecure-api-key.placeholder, openai-beta.realtime-v1"),
        b"",
    )
    .await;
    let up = String::from_utf8_lossy(&o.upstream);
    assert!(up.contains("sec-websocket-protocol: realtime, openai-beta.realtime-v1\r\n"), "{up}");
    assert!(
        up.contains(&format!("authorization: Bearer {REAL}\r\n")) && !up.contains("placeholder"),
        "{up}"
    );
    let o = send(brokered(false), &ws("openai-insecure-api-key.placeholder"), b"").await;
    assert!(o.upstream.is_empty());
    assert_eq!(o.record.code, Some("credential_not_brokered"));
}

#[tokio::test]
async fn a_virtual_key_names_nobody_where_nothing_is_brokered() {
    let mut s = session("api.openai.com");
    s.access = Arc::new(Access { keys: ring(REAL), ..Access::default() });
    let o = send(s, &get(&format!("Authorization: Bearer {VIRTUAL}\r\n")), b"").await;
    assert_eq!((o.record.user, o.record.virtual_key, o.record.broker_key), (None, None, None));
}
