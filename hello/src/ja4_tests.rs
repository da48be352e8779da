use super::*;

/// A hello's JA4 inputs: QUIC, version, SNI, ciphers, extension types, signature
/// algorithms, first ALPN protocol.
type Case<'a> = (bool, u16, bool, &'a [u16], &'a [u16], &'a [u16], Option<&'a [u8]>);

/// The cipher list and the extensions block of a hello with these lists.
fn raw_lists(ciphers: &[u16], exts: &[u16], sigalgs: &[u16]) -> (Vec<u8>, Vec<u8>) {
    let c = ciphers.iter().flat_map(|x| x.to_be_bytes()).collect();
    (c, block(exts, &list16(sigalgs)))
}

/// An extensions block: each type with no data but the signature algorithms' `sig`.
fn block(types: &[u16], sig: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    for t in types {
        let data = if *t == 0x000d { sig } else { &[][..] };
        b.extend(t.to_be_bytes());
        b.extend((data.len() as u16).to_be_bytes());
        b.extend(data);
    }
    b
}

/// JA4 as FoxIO's reference describes it, written out with strings: what the parts must
/// give.
fn reference(case: Case<'_>) -> String {
    let (quic, version, sni, ciphers, exts, sigalgs, alpn) = case;
    let hex = |v: &[u16]| v.iter().map(|x| format!("{x:04x}")).collect::<Vec<_>>().join(",");
    let h12 = |s: &str| {
        if s.is_empty() {
            return EMPTY.to_owned();
        }
        Sha256::digest(s.as_bytes())[..6].iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let mut c: Vec<u16> = ciphers.iter().copied().filter(|c| !is_grease(*c)).collect();
    let all: Vec<u16> = exts.iter().copied().filter(|c| !is_grease(*c)).collect();
    let mut e: Vec<u16> = all.iter().copied().filter(|t| *t != 0 && *t != 0x10).collect();
    c.sort_unstable();
    e.sort_unstable();
    let ver = match version {
        0x0304 => "13",
        0x0303 => "12",
        0x0302 => "11",
        0x0301 => "10",
        0x0300 => "s3",
        _ => "00",
    };
    let alpn = match alpn {
        Some(p) if !p.is_empty() => {
            let (f, l) = (p[0], p[p.len() - 1]);
            if f.is_ascii_alphanumeric() && l.is_ascii_alphanumeric() {
                format!("{}{}", f as char, l as char)
            } else {
                let h = format!("{f:02x}{l:02x}");
                format!("{}{}", &h[..1], &h[3..])
            }
        }
        _ => "00".into(),
    };
    let a = format!(
        "{}{ver}{}{:02}{:02}{alpn}",
        if quic { 'q' } else { 't' },
        if sni { 'd' } else { 'i' },
        c.len().min(99),
        all.len().min(99)
    );
    let mut c_in = hex(&e);
    if !sigalgs.is_empty() {
        c_in.push('_');
        c_in.push_str(&hex(sigalgs));
    }
    let cpart = if e.is_empty() { EMPTY.to_owned() } else { h12(&c_in) };
    format!("{a}_{}_{cpart}", if c.is_empty() { EMPTY.to_owned() } else { h12(&hex(&c)) })
}

fn parts(case: Case<'_>) -> Ja4Parts {
    let (quic, version, sni, ciphers, exts, sigalgs, alpn) = case;
    let (c, exts) = raw_lists(ciphers, exts, sigalgs);
    let mut p = Ja4Parts::default();
    p.fill(Ja4Input {
        quic,
        version,
        has_sni: sni,
        ciphers: &c,
        extensions: &exts,
        first_alpn: alpn,
    });
    p
}

#[test]
fn parts_give_the_reference_fingerprint() {
    let chrome_ciphers = [
        0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc013, 0xc014,
        0x009c, 0x009d, 0x002f, 0x0035, 0x0a0a,
    ];
    let chrome_exts = [
        0x1a1a, 0x0000, 0x0017, 0xff01, 0x000a, 0x000b, 0x0023, 0x0010, 0x0005, 0x000d, 0x0012,
        0x0033, 0x002d, 0x002b, 0x001b, 0x4469, 0x0015, 0x2a2a,
    ];
    let sigalgs = [0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601];
    let mut many_exts = vec![0x0005; 120];
    many_exts.push(0x000d);
    let cases: [Case<'_>; 6] = [
        (false, 0x0304, true, &chrome_ciphers, &chrome_exts, &sigalgs, Some(b"h2")),
        (true, 0x0304, false, &chrome_ciphers, &chrome_exts, &[], Some(b"h3")),
        (false, 0x0303, true, &[], &[], &[], None),
        (false, 0x0303, true, &[0x0a0a], &[0x0000, 0x0010], &sigalgs, Some(b"\x01x\xff")),
        (false, 0x0304, true, &chrome_ciphers, &chrome_exts, &sigalgs, Some(b"")),
        (false, 0x0300, true, &[0x002f; 130], &many_exts, &[0x0403; 70], Some(b"http/1.1")),
    ];
    for (q, v, s, c, e, g, a) in cases {
        assert_eq!(parts((q, v, s, c, e, g, a)).ja4(), reference((q, v, s, c, e, g, a)));
    }
    // FoxIO's published Chrome vector: t13d1516h2_8daaf6152771_e5627efa2ab1.
    assert_eq!(
        parts((false, 0x0304, true, &chrome_ciphers, &chrome_exts, &sigalgs, Some(b"h2"))).ja4(),
        "t13d1516h2_8daaf6152771_e5627efa2ab1"
    );
}

fn key(ciphers: &[u16], exts: &[u16], sigalgs: &[u16], keys: &[u64; 3]) -> Ja4Key {
    let (c, exts) = raw_lists(ciphers, exts, sigalgs);
    Ja4Key::of(
        Ja4Input {
            quic: false,
            version: 0x0304,
            has_sni: true,
            ciphers: &c,
            extensions: &exts,
            first_alpn: Some(b"h2"),
        },
        keys,
    )
}

#[test]
fn shuffled_extensions_and_grease_make_one_key() {
    let keys = Ja4Memo::new(1).keys;
    let a =
        key(&[0x1301, 0x0a0a, 0x1302], &[0x0000, 0x000d, 0x1a1a, 0x002b], &[0x0403, 0x0804], &keys);
    let b =
        key(&[0x1302, 0x1301, 0xfafa], &[0x002b, 0x3a3a, 0x000d, 0x0000], &[0x0403, 0x0804], &keys);
    assert_eq!(a, b);
    let c = key(&[0x1302, 0x1301], &[0x002b, 0x000d, 0x0000], &[0x0804, 0x0403], &keys);
    assert_ne!(a, c, "signature algorithms keep their order");
    let d = key(&[0x1301, 0x1301, 0x1302], &[0x0000, 0x000d, 0x002b], &[0x0403, 0x0804], &keys);
    assert_ne!(a, d, "a repeated cipher is another hello");
    let e = key(&[0x1301, 0x1302], &[0x0000, 0x000d, 0x002b, 0x0010], &[0x0403, 0x0804], &keys);
    assert_ne!(a, e, "ALPN's extension counts, though not in the list");
    // Another memo's keys give other sums: nobody outside can line kinds of hello up.
    let other = Ja4Memo::new(1).keys;
    assert_ne!(
        a.sums,
        key(&[0x1301, 0x1302], &[0x0000, 0x000d, 0x002b], &[0x0403, 0x0804], &other).sums
    );
}

fn hello(file: &str) -> Vec<u8> {
    let path = format!("{}/../dataplane/testdata/clienthello/{file}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(path).unwrap()
}

#[test]
fn the_memo_gives_each_hello_its_own_fingerprint_and_stays_bounded() {
    let files = [
        "curl-api.openai.com.bin",
        "openssl-api.openai.com.bin",
        "openssl-no-sni.bin",
        "python-sdk-api.openai.com.bin",
        "synth-ech-example.org.bin",
        "synth-x25519mlkem768-api.openai.com.bin",
    ];
    let raws: Vec<Vec<u8>> = files.iter().map(|f| hello(f)).collect();
    let mut memo = Ja4Memo::new(64);
    let mut held = Vec::new();
    for _ in 0..2 {
        for raw in &raws {
            let mut sc = Vec::new();
            let crate::HelloParse::Hello(h) = crate::parse_client_hello(raw, &mut sc) else {
                panic!()
            };
            let got = memo.ja4(&h);
            assert_eq!(&*got, h.ja4());
            held.push(got);
        }
    }
    let kinds = memo.len();
    assert!(kinds >= 4 && kinds <= files.len(), "{kinds}");
    // Full, with every entry held by a flow: new kinds are computed, not kept.
    let mut small = Ja4Memo::new(1);
    let mut sc = Vec::new();
    let crate::HelloParse::Hello(a) = crate::parse_client_hello(&raws[0], &mut sc) else {
        panic!()
    };
    let kept = small.ja4(&a);
    let mut sc2 = Vec::new();
    let crate::HelloParse::Hello(b) = crate::parse_client_hello(&raws[1], &mut sc2) else {
        panic!()
    };
    assert_eq!(&*small.ja4(&b), b.ja4());
    assert_eq!(small.len(), 1);
    // Once no flow holds the first, the purge makes room, and the new kind is shared.
    drop(kept);
    small.purge();
    assert!(small.is_empty(), "the memo's own copy alone is dropped");
    let (x, y) = (small.ja4(&b), small.ja4(&b));
    assert!(Arc::ptr_eq(&x, &y));
}

/// The fingerprint as the code before the memo read it from a hello (its own walk of the
/// extensions), through [`reference`].
fn old_ja4(h: &crate::ClientHello<'_>) -> String {
    let ciphers: Vec<u16> = pairs(h.ciphers).collect();
    let (mut types, mut sigalgs) = (Vec::new(), Vec::new());
    let mut e = crate::Reader::new(h.extensions);
    while let (Some(typ), Some(data)) = (e.u16(), e.vec16()) {
        types.push(typ);
        if typ == 0x000d
            && let Some(v) = crate::Reader::new(data).vec16()
        {
            sigalgs = pairs(v).collect();
        }
    }
    reference((h.quic, h.version, h.sni.is_some(), &ciphers, &types, &sigalgs, h.alpn().next()))
}

/// A ClientHello record with `ciphers` and `exts` (type, data).
fn build(ciphers: &[u16], exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut body = vec![0x03, 0x03];
    body.extend([7u8; 32]);
    body.push(0);
    body.extend(((ciphers.len() * 2) as u16).to_be_bytes());
    body.extend(ciphers.iter().flat_map(|c| c.to_be_bytes()));
    body.extend([1, 0]);
    let mut ext = Vec::new();
    for (t, d) in exts {
        ext.extend(t.to_be_bytes());
        ext.extend((d.len() as u16).to_be_bytes());
        ext.extend(d);
    }
    body.extend((ext.len() as u16).to_be_bytes());
    body.extend(ext);
    let mut hs = vec![1, 0, (body.len() >> 8) as u8, body.len() as u8];
    hs.extend(body);
    let mut rec = vec![0x16, 0x03, 0x01, (hs.len() >> 8) as u8, hs.len() as u8];
    rec.extend(hs);
    rec
}

fn list16(v: &[u16]) -> Vec<u8> {
    let mut d = ((v.len() * 2) as u16).to_be_bytes().to_vec();
    d.extend(v.iter().flat_map(|x| x.to_be_bytes()));
    d
}

#[test]
fn fingerprints_match_the_code_before_the_memo() {
    let sni = {
        let mut d = vec![0, 12, 0, 0, 9];
        d.extend(b"a.example");
        d
    };
    let alpn = vec![0, 12, 2, b'h', b'2', 8, b'h', b't', b't', b'p', b'/', b'1', b'.', b'1'];
    let mut hellos: Vec<Vec<u8>> = [
        "curl-api.openai.com.bin",
        "openssl-api.openai.com.bin",
        "openssl-example.org.bin",
        "openssl-no-sni.bin",
        "python-sdk-api.openai.com.bin",
        "synth-ech-cloudflare-ech.com.bin",
        "synth-grease-ech-api.openai.com.bin",
        "synth-x25519mlkem768-api.openai.com.bin",
    ]
    .iter()
    .map(|f| hello(f))
    .collect();
    // Two signature-algorithm extensions (the last counts), a malformed one after a good
    // one (the good one counts), GREASE in every list, a hello of 120 extensions, an
    // odd-length list, an ALPN list whose first protocol is empty or not alphanumeric.
    let sig = |v: &[u16]| (0x000d, list16(v));
    hellos.push(build(
        &[0x1301, 0x2a2a],
        &[(0, sni.clone()), sig(&[0x0403]), sig(&[0x0804, 0x0a0a])],
    ));
    hellos.push(build(&[0x1301], &[sig(&[0x0403, 0x0503]), (0x000d, vec![0, 9, 1])]));
    hellos.push(build(
        &[0x0a0a, 0x1301, 0xfafa],
        &[(0x3a3a, vec![]), (0x0010, alpn.clone()), sig(&[0x1a1a])],
    ));
    let many: Vec<(u16, Vec<u8>)> =
        (0..120).map(|i| (0x7000 + i, vec![])).chain([sig(&[0x0403])]).collect();
    hellos.push(build(&[0x1301, 0x1302], &many));
    hellos.push(build(&[0x1301], &[(0x000d, vec![0, 3, 4, 3, 5])]));
    hellos.push(build(&[0x1301], &[(0x0010, vec![0, 4, 0, 2, b'h', b'2'])]));
    hellos.push(build(&[0x1301], &[(0x0010, vec![0, 4, 3, 0x01, b'x', 0xff])]));
    let mut memo = Ja4Memo::new(64);
    for raw in &hellos {
        let mut sc = Vec::new();
        let crate::HelloParse::Hello(h) = crate::parse_client_hello(raw, &mut sc) else {
            panic!("not a hello: {raw:02x?}")
        };
        let old = old_ja4(&h);
        assert_eq!(h.ja4(), old);
        assert_eq!(*memo.ja4(&h), *old);
    }
}
