//! Bounded reassembly of the client's first bytes of a TCP stream, to read the ClientHello.
//!
//! Segments are placed by sequence number relative to the client's ISN; out-of-order and
//! retransmitted segments are fine; an overlap whose bytes disagree is an evasion attempt.

use crate::wire::tls::MAX_HELLO;

/// What adding a segment did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// Stored (possibly a harmless retransmission).
    Ok,
    /// Bytes overlap earlier bytes with different content.
    Conflict,
    /// The segment lies (partly) beyond the window.
    Overflow,
}

/// The first [`MAX_HELLO`] bytes of a client stream, with a map of which bytes arrived.
#[derive(Debug, Clone)]
pub struct Reassembly {
    base: u32,
    data: Box<[u8]>,
    have: Box<[u64]>,
    contiguous: usize,
}

impl Reassembly {
    /// A window starting at sequence number `base` (the client's ISN + 1).
    pub fn new(base: u32) -> Self {
        Reassembly {
            base,
            data: vec![0u8; MAX_HELLO].into_boxed_slice(),
            have: vec![0u64; MAX_HELLO / 64].into_boxed_slice(),
            contiguous: 0,
        }
    }

    fn has(&self, i: usize) -> bool {
        self.have[i / 64] & (1 << (i % 64)) != 0
    }

    /// Adds a segment with sequence number `seq`. Bytes before the window (already seen
    /// retransmissions of the SYN space) are ignored.
    pub fn add(&mut self, seq: u32, payload: &[u8]) -> Added {
        let off = seq.wrapping_sub(self.base) as i32;
        let (start, payload) = if off < 0 {
            let skip = off.unsigned_abs() as usize;
            if skip >= payload.len() {
                return Added::Ok;
            }
            (0usize, &payload[skip..])
        } else {
            (off as usize, payload)
        };
        if start >= MAX_HELLO || start + payload.len() > MAX_HELLO {
            return Added::Overflow;
        }
        for (k, b) in payload.iter().enumerate() {
            let i = start + k;
            if self.has(i) {
                if self.data[i] != *b {
                    return Added::Conflict;
                }
            } else {
                self.data[i] = *b;
                self.have[i / 64] |= 1 << (i % 64);
            }
        }
        while self.contiguous < MAX_HELLO && self.has(self.contiguous) {
            self.contiguous += 1;
        }
        Added::Ok
    }

    /// The contiguous bytes from the start of the stream.
    pub fn contiguous(&self) -> &[u8] {
        &self.data[..self.contiguous]
    }

    /// Sequence number just after the contiguous bytes.
    pub fn next_seq(&self) -> u32 {
        self.base.wrapping_add(self.contiguous as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_out_of_order_and_conflict() {
        let base = u32::MAX - 2; // the window wraps around zero
        let at = |k: u32| base.wrapping_add(k);
        let mut r = Reassembly::new(base);
        assert_eq!(r.add(at(3), b"def"), Added::Ok);
        assert_eq!(r.contiguous(), b"");
        assert_eq!(r.add(at(0), b"abc"), Added::Ok);
        assert_eq!(r.contiguous(), b"abcdef");
        assert_eq!(r.add(at(1), b"bcd"), Added::Ok);
        assert_eq!(r.add(at(2), b"Xd"), Added::Conflict);
        assert_eq!(r.add(base.wrapping_sub(2), b"zzab"), Added::Ok);
        assert_eq!(r.add(at(MAX_HELLO as u32), b"x"), Added::Overflow);
        assert_eq!(r.next_seq(), at(6));
    }
}
