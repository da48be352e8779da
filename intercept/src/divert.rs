//! The interception engine's side of divert (ARCHITECTURE.md, "Divert"): what it needs from
//! the packet engine, which owns the NAT entries and the flow records. The binary implements
//! [`DivertHandle`] over the shared packet engine; tests implement it in memory.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::record::FlowNote;

/// What the packet engine knows about a diverted connection the interception engine accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DivertedConn {
    /// The address the client connected to.
    pub original_dst: SocketAddr,
    /// The client's MAC (identity by MAC).
    pub client_mac: [u8; 6],
}

/// What the interception engine needs from the packet engine.
pub trait DivertHandle: Send + Sync + 'static {
    /// The diverted connection from `client`, if any.
    fn lookup(&self, client: SocketAddr) -> Option<DivertedConn>;
    /// Reserves an upstream source port for `client` → `server`.
    fn open_upstream(&self, client: SocketAddr, server: SocketAddr) -> Option<u16>;
    /// Frees a reserved port that could not be used.
    fn release_upstream(&self, port: u16);
    /// Writes what the interception engine learned into the flow's record.
    fn annotate(&self, client: SocketAddr, note: FlowNote);
    /// A proxy's tunnel from `client` to `server` (named `host`) begins: its flow starts
    /// (the packet engine never sees it). Divert has nothing to do here.
    fn tunnel_opened(&self, _client: SocketAddr, _server: SocketAddr, _host: &str) {}
    /// The tunnel ended, with these bytes from and to the client: its flow record is due.
    fn tunnel_closed(&self, _client: SocketAddr, _from_client: u64, _to_client: u64) {}
    /// A proxy's client was refused before any tunnel (`server`, if the name resolved;
    /// `host` as the client named it, possibly empty): its flow record says why.
    fn tunnel_refused(
        &self,
        _client: SocketAddr,
        _server: Option<SocketAddr>,
        _host: &str,
        _reason: &'static str,
    ) {
    }
}

/// Where the engine takes its connections from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Front {
    /// Connections the packet engine diverts through the TUN; upstream connections leave with
    /// the client's address, from a reserved port.
    Divert(Listen),
    /// An explicit proxy listening here (HTTP CONNECT; [`crate::proxy`]); upstream
    /// connections leave from the host's own address.
    Proxy(SocketAddr),
}

/// Where diverted connections arrive: the TUN's addresses and the listening port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    /// IPv4 address of the TUN.
    pub v4: Ipv4Addr,
    /// IPv6 address of the TUN.
    pub v6: Ipv6Addr,
    /// Port of the listeners.
    pub port: u16,
}

impl Listen {
    /// The TUN address of `ip`'s family (upstream connections bind it).
    pub fn local(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(_) => IpAddr::V4(self.v4),
            IpAddr::V6(_) => IpAddr::V6(self.v6),
        }
    }
}
