//! The ports' drop counter reads what the kernel dropped before the engine (needs root: a
//! packet socket on the loopback interface).
#![allow(clippy::unwrap_used)]

use sluice_dataplane::Drops;
use sluice_dataplane::ring::RxRing;

/// A ring nobody reads fills up; the frames after that are counted as dropped, once.
#[test]
fn a_full_ring_counts_its_drops() {
    // SAFETY: geteuid has no preconditions.
    #[allow(unsafe_code)]
    let root = unsafe { libc::geteuid() } == 0;
    assert!(root, "this test opens a packet socket: run it as root (CI does)");
    let ring = RxRing::open("lo", 1).unwrap();
    let drops = Drops::of(ring.socket()).unwrap();
    let _ = drops.take().unwrap();
    let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..2000 {
        tx.send_to(&[0u8; 200], rx.local_addr().unwrap()).unwrap();
    }
    let dropped = drops.take().unwrap();
    assert!(dropped > 1000, "{dropped} drops counted of 2,000 frames into a ring never read");
    assert!(drops.take().unwrap() < dropped, "the kernel's count starts again after a read");
    drop(ring);
}
