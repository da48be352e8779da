//! One direction of a WebSocket connection, sans-IO: frames gathered into whole messages
//! (fragments in order, control frames let through between them), unmasked and inflated for
//! inspection, while the frames' original bytes are kept to be relayed unchanged.

use super::deflate::{InflateError, Inflater};
use super::frame::{self, FrameError, Side, op};

/// Why a direction's stream of frames is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WsError {
    /// A malformed frame.
    #[error("{0}")]
    Frame(#[from] FrameError),
    /// A continuation frame with no message begun, or a new message before the last ended.
    #[error("message fragments out of sequence")]
    Sequence,
    /// A compressed message that cannot be read.
    #[error("{0}")]
    Inflate(#[from] InflateError),
    /// A message longer than the limit.
    #[error("message larger than the limit")]
    TooLarge,
}

impl WsError {
    /// The close code this error ends the connection with.
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::TooLarge | WsError::Frame(FrameError::TooLarge) => 1009,
            WsError::Inflate(InflateError::TooLarge) => 1009,
            _ => 1002,
        }
    }
}

/// What the next frames gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A control frame (relayed at once, even between fragments).
    Control {
        /// Its opcode.
        opcode: u8,
        /// Its bytes as received.
        raw: Vec<u8>,
        /// Its payload, unmasked (a close frame's code and reason).
        payload: Vec<u8>,
    },
    /// A whole message.
    Message {
        /// Text or binary.
        opcode: u8,
        /// It was compressed (permessage-deflate).
        compressed: bool,
        /// Its frames' bytes as received.
        raw: Vec<u8>,
        /// Its payload: unmasked, joined, inflated.
        payload: Vec<u8>,
    },
}

/// One direction's message assembly.
#[derive(Debug)]
pub struct Assembler {
    side: Side,
    inflater: Option<Inflater>,
    max: usize,
    partial: Option<Partial>,
}

#[derive(Debug)]
struct Partial {
    opcode: u8,
    compressed: bool,
    raw: Vec<u8>,
    payload: Vec<u8>,
}

impl Assembler {
    /// Frames sent by `side`; `inflater` when permessage-deflate is in force; messages at most
    /// `max` bytes (compressed and inflated).
    pub fn new(side: Side, inflater: Option<Inflater>, max: usize) -> Self {
        Assembler { side, inflater, max, partial: None }
    }

    /// Takes the next event off the front of `buf`; `Ok(None)`: more bytes are needed.
    pub fn next(&mut self, buf: &mut Vec<u8>) -> Result<Option<Event>, WsError> {
        loop {
            let Some(h) = frame::parse(buf, self.side, self.inflater.is_some(), self.max)? else {
                return Ok(None);
            };
            let raw: Vec<u8> = buf.drain(..h.frame_len()).collect();
            let mut payload = raw[h.header_len..].to_vec();
            if let Some(k) = h.mask {
                frame::apply_mask(&mut payload, k, 0);
            }
            if h.is_control() {
                return Ok(Some(Event::Control { opcode: h.opcode, raw, payload }));
            }
            let p = match (&mut self.partial, h.opcode) {
                (None, op::CONTINUATION) | (Some(_), op::TEXT | op::BINARY) => {
                    return Err(WsError::Sequence);
                }
                (None, opcode) => self.partial.insert(Partial {
                    opcode,
                    compressed: h.rsv1,
                    raw: Vec::new(),
                    payload: Vec::new(),
                }),
                (Some(p), _) => p,
            };
            if p.payload.len() + payload.len() > self.max {
                return Err(WsError::TooLarge);
            }
            p.raw.extend_from_slice(&raw);
            p.payload.extend_from_slice(&payload);
            if !h.fin {
                continue;
            }
            let Some(p) = self.partial.take() else { return Err(WsError::Sequence) };
            let payload = match (&mut self.inflater, p.compressed) {
                (Some(inf), true) => inf.inflate(&p.payload, self.max)?,
                _ => p.payload,
            };
            return Ok(Some(Event::Message {
                opcode: p.opcode,
                compressed: p.compressed,
                raw: p.raw,
                payload,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::frame::write;

    fn frame_bytes(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = Vec::new();
        write(&mut out, opcode, false, payload, mask);
        if !fin {
            out[0] &= 0x7F;
        }
        out
    }

    #[test]
    fn fragments_are_joined_and_control_frames_pass_between_them() {
        let k = Some([9, 8, 7, 6]);
        let mut buf = frame_bytes(false, op::TEXT, b"{\"type\":", k);
        buf.extend(frame_bytes(true, op::PING, b"hi", k));
        buf.extend(frame_bytes(false, op::CONTINUATION, b"\"response.", k));
        buf.extend(frame_bytes(true, op::CONTINUATION, b"create\"}", k));
        let whole = buf.clone();
        let mut a = Assembler::new(Side::Client, None, 1 << 20);
        // Byte by byte: the same events as all at once.
        let mut fed = Vec::new();
        let mut events = Vec::new();
        for b in &whole {
            fed.push(*b);
            while let Some(e) = a.next(&mut fed).unwrap() {
                events.push(e);
            }
        }
        assert_eq!(events.len(), 2);
        assert!(
            matches!(&events[0], Event::Control { opcode: op::PING, payload, .. } if payload == b"hi")
        );
        match &events[1] {
            Event::Message { opcode, compressed, raw, payload } => {
                assert_eq!((*opcode, *compressed), (op::TEXT, false));
                assert_eq!(payload, br#"{"type":"response.create"}"#);
                assert_eq!(raw.len(), whole.len() - 8, "the original frame bytes, all three");
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn out_of_sequence_and_oversized_messages_are_refused() {
        let mut a = Assembler::new(Side::Server, None, 10);
        let mut buf = frame_bytes(true, op::CONTINUATION, b"x", None);
        assert_eq!(a.next(&mut buf), Err(WsError::Sequence));
        let mut a = Assembler::new(Side::Server, None, 10);
        let mut buf = frame_bytes(false, op::TEXT, b"x", None);
        buf.extend(frame_bytes(true, op::TEXT, b"y", None));
        assert_eq!(a.next(&mut buf), Err(WsError::Sequence));
        let mut a = Assembler::new(Side::Server, None, 10);
        let mut buf = frame_bytes(false, op::BINARY, b"123456", None);
        buf.extend(frame_bytes(true, op::CONTINUATION, b"789012", None));
        assert_eq!(a.next(&mut buf), Err(WsError::TooLarge));
        assert_eq!(WsError::TooLarge.close_code(), 1009);
    }
}
