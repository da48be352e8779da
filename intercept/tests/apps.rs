//! Requests named by app, operation and ChatGPT account (the catalog and the rules read
//! each request's head and body), and decided again per request.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use arc_swap::ArcSwap;
use common::{send, session};
use sluice_intercept::Session;
use sluice_intercept::phases::{AppContext, PerRequest};
use sluice_rules::catalog::ShippedOnly;
use sluice_rules::{IdentityOverlay, compile};

const RULES: &str = r#"
[[identity]]
name = "finance"
cidrs = ["10.20.1.0/24"]
[[category]]
name = "ai"
include = ["openai-api", "chatgpt"]
[[rule]]
name = "no-uploads"
identities = ["finance"]
categories = ["ai"]
operations = ["upload"]
action = "block"
[[rule]]
name = "no-urllib"
apps = ["python-urllib"]
action = "block"
[[rule]]
name = "finance-openai-inspect"
identities = ["finance"]
categories = ["ai"]
action = "inspect"
chatgpt_accounts = ["acc-corp-1"]
"#;

/// alice's session as the rules above decide her flows, after a hello of `stack`.
fn decided(sni: &str, stack: Option<&str>) -> Session {
    let policy = Arc::new(compile("t.toml", RULES, &ShippedOnly).unwrap().policy);
    let mut s = session(sni);
    s.headers = policy.rules[2].spec.headers.clone();
    let hello = stack.map(|n| {
        let id = policy.apps.id(n).unwrap();
        sluice_rules::apps::HelloMatch {
            app: Some(id),
            evidence: sluice_rules::apps::Evidence::JA4,
        }
    });
    s.apps = AppContext {
        catalog: policy.apps.clone(),
        hello: hello.unwrap_or_default(),
        per_request: Some(PerRequest {
            policy: policy.clone(),
            overlay: Arc::new(ArcSwap::from_pointee(IdentityOverlay::default())),
            mac: [0; 6],
            port: 443,
        }),
    };
    s
}

const SDK: &str = "user-agent: OpenAI/Python 3.57.0\r\nx-stainless-lang: python\r\nx-stainless-package-version: 3.57.0\r\n";

#[tokio::test]
async fn the_sdk_is_named_with_its_version_and_operation() {
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\n{SDK}content-type: application/json\r\ncontent-length: 2\r\n\r\n"
    );
    let o = send(decided("api.openai.com", Some("python")), &head, b"{}").await;
    let r = &o.record;
    assert_eq!(r.verdict, "allow", "{}", o.client);
    assert_eq!(r.app.as_deref(), Some("openai-python"));
    assert_eq!(r.app_version.as_deref(), Some("3.57.0"));
    assert_eq!(r.app_evidence, Some("ja4+ua+headers"));
    assert_eq!(r.operation, Some("chat"));
    assert_eq!(r.app_claimed, None);
    let json = serde_json::to_value(r).unwrap();
    assert_eq!(json["app"], "openai-python");
    assert_eq!(json["operation"], "chat");
}

#[tokio::test]
async fn a_claim_the_hello_contradicts_is_recorded_and_not_believed() {
    let head = format!("GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\n{SDK}\r\n");
    let o = send(decided("api.openai.com", Some("chromium")), &head, b"").await;
    assert_eq!(o.record.app.as_deref(), Some("chromium"));
    assert_eq!(o.record.app_claimed.as_deref(), Some("openai-python"));
    assert_eq!(o.record.app_evidence, Some("ja4+mismatch"));
    // No hello known, no headers known: unknown.
    let o = send(
        decided("api.openai.com", None),
        "GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\n\r\n",
        b"",
    )
    .await;
    assert_eq!(o.record.app.as_deref(), Some("unknown"));
}

#[tokio::test]
async fn uploads_are_refused_and_chats_pass() {
    let upload = "POST /v1/files HTTP/1.1\r\nHost: api.openai.com\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n";
    let o = send(decided("api.openai.com", Some("python")), upload, b"{}").await;
    assert!(o.client.starts_with("HTTP/1.1 403"), "{}", o.client);
    assert!(o.upstream.is_empty(), "nothing reaches the server");
    assert_eq!(
        (o.record.verdict, o.record.code, o.record.rule.as_deref()),
        ("block", Some("blocked_by_policy"), Some("no-uploads"))
    );
    assert_eq!(o.record.operation, Some("upload"));
    // A file inside a prompt is an upload too; the same words in the prompt's text are not.
    let chat = |len: usize| {
        format!(
            "POST /v1/responses HTTP/1.1\r\nHost: api.openai.com\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n"
        )
    };
    let with_file = br#"{"model":"m","input":[{"role":"user","content":[{"type":"input_file","file_data":"data:application/pdf;base64,AAAA"}]}]}"#;
    let o =
        send(decided("api.openai.com", Some("python")), &chat(with_file.len()), with_file).await;
    assert_eq!((o.record.verdict, o.record.operation), ("block", Some("upload")), "{}", o.client);
    // Escapes do not hide a file, nor does an image sent as data.
    let escaped = br#"{"model":"m","input":[{"role":"user","content":[{"type":"input\u005ffile","file_id":"f"}]}]}"#;
    let o = send(decided("api.openai.com", Some("python")), &chat(escaped.len()), escaped).await;
    assert_eq!((o.record.verdict, o.record.operation), ("block", Some("upload")), "{}", o.client);
    let image = br#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}]}"#;
    let o = send(decided("api.openai.com", Some("python")), &chat(image.len()), image).await;
    assert_eq!((o.record.verdict, o.record.operation), ("block", Some("upload")), "{}", o.client);
    // A path written to step around the table is read as the server reads it.
    let odd = "POST /v1/./x/../files HTTP/1.1\r\nHost: api.openai.com\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n";
    let o = send(decided("api.openai.com", Some("python")), odd, b"{}").await;
    assert_eq!((o.record.verdict, o.record.operation), ("block", Some("upload")), "{}", o.client);
    let words = br#"{"model":"m","input":"what does \"file_data\" mean?"}"#;
    let o = send(decided("api.openai.com", Some("python")), &chat(words.len()), words).await;
    assert_eq!((o.record.verdict, o.record.operation), ("allow", Some("chat")), "{}", o.client);
    assert!(!o.upstream.is_empty());
}

