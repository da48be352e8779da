//! Bounded reassembly of IP fragments (IPv4, and IPv6 Fragment headers) before classification
//! (ARCHITECTURE.md, "The packet path"). A TCP segment or UDP datagram that arrives in
//! fragments carries no port or ClientHello in most of them: the engine reassembles the
//! datagram, decides on the whole, and forwards the original fragments unchanged when the
//! flow is allowed.
//!
//! As a reassembling IPS does (Suricata's defrag), it is bounded: fragments per datagram,
//! datagrams and bytes per source, bytes in all, and a timeout. Overlapping fragments whose
//! bytes disagree are an evasion attempt (different hosts keep different copies) and drop the
//! datagram; an identical duplicate is harmless. Pure: no clock of its own, no IO.
//!
//! etherparse has a defragmentation pool, but it lets a later fragment overwrite an earlier
//! one's bytes without a word: exactly the ambiguity an attacker uses.

use std::net::IpAddr;

use hashbrown::HashMap;

/// Largest reassembled IP payload.
const MAX_PAYLOAD: usize = 65_535 - 60;

/// Bounds of the reassembly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Fragments of one datagram.
    pub fragments_per_datagram: usize,
    /// Datagrams in progress per source address.
    pub datagrams_per_source: usize,
    /// Bytes held per source address (fragments as received, plus reassembled payload).
    pub bytes_per_source: usize,
    /// Bytes held in all.
    pub bytes: usize,
    /// A datagram not whole after this long is dropped (ms).
    pub timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        // Linux keeps fragments 30 s (ipfrag_time) within 4 MiB (ipfrag_high_thresh).
        Limits {
            fragments_per_datagram: 512,
            datagrams_per_source: 32,
            bytes_per_source: 512 << 10,
            bytes: 8 << 20,
            timeout_ms: 30_000,
        }
    }
}

/// Identifies the datagram a fragment belongs to (RFC 791 §3.2; RFC 8200 §4.5, where the
/// protocol is not part of it: `proto` is 0 for IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragKey {
    /// Outer VLAN.
    pub vlan: Option<u16>,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Protocol of the fragmented payload.
    pub proto: u8,
    /// Identification (16 bits for IPv4).
    pub id: u32,
}

/// One fragment, read from an Ethernet frame.
#[derive(Debug, Clone, Copy)]
pub struct Fragment<'a> {
    /// Its datagram.
    pub key: FragKey,
    /// Byte offset of `payload` in the datagram.
    pub offset: usize,
    /// More fragments follow.
    pub more: bool,
    /// The fragment's part of the datagram.
    pub payload: &'a [u8],
    /// The frame up to the end of the IP header (IPv4, options included) or of the fixed IPv6
    /// header: the head of the reassembled frame when this is the first fragment.
    head: &'a [u8],
    /// Where the IP header starts in `head`.
    ip: usize,
    /// The protocol this fragment names (IPv4) or its Fragment header's Next Header (IPv6:
    /// only the first fragment's counts).
    next_header: u8,
    v6: bool,
}

