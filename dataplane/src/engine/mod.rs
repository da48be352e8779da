//! The packet engine, sans-IO: one frame in (with the port it came from and the time), an
//! action out (forward or drop). Everything else it produces is polled, as quinn-proto's
//! connection is (`poll`): frames to emit (released held segments, resets, the divert's
//! packets), records, fast-path operations and the time it next needs the clock. No
//! sockets, no clocks: tested by feeding frames. The UDP side (QUIC, DNS) is in [`udp`]; what
//! a kernel fast path may carry for it ([`OffloadOp`]) is in `offload` (ARCHITECTURE.md,
//! "The packet path").

mod clock;
mod counters;
mod divert;
mod ech;
mod embryonic;
mod fragment;
mod hello;
mod learned;
mod offload;
mod poll;
mod track;
mod udp;

pub use clock::{Clock, Now};
pub use counters::Counters;
pub use divert::{DivertConfig, DivertCounters, DivertedConn};
pub use learned::LearnedEntry;
pub use offload::{Carried, Closes, DirKey, FastEntry, OffloadOp, Rewrite};
pub use poll::Transmit;

use track::{close, count, decide_flow, track};

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;

use hashbrown::HashMap;

use arc_swap::ArcSwap;
use sluice_rules::{AppSeen, IdentityOverlay, MidstreamPolicy, Policy, Query};

use crate::defrag::Defrag;
use crate::flow::{
    Class, EndReason, Flow, FlowKey, FlowTable, HelloNames, Lazy, Name, Offload, Pool, Refused,
    Shared, TcpState, Timeouts, Verdict,
};
use crate::guard::Step;
use crate::record::{FlowRecord, Record};
use crate::wire::frame::{self, Endpoint, Frame, Tcp};

/// UDP port of QUIC.
pub const QUIC_PORT: u16 = 443;
/// Most datagrams held per QUIC flow while its ClientHello is incomplete.
const MAX_QUIC_HELD: usize = 8;
/// Most distinct classifications shared (past it, a flow keeps its own copy).
const CLASSES: usize = 65_536;

/// A TCP segment being handled: the port it came from, its bytes and their parsed view, its
/// flow's key and the time (the input of the TCP steps, one struct rather than six arguments).
#[derive(Clone, Copy)]
pub(super) struct Seg<'s, 'f> {
    side: Side,
    data: &'s [u8],
    f: &'s Frame<'f>,
    t: Tcp,
    key: FlowKey,
    now: Now,
}

/// The two ports of the appliance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// Toward the clients.
    Inside,
    /// Toward the egress router.
    Outside,
    /// The TUN `sluice0` toward the interception engine: raw IP packets, no link header.
    /// Frames are never received from it through [`Engine::handle`] (see
    /// [`Engine::handle_tun`]).
    Tun,
}

impl Side {
    /// The other port (the TUN has none: it maps to itself).
    pub fn other(self) -> Side {
        match self {
            Side::Inside => Side::Outside,
            Side::Outside => Side::Inside,
            Side::Tun => Side::Tun,
        }
    }
}

/// What to do with the frame just handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send it unchanged out of the other port.
    Forward,
    /// Do not forward it (dropped, or held for the ClientHello).
    Drop,
}

/// Engine settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Flow table cap.
    pub max_flows: usize,
    /// Most embryonic flows of one source (0: a sixteenth of the cap, at least 64).
    pub max_embryonic_per_source: usize,
    /// Idle timeouts.
    pub timeouts: Timeouts,
    /// Interval of periodic records for long flows (ms).
    pub report_interval_ms: u64,
    /// Most client frames held per flow while waiting for the ClientHello.
    pub max_held_frames: usize,
    /// Divert through the TUN to the interception engine; `None`: no interception on this
    /// data plane (`inspect` rules then pass TCP flows, recorded as such).
    pub divert: Option<DivertConfig>,
    /// Hand decided flows to a kernel fast path ([`OffloadOp`]s to apply).
    pub fast_path: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_flows: 262_144,
            max_embryonic_per_source: 0,
            timeouts: Timeouts::default(),
            report_interval_ms: 60_000,
            max_held_frames: 2048,
            divert: None,
            fast_path: false,
        }
    }
}

