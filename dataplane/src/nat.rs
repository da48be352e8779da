//! Address and port rewriting for the divert (ARCHITECTURE.md, "Divert"), sans-IO: rewrites the
//! source and/or destination of an IPv4 or IPv6 TCP/UDP packet in place and updates the
//! checksums incrementally (RFC 1624, eqn. 3), never recomputing over the payload.
//!
//! The packet is raw IP (as read from and written to the TUN); callers with Ethernet frames
//! pass the slice after the link header.

use std::net::{IpAddr, SocketAddr};

/// Why a packet cannot be rewritten (the caller drops it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NatError {
    /// Truncated or inconsistent headers.
    #[error("malformed packet")]
    Malformed,
    /// Not TCP or UDP directly after the IP header (IPv6 extension headers, fragments, ICMP).
    #[error("not a TCP or UDP packet this NAT handles")]
    Unsupported,
    /// The new address is of the other family.
    #[error("address family mismatch")]
    Family,
}

/// One's-complement checksum updater (RFC 1624).
#[derive(Debug, Clone, Copy)]
struct Csum(u32);

impl Csum {
    fn from_field(c: u16) -> Self {
        Csum(u32::from(!c))
    }
    fn replace(&mut self, old: &[u8], new: &[u8]) {
        for (o, n) in old.chunks(2).zip(new.chunks(2)) {
            let o = u16::from_be_bytes([o[0], *o.get(1).unwrap_or(&0)]);
            let n = u16::from_be_bytes([n[0], *n.get(1).unwrap_or(&0)]);
            self.0 += u32::from(!o) + u32::from(n);
        }
    }
    fn finish(self) -> u16 {
        let mut s = self.0;
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }
}

fn get16(b: &[u8], at: usize) -> Result<u16, NatError> {
    b.get(at..at + 2).map(|x| u16::from_be_bytes([x[0], x[1]])).ok_or(NatError::Malformed)
}

