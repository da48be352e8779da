//! The flow table: direction-normalised keys (with VLAN), per-flow state and counters, idle
//! timeouts per protocol and TCP state, and a hard cap that evicts embryonic flows first.

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
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

/// The table is full and holds no embryonic flow to evict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("flow table full")]
pub struct TableFull;

/// The table.
#[derive(Debug)]
pub struct FlowTable {
    map: HashMap<FlowKey, Flow>,
    embryonic: VecDeque<FlowKey>,
    cap: usize,
    /// Timeouts.
    pub timeouts: Timeouts,
    next_id: u64,
}

impl FlowTable {
    /// A table holding at most `cap` flows.
    pub fn new(cap: usize, timeouts: Timeouts) -> Self {
        FlowTable {
            map: HashMap::new(),
            embryonic: VecDeque::new(),
            cap: cap.max(1),
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

    /// The flow of `key`.
    pub fn get_mut(&mut self, key: &FlowKey) -> Option<&mut Flow> {
        self.map.get_mut(key)
    }

    /// Removes the flow of `key`.
    pub fn remove(&mut self, key: &FlowKey) -> Option<Flow> {
        self.map.remove(key)
    }

    /// Inserts a new flow built by `make(id)`. When full, evicts the oldest embryonic flow
    /// (returned); with none to evict the flow is refused (`Err`).
    pub fn insert(
        &mut self,
        key: FlowKey,
        make: impl FnOnce(u64) -> Flow,
    ) -> Result<(&mut Flow, Option<Flow>), TableFull> {
        let mut evicted = None;
        if self.map.len() >= self.cap {
            while let Some(k) = self.embryonic.pop_front() {
                if self.map.get(&k).is_some_and(|f| f.state == TcpState::Embryonic) {
                    evicted = self.map.remove(&k);
                    break;
                }
            }
            if evicted.is_none() {
                return Err(TableFull);
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let flow = make(id);
        if flow.state == TcpState::Embryonic {
            if self.embryonic.len() >= self.cap {
                self.embryonic
                    .retain(|k| self.map.get(k).is_some_and(|f| f.state == TcpState::Embryonic));
            }
            self.embryonic.push_back(key);
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
            if let Some(f) = self.map.remove(&k) {
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
        self.map.drain().map(|(_, f)| f)
    }
}