/// The packet engine.
pub struct Engine {
    table: FlowTable,
    policy: Arc<ArcSwap<Policy>>,
    overlay: Arc<ArcSwap<IdentityOverlay>>,
    settings: Settings,
    /// Counters.
    pub counters: Counters,
    records: VecDeque<Record>,
    /// Frames to send, in order (see [`Engine::poll_transmit`]).
    transmits: VecDeque<Transmit>,
    scratch: Vec<u8>,
    learned: HashMap<IpAddr, learned::Learned>,
    /// Bumped at every change of `learned` (the binary saves the set when it moves).
    learned_version: u64,
    dns_queries: HashMap<(String, String), u64>,
    last_stats: u64,
    divert: Option<divert::DivertState>,
    /// Divert counters.
    pub divert_counters: DivertCounters,
    offload_ops: VecDeque<OffloadOp>,
    defrag: Defrag,
    /// The fragments, as received, of the reassembled datagram being handled (empty for a
    /// whole frame): what a held flow keeps and later releases in the datagram's place.
    frag_hold: Vec<Vec<u8>>,
    /// Connection attempts that never completed, summarised until the next stats record.
    embryonic: embryonic::Summaries,
    /// A flow whose handshake the frame being handled completed (its source's embryonic
    /// count goes down once the frame is handled).
    settle: Option<FlowKey>,
    /// When idle flows are next looked for (monotonic ms; see [`Engine::poll_timeout`]).
    next_sweep: u64,
    /// The flows' classifications, each held once however many flows share it.
    classes: Pool<Class>,
    /// The JA4s and ALPN lists of the hellos, each held once.
    hello_names: HelloNames,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("flows", &self.table.len())
            .field("counters", &self.counters)
            .finish()
    }
}

impl Engine {
    /// An engine deciding with the policy in `policy` (swapped whole by the owner).
    pub fn new(
        policy: Arc<ArcSwap<Policy>>,
        overlay: Arc<ArcSwap<IdentityOverlay>>,
        settings: Settings,
    ) -> Self {
        Engine {
            table: FlowTable::new(
                settings.max_flows,
                settings.max_embryonic_per_source,
                settings.timeouts,
            ),
            policy,
            overlay,
            settings,
            counters: Counters::default(),
            records: VecDeque::new(),
            transmits: VecDeque::new(),
            scratch: Vec::new(),
            learned: HashMap::new(),
            learned_version: 0,
            dns_queries: HashMap::new(),
            last_stats: 0,
            divert: settings.divert.map(divert::DivertState::new),
            divert_counters: DivertCounters::default(),
            offload_ops: VecDeque::new(),
            next_sweep: 0,
            classes: Pool::new(CLASSES),
            hello_names: HelloNames::new(CLASSES),
            defrag: Defrag::default(),
            frag_hold: Vec::new(),
            embryonic: embryonic::Summaries::default(),
            settle: None,
        }
    }

    /// Number of tracked flows.
    pub fn flow_count(&self) -> usize {
        self.table.len()
    }

    /// TCP flows in the table whose handshake has not completed.
    pub fn attempts(&self) -> usize {
        self.table.attempts()
    }

    /// Attempts of the source `ip` with `mac` (the per-source limit's count).
    pub fn attempts_of(&self, ip: IpAddr, mac: [u8; 6]) -> u32 {
        self.table.half_open_of(ip, mac)
    }

    /// Handles one frame received on `side`: what to do with it. Frames it made the engine
    /// send are then polled ([`Engine::poll_transmit`]), and go before it.
    pub fn handle(&mut self, side: Side, data: &[u8], now: Now) -> Action {
        self.counters.frames += 1;
        self.counters.bytes += data.len() as u64;
        let parsed = frame::parse(data);
        // An IP fragment from the inside (also one whose later headers etherparse cannot
        // read: its datagram is read once whole).
        if side == Side::Inside
            && parsed.as_ref().is_none_or(|f| f.fragmented)
            && let Some(frag) = crate::defrag::fragment(data)
        {
            return self.fragment(side, data, &frag, now);
        }
        let Some(f) = parsed else {
            self.counters.non_ip += 1;
            return Action::Forward;
        };
        if side == Side::Outside
            && let Some(t) = f.tcp
            && self.upstream_reply(data, &f, t, now)
        {
            return Action::Drop;
        }
        let key = FlowKey::new(f.vlan, f.proto, (f.src, f.sport), (f.dst, f.dport));
        let action = match f.tcp {
            Some(t) => self.tcp(Seg { side, data, f: &f, t, key, now }),
            None => self.udp_or_other(side, data, &f, key, now),
        };
        if let Some(k) = self.settle.take() {
            self.table.get_mut(&k);
        }
        if action == Action::Drop {
            self.counters.dropped += 1;
        }
        action
    }

