//! Memory the packet engine holds per flow, at 1,000,000 flows (issue: at most 256 bytes per
//! flow in the engine, 512 MiB for a million flows in all). A counting allocator measures the
//! heap the engine holds after taking a million flows of one kind, for three kinds:
//!
//! - `syn`: a SYN each, never answered (a flood);
//! - `plain`: SYN, SYN-ACK and ACK to port 80 (allowed at the SYN);
//! - `tls`: a handshake, a ClientHello for api.openai.com (classified: SNI, JA4, rule) and
//!   the server's first answer and the client's next record (which end the guard over the
//!   hello); the flows share one classification, as flows of one client kind to one service
//!   do;
//! - `tls-unique`: the same with a name of its own in every hello (an attacker's, or a
//!   crawler's): no two flows share a classification (the worst case).
//!
//! Bytes are what the engine asked the allocator for (the allocator's own overhead comes on
//! top; the process's resident size is printed beside). Run:
//! `cargo bench -p sluice-dataplane --bench flowmem` (FLOWS=… to change the count).
#![allow(missing_docs, clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};

use arc_swap::ArcSwap;
use etherparse::PacketBuilder;
use sluice_dataplane::engine::{Engine, Now, Settings, Side};
use sluice_rules::IdentityOverlay;
use sluice_rules::catalog::ShippedOnly;

struct Counting;

static HELD: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged; only sizes are counted.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        HELD.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: as the caller's contract.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        HELD.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: as the caller's contract.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        HELD.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: as the caller's contract.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: f64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096.0 / (1024.0 * 1024.0)
}

/// A TCP segment of flow `i` (source 10.20.1.x, one of 60,000 ports each).
fn segment(
    i: u32,
    dport: u16,
    c2s: bool,
    flags: &str,
    seq: u32,
    ack: u32,
    payload: &[u8],
) -> Vec<u8> {
    let src = [10, 20, 1, (i / 60_000) as u8];
    let sport = 1_000 + (i % 60_000) as u16;
    let dst = [198, 51, 100, 10];
    let b = if c2s {
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4(src, dst, 64)
            .tcp(sport, dport, seq, 64_000)
    } else {
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
            .ipv4(dst, src, 64)
            .tcp(dport, sport, seq, 64_000)
    };
    let b = match flags {
        "S" => b.syn(),
        "SA" => b.syn().ack(ack),
        _ => b.ack(ack).psh(),
    };
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

/// The client's ChangeCipherSpec and first encrypted record, after its hello.
const CCS: [u8; 12] = [0x14, 0x03, 0x03, 0x00, 0x01, 0x01, 0x17, 0x03, 0x03, 0x00, 0x01, 0x00];

/// The first bytes of a ServerHello record.
const SERVER_HELLO: [u8; 9] = [0x16, 0x03, 0x03, 0x00, 0x04, 0x02, 0x00, 0x00, 0x00];

fn main() {
    let flows: u32 = std::env::var("FLOWS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let rules =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../rules/default.toml"))
            .unwrap();
    let policy = Arc::new(ArcSwap::from_pointee(
        sluice_rules::compile("default.toml", &rules, &ShippedOnly).unwrap().policy,
    ));
    let hello = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/clienthello/curl-api.openai.com.bin"
    ))
    .unwrap();
    println!("flows: {flows}");
    let at = hello.windows(14).position(|w| w == b"api.openai.com").unwrap();
    for kind in ["syn", "plain", "tls", "tls-unique"] {
        let before = HELD.load(Ordering::Relaxed);
        let rss_before = rss_mib();
        let mut e = Engine::new(
            policy.clone(),
            Arc::new(ArcSwap::from_pointee(IdentityOverlay::default())),
            Settings {
                max_flows: flows as usize,
                max_embryonic_per_source: flows as usize,
                ..Settings::default()
            },
        );
        let now = Now { mono_ms: 1, unix_ms: 1 };
        let mut hello = hello.clone();
        for i in 0..flows {
            if kind == "tls-unique" {
                // A name of its own: "api.openai.com" becomes "<7 base-36 digits>nai.com".
                let mut n = i;
                for b in &mut hello[at..at + 7] {
                    *b = b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize];
                    n /= 36;
                }
            }
            let end = 101 + hello.len() as u32;
            let frames: Vec<(Side, Vec<u8>)> = match kind {
                "syn" => vec![(Side::Inside, segment(i, 443, true, "S", 100, 0, &[]))],
                "plain" => vec![
                    (Side::Inside, segment(i, 80, true, "S", 100, 0, &[])),
                    (Side::Outside, segment(i, 80, false, "SA", 500, 101, &[])),
                    (Side::Inside, segment(i, 80, true, "A", 101, 501, &[])),
                ],
                _ => vec![
                    (Side::Inside, segment(i, 443, true, "S", 100, 0, &[])),
                    (Side::Outside, segment(i, 443, false, "SA", 500, 101, &[])),
                    (Side::Inside, segment(i, 443, true, "A", 101, 501, &hello)),
                    (Side::Outside, segment(i, 443, false, "A", 501, end, &SERVER_HELLO)),
                    (Side::Inside, segment(i, 443, true, "A", end, 501 + 9, &CCS)),
                    (Side::Outside, segment(i, 443, false, "A", 510, end + 12, &[])),
                ],
            };
            for (side, frame) in &frames {
                e.handle(*side, frame, now);
            }
            while e.poll_transmit().is_some() {}
        }
        assert_eq!(e.flow_count(), flows as usize, "{kind}: every flow in the table");
        while e.poll_record().is_some() {}
        let held = HELD.load(Ordering::Relaxed) - before;
        let per_flow = held as f64 / f64::from(flows);
        if kind != "tls-unique" && flows >= 100_000 {
            // The budget for the engine: 256 bytes per flow.
            assert!(per_flow <= 256.0, "{kind}: {per_flow:.1} bytes per flow, over 256");
        }
        println!(
            "{kind:>10}: {:6.1} bytes per flow in the engine ({:.0} MiB for {flows}); process RSS +{:.0} MiB",
            held as f64 / f64::from(flows),
            held as f64 / (1024.0 * 1024.0),
            rss_mib() - rss_before
        );
        drop(e);
    }
}
