//! Flows: direction-normalised keys (with VLAN), per-flow state and counters, idle timeouts
//! per protocol and TCP state. A flow keeps inline only what every flow needs; the
//! classification, the state of a flow waiting for its ClientHello and the fast path's
//! counts are allocated when first written ([`Lazy`]). The table is in [`table`].

mod lazy;
mod shared;
mod table;

pub use lazy::{Empty, Lazy};
pub use shared::{Pool, Shared};
pub use table::{FlowTable, Refused};

use std::net::IpAddr;
use std::sync::Arc;

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
    /// Identity name (shared with the policy: no allocation per flow).
    pub identity: Option<Name>,
    /// Feed user (shared with the identity overlay).
    pub user: Option<Name>,
    /// Classification (shared with the flows classified alike).
    pub class: Shared<Class>,
    /// Client's ISN.
    pub client_isn: u32,
    /// Server's next sequence number (from SYN-ACK and its data).
    pub server_next: Option<u32>,
    /// What a flow waiting for its ClientHello (or guarding it) keeps.
    pub pending: Lazy<Pending>,
    /// Whether the kernel fast path carries it.
    pub offload: Offload,
    /// Counted among its source's embryonic flows (until the table sees it otherwise).
    pub half_open: bool,
    /// Its TCP handshake completed (or it was first seen established, mid-stream).
    pub handshake_done: bool,
    /// What the engine took of the fast path's counts.
    pub offload_seen: Lazy<OffloadSeen>,
}

/// An identity or user name, shared.
pub type Name = Arc<str>;

/// What a flow keeps while its ClientHello is awaited, and while the decided hello is guarded.
#[derive(Debug, Default)]
pub struct Pending {
    /// Reassembly of the client's first bytes (allocated at the first data segment).
    pub reasm: Option<Box<Reassembly>>,
    /// Client frames held until the verdict.
    pub held: Vec<Vec<u8>>,
    /// The decided hello, kept until the decision cannot be stepped around
    /// ([`crate::guard`]); the flow stays off the fast path meanwhile.
    pub guard: Option<Box<Guard>>,
}

impl Empty for Pending {
    fn empty() -> &'static Self {
        static EMPTY: Pending = Pending { reasm: None, held: Vec::new(), guard: None };
        &EMPTY
    }
}

impl Pending {
    /// Nothing held, reassembled or guarded.
    pub fn is_empty(&self) -> bool {
        self.reasm.is_none() && self.held.is_empty() && self.guard.is_none()
    }
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

impl Empty for OffloadSeen {
    fn empty() -> &'static Self {
        static EMPTY: OffloadSeen = OffloadSeen { c2s: (0, 0), s2c: (0, 0) };
        &EMPTY
    }
}

/// What is known about a flow's identity and destination.
#[derive(Debug, Default, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Class {
    /// SNI.
    pub sni: Option<String>,
    /// ALPN protocols offered.
    pub alpn: Alpn,
    /// ALPN protocol the interception engine negotiated with the client (inspected flows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alpn_negotiated: Option<&'static str>,
    /// TLS version offered (e.g. `1.3`).
    pub tls_version: Option<&'static str>,
    /// JA4.
    pub ja4: Option<Arc<str>>,
    /// The app its hello shows (shared with the app catalog; `unknown` for a hello the
    /// catalog does not know; none without a hello).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<Arc<str>>,
    /// What identified the app (`ja4`, `ja4+sni`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_evidence: Option<&'static str>,
    /// Category (shared with the policy).
    pub category: Option<Arc<str>>,
    /// Rule (shared with the policy).
    pub rule: Option<Arc<str>>,
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

impl Empty for Class {
    fn empty() -> &'static Self {
        static EMPTY: Class = Class {
            sni: None,
            alpn: Alpn(None),
            alpn_negotiated: None,
            tls_version: None,
            ja4: None,
            app: None,
            app_evidence: None,
            category: None,
            rule: None,
            action: None,
            reason: None,
            ech: None,
        };
        &EMPTY
    }
}

/// ALPN protocols offered, shared by the flows that offered the same (interned in
/// [`HelloNames`]); written as a list.
#[derive(Debug, Default, Clone, PartialEq, Eq, Hash)]
pub struct Alpn(pub Option<Arc<[String]>>);

impl std::ops::Deref for Alpn {
    type Target = [String];
    fn deref(&self) -> &[String] {
        self.0.as_deref().unwrap_or(&[])
    }
}

impl From<Vec<String>> for Alpn {
    fn from(v: Vec<String>) -> Self {
        Alpn((!v.is_empty()).then(|| v.into()))
    }
}

impl serde::Serialize for Alpn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(s)
    }
}

/// Longest ALPN extension (bytes) whose list is shared: real clients offer a few short
/// protocols (`h2`, `http/1.1`: 12 bytes).
const ALPN_KEPT: usize = 64;

/// What the hellos of many flows say alike, each held once: JA4s and ALPN lists.
#[derive(Debug)]
pub struct HelloNames {
    /// JA4 fingerprints, remembered by the hello's canonical parts (hashed once per kind of
    /// hello, not once per flow).
    pub ja4: sluice_hello::Ja4Memo,
    /// ALPN lists, by the extension's bytes as hellos carry them (read once per kind).
    alpn: hashbrown::HashMap<Box<[u8]>, Arc<[String]>>,
    cap: usize,
}