/// Reads `frame` as an IP fragment; `None` when it is not one (or not IP over Ethernet).
/// IPv6 "atomic" fragments (offset 0, no more) are whole packets and are not fragments here.
///
/// A reader of its own, not etherparse's: only the headers every fragment carries are read (the
/// IPv4 header; the IPv6 header and the extension headers before the Fragment header), never
/// the fragment's payload. An IPv6 first fragment may carry more extension headers after the
/// Fragment header, each fragment its own Next Header: only the first fragment's counts
/// (RFC 8200 §4.5), so IPv6 fragments are told apart by addresses and identification alone
/// and the transport is read from the datagram once whole.
pub fn fragment(frame: &[u8]) -> Option<Fragment<'_>> {
    let be16 = |at: usize| frame.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let mut ip = 14;
    let mut ethertype = be16(12)?;
    let mut vlan = None;
    for _ in 0..2 {
        if ethertype != 0x8100 && ethertype != 0x88a8 {
            break;
        }
        vlan.get_or_insert(be16(ip)? & 0x0fff);
        ethertype = be16(ip + 2)?;
        ip += 4;
    }
    let h = frame.get(ip..)?;
    match ethertype {
        0x0800 => {
            let ihl = usize::from(*h.first()? & 0x0f) * 4;
            let total = usize::from(be16(ip + 2)?);
            if h[0] >> 4 != 4 || ihl < 20 || total < ihl || total > h.len() {
                return None;
            }
            let flags = be16(ip + 6)?;
            let (more, offset) = (flags & 0x2000 != 0, usize::from(flags & 0x1fff) * 8);
            if !more && offset == 0 {
                return None;
            }
            let addr = |at: usize| -> Option<IpAddr> {
                let b: [u8; 4] = h.get(at..at + 4)?.try_into().ok()?;
                Some(IpAddr::from(b))
            };
            Some(Fragment {
                key: FragKey {
                    vlan,
                    src: addr(12)?,
                    dst: addr(16)?,
                    proto: h[9],
                    id: u32::from(be16(ip + 4)?),
                },
                offset,
                more,
                payload: h.get(ihl..total)?,
                head: frame.get(..ip + ihl)?,
                ip,
                next_header: h[9],
                v6: false,
            })
        }
        0x86dd => {
            if h.len() < 40 || h[0] >> 4 != 6 {
                return None;
            }
            let end = ip + 40 + usize::from(be16(ip + 4)?);
            if end > frame.len() {
                return None;
            }
            let addr = |at: usize| -> Option<IpAddr> {
                let b: [u8; 16] = h.get(at..at + 16)?.try_into().ok()?;
                Some(IpAddr::from(b))
            };
            // The extension headers before the Fragment header: hop-by-hop, routing,
            // destination options, authentication.
            let (mut next, mut at) = (h[6], ip + 40);
            for _ in 0..8 {
                match next {
                    44 => {
                        let f = frame.get(at..at + 8)?;
                        let off = u16::from_be_bytes([f[2], f[3]]);
                        let (offset, more) = (usize::from(off & 0xfff8), off & 1 != 0);
                        if !more && offset == 0 {
                            return None;
                        }
                        return Some(Fragment {
                            key: FragKey {
                                vlan,
                                src: addr(8)?,
                                dst: addr(24)?,
                                proto: 0,
                                id: u32::from_be_bytes([f[4], f[5], f[6], f[7]]),
                            },
                            offset,
                            more,
                            payload: frame.get(at + 8..end)?,
                            head: frame.get(..ip + 40)?,
                            ip,
                            next_header: f[0],
                            v6: true,
                        });
                    }
                    0 | 43 | 60 | 51 => {
                        let e = frame.get(at..at + 2)?;
                        let len = if next == 51 {
                            (usize::from(e[1]) + 2) * 4
                        } else {
                            (usize::from(e[1]) + 1) * 8
                        };
                        next = e[0];
                        at += len;
                    }
                    _ => return None,
                }
            }
            None
        }
        _ => None,
    }
}

impl Fragment<'_> {
    /// Whether the datagram may be TCP or UDP (what the engine classifies): an IPv4
    /// fragment's protocol is its datagram's; an IPv6 one's is known only once whole.
    pub fn maybe_tcp_or_udp(&self) -> bool {
        self.v6 || self.next_header == 6 || self.next_header == 17
    }

    /// The protocol (6, 17) and ports a first fragment shows when its transport header comes
    /// right after the IP header(s).
    pub fn first_ports(&self) -> Option<(u8, u16, u16)> {
        if self.offset != 0 || !matches!(self.next_header, 6 | 17) {
            return None;
        }
        let p = self.payload.get(..4)?;
        Some((self.next_header, u16::from_be_bytes([p[0], p[1]]), u16::from_be_bytes([p[2], p[3]])))
    }
}

/// A datagram made whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Whole {
    /// The reassembled packet as one frame (the first fragment's link and IP header, not
    /// fragmented, lengths and checksum set; IPv6 extension headers before the fragment
    /// header are left out).
    pub frame: Vec<u8>,
    /// The fragments as they arrived, in arrival order: what is forwarded when the flow is
    /// allowed, so the network beyond sees what the client sent.
    pub fragments: Vec<Vec<u8>>,
}

/// Why a fragment was dropped (with every fragment of its datagram held so far).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FragError {
    /// Overlapping fragments with different bytes.
    #[error("overlapping IP fragments disagree (evasion attempt)")]
    Overlap,
    /// Lengths that cannot belong to one datagram (a second end, data past the end, a middle
    /// fragment whose length is not a multiple of 8, past 64 KiB).
    #[error("IP fragments of inconsistent lengths")]
    Inconsistent,
    /// A bound of [`Limits`] was reached.
    #[error("IP fragment reassembly limits reached")]
    Limit,
}

