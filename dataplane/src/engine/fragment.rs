//! IP fragments from the inside, before classification (ARCHITECTURE.md, "The packet path"):
//! held by [`crate::defrag`] until their datagram is whole, which is then decided like any
//! frame; the fragments go on as they came when the flow is allowed.

use sluice_rules::FragmentPolicy;

use super::{Action, Engine, Now, QUIC_PORT, Side, Transmit};
use crate::defrag::{FragError, Fragment};
use crate::flow::{FlowKey, Verdict};
use crate::wire::frame::{self, Proto};

impl Engine {
    /// An IP fragment from the inside: held until its datagram is whole, which is then
    /// decided like any frame; the fragments go on as they came when the flow is allowed.
    pub(super) fn fragment(
        &mut self,
        side: Side,
        data: &[u8],
        frag: &Fragment<'_>,
        now: Now,
    ) -> Action {
        if !frag.maybe_tcp_or_udp() || self.defrag.passes(&frag.key, now.mono_ms) {
            // Nothing the engine classifies (ICMP, ESP, …) hides in it.
            return Action::Forward;
        }
        self.counters.fragments += 1;
        // A first fragment to a port nothing is read on (NFS, IPsec NAT-T, SIP …): its
        // datagram passes as it comes, so fragmented traffic the engine has no reason to read
        // is neither delayed nor held against the reassembly's limits.
        if let Some((proto, sport, dport)) = frag.first_ports() {
            let policy = self.policy.load();
            let classified = match proto {
                6 => policy.defaults.tls_ports.contains(&dport),
                _ => dport == QUIC_PORT || dport == 53 || sport == 53,
            };
            drop(policy);
            if !classified && let Some(held) = self.defrag.pass(&frag.key, now.mono_ms) {
                self.transmits
                    .extend(held.into_iter().map(|h| Transmit { side: side.other(), frame: h }));
                return Action::Forward;
            }
        }
        let whole = match self.defrag.add(frag, data, now.mono_ms) {
            Ok(None) => return Action::Drop,
            Ok(Some(w)) => w,
            Err(e) => {
                if e == FragError::Overlap {
                    self.counters.evasions += 1;
                }
                self.counters.fragments_dropped += 1;
                return Action::Drop;
            }
        };
        self.counters.fragments_reassembled += 1;
        let Some(f) = frame::parse(&whole.frame) else { return Action::Drop };
        let key = FlowKey::new(f.vlan, f.proto, (f.src, f.sport), (f.dst, f.dport));
        let policy = self.policy.load();
        let classified = match f.proto {
            Proto::Tcp => policy.defaults.tls_ports.contains(&f.dport),
            Proto::Udp => f.dport == QUIC_PORT,
            _ => false,
        };
        let allowed = self.table.get_mut(&key).is_some_and(|fl| fl.verdict == Verdict::Allow);
        if classified && !allowed && policy.defaults.ip_fragments == FragmentPolicy::Block {
            self.counters.fragments_dropped += whole.fragments.len() as u64;
            return Action::Drop;
        }
        drop(policy);
        self.frag_hold = whole.fragments;
        let action = match f.tcp {
            Some(t) => self.tcp(super::Seg { side, data: &whole.frame, f: &f, t, key, now }),
            None => self.udp_or_other(side, &whole.frame, &f, key, now),
        };
        // Not kept by a held flow: forwarded as they came, or dropped with the datagram.
        let fragments = std::mem::take(&mut self.frag_hold);
        if action == Action::Forward {
            self.transmits
                .extend(fragments.into_iter().map(|fr| Transmit { side: side.other(), frame: fr }));
        }
        Action::Drop
    }
}