#[tokio::test]
async fn an_app_a_rule_blocks_is_refused_per_request() {
    let head =
        "GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\nUser-Agent: Python-urllib/3.11\r\n\r\n";
    let o = send(decided("api.openai.com", Some("python")), head, b"").await;
    assert_eq!(
        (o.record.verdict, o.record.rule.as_deref()),
        ("block", Some("no-urllib")),
        "{}",
        o.client
    );
    assert!(o.client.contains("python-urllib"), "the refusal names the app: {}", o.client);
}

#[tokio::test]
async fn only_listed_chatgpt_accounts_pass() {
    let conv = |account: &str| {
        format!(
            "POST /backend-api/f/conversation HTTP/1.1\r\nHost: chatgpt.com\r\nUser-Agent: Mozilla/5.0 (X11) Chrome/156.0\r\n{account}content-type: application/json\r\ncontent-length: 2\r\n\r\n"
        )
    };
    let o = send(
        decided("chatgpt.com", Some("chromium")),
        &conv("ChatGPT-Account-Id: ACC-CORP-1\r\n"),
        b"{}",
    )
    .await;
    assert_eq!(o.record.verdict, "allow", "{}", o.client);
    assert_eq!(o.record.chatgpt_account.as_deref(), Some("acc-corp-1"));
    assert_eq!(o.record.app.as_deref(), Some("chatgpt-web"));
    let o = send(
        decided("chatgpt.com", Some("chromium")),
        &conv("chatgpt-account-id: personal-77\r\n"),
        b"{}",
    )
    .await;
    assert_eq!((o.record.verdict, o.record.code), ("block", Some("chatgpt_account_not_allowed")));
    assert!(o.client.contains("personal-77"), "{}", o.client);
    let o = send(decided("chatgpt.com", Some("chromium")), &conv(""), b"{}").await;
    assert_eq!(o.record.code, Some("chatgpt_account_required"));
    // Every call of ChatGPT's back end works with an account, whatever it does; the path
    // written otherwise is the same path; the header may not be given twice.
    let history = "GET /backend-api//Conversations HTTP/1.1\r\nHost: chatgpt.com\r\nchatgpt-account-id: personal-77\r\n\r\n";
    let o = send(decided("chatgpt.com", Some("chromium")), history, b"").await;
    assert_eq!(o.record.code, Some("chatgpt_account_not_allowed"), "{}", o.client);
    let twice = conv("chatgpt-account-id: acc-corp-1\r\nchatgpt-account-id: personal-77\r\n");
    let o = send(decided("chatgpt.com", Some("chromium")), &twice, b"{}").await;
    assert_eq!((o.record.verdict, o.record.code), ("block", Some("ambiguous_request")));
    // Signing in needs no account yet.
    let login = "GET /api/auth/session HTTP/1.1\r\nHost: chatgpt.com\r\n\r\n";
    let o = send(decided("chatgpt.com", Some("chromium")), login, b"").await;
    assert_eq!((o.record.verdict, o.record.operation), ("allow", Some("login")));
}

/// ChatGPT's answer listing the signed-in user's accounts is read: the record names the
/// workspace and the personal account behind the session, the header's account or not.
#[tokio::test]
async fn the_accounts_chatgpt_lists_are_recorded() {
    let head = "GET /backend-api/accounts/check/v4-2023-04-27?timezone_offset_min=0 HTTP/1.1\r\nHost: chatgpt.com\r\nUser-Agent: Mozilla/5.0 (X11) Chrome/156.0\r\nchatgpt-account-id: acc-corp-1\r\nAccept-Encoding: gzip, br\r\n\r\n";
    let listing = br#"{"accounts":{"acc-corp-1":{"account":{"account_id":"acc-corp-1","structure":"workspace","plan_type":"team"}},"0b5e-personal":{"account":{"account_id":"0b5e-personal","structure":"personal","plan_type":"free"}},"default":{"account":{"account_id":"0b5e-personal","structure":"personal"}}},"account_ordering":["acc-corp-1"]}"#;
    let answer = [
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            listing.len()
        )
        .into_bytes(),
        listing.to_vec(),
    ]
    .concat();
    let o =
        common::send_answering(decided("chatgpt.com", Some("chromium")), head, b"", Some(&answer))
            .await;
    assert_eq!(o.record.verdict, "allow", "{}", o.client);
    assert_eq!(
        o.record.chatgpt_accounts_listed,
        ["personal:0b5e-personal", "workspace:acc-corp-1"]
    );
    // The answer was asked for uncompressed, so that it can be read.
    let up = String::from_utf8_lossy(&o.upstream).to_ascii_lowercase();
    assert!(up.contains("accept-encoding: identity") && !up.contains("gzip"), "{up}");
    // Other answers are not read for accounts.
    let other = "GET /backend-api/conversations HTTP/1.1\r\nHost: chatgpt.com\r\nchatgpt-account-id: acc-corp-1\r\n\r\n";
    let o =
        common::send_answering(decided("chatgpt.com", Some("chromium")), other, b"", Some(&answer))
            .await;
    assert!(o.record.chatgpt_accounts_listed.is_empty());
}
