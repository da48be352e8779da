//! A checked, zero-copy summary of one Ethernet frame (through etherparse), and the builder
//! of the TCP resets the engine sends. Parsing never panics and never allocates.

use std::net::IpAddr;

use etherparse::{
    IpHeaders, IpNumber, Ipv4Header, Ipv6Header, LinkExtSlice, LinkSlice, NetSlice, PacketBuilder,
    SlicedPacket, TransportSlice, VlanId,
};

/// Transport protocol of a frame the engine tracks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP or ICMPv6.
    Icmp,
    /// Any other IP protocol.
    Other,
}

/// TCP header fields the engine uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tcp {
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// SYN flag.
    pub syn: bool,
    /// ACK flag.
    pub has_ack: bool,
    /// FIN flag.
    pub fin: bool,
    /// RST flag.
    pub rst: bool,
}

/// What the engine needs to know about an IP frame.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// Source MAC.
    pub src_mac: [u8; 6],
    /// Destination MAC.
    pub dst_mac: [u8; 6],
    /// Outer 802.1Q VLAN id.
    pub vlan: Option<u16>,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Transport protocol.
    pub proto: Proto,
    /// Source port (0 without ports).
    pub sport: u16,
    /// Destination port (0 without ports).
    pub dport: u16,
    /// TCP fields for TCP frames.
    pub tcp: Option<Tcp>,
    /// Transport payload.
    pub payload: &'a [u8],
    /// Offset of the IP header in the buffer parsed (after Ethernet and VLAN tags; 0 for a
    /// raw IP packet).
    pub ip_offset: usize,
    /// An IP fragment (IPv4 more-fragments or offset, IPv6 Fragment header): its transport
    /// header, if any, is not read here ([`crate::defrag`]).
    pub fragmented: bool,
    /// Offset of the TCP or UDP header in the buffer parsed (0 without one).
    pub l4_offset: usize,
}

/// Summarises an IP frame. `None` for anything that is not IPv4/IPv6 over Ethernet (ARP, …)
/// or is malformed: the engine forwards those unchanged.
pub fn parse(frame: &[u8]) -> Option<Frame<'_>> {
    let p = SlicedPacket::from_ethernet(frame).ok()?;
    let (src_mac, dst_mac) = match &p.link {
        Some(LinkSlice::Ethernet2(e)) => (e.source(), e.destination()),
        _ => return None,
    };
    let vlan = p.link_exts.iter().find_map(|x| match x {
        LinkExtSlice::Vlan(v) => Some(v.vlan_identifier().value()),
        _ => None,
    });
    summarise(frame, &p, src_mac, dst_mac, vlan)
}

/// Summarises a raw IP packet (as read from the TUN): no link header, zero MACs, no VLAN.
pub fn parse_ip(packet: &[u8]) -> Option<Frame<'_>> {
    let p = SlicedPacket::from_ip(packet).ok()?;
    summarise(packet, &p, [0; 6], [0; 6], None)
}

fn summarise<'a>(
    buf: &'a [u8],
    p: &SlicedPacket<'a>,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    vlan: Option<u16>,
) -> Option<Frame<'a>> {
    let (src, dst, header, fragmented) = match &p.net {
        Some(NetSlice::Ipv4(v4)) => (
            IpAddr::from(v4.header().source_addr()),
            IpAddr::from(v4.header().destination_addr()),
            v4.header().slice(),
            v4.header().is_fragmenting_payload(),
        ),
        Some(NetSlice::Ipv6(v6)) => (
            IpAddr::from(v6.header().source_addr()),
            IpAddr::from(v6.header().destination_addr()),
            v6.header().slice(),
            v6.is_payload_fragmented(),
        ),
        _ => return None,
    };
    // The header is a sub-slice of `buf`: its offset is the difference of the two addresses.
    let ip_offset = (header.as_ptr() as usize).checked_sub(buf.as_ptr() as usize)?;
    let mut f = Frame {
        src_mac,
        dst_mac,
        vlan,
        src,
        dst,
        proto: Proto::Other,
        sport: 0,
        dport: 0,
        tcp: None,
        payload: &[],
        ip_offset,
        fragmented,
        l4_offset: 0,
    };
    match &p.transport {
        Some(TransportSlice::Tcp(t)) => {
            f.proto = Proto::Tcp;
            f.l4_offset = (t.slice().as_ptr() as usize).checked_sub(buf.as_ptr() as usize)?;
            f.sport = t.source_port();
            f.dport = t.destination_port();
            f.payload = t.payload();
            f.tcp = Some(Tcp {
                seq: t.sequence_number(),
                ack: t.acknowledgment_number(),
                syn: t.syn(),
                has_ack: t.ack(),
                fin: t.fin(),
                rst: t.rst(),
            });
        }
        Some(TransportSlice::Udp(u)) => {
            f.proto = Proto::Udp;
            f.l4_offset = (u.slice().as_ptr() as usize).checked_sub(buf.as_ptr() as usize)?;
            f.sport = u.source_port();
            f.dport = u.destination_port();
            f.payload = u.payload();
        }
        Some(TransportSlice::Icmpv4(_)) | Some(TransportSlice::Icmpv6(_)) => f.proto = Proto::Icmp,
        _ => {}
    }
    Some(f)
}

