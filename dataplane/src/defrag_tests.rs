use super::*;
use etherparse::{NetSlice, PacketBuilder};

/// A UDP datagram of `n` payload bytes from `src`, as IPv4 fragments of `size` bytes.
fn frags(src: [u8; 4], id: u16, n: usize, size: usize) -> Vec<Vec<u8>> {
    let mut whole = Vec::new();
    PacketBuilder::ethernet2([2; 6], [4; 6])
        .ipv4(src, [198, 51, 100, 1], 64)
        .udp(4000, 443)
        .write(&mut whole, &vec![0xab; n])
        .unwrap();
    let (head, payload) = whole.split_at(34);
    payload
        .chunks(size)
        .enumerate()
        .map(|(i, c)| {
            let mut f = head.to_vec();
            let more = (i + 1) * size < payload.len();
            f[16..18].copy_from_slice(&((20 + c.len()) as u16).to_be_bytes());
            f[18..20].copy_from_slice(&id.to_be_bytes());
            let flags = (i * size / 8) as u16 | if more { 0x2000 } else { 0 };
            f[20..22].copy_from_slice(&flags.to_be_bytes());
            f.extend_from_slice(c);
            f
        })
        .collect()
}

fn feed(d: &mut Defrag, fs: &[Vec<u8>], t: u64) -> Vec<Result<Option<Whole>, FragError>> {
    fs.iter().map(|f| d.add(&fragment(f).unwrap(), f, t)).collect()
}

#[test]
fn whole_frames_are_not_fragments() {
    let f = frags([10, 0, 0, 1], 1, 100, 200);
    assert_eq!(f.len(), 1);
    assert!(fragment(&f[0]).is_none());
}

#[test]
fn out_of_order_with_a_duplicate_makes_one_valid_packet() {
    let mut fs = frags([10, 0, 0, 1], 1, 1000, 128);
    fs.swap(0, 5);
    fs.insert(3, fs[2].clone());
    let mut d = Defrag::default();
    let got = feed(&mut d, &fs, 0);
    assert!(got[..got.len() - 1].iter().all(|r| matches!(r, Ok(None))));
    let Some(Ok(Some(w))) = got.last().cloned() else { panic!("whole") };
    assert_eq!(w.fragments, fs);
    let p = etherparse::SlicedPacket::from_ethernet(&w.frame).unwrap();
    let Some(NetSlice::Ipv4(v4)) = &p.net else { panic!("v4") };
    assert!(!v4.header().is_fragmenting_payload());
    assert_eq!(v4.header().to_header().calc_header_checksum(), v4.header().header_checksum());
    assert!(matches!(p.transport, Some(etherparse::TransportSlice::Udp(_))));
    assert_eq!((d.pending(), d.bytes()), (0, 0));
}

#[test]
fn disagreeing_overlap_and_inconsistent_ends_drop_the_datagram() {
    let a = frags([10, 0, 0, 1], 2, 256, 64);
    let mut b = a[1].clone();
    let n = b.len();
    b[n - 1] ^= 1;
    let mut d = Defrag::default();
    assert!(matches!(feed(&mut d, &a[..2], 0)[1], Ok(None)));
    assert_eq!(feed(&mut d, &[b], 0)[0], Err(FragError::Overlap));
    assert_eq!((d.pending(), d.bytes()), (0, 0));
    // Two different ends.
    let short = frags([10, 0, 0, 1], 3, 100, 64);
    let long = frags([10, 0, 0, 1], 3, 200, 64);
    let mut d = Defrag::default();
    assert!(matches!(feed(&mut d, &short[1..], 0)[0], Ok(None)));
    assert_eq!(feed(&mut d, &long[3..], 0)[0], Err(FragError::Inconsistent));
}

