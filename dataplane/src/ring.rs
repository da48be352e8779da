//! The fast port I/O: a TPACKET_V2 receive ring (frames land in memory shared with the kernel,
//! no system call per frame) and a send-only socket that transmits batches with `sendmmsg`.
//! The second module of Sluice that calls into libc, kept to the mechanics.
//!
//! Frames of the ring are handed out in batches; a batch is returned to the kernel only after
//! the caller has forwarded what it had to, so forwarding sends straight from the ring.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::sock::{add_promisc, bind, ifindex, packet_socket, setopt};
use std::sync::atomic::{Ordering, fence};
use std::time::Duration;

use crate::sock::PACKET_IGNORE_OUTGOING;
const TPACKET_V2: libc::c_int = 1;
const TP_STATUS_KERNEL: u32 = 0;
const TP_STATUS_USER: u32 = 1;
const TP_STATUS_CSUMNOTREADY: u32 = 1 << 3;
const TP_STATUS_VLAN_VALID: u32 = 1 << 4;
const TP_STATUS_VLAN_TPID_VALID: u32 = 1 << 6;
/// Bytes of a ring slot.
const FRAME_SIZE: usize = 2048;
const BLOCK_SIZE: usize = 1 << 16;
/// Size of `struct tpacket2_hdr`.
const HDR_LEN: usize = 32;

#[repr(C)]
struct Tpacket2Hdr {
    tp_status: u32,
    tp_len: u32,
    tp_snaplen: u32,
    tp_mac: u16,
    tp_net: u16,
    tp_sec: u32,
    tp_nsec: u32,
    tp_vlan_tci: u16,
    tp_vlan_tpid: u16,
    tp_padding: [u8; 4],
}

#[repr(C)]
struct TpacketReq {
    tp_block_size: libc::c_uint,
    tp_block_nr: libc::c_uint,
    tp_frame_size: libc::c_uint,
    tp_frame_nr: libc::c_uint,
}

/// A receive ring on one interface: every protocol, promiscuous, own transmissions ignored.
#[derive(Debug)]
pub struct RxRing {
    fd: OwnedFd,
    map: *mut u8,
    map_len: usize,
    frames: usize,
    cursor: usize,
    name: String,
    /// Frames longer than a ring slot (dropped: never forwarded truncated).
    pub truncated: u64,
}

// SAFETY: the mapping is owned by this value and used from one thread at a time (&mut self).
unsafe impl Send for RxRing {}

impl RxRing {
    /// Opens a ring of about `frames` slots on interface `name`.
    pub fn open(name: &str, frames: usize) -> io::Result<RxRing> {
        let idx = ifindex(name)?;
        let fd = packet_socket(libc::ETH_P_ALL as u16)?;
        let raw = fd.as_raw_fd();
        setopt(raw, libc::SOL_PACKET, libc::PACKET_VERSION, &TPACKET_V2)?;
        setopt(raw, libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, &1 as &libc::c_int)?;
        let per_block = BLOCK_SIZE / FRAME_SIZE;
        let blocks = frames.div_ceil(per_block).max(1);
        let req = TpacketReq {
            tp_block_size: BLOCK_SIZE as u32,
            tp_block_nr: blocks as u32,
            tp_frame_size: FRAME_SIZE as u32,
            tp_frame_nr: (blocks * per_block) as u32,
        };
        setopt(raw, libc::SOL_PACKET, libc::PACKET_RX_RING, &req)?;
        let map_len = BLOCK_SIZE * blocks;
        // SAFETY: mapping the ring the kernel just allocated for this socket.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                raw,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ring = RxRing {
            fd,
            map: map.cast(),
            map_len,
            frames: blocks * per_block,
            cursor: 0,
            name: name.to_owned(),
            truncated: 0,
        };
        bind(raw, idx, libc::ETH_P_ALL as u16)?;
        add_promisc(raw, idx)?;
        Ok(ring)
    }

    /// Interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The receive socket (to attach the fast path's filter to).
    pub fn socket(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }

    fn hdr(&self, i: usize) -> *mut Tpacket2Hdr {
        // SAFETY: i < frames, so the slot lies inside the mapping.
        unsafe { self.map.add((i % self.frames) * FRAME_SIZE).cast() }
    }

    fn status(&self, i: usize) -> u32 {
        // SAFETY: the header is inside the mapping; the kernel writes it concurrently, so read
        // it volatile, then fence so the frame bytes are read after the status.
        let s = unsafe { std::ptr::read_volatile(&(*self.hdr(i)).tp_status) };
        fence(Ordering::Acquire);
        s
    }

    /// Waits up to `timeout` for frames, then hands out at most `max` of them as a batch. The
    /// slots go back to the kernel when the batch is dropped.
    pub fn batch(&mut self, max: usize, timeout: Duration) -> io::Result<Batch<'_>> {
        if self.status(self.cursor) & TP_STATUS_USER == 0 {
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN | libc::POLLERR,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let r =
                unsafe { libc::poll(&mut pfd, 1, timeout.as_millis().min(60_000) as libc::c_int) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
        let mut n = 0;
        while n < max.min(self.frames) && self.status(self.cursor + n) & TP_STATUS_USER != 0 {
            n += 1;
        }
        for i in 0..n {
            self.prepare(self.cursor + i);
        }
        Ok(Batch { ring: self, len: n })
    }

    /// Counts truncated frames, puts back a VLAN tag the kernel moved into the header, and
    /// completes checksums left to offload.
    fn prepare(&mut self, i: usize) {
        let h = self.hdr(i);
        // SAFETY: the slot belongs to us (status USER); offsets are checked against the slot.
        unsafe {
            let hdr = &mut *h;
            let (mac, snap, len) =
                (usize::from(hdr.tp_mac), hdr.tp_snaplen as usize, hdr.tp_len as usize);
            if snap < len || mac + snap > FRAME_SIZE || snap < 14 {
                self.truncated += 1;
                return;
            }
            if hdr.tp_status & TP_STATUS_VLAN_VALID != 0 && mac >= HDR_LEN + 4 {
                let tpid = if hdr.tp_status & TP_STATUS_VLAN_TPID_VALID != 0 {
                    hdr.tp_vlan_tpid
                } else {
                    0x8100
                };
                let base = h.cast::<u8>();
                let start = base.add(mac - 4);
                std::ptr::copy(base.add(mac), start, 12);
                std::ptr::copy_nonoverlapping(tpid.to_be_bytes().as_ptr(), start.add(12), 2);
                std::ptr::copy_nonoverlapping(
                    hdr.tp_vlan_tci.to_be_bytes().as_ptr(),
                    start.add(14),
                    2,
                );
                hdr.tp_status &= !TP_STATUS_VLAN_VALID;
                hdr.tp_mac = (mac - 4) as u16;
                hdr.tp_snaplen = (snap + 4) as u32;
                hdr.tp_len = (len + 4) as u32;
            }
            if hdr.tp_status & TP_STATUS_CSUMNOTREADY != 0 {
                // The checksum is left to offload (a local or virtual NIC's frame): written in
                // full here, so the engine can verify every checksum it reads and the frame
                // leaves right if it is forwarded.
                let frame = std::slice::from_raw_parts_mut(
                    h.cast::<u8>().add(usize::from(hdr.tp_mac)),
                    hdr.tp_snaplen as usize,
                );
                crate::wire::frame::complete_l4_checksum(frame);
                hdr.tp_status &= !TP_STATUS_CSUMNOTREADY;
            }
        }
    }
}

