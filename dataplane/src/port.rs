//! AF_PACKET ports: raw frames in and out of a network interface. The one module of Sluice that
//! calls into libc, kept small: open, receive with a timeout, send.
//!
//! The socket ignores the frames it (or anyone on the host) sends (`PACKET_IGNORE_OUTGOING`),
//! so a bump in the wire never sees its own output, and the interface is put in promiscuous
//! mode so frames for any MAC arrive.
//!
//! Why not pnet's datalink channel, as DESIGN.md first suggested: it cannot set
//! `PACKET_IGNORE_OUTGOING` (the appliance would read back every frame it forwards) nor read
//! `PACKET_AUXDATA` (802.1Q tags the kernel strips would be lost). This module is the simple
//! per-frame path (`--io socket`); [`crate::ring`] is the fast one used by default.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// A raw port bound to one interface.
#[derive(Debug)]
pub struct Port {
    fd: OwnedFd,
    name: String,
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

impl Port {
    /// Opens interface `name`: every protocol, promiscuous, reads time out after `timeout`.
    pub fn open(name: &str, timeout: Duration) -> io::Result<Port> {
        let cname = CString::new(name).map_err(|_| io::Error::other("interface name has a NUL"))?;
        // SAFETY: plain syscalls on a socket we own; every pointer passed points to a live,
        // correctly sized local value.
        unsafe {
            let ifindex = libc::if_nametoindex(cname.as_ptr());
            if ifindex == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no interface `{name}`"),
                ));
            }
            let proto = (libc::ETH_P_ALL as u16).to_be();
            let fd = check(libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                proto.into(),
            ))?;
            let fd = OwnedFd::from_raw_fd(fd);
            let raw = fd.as_raw_fd();
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = ifindex as i32;
            check(libc::bind(
                raw,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            ))?;
            let one: libc::c_int = 1;
            // VLAN tags the kernel moved into metadata come back as auxdata, to be put back.
            check(libc::setsockopt(
                raw,
                libc::SOL_PACKET,
                libc::PACKET_AUXDATA,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            ))?;
            check(libc::setsockopt(
                raw,
                libc::SOL_PACKET,
                PACKET_IGNORE_OUTGOING,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            ))?;
            let mut mr: libc::packet_mreq = std::mem::zeroed();
            mr.mr_ifindex = ifindex as i32;
            mr.mr_type = libc::PACKET_MR_PROMISC as u16;
            check(libc::setsockopt(
                raw,
                libc::SOL_PACKET,
                libc::PACKET_ADD_MEMBERSHIP,
                (&mr as *const libc::packet_mreq).cast(),
                std::mem::size_of::<libc::packet_mreq>() as u32,
            ))?;
            let tv = libc::timeval {
                tv_sec: timeout.as_secs() as libc::time_t,
                tv_usec: timeout.subsec_micros() as libc::suseconds_t,
            };
            check(libc::setsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            ))?;
            let buf: libc::c_int = 8 << 20;
            for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
                // Best effort: the kernel caps it at rmem_max/wmem_max.
                libc::setsockopt(
                    raw,
                    libc::SOL_SOCKET,
                    opt,
                    (&buf as *const libc::c_int).cast(),
                    4,
                );
            }
            Ok(Port { fd, name: name.to_owned() })
        }
    }

    /// Interface name.
    pub fn name(&self) -> &str {
        &self.name
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
        match aux {
            Some(a) if a.tp_status & libc::TP_STATUS_VLAN_VALID != 0 && n >= 12 => {
                let tpid = if a.tp_status & libc::TP_STATUS_VLAN_TPID_VALID != 0 {
                    a.tp_vlan_tpid
                } else {
                    0x8100
                };
                buf.copy_within(4..16, 0);
                buf[12..14].copy_from_slice(&tpid.to_be_bytes());
                buf[14..16].copy_from_slice(&a.tp_vlan_tci.to_be_bytes());
                Ok(Some(0..n + 4))
            }
            _ => Ok(Some(4..4 + n)),
        }
    }

    /// Sends one frame.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: frame is a valid readable slice of frame.len() bytes.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }
}
