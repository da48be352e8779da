//! The link of a record: `SHA-256("sluice/chain/v1\0" ‖ prev ‖ seq ‖ len ‖ record)`, with
//! `prev` the previous record's link (32 bytes; [`GENESIS`] before the first), `seq` the
//! record's sequence number and `len` its length in bytes, both 8 bytes big-endian, and
//! `record` its bytes exactly as stored. The length makes the encoding unambiguous; the
//! domain string keeps links from being mistaken for any other SHA-256 of the same bytes.

use std::fmt;

use sha2::{Digest, Sha256};

/// Domain separation of chain links.
const DOMAIN: &[u8] = b"sluice/chain/v1\0";

/// A record's link: the hash that commits to it and to every record before it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Link(pub [u8; 32]);

/// The link before a chain's first record.
pub const GENESIS: Link = Link([0; 32]);

impl Link {
    /// Lowercase hex, as records and checkpoints carry it.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 15)]));
        }
        s
    }

    /// The link written as 64 hex digits (either case), or `None`.
    pub fn from_hex(s: &str) -> Option<Link> {
        let b = s.as_bytes();
        if b.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in b.chunks_exact(2).enumerate() {
            out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Some(Link(out))
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Link({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The link of record `seq` with bytes `record`, after `prev`.
pub fn link(prev: &Link, seq: u64, record: &[u8]) -> Link {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(prev.0);
    h.update(seq.to_be_bytes());
    h.update((record.len() as u64).to_be_bytes());
    h.update(record);
    Link(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_commit_to_everything_and_read_back() {
        let a = link(&GENESIS, 1, b"{\"type\":\"flow\"}");
        assert_ne!(a, link(&GENESIS, 2, b"{\"type\":\"flow\"}"), "the sequence number");
        assert_ne!(a, link(&GENESIS, 1, b"{\"type\":\"flow\"} "), "every byte");
        assert_ne!(a, link(&Link([1; 32]), 1, b"{\"type\":\"flow\"}"), "the previous link");
        // Lengths keep `seq ‖ record` unambiguous.
        assert_ne!(link(&GENESIS, 1, b"ab"), link(&GENESIS, 1, b"a"));
        assert_eq!(Link::from_hex(&a.to_hex()), Some(a));
        assert_eq!(Link::from_hex(&a.to_hex().to_uppercase()), Some(a));
        for bad in ["", "00", &"g".repeat(64), &"0".repeat(63), &"é".repeat(32)] {
            assert_eq!(Link::from_hex(bad), None, "{bad}");
        }
        // A fixed vector: the encoding is specified in ARCHITECTURE.md and must not drift.
        assert_eq!(link(&GENESIS, 1, b"x").to_hex(), {
            let mut h = Sha256::new();
            h.update(b"sluice/chain/v1\0");
            h.update([0u8; 32]);
            h.update([0, 0, 0, 0, 0, 0, 0, 1]);
            h.update([0, 0, 0, 0, 0, 0, 0, 1]);
            h.update(b"x");
            Link(h.finalize().into()).to_hex()
        });
    }
}
