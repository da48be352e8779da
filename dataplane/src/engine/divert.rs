//! Divert (ARCHITECTURE.md, "Divert"): the NAT between the two ports and the TUN `sluice0` that
//! steers a flow to the interception engine from its SYN, sans-IO like the rest of the engine.
//!
//! - client → server: the destination becomes the engine's listener on the TUN address; the
//!   client's address is kept, the original destination stays in the flow (read by the
//!   interception engine through [`Engine::diverted`]).
//! - listener → client (read from the TUN): the source is restored and the packet leaves on
//!   the inside port with the MACs learned from the SYN.
//! - the interception engine's upstream connections (bound to a port of the reserved range
//!   after [`Engine::open_upstream`]): leave on the outside port with the client's address as
//!   source; their replies, caught on the outside port, are written back into the TUN.
//!
//! Rewrites are [`crate::nat::rewrite`] (incremental checksums, no allocation); packets the
//! kernel sends into the TUN that belong to no diverted connection (router solicitations, …)
//! are counted and ignored.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hashbrown::HashMap;
use sluice_rules::{Action as RuleAction, AppSeen, DivertMode, Policy, Query};

use super::offload::{Closes, DirKey, FastEntry, OffloadOp, Rewrite};
use super::{Engine, Now, Side, Transmit, close, track};
use crate::flow::{Flow, FlowKey, Offload, TcpState};
use crate::nat;
use crate::wire::frame::{self, Frame, Proto, Tcp};

#[path = "divert_fast.rs"]
mod fast;
pub(super) use fast::withdraw_if_closing;
use fast::{client_entries, upstream_closed, upstream_entries, withdraw_upstream_if_closed};

/// Where diverted flows go, and the ports the interception engine's upstream side uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DivertConfig {
    /// IPv4 address of the TUN (the listener's address for IPv4 clients).
    pub v4: Ipv4Addr,
    /// IPv6 address of the TUN.
    pub v6: Ipv6Addr,
    /// Port of the interception engine's listener.
    pub listen_port: u16,
    /// Reserved source ports of upstream connections, inclusive. They must lie outside the
    /// clients' ephemeral range (Linux: 32768–60999), since upstream connections leave with
    /// the client's address.
    pub upstream_ports: (u16, u16),
}

impl Default for DivertConfig {
    fn default() -> Self {
        DivertConfig {
            v4: Ipv4Addr::new(100, 127, 0, 1),
            v6: Ipv6Addr::new(0xfd53, 0x1ce, 0, 0, 0, 0, 0, 1),
            listen_port: 15443,
            upstream_ports: (61000, 65535),
        }
    }
}

impl DivertConfig {
    /// The TUN address of `ip`'s family.
    pub fn local(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(_) => IpAddr::V4(self.v4),
            IpAddr::V6(_) => IpAddr::V6(self.v6),
        }
    }

    /// The listener for a client of `ip`'s family.
    pub fn listener(&self, ip: IpAddr) -> SocketAddr {
        SocketAddr::new(self.local(ip), self.listen_port)
    }

    fn is_upstream_port(&self, p: u16) -> bool {
        (self.upstream_ports.0..=self.upstream_ports.1).contains(&p)
    }
}

/// What the interception engine learns about a diverted connection it accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DivertedConn {
    /// The address the client connected to.
    pub original_dst: SocketAddr,
    /// The client's MAC (identity by MAC).
    pub client_mac: [u8; 6],
}

#[derive(Debug, Clone, Copy)]
struct ClientEntry {
    key: FlowKey,
    orig: SocketAddr,
    client_mac: [u8; 6],
    server_mac: [u8; 6],
    vlan: Option<u16>,
}

#[derive(Debug, Clone, Copy)]
struct UpstreamEntry {
    client: IpAddr,
    server: SocketAddr,
    client_mac: [u8; 6],
    router_mac: [u8; 6],
    vlan: Option<u16>,
    last_mono: u64,
    /// FIN seen from the engine's side / from the server.
    fins: (bool, bool),
    /// RST seen.
    reset: bool,
    /// In the kernel fast path, and the packets it counted there (TUN side, outside side).
    offloaded: bool,
    fast_seen: [u64; 2],
}

impl UpstreamEntry {
    fn closed(&self) -> bool {
        self.reset || (self.fins.0 && self.fins.1)
    }
}

/// How long an upstream NAT entry outlives its connection's close (both FINs, or a RST): long
/// enough for the last ACK and a retransmitted FIN; TIME_WAIT itself is the kernel's
/// (`net.ipv4.tcp_tw_reuse` lets the port be reused). The reserved range divided by this
/// bounds the rate of new upstream connections to one server.
const UPSTREAM_CLOSE_LINGER_MS: u64 = 1_500;

