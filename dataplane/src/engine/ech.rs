//! Encrypted ClientHello on the packet path (ARCHITECTURE.md, "The packet path"). A hello with
//! an `encrypted_client_hello` extension hides its real server name when its outer name is
//! the public name of an ECH configuration (the shipped `ech-public-names` catalog): what it
//! gets is the rule set's `ech` setting. GREASE ECH, which Chrome sends to every server,
//! carries the real name outside and passes as any hello.
//!
//! An outer name that is not the name the destination was learned for (DNS answers, earlier
//! hellos) is recorded as `suspect`, not refused: the destinations learned are CDN addresses
//! that serve many other names too, and Chrome's GREASE ECH to any of those would look the
//! same.

use sluice_rules::{EchPolicy, IdentityOverlay, Policy, catalog};

use super::Now;
use crate::flow::{Flow, Verdict};

/// The verdict for `flow`, whose hello was just decided `verdict`, once ECH is accounted for;
/// `learned` is the name its destination was learned for, if any.
pub(super) fn decide(
    policy: &Policy,
    overlay: &IdentityOverlay,
    flow: &mut Flow,
    learned: Option<&str>,
    verdict: Verdict,
    now: Now,
) -> Verdict {
    if flow.class.ech.is_none() {
        return verdict;
    }
    let outer = flow.class.sni.as_deref().unwrap_or("");
    if !catalog::ech_hides_name(Some(outer)) {
        if learned.is_some_and(|n| !n.eq_ignore_ascii_case(outer)) {
            flow.class.ech = Some("suspect");
        }
        return verdict;
    }
    flow.class.ech = Some("hidden");
    let refuse = match policy.defaults.ech {
        EchPolicy::Allow => false,
        EchPolicy::Block => true,
        EchPolicy::Restricted => policy.may_restrict(
            flow.client.0,
            Some(flow.client_mac),
            flow.server.1,
            now.unix_ms / 1000,
            overlay,
        ),
    };
    if !refuse || verdict == Verdict::Block {
        return verdict;
    }
    flow.class.action = Some("block");
    flow.class.reason = Some("ECH: an encrypted ClientHello hides the server name");
    Verdict::Block
}
