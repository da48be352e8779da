//! NAT rewrite on arbitrary IP packets: never panics, and rewriting there and back restores
//! the original bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_dataplane::nat::rewrite;

fuzz_target!(|data: &[u8]| {
    let mut p = data.to_vec();
    let v6 = data.first().is_some_and(|b| b >> 4 == 6);
    let to: std::net::SocketAddr =
        if v6 { "[fd5c::1]:15443".parse().unwrap() } else { "10.255.0.1:15443".parse().unwrap() };
    if rewrite(&mut p, None, Some(to)).is_ok() {
        // Restore the original destination from the input bytes.
        let orig = if v6 {
            let a: [u8; 16] = data[24..40].try_into().unwrap();
            std::net::SocketAddr::from((a, 0))
        } else {
            let a: [u8; 4] = data[16..20].try_into().unwrap();
            std::net::SocketAddr::from((a, 0))
        };
        let ihl = if v6 { 40 } else { usize::from(data[0] & 0x0f) * 4 };
        let port = u16::from_be_bytes([data[ihl + 2], data[ihl + 3]]);
        let orig = std::net::SocketAddr::new(orig.ip(), port);
        rewrite(&mut p, None, Some(orig)).unwrap();
        // Checksum bytes may differ only between the two one's-complement zeros.
        let proto = if v6 { data[6] } else { data[9] };
        let csum_at = ihl + if proto == 6 { 16 } else { 6 };
        for (i, (a, b)) in p.iter().zip(data).enumerate() {
            if a != b {
                assert!(
                    i == csum_at || i == csum_at + 1 || (!v6 && (i == 10 || i == 11)),
                    "byte {i} changed"
                );
            }
        }
    }
});