/// The NAT state.
#[derive(Debug)]
pub(super) struct DivertState {
    pub(super) cfg: DivertConfig,
    clients: HashMap<SocketAddr, ClientEntry>,
    upstreams: HashMap<u16, UpstreamEntry>,
    next_port: u16,
}

impl DivertState {
    pub(super) fn new(cfg: DivertConfig) -> Self {
        DivertState {
            cfg,
            clients: HashMap::new(),
            upstreams: HashMap::new(),
            next_port: cfg.upstream_ports.0,
        }
    }
}

/// Divert counters.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct DivertCounters {
    /// Flows diverted at their SYN.
    pub flows: u64,
    /// Packets written to the TUN.
    pub to_tun: u64,
    /// Packets read from the TUN and sent out of a port.
    pub from_tun: u64,
    /// Packets read from the TUN that belong to no diverted connection (ignored).
    pub tun_ignored: u64,
    /// Upstream connections opened by the interception engine.
    pub upstreams: u64,
    /// Inspected flows that were not diverted at their SYN: reset, destination learned.
    pub missed: u64,
}

impl Engine {
    /// True when a SYN from `f` to a TLS port goes to the interception engine: with `divert =
    /// "all"`, when some inspect rule could apply to the source; with `"learned"`, when the
    /// destination was learned and the policy inspects or blocks its name for this source.
    pub(super) fn should_divert(&self, policy: &Policy, f: &Frame<'_>, now: Now) -> bool {
        if self.divert.is_none() {
            return false;
        }
        let overlay = self.overlay.load();
        let t = now.unix_ms / 1000;
        match policy.defaults.divert {
            DivertMode::All => policy.may_inspect(f.src, Some(f.src_mac), f.dport, t, &overlay),
            DivertMode::Learned => match self.learned(f.dst, now) {
                // The name the destination was learned under says whether the flow is
                // inspected; the interception engine decides again with the real SNI.
                Some(name) => {
                    let q = Query {
                        src: f.src,
                        mac: Some(f.src_mac),
                        sni: Some(name),
                        port: f.dport,
                        now: t,
                        // Not known before the hello: a rule naming apps diverts the flow
                        // whenever it could apply.
                        app: AppSeen::Unseen,
                        op: None,
                    };
                    // Inspected flows, and blocked ones: a diverted block is answered (403,
                    // or a page) rather than reset.
                    matches!(
                        policy.decide(&q, &overlay).action,
                        RuleAction::Inspect | RuleAction::Block
                    )
                }
                None => false,
            },
        }
    }

    /// Starts diverting the flow of this SYN (already inserted with [`Verdict::Divert`]).
    pub(super) fn divert_syn(&mut self, key: FlowKey, data: &[u8], f: &Frame<'_>) {
        let Some(d) = self.divert.as_mut() else { return };
        let client = SocketAddr::new(f.src, f.sport);
        let entry = ClientEntry {
            key,
            orig: SocketAddr::new(f.dst, f.dport),
            client_mac: f.src_mac,
            server_mac: f.dst_mac,
            vlan: f.vlan,
        };
        d.clients.insert(client, entry);
        if self.settings.fast_path
            && let Some(flow) = self.table.get_mut(&key)
        {
            // Every segment after this SYN is rewritten by the kernel, the listener's SYN-ACK
            // and the closes included.
            flow.offload = Offload::Active;
            self.counters.offloaded += 1;
            self.offload_ops.push_back(OffloadOp::Add(client_entries(&d.cfg, client, &entry)));
        }
        self.divert_counters.flows += 1;
        self.client_to_tun(data, f);
    }

    /// A client segment of a diverted flow: to the listener, through the TUN.
    pub(super) fn client_to_tun(&mut self, data: &[u8], f: &Frame<'_>) {
        let Some(d) = self.divert.as_ref() else { return };
        let listener = d.cfg.listener(f.src);
        let mut pkt = data[f.ip_offset..].to_vec();
        if nat::rewrite(&mut pkt, None, Some(listener)).is_ok() {
            self.divert_counters.to_tun += 1;
            self.transmits.push_back(Transmit { side: Side::Tun, frame: pkt });
        }
    }

