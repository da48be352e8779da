//! What the interception tests share: a session as the default rules give alice for the API.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;

use sluice_intercept::{Dlp, Session};
use sluice_rules::{DlpAction, HeaderPolicy};

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
    }
}

/// `s` with a DLP profile of `detectors` doing `action`.
pub fn with_dlp(mut s: Session, detectors: &[&str], action: DlpAction) -> Session {
    s.dlp = Some(Dlp {
        profile: "p".into(),
        set: sluice_dlp::DetectorSet::from_names(detectors).unwrap(),
        action,
        scanner: Arc::new(sluice_dlp::Scanner::new().unwrap()),
        salt: Arc::from(&b"salt"[..]),
    });
    s
}
