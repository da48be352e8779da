//! Socket plumbing shared by the two port implementations ([`crate::port`], [`crate::ring`]):
//! AF_PACKET sockets, binding, options, promiscuous membership.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// `PACKET_IGNORE_OUTGOING` (Linux 4.20): do not deliver frames sent from this host.
pub(crate) const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

pub(crate) fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

pub(crate) fn ifindex(name: &str) -> io::Result<libc::c_int> {
    let cname = CString::new(name).map_err(|_| io::Error::other("interface name has a NUL"))?;
    // SAFETY: cname is a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if i == 0 {
        return Err(io::Error::new(io::ErrorKind::NotFound, format!("no interface `{name}`")));
    }
    Ok(i as libc::c_int)
}

pub(crate) fn setopt<T>(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    v: &T,
) -> io::Result<()> {
    // SAFETY: v points to a live value of size_of::<T>() bytes.
    check(unsafe {
        libc::setsockopt(fd, level, name, (v as *const T).cast(), std::mem::size_of::<T>() as u32)
    })
    .map(|_| ())
}

pub(crate) fn packet_socket(proto: u16) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the fd is owned at once.
    unsafe {
        let fd = check(libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            proto.to_be().into(),
        ))?;
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

pub(crate) fn bind(fd: libc::c_int, ifindex: libc::c_int, proto: u16) -> io::Result<()> {
    // SAFETY: sockaddr_ll is plain data, passed with its size.
    unsafe {
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto.to_be();
        sll.sll_ifindex = ifindex;
        check(libc::bind(
            fd,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        ))?;
    }
    Ok(())
}

/// Puts the interface in promiscuous mode for as long as the socket lives.
pub(crate) fn add_promisc(fd: libc::c_int, ifindex: libc::c_int) -> io::Result<()> {
    // SAFETY: packet_mreq is plain data.
    let mut mr: libc::packet_mreq = unsafe { std::mem::zeroed() };
    mr.mr_ifindex = ifindex;
    mr.mr_type = libc::PACKET_MR_PROMISC as u16;
    setopt(fd, libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, &mr)
}

/// The kernel's count of frames it dropped before a packet socket read them (its receive
/// ring, or its receive buffer, was full): `PACKET_STATISTICS`, read on a duplicate of the
/// socket so the thread that owns the port is not disturbed. The kernel resets the count at
/// each read.
#[derive(Debug)]
pub struct Drops {
    fd: OwnedFd,
}

impl Drops {
    /// The counter of the packet socket `sock`.
    pub fn of(sock: std::os::fd::BorrowedFd<'_>) -> io::Result<Drops> {
        Ok(Drops { fd: sock.try_clone_to_owned()? })
    }

    /// Frames dropped since the last call.
    pub fn take(&self) -> io::Result<u64> {
        use std::os::fd::AsRawFd;
        let mut st = libc::tpacket_stats { tp_packets: 0, tp_drops: 0 };
        let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: `st` is a live tpacket_stats and `len` its size; the kernel writes at most
        // `len` bytes.
        check(unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats).cast(),
                &mut len,
            )
        })?;
        Ok(u64::from(st.tp_drops))
    }
}
