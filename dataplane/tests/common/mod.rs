//! Helpers shared by the engine's integration tests.
#![allow(clippy::unwrap_used, dead_code)]

use std::sync::Arc;

use arc_swap::ArcSwap;
use sluice_dataplane::engine::{Engine, Now, Settings};
use sluice_rules::IdentityOverlay;
use sluice_rules::catalog::ShippedOnly;

/// An engine deciding with the shipped `rules/default.toml`.
pub fn engine(settings: Settings) -> Engine {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../rules/default.toml"))
            .unwrap();
    let policy = sluice_rules::compile("default.toml", &text, &ShippedOnly).unwrap().policy;
    Engine::new(
        Arc::new(ArcSwap::from_pointee(policy)),
        Arc::new(ArcSwap::from_pointee(IdentityOverlay::default())),
        settings,
    )
}

/// Engine time `ms` milliseconds after its start.
pub fn now(ms: u64) -> Now {
    Now { mono_ms: ms, unix_ms: 1_700_000_000_000 + ms }
}