    fn new_flow(
        &self,
        id: u64,
        side: Side,
        f: &Frame<'_>,
        now: Now,
        state: TcpState,
        verdict: Verdict,
    ) -> Flow {
        let (identity, user) =
            if side == Side::Inside { self.resolve(f, now) } else { (None, None) };
        Flow {
            id,
            proto: f.proto,
            vlan: f.vlan,
            client: (f.src, f.sport),
            server: (f.dst, f.dport),
            client_mac: f.src_mac,
            server_mac: f.dst_mac,
            from_inside: side == Side::Inside,
            first_mono: now.mono_ms,
            last_mono: now.mono_ms,
            first_unix: now.unix_ms,
            last_report: now.mono_ms,
            c2s: (0, 0),
            s2c: (0, 0),
            state,
            fins: (false, false),
            verdict,
            identity,
            user,
            class: Shared::default(),
            client_isn: f.tcp.map_or(0, |t| t.seq),
            server_next: None,
            pending: Lazy::default(),
            offload: Offload::No,
            offload_seen: Lazy::default(),
            half_open: false,
            handshake_done: state == TcpState::Established,
        }
    }

    /// Identity and feed user of the sender of `f` (from the inside).
    fn resolve(&self, f: &Frame<'_>, now: Now) -> (Option<Name>, Option<Name>) {
        let policy = self.policy.load();
        let overlay = self.overlay.load();
        let q = Query {
            src: f.src,
            mac: Some(f.src_mac),
            sni: None,
            port: f.dport,
            now: now.unix_ms / 1000,
            app: AppSeen::Unseen,
            op: None,
        };
        let who = policy.resolve(&q, &overlay);
        (Some(policy.identity_name(who.id).clone()), who.user.cloned())
    }

    fn identity_of(&self, side: Side, f: &Frame<'_>, now: Now) -> Option<Name> {
        (side == Side::Inside).then(|| self.resolve(f, now).0).flatten()
    }

    fn insert(
        &mut self,
        key: FlowKey,
        side: Side,
        f: &Frame<'_>,
        now: Now,
        state: TcpState,
        verdict: Verdict,
    ) -> Option<&mut Flow> {
        let flow = self.new_flow(0, side, f, now, state, verdict);
        debug_assert!(flow.key() == key, "a flow is filed under its own addresses");
        match self.table.insert(flow) {
            Ok((_, evicted)) => {
                self.counters.flows += 1;
                if let Some(ev) = evicted {
                    self.counters.flows_evicted += 1;
                    self.end(ev, EndReason::Evicted, now);
                }
                self.table.get_mut(&key)
            }
            Err(Refused::Full) => {
                self.counters.flows_refused += 1;
                None
            }
            Err(Refused::SourceLimit) => {
                self.counters.flows_refused += 1;
                self.counters.embryonic_refused += 1;
                let known = self.embryonic.has(f.src, verdict);
                let identity = (!known).then(|| self.identity_of(side, f, now)).flatten();
                self.embryonic.refused(&embryonic::Attempt {
                    src: f.src,
                    src_mac: f.src_mac,
                    dst: f.dst,
                    dport: f.dport,
                    verdict,
                    identity: identity.as_deref(),
                    first_ms: now.unix_ms,
                    last_ms: now.unix_ms,
                });
                None
            }
        }
    }

    fn tcp(&mut self, s: Seg<'_, '_>) -> Action {
        let Seg { side, data, f, t, key, now } = s;
        // One lookup per packet: a frame of a tracked flow never looks twice.
        let Some(flow) = self.table.get_mut(&key) else {
            return self.tcp_untracked(s);
        };
        if t.syn && !t.has_ack && flow.state == TcpState::Closing && (f.src, f.sport) == flow.client
        {
            // A new connection on the addresses of one that closed and lingers: that one ends
            // here, and this one is decided afresh (a busy client reuses its ports within the
            // linger).
            if let Some(old) = self.table.remove(&key) {
                self.end(old, EndReason::Closed, now);
            }
            return self.tcp_untracked(s);
        }
        if flow.from_inside && side == Side::Inside && (f.src, f.sport) == flow.server {
            // The server's side of a flow from the inside, arriving from the inside: forged
            // (it would speak for the server to the engine, the guard first).
            self.counters.evasions += 1;
            return Action::Drop;
        }
        let c2s = track(flow, f, t, now);
        if flow.half_open && flow.handshake_done {
            // Its source's slot is freed once this packet is handled.
            self.settle = Some(key);
        }
        match flow.verdict {
            Verdict::Allow => {
                if let Some(g) = flow.pending.get_mut().and_then(|p| p.guard.as_deref_mut()) {
                    if !c2s {
                        g.server(t.syn, t.has_ack.then_some(t.ack), t.seq, f.payload);
                    } else if !f.payload.is_empty() {
                        if !frame::tcp_checksum_ok(data, f) {
                            self.counters.bad_checksums += 1;
                            return Action::Drop;
                        }
                        // A SYN's data starts one past its sequence number (TCP Fast Open).
                        match g.client(t.seq.wrapping_add(u32::from(t.syn)), f.payload) {
                            Step::Pass => {}
                            Step::Evasion(why) => {
                                let next = t.seq.wrapping_add(f.payload.len() as u32);
                                return self.evasion(key, side, why, next);
                            }
                            Step::SecondHello(at) => {
                                // Decided afresh, from the new hello on.
                                flow.verdict = Verdict::Pending;
                                flow.client_isn = at.wrapping_sub(1);
                                flow.pending.clear();
                                return self.hold(s);
                            }
                        }
                    }
                    if g.done() {
                        flow.pending.clear();
                    }
                }
                let fast = self.settings.fast_path;
                Self::maybe_offload(&mut self.offload_ops, &mut self.counters, fast, flow);
                Action::Forward
            }
            Verdict::Block => Action::Drop,
            Verdict::Divert if c2s => {
                let client = std::net::SocketAddr::new(f.src, f.sport);
                divert::withdraw_if_closing(
                    &mut self.offload_ops,
                    self.divert.as_ref(),
                    client,
                    flow,
                );
                self.client_to_tun(data, f);
                Action::Drop
            }
            // The server never saw this flow: nothing of it should come back.
            Verdict::Divert => Action::Drop,
            Verdict::Pending if !c2s || f.payload.is_empty() => Action::Forward,
            Verdict::Pending => self.hold(s),
        }
    }

