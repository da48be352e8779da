//! AF_PACKET ports: raw frames in and out of a network interface. The one module of Sluice that
//! calls into libc, kept small: open, receive with a timeout, send.
//!
//! The socket ignores the frames it (or anyone on the host) sends (`PACKET_IGNORE_OUTGOING`),
//! so a bump in the wire never sees its own output, and the interface is put in promiscuous
//! mode so frames for any MAC arrive.
//!
//! Why not pnet's datalink channel, as the founding design first suggested: it cannot set
//! `PACKET_IGNORE_OUTGOING` (the appliance would read back every frame it forwards) nor read
//! `PACKET_AUXDATA` (802.1Q tags the kernel strips would be lost). This module is the simple
//! per-frame path (`--io socket`); [`crate::ring`] is the fast one used by default.
#![allow(unsafe_code)]

use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use crate::sock::{PACKET_IGNORE_OUTGOING, add_promisc, bind, ifindex, packet_socket, setopt};

/// A raw port bound to one interface.
#[derive(Debug)]
pub struct Port {
    fd: OwnedFd,
    name: String,
}

impl Port {
    /// Opens interface `name`: every protocol, promiscuous, reads time out after `timeout`.
    pub fn open(name: &str, timeout: Duration) -> io::Result<Port> {
        let idx = ifindex(name)?;
        let fd = packet_socket(libc::ETH_P_ALL as u16)?;
        let raw = fd.as_raw_fd();
        bind(raw, idx, libc::ETH_P_ALL as u16)?;
        // VLAN tags the kernel moved into metadata come back as auxdata, to be put back.
        setopt(raw, libc::SOL_PACKET, libc::PACKET_AUXDATA, &1 as &libc::c_int)?;
        setopt(raw, libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, &1 as &libc::c_int)?;
        add_promisc(raw, idx)?;
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        setopt(raw, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)?;
        for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
            // Best effort: the kernel caps it at rmem_max/wmem_max.
            let _ = setopt(raw, libc::SOL_SOCKET, opt, &(8 << 20) as &libc::c_int);
        }
        Ok(Port { fd, name: name.to_owned() })
    }

    /// Interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The socket (to attach the fast path's filter to).
    pub fn socket(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }

    /// Receives one frame into `buf`; returns where it lies in `buf`, `Ok(None)` on timeout.
    ///
    /// The kernel strips an 802.1Q tag from received frames into metadata; it is put back, so
    /// the frame is forwarded exactly as it was on the wire.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<Range<usize>>> {
        if buf.len() < 64 {
            return Err(io::Error::other("receive buffer too small"));
        }
        let mut iov =
            libc::iovec { iov_base: buf[4..].as_mut_ptr().cast(), iov_len: buf.len() - 4 };
        let mut cmsg_buf = [0u64; 16];
        // SAFETY: msghdr is plain data; every pointer in it points to a live local buffer of the
        // stated length for the duration of the call.
        let (n, aux) = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = cmsg_buf.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&cmsg_buf);
            let n = libc::recvmsg(self.fd.as_raw_fd(), &mut msg, 0);
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock
                    | io::ErrorKind::TimedOut
                    | io::ErrorKind::Interrupted => Ok(None),
                    _ => Err(e),
                };
            }
            let mut aux: Option<libc::tpacket_auxdata> = None;
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_PACKET && (*c).cmsg_type == libc::PACKET_AUXDATA {
                    aux = Some(std::ptr::read_unaligned(
                        libc::CMSG_DATA(c).cast::<libc::tpacket_auxdata>(),
                    ));
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
            (n as usize, aux)
        };
        // A checksum left to offload (a local or virtual NIC's frame) is written in full, as
        // the ring does.
        let partial = aux.is_some_and(|a| a.tp_status & libc::TP_STATUS_CSUMNOTREADY != 0);
        let range = match aux {
            Some(a) if a.tp_status & libc::TP_STATUS_VLAN_VALID != 0 && n >= 12 => {
                let tpid = if a.tp_status & libc::TP_STATUS_VLAN_TPID_VALID != 0 {
                    a.tp_vlan_tpid
                } else {
                    0x8100
                };
                buf.copy_within(4..16, 0);
                buf[12..14].copy_from_slice(&tpid.to_be_bytes());
                buf[14..16].copy_from_slice(&a.tp_vlan_tci.to_be_bytes());
                0..n + 4
            }
            _ => 4..4 + n,
        };
        if partial {
            crate::wire::frame::complete_l4_checksum(&mut buf[range.clone()]);
        }
        Ok(Some(range))
    }

    /// Sends one frame.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: frame is a valid readable slice of frame.len() bytes.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }
}
