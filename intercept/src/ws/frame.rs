//! WebSocket frames (RFC 6455 §5), sans-IO: a checked reader that splits a byte stream into
//! frames without copying them, and a writer for the frames the engine makes itself. Bounded:
//! a frame longer than the caller's limit is an error before any of it is buffered.

/// Opcodes.
pub mod op {
    /// Continuation of a fragmented message.
    pub const CONTINUATION: u8 = 0x0;
    /// Text message.
    pub const TEXT: u8 = 0x1;
    /// Binary message.
    pub const BINARY: u8 = 0x2;
    /// Close.
    pub const CLOSE: u8 = 0x8;
    /// Ping.
    pub const PING: u8 = 0x9;
    /// Pong.
    pub const PONG: u8 = 0xA;
}

/// Why a stream of frames is refused (the connection is closed with 1002 or 1009).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A reserved bit set that no extension negotiated, or RSV1 on a control frame.
    #[error("reserved bits set")]
    Reserved,
    /// An opcode RFC 6455 reserves.
    #[error("reserved opcode {0:#x}")]
    Opcode(u8),
    /// A control frame fragmented or longer than 125 bytes.
    #[error("malformed control frame")]
    Control,
    /// A client frame without a mask, or a server frame with one.
    #[error("frame masking does not match its direction")]
    Masking,
    /// A 64-bit length with its top bit set, or a length not in its shortest form.
    #[error("malformed frame length")]
    Length,
    /// Longer than the limit.
    #[error("frame larger than the limit")]
    TooLarge,
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Final fragment.
    pub fin: bool,
    /// RSV1 (permessage-deflate: the message is compressed).
    pub rsv1: bool,
    /// Opcode.
    pub opcode: u8,
    /// Masking key, for client frames.
    pub mask: Option<[u8; 4]>,
    /// Payload length.
    pub len: usize,
    /// Header length in bytes.
    pub header_len: usize,
}

impl Header {
    /// True for close, ping and pong.
    pub fn is_control(&self) -> bool {
        self.opcode >= 0x8
    }

    /// Header and payload length.
    pub fn frame_len(&self) -> usize {
        self.header_len + self.len
    }
}

/// Which side sent the frames: clients mask, servers do not (RFC 6455 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Client to server.
    Client,
    /// Server to client.
    Server,
}

/// Reads the header of the frame at the start of `buf`. `Ok(None)`: more bytes are needed
/// (for the header, or for the payload: a header is returned only with its whole frame).
/// `rsv1_allowed`: permessage-deflate was negotiated. `max`: the largest payload accepted.
pub fn parse(
    buf: &[u8],
    side: Side,
    rsv1_allowed: bool,
    max: usize,
) -> Result<Option<Header>, FrameError> {
    let [b0, b1, rest @ ..] = buf else { return Ok(None) };
    let fin = b0 & 0x80 != 0;
    let rsv1 = b0 & 0x40 != 0;
    if b0 & 0x30 != 0 {
        return Err(FrameError::Reserved);
    }
    let opcode = b0 & 0x0F;
    if !matches!(opcode, 0x0..=0x2 | 0x8..=0xA) {
        return Err(FrameError::Opcode(opcode));
    }
    let control = opcode >= 0x8;
    if rsv1 && (!rsv1_allowed || control || opcode == op::CONTINUATION) {
        return Err(FrameError::Reserved);
    }
    let masked = b1 & 0x80 != 0;
    if masked != (side == Side::Client) {
        return Err(FrameError::Masking);
    }
    let short = usize::from(b1 & 0x7F);
    let (len, mut at) = match short {
        126 => {
            let [a, b, ..] = rest else { return Ok(None) };
            let n = usize::from(u16::from_be_bytes([*a, *b]));
            if n < 126 {
                return Err(FrameError::Length);
            }
            (n, 4)
        }
        127 => {
            let Some(b) = rest.get(..8) else { return Ok(None) };
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            let n = u64::from_be_bytes(a);
            if n >> 63 != 0 || n <= 0xFFFF {
                return Err(FrameError::Length);
            }
            (usize::try_from(n).map_err(|_| FrameError::TooLarge)?, 10)
        }
        n => (n, 2),
    };
    if control && (!fin || len > 125) {
        return Err(FrameError::Control);
    }
    if len > max {
        return Err(FrameError::TooLarge);
    }
    let mask = if masked {
        let Some(k) = buf.get(at..at + 4) else { return Ok(None) };
        at += 4;
        Some([k[0], k[1], k[2], k[3]])
    } else {
        None
    };
    if buf.len() < at + len {
        return Ok(None);
    }
    Ok(Some(Header { fin, rsv1, opcode, mask, len, header_len: at }))
}