impl Drop for RxRing {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping once.
        unsafe {
            libc::munmap(self.map.cast(), self.map_len);
        }
    }
}

/// Frames owned by the caller until dropped.
#[derive(Debug)]
pub struct Batch<'a> {
    ring: &'a mut RxRing,
    len: usize,
}

impl Batch<'_> {
    /// Number of frames.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no frame arrived.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The frame `i` of the batch (a VLAN tag the kernel stripped is back in place). `None`
    /// for a frame truncated by the slot size (counted, never forwarded).
    pub fn frame(&self, i: usize) -> Option<&[u8]> {
        if i >= self.len {
            return None;
        }
        let h = self.ring.hdr(self.ring.cursor + i);
        // SAFETY: the slot belongs to us (status USER) until the batch is dropped; `prepare`
        // checked the kernel's offsets against the slot size.
        unsafe {
            let hdr = &*h;
            let (mac, snap, len) =
                (usize::from(hdr.tp_mac), hdr.tp_snaplen as usize, hdr.tp_len as usize);
            if snap < len || mac + snap > FRAME_SIZE || snap < 14 {
                return None;
            }
            Some(std::slice::from_raw_parts(h.cast::<u8>().add(mac), snap))
        }
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        for i in 0..self.len {
            let h = self.ring.hdr(self.ring.cursor + i);
            fence(Ordering::Release);
            // SAFETY: returning a slot we own to the kernel.
            unsafe { std::ptr::write_volatile(&mut (*h).tp_status, TP_STATUS_KERNEL) };
        }
        self.ring.cursor = (self.ring.cursor + self.len) % self.ring.frames;
    }
}

/// A send-only socket on one interface (bound to protocol 0: it receives nothing).
#[derive(Debug)]
pub struct TxPort {
    fd: OwnedFd,
    name: String,
}

impl TxPort {
    /// Opens interface `name` for sending.
    pub fn open(name: &str) -> io::Result<TxPort> {
        let idx = ifindex(name)?;
        let fd = packet_socket(0)?;
        bind(fd.as_raw_fd(), idx, 0)?;
        let buf: libc::c_int = 8 << 20;
        let _ = setopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, &buf);
        Ok(TxPort { fd, name: name.to_owned() })
    }

    /// Interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends frames with as few system calls as possible. Returns how many were sent.
    pub fn send_batch(&self, frames: &[&[u8]]) -> io::Result<usize> {
        let mut iovs: Vec<libc::iovec> = frames
            .iter()
            .map(|f| libc::iovec { iov_base: f.as_ptr() as *mut _, iov_len: f.len() })
            .collect();
        // SAFETY: mmsghdr is plain data; each points at one iovec that points at a live frame.
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .map(|iov| {
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        let mut sent = 0;
        while sent < msgs.len() {
            let rest = &mut msgs[sent..];
            // SAFETY: rest is a valid array of rest.len() initialised mmsghdr.
            let r = unsafe {
                libc::sendmmsg(self.fd.as_raw_fd(), rest.as_mut_ptr(), rest.len() as u32, 0)
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return if sent > 0 { Ok(sent) } else { Err(e) };
            }
            sent += r as usize;
        }
        Ok(sent)
    }
}