    /// A frame on the outside port addressed to an upstream connection of the interception
    /// engine: back into the TUN. False when it is not one.
    pub(super) fn upstream_reply(&mut self, data: &[u8], f: &Frame<'_>, t: Tcp, now: Now) -> bool {
        let Some(d) = self.divert.as_mut() else { return false };
        if !d.cfg.is_upstream_port(f.dport) {
            return false;
        }
        let Some(e) = d.upstreams.get_mut(&f.dport) else { return false };
        if e.client != f.dst || e.server != SocketAddr::new(f.src, f.sport) {
            return false;
        }
        e.last_mono = now.mono_ms;
        upstream_closed(e, (false, t.fin), t.rst, now);
        withdraw_upstream_if_closed(&mut self.offload_ops, &d.cfg, f.dport, e);
        let local = SocketAddr::new(d.cfg.local(f.dst), f.dport);
        let mut pkt = data[f.ip_offset..].to_vec();
        if nat::rewrite(&mut pkt, None, Some(local)).is_ok() {
            self.divert_counters.to_tun += 1;
            self.transmits.push_back(Transmit { side: Side::Tun, frame: pkt });
        }
        true
    }

    /// Handles one raw IP packet read from the TUN: a reply of the listener to a diverted
    /// client (out of the inside port) or a packet of an upstream connection (out of the
    /// outside port). Anything else is ignored.
    pub fn handle_tun(&mut self, pkt: &[u8], now: Now) {
        let sent = self.tun_packet(pkt, now);
        if sent {
            self.divert_counters.from_tun += 1;
        } else {
            self.divert_counters.tun_ignored += 1;
        }
    }

    fn tun_packet(&mut self, pkt: &[u8], now: Now) -> bool {
        let Some(d) = self.divert.as_mut() else { return false };
        let Some(f) = frame::parse_ip(pkt) else { return false };
        let Some(t) = f.tcp else { return false };
        if f.src != d.cfg.local(f.src) {
            return false;
        }
        if f.sport == d.cfg.listen_port {
            let Some(e) = d.clients.get(&SocketAddr::new(f.dst, f.dport)).copied() else {
                return false;
            };
            let mut ip = pkt.to_vec();
            if nat::rewrite(&mut ip, Some(e.orig), None).is_err() {
                return false;
            }
            self.transmits.push_back(Transmit {
                side: Side::Inside,
                frame: frame::encapsulate(&ip, e.server_mac, e.client_mac, e.vlan),
            });
            if let Some(flow) = self.table.get_mut(&e.key) {
                // The server's side of the flow, as the client sees it.
                track(flow, &Frame { src: e.orig.ip(), sport: e.orig.port(), ..f }, t, now);
                let client = SocketAddr::new(f.dst, f.dport);
                withdraw_if_closing(&mut self.offload_ops, Some(d), client, flow);
            }
            return true;
        }
        if d.cfg.is_upstream_port(f.sport) {
            let Some(e) = d.upstreams.get_mut(&f.sport) else { return false };
            if e.server != SocketAddr::new(f.dst, f.dport) {
                return false;
            }
            e.last_mono = now.mono_ms;
            upstream_closed(e, (t.fin, false), t.rst, now);
            withdraw_upstream_if_closed(&mut self.offload_ops, &d.cfg, f.sport, e);
            let e = *e;
            let mut ip = pkt.to_vec();
            if nat::rewrite(&mut ip, Some(SocketAddr::new(e.client, f.sport)), None).is_err() {
                return false;
            }
            self.transmits.push_back(Transmit {
                side: Side::Outside,
                frame: frame::encapsulate(&ip, e.client_mac, e.router_mac, e.vlan),
            });
            return true;
        }
        false
    }

    /// What the interception engine needs about the diverted connection from `client`.
    pub fn diverted(&self, client: SocketAddr) -> Option<DivertedConn> {
        let e = self.divert.as_ref()?.clients.get(&client)?;
        Some(DivertedConn { original_dst: e.orig, client_mac: e.client_mac })
    }

    /// Reserves a source port for an upstream connection made for the diverted `client` to
    /// `server`: the interception engine binds the TUN address and this port, then connects.
    /// `None` when the client is not diverted or every reserved port is taken.
    pub fn open_upstream(
        &mut self,
        client: SocketAddr,
        server: SocketAddr,
        now: Now,
    ) -> Option<u16> {
        let d = self.divert.as_mut()?;
        let c = *d.clients.get(&client)?;
        let (lo, hi) = d.cfg.upstream_ports;
        let span = u32::from(hi - lo) + 1;
        for _ in 0..span {
            let p = d.next_port;
            d.next_port = if p >= hi { lo } else { p + 1 };
            // Never a port the client itself uses toward that server.
            let theirs =
                FlowKey::new(c.vlan, Proto::Tcp, (client.ip(), p), (server.ip(), server.port()));
            if d.upstreams.contains_key(&p) || self.table.contains(&theirs) {
                continue;
            }
            d.upstreams.insert(
                p,
                UpstreamEntry {
                    client: client.ip(),
                    server,
                    client_mac: c.client_mac,
                    router_mac: c.server_mac,
                    vlan: c.vlan,
                    last_mono: now.mono_ms,
                    fins: (false, false),
                    reset: false,
                    offloaded: self.settings.fast_path,
                    fast_seen: [0; 2],
                },
            );
            if self.settings.fast_path
                && let Some(e) = d.upstreams.get(&p)
            {
                self.offload_ops.push_back(OffloadOp::Add(upstream_entries(&d.cfg, p, e)));
            }
            self.divert_counters.upstreams += 1;
            return Some(p);
        }
        None
    }