impl HelloNames {
    /// At most `cap` values of each.
    pub fn new(cap: usize) -> Self {
        HelloNames { ja4: sluice_hello::Ja4Memo::new(cap), alpn: hashbrown::HashMap::new(), cap }
    }

    /// Drops the values no flow holds.
    pub fn purge(&mut self) {
        self.ja4.purge();
        self.alpn.retain(|_, v| Arc::strong_count(v) > 1);
    }

    /// The ALPN list of `h`, shared (none when it offers none); lists of more than
    /// [`ALPN_KEPT`] bytes, and new ones past `cap` lists (an attacker's unique lists, until
    /// the sweep's purge), stay unshared.
    fn alpn(&mut self, h: &ClientHello<'_>) -> Option<Arc<[String]>> {
        let raw = h.alpn_raw();
        if let Some(v) = self.alpn.get(raw) {
            return Some(v.clone());
        }
        let list = h.alpn_strings();
        if list.is_empty() {
            return None;
        }
        let v: Arc<[String]> = list.into();
        if raw.len() <= ALPN_KEPT && self.alpn.len() < self.cap {
            self.alpn.insert(raw.into(), v.clone());
        }
        Some(v)
    }
}

impl Class {
    /// Records what a ClientHello said (SNI lowercased; JA4 and ALPN shared through `names`,
    /// which computes a JA4 only for a kind of hello it has not seen).
    pub fn set_hello(&mut self, h: &ClientHello<'_>, names: &mut HelloNames) {
        self.tls_version = Some(match h.version {
            0x0304 => "1.3",
            0x0303 => "1.2",
            0x0302 => "1.1",
            0x0301 => "1.0",
            _ => "other",
        });
        self.alpn = Alpn(names.alpn(h));
        self.ja4 = Some(names.ja4.ja4(h));
        self.sni = h.sni().map(str::to_ascii_lowercase);
        self.ech = h.ech().then_some("grease");
    }
}

impl Flow {
    /// The flow's key in the table.
    pub fn key(&self) -> FlowKey {
        FlowKey::new(self.vlan, self.proto, self.client, self.server)
    }

    /// True when `key` is this flow's (without building its key: no ordering of addresses).
    pub fn is(&self, key: &FlowKey) -> bool {
        key.proto == self.proto
            && key.vlan == self.vlan.unwrap_or(0)
            && ((key.a == self.client && key.b == self.server)
                || (key.a == self.server && key.b == self.client))
    }

    /// The two ends, as the reset builder wants them.
    pub fn endpoints(&self) -> (Endpoint, Endpoint) {
        (
            Endpoint { mac: self.client_mac, ip: self.client.0, port: self.client.1 },
            Endpoint { mac: self.server_mac, ip: self.server.0, port: self.server.1 },
        )
    }

    /// A TCP flow whose handshake has not completed (perhaps answered by a SYN-ACK or a
    /// reset, never acknowledged by the client): evictable first, counted against its source.
    pub fn is_attempt(&self) -> bool {
        self.proto == Proto::Tcp && !self.handshake_done
    }

    /// An attempt ([`Flow::is_attempt`]) that carried no payload either way and was never
    /// closed with a FIN (a connection did exist then, if the kernel carried its segments):
    /// summarised at its end, not recorded one by one.
    pub fn never_completed(&self) -> bool {
        self.proto == Proto::Tcp
            && !self.handshake_done
            && self.c2s.1 == 0
            && self.s2c.1 == 0
            && self.fins == (false, false)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tls::{HelloParse, parse_client_hello};

    fn hello(file: &str) -> Vec<u8> {
        std::fs::read(format!("{}/testdata/clienthello/{file}", env!("CARGO_MANIFEST_DIR")))
            .unwrap()
    }

    #[test]
    fn hellos_alike_share_their_names_and_the_names_are_bounded() {
        let (curl, openssl) = (hello("curl-api.openai.com.bin"), hello("openssl-no-sni.bin"));
        let mut names = HelloNames::new(1);
        let mut sc = Vec::new();
        let mut class_of = |raw: &[u8], names: &mut HelloNames| {
            let HelloParse::Hello(h) = parse_client_hello(raw, &mut sc) else { panic!() };
            let mut c = Class::default();
            c.set_hello(&h, names);
            assert_eq!(c.ja4.as_deref(), Some(&*h.ja4()));
            assert_eq!(
                c.alpn.0.as_deref().map(<[String]>::to_vec).unwrap_or_default(),
                h.alpn_strings()
            );
            c
        };
        let (a, b) = (class_of(&curl, &mut names), class_of(&curl, &mut names));
        assert!(Arc::ptr_eq(a.ja4.as_ref().unwrap(), b.ja4.as_ref().unwrap()));
        assert!(Arc::ptr_eq(a.alpn.0.as_ref().unwrap(), b.alpn.0.as_ref().unwrap()));
        // Full (one kind, held): another kind is read but not kept.
        let c = class_of(&openssl, &mut names);
        let d = class_of(&openssl, &mut names);
        assert!(!Arc::ptr_eq(c.ja4.as_ref().unwrap(), d.ja4.as_ref().unwrap()));
        // Once no flow holds the first kind, the purge makes room.
        drop((a, b));
        names.purge();
        let (e, f) = (class_of(&openssl, &mut names), class_of(&openssl, &mut names));
        assert!(Arc::ptr_eq(e.ja4.as_ref().unwrap(), f.ja4.as_ref().unwrap()));
    }
}
