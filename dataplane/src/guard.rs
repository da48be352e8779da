//! What the engine keeps of a ClientHello after deciding on it, until the decision can no
//! longer be stepped around (ARCHITECTURE.md, "The packet path"). Pure.
//!
//! Two evasions attack a decision taken on the first hello seen:
//! - **A decoy.** The attacker sends a hello for an allowed name that never reaches the server
//!   (a TTL that expires past the appliance), then the real hello for a blocked name in the
//!   same sequence range. The guard keeps the decided bytes until the server acknowledges
//!   them: a client segment that disagrees with them is evasion and blocks the flow.
//! - **A second ClientHello.** TLS 1.3 lets the server answer with a HelloRetryRequest, after
//!   which the client sends a new ClientHello on the same connection; a client may also send
//!   one right behind the first, for the server to take after its HelloRetryRequest. The
//!   guard reads the client's record right after the hello (a change-cipher-spec record may
//!   come first): a ClientHello there is handed back to be decided afresh. The header it read
//!   joins the bytes compared, so a decoy cannot show it one record and the server another.
//!
//! Until the guard lets go, the flow stays off the kernel fast path.

/// The `random` of a HelloRetryRequest (RFC 8446 §4.1.3): SHA-256 of "HelloRetryRequest".
const HRR_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
    0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];

/// The one change-cipher-spec record TLS 1.3 middlebox compatibility sends.
const CCS: [u8; 6] = [0x14, 0x03, 0x03, 0x00, 0x01, 0x01];

/// What the server's first bytes were.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    /// Nothing yet.
    Waiting,
    /// Anything but a HelloRetryRequest.
    Answered,
    /// A HelloRetryRequest: the client's next ClientHello is still to come.
    Retry,
}

/// The decided hello of a flow, and the watch on the record after it.
#[derive(Debug, Clone)]
pub struct Guard {
    base: u32,
    /// The client's bytes from `base` that decided or were read: compared with anything the
    /// client sends again over them.
    bytes: Vec<u8>,
    /// The server's highest acknowledgment seen.
    acked: Option<u32>,
    server: Server,
    /// Still reading the client's records after the hello.
    watching: bool,
    /// Sequence number where the next of those records starts.
    next: u32,
    /// Sequence number of the server's first byte, once its SYN-ACK was seen.
    server_first: Option<u32>,
}

/// What a segment did to the guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing against the decision.
    Pass,
    /// The client's bytes disagree with those decided on, or hide what follows the hello.
    Evasion(&'static str),
    /// A new ClientHello starts at this sequence number.
    SecondHello(u32),
}