    /// Frees an upstream port the interception engine could not use (bind failed).
    pub fn release_upstream(&mut self, port: u16) {
        if let Some(d) = self.divert.as_mut()
            && let Some(e) = d.upstreams.remove(&port)
            && e.offloaded
        {
            self.offload_ops.push_back(OffloadOp::remove(upstream_entries(&d.cfg, port, &e)));
        }
    }

    /// Lets the interception engine write what it learned (SNI, identity, rule, action,
    /// reason) into the record of the diverted flow from `client`.
    pub fn annotate_diverted(&mut self, client: SocketAddr, f: impl FnOnce(&mut Flow)) {
        let Some(key) = self.divert.as_ref().and_then(|d| d.clients.get(&client)).map(|e| e.key)
        else {
            return;
        };
        if let Some(flow) = self.table.get_mut(&key) {
            // The interception engine accepted the connection: its handshake completed (the
            // kernel carries a diverted flow's segments after the SYN, the engine does not
            // see them), so the flow is recorded as one, never summarised as an attempt.
            flow.handshake_done = true;
            f(flow);
            flow.class.share(&mut self.classes);
            // No longer an attempt of its source.
            self.table.get_mut(&key);
        }
    }

    /// Forgets the NAT entry of a diverted flow that left the table.
    ///
    /// `offloaded`: its NAT is still in the kernel fast path and is withdrawn.
    pub(super) fn forget_diverted(
        &mut self,
        client: (IpAddr, u16),
        key: &FlowKey,
        offloaded: bool,
    ) {
        if let Some(d) = self.divert.as_mut() {
            let c = SocketAddr::new(client.0, client.1);
            if let Some(e) = d.clients.get(&c).copied().filter(|e| e.key == *key) {
                d.clients.remove(&c);
                if offloaded {
                    self.offload_ops.push_back(OffloadOp::remove(client_entries(&d.cfg, c, &e)));
                }
            }
        }
    }

    /// Counts the kernel fast path reported for a divert NAT direction `key` (`packets` in
    /// all): an upstream connection that moved is not idle; for the listener's side of a
    /// diverted flow, the flow's key is returned so its counts can be taken.
    pub(super) fn divert_counts(
        &mut self,
        key: &DirKey,
        packets: u64,
        now: Now,
    ) -> Option<FlowKey> {
        let d = self.divert.as_mut()?;
        if key.ingress == Side::Tun && key.src.1 == d.cfg.listen_port {
            return d.clients.get(&SocketAddr::new(key.dst.0, key.dst.1)).map(|e| e.key);
        }
        let (port, i) = if key.ingress == Side::Tun { (key.src.1, 0) } else { (key.dst.1, 1) };
        if d.cfg.is_upstream_port(port)
            && let Some(e) = d.upstreams.get_mut(&port)
            && packets > e.fast_seen[i]
        {
            e.fast_seen[i] = packets;
            e.last_mono = e.last_mono.max(now.mono_ms);
        }
        None
    }

    /// Expires idle upstream entries.
    pub(super) fn expire_upstreams(&mut self, now: Now) {
        let t = self.settings.timeouts;
        if let Some(d) = self.divert.as_mut() {
            let ops = &mut self.offload_ops;
            let cfg = d.cfg;
            d.upstreams.retain(|p, e| {
                let limit = if e.closed() { UPSTREAM_CLOSE_LINGER_MS } else { t.tcp_established };
                let keep = now.mono_ms.saturating_sub(e.last_mono) < limit;
                if !keep && e.offloaded {
                    ops.push_back(OffloadOp::remove(upstream_entries(&cfg, *p, e)));
                }
                keep
            });
        }
    }

    /// Number of NAT entries (diverted clients, upstream connections).
    pub fn nat_entries(&self) -> (usize, usize) {
        self.divert.as_ref().map_or((0, 0), |d| (d.clients.len(), d.upstreams.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_addresses_by_family() {
        let c = DivertConfig::default();
        assert_eq!(c.listener("10.20.1.10".parse().unwrap()), "100.127.0.1:15443".parse().unwrap());
        assert_eq!(
            c.listener("fd20::1:10".parse().unwrap()),
            "[fd53:1ce::1]:15443".parse().unwrap()
        );
        assert!(
            c.is_upstream_port(61000) && c.is_upstream_port(65535) && !c.is_upstream_port(60999)
        );
    }
}