/// XORs `data` with `key`, as masking and unmasking both do; `offset` is the payload position
/// of `data[0]`.
pub fn apply_mask(data: &mut [u8], key: [u8; 4], offset: usize) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= key[(offset + i) & 3];
    }
}

/// Writes one whole frame: FIN set, `rsv1` as given, masked with `mask` when it is a client
/// frame.
pub fn write(out: &mut Vec<u8>, opcode: u8, rsv1: bool, payload: &[u8], mask: Option<[u8; 4]>) {
    out.push(0x80 | if rsv1 { 0x40 } else { 0 } | opcode);
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n <= 0xFFFF => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            out.extend_from_slice(&k);
            let start = out.len();
            out.extend_from_slice(payload);
            apply_mask(&mut out[start..], k, 0);
        }
        None => out.extend_from_slice(payload),
    }
}

/// A close frame's payload: the code and a reason cut to fit 123 bytes on a character
/// boundary.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(&reason.as_bytes()[..cut]);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_frames_parse_back_at_every_length_form() {
        for n in [0usize, 5, 125, 126, 65535, 65536] {
            let payload = vec![b'a'; n];
            for (side, mask) in [(Side::Client, Some([1, 2, 3, 4])), (Side::Server, None)] {
                let mut out = Vec::new();
                write(&mut out, op::TEXT, false, &payload, mask);
                for cut in [0, 1, out.len().min(3), out.len() - 1] {
                    if cut < out.len() {
                        assert_eq!(parse(&out[..cut], side, false, 1 << 20), Ok(None), "{n} {cut}");
                    }
                }
                let h = parse(&out, side, false, 1 << 20).unwrap().unwrap();
                assert_eq!(
                    (h.fin, h.opcode, h.len, h.mask, h.frame_len()),
                    (true, 1, n, mask, out.len())
                );
                let mut p = out[h.header_len..].to_vec();
                if let Some(k) = h.mask {
                    apply_mask(&mut p, k, 0);
                }
                assert_eq!(p, payload);
            }
        }
    }

    #[test]
    fn hostile_frames_are_refused() {
        let p = |b: &[u8], side| parse(b, side, false, 1024);
        assert_eq!(p(&[0x81, 0x05], Side::Client), Err(FrameError::Masking), "client unmasked");
        assert_eq!(p(&[0x81, 0x85], Side::Server), Err(FrameError::Masking), "server masked");
        assert_eq!(
            p(&[0xC1, 0x00], Side::Server),
            Err(FrameError::Reserved),
            "RSV1 not negotiated"
        );
        assert_eq!(p(&[0xA1, 0x00], Side::Server), Err(FrameError::Reserved), "RSV2");
        assert_eq!(p(&[0x83, 0x00], Side::Server), Err(FrameError::Opcode(3)));
        assert_eq!(p(&[0x09, 0x00], Side::Server), Err(FrameError::Control), "fragmented ping");
        assert_eq!(p(&[0x89, 126, 0, 200], Side::Server), Err(FrameError::Control));
        assert_eq!(p(&[0x82, 126, 0, 5], Side::Server), Err(FrameError::Length), "not shortest");
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&(1u64 << 63).to_be_bytes());
        assert_eq!(p(&huge, Side::Server), Err(FrameError::Length));
        let mut big = vec![0x82, 127];
        big.extend_from_slice(&(1u64 << 40).to_be_bytes());
        assert_eq!(p(&big, Side::Server), Err(FrameError::TooLarge), "before any is buffered");
        assert!(parse(&[0xC1, 0x00], Side::Server, true, 10).unwrap().unwrap().rsv1);
        assert_eq!(parse(&[0xC9, 0x00], Side::Server, true, 10), Err(FrameError::Reserved));
        assert_eq!(parse(&[0x40, 0x00], Side::Server, true, 10), Err(FrameError::Reserved));
    }

    #[test]
    fn close_reasons_fit_and_stay_utf8() {
        let p = close_payload(1008, &"é".repeat(100));
        assert!(p.len() <= 125);
        assert_eq!(u16::from_be_bytes([p[0], p[1]]), 1008);
        assert!(std::str::from_utf8(&p[2..]).is_ok());
    }
}