#[derive(Debug)]
struct Datagram {
    first_ms: u64,
    frames: Vec<Vec<u8>>,
    data: Vec<u8>,
    /// Byte ranges received, sorted, disjoint and not adjacent.
    have: Vec<(usize, usize)>,
    end: Option<usize>,
    /// The first fragment's head, where its IP header starts, whether it is IPv6, and the
    /// protocol it names.
    head: Option<(Vec<u8>, usize, bool, u8)>,
    /// Bytes of the frames held.
    framed: usize,
    /// Bytes accounted to the source (frames and reassembled payload).
    bytes: usize,
}

impl Datagram {
    /// Places `payload` at `offset`; an overlap must agree with what is there.
    fn place(&mut self, offset: usize, more: bool, payload: &[u8]) -> Result<(), FragError> {
        let end = offset + payload.len();
        if end > MAX_PAYLOAD
            || (more && !payload.len().is_multiple_of(8))
            || (more && payload.is_empty())
        {
            return Err(FragError::Inconsistent);
        }
        match (self.end, more) {
            (Some(e), false) if e != end => return Err(FragError::Inconsistent),
            (Some(e), _) if end > e => return Err(FragError::Inconsistent),
            (None, false) if self.have.last().is_some_and(|r| r.1 > end) => {
                return Err(FragError::Inconsistent);
            }
            _ => {}
        }
        for &(s, e) in &self.have {
            let (lo, hi) = (s.max(offset), e.min(end));
            if lo < hi && self.data[lo..hi] != payload[lo - offset..hi - offset] {
                return Err(FragError::Overlap);
            }
        }
        if self.data.len() < end {
            self.data.resize(end, 0);
        }
        self.data[offset..end].copy_from_slice(payload);
        if !more {
            self.end = Some(end);
        }
        // Merge the new range with those it touches.
        let (mut s, mut e) = (offset, end);
        self.have.retain(|&(a, b)| {
            if b < s || a > e {
                true
            } else {
                s = s.min(a);
                e = e.max(b);
                false
            }
        });
        let at = self.have.partition_point(|r| r.0 < s);
        self.have.insert(at, (s, e));
        Ok(())
    }

    fn complete(&self) -> bool {
        self.end.is_some_and(|end| self.have == [(0, end)]) && self.head.is_some()
    }

    /// The reassembled frame.
    fn build(self) -> Option<Whole> {
        let (mut frame, ip, v6, proto) = self.head?;
        let len = self.data.len();
        let h = frame.get_mut(ip..)?;
        if v6 {
            h.get_mut(4..6)?.copy_from_slice(&u16::try_from(len).ok()?.to_be_bytes());
            // The payload follows the fixed header at once (extension headers left out).
            *h.get_mut(6)? = proto;
        } else {
            let total = u16::try_from(h.len() + len).ok()?;
            h.get_mut(2..4)?.copy_from_slice(&total.to_be_bytes());
            // Keep DF, clear MF and the offset; then the header checksum again.
            h[6] &= 0x40;
            h[7] = 0;
            h[10..12].copy_from_slice(&[0, 0]);
            let sum = etherparse::checksum::Sum16BitWords::new().add_slice(h).ones_complement();
            h[10..12].copy_from_slice(&sum.to_ne_bytes());
        }
        frame.extend_from_slice(&self.data);
        Some(Whole { frame, fragments: self.frames })
    }
}

/// Fragments waiting for the rest of their datagram.
#[derive(Debug)]
pub struct Defrag {
    limits: Limits,
    pending: HashMap<FragKey, Datagram>,
    /// Per source: datagrams in progress and bytes held.
    sources: HashMap<IpAddr, (usize, usize)>,
    bytes: usize,
    /// Datagrams whose fragments pass as they come (nothing in them is classified), with the
    /// time they were let through.
    passing: HashMap<FragKey, u64>,
}

/// Most datagrams let through as they come at once.
const MAX_PASSING: usize = 4096;

impl Default for Defrag {
    fn default() -> Self {
        Defrag::new(Limits::default())
    }
}

impl Defrag {
    /// Empty, within `limits`.
    pub fn new(limits: Limits) -> Self {
        Defrag {
            limits,
            pending: HashMap::new(),
            sources: HashMap::new(),
            bytes: 0,
            passing: HashMap::new(),
        }
    }

