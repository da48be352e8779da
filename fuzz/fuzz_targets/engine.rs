//! The whole packet engine on a sequence of arbitrary frames from either port, with the
//! default rules: never panics, the flow table stays within its cap.
#![no_main]
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use libfuzzer_sys::fuzz_target;
use sluice_dataplane::engine::{Engine, Now, Settings, Side};
use sluice_rules::{IdentityOverlay, Policy};

fn policy() -> Arc<Policy> {
    static P: OnceLock<Arc<Policy>> = OnceLock::new();
    P.get_or_init(|| {
        let text = include_str!("../../rules/default.toml");
        let c = sluice_rules::compile("default.toml", text, &sluice_rules::catalog::ShippedOnly);
        Arc::new(c.expect("default rules compile").policy)
    })
    .clone()
}

fuzz_target!(|data: &[u8]| {
    let settings = Settings { max_flows: 16, ..Settings::default() };
    let mut e = Engine::new(
        Arc::new(ArcSwap::new(policy())),
        Arc::new(ArcSwap::from_pointee(IdentityOverlay::default())),
        settings,
    );
    let mut rest = data;
    let mut t = 0u64;
    // Each frame: [side/len byte][len][frame bytes].
    while rest.len() >= 2 {
        let side = if rest[0] & 1 == 0 { Side::Inside } else { Side::Outside };
        let len = usize::from(rest[1]).min(rest.len() - 2) + if rest[0] & 2 != 0 { 256 } else { 0 };
        let len = len.min(rest.len() - 2);
        let frame = &rest[2..2 + len];
        rest = &rest[2 + len..];
        t += 7;
        let _ = e.handle(side, frame, Now { mono_ms: t, unix_ms: t });
        while e.poll_transmit().is_some() {}
        assert!(e.flow_count() <= 16);
    }
    e.handle_timeout(Now { mono_ms: t + 100_000, unix_ms: t + 100_000 });
    while e.poll_record().is_some() {}
    while e.poll_offload().is_some() {}
});
