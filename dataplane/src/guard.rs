//! What the engine keeps of a ClientHello after deciding on it, until the decision can no
//! longer be stepped around (ARCHITECTURE.md, "The packet path"). Pure.
//!
//! Two evasions attack a decision taken on the first hello seen:
//! - **A decoy.** The attacker sends a hello for an allowed name that never reaches the server
//!   (a TTL that expires past the appliance), then the real hello for a blocked name in the
//!   same sequence range. The guard keeps the decided bytes until the server acknowledges
//!   them: a client segment that disagrees with them is evasion and blocks the flow.
//! - **A second ClientHello.** TLS 1.3 lets the server answer with a HelloRetryRequest, after
//!   which the client sends a new ClientHello on the same connection. The guard reads the
//!   server's first record; after a HelloRetryRequest it follows the client's records and
//!   hands the next ClientHello back to be decided afresh.
//!
//! Until the guard lets go, the flow stays off the kernel fast path.

/// The `random` of a HelloRetryRequest (RFC 8446 §4.1.3): SHA-256 of "HelloRetryRequest".
const HRR_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
    0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];

/// What the server's first bytes were.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    /// Nothing yet.
    Waiting,
    /// Anything but a HelloRetryRequest: no other plaintext ClientHello can follow.
    Answered,
    /// A HelloRetryRequest: the client's next ClientHello is decided afresh.
    Retry,
}

/// The decided hello of a flow, and the watch on what follows it.
#[derive(Debug, Clone)]
pub struct Guard {
    base: u32,
    bytes: Box<[u8]>,
    acked: bool,
    server: Server,
    /// Sequence number where the client's next TLS record starts.
    next_record: u32,
    /// Sequence number of the server's first byte, when known.
    server_first: Option<u32>,
}

/// What a segment did to the guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing against the decision.
    Pass,
    /// The client's bytes disagree with those decided on, or hide where the next record
    /// starts after a HelloRetryRequest.
    Evasion(&'static str),
    /// A new ClientHello starts at this sequence number (after a HelloRetryRequest).
    SecondHello(u32),
}

impl Guard {
    /// A guard over `bytes`, the client's stream from sequence number `base` as decided (the
    /// hello, and what came with it); `server_first` is the sequence number of the server's
    /// first byte (its ISN + 1), if its SYN-ACK was seen.
    pub fn new(base: u32, bytes: &[u8], server_first: Option<u32>) -> Self {
        // The client's records after the hello: skip the handshake records decided on.
        let mut at = 0usize;
        while let Some(h) = bytes.get(at..at + 5) {
            if h[0] != 0x16 {
                break;
            }
            at += 5 + usize::from(u16::from_be_bytes([h[3], h[4]]));
        }
        Guard {
            base,
            bytes: bytes.into(),
            acked: false,
            server: Server::Waiting,
            next_record: base.wrapping_add(at as u32),
            server_first,
        }
    }

    /// Whether the decision is safe from here on: the server acknowledged the decided bytes
    /// and answered with something other than a HelloRetryRequest.
    pub fn done(&self) -> bool {
        self.acked && self.server == Server::Answered
    }

    /// A client segment (`seq`, `payload`), checksum verified.
    pub fn client(&mut self, seq: u32, payload: &[u8]) -> Step {
        let off = i64::from(seq.wrapping_sub(self.base) as i32);
        let (lo, hi) = (off.max(0), (off + payload.len() as i64).min(self.bytes.len() as i64));
        if lo < hi {
            let (lo, hi) = (lo as usize, hi as usize);
            let p = (lo as i64 - off) as usize;
            if self.bytes[lo..hi] != payload[p..p + (hi - lo)] {
                return Step::Evasion("a ClientHello's bytes sent again differ (decoy hello)");
            }
        }
        if self.server != Server::Retry {
            return Step::Pass;
        }
        // After a HelloRetryRequest: walk the records this segment starts.
        loop {
            let at = self.next_record.wrapping_sub(seq) as i32;
            if at < 0 || at as usize >= payload.len() {
                return Step::Pass;
            }
            let Some(h) = payload.get(at as usize..at as usize + 6) else {
                return Step::Evasion("a TLS record header split across segments after a retry");
            };
            match h[0] {
                0x16 if h[5] == 0x01 => return Step::SecondHello(self.next_record),
                0x14..=0x16 => {
                    let len = u16::from_be_bytes([h[3], h[4]]);
                    self.next_record = self.next_record.wrapping_add(5 + u32::from(len));
                }
                // Application data: the handshake is encrypted from here, no hello follows.
                _ => {
                    self.server = Server::Answered;
                    return Step::Pass;
                }
            }
        }
    }