    /// Datagrams in progress.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Adds `frag`, read from `frame`, at `now_ms`. `Ok(None)`: held until the rest comes;
    /// `Ok(Some)`: its datagram is whole; `Err`: this fragment and the datagram's others
    /// are dropped.
    pub fn add(
        &mut self,
        frag: &Fragment<'_>,
        frame: &[u8],
        now_ms: u64,
    ) -> Result<Option<Whole>, FragError> {
        let key = frag.key;
        // What this fragment adds: its frame, and the datagram's buffer up to its end.
        let have = self.pending.get(&key).map(|d| d.data.len());
        let cost =
            frame.len() + (frag.offset + frag.payload.len()).saturating_sub(have.unwrap_or(0));
        let (datagrams, held) = self.sources.get(&key.src).copied().unwrap_or((0, 0));
        let over = (have.is_none() && datagrams >= self.limits.datagrams_per_source)
            || held + cost > self.limits.bytes_per_source
            || self.bytes + cost > self.limits.bytes
            || self
                .pending
                .get(&key)
                .is_some_and(|d| d.frames.len() >= self.limits.fragments_per_datagram);
        if over {
            self.take(&key);
            return Err(FragError::Limit);
        }
        // A new datagram enters the books only once its first fragment is placed.
        let mut d = self.pending.remove(&key).unwrap_or_else(|| Datagram {
            first_ms: now_ms,
            frames: Vec::new(),
            data: Vec::new(),
            have: Vec::new(),
            end: None,
            head: None,
            framed: 0,
            bytes: 0,
        });
        if let Err(e) = d.place(frag.offset, frag.more, frag.payload) {
            self.release(&key, &d);
            return Err(e);
        }
        if frag.offset == 0 {
            d.head = Some((frag.head.to_vec(), frag.ip, frag.v6, frag.next_header));
        }
        d.frames.push(frame.to_vec());
        d.framed += frame.len();
        let now_bytes = d.framed + d.data.len();
        let delta = now_bytes - d.bytes;
        d.bytes = now_bytes;
        self.bytes += delta;
        let s = self.sources.entry(key.src).or_insert((0, 0));
        if have.is_none() {
            s.0 += 1;
        }
        s.1 += delta;
        if !d.complete() {
            self.pending.insert(key, d);
            return Ok(None);
        }
        self.release(&key, &d);
        d.build().map(Some).ok_or(FragError::Inconsistent)
    }

    /// Lets the datagram of `key` through as it comes (its first fragment showed nothing the
    /// engine classifies): the fragments held so far, to forward now. `None` when too many
    /// datagrams pass already (the datagram is then reassembled as any other).
    pub fn pass(&mut self, key: &FragKey, now_ms: u64) -> Option<Vec<Vec<u8>>> {
        if self.passing.len() >= MAX_PASSING && !self.passing.contains_key(key) {
            let timeout = self.limits.timeout_ms;
            self.passing.retain(|_, t| now_ms.saturating_sub(*t) < timeout);
            if self.passing.len() >= MAX_PASSING {
                return None;
            }
        }
        self.passing.insert(*key, now_ms);
        Some(self.take(key).map(|d| d.frames).unwrap_or_default())
    }

    /// Whether the datagram of `key` passes as it comes.
    pub fn passes(&self, key: &FragKey, now_ms: u64) -> bool {
        self.passing.get(key).is_some_and(|t| now_ms.saturating_sub(*t) < self.limits.timeout_ms)
    }

    /// Drops datagrams older than the timeout; returns how many fragments went.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let timeout = self.limits.timeout_ms;
        self.passing.retain(|_, t| now_ms.saturating_sub(*t) < timeout);
        let old: Vec<FragKey> = self
            .pending
            .iter()
            .filter(|(_, d)| now_ms.saturating_sub(d.first_ms) >= timeout)
            .map(|(k, _)| *k)
            .collect();
        old.iter().filter_map(|k| self.take(k)).map(|d| d.frames.len()).sum()
    }

    /// Takes a datagram out, releasing what it held.
    fn take(&mut self, key: &FragKey) -> Option<Datagram> {
        let d = self.pending.remove(key)?;
        self.release(key, &d);
        Some(d)
    }

    /// Gives back what datagram `d` (out of `pending`) was counted for; nothing for one that
    /// never entered the books.
    fn release(&mut self, key: &FragKey, d: &Datagram) {
        if d.bytes == 0 && d.frames.is_empty() {
            return;
        }
        self.bytes -= d.bytes;
        if let Some(s) = self.sources.get_mut(&key.src) {
            s.0 -= 1;
            s.1 -= d.bytes;
            if s.0 == 0 {
                self.sources.remove(&key.src);
            }
        }
    }
}

#[cfg(test)]
#[path = "defrag_tests.rs"]
mod tests;
