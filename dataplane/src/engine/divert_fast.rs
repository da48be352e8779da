//! The divert NAT in the kernel fast path (ARCHITECTURE.md, "Divert"): the map entries of a
//! diverted client and of an upstream connection, both directions, and the closes the fast path
//! reports (FIN, RST), after which the entries are withdrawn.

use super::*;

impl Engine {
    /// The fast path carried a FIN or RST in divert NAT direction `key`: the close is followed
    /// as if the engine had seen the segment (the flow, or the upstream connection, closes and
    /// its kernel NAT is withdrawn once closed both ways).
    pub fn offload_closed(&mut self, key: &DirKey, c: Closes, now: Now) {
        let Some(d) = self.divert.as_mut() else { return };
        if key.proto != Proto::Tcp || !(c.fin || c.rst) {
            return;
        }
        let from_tun = key.ingress == Side::Tun;
        if from_tun && key.src.0 != d.cfg.local(key.src.0) {
            return;
        }
        let (client, c2s) = if from_tun && key.src.1 == d.cfg.listen_port {
            // The listener toward the client.
            (SocketAddr::new(key.dst.0, key.dst.1), false)
        } else if from_tun {
            // The interception engine's upstream socket toward the server.
            if let Some(e) = d.upstreams.get_mut(&key.src.1)
                && e.server == SocketAddr::new(key.dst.0, key.dst.1)
            {
                upstream_closed(e, (c.fin, false), c.rst, now);
                withdraw_upstream_if_closed(&mut self.offload_ops, &d.cfg, key.src.1, e);
            }
            return;
        } else if key.ingress == Side::Outside
            && d.cfg.is_upstream_port(key.dst.1)
            && let Some(e) = d.upstreams.get_mut(&key.dst.1)
            && e.client == key.dst.0
            && e.server == SocketAddr::new(key.src.0, key.src.1)
        {
            // The server toward the upstream socket.
            upstream_closed(e, (false, c.fin), c.rst, now);
            withdraw_upstream_if_closed(&mut self.offload_ops, &d.cfg, key.dst.1, e);
            return;
        } else {
            // The client toward the server (the listener, after the NAT).
            (SocketAddr::new(key.src.0, key.src.1), true)
        };
        let Some(e) = d.clients.get(&client) else { return };
        if let Some(flow) = self.table.get_mut(&e.key) {
            let before = (flow.fins, flow.state);
            close(flow, c2s, c.fin, c.rst);
            // Only news moves the idle timer: the map keeps saying it at every count.
            if (flow.fins, flow.state) != before {
                flow.last_mono = flow.last_mono.max(now.mono_ms);
            }
            withdraw_if_closing(&mut self.offload_ops, Some(d), client, flow);
        }
    }
}

/// Withdraws the kernel NAT of the diverted `flow` from `client` once it closes (both FINs or
/// a RST, whichever side they came from).
pub(in crate::engine) fn withdraw_if_closing(
    ops: &mut VecDeque<OffloadOp>,
    d: Option<&DivertState>,
    client: SocketAddr,
    flow: &mut Flow,
) {
    if flow.state != TcpState::Closing || flow.offload != Offload::Active {
        return;
    }
    flow.offload = Offload::Withdrawn;
    if let Some(d) = d
        && let Some(e) = d.clients.get(&client)
    {
        ops.push_back(OffloadOp::remove(client_entries(&d.cfg, client, e)));
    }
}

/// Notes FINs (engine side, server side) and a RST of upstream connection `e`, seen by the
/// engine or carried by the fast path; news restarts its idle timer (the linger after the
/// close).
pub(super) fn upstream_closed(e: &mut UpstreamEntry, fins: (bool, bool), rst: bool, now: Now) {
    let before = (e.fins, e.reset);
    e.fins.0 |= fins.0;
    e.fins.1 |= fins.1;
    e.reset |= rst;
    if (e.fins, e.reset) != before {
        e.last_mono = e.last_mono.max(now.mono_ms);
    }
}

/// Withdraws the kernel NAT of upstream connection `port` once it closed.
pub(super) fn withdraw_upstream_if_closed(
    ops: &mut VecDeque<OffloadOp>,
    cfg: &DivertConfig,
    port: u16,
    e: &mut UpstreamEntry,
) {
    if e.closed() && e.offloaded {
        e.offloaded = false;
        ops.push_back(OffloadOp::remove(upstream_entries(cfg, port, e)));
    }
}

/// The kernel NAT of a diverted client: its segments to the listener, the listener's back.
pub(super) fn client_entries(
    cfg: &DivertConfig,
    client: SocketAddr,
    e: &ClientEntry,
) -> [FastEntry; 2] {
    let listener = cfg.listener(client.ip());
    let c = (client.ip(), client.port());
    [
        FastEntry {
            key: DirKey {
                ingress: Side::Inside,
                vlan: e.vlan.unwrap_or(0),
                proto: Proto::Tcp,
                src: c,
                dst: (e.orig.ip(), e.orig.port()),
            },
            rewrite: Rewrite::ToTun { dst: listener },
            // A retransmitted SYN: to the listener, as the engine would send it.
            syn: true,
        },
        FastEntry {
            key: DirKey {
                ingress: Side::Tun,
                vlan: 0,
                proto: Proto::Tcp,
                src: (listener.ip(), listener.port()),
                dst: c,
            },
            rewrite: Rewrite::ToPort {
                src: e.orig,
                out: Side::Inside,
                src_mac: e.server_mac,
                dst_mac: e.client_mac,
                vlan: e.vlan,
            },
            // The listener's SYN-ACK.
            syn: true,
        },
    ]
}

/// The kernel NAT of an upstream connection on reserved `port`: out with the client's
/// address, the server's replies back to the interception engine's socket.
pub(super) fn upstream_entries(cfg: &DivertConfig, port: u16, e: &UpstreamEntry) -> [FastEntry; 2] {
    let local = SocketAddr::new(cfg.local(e.client), port);
    let server = (e.server.ip(), e.server.port());
    [
        FastEntry {
            key: DirKey {
                ingress: Side::Tun,
                vlan: 0,
                proto: Proto::Tcp,
                src: (local.ip(), port),
                dst: server,
            },
            rewrite: Rewrite::ToPort {
                src: SocketAddr::new(e.client, port),
                out: Side::Outside,
                src_mac: e.client_mac,
                dst_mac: e.router_mac,
                vlan: e.vlan,
            },
            // Set up at the port reservation, before the connect: its SYN and the server's
            // SYN-ACK need nothing from the engine.
            syn: true,
        },
        FastEntry {
            key: DirKey {
                ingress: Side::Outside,
                vlan: e.vlan.unwrap_or(0),
                proto: Proto::Tcp,
                src: server,
                dst: (e.client, port),
            },
            rewrite: Rewrite::ToTun { dst: local },
            syn: true,
        },
    ]
}
