//! The kernel fast path, IO side: loads the BPF programs of `bpf/fastpath.c` (built by
//! `build.rs`), attaches them to the two ports, and keeps their map of offloaded flows in step
//! with the engine's [`OffloadOp`]s.
//!
//! Why: forwarding through user space costs a copy into the receive ring, a wake-up and a
//! send per frame; the kernel forwards port to port without any of them. Like the flow
//! offload of commercial firewalls, the engine keeps deciding every flow (SYN, ClientHello,
//! QUIC Initial, DNS answers all reach it) and hands only the flows it has allowed to the
//! kernel, which counts what it forwards; the counts come back into the flow records through
//! [`FastPath::counts`]. `--fast-path off` forwards every frame through the engine.
//!
//! Two programs share the map: a tc ingress classifier on each port that redirects frames of
//! offloaded flows to the other port, and a socket filter on the AF_PACKET receive sockets that
//! keeps those frames out of the engine (packet taps see frames before tc ingress does). On
//! kernels from 6.6 the classifiers are attached as TCX links, which the kernel removes when
//! the process exits, however it exits; older kernels get a `clsact` qdisc filter instead.
#![allow(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::BorrowedFd;
use std::sync::{Mutex, PoisonError};

use aya::maps::{HashMap as BpfMap, MapData, MapError, PerCpuArray, RingBuf};
use aya::programs::{ProgramError, SchedClassifier, SocketFilter, TcAttachType, tc};
use aya::{Ebpf, EbpfError, EbpfLoader};

use crate::engine::{Carried, Closes, DirKey, Engine, FastEntry, Now, OffloadOp, Rewrite, Side};
use crate::wire::frame::Proto;

/// The compiled programs (see `build.rs`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fastpath.o"));

/// `struct flow_key` of fastpath.c: one direction of a flow.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Key {
    src: [u8; 16],
    dst: [u8; 16],
    ifindex: u32,
    /// Network byte order in memory, as on the wire.
    sport: u16,
    dport: u16,
    vlan: u16,
    proto: u8,
    family: u8,
}

/// `struct flow_value` of fastpath.c.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Value {
    out_ifindex: u32,
    action: u8,
    flags: u8,
    vlan: u16,
    addr: [u8; 16],
    /// Network byte order in memory.
    port: u16,
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    /// FLAG_CLOSE entries: a FIN, a RST was carried (set by the programs).
    fin: u8,
    rst: u8,
    packets: u64,
    bytes: u64,
}

const ACT_FORWARD: u8 = 0;
const ACT_TO_TUN: u8 = 1;
const ACT_TO_PORT: u8 = 2;
const FLAG_SYN: u8 = 1;
const FLAG_CLOSE: u8 = 2;

/// `struct close_event` of fastpath.c: a FIN or RST a NAT entry carried.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct CloseEvent {
    key: Key,
    fin: u8,
    rst: u8,
    pad: u16,
}

// SAFETY: both are plain `repr(C)` integers and byte arrays without padding (44 and 56 bytes,
// checked below), valid for any bit pattern.
unsafe impl aya::Pod for Key {}
// SAFETY: as above.
unsafe impl aya::Pod for Value {}

const _: () = assert!(std::mem::size_of::<Key>() == 44);
const _: () = assert!(std::mem::size_of::<Value>() == 56);
const _: () = assert!(std::mem::size_of::<CloseEvent>() == 48);

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// Why the fast path could not be set up (the data plane then forwards through the engine).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FastPathError {
    /// The kernel refused the object or its map.
    #[error("loading the BPF object: {0}")]
    Load(#[from] EbpfError),
    /// A program could not be loaded or attached.
    #[error("BPF program {name}: {source}")]
    Program {
        /// Which one.
        name: &'static str,
        /// Why.
        source: ProgramError,
    },
    /// The flow map is missing or of the wrong shape.
    #[error("BPF map: {0}")]
    Map(#[from] MapError),
    /// An interface has no index.
    #[error("interface {0}: {1}")]
    Interface(String, std::io::Error),
}

/// The maps.
struct Inner {
    flows: BpfMap<MapData, Key, Value>,
    stats: PerCpuArray<MapData, u64>,
    closes: RingBuf<MapData>,
}

/// The fast path's own counters (`stats` in fastpath.c).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Frames the kernel forwarded port to port.
    pub redirected: u64,
    /// Frames the classifier saw without the socket filter's decision (it then decided
    /// alone; with the data plane running this stays 0).
    pub unmarked: u64,
}