/// Prepends an Ethernet header (and an 802.1Q tag when `vlan` is set) to the raw IP packet
/// `ip`: how a packet from the TUN goes out of a port.
pub fn encapsulate(ip: &[u8], src_mac: [u8; 6], dst_mac: [u8; 6], vlan: Option<u16>) -> Vec<u8> {
    let ethertype: u16 = if ip.first().is_some_and(|b| b >> 4 == 6) { 0x86dd } else { 0x0800 };
    let mut out = Vec::with_capacity(ip.len() + 18);
    out.extend_from_slice(&dst_mac);
    out.extend_from_slice(&src_mac);
    if let Some(v) = vlan {
        out.extend_from_slice(&0x8100u16.to_be_bytes());
        out.extend_from_slice(&(v & 0x0fff).to_be_bytes());
    }
    out.extend_from_slice(&ethertype.to_be_bytes());
    out.extend_from_slice(ip);
    out
}

/// One end of a TCP connection as the reset builder sees it.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    /// MAC address.
    pub mac: [u8; 6],
    /// IP address.
    pub ip: IpAddr,
    /// Port.
    pub port: u16,
}

/// Builds an Ethernet frame carrying a TCP RST+ACK from `from` to `to`. `None` when the
/// address families differ.
pub fn build_rst(
    from: Endpoint,
    to: Endpoint,
    vlan: Option<u16>,
    seq: u32,
    ack: u32,
) -> Option<Vec<u8>> {
    let step = ip_step(from.mac, to.mac, vlan, from.ip, to.ip, IpNumber::TCP)?;
    let b = step.tcp(from.port, to.port, seq, 0).rst().ack(ack);
    let mut out = Vec::with_capacity(b.size(0));
    b.write(&mut out, &[]).ok()?;
    Some(out)
}

/// A UDP datagram answering the one parsed into `f`: from its destination address and port
/// to its source, with `payload` (a DNS answer given by the appliance itself).
pub fn build_udp_reply(f: &Frame<'_>, payload: &[u8]) -> Option<Vec<u8>> {
    let step = ip_step(f.dst_mac, f.src_mac, f.vlan, f.dst, f.src, IpNumber::UDP)?;
    let mut out = Vec::new();
    step.udp(f.dport, f.sport).write(&mut out, payload).ok()?;
    Some(out)
}

/// The Ethernet (and VLAN) and IP layers of a frame the engine builds, from `src` to `dst`,
/// for a transport of `proto`; `None` for mixed address families.
fn ip_step(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    vlan: Option<u16>,
    src: IpAddr,
    dst: IpAddr,
    proto: IpNumber,
) -> Option<etherparse::PacketBuilderStep<IpHeaders>> {
    let ip = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => IpHeaders::Ipv4(
            Ipv4Header::new(0, 64, proto, s.octets(), d.octets()).ok()?,
            Default::default(),
        ),
        (IpAddr::V6(s), IpAddr::V6(d)) => IpHeaders::Ipv6(
            Ipv6Header {
                hop_limit: 64,
                source: s.octets(),
                destination: d.octets(),
                next_header: proto,
                ..Default::default()
            },
            Default::default(),
        ),
        _ => return None,
    };
    let eth = PacketBuilder::ethernet2(src_mac, dst_mac);
    Some(match vlan.and_then(|v| VlanId::try_new(v).ok()) {
        Some(v) => eth.single_vlan(v).ip(ip),
        None => eth.ip(ip),
    })
}