    /// A TCP frame of no tracked flow: a SYN starts one; data first seen mid-stream follows
    /// the midstream policy; stray ACK/FIN/RST pass.
    fn tcp_untracked(&mut self, s: Seg<'_, '_>) -> Action {
        let Seg { side, data, f, t, key, now } = s;
        let policy = self.policy.load_full();
        let tls = side == Side::Inside && policy.defaults.tls_ports.contains(&f.dport);
        if t.syn && !t.has_ack {
            let divert = tls && self.should_divert(&policy, f, now);
            let verdict = match (tls, divert) {
                (true, true) => Verdict::Divert,
                (true, false) => Verdict::Pending,
                (false, _) => Verdict::Allow,
            };
            return match self.insert(key, side, f, now, TcpState::Embryonic, verdict) {
                Some(flow) => {
                    count(flow, f, now);
                    if divert {
                        // (Its record says why: `record.rs`; nothing is allocated here.)
                        self.divert_syn(key, data, f);
                        return Action::Drop;
                    }
                    if tls && !f.payload.is_empty() {
                        return self.syn_data(s);
                    }
                    Action::Forward
                }
                // Cannot track it: a TLS flow fails closed, anything else passes.
                None if tls => Action::Drop,
                None => Action::Forward,
            };
        }
        if t.rst || f.payload.is_empty() {
            // Stray ACK/FIN/RST (e.g. after a flow ended): nothing to classify.
            return Action::Forward;
        }
        // First seen mid-stream.
        let block = tls && policy.defaults.midstream == MidstreamPolicy::Block;
        let verdict = if block { Verdict::Block } else { Verdict::Allow };
        let mut class = Shared::<Class>::default();
        class.reason = Some("midstream");
        class.share(&mut self.classes);
        let Some(flow) = self.insert(key, side, f, now, TcpState::Established, verdict) else {
            return if tls { Action::Drop } else { Action::Forward };
        };
        flow.class = class;
        count(flow, f, now);
        if block {
            flow.state = TcpState::Closing;
            self.counters.blocked += 1;
            // Reset the sender; the peer's next segment meets a blocked flow and is dropped.
            let from = Endpoint { mac: f.dst_mac, ip: f.dst, port: f.dport };
            let to = Endpoint { mac: f.src_mac, ip: f.src, port: f.sport };
            let ack = t.seq.wrapping_add(f.payload.len() as u32);
            if let Some(rst) = frame::build_rst(from, to, f.vlan, t.ack, ack) {
                self.counters.resets += 1;
                self.transmits.push_back(Transmit { side, frame: rst });
            }
            return Action::Drop;
        }
        Action::Forward
    }

    /// Ends `f`, taken out of the table: its fast-path entries and divert NAT go, its record
    /// is written.
    fn end(&mut self, f: Flow, why: EndReason, now: Now) {
        Self::withdraw(&mut self.offload_ops, &f);
        if f.verdict == Verdict::Divert {
            self.forget_diverted(f.client, &f.key(), f.offload == Offload::Active);
        }
        self.record_end(&f, why, now);
    }

    /// The record of a flow that left the table: its own, or its part of a summary when it
    /// was an attempt that never completed.
    fn record_end(&mut self, f: &Flow, why: EndReason, now: Now) {
        if f.never_completed() {
            self.embryonic.ended(f, why);
        } else {
            self.records.push_back(FlowRecord::end(f, why, now).into());
        }
    }
}