/// Rewrites `pkt` (raw IP): the source to `src` and/or the destination to `dst`.
pub fn rewrite(
    pkt: &mut [u8],
    src: Option<SocketAddr>,
    dst: Option<SocketAddr>,
) -> Result<(), NatError> {
    let version = pkt.first().ok_or(NatError::Malformed)? >> 4;
    let (l4_off, proto, addr_len, src_at, dst_at) = match version {
        4 => {
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            if ihl < 20 || pkt.len() < ihl {
                return Err(NatError::Malformed);
            }
            let frag = get16(pkt, 6)? & 0x3fff;
            if frag != 0 {
                return Err(NatError::Unsupported); // fragments carry no (or partial) ports
            }
            (ihl, pkt[9], 4, 12, 16)
        }
        6 => {
            if pkt.len() < 40 {
                return Err(NatError::Malformed);
            }
            (40, pkt[6], 16, 8, 24)
        }
        _ => return Err(NatError::Malformed),
    };
    let csum_at = match proto {
        6 => l4_off + 16,
        17 => l4_off + 6,
        _ => return Err(NatError::Unsupported),
    };
    if pkt.len() < csum_at + 2 {
        return Err(NatError::Malformed);
    }
    let udp_no_csum = proto == 17 && version == 4 && get16(pkt, csum_at)? == 0;
    let mut l4 = Csum::from_field(get16(pkt, csum_at)?);
    let mut ip = Csum::from_field(if version == 4 { get16(pkt, 10)? } else { 0 });
    for (new, addr_at, port_at) in [(src, src_at, l4_off), (dst, dst_at, l4_off + 2)] {
        let Some(new) = new else { continue };
        // Fixed-size buffers: the per-packet path allocates nothing.
        let mut new_buf = [0u8; 16];
        match (new.ip(), addr_len) {
            (IpAddr::V4(a), 4) => new_buf[..4].copy_from_slice(&a.octets()),
            (IpAddr::V6(a), 16) => new_buf.copy_from_slice(&a.octets()),
            _ => return Err(NatError::Family),
        }
        let new_addr = &new_buf[..addr_len];
        let mut old_buf = [0u8; 16];
        old_buf[..addr_len].copy_from_slice(&pkt[addr_at..addr_at + addr_len]);
        let old_addr = &old_buf[..addr_len];
        let old_port = [pkt[port_at], pkt[port_at + 1]];
        let new_port = new.port().to_be_bytes();
        l4.replace(old_addr, new_addr);
        l4.replace(&old_port, &new_port);
        if version == 4 {
            ip.replace(old_addr, new_addr);
        }
        pkt[addr_at..addr_at + addr_len].copy_from_slice(new_addr);
        pkt[port_at..port_at + 2].copy_from_slice(&new_port);
    }
    if version == 4 {
        pkt[10..12].copy_from_slice(&ip.finish().to_be_bytes());
    }
    if !udp_no_csum {
        let mut c = l4.finish();
        if proto == 17 && c == 0 {
            c = 0xffff;
        }
        pkt[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

    fn tcp4(payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ipv4([10, 20, 1, 10], [198, 51, 100, 10], 64)
            .tcp(40_000, 443, 7, 1000)
            .syn();
        let mut v = Vec::new();
        b.write(&mut v, payload).unwrap();
        v
    }

    /// Checks the packet's checksums by recomputing them from scratch.
    fn checksums_ok(pkt: &[u8]) -> bool {
        let p = SlicedPacket::from_ip(pkt).unwrap();
        let (src, dst) = match &p.net {
            Some(etherparse::NetSlice::Ipv4(v4)) => {
                let h = v4.header().to_header();
                if h.calc_header_checksum() != h.header_checksum {
                    return false;
                }
                (IpAddr::from(h.source), IpAddr::from(h.destination))
            }
            Some(etherparse::NetSlice::Ipv6(v6)) => (
                IpAddr::from(v6.header().source_addr()),
                IpAddr::from(v6.header().destination_addr()),
            ),
            _ => return false,
        };
        match (&p.transport, src, dst) {
            (Some(TransportSlice::Tcp(t)), IpAddr::V4(s), IpAddr::V4(d)) => {
                t.to_header().calc_checksum_ipv4_raw(s.octets(), d.octets(), t.payload()).unwrap()
                    == t.checksum()
            }
            (Some(TransportSlice::Tcp(t)), IpAddr::V6(s), IpAddr::V6(d)) => {
                t.to_header().calc_checksum_ipv6_raw(s.octets(), d.octets(), t.payload()).unwrap()
                    == t.checksum()
            }
            (Some(TransportSlice::Udp(u)), IpAddr::V4(s), IpAddr::V4(d)) => {
                u.to_header().calc_checksum_ipv4_raw(s.octets(), d.octets(), u.payload()).unwrap()
                    == u.checksum()
            }
            (Some(TransportSlice::Udp(u)), IpAddr::V6(s), IpAddr::V6(d)) => {
                u.to_header().calc_checksum_ipv6_raw(s.octets(), d.octets(), u.payload()).unwrap()
                    == u.checksum()
            }
            _ => false,
        }
    }

    #[test]
    fn ipv4_tcp_both_ways() {
        for payload in [&b""[..], b"odd", b"even", &[0xff; 1001][..]] {
            let mut p = tcp4(payload);
            assert!(checksums_ok(&p));
            let listener: SocketAddr = "10.255.0.1:15443".parse().unwrap();
            rewrite(&mut p, None, Some(listener)).unwrap();
            assert!(checksums_ok(&p), "dst rewrite, {} bytes", payload.len());
            {
                let s = SlicedPacket::from_ip(&p).unwrap();
                let Some(TransportSlice::Tcp(t)) = s.transport else { panic!() };
                assert_eq!(t.destination_port(), 15443);
            }
            // And back, as the replies are restored.
            let orig: SocketAddr = "198.51.100.10:443".parse().unwrap();
            let client: SocketAddr = "10.20.1.10:61000".parse().unwrap();
            rewrite(&mut p, Some(client), Some(orig)).unwrap();
            assert!(checksums_ok(&p));
        }
    }

    #[test]
    fn ipv6_and_udp() {
        let b = PacketBuilder::ipv6(
            "fd20::9:99".parse::<std::net::Ipv6Addr>().unwrap().octets(),
            "2001:db8:5100::10".parse::<std::net::Ipv6Addr>().unwrap().octets(),
            64,
        )
        .tcp(40_001, 443, 1, 100)
        .ack(5);
        let mut p = Vec::new();
        b.write(&mut p, b"hello").unwrap();
        rewrite(
            &mut p,
            Some("[fd20::9:99]:50000".parse().unwrap()),
            Some("[fd5c::1]:15443".parse().unwrap()),
        )
        .unwrap();
        assert!(checksums_ok(&p));
        assert_eq!(
            rewrite(&mut p, None, Some("10.0.0.1:1".parse().unwrap())),
            Err(NatError::Family)
        );

        let b = PacketBuilder::ipv4([10, 20, 1, 10], [10, 20, 0, 1], 64).udp(5353, 53);
        let mut u = Vec::new();
        b.write(&mut u, b"query").unwrap();
        rewrite(&mut u, Some("10.20.1.10:61001".parse().unwrap()), None).unwrap();
        assert!(checksums_ok(&u));
        // A UDP datagram without a checksum keeps none.
        u[26] = 0;
        u[27] = 0;
        rewrite(&mut u, Some("10.20.1.10:61002".parse().unwrap()), None).unwrap();
        assert_eq!(&u[26..28], &[0, 0]);
    }

    #[test]
    fn refuses_what_it_cannot_rewrite() {
        assert_eq!(rewrite(&mut [], None, None), Err(NatError::Malformed));
        let mut p = tcp4(b"x");
        p[6] |= 0x20; // more fragments
        assert_eq!(rewrite(&mut p, None, None), Err(NatError::Unsupported));
        let mut p = tcp4(b"x");
        p[9] = 1; // ICMP
        assert_eq!(rewrite(&mut p, None, None), Err(NatError::Unsupported));
        let mut p = tcp4(b"x");
        p.truncate(30);
        assert_eq!(
            rewrite(&mut p, None, Some("1.2.3.4:5".parse().unwrap())),
            Err(NatError::Malformed)
        );
        for cut in 0..tcp4(b"").len() {
            let mut p = tcp4(b"");
            p.truncate(cut);
            let _ = rewrite(&mut p, Some("1.2.3.4:5".parse().unwrap()), None);
        }
    }
}