/// Bytes of the TLS records that carry the ClientHello at the start of `stream` (a handshake
/// message may span records); `None` while they are not all there.
pub fn hello_span(stream: &[u8]) -> Option<usize> {
    let first = stream.get(..9)?;
    if first[0] != 0x16 || first[5] != 0x01 {
        return None;
    }
    let need =
        4 + ((usize::from(first[6]) << 16) | (usize::from(first[7]) << 8) | usize::from(first[8]));
    let (mut at, mut got) = (0usize, 0usize);
    while got < need {
        let h = stream.get(at..at + 5)?;
        if h[0] != 0x16 {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
        got += len;
        at += 5 + len;
    }
    (at <= stream.len()).then_some(at)
}

impl Guard {
    /// A guard over `hello`, the bytes of the decided ClientHello's records from sequence
    /// number `base`; `server_first` is the sequence number of the server's first byte (its
    /// ISN + 1), if its SYN-ACK was seen.
    pub fn new(base: u32, hello: &[u8], server_first: Option<u32>) -> Self {
        Guard {
            base,
            bytes: hello.to_vec(),
            acked: None,
            server: Server::Waiting,
            watching: true,
            next: base.wrapping_add(hello.len() as u32),
            server_first,
        }
    }

    /// Whether the decision is safe from here on: the server acknowledged the bytes read and
    /// answered with something other than a HelloRetryRequest, and the record after the hello
    /// was read.
    pub fn done(&self) -> bool {
        let acked = self.acked.is_some_and(|a| a.wrapping_sub(self.end()) as i32 >= 0);
        acked && self.server == Server::Answered && !self.watching
    }

    fn end(&self) -> u32 {
        self.base.wrapping_add(self.bytes.len() as u32)
    }

    /// A client segment (`seq` of its first payload byte, `payload`), checksum verified.
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
        // The record after the hello (or after what was read of it): its header is gathered
        // into the bytes compared, across segments if it comes cut.
        while self.watching {
            let from = self.next.wrapping_sub(self.base) as usize;
            let h: [u8; 6] = if from <= self.bytes.len() {
                let want = from + 6;
                let at = self.end().wrapping_sub(seq) as i32;
                if self.bytes.len() < want && at >= 0 && (at as usize) < payload.len() {
                    let take = (payload.len() - at as usize).min(want - self.bytes.len());
                    self.bytes.extend_from_slice(&payload[at as usize..at as usize + take]);
                }
                match self.bytes.get(from..want).and_then(|h| h.try_into().ok()) {
                    Some(h) => h,
                    None => return Step::Pass,
                }
            } else {
                // Past a record body that was skipped: read from this segment alone.
                let at = self.next.wrapping_sub(seq) as i32;
                if at < 0 || at as usize >= payload.len() {
                    return Step::Pass;
                }
                match payload.get(at as usize..at as usize + 6).and_then(|h| h.try_into().ok()) {
                    Some(h) => h,
                    None => {
                        return Step::Evasion(
                            "a record header split across segments after a retry",
                        );
                    }
                }
            };
            match h[0] {
                0x16 if h[5] == 0x01 => return Step::SecondHello(self.next),
                0x14 if h == CCS => self.next = self.next.wrapping_add(6),
                0x14 => return Step::Evasion("a malformed change-cipher-spec after a ClientHello"),
                _ => {
                    // Early data, an alert, another handshake message: no hello follows,
                    // unless the server asks to retry (then its body is skipped).
                    let len = u16::from_be_bytes([h[3], h[4]]);
                    self.next = self.next.wrapping_add(5 + u32::from(len));
                    self.watching = false;
                }
            }
        }
        Step::Pass
    }

    /// A server segment from the outside: SYN or not, its acknowledgment (`ack`, if set) and
    /// its payload at `seq`.
    pub fn server(&mut self, syn: bool, ack: Option<u32>, seq: u32, payload: &[u8]) {
        if syn {
            self.server_first = Some(seq.wrapping_add(1));
            return;
        }
        if let Some(a) = ack
            && self.acked.is_none_or(|b| a.wrapping_sub(b) as i32 > 0)
        {
            self.acked = Some(a);
        }
        if self.server == Server::Waiting && !payload.is_empty() {
            // Its first bytes say what it answered; bytes from further on (its first segment
            // not seen first) are taken as an answer: a HelloRetryRequest is short and first.
            self.server = if Some(seq) == self.server_first && is_retry(payload) {
                Server::Retry
            } else {
                Server::Answered
            };
        }
        if self.server == Server::Retry && !self.watching {
            // The client's flight after a retry is read again from where it stands.
            self.watching = true;
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

    fn hello(n: usize) -> Vec<u8> {
        let mut body = vec![0x01, 0, 0, n as u8];
        body.extend(std::iter::repeat_n(9, n));
        record(0x16, &body)
    }

    fn server_hello(random: [u8; 32]) -> Vec<u8> {
        let mut body = vec![0x02, 0, 0, 70, 3, 3];
        body.extend_from_slice(&random);
        body.extend_from_slice(&[0; 38]);
        record(0x16, &body)
    }

    #[test]
    fn the_hello_span_covers_its_records() {
        let h = hello(4);
        assert_eq!(hello_span(&h), Some(h.len()));
        let mut two = h.clone();
        two.extend(record(0x17, &[1, 2]));
        assert_eq!(hello_span(&two), Some(h.len()));
        assert_eq!(hello_span(&h[..h.len() - 1]), None);
        // A handshake message over two records.
        let mut split = record(0x16, &[0x01, 0, 0, 6, 1, 2]);
        split.extend(record(0x16, &[3, 4, 5, 6]));
        assert_eq!(hello_span(&split), Some(split.len()));
        assert_eq!(hello_span(&record(0x17, &[1; 9])), None);
    }

    #[test]
    fn same_bytes_pass_different_bytes_are_evasion() {
        let h = hello(4);
        let mut g = Guard::new(1000, &h, Some(1));
        assert_eq!(g.client(1000, &h), Step::Pass);
        assert_eq!(g.client(1002, &h[2..6]), Step::Pass);
        let mut longer = vec![0xaa; 3];
        longer.extend_from_slice(&h);
        assert_eq!(g.client(997, &longer), Step::Pass);
        let mut other = h.clone();
        other[7] ^= 1;
        assert!(matches!(g.client(1000, &other), Step::Evasion(_)));
        assert!(matches!(g.client(1007, &other[7..]), Step::Evasion(_)));
    }

    #[test]
    fn done_once_acknowledged_answered_and_the_next_record_read() {
        let h = hello(1);
        let end = 5000 + h.len() as u32;
        let mut g = Guard::new(5000, &h, None);
        g.server(true, Some(5000), 899, &[]);
        g.server(false, Some(end - 1), 900, &[]);
        assert!(!g.done());
        g.server(false, Some(end), 900, &server_hello([7; 32]));
        assert!(!g.done(), "the record after the hello not read yet");
        assert_eq!(g.client(end, &record(0x17, &[0; 20])), Step::Pass);
        g.server(false, Some(end + 6), 1000, &[]);
        assert!(g.done());
        // The early-data header read became part of what is compared.
        let mut forged = record(0x17, &[0; 20]);
        forged[1] = 9;
        assert!(matches!(g.client(end, &forged), Step::Evasion(_)));
        // Sequence numbers wrap.
        let mut g = Guard::new(u32::MAX - 2, &h, Some(1));
        let e = (u32::MAX - 2).wrapping_add(h.len() as u32);
        assert_eq!(g.client(e, &record(0x15, &[2, 0])), Step::Pass);
        g.server(false, Some(e.wrapping_add(6)), 1, b"\x16");
        assert!(g.done());
    }

    #[test]
    fn a_hello_after_the_first_is_handed_back() {
        let h = hello(1);
        let base = 100u32;
        let end = base + h.len() as u32;
        // Right behind it, in the same flight.
        let mut g = Guard::new(base, &h, Some(7));
        let mut both = h.clone();
        both.extend(hello(2));
        assert_eq!(g.client(base, &both), Step::SecondHello(end));
        // After a retry, behind a change-cipher-spec record.
        let mut g = Guard::new(base, &h, Some(7));
        g.server(false, Some(end), 7, &server_hello(HRR_RANDOM));
        assert!(!g.done());
        let mut flight = CCS.to_vec();
        flight.extend(hello(2));
        assert_eq!(g.client(end, &flight), Step::SecondHello(end + 6));
        // A header cut in two is put together (and compared when sent again).
        let mut g = Guard::new(base, &h, Some(7));
        assert_eq!(g.client(end, &flight[..3]), Step::Pass);
        assert!(matches!(g.client(end, &[0x15, 3, 3]), Step::Evasion(_)));
        assert_eq!(g.client(end + 3, &flight[3..]), Step::SecondHello(end + 6));
        // A change-cipher-spec of another length hides what follows: refused.
        let mut g = Guard::new(base, &h, Some(7));
        assert!(matches!(g.client(end, &record(0x14, &[1, 1])), Step::Evasion(_)));
        // A decoy record that dies past the appliance cannot stand for the real one.
        let mut g = Guard::new(base, &h, Some(7));
        assert_eq!(g.client(end, &record(0x17, &[0; 8])), Step::Pass);
        assert!(matches!(g.client(end, &flight), Step::Evasion(_)));
    }
}
