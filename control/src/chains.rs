//! The data planes' record chains as control receives them (ARCHITECTURE.md, "Evidence"):
//! where each chain stands, and what to do with a record that says where it belongs. A record
//! that continues its chain is stored with its link; one that does not is refused (not stored;
//! its text goes to the audit log with the reason) and raises an alert. Records the data plane
//! lost before they were stored leave a gap that is stored as an event, as does a chain that
//! starts again (a data plane whose spool was lost). Pure: the store applies the outcome.

use sluice_audit::{GENESIS, Link};

use crate::record::Chain;

/// Where a data plane's chain stands in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Which of the data plane's chains (one more each time it starts one again).
    pub epoch: u64,
    /// Position of the last record stored (0: none yet).
    pub n: u64,
    /// Its link.
    pub link: Link,
}

/// What to do with one flow or request record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// Store it at `n` of chain `epoch` with `link`; `event`, when set, is said first.
    Store {
        /// The chain.
        epoch: u64,
        /// Its position.
        n: u64,
        /// Its link.
        link: Link,
        /// A discontinuity before it.
        event: Option<Event>,
    },
    /// Store it without a chain (a data plane that does not chain its records).
    Plain,
    /// Its position is taken already: a copy sent again is skipped by its sequence number,
    /// anything else refused.
    Taken,
    /// Do not store it.
    Refuse(&'static str),
}

/// A discontinuity of a chain, written to control's own chain and raised as an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Positions `from..=to` never arrived (the data plane lost them, or control's store
    /// began after them).
    Gap {
        /// First missing.
        from: u64,
        /// Last missing.
        to: u64,
    },
    /// The data plane started its chain again (its spool was lost); epoch is the new one.
    Restart,
}

impl Event {
    /// The audit action.
    pub fn action(&self) -> &'static str {
        match self {
            Event::Gap { .. } => "chain.gap",
            Event::Restart => "chain.restart",
        }
    }
}

/// Decides on a flow or request record of a data plane whose chain stands at `head` (`None`:
/// nothing of it stored yet), and moves `head` on. A record refused for not continuing the
/// chain still moves it on, so the data plane's next records continue from it.
pub fn admit(head: &mut Option<Head>, chain: &Chain) -> Admit {
    let (n, prev, link, storable) = match *chain {
        Chain::Unchained => {
            return match head {
                None => Admit::Plain,
                // Once a data plane chains, a record without a chain is one taken out of it.
                Some(_) => Admit::Refuse("a record outside the chain of a data plane that chains"),
            };
        }
        Chain::Malformed => return Admit::Refuse("its chain members cannot be read"),
        Chain::Linked { n, prev, link, storable } => (n, prev, link, storable),
    };
    if n == 0 {
        return Admit::Refuse("chain position 0");
    }
    let (epoch, event) = match *head {
        None if n == 1 && prev == GENESIS => (0, None),
        _ if n == 1 && prev != GENESIS => {
            return Admit::Refuse("the first record of a chain that does not start it");
        }
        None => (0, Some(Event::Gap { from: 1, to: n - 1 })),
        Some(h) if n == h.n + 1 && prev == h.link => (h.epoch, None),
        Some(h) if n == 1 && prev == GENESIS => (h.epoch + 1, Some(Event::Restart)),
        Some(h) if n <= h.n => return Admit::Taken,
        Some(h) if n == h.n + 1 => {
            *head = Some(Head { epoch: h.epoch, n, link });
            return Admit::Refuse("it does not continue the chain (the record before it differs)");
        }
        Some(h) => (h.epoch, Some(Event::Gap { from: h.n + 1, to: n - 1 })),
    };
    *head = Some(Head { epoch, n, link });
    if !storable {
        return Admit::Refuse("its text would not give its link back as stored");
    }
    Admit::Store { epoch, n, link, event }
}