/// An ICMP (ICMPv6) port-unreachable answering the datagram `buf` (parsed into `f`), to its
/// source as if from its destination: the client's UDP socket reports the error at once, and
/// a QUIC client falls back to TCP instead of waiting out its handshake timeout. Quotes the
/// datagram as far as RFC 1812 / RFC 4443 allow (576 / 1280 bytes in all).
pub fn build_port_unreachable(buf: &[u8], f: &Frame<'_>) -> Option<Vec<u8>> {
    // Never about a datagram to or from a group or nobody (RFC 1122 §3.2.2, RFC 4443 §2.4).
    let unicast = |a: IpAddr| match a {
        IpAddr::V4(v) => !(v.is_multicast() || v.is_broadcast() || v.is_unspecified()),
        IpAddr::V6(v) => !(v.is_multicast() || v.is_unspecified()),
    };
    if !unicast(f.src) || !unicast(f.dst) {
        return None;
    }
    let end = (f.payload.as_ptr() as usize).checked_sub(buf.as_ptr() as usize)? + f.payload.len();
    let orig = buf.get(f.ip_offset..end)?;
    let mut out = Vec::new();
    if f.src.is_ipv4() {
        let quote = &orig[..orig.len().min(576 - 20 - 8)];
        let ty = etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        );
        ip_step(f.dst_mac, f.src_mac, f.vlan, f.dst, f.src, IpNumber::ICMP)?
            .icmpv4(ty)
            .write(&mut out, quote)
            .ok()?;
    } else {
        let quote = &orig[..orig.len().min(1280 - 40 - 8)];
        let ty = etherparse::Icmpv6Type::DestinationUnreachable(
            etherparse::icmpv6::DestUnreachableCode::Port,
        );
        ip_step(f.dst_mac, f.src_mac, f.vlan, f.dst, f.src, IpNumber::IPV6_ICMP)?
            .icmpv6(ty)
            .write(&mut out, quote)
            .ok()?;
    }
    Some(out)
}

/// The ones'-complement sum of a TCP or UDP segment and its pseudo-header (RFC 9293 §3.1,
/// RFC 8200 §8.1), complemented: 0 for a segment whose checksum is right.
fn l4_sum(src: IpAddr, dst: IpAddr, proto: u8, seg: &[u8]) -> Option<u16> {
    let mut s = etherparse::checksum::Sum16BitWords::new();
    match (src, dst) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            s = s.add_4bytes(a.octets()).add_4bytes(b.octets()).add_2bytes([0, proto]);
            s = s.add_2bytes(u16::try_from(seg.len()).ok()?.to_be_bytes());
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            s = s.add_16bytes(a.octets()).add_16bytes(b.octets());
            s = s
                .add_4bytes(u32::try_from(seg.len()).ok()?.to_be_bytes())
                .add_4bytes([0, 0, 0, proto]);
        }
        _ => return None,
    }
    Some(s.add_slice(seg).ones_complement())
}

/// The TCP segment of `f` (header and payload, without link padding) in `buf`, as parsed.
fn tcp_segment<'a>(buf: &'a [u8], f: &Frame<'_>) -> Option<&'a [u8]> {
    let end = (f.payload.as_ptr() as usize).checked_sub(buf.as_ptr() as usize)? + f.payload.len();
    buf.get(f.l4_offset..end)
}

/// Whether the TCP checksum of frame `buf` (parsed into `f`) is right. A segment with a wrong
/// one is dropped by the server, so it must not count for classification (a decoy).
pub fn tcp_checksum_ok(buf: &[u8], f: &Frame<'_>) -> bool {
    f.tcp.is_some() && tcp_segment(buf, f).and_then(|seg| l4_sum(f.src, f.dst, 6, seg)) == Some(0)
}

