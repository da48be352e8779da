//! Offload of decided flows to a kernel fast path, sans-IO: the engine says which flows the
//! fast path may carry ([`OffloadOp`]) and takes back what it carried ([`Engine::offload_counts`]).
//! The IO side, which owns the BPF map, is [`crate::fastpath`].
//!
//! Diverted flows are offloaded too, as NAT: once the engine has set up a diverted client
//! (at its SYN) or an upstream connection of the interception engine (at its port
//! reservation), the kernel does the rewrites of [`Rewrite`] for every segment that follows,
//! the listener's SYN-ACK and the FINs and RSTs included: the closes it carried come back
//! through [`Engine::offload_closed`] (the driver reads them a few times a second) and the
//! engine follows them as if it had seen the segments (see `divert.rs`).
//!
//! A flow is offloaded once it is `allow`ed and its TCP handshake is complete (or, for UDP,
//! once it is `allow`ed, DNS excepted: answers are snooped). From then on the kernel forwards
//! its frames port to port, except TCP segments with SYN, FIN or RST, which still reach the
//! engine so it follows every close. The entry is withdrawn when the flow closes, expires or
//! leaves the table. Counts of the frames the kernel forwarded come back through
//! [`Engine::offload_counts`] (the driver polls the map) and are added to the flow's own, so
//! records, idle timeouts and reports are as if the engine had seen every frame.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

use super::{Engine, Now, Side};
use crate::flow::{Flow, FlowKey, Offload, TcpState, Verdict};
use crate::wire::frame::Proto;

/// One direction of a flow as the fast path matches it: the port it arrives on (for
/// [`Side::Tun`]: the packets the interception engine sends into the TUN) and its addresses
/// as they are there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DirKey {
    /// Port the frames arrive on (they leave by the other one).
    pub ingress: Side,
    /// 802.1Q VLAN id (0 untagged).
    pub vlan: u16,
    /// TCP or UDP.
    pub proto: Proto,
    /// Sender's address and port.
    pub src: (IpAddr, u16),
    /// Receiver's address and port.
    pub dst: (IpAddr, u16),
}

/// What the fast path does with a frame it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewrite {
    /// Nothing: out of the other port as it came.
    Forward,
    /// The destination becomes `dst`; the packet goes into the TUN (to the listener, or to an
    /// upstream socket of the interception engine).
    ToTun {
        /// New destination.
        dst: SocketAddr,
    },
    /// The source becomes `src`; the packet leaves by `out` in an Ethernet frame from
    /// `src_mac` to `dst_mac` (tagged with `vlan`).
    ToPort {
        /// New source.
        src: SocketAddr,
        /// Port to leave by.
        out: Side,
        /// Ethernet source.
        src_mac: [u8; 6],
        /// Ethernet destination.
        dst_mac: [u8; 6],
        /// 802.1Q VLAN id to tag with.
        vlan: Option<u16>,
    },
}

/// One direction the fast path carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastEntry {
    /// Frames it matches.
    pub key: DirKey,
    /// What it does with them.
    pub rewrite: Rewrite,
    /// SYN segments too (a NAT the engine set up before the SYNs it carries). NAT entries
    /// ([`Rewrite::ToTun`], [`Rewrite::ToPort`]) carry FIN and RST too and report them
    /// ([`Closes`]); an allowed flow's closes always come to the engine.
    pub syn: bool,
}

/// The FIN and RST segments the fast path carried in one direction of a NAT entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Closes {
    /// A FIN.
    pub fin: bool,
    /// A RST.
    pub rst: bool,
}

/// What the fast path carried in one direction: totals since the entry was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Carried {
    /// The direction.
    pub key: DirKey,
    /// Frames.
    pub packets: u64,
    /// Their transport payload bytes.
    pub bytes: u64,
    /// Closes (NAT entries only).
    pub closes: Closes,
}

impl FastEntry {
    /// A direction forwarded unchanged.
    pub fn forward(key: DirKey) -> Self {
        FastEntry { key, rewrite: Rewrite::Forward, syn: false }
    }
}

/// What the fast path's map should hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffloadOp {
    /// Carry both directions (client → server first).
    Add([FastEntry; 2]),
    /// Stop carrying them; the driver reports their last counts back.
    Remove([DirKey; 2]),
}

impl OffloadOp {
    /// The removal of what `Add(entries)` put in.
    pub fn remove(entries: [FastEntry; 2]) -> Self {
        OffloadOp::Remove(entries.map(|e| e.key))
    }
}

