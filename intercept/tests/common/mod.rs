//! What the interception tests share: a session as the default rules give alice for the API.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_intercept::h1::serve;
use sluice_intercept::{Dlp, RequestRecord, Session};
use sluice_rules::{DlpAction, HeaderPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

/// alice's session toward `sni` (identity finance, her inspect rule, 1 MiB bodies, no DLP).
pub fn session(sni: &str) -> Session {
    Session {
        sni: sni.into(),
        client: "10.20.1.10:40000".parse().unwrap(),
        original_dst: "198.51.100.10:443".parse().unwrap(),
        identity: "finance".into(),
        user: None,
        category: Some("openai-api".into()),
        rule: Some("finance-openai-inspect".into()),
        headers: HeaderPolicy::default(),
        max_body: 1 << 20,
        fail_open: false,
        refuse: None,
        dlp: None,
        mask: None,
        access: Default::default(),
        recorder: None,
        apps: Default::default(),
    }
}

/// `s` with a DLP profile of `detectors` doing `action`.
pub fn with_dlp(mut s: Session, detectors: &[&str], action: DlpAction) -> Session {
    s.dlp = Some(Dlp {
        profile: "p".into(),
        set: sluice_dlp::DetectorSet::from_names(detectors).unwrap(),
        action,
        scanner: Arc::new(sluice_dlp::Scanner::new().unwrap()),
        salt: Arc::new(sluice_intercept::Salt::new(b"salt")),
    });
    s
}

/// What one request got: the client's bytes, what reached the server, and the record.
pub struct Outcome {
    pub client: String,
    pub upstream: Vec<u8>,
    pub record: RequestRecord,
}

/// Sends `head` + `body`; a server that answers 200 to whatever reaches it.
pub async fn send(s: Session, head: &str, body: &[u8]) -> Outcome {
    send_answering(s, head, body, None).await
}

/// [`send`] with a head that is not UTF-8.
pub async fn send_raw(s: Session, head: &[u8], body: &[u8]) -> Outcome {
    send_bytes(s, head, body, None).await
}

/// [`send`], the server answering `answer` when given.
pub async fn send_answering(s: Session, head: &str, body: &[u8], answer: Option<&[u8]>) -> Outcome {
    send_bytes(s, head.as_bytes(), body, answer).await
}

async fn send_bytes(s: Session, head: &[u8], body: &[u8], answer: Option<&[u8]>) -> Outcome {
    let (mut c, mut proxy_client) = duplex(1 << 20);
    let (mut server, mut proxy_server) = duplex(1 << 20);
    let records: Arc<Mutex<Vec<RequestRecord>>> = Arc::default();
    let r = records.clone();
    let task = tokio::spawn(async move {
        let sink = move |rec: RequestRecord| r.lock().unwrap().push(rec);
        serve(&mut proxy_client, Some(&mut proxy_server), &s, &sink).await
    });
    c.write_all(head).await.unwrap();
    c.write_all(body).await.unwrap();
    // The server answers once a whole head has arrived (and reads whatever follows).
    let mut upstream = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let read = tokio::time::timeout(Duration::from_millis(300), server.read(&mut buf)).await;
        match read {
            Ok(Ok(n)) if n > 0 => upstream.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    if !upstream.is_empty() {
        let answer: &[u8] = if let Some(a) = answer {
            a
        } else if upstream.starts_with(b"GET /v1/realtime") {
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        };
        server.write_all(answer).await.unwrap();
    }
    drop(server);
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), c.read_to_end(&mut got)).await;
    drop(c);
    let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    let record = records.lock().unwrap().first().cloned().expect("a record");
    Outcome { client: String::from_utf8_lossy(&got).into_owned(), upstream, record }
}
