//! The flow table: direction-normalised keys (with VLAN), per-flow state and counters, idle
//! timeouts per protocol and TCP state, a hard cap that evicts embryonic flows first, and a
//! cap on each source's embryonic flows (one host's SYN flood evicts only its own).

use std::collections::VecDeque;
use std::net::IpAddr;

use hashbrown::HashMap;

use crate::guard::Guard;
use crate::reassembly::Reassembly;
use crate::wire::frame::{Endpoint, Proto};
use crate::wire::tls::ClientHello;

/// Direction-normalised flow key: the lower (address, port) first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// VLAN id (0 untagged).
    pub vlan: u16,
    /// Protocol.
    pub proto: Proto,
    /// Lower endpoint.
    pub a: (IpAddr, u16),
    /// Higher endpoint.
    pub b: (IpAddr, u16),
}

impl FlowKey {
    /// The key of a packet from `src` to `dst`, whichever direction it travels.
    pub fn new(vlan: Option<u16>, proto: Proto, src: (IpAddr, u16), dst: (IpAddr, u16)) -> Self {
        let (a, b) = if src <= dst { (src, dst) } else { (dst, src) };
        FlowKey { vlan: vlan.unwrap_or(0), proto, a, b }
    }
}

/// TCP connection state as seen on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpState {
    /// SYN seen, handshake not complete.
    Embryonic,
    /// Data may flow.
    Established,
    /// FIN or RST seen.
    Closing,
    /// Not TCP.
    NotTcp,
}

/// What the engine does with a flow's packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// TLS port, waiting for the ClientHello: client data is held.
    Pending,
    /// Forwarded untouched.
    Allow,
    /// Dropped (and reset).
    Block,
    /// Steered through the TUN to the interception engine (NAT), from its SYN.
    Divert,
}

/// Idle timeouts, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP before the handshake completes.
    pub tcp_embryonic: u64,
    /// Established TCP.
    pub tcp_established: u64,
    /// TCP after FIN or RST, and any blocked flow.
    pub tcp_closing: u64,
    /// UDP.
    pub udp: u64,
    /// ICMP and others.
    pub other: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_embryonic: 30_000,
            tcp_established: 600_000,
            tcp_closing: 10_000,
            udp: 60_000,
            other: 30_000,
        }
    }
}

/// One flow.
#[derive(Debug)]
pub struct Flow {
    /// Unique id (per data plane run).
    pub id: u64,
    /// Protocol.
    pub proto: Proto,
    /// VLAN id.
    pub vlan: Option<u16>,
    /// Initiator address and port.
    pub client: (IpAddr, u16),
    /// Responder address and port.
    pub server: (IpAddr, u16),
    /// Initiator MAC.
    pub client_mac: [u8; 6],
    /// MAC the initiator sends to (router side).
    pub server_mac: [u8; 6],
    /// True when the initiator is on the inside port.
    pub from_inside: bool,
    /// Monotonic ms of the first packet.
    pub first_mono: u64,
    /// Monotonic ms of the last packet.
    pub last_mono: u64,
    /// Unix ms of the first packet.
    pub first_unix: u64,
    /// Monotonic ms of the last periodic record.
    pub last_report: u64,
    /// Packets and bytes client → server.
    pub c2s: (u64, u64),
    /// Packets and bytes server → client.
    pub s2c: (u64, u64),
    /// TCP state.
    pub state: TcpState,
    /// FIN seen from client / server.
    pub fins: (bool, bool),
    /// Verdict.
    pub verdict: Verdict,
    /// Classification.
    pub class: Class,
    /// Client's ISN.
    pub client_isn: u32,
    /// Server's next sequence number (from SYN-ACK and its data).
    pub server_next: Option<u32>,
    /// Reassembly of the client's first bytes (allocated at the first data segment).
    pub reasm: Option<Box<Reassembly>>,
    /// Client frames held until the verdict.
    pub held: Vec<Vec<u8>>,
    /// The decided hello, kept until the decision cannot be stepped around
    /// ([`crate::guard`]); the flow stays off the fast path meanwhile.
    pub guard: Option<Box<Guard>>,
    /// Whether the kernel fast path carries it.
    pub offload: Offload,
    /// What the engine took of the fast path's counts.
    pub offload_seen: OffloadSeen,
    /// Counted among its source's embryonic flows (until the table sees it otherwise).
    pub half_open: bool,
}

/// Where a flow stands with the fast path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Offload {
    /// Never offloaded.
    #[default]
    No,
    /// In the fast path's map.
    Active,
    /// Withdrawn; its last counts may still come back.
    Withdrawn,
}

/// Counts of a flow's frames the fast path forwarded, and what the engine already took of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OffloadSeen {
    /// Packets and bytes client → server taken so far.
    pub c2s: (u64, u64),
    /// Packets and bytes server → client taken so far.
    pub s2c: (u64, u64),
}