/// The name of a data plane's chain in checkpoints: `dp:NAME:EPOCH`, or, for a name a
/// checkpoint line cannot carry, `dpx:HEX:EPOCH` with the first 12 bytes of the name's SHA-256.
pub fn chain_name(dataplane: &str, epoch: u64) -> String {
    let plain = dataplane.len() <= 40
        && dataplane.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if plain {
        format!("dp:{dataplane}:{epoch}")
    } else {
        use sha2::Digest;
        let h = sha2::Sha256::digest(dataplane.as_bytes());
        let hex: String = h[..12].iter().map(|b| format!("{b:02x}")).collect();
        format!("dpx:{hex}:{epoch}")
    }
}

/// Control's own chain (its audit log).
pub const CONTROL_CHAIN: &str = "control";

#[cfg(test)]
mod tests {
    use super::*;

    fn linked(n: u64, prev: Link) -> Chain {
        Chain::Linked { n, prev, link: sluice_audit::link(&prev, n, b"r"), storable: true }
    }

    fn link_of(n: u64, prev: Link) -> Link {
        sluice_audit::link(&prev, n, b"r")
    }

    #[test]
    fn records_extend_skip_restart_and_refuse() {
        let mut head = None;
        assert_eq!(admit(&mut head, &Chain::Unchained), Admit::Plain);
        let l1 = link_of(1, GENESIS);
        assert_eq!(
            admit(&mut head, &linked(1, GENESIS)),
            Admit::Store { epoch: 0, n: 1, link: l1, event: None }
        );
        let l2 = link_of(2, l1);
        assert!(matches!(admit(&mut head, &linked(2, l1)), Admit::Store { n: 2, event: None, .. }));
        // Sent again: taken (the store skips it by its sequence number).
        assert_eq!(admit(&mut head, &linked(2, l1)), Admit::Taken);
        // A record that does not continue: refused, and the chain goes on from it.
        let forged = Link([9; 32]);
        assert!(matches!(admit(&mut head, &linked(3, forged)), Admit::Refuse(_)));
        let l3 = link_of(3, forged);
        assert!(matches!(admit(&mut head, &linked(4, l3)), Admit::Store { n: 4, event: None, .. }));
        // Records lost on the way: a gap.
        let any = Link([1; 32]);
        assert!(matches!(
            admit(&mut head, &linked(9, any)),
            Admit::Store { n: 9, event: Some(Event::Gap { from: 5, to: 8 }), .. }
        ));
        // Unchained, or unreadable, once the data plane chains: refused.
        assert!(matches!(admit(&mut head, &Chain::Unchained), Admit::Refuse(_)));
        assert!(matches!(admit(&mut head, &Chain::Malformed), Admit::Refuse(_)));
        // The chain starts again: a new epoch.
        assert!(matches!(
            admit(&mut head, &linked(1, GENESIS)),
            Admit::Store { epoch: 1, n: 1, event: Some(Event::Restart), .. }
        ));
        let _ = l2;
        // A first position that does not start a chain: refused.
        let mut h2 = head;
        assert!(matches!(admit(&mut h2, &linked(1, any)), Admit::Refuse(_)));
        // A store that begins in the middle of a chain says what it never had.
        let mut fresh = None;
        assert!(matches!(
            admit(&mut fresh, &linked(5, any)),
            Admit::Store { n: 5, event: Some(Event::Gap { from: 1, to: 4 }), .. }
        ));
    }

    #[test]
    fn chain_names_fit_checkpoint_lines() {
        assert_eq!(chain_name("lab-sl", 0), "dp:lab-sl:0");
        assert!(
            chain_name("a b/c", 2).starts_with("dpx:") && chain_name("a b/c", 2).ends_with(":2")
        );
        assert_ne!(chain_name("a b/c", 2), chain_name("a b/d", 2));
        let long = chain_name(&"é".repeat(40), 7);
        assert!(long.len() <= sluice_audit::checkpoint::MAX_CHAIN, "{long}");
    }
}
