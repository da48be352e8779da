//! What the access controls share across every inspected connection of a data plane
//! (ARCHITECTURE.md, "Access"): the brokered keys control pushes, the quota ledger and the
//! desk of requests waiting for approval. One
//! value, owned by the binary (which applies control's pushes to it) and read per request.

use std::sync::Arc;

use crate::broker::{KeyRing, Keys};
use crate::quota::Ledger;

/// The shared access state.
#[derive(Debug, Default)]
pub struct Access {
    /// The brokered provider keys and the virtual keys, swapped whole at each push.
    pub keys: Keys,
    /// Requests and tokens counted against quotas.
    pub quotas: Ledger,
    /// Requests waiting for a reviewer's approval.
    pub approvals: crate::approval::Desk,
    /// The data keys recordings are sealed with.
    pub sealer: crate::recording::Sealer,
    /// The deployment's DLP salt, once control pushed it (until then each run hashes with a
    /// salt of its own).
    pub dlp_salt: arc_swap::ArcSwapOption<crate::Salt>,
}

impl Access {
    /// Access state holding `ring` (tests).
    pub fn with_keys(ring: KeyRing) -> Arc<Access> {
        Arc::new(Access {
            keys: Arc::new(arc_swap::ArcSwap::from_pointee(ring)),
            ..Access::default()
        })
    }
}