/// What is known about a flow's identity and destination.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Class {
    /// Identity name.
    pub identity: Option<String>,
    /// Feed user.
    pub user: Option<String>,
    /// SNI.
    pub sni: Option<String>,
    /// ALPN protocols offered.
    pub alpn: Vec<String>,
    /// ALPN protocol the interception engine negotiated with the client (inspected flows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alpn_negotiated: Option<&'static str>,
    /// TLS version offered (e.g. `1.3`).
    pub tls_version: Option<&'static str>,
    /// JA4.
    pub ja4: Option<String>,
    /// Category.
    pub category: Option<String>,
    /// Rule.
    pub rule: Option<String>,
    /// The rule's action.
    pub action: Option<&'static str>,
    /// Why the verdict was taken, when not simply the rule.
    pub reason: Option<&'static str>,
    /// Encrypted ClientHello: `grease` (the extension, but the outer name is the real one as
    /// far as can be told), `suspect` (the outer name is not the one the destination was
    /// learned for: ECH behind a public name not listed, or GREASE to a shared address) or
    /// `hidden` (the outer name is a known ECH public name: the real one is encrypted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ech: Option<&'static str>,
}

impl Class {
    /// Records what a ClientHello said (SNI lowercased; JA4 computed here, once per flow).
    pub fn set_hello(&mut self, h: &ClientHello<'_>) {
        self.tls_version = Some(match h.version {
            0x0304 => "1.3",
            0x0303 => "1.2",
            0x0302 => "1.1",
            0x0301 => "1.0",
            _ => "other",
        });
        self.alpn = h.alpn_strings();
        self.ja4 = Some(h.ja4());
        self.sni = h.sni().map(str::to_ascii_lowercase);
        self.ech = h.ech().then_some("grease");
    }
}

impl Flow {
    /// The two ends, as the reset builder wants them.
    pub fn endpoints(&self) -> (Endpoint, Endpoint) {
        (
            Endpoint { mac: self.client_mac, ip: self.client.0, port: self.client.1 },
            Endpoint { mac: self.server_mac, ip: self.server.0, port: self.server.1 },
        )
    }

    /// A TCP flow that never completed its handshake (perhaps answered by a SYN-ACK or a
    /// reset, never acknowledged by the client) and carried no payload either way:
    /// summarised, not recorded one by one.
    pub fn never_completed(&self) -> bool {
        self.proto == Proto::Tcp
            && self.c2s.1 == 0
            && self.s2c.1 == 0
            && (self.state == TcpState::Embryonic
                || (self.state == TcpState::Closing && self.fins == (false, false)))
    }

    /// Idle timeout of this flow.
    pub fn timeout(&self, t: &Timeouts) -> u64 {
        if self.verdict == Verdict::Block {
            // Nothing passes: keep it only long enough to swallow retransmissions.
            return t.tcp_closing;
        }
        match (self.proto, self.state) {
            (Proto::Tcp, TcpState::Embryonic) => t.tcp_embryonic,
            (Proto::Tcp, TcpState::Closing) => t.tcp_closing,
            (Proto::Tcp, _) => t.tcp_established,
            (Proto::Udp, _) => t.udp,
            _ => t.other,
        }
    }
}

/// Why a flow left the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// Idle past its timeout.
    Idle,
    /// Closed (FIN both ways or RST) and lingered.
    Closed,
    /// Evicted to make room.
    Evicted,
    /// The data plane is stopping.
    Shutdown,
}

/// Why a flow was not taken into the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The table is full and holds no embryonic flow to evict.
    #[error("flow table full")]
    Full,
    /// Its source has as many embryonic flows as it may.
    #[error("too many embryonic flows from one source")]
    SourceLimit,
}

/// The source an embryonic flow counts against: its address (an IPv6 /64, which one host
/// holds whole).
fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1)))
        }
    }
}

/// The table.
#[derive(Debug)]
pub struct FlowTable {
    map: HashMap<FlowKey, Flow>,
    embryonic: VecDeque<FlowKey>,
    /// Embryonic flows per source.
    half_open: HashMap<IpAddr, u32>,
    cap: usize,
    per_source: u32,
    /// Timeouts.
    pub timeouts: Timeouts,
    next_id: u64,
}

impl FlowTable {
    /// A table holding at most `cap` flows, of which at most `per_source` embryonic flows of
    /// one source (0: a sixteenth of the cap, at least 64).
    pub fn new(cap: usize, per_source: usize, timeouts: Timeouts) -> Self {
        let cap = cap.max(1);
        let per_source = if per_source == 0 { (cap / 16).max(64) } else { per_source };
        FlowTable {
            map: HashMap::new(),
            embryonic: VecDeque::new(),
            half_open: HashMap::new(),
            cap,
            per_source: u32::try_from(per_source).unwrap_or(u32::MAX),
            timeouts,
            next_id: 1,
        }
    }

