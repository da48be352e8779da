use super::*;

const IDX: [u32; 3] = [7, 9, 0];

#[test]
fn keys_are_laid_out_as_the_program_reads_them() {
    let d = DirKey {
        ingress: Side::Inside,
        vlan: 42,
        proto: Proto::Tcp,
        src: ("10.20.1.10".parse().unwrap(), 40_000),
        dst: ("198.51.100.80".parse().unwrap(), 5201),
    };
    let k = key(&IDX, &d).unwrap();
    // SAFETY: Key is plain data of 44 bytes (asserted above).
    let bytes: [u8; 44] = unsafe { std::mem::transmute(k) };
    assert_eq!(&bytes[..4], &[10, 20, 1, 10]);
    assert_eq!(&bytes[4..16], &[0; 12]);
    assert_eq!(&bytes[16..20], &[198, 51, 100, 80]);
    assert_eq!(&bytes[32..36], &7u32.to_ne_bytes());
    assert_eq!(&bytes[36..38], &40_000u16.to_be_bytes(), "ports in network order");
    assert_eq!(&bytes[38..40], &5201u16.to_be_bytes());
    assert_eq!(&bytes[40..42], &42u16.to_ne_bytes());
    assert_eq!(bytes[42], 6);
    assert_eq!(bytes[43], 4);
    assert_eq!(dir_key(&IDX, &k), Some(d));
}

#[test]
fn close_events_are_read_as_the_program_writes_them() {
    let d = DirKey {
        ingress: Side::Outside,
        vlan: 7,
        proto: Proto::Tcp,
        src: ("198.51.100.80".parse().unwrap(), 443),
        dst: ("10.20.1.10".parse().unwrap(), 61_234),
    };
    let k = key(&IDX, &d).unwrap();
    let e = CloseEvent { key: k, fin: 1, rst: 0, pad: 0 };
    // SAFETY: CloseEvent is plain data of 48 bytes (asserted above).
    let bytes: [u8; 48] = unsafe { std::mem::transmute(e) };
    let back = close_event(&bytes).unwrap();
    assert_eq!(back, e);
    assert_eq!(dir_key(&IDX, &back.key), Some(d));
    assert_eq!(close_event(&bytes[..47]), None, "an event of another size is skipped");
}

#[test]
fn keys_round_trip() {
    for (src, dst, proto, ingress) in [
        ("fd20::1:10", "2001:db8:5100::80", Proto::Udp, Side::Outside),
        ("10.20.2.20", "198.51.100.10", Proto::Udp, Side::Inside),
        ("2001:db8:5100::10", "fd20::2:20", Proto::Tcp, Side::Outside),
    ] {
        let d = DirKey {
            ingress,
            vlan: 0,
            proto,
            src: (src.parse().unwrap(), 443),
            dst: (dst.parse().unwrap(), 61_000),
        };
        assert_eq!(dir_key(&IDX, &key(&IDX, &d).unwrap()), Some(d));
    }
}

#[test]
fn what_the_fast_path_cannot_carry_has_no_key() {
    let v4: IpAddr = "10.0.0.1".parse().unwrap();
    let v6: IpAddr = "fd00::1".parse().unwrap();
    let mixed =
        DirKey { ingress: Side::Inside, vlan: 0, proto: Proto::Tcp, src: (v4, 1), dst: (v6, 2) };
    assert_eq!(key(&IDX, &mixed), None);
    assert_eq!(key(&IDX, &DirKey { ingress: Side::Tun, dst: (v4, 2), ..mixed }), None);
    assert_eq!(key(&IDX, &DirKey { proto: Proto::Other, dst: (v4, 2), ..mixed }), None);
    let stranger = Key { ifindex: 3, family: 4, proto: 6, ..Key::default() };
    assert_eq!(dir_key(&IDX, &stranger), None);
}

#[test]
fn values_say_where_frames_go_and_what_is_rewritten() {
    let with_tun: [u32; 3] = [7, 9, 11];
    let k = DirKey {
        ingress: Side::Inside,
        vlan: 0,
        proto: Proto::Tcp,
        src: ("10.20.1.10".parse().unwrap(), 40_001),
        dst: ("198.51.100.10".parse().unwrap(), 443),
    };
    let fwd = value(&IDX, &FastEntry::forward(k)).unwrap();
    assert_eq!((fwd.out_ifindex, fwd.action), (9, ACT_FORWARD));
    let listener = "100.127.0.1:15443".parse().unwrap();
    let to_tun = FastEntry { key: k, rewrite: Rewrite::ToTun { dst: listener }, syn: true };
    assert_eq!(value(&IDX, &to_tun), None, "no TUN: no divert NAT");
    let v = value(&with_tun, &to_tun).unwrap();
    assert_eq!((v.out_ifindex, v.action), (11, ACT_TO_TUN));
    assert_eq!((&v.addr[..4], v.port), (&[100, 127, 0, 1][..], 15443u16.to_be()));
    assert_eq!(v.flags, FLAG_SYN | FLAG_CLOSE, "NAT entries carry and note closes");
    assert_eq!(fwd.flags, 0, "an allowed flow's SYN, FIN and RST go to the engine");
    let back = FastEntry {
        key: DirKey { ingress: Side::Tun, src: (listener.ip(), 15443), dst: k.src, ..k },
        rewrite: Rewrite::ToPort {
            src: "198.51.100.10:443".parse().unwrap(),
            out: Side::Inside,
            src_mac: [2, 0, 0, 0, 0, 2],
            dst_mac: [2, 0, 0, 0, 0, 1],
            vlan: Some(100),
        },
        syn: false,
    };
    let v = value(&with_tun, &back).unwrap();
    assert_eq!(v.flags, FLAG_CLOSE);
    assert_eq!((v.out_ifindex, v.action, v.vlan), (7, ACT_TO_PORT, 100));
    assert_eq!((v.eth_src, v.eth_dst), ([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1]));
    assert_eq!(key(&with_tun, &back.key).unwrap().ifindex, 11);
    // An IPv6 rewrite of an IPv4 key, or a "port" that is the TUN, is refused.
    let mixed = FastEntry {
        key: k,
        rewrite: Rewrite::ToTun { dst: "[fd53:1ce::1]:15443".parse().unwrap() },
        syn: false,
    };
    assert_eq!(value(&with_tun, &mixed), None);
    let Rewrite::ToPort { src, src_mac, dst_mac, vlan, .. } = back.rewrite else { unreachable!() };
    let into_tun = FastEntry {
        key: back.key,
        rewrite: Rewrite::ToPort { src, out: Side::Tun, src_mac, dst_mac, vlan },
        syn: false,
    };
    assert_eq!(value(&with_tun, &into_tun), None);
}