    /// A server segment: its acknowledgment (`ack`, if set) and its payload at `seq`.
    pub fn server(&mut self, ack: Option<u32>, seq: u32, payload: &[u8]) {
        let end = self.base.wrapping_add(self.bytes.len() as u32);
        if let Some(a) = ack
            && a.wrapping_sub(end) as i32 >= 0
        {
            self.acked = true;
        }
        if self.server == Server::Waiting && !payload.is_empty() {
            // Its first bytes say what it answered; bytes from further on (its first segment
            // lost) cannot be read as a record, and a HelloRetryRequest is short and first.
            if Some(seq) != self.server_first {
                self.server = Server::Answered;
                return;
            }
            self.server = if is_retry(payload) { Server::Retry } else { Server::Answered };
        }
    }
}

/// Whether a server's first bytes are a HelloRetryRequest (a ServerHello with the special
/// random).
fn is_retry(p: &[u8]) -> bool {
    p.len() >= 43 && p[0] == 0x16 && p[5] == 0x02 && p[11..43] == HRR_RANDOM
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(typ: u8, body: &[u8]) -> Vec<u8> {
        let mut r = vec![typ, 3, 3];
        r.extend_from_slice(&(body.len() as u16).to_be_bytes());
        r.extend_from_slice(body);
        r
    }

    fn server_hello(random: [u8; 32]) -> Vec<u8> {
        let mut body = vec![0x02, 0, 0, 70, 3, 3];
        body.extend_from_slice(&random);
        body.extend_from_slice(&[0; 38]);
        record(0x16, &body)
    }

    #[test]
    fn same_bytes_pass_different_bytes_are_evasion() {
        let hello = record(0x16, &[1, 0, 0, 4, 9, 9, 9, 9]);
        let mut g = Guard::new(1000, &hello, Some(1));
        assert_eq!(g.client(1000, &hello), Step::Pass);
        assert_eq!(g.client(1002, &hello[2..6]), Step::Pass);
        // Overlapping the start from before it, and past its end.
        let mut longer = vec![0xaa; 3];
        longer.extend_from_slice(&hello);
        longer.extend_from_slice(b"after");
        assert_eq!(g.client(997, &longer), Step::Pass);
        let mut other = hello.clone();
        other[7] ^= 1;
        assert!(matches!(g.client(1000, &other), Step::Evasion(_)));
        assert!(matches!(g.client(1007, &other[7..]), Step::Evasion(_)));
        // Bytes after the decided ones are not compared.
        assert_eq!(g.client(1000 + hello.len() as u32, b"\x17\x03\x03"), Step::Pass);
    }

    #[test]
    fn done_once_acknowledged_and_answered() {
        let hello = record(0x16, &[1, 0, 0, 1, 0]);
        let end = 5000 + hello.len() as u32;
        let mut g = Guard::new(5000, &hello, Some(900));
        g.server(Some(end - 1), 900, &[]);
        assert!(!g.done());
        g.server(Some(end), 900, &server_hello([7; 32]));
        assert!(g.done());
        // Sequence numbers wrap.
        let mut g = Guard::new(u32::MAX - 2, &hello, Some(1));
        g.server(Some((u32::MAX - 2).wrapping_add(hello.len() as u32)), 1, b"\x16");
        assert!(g.done());
    }

    #[test]
    fn after_a_retry_the_next_hello_is_handed_back() {
        let hello = record(0x16, &[1, 0, 0, 1, 0]);
        let base = 100u32;
        let end = base + hello.len() as u32;
        let mut g = Guard::new(base, &hello, Some(7));
        g.server(Some(end), 7, &server_hello(HRR_RANDOM));
        assert!(!g.done());
        // A change-cipher-spec record, then the second hello in the same segment.
        let mut flight = record(0x14, &[1]);
        flight.extend(record(0x16, &[1, 0, 0, 2, 0, 0]));
        assert_eq!(g.client(end, &flight), Step::SecondHello(end + 6));
        // A header cut in two hides the next record: refused.
        let mut g = Guard::new(base, &hello, Some(7));
        g.server(Some(end), 7, &server_hello(HRR_RANDOM));
        assert!(matches!(g.client(end, &flight[..3]), Step::Evasion(_)));
        // Application data ends the watch.
        let mut g = Guard::new(base, &hello, Some(7));
        g.server(Some(end), 7, &server_hello(HRR_RANDOM));
        assert_eq!(g.client(end, &record(0x17, &[0; 20])), Step::Pass);
        assert!(g.done());
    }
}