/// The loaded, attached fast path.
pub struct FastPath {
    /// Owns the programs and their attachments (dropping it detaches them).
    _bpf: Ebpf,
    inner: Mutex<Inner>,
    /// Interface indexes of the inside and outside ports and of the TUN (0 without one).
    ifindex: [u32; 3],
}

impl std::fmt::Debug for FastPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastPath").field("ifindex", &self.ifindex).finish()
    }
}

/// What [`FastPath::apply`] did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Last counts of withdrawn entries, to give back to the engine.
    pub last: Vec<Carried>,
    /// Flows (by their client → server key) the map refused (full, or the kernel said no):
    /// they stay on the engine's path.
    pub refused: Vec<DirKey>,
}

fn program<'a, T>(bpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, FastPathError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let p = bpf
        .program_mut(name)
        .ok_or(FastPathError::Program { name, source: ProgramError::NotLoaded })?;
    p.try_into().map_err(|source| FastPathError::Program { name, source })
}

/// Attaches classifier `name` to `port`: a TCX link where the kernel has them (6.6 on), which
/// goes with the process; before that, a filter on the `clsact` qdisc, which outlives a process
/// that is killed: one left by an earlier run (its map then frozen as it was) is taken off
/// first.
fn attach(
    cls: &mut SchedClassifier,
    port: &str,
    at: TcAttachType,
    name: &'static str,
) -> Result<(), FastPathError> {
    if cls.attach(port, at).is_ok() {
        return Ok(());
    }
    let _ = tc::qdisc_add_clsact(port);
    let _ = tc::qdisc_detach_program(port, at, name);
    cls.attach(port, at).map(|_| ()).map_err(|source| FastPathError::Program { name, source })
}

