//! The failure program, IO side: loads `bpf/bypass.c` (built by `build.rs`), attaches it at
//! ingress of both ports as netlink filters, which stay when this process is gone, and beats
//! into its map while the data plane runs (ARCHITECTURE.md, "Failure"). When the beat stops
//! for `stale` the kernel acts as [`OnStale`] says: joins the two ports (frames from or to the
//! held AI addresses stay dropped), or drops every frame. The next data plane finds the
//! program left behind, reads what it did while no data plane ran (an [`Outage`]) and
//! replaces it.
#![allow(unsafe_code)]

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use aya::maps::{
    Array, HashMap as BpfMap, Map, MapData, MapError, MapInfo, PerCpuArray, PerCpuValues,
};
use aya::programs::tc::{NlOptions, TcAttachOptions};
use aya::programs::{ProgramError, SchedClassifier, TcAttachType, loaded_programs, tc};
use aya::{Ebpf, EbpfError, EbpfLoader};

/// The compiled program (see `build.rs`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bypass.o"));

/// The program's name, by which the one left behind is found.
const PROGRAM: &str = "sluice_bypass";

/// `struct bypass_cfg` of bypass.c.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct Cfg {
    heartbeat_ns: u64,
    heartbeat_ms: u64,
    stale_ns: u64,
    netns: u64,
    inside: u32,
    outside: u32,
    hold_ai: u32,
    closed: u32,
}

// SAFETY: plain data with a C layout and no padding (mirrors bypass.c).
unsafe impl aya::Pod for Cfg {}

/// Statistics the program counts (`bypass_stats`: passed, their bytes, held, refused).
const STATS: usize = 4;

/// What the ports do once no data plane beats (`--on-failure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStale {
    /// Joined port to port; with `hold_ai`, frames from or to the held addresses dropped.
    Open {
        /// Drop frames from or to the held (AI) addresses.
        hold_ai: bool,
    },
    /// Every frame dropped.
    Closed,
}

impl OnStale {
    /// `open` or `closed`, as `--on-failure` says it.
    pub fn name(self) -> &'static str {
        match self {
            OnStale::Open { .. } => "open",
            OnStale::Closed => "closed",
        }
    }
}

/// What the ports did while no data plane ran (from the program left behind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Outage {
    /// `open` (the ports were joined) or `closed` (every frame dropped).
    pub on_failure: &'static str,
    /// Unix ms of the last beat of the data plane that went away.
    pub last_beat_ms: u64,
    /// Unix ms the program took over (`stale` after the last beat).
    pub began_ms: u64,
    /// Unix ms this data plane took the ports back.
    pub ended_ms: u64,
    /// Frames sent port to port uninspected.
    pub passed_frames: u64,
    /// Their bytes.
    pub passed_bytes: u64,
    /// Frames from or to held (AI) addresses dropped.
    pub held_frames: u64,
    /// Frames dropped under `closed`.
    pub refused_frames: u64,
}

/// Why the bypass could not be installed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BypassError {
    /// The kernel refused the object.
    #[error("loading the bypass program: {0}")]
    Load(#[from] EbpfError),
    /// The program could not be loaded or attached.
    #[error("the bypass program: {0}")]
    Program(#[from] ProgramError),
    /// A map is missing or of the wrong shape.
    #[error("a bypass map: {0}")]
    Map(#[from] MapError),
    /// A port has no such interface, or netlink refused.
    #[error("port {port}: {why}")]
    Port {
        /// The port.
        port: String,
        /// What went wrong.
        why: String,
    },
}

/// The installed bypass. The heartbeat and the held addresses have locks of their own, so
/// that updating many addresses never delays a beat.
pub struct Bypass {
    on_stale: OnStale,
    beat: Mutex<Beat>,
    hold: Mutex<Held>,
    /// Keeps the program loaded (its filters hold it in the kernel after this goes).
    _ebpf: Mutex<Ebpf>,
}

struct Beat {
    cfg: Array<MapData, Cfg>,
    base: Cfg,
    /// Unix ms of the last beat.
    last_ms: u64,
    /// What the program counted (read after each beat: counts while this data plane runs
    /// are a heartbeat that came late, not an outage, and are reset).
    stats: PerCpuArray<MapData, u64>,
}

struct Held {
    v4: BpfMap<MapData, u32, u8>,
    v6: BpfMap<MapData, [u8; 16], u8>,
    addrs: HashSet<IpAddr>,
}

impl std::fmt::Debug for Bypass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bypass").finish_non_exhaustive()
    }
}

/// How long a new bypass waits for its first beat: the data plane starting its threads.
const GRACE: Duration = Duration::from_secs(5);

/// The monotonic clock the program compares with (`bpf_ktime_get_ns`) and Unix ms.
fn clocks() -> (u64, u64) {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let mono = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    (mono, unix)
}