    /// Number of flows.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// True when `key` is tracked.
    pub fn contains(&self, key: &FlowKey) -> bool {
        self.map.contains_key(key)
    }

    /// Embryonic flows of the source of `ip`.
    pub fn half_open_of(&self, ip: IpAddr) -> u32 {
        self.half_open.get(&source_of(ip)).copied().unwrap_or(0)
    }

    /// Sources with embryonic flows.
    pub fn half_open_sources(&self) -> usize {
        self.half_open.len()
    }

    /// The flow of `key`. A flow past its handshake stops counting against its source here
    /// (the engine looks it up again after the packet that completed it) or at its end.
    pub fn get_mut(&mut self, key: &FlowKey) -> Option<&mut Flow> {
        let f = self.map.get_mut(key)?;
        if f.half_open && f.state != TcpState::Embryonic {
            f.half_open = false;
            release(&mut self.half_open, f.client.0);
        }
        Some(f)
    }

    /// Removes the flow of `key`.
    pub fn remove(&mut self, key: &FlowKey) -> Option<Flow> {
        let f = self.map.remove(key)?;
        self.settle(&f);
        Some(f)
    }

    fn settle(&mut self, f: &Flow) {
        if f.half_open {
            release(&mut self.half_open, f.client.0);
        }
    }

    /// Inserts `flow` (its id given here). An embryonic flow from a source at its limit is
    /// refused; when the table is full the oldest embryonic flow is evicted (returned), and
    /// with none to evict the flow is refused.
    pub fn insert(
        &mut self,
        key: FlowKey,
        mut flow: Flow,
    ) -> Result<(&mut Flow, Option<Flow>), Refused> {
        let half_open = flow.state == TcpState::Embryonic;
        if half_open && self.half_open_of(flow.client.0) >= self.per_source {
            return Err(Refused::SourceLimit);
        }
        let mut evicted = None;
        if self.map.len() >= self.cap {
            while let Some(k) = self.embryonic.pop_front() {
                if self.map.get(&k).is_some_and(|f| f.state == TcpState::Embryonic) {
                    evicted = self.map.remove(&k);
                    break;
                }
            }
            match &evicted {
                Some(ev) => self.settle(ev),
                None => return Err(Refused::Full),
            }
        }
        flow.id = self.next_id;
        self.next_id += 1;
        if half_open {
            flow.half_open = true;
            *self.half_open.entry(source_of(flow.client.0)).or_insert(0) += 1;
            if self.embryonic.len() >= self.cap {
                self.embryonic
                    .retain(|k| self.map.get(k).is_some_and(|f| f.state == TcpState::Embryonic));
            }
            self.embryonic.push_back(key);
        }
        if let Some(old) = self.map.remove(&key) {
            self.settle(&old);
        }
        let f = self.map.entry(key).insert(flow).into_mut();
        Ok((f, evicted))
    }

    /// Removes flows idle past their timeout (and closed flows past their linger), calling
    /// `emit` for each.
    pub fn expire(&mut self, now: u64, mut emit: impl FnMut(Flow, EndReason)) {
        let t = self.timeouts;
        let dead: Vec<FlowKey> = self
            .map
            .iter()
            .filter(|(_, f)| now.saturating_sub(f.last_mono) >= f.timeout(&t))
            .map(|(k, _)| *k)
            .collect();
        for k in dead {
            if let Some(f) = self.remove(&k) {
                let why =
                    if f.state == TcpState::Closing { EndReason::Closed } else { EndReason::Idle };
                emit(f, why);
            }
        }
        if self.embryonic.len() > self.map.len() {
            self.embryonic
                .retain(|k| self.map.get(k).is_some_and(|f| f.state == TcpState::Embryonic));
        }
    }

    /// Flows due a periodic record (last report older than `interval`).
    pub fn due_reports(&mut self, now: u64, interval: u64) -> impl Iterator<Item = &mut Flow> {
        self.map.values_mut().filter(move |f| now.saturating_sub(f.last_report) >= interval)
    }

    /// Removes every flow (shutdown).
    pub fn drain(&mut self) -> impl Iterator<Item = Flow> + '_ {
        self.embryonic.clear();
        self.half_open.clear();
        self.map.drain().map(|(_, f)| f)
    }
}

/// One embryonic flow of `ip`'s source fewer.
fn release(half_open: &mut HashMap<IpAddr, u32>, ip: IpAddr) {
    let src = source_of(ip);
    if let Some(n) = half_open.get_mut(&src) {
        *n -= 1;
        if *n == 0 {
            half_open.remove(&src);
        }
    }
}