impl FastPath {
    /// Loads the programs with room for `max_flows` flows, filters the receive `sockets`, and
    /// attaches the classifier at ingress of both ports (and, with a `tun`, at its egress:
    /// the divert NAT).
    pub fn load(
        inside: &str,
        outside: &str,
        tun: Option<&str>,
        sockets: &[BorrowedFd<'_>],
        max_flows: usize,
    ) -> Result<FastPath, FastPathError> {
        let index = |name: &str| {
            crate::sock::ifindex(name)
                .map(|i| i as u32)
                .map_err(|e| FastPathError::Interface(name.to_owned(), e))
        };
        let ifindex = [index(inside)?, index(outside)?, tun.map(index).transpose()?.unwrap_or(0)];
        let entries = u32::try_from(max_flows.saturating_mul(2)).unwrap_or(u32::MAX).max(2);
        let mut bpf = EbpfLoader::new().btf(None).map_max_entries("flows", entries).load(OBJECT)?;
        let map = bpf.take_map("flows").ok_or(MapError::InvalidName { name: "flows".into() })?;
        let flows = BpfMap::<MapData, Key, Value>::try_from(map)?;
        let map = bpf.take_map("stats").ok_or(MapError::InvalidName { name: "stats".into() })?;
        let stats = PerCpuArray::<MapData, u64>::try_from(map)?;
        let map = bpf.take_map("closes").ok_or(MapError::InvalidName { name: "closes".into() })?;
        let closes = RingBuf::try_from(map)?;
        // The filter first: once the classifier redirects, the engine must not see those frames.
        let sock: &mut SocketFilter = program(&mut bpf, "fastpath_sock")?;
        sock.load().map_err(|source| FastPathError::Program { name: "fastpath_sock", source })?;
        for s in sockets {
            sock.attach(s)
                .map_err(|source| FastPathError::Program { name: "fastpath_sock", source })?;
        }
        let cls: &mut SchedClassifier = program(&mut bpf, "fastpath_tc")?;
        cls.load().map_err(|source| FastPathError::Program { name: "fastpath_tc", source })?;
        for port in [inside, outside] {
            attach(cls, port, TcAttachType::Ingress, "fastpath_tc")?;
        }
        if let Some(tun) = tun {
            let egress: &mut SchedClassifier = program(&mut bpf, "fastpath_tun")?;
            egress
                .load()
                .map_err(|source| FastPathError::Program { name: "fastpath_tun", source })?;
            attach(egress, tun, TcAttachType::Egress, "fastpath_tun")?;
        }
        Ok(FastPath { _bpf: bpf, inner: Mutex::new(Inner { flows, stats, closes }), ifindex })
    }

    fn key(&self, k: &DirKey) -> Option<Key> {
        key(&self.ifindex, k)
    }

    /// Applies the operations `eng` produced so far and gives it back what the map said (last
    /// counts of withdrawn entries, refusals). Call it with the engine locked, so the map
    /// follows the engine's order; `ops` is scratch space.
    pub fn sync(&self, eng: &mut Engine, ops: &mut Vec<OffloadOp>, now: Now) {
        ops.extend(std::iter::from_fn(|| eng.poll_offload()));
        if ops.is_empty() {
            return;
        }
        let done = self.apply(ops);
        ops.clear();
        for c in &done.last {
            eng.offload_carried(c, now);
        }
        for k in &done.refused {
            eng.offload_refused(k);
        }
    }

    /// Applies the engine's operations in order. Call it with the engine still locked, so the
    /// map follows the engine's order exactly (an entry left behind would let a later flow with
    /// the same addresses skip classification).
    pub fn apply(&self, ops: &[OffloadOp]) -> Applied {
        let mut done = Applied::default();
        if ops.is_empty() {
            return done;
        }
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        for op in ops {
            match op {
                OffloadOp::Add(entries) => {
                    let kv = |e: &FastEntry| Some((self.key(&e.key)?, value(&self.ifindex, e)?));
                    let (Some(a), Some(b)) = (kv(&entries[0]), kv(&entries[1])) else {
                        done.refused.push(entries[0].key);
                        continue;
                    };
                    // Both directions or neither: half a flow in the kernel would split its
                    // counts and its order between two paths.
                    let ok = inner.flows.insert(a.0, a.1, 0).is_ok()
                        && inner.flows.insert(b.0, b.1, 0).is_ok();
                    if !ok {
                        let _ = inner.flows.remove(&a.0);
                        let _ = inner.flows.remove(&b.0);
                        done.refused.push(entries[0].key);
                    }
                }
                OffloadOp::Remove(dirs) => {
                    for d in dirs {
                        let Some(k) = self.key(d) else { continue };
                        if let Ok(v) = inner.flows.get(&k, 0) {
                            done.last.push(carried(*d, &v));
                        }
                        let _ = inner.flows.remove(&k);
                    }
                }
            }
        }
        done
    }

    /// The fast path's counters, summed over the CPUs.
    pub fn stats(&self) -> Stats {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let sum = |i: u32| inner.stats.get(&i, 0).map_or(0, |v| v.iter().sum());
        Stats { redirected: sum(0), unmarked: sum(1) }
    }

    /// The counts of every offloaded direction since it was offloaded, and the closes its
    /// entry noted.
    pub fn counts(&self) -> Vec<Carried> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner
            .flows
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(k, v)| Some(carried(dir_key(&self.ifindex, &k)?, &v)))
            .collect()
    }

    /// The closes NAT entries carried since the last call (read from the ring buffer, no
    /// system call): (direction, what was carried).
    pub fn closes(&self) -> Vec<(DirKey, Closes)> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = Vec::new();
        while let Some(item) = inner.closes.next() {
            if let Some(e) = close_event(&item)
                && let Some(k) = dir_key(&self.ifindex, &e.key)
            {
                out.push((k, Closes { fin: e.fin != 0, rst: e.rst != 0 }));
            }
        }
        out
    }
}

/// What the map's value `v` of direction `key` says the kernel carried.
fn carried(key: DirKey, v: &Value) -> Carried {
    Carried {
        key,
        packets: v.packets,
        bytes: v.bytes,
        closes: Closes { fin: v.fin != 0, rst: v.rst != 0 },
    }
}

/// An event of the `closes` ring (`None` for one of another size).
fn close_event(b: &[u8]) -> Option<CloseEvent> {
    if b.len() != std::mem::size_of::<CloseEvent>() {
        return None;
    }
    let mut key = Key::default();
    key.src.copy_from_slice(&b[0..16]);
    key.dst.copy_from_slice(&b[16..32]);
    key.ifindex = u32::from_ne_bytes(b[32..36].try_into().ok()?);
    key.sport = u16::from_ne_bytes(b[36..38].try_into().ok()?);
    key.dport = u16::from_ne_bytes(b[38..40].try_into().ok()?);
    key.vlan = u16::from_ne_bytes(b[40..42].try_into().ok()?);
    key.proto = b[42];
    key.family = b[43];
    Some(CloseEvent { key, fin: b[44], rst: b[45], pad: 0 })
}