fn ifindex(port: &str) -> Result<u32, BypassError> {
    crate::sock::ifindex(port)
        .map(|i| i as u32)
        .map_err(|e| BypassError::Port { port: port.into(), why: e.to_string() })
}

/// The inode of this process's network namespace: with the ifindex, names a port on the host.
fn netns() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/net").map_or(0, |m| m.ino())
}

/// Removes the bypass a data plane left on `inside` and `outside`, if any, and reports what
/// passed while it was in charge.
pub fn remove(inside: &str, outside: &str) -> Result<Option<Outage>, BypassError> {
    let outage = left_behind(ifindex(inside)?)?;
    for port in [inside, outside] {
        match tc::qdisc_detach_program(port, TcAttachType::Ingress, PROGRAM) {
            Ok(()) => {}
            // Nothing attached (or no clsact qdisc at all): nothing to remove.
            Err(tc::TcError::IoError(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) if outage.is_none() => {
                tracing::debug!(port, "no bypass to remove: {e}");
            }
            Err(e) => return Err(BypassError::Port { port: port.into(), why: e.to_string() }),
        }
    }
    Ok(outage)
}

/// The outage counted by the bypass program attached to the port `inside` of this network
/// namespace (found by its name and its map; programs or maps that cannot be read are passed
/// over: a host may run other BPF programs, and other appliances in other namespaces).
fn left_behind(inside: u32) -> Result<Option<Outage>, BypassError> {
    let ns = netns();
    Ok(loaded_programs()
        .flatten()
        .filter(|p| p.name_as_str() == Some(PROGRAM))
        .filter_map(|p| p.map_ids().ok().flatten())
        .find_map(|ids| outage_of(&ids, inside, ns)))
}

/// The outage in the maps `ids` of one bypass program, if it serves `inside` in namespace `ns`.
fn outage_of(ids: &[u32], inside: u32, ns: u64) -> Option<Outage> {
    let named = |want: &str| {
        ids.iter().copied().find(|&id| {
            MapInfo::from_id(id).ok().as_ref().and_then(MapInfo::name_as_str) == Some(want)
        })
    };
    let map = |id: u32| MapData::from_id(id).and_then(Map::from_map_data).ok();
    let cfg: Array<MapData, Cfg> = map(named("bypass_cfg")?)?.try_into().ok()?;
    let c = cfg.get(&0, 0).ok()?;
    if c.inside != inside || c.netns != ns {
        return None;
    }
    let stats: PerCpuArray<MapData, u64> = map(named("bypass_stats")?)?.try_into().ok()?;
    // (A program of an earlier version counts fewer statistics: the missing ones are 0.)
    let sum = |i: u32| stats.get(&i, 0).map_or(0, |v| v.iter().sum::<u64>());
    let o = Outage {
        on_failure: if c.closed != 0 { "closed" } else { "open" },
        last_beat_ms: c.heartbeat_ms,
        began_ms: c.heartbeat_ms + c.stale_ns / 1_000_000,
        ended_ms: clocks().1,
        passed_frames: sum(0),
        passed_bytes: sum(1),
        held_frames: sum(2),
        refused_frames: sum(3),
    };
    // A handover within the bound (a restart quicker than `stale`) is no outage.
    let counted = o.passed_frames + o.held_frames + o.refused_frames;
    (o.ended_ms > o.began_ms || counted > 0).then_some(o)
}

impl Bypass {
    /// Replaces any program left on the ports by a new one, beating from now on: once no
    /// beat came for `stale`, frames go port to port (with `hold_ai`, those from or to the
    /// held addresses are dropped then) or are all dropped, as `on_stale` says.
    pub fn install(
        inside: &str,
        outside: &str,
        stale: Duration,
        on_stale: OnStale,
    ) -> Result<(Bypass, Option<Outage>), BypassError> {
        let outage = remove(inside, outside)?;
        let mut ebpf = EbpfLoader::new().load(OBJECT)?;
        let take = |e: &mut Ebpf, name: &str| {
            e.take_map(name).ok_or_else(|| MapError::InvalidName { name: name.into() })
        };
        let mut cfg: Array<MapData, Cfg> = take(&mut ebpf, "bypass_cfg")?.try_into()?;
        let hold4 = take(&mut ebpf, "bypass_hold4")?.try_into()?;
        let hold6 = take(&mut ebpf, "bypass_hold6")?.try_into()?;
        let stats = take(&mut ebpf, "bypass_stats")?.try_into()?;
        let (mono, unix) = clocks();
        let base = Cfg {
            heartbeat_ns: mono,
            heartbeat_ms: unix,
            stale_ns: stale.as_nanos() as u64,
            netns: netns(),
            inside: ifindex(inside)?,
            outside: ifindex(outside)?,
            hold_ai: u32::from(on_stale == OnStale::Open { hold_ai: true }),
            closed: u32::from(on_stale == OnStale::Closed),
        };
        // A first beat ahead of time (the program counts one from the future as fresh): the
        // threads that beat start later, and a zero beat would be stale at once.
        // (Both clocks ahead: a data plane that dies before its first beat leaves an outage
        // that begins when the program did take over.)
        let first = Cfg {
            heartbeat_ns: mono + GRACE.as_nanos() as u64,
            heartbeat_ms: unix + GRACE.as_millis() as u64,
            ..base
        };
        cfg.set(0, first, 0)?;
        let prog: &mut SchedClassifier =
            ebpf.program_mut(PROGRAM).ok_or(ProgramError::UnexpectedProgramType)?.try_into()?;
        prog.load()?;
        for port in [inside, outside] {
            // The clsact qdisc may be there already (the fast path's, or an earlier run's).
            let _ = tc::qdisc_add_clsact(port);
            // Priority 1, ahead of any filter with an automatic one: before Linux 6.6 the fast
            // path is a netlink filter too, which outlives a killed process and never passes
            // a frame on; this program must see every frame first.
            let opts = TcAttachOptions::Netlink(NlOptions { priority: 1, ..NlOptions::default() });
            let id = prog.attach_with_options(port, TcAttachType::Ingress, opts)?;
            // Owned by nobody here: the filter stays when this process ends, however it ends.
            std::mem::forget(prog.take_link(id)?);
        }
        let b = Bypass {
            on_stale,
            beat: Mutex::new(Beat { cfg, base, stats, last_ms: unix }),
            hold: Mutex::new(Held { v4: hold4, v6: hold6, addrs: HashSet::new() }),
            _ebpf: Mutex::new(ebpf),
        };
        Ok((b, outage))
    }

    /// The data plane is alive: the program waits another `stale`. Returns what the program
    /// did since the last beat if it took the ports meanwhile (a beat came late: the counts
    /// are then reset, so that the next data plane's outage is only its own).
    pub fn beat(&self) -> Result<Option<Outage>, BypassError> {
        let (mono, unix) = clocks();
        let mut g = self.beat.lock().unwrap_or_else(PoisonError::into_inner);
        let c = Cfg { heartbeat_ns: mono, heartbeat_ms: unix, ..g.base };
        g.cfg.set(0, c, 0)?;
        let last_ms = std::mem::replace(&mut g.last_ms, unix);
        let (mut counts, mut cpus) = ([0u64; STATS], 0);
        for (i, n) in (0u32..).zip(counts.iter_mut()) {
            let per_cpu = g.stats.get(&i, 0)?;
            cpus = per_cpu.len();
            *n = per_cpu.iter().sum();
        }
        if counts == [0; STATS] {
            return Ok(None);
        }
        let zero = || {
            PerCpuValues::try_from(vec![0u64; cpus]).map_err(|e| {
                MapError::SyscallError(aya::sys::SyscallError { call: "nr_cpus", io_error: e })
            })
        };
        for i in 0..STATS as u32 {
            g.stats.set(i, zero()?, 0)?;
        }
        Ok(Some(Outage {
            on_failure: self.on_stale.name(),
            last_beat_ms: last_ms,
            began_ms: last_ms + g.base.stale_ns / 1_000_000,
            ended_ms: unix,
            passed_frames: counts[0],
            passed_bytes: counts[1],
            held_frames: counts[2],
            refused_frames: counts[3],
        }))
    }

    /// Makes `addrs` the addresses held in bypass (added and removed to match); the first
    /// error, after trying every address.
    pub fn hold(&self, addrs: &HashSet<IpAddr>) -> Result<(), BypassError> {
        if self.on_stale != (OnStale::Open { hold_ai: true }) {
            return Ok(());
        }
        let mut h = self.hold.lock().unwrap_or_else(PoisonError::into_inner);
        let Held { v4, v6, addrs: held } = &mut *h;
        let mut first = None;
        for gone in held.difference(addrs) {
            let _ = match gone {
                IpAddr::V4(a) => v4.remove(&u32::from_ne_bytes(a.octets())),
                IpAddr::V6(a) => v6.remove(&a.octets()),
            };
        }
        let mut now_held: HashSet<IpAddr> = held.intersection(addrs).copied().collect();
        for new in addrs.difference(held) {
            let r = match new {
                IpAddr::V4(a) => v4.insert(u32::from_ne_bytes(a.octets()), 1, 0),
                IpAddr::V6(a) => v6.insert(a.octets(), 1, 0),
            };
            match r {
                Ok(()) => {
                    now_held.insert(*new);
                }
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        *held = now_held;
        first.map_or(Ok(()), |e| Err(e.into()))
    }
}