/// The fast path's keys of `flow`, client → server first.
pub(super) fn keys(flow: &Flow) -> [DirKey; 2] {
    let client_side = if flow.from_inside { Side::Inside } else { Side::Outside };
    let vlan = flow.vlan.unwrap_or(0);
    [
        DirKey {
            ingress: client_side,
            vlan,
            proto: flow.proto,
            src: flow.client,
            dst: flow.server,
        },
        DirKey {
            ingress: client_side.other(),
            vlan,
            proto: flow.proto,
            src: flow.server,
            dst: flow.client,
        },
    ]
}

/// True when the fast path may carry `flow` from now on.
fn eligible(flow: &Flow) -> bool {
    flow.offload == Offload::No
        && flow.verdict == Verdict::Allow
        && flow.pending.guard.is_none()
        && match flow.proto {
            Proto::Tcp => flow.state == TcpState::Established,
            Proto::Udp => flow.client.1 != 53 && flow.server.1 != 53,
            _ => false,
        }
}

impl Engine {
    /// Offers `flow` to the fast path if it may be carried (called on its frames).
    pub(super) fn maybe_offload(
        ops: &mut VecDeque<OffloadOp>,
        counters: &mut super::Counters,
        enabled: bool,
        flow: &mut Flow,
    ) {
        if enabled && eligible(flow) {
            flow.offload = Offload::Active;
            counters.offloaded += 1;
            let [c2s, s2c] = keys(flow);
            ops.push_back(OffloadOp::Add([FastEntry::forward(c2s), FastEntry::forward(s2c)]));
        } else if flow.offload == Offload::Active && flow.state == TcpState::Closing {
            flow.offload = Offload::Withdrawn;
            ops.push_back(OffloadOp::Remove(keys(flow)));
        }
    }

    /// Withdraws a flow leaving the table (diverted flows: see `forget_diverted`).
    pub(super) fn withdraw(ops: &mut VecDeque<OffloadOp>, flow: &Flow) {
        if flow.offload == Offload::Active && flow.verdict != Verdict::Divert {
            ops.push_back(OffloadOp::Remove(keys(flow)));
        }
    }

    /// The fast path could not take the flow whose client → server key is `key`: it stays on
    /// the engine's path.
    pub fn offload_refused(&mut self, key: &DirKey) {
        self.counters.offload_refused += 1;
        let fk = FlowKey::new(Some(key.vlan), key.proto, key.src, key.dst);
        if let Some(flow) = self.table.get_mut(&fk) {
            flow.offload = Offload::Withdrawn;
        }
    }

    /// Turns offloading on or off for flows decided from now on.
    pub fn set_fast_path(&mut self, on: bool) {
        self.settings.fast_path = on;
    }

    /// Takes what the fast path says it carried in one direction: counts, then closes.
    pub fn offload_carried(&mut self, c: &Carried, now: Now) {
        self.offload_counts(&c.key, c.packets, c.bytes, now);
        if c.closes != Closes::default() {
            self.offload_closed(&c.key, c.closes, now);
        }
    }

    /// The fast path forwarded `packets` frames carrying `bytes` of payload for `key` in all
    /// (counts since the flow was offloaded, as its map entry holds them). What is new is added
    /// to the flow's counts, and a flow that moved is no longer idle.
    pub fn offload_counts(&mut self, key: &DirKey, packets: u64, bytes: u64, now: Now) {
        let mut fk = FlowKey::new(Some(key.vlan), key.proto, key.src, key.dst);
        let mut c2s = true;
        if key.ingress == Side::Tun || !self.table.contains(&fk) {
            // A divert NAT entry: the listener's side of a diverted flow, or an upstream
            // connection of the interception engine.
            match self.divert_counts(key, packets, now) {
                Some(k) => (fk, c2s) = (k, false),
                None => return,
            }
        }
        let Some(flow) = self.table.get_mut(&fk) else { return };
        if flow.offload == Offload::No {
            return;
        }
        if c2s {
            c2s = key.src == flow.client;
        }
        let (seen, ctr) = if c2s {
            (&mut flow.offload_seen.c2s, &mut flow.c2s)
        } else {
            (&mut flow.offload_seen.s2c, &mut flow.s2c)
        };
        let (dp, db) = (packets.saturating_sub(seen.0), bytes.saturating_sub(seen.1));
        if dp == 0 && db == 0 {
            return;
        }
        *seen = (seen.0.max(packets), seen.1.max(bytes));
        ctr.0 += dp;
        ctr.1 += db;
        // The listener's SYN-ACK of a diverted flow is the kernel's: the handshake is done.
        if !c2s && flow.state == TcpState::Embryonic {
            flow.state = TcpState::Established;
            flow.handshake_done = true;
        }
        flow.last_mono = flow.last_mono.max(now.mono_ms);
        self.counters.offloaded_frames += dp;
    }
}