/// The map's key of `k` (`None` for what the fast path does not carry).
fn key(ifindex: &[u32; 3], k: &DirKey) -> Option<Key> {
    let proto = match k.proto {
        Proto::Tcp => IPPROTO_TCP,
        Proto::Udp => IPPROTO_UDP,
        _ => return None,
    };
    let mut key = Key {
        ifindex: side_index(ifindex, k.ingress)?,
        sport: u16::from_ne_bytes(k.src.1.to_be_bytes()),
        dport: u16::from_ne_bytes(k.dst.1.to_be_bytes()),
        vlan: k.vlan,
        proto,
        ..Key::default()
    };
    match (k.src.0, k.dst.0) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            key.src[..4].copy_from_slice(&s.octets());
            key.dst[..4].copy_from_slice(&d.octets());
            key.family = 4;
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            key.src = s.octets();
            key.dst = d.octets();
            key.family = 6;
        }
        _ => return None,
    }
    Some(key)
}

/// The map's value for `e`: where it goes and what is rewritten (`None` when it cannot be
/// carried: no TUN, or an address family that does not match the key's).
fn value(ifindex: &[u32; 3], e: &FastEntry) -> Option<Value> {
    let family_ok = |a: IpAddr| a.is_ipv4() == e.key.src.0.is_ipv4();
    let addr = |a: IpAddr| match a {
        IpAddr::V4(v) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v.octets());
            b
        }
        IpAddr::V6(v) => v.octets(),
    };
    let port = |p: u16| u16::from_ne_bytes(p.to_be_bytes());
    // NAT entries carry the closes too: the engine follows them from the notes.
    let flags = if e.syn { FLAG_SYN } else { 0 } | FLAG_CLOSE;
    Some(match e.rewrite {
        Rewrite::Forward => Value {
            out_ifindex: side_index(ifindex, e.key.ingress.other())?,
            action: ACT_FORWARD,
            ..Value::default()
        },
        Rewrite::ToTun { dst } if family_ok(dst.ip()) => Value {
            out_ifindex: side_index(ifindex, Side::Tun)?,
            action: ACT_TO_TUN,
            flags,
            addr: addr(dst.ip()),
            port: port(dst.port()),
            ..Value::default()
        },
        Rewrite::ToPort { src, out, src_mac, dst_mac, vlan } if family_ok(src.ip()) => Value {
            out_ifindex: side_index(ifindex, out).filter(|_| out != Side::Tun)?,
            action: ACT_TO_PORT,
            flags,
            vlan: vlan.unwrap_or(0) & 0x0fff,
            addr: addr(src.ip()),
            port: port(src.port()),
            eth_dst: dst_mac,
            eth_src: src_mac,
            ..Value::default()
        },
        _ => return None,
    })
}

/// The engine's view of a map key.
fn dir_key(ifindex: &[u32; 3], k: &Key) -> Option<DirKey> {
    let ingress = match k.ifindex {
        i if i == ifindex[0] => Side::Inside,
        i if i == ifindex[1] => Side::Outside,
        i if i == ifindex[2] && i != 0 => Side::Tun,
        _ => return None,
    };
    let proto = match k.proto {
        IPPROTO_TCP => Proto::Tcp,
        IPPROTO_UDP => Proto::Udp,
        _ => return None,
    };
    let ip = |b: &[u8; 16]| -> Option<IpAddr> {
        match k.family {
            4 => Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]).into()),
            6 => Some(Ipv6Addr::from(*b).into()),
            _ => None,
        }
    };
    let port = |p: u16| u16::from_be_bytes(p.to_ne_bytes());
    Some(DirKey {
        ingress,
        vlan: k.vlan,
        proto,
        src: (ip(&k.src)?, port(k.sport)),
        dst: (ip(&k.dst)?, port(k.dport)),
    })
}

fn side_index(ifindex: &[u32; 3], s: Side) -> Option<u32> {
    match s {
        Side::Inside => Some(ifindex[0]),
        Side::Outside => Some(ifindex[1]),
        Side::Tun if ifindex[2] != 0 => Some(ifindex[2]),
        Side::Tun => None,
    }
}

#[cfg(test)]
#[path = "fastpath_tests.rs"]
mod tests;
