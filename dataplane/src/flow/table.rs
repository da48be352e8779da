//! The flow table, sized for a million flows in well under 512 MiB (ARCHITECTURE.md, "Flow
//! memory and floods"): flows live in a slab grown a chunk at a time, and the hash index
//! holds only 4-byte slot numbers (its buckets are half empty at worst, as an open-addressing
//! table's are, but empty buckets of 4 bytes cost little). The key is not stored: a flow's own
//! addresses give it. Attempts (TCP flows whose handshake has not completed, reset or not)
//! are evicted oldest first at the cap, and each source may hold only so many of them,
//! counted in a fixed-size sketch (no memory per spoofed source).

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::net::IpAddr;

use hashbrown::{DefaultHashBuilder, HashTable};

use super::{EndReason, Flow, FlowKey, TcpState, Timeouts};

/// Slots per slab chunk.
const CHUNK: usize = 4096;
/// Counters per row of the per-source sketch.
const SKETCH: usize = 1 << 16;

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

/// The source an attempt counts against: its address and MAC. Another host spoofing the
/// address sends from its own MAC and fills its own count, not the victim's; hosts sharing an
/// IPv6 /64 count apart.
type Source = (IpAddr, [u8; 6]);

/// Embryonic flows per source, as a count-min sketch: two rows of counters, each source
/// counted in one counter per row (keyed hashes, seeded per run); its count is the smaller
/// of the two. Exact for every source that shares no counter in one row or the other with a
/// busier one (two sources share both with odds of one in 2^32); fixed memory whatever the
/// number of sources.
struct HalfOpen {
    rows: [Box<[u32]>; 2],
    seeds: [DefaultHashBuilder; 2],
}

impl HalfOpen {
    fn new() -> Self {
        HalfOpen {
            rows: [vec![0; SKETCH].into_boxed_slice(), vec![0; SKETCH].into_boxed_slice()],
            seeds: [DefaultHashBuilder::default(), DefaultHashBuilder::default()],
        }
    }

    fn cells(&self, src: Source) -> [usize; 2] {
        [0, 1].map(|r| self.seeds[r].hash_one(src) as usize % SKETCH)
    }

    fn count(&self, src: Source) -> u32 {
        let [a, b] = self.cells(src);
        self.rows[0][a].min(self.rows[1][b])
    }

    fn add(&mut self, src: Source) {
        let [a, b] = self.cells(src);
        self.rows[0][a] = self.rows[0][a].saturating_add(1);
        self.rows[1][b] = self.rows[1][b].saturating_add(1);
    }

    fn release(&mut self, src: Source) {
        let [a, b] = self.cells(src);
        self.rows[0][a] = self.rows[0][a].saturating_sub(1);
        self.rows[1][b] = self.rows[1][b].saturating_sub(1);
    }

    fn clear(&mut self) {
        self.rows.iter_mut().for_each(|r| r.fill(0));
    }
}

impl std::fmt::Debug for HalfOpen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HalfOpen")
    }
}

/// Flows in chunks of [`CHUNK`] slots, with a free list: growing never copies a flow, and
/// never reserves more than one chunk ahead.
#[derive(Debug, Default)]
struct Slab {
    chunks: Vec<Box<[Option<Flow>]>>,
    free: Vec<u32>,
    len: usize,
}

impl Slab {
    fn get(&self, i: u32) -> Option<&Flow> {
        let i = i as usize;
        self.chunks.get(i / CHUNK)?[i % CHUNK].as_ref()
    }

    fn get_mut(&mut self, i: u32) -> Option<&mut Flow> {
        let i = i as usize;
        self.chunks.get_mut(i / CHUNK)?[i % CHUNK].as_mut()
    }