/// Writes the TCP or UDP checksum of `frame` in full: for frames the kernel hands over with
/// the checksum left to offload (`TP_STATUS_CSUMNOTREADY`: locally made, or from a virtual
/// NIC), which are valid frames whose checksum is filled in on the way out.
pub fn complete_l4_checksum(frame: &mut [u8]) {
    let Some(f) = parse(frame) else { return };
    let (proto, field) = match f.proto {
        Proto::Tcp => (6u8, 16usize),
        Proto::Udp => (17u8, 6usize),
        _ => return,
    };
    let (src, dst, at) = (f.src, f.dst, f.l4_offset);
    let Some(end) = (f.payload.as_ptr() as usize)
        .checked_sub(frame.as_ptr() as usize)
        .map(|o| o + f.payload.len())
    else {
        return;
    };
    let Some(seg) = frame.get_mut(at..end) else { return };
    if seg.len() < field + 2 {
        return;
    }
    seg[field..field + 2].copy_from_slice(&[0, 0]);
    let Some(mut sum) = l4_sum(src, dst, proto, seg) else { return };
    if proto == 17 && sum == 0 {
        sum = 0xffff;
    }
    seg[field..field + 2].copy_from_slice(&sum.to_ne_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rst_round_trips_v4_v6_and_vlan() {
        let a =
            Endpoint { mac: [2, 0, 0, 0, 0, 1], ip: "10.20.1.10".parse().unwrap(), port: 40000 };
        let b =
            Endpoint { mac: [2, 0, 0, 0, 0, 2], ip: "198.51.100.10".parse().unwrap(), port: 443 };
        for vlan in [None, Some(42)] {
            let f = build_rst(b, a, vlan, 1000, 2000).unwrap();
            let p = parse(&f).unwrap();
            assert_eq!((p.src, p.dst, p.sport, p.dport, p.vlan), (b.ip, a.ip, 443, 40000, vlan));
            let t = p.tcp.unwrap();
            assert!(t.rst && t.has_ack && !t.syn);
            assert_eq!((t.seq, t.ack), (1000, 2000));
        }
        let a6 = Endpoint { ip: "fd20::9:99".parse().unwrap(), ..a };
        let b6 = Endpoint { ip: "2001:db8:5100::10".parse().unwrap(), ..b };
        let p = build_rst(a6, b6, None, 5, 6).unwrap();
        assert_eq!(parse(&p).unwrap().dst, b6.ip);
        assert!(build_rst(a, b6, None, 0, 0).is_none());
    }

    #[test]
    fn ip_offset_and_encapsulation() {
        let a =
            Endpoint { mac: [2, 0, 0, 0, 0, 1], ip: "10.20.1.10".parse().unwrap(), port: 40000 };
        let b =
            Endpoint { mac: [2, 0, 0, 0, 0, 2], ip: "198.51.100.10".parse().unwrap(), port: 443 };
        for vlan in [None, Some(7)] {
            let f = build_rst(a, b, vlan, 1, 2).unwrap();
            let p = parse(&f).unwrap();
            assert_eq!(p.ip_offset, if vlan.is_some() { 18 } else { 14 });
            let ip = &f[p.ip_offset..];
            let raw = parse_ip(ip).unwrap();
            assert_eq!(
                (raw.src, raw.dst, raw.sport, raw.dport, raw.ip_offset),
                (a.ip, b.ip, 40000, 443, 0)
            );
            let again = encapsulate(ip, a.mac, b.mac, vlan);
            assert_eq!(again, f);
        }
        assert!(parse_ip(&[0x45, 0, 0]).is_none());
    }

    #[test]
    fn garbage_is_none() {
        assert!(parse(&[]).is_none());
        assert!(parse(&[0u8; 13]).is_none());
        // ARP
        let mut arp = vec![0xffu8; 6];
        arp.extend([2, 0, 0, 0, 0, 1, 0x08, 0x06]);
        arp.extend([0u8; 28]);
        assert!(parse(&arp).is_none());
    }

    #[test]
    fn tcp_checksums_verified_and_completed_v4_v6_vlan() {
        let mut frames = Vec::new();
        for (src, dst) in [("10.20.1.10", "198.51.100.10"), ("fd20::1:10", "2001:db8:5100::10")] {
            let (s, d): (IpAddr, IpAddr) = (src.parse().unwrap(), dst.parse().unwrap());
            let b = PacketBuilder::ethernet2([2; 6], [4; 6]);
            let b = match (s, d) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    b.single_vlan(VlanId::try_new(9).unwrap()).ipv4(s.octets(), d.octets(), 64)
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => b.ipv6(s.octets(), d.octets(), 64),
                _ => unreachable!(),
            };
            let mut f = Vec::new();
            b.tcp(40000, 443, 7, 1000).psh().write(&mut f, b"hello, server").unwrap();
            frames.push(f);
        }
        for f in frames {
            let p = parse(&f).unwrap();
            assert!(tcp_checksum_ok(&f, &p));
            // Ethernet padding after the IP packet is not part of the segment.
            let mut padded = f.clone();
            padded.extend_from_slice(&[0xee; 6]);
            assert!(tcp_checksum_ok(&padded, &parse(&padded).unwrap()));
            let mut bad = f.clone();
            *bad.last_mut().unwrap() ^= 1;
            assert!(!tcp_checksum_ok(&bad, &parse(&bad).unwrap()));
            // A checksum left to offload is filled in.
            let mut partial = f.clone();
            let at = p.l4_offset + 16;
            partial[at..at + 2].copy_from_slice(&[0x12, 0x34]);
            assert!(!tcp_checksum_ok(&partial, &parse(&partial).unwrap()));
            complete_l4_checksum(&mut partial);
            assert_eq!(partial, f);
        }
    }

    #[test]
    fn port_unreachable_quotes_the_datagram_to_its_source() {
        for (src, dst, vlan) in
            [("10.20.9.99", "198.51.100.10", None), ("fd20::9:99", "2001:db8:5100::10", Some(5))]
        {
            let (s, d): (IpAddr, IpAddr) = (src.parse().unwrap(), dst.parse().unwrap());
            let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
            let mut dgram = Vec::new();
            let payload = vec![0xc3; 1200];
            match (s, d, vlan) {
                (IpAddr::V4(s), IpAddr::V4(d), None) => {
                    eth.ipv4(s.octets(), d.octets(), 64).udp(5555, 443).write(&mut dgram, &payload)
                }
                (IpAddr::V6(s), IpAddr::V6(d), Some(v)) => eth
                    .single_vlan(VlanId::try_new(v).unwrap())
                    .ipv6(s.octets(), d.octets(), 64)
                    .udp(5555, 443)
                    .write(&mut dgram, &payload),
                _ => unreachable!(),
            }
            .unwrap();
            let f = parse(&dgram).unwrap();
            let icmp = build_port_unreachable(&dgram, &f).unwrap();
            let p = parse(&icmp).unwrap();
            assert_eq!((p.src, p.dst, p.proto, p.vlan), (d, s, Proto::Icmp, vlan));
            assert_eq!((p.src_mac, p.dst_mac), ([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1]));
            let sliced = SlicedPacket::from_ethernet(&icmp).unwrap();
            let quoted = match sliced.transport.unwrap() {
                TransportSlice::Icmpv4(i) => {
                    assert_eq!(
                        i.icmp_type(),
                        etherparse::Icmpv4Type::DestinationUnreachable(
                            etherparse::icmpv4::DestUnreachableHeader::Port
                        )
                    );
                    assert!(icmp.len() - p.ip_offset <= 576);
                    i.payload().to_vec()
                }
                TransportSlice::Icmpv6(i) => {
                    assert_eq!(
                        i.icmp_type(),
                        etherparse::Icmpv6Type::DestinationUnreachable(
                            etherparse::icmpv6::DestUnreachableCode::Port
                        )
                    );
                    assert!(icmp.len() - p.ip_offset <= 1280);
                    i.payload().to_vec()
                }
                _ => panic!("not ICMP"),
            };
            // The quote starts with the datagram's own IP header and UDP ports.
            assert_eq!(&quoted[..], &dgram[f.ip_offset..f.ip_offset + quoted.len()]);
        }
    }
}
