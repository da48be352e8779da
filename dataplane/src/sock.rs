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

/// `SKF_NET_OFF`: classic BPF loads relative to the network header.
const SKF_NET_OFF: i32 = -0x10_0000;

/// Makes the `SO_REUSEPORT` group of listening socket `fd` (`threads` sockets) pick the socket
/// by the client's address: every connection of one client goes to the same thread. `v6`:
/// the group listens on IPv6 (the low 32 bits of the source address are taken; IPv4: all
/// of it). Without it the kernel picks by the whole 4-tuple.
pub(crate) fn reuseport_by_source(fd: libc::c_int, threads: u32, v6: bool) -> io::Result<()> {
    // Offset of (the last 32 bits of) the source address in the IP header.
    let src: i32 = if v6 { 20 } else { 12 };
    let prog = [
        // A = the source address (32 bits, network order)
        libc::sock_filter {
            code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
            jt: 0,
            jf: 0,
            k: (SKF_NET_OFF + src) as u32,
        },
        // A %= threads
        libc::sock_filter {
            code: (libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: threads.max(1),
        },
        // the socket's index in the group
        libc::sock_filter { code: (libc::BPF_RET | libc::BPF_A) as u16, jt: 0, jf: 0, k: 0 },
    ];
    let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_ptr().cast_mut() };
    setopt(fd, libc::SOL_SOCKET, libc::SO_ATTACH_REUSEPORT_CBPF, &fprog)
}

/// `listen(2)` on a bound socket (calling it again later, as tokio does, only sets the
/// backlog again).
pub(crate) fn listen(fd: libc::c_int, backlog: libc::c_int) -> io::Result<()> {
    // SAFETY: listen takes a descriptor and an integer; a bad descriptor is an error return.
    check(unsafe { libc::listen(fd, backlog) }).map(|_| ())
}