    fn insert(&mut self, flow: Flow) -> u32 {
        let i = match self.free.pop() {
            Some(i) => i,
            None => {
                self.chunks.push((0..CHUNK).map(|_| None).collect());
                let first = (self.chunks.len() - 1) * CHUNK;
                // Handed out lowest first.
                self.free.extend((first..first + CHUNK).rev().map(|i| i as u32));
                self.free.pop().unwrap_or(first as u32)
            }
        };
        let idx = i as usize;
        self.chunks[idx / CHUNK][idx % CHUNK] = Some(flow);
        self.len += 1;
        i
    }

    fn take(&mut self, i: u32) -> Option<Flow> {
        let idx = i as usize;
        let f = self.chunks.get_mut(idx / CHUNK)?[idx % CHUNK].take()?;
        self.free.push(i);
        self.len -= 1;
        Some(f)
    }

    fn slots(&mut self) -> impl Iterator<Item = (u32, &mut Flow)> {
        self.chunks.iter_mut().enumerate().flat_map(|(c, chunk)| {
            chunk
                .iter_mut()
                .enumerate()
                .filter_map(move |(i, s)| s.as_mut().map(|f| ((c * CHUNK + i) as u32, f)))
        })
    }
}

/// The table.
#[derive(Debug)]
pub struct FlowTable {
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
    slab: Slab,
    /// Attempts, oldest first: slot and the low bits of the flow's id (a slot since reused
    /// holds another id). Entries of flows gone or completed stay until compacted.
    embryonic: VecDeque<(u32, u32)>,
    /// Attempts in the table (counted in `half_open`).
    attempts: usize,
    half_open: HalfOpen,
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
        let cap = cap.clamp(1, u32::MAX as usize);
        let per_source = if per_source == 0 { (cap / 16).max(64) } else { per_source };
        FlowTable {
            index: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            slab: Slab::default(),
            embryonic: VecDeque::new(),
            attempts: 0,
            half_open: HalfOpen::new(),
            cap,
            per_source: u32::try_from(per_source).unwrap_or(u32::MAX),
            timeouts,
            next_id: 1,
        }
    }

    /// Number of flows.
    pub fn len(&self) -> usize {
        self.slab.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.slab.len == 0
    }

    fn slot_of(&self, key: &FlowKey) -> Option<u32> {
        let hash = self.hasher.hash_one(key);
        let slab = &self.slab;
        self.index.find(hash, |&i| slab.get(i).is_some_and(|f| f.is(key))).copied()
    }

    /// True when `key` is tracked.
    pub fn contains(&self, key: &FlowKey) -> bool {
        self.slot_of(key).is_some()
    }

    /// Attempts of the source `ip` with `mac` (at least: a count shared with a busier
    /// source reads as the larger).
    pub fn half_open_of(&self, ip: IpAddr, mac: [u8; 6]) -> u32 {
        self.half_open.count((ip, mac))
    }

    /// Attempts in the table.
    pub fn attempts(&self) -> usize {
        self.attempts
    }

    /// The flow of `key`. A flow past its handshake stops counting against its source here
    /// (the engine looks it up again after the packet that completed it) or at its end.
    pub fn get_mut(&mut self, key: &FlowKey) -> Option<&mut Flow> {
        let i = self.slot_of(key)?;
        let f = self.slab.get_mut(i)?;
        if f.half_open && f.handshake_done {
            f.half_open = false;
            self.attempts -= 1;
            self.half_open.release((f.client.0, f.client_mac));
        }
        Some(f)
    }

    /// Removes the flow of `key`.
    pub fn remove(&mut self, key: &FlowKey) -> Option<Flow> {
        let i = self.slot_of(key)?;
        self.take(i)
    }

    /// Takes the flow in slot `i` out of the index and the slab.
    fn take(&mut self, i: u32) -> Option<Flow> {
        let f = self.slab.take(i)?;
        let hash = self.hasher.hash_one(f.key());
        if let Ok(e) = self.index.find_entry(hash, |&j| j == i) {
            e.remove();
        }
        if f.half_open {
            self.attempts -= 1;
            self.half_open.release((f.client.0, f.client_mac));
        }
        Some(f)
    }

    /// Inserts `flow` (its id given here). An embryonic flow from a source at its limit is
    /// refused; when the table is full the oldest embryonic flow is evicted (returned), and
    /// with none to evict the flow is refused.
    pub fn insert(&mut self, mut flow: Flow) -> Result<(&mut Flow, Option<Flow>), Refused> {
        let half_open = flow.is_attempt();
        if half_open && self.half_open_of(flow.client.0, flow.client_mac) >= self.per_source {
            return Err(Refused::SourceLimit);
        }
        let key = flow.key();
        let old = self.remove(&key);
        let mut evicted = None;
        if self.len() >= self.cap {
            while let Some((i, id)) = self.embryonic.pop_front() {
                let live = self.slab.get(i).is_some_and(|f| embryonic_with(f, id));
                if live {
                    evicted = self.take(i);
                    break;
                }
            }
            if evicted.is_none() {
                return Err(Refused::Full);
            }
        }
        // A flow replaced on its own addresses is dropped without a record, as before.
        drop(old);
        flow.id = self.next_id;
        self.next_id += 1;
        if half_open {
            flow.half_open = true;
            self.attempts += 1;
            self.half_open.add((flow.client.0, flow.client_mac));
        }
        let id = flow.id as u32;
        let i = self.slab.insert(flow);
        let hash = self.hasher.hash_one(key);
        let (slab, hasher) = (&self.slab, &self.hasher);
        self.index.insert_unique(hash, i, |&j| slab.get(j).map_or(0, |f| hasher.hash_one(f.key())));
        if half_open {
            self.compact();
            self.embryonic.push_back((i, id));
        }
        let f = self.slab.get_mut(i).ok_or(Refused::Full)?;
        Ok((f, evicted))
    }

    /// Removes flows idle past their timeout (and closed flows past their linger), calling
    /// `emit` for each.
    pub fn expire(&mut self, now: u64, mut emit: impl FnMut(Flow, EndReason)) {
        let t = self.timeouts;
        let dead: Vec<u32> = self
            .slab
            .slots()
            .filter(|(_, f)| now.saturating_sub(f.last_mono) >= f.timeout(&t))
            .map(|(i, _)| i)
            .collect();
        for i in dead {
            if let Some(f) = self.take(i) {
                let why =
                    if f.state == TcpState::Closing { EndReason::Closed } else { EndReason::Idle };
                emit(f, why);
            }
        }
        self.compact();
    }

    /// Drops the queue's entries of flows gone or completed once they outnumber the live
    /// attempts (amortised: a cycle of attempts on one address cannot make every insert scan
    /// the queue).
    fn compact(&mut self) {
        if self.embryonic.len() >= 2 * self.attempts + CHUNK {
            let slab = &self.slab;
            self.embryonic.retain(|&(j, id)| slab.get(j).is_some_and(|f| embryonic_with(f, id)));
        }
    }

    /// Flows due a periodic record (last report older than `interval`).
    pub fn due_reports(&mut self, now: u64, interval: u64) -> impl Iterator<Item = &mut Flow> {
        self.slab
            .slots()
            .map(|(_, f)| f)
            .filter(move |f| now.saturating_sub(f.last_report) >= interval)
    }

    /// Removes every flow (shutdown).
    pub fn drain(&mut self) -> impl Iterator<Item = Flow> + '_ {
        self.embryonic.clear();
        self.attempts = 0;
        self.half_open.clear();
        self.index.clear();
        self.slab.free.clear();
        self.slab.len = 0;
        std::mem::take(&mut self.slab.chunks)
            .into_iter()
            .flat_map(|c| c.into_vec().into_iter().flatten())
    }
}

/// True when `f` is still the attempt with id `id` (low bits).
fn embryonic_with(f: &Flow, id: u32) -> bool {
    f.id as u32 == id && f.half_open && !f.handshake_done
}