#[test]
fn limits_per_source_and_in_all() {
    let limits = Limits { datagrams_per_source: 2, ..Limits::default() };
    let mut d = Defrag::new(limits);
    for id in 0..2 {
        assert!(matches!(feed(&mut d, &frags([10, 0, 0, 1], id, 200, 64)[..1], 0)[0], Ok(None)));
    }
    let third = frags([10, 0, 0, 1], 9, 200, 64);
    assert_eq!(feed(&mut d, &third[..1], 0)[0], Err(FragError::Limit));
    // Another source is not held back by the first one's datagrams.
    assert!(matches!(feed(&mut d, &frags([10, 0, 0, 2], 9, 200, 64)[..1], 0)[0], Ok(None)));
    // Bytes in all.
    let mut d = Defrag::new(Limits { bytes: 4000, ..Limits::default() });
    let fs = frags([10, 0, 0, 3], 1, 6000, 1480);
    let got = feed(&mut d, &fs, 0);
    assert!(got.contains(&Err(FragError::Limit)));
    assert!(d.bytes() <= 4000);
    // Fragments per datagram.
    let mut d = Defrag::new(Limits { fragments_per_datagram: 4, ..Limits::default() });
    let got = feed(&mut d, &frags([10, 0, 0, 4], 1, 400, 16), 0);
    assert_eq!(got[4], Err(FragError::Limit));
}

#[test]
fn timeouts_release_everything() {
    let fs = frags([10, 0, 0, 1], 4, 500, 64);
    let mut d = Defrag::default();
    feed(&mut d, &fs[1..], 0);
    assert!(d.bytes() > 0);
    assert_eq!(d.expire(29_999), 0);
    assert_eq!(d.expire(30_000), fs.len() - 1);
    assert_eq!((d.pending(), d.bytes()), (0, 0));
}

#[test]
fn a_refused_first_fragment_leaves_the_books_as_they_were() {
    let limits = Limits { datagrams_per_source: 2, ..Limits::default() };
    let mut d = Defrag::new(limits);
    let held = frags([10, 0, 0, 1], 1, 200, 64);
    assert!(matches!(feed(&mut d, &held[..1], 0)[0], Ok(None)));
    let before = (d.pending(), d.bytes());
    // A new datagram whose first fragment is refused (a middle length not a multiple of 8).
    let mut bad = frags([10, 0, 0, 1], 2, 200, 64)[0].clone();
    bad.truncate(bad.len() - 3);
    let n = (bad.len() - 14) as u16;
    bad[16..18].copy_from_slice(&n.to_be_bytes());
    assert_eq!(feed(&mut d, &[bad], 0)[0], Err(FragError::Inconsistent));
    assert_eq!((d.pending(), d.bytes()), before);
    // The source's count is intact: one more datagram fits, a third does not.
    assert!(matches!(feed(&mut d, &frags([10, 0, 0, 1], 3, 200, 64)[..1], 0)[0], Ok(None)));
    assert_eq!(feed(&mut d, &frags([10, 0, 0, 1], 4, 200, 64)[..1], 0)[0], Err(FragError::Limit));
    // The first datagram still completes.
    let got = feed(&mut d, &held[1..], 1);
    assert!(matches!(got.last(), Some(Ok(Some(_)))));
}

#[test]
fn a_datagram_let_through_gives_back_what_was_held() {
    let fs = frags([10, 0, 0, 1], 9, 600, 128);
    let mut d = Defrag::default();
    feed(&mut d, &fs[2..4], 0);
    let key = fragment(&fs[0]).unwrap().key;
    assert_eq!(fragment(&fs[0]).unwrap().first_ports(), Some((17, 4000, 443)));
    assert_eq!(fragment(&fs[2]).unwrap().first_ports(), None);
    assert_eq!(d.pass(&key, 1), Some(fs[2..4].to_vec()));
    assert_eq!((d.pending(), d.bytes()), (0, 0));
    assert!(d.passes(&key, 2));
    d.expire(40_000);
    assert!(!d.passes(&key, 40_000));
}
