//! Helpers shared by the engine's integration tests.
#![allow(clippy::unwrap_used, dead_code)]

use std::sync::Arc;

use arc_swap::ArcSwap;
use sluice_dataplane::engine::{Action, Engine, Now, OffloadOp, Settings, Side};
use sluice_dataplane::record::Record;
use sluice_rules::IdentityOverlay;
use sluice_rules::catalog::ShippedOnly;

/// An engine deciding with the shipped `rules/default.toml`.
pub fn engine(settings: Settings) -> Engine {
    engine_with(&[], settings)
}

/// An engine deciding with the shipped `rules/default.toml`, each `(from, to)` of `edits`
/// replaced in its text (each must be there).
pub fn engine_with(edits: &[(&str, &str)], settings: Settings) -> Engine {
    let mut text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../rules/default.toml"))
            .unwrap();
    for (from, to) in edits {
        assert!(text.contains(from), "{from} is not in default.toml");
        text = text.replace(from, to);
    }
    let policy = sluice_rules::compile("default.toml", &text, &ShippedOnly).unwrap().policy;
    Engine::new(
        Arc::new(ArcSwap::from_pointee(policy)),
        Arc::new(ArcSwap::from_pointee(IdentityOverlay::default())),
        settings,
    )
}

/// Engine time `ms` milliseconds after its start.
pub fn now(ms: u64) -> Now {
    Now { mono_ms: ms, unix_ms: 1_700_000_000_000 + ms }
}

/// MACs of the lab's client and router sides.
pub const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
/// The router's MAC.
pub const ROUTER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

/// A TCP frame between `client`:40000 and `server`:443 (`c2s`: from the client), with its
/// flags: `syn`, and the acknowledgment number if any.
pub fn tcp(
    client: &str,
    server: &str,
    c2s: bool,
    seq: u32,
    ack: Option<u32>,
    syn: bool,
    payload: &[u8],
) -> Vec<u8> {
    use std::net::IpAddr;
    let (c, s): (IpAddr, IpAddr) = (client.parse().unwrap(), server.parse().unwrap());
    let (smac, dmac, src, dst, sp, dp) = if c2s {
        (CLIENT_MAC, ROUTER_MAC, c, s, 40_000, 443)
    } else {
        (ROUTER_MAC, CLIENT_MAC, s, c, 443, 40_000)
    };
    let eth = etherparse::PacketBuilder::ethernet2(smac, dmac);
    let ip = match (src, dst) {
        (IpAddr::V4(a), IpAddr::V4(b)) => eth.ipv4(a.octets(), b.octets(), 64),
        (IpAddr::V6(a), IpAddr::V6(b)) => eth.ipv6(a.octets(), b.octets(), 64),
        _ => unreachable!(),
    };
    let mut t = ip.tcp(sp, dp, seq, 64_000);
    if syn {
        t = t.syn();
    }
    if let Some(a) = ack {
        t = t.ack(a);
    }
    let mut out = Vec::new();
    t.write(&mut out, payload).unwrap();
    out
}

/// A captured ClientHello from `dataplane/testdata/clienthello/`.
pub fn hello_file(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/testdata/clienthello/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// The engine driven as its owner drives it: after each call, what it emitted is polled.
pub trait Drive {
    /// Handles `frame` from `side`; the frames it emitted are appended to `out` as
    /// (port, frame), in order.
    fn feed(
        &mut self,
        side: Side,
        frame: &[u8],
        now: Now,
        out: &mut Vec<(Side, Vec<u8>)>,
    ) -> Action;
    /// Handles a packet read from the TUN, as [`Drive::feed`].
    fn feed_tun(&mut self, pkt: &[u8], now: Now, out: &mut Vec<(Side, Vec<u8>)>);
    /// The records produced so far.
    fn records(&mut self) -> Vec<Record>;
    /// The fast-path operations produced so far, appended to `into`.
    fn offload_ops_into(&mut self, into: &mut Vec<OffloadOp>);
}

impl Drive for Engine {
    fn feed(
        &mut self,
        side: Side,
        frame: &[u8],
        now: Now,
        out: &mut Vec<(Side, Vec<u8>)>,
    ) -> Action {
        let action = self.handle(side, frame, now);
        out.extend(std::iter::from_fn(|| self.poll_transmit()).map(|t| (t.side, t.frame)));
        action
    }

    fn feed_tun(&mut self, pkt: &[u8], now: Now, out: &mut Vec<(Side, Vec<u8>)>) {
        self.handle_tun(pkt, now);
        out.extend(std::iter::from_fn(|| self.poll_transmit()).map(|t| (t.side, t.frame)));
    }

    fn records(&mut self) -> Vec<Record> {
        std::iter::from_fn(|| self.poll_record()).collect()
    }

    fn offload_ops_into(&mut self, into: &mut Vec<OffloadOp>) {
        into.extend(std::iter::from_fn(|| self.poll_offload()));
    }
}
