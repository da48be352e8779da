//! Sans-IO reading of QUIC client Initial packets (RFC 9000, 9001, 9369): find the long
//! header, derive the Initial keys from the Destination Connection ID (through rustls), remove
//! header protection, decrypt, and collect the CRYPTO frames that carry the ClientHello.
//!
//! Bounded and panic-free on any input: a datagram is at most 64 KiB, CRYPTO data is placed in
//! the same 16 KiB window as TCP reassembly.

use rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
use rustls::quic::Version;

/// Why an Initial could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QuicError {
    /// Not a long-header Initial of a version we know (short header, other packet type, …).
    #[error("not a QUIC v1/v2 Initial packet")]
    NotInitial,
    /// The header is truncated or inconsistent.
    #[error("malformed QUIC header")]
    Malformed,
    /// Authentication failed: not encrypted with the Initial keys of its DCID.
    #[error("QUIC Initial did not decrypt")]
    Decrypt,
    /// The decrypted payload holds a frame not allowed or not parsable in an Initial.
    #[error("malformed frames in a QUIC Initial")]
    Frames,
}

/// One CRYPTO frame: offset in the CRYPTO stream and its bytes (inside the decrypted buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CryptoChunk {
    /// Offset in the Initial CRYPTO stream.
    pub offset: u64,
    /// Start of the data in the decrypted payload.
    pub start: usize,
    /// End of the data in the decrypted payload.
    pub end: usize,
}

/// A decrypted client Initial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Initial {
    /// QUIC version.
    pub version: u32,
    /// Destination Connection ID.
    pub dcid: Vec<u8>,
    /// Decrypted payload (frames).
    pub payload: Vec<u8>,
    /// CRYPTO frames found in `payload` (at most 64).
    pub crypto: Vec<CryptoChunk>,
}

const V1: u32 = 0x0000_0001;
const V2: u32 = 0x6b33_43cf;

fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let first = *buf.get(*pos)?;
    let len = 1usize << (first >> 6);
    let bytes = buf.get(*pos..*pos + len)?;
    let mut v = u64::from(first & 0x3f);
    for b in &bytes[1..] {
        v = (v << 8) | u64::from(*b);
    }
    *pos += len;
    Some(v)
}

/// Reads the first packet of `datagram` as a client Initial and decrypts it.
pub fn read_initial(datagram: &[u8]) -> Result<Initial, QuicError> {
    let first = *datagram.first().ok_or(QuicError::NotInitial)?;
    if first & 0x80 == 0 {
        return Err(QuicError::NotInitial);
    }
    let version = u32::from_be_bytes(
        datagram
            .get(1..5)
            .ok_or(QuicError::Malformed)?
            .try_into()
            .map_err(|_| QuicError::Malformed)?,
    );
    let (qv, initial_type) = match version {
        V1 => (Version::V1, 0u8),
        V2 => (Version::V2, 1u8),
        _ => return Err(QuicError::NotInitial),
    };
    if (first >> 4) & 0x03 != initial_type {
        return Err(QuicError::NotInitial);
    }
    let mut pos = 5usize;
    let dcid_len = usize::from(*datagram.get(pos).ok_or(QuicError::Malformed)?);
    if dcid_len > 20 {
        return Err(QuicError::Malformed);
    }
    let dcid = datagram.get(pos + 1..pos + 1 + dcid_len).ok_or(QuicError::Malformed)?;
    pos += 1 + dcid_len;
    let scid_len = usize::from(*datagram.get(pos).ok_or(QuicError::Malformed)?);
    if scid_len > 20 {
        return Err(QuicError::Malformed);
    }
    pos += 1 + scid_len;
    let token_len = varint(datagram, &mut pos).ok_or(QuicError::Malformed)?;
    pos = pos
        .checked_add(usize::try_from(token_len).map_err(|_| QuicError::Malformed)?)
        .ok_or(QuicError::Malformed)?;
    let length = usize::try_from(varint(datagram, &mut pos).ok_or(QuicError::Malformed)?)
        .map_err(|_| QuicError::Malformed)?;
    let pn_offset = pos;
    let end = pn_offset.checked_add(length).ok_or(QuicError::Malformed)?;
    if end > datagram.len() || length < 20 {
        return Err(QuicError::Malformed);
    }
    let qsuite =
        TLS13_AES_128_GCM_SHA256.tls13().and_then(|s| s.quic_suite()).ok_or(QuicError::Decrypt)?;
    let keys = qsuite.keys(dcid, rustls::Side::Server, qv);
    let mut packet = datagram[..end].to_vec();
    let sample_at = pn_offset + 4;
    let sample_len = keys.remote.header.sample_len();
    let sample: Vec<u8> =
        packet.get(sample_at..sample_at + sample_len).ok_or(QuicError::Malformed)?.to_vec();
    let (head, rest) = packet.split_at_mut(pn_offset);
    let pn_field = rest.get_mut(..4).ok_or(QuicError::Malformed)?;
    keys.remote
        .header
        .decrypt_in_place(&sample, &mut head[0], pn_field)
        .map_err(|_| QuicError::Decrypt)?;
    let pn_len = usize::from(head[0] & 0x03) + 1;
    let mut pn = 0u64;
    for b in &rest[..pn_len] {
        pn = (pn << 8) | u64::from(*b);
    }
    let header_len = pn_offset + pn_len;
    let (header, body) = packet.split_at_mut(header_len);
    let plain_len = keys
        .remote
        .packet
        .decrypt_in_place(pn, header, body)
        .map_err(|_| QuicError::Decrypt)?
        .len();
    let payload = body[..plain_len].to_vec();
    let crypto = crypto_frames(&payload)?;
    Ok(Initial { version, dcid: dcid.to_vec(), payload, crypto })
}

/// Walks the frames of an Initial payload and returns its CRYPTO frames.
fn crypto_frames(p: &[u8]) -> Result<Vec<CryptoChunk>, QuicError> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < p.len() {
        let ty = varint(p, &mut pos).ok_or(QuicError::Frames)?;
        match ty {
            0x00 | 0x01 => {} // PADDING, PING
            0x02 | 0x03 => {
                // ACK: largest, delay, range count, first range, ranges, [ECN counts]
                let mut n = [0u64; 4];
                for v in &mut n {
                    *v = varint(p, &mut pos).ok_or(QuicError::Frames)?;
                }
                if n[2] > 256 {
                    return Err(QuicError::Frames);
                }
                for _ in 0..n[2] * 2 {
                    varint(p, &mut pos).ok_or(QuicError::Frames)?;
                }
                if ty == 0x03 {
                    for _ in 0..3 {
                        varint(p, &mut pos).ok_or(QuicError::Frames)?;
                    }
                }
            }
            0x06 => {
                let offset = varint(p, &mut pos).ok_or(QuicError::Frames)?;
                let len = usize::try_from(varint(p, &mut pos).ok_or(QuicError::Frames)?)
                    .map_err(|_| QuicError::Frames)?;
                let end =
                    pos.checked_add(len).filter(|e| *e <= p.len()).ok_or(QuicError::Frames)?;
                if out.len() >= 64 {
                    return Err(QuicError::Frames);
                }
                out.push(CryptoChunk { offset, start: pos, end });
                pos = end;
            }
            0x1c | 0x1d => {
                varint(p, &mut pos).ok_or(QuicError::Frames)?;
                if ty == 0x1c {
                    varint(p, &mut pos).ok_or(QuicError::Frames)?;
                }
                let len = usize::try_from(varint(p, &mut pos).ok_or(QuicError::Frames)?)
                    .map_err(|_| QuicError::Frames)?;
                pos = pos.checked_add(len).filter(|e| *e <= p.len()).ok_or(QuicError::Frames)?;
            }
            _ => return Err(QuicError::Frames),
        }
    }
    Ok(out)
}

/// The ClientHello handshake body, once the CRYPTO stream bytes from offset 0 hold it whole.
/// `Ok(None)`: more CRYPTO data needed.
pub fn hello_body(stream: &[u8]) -> Result<Option<&[u8]>, &'static str> {
    if stream.len() < 4 {
        return Ok(None);
    }
    if stream[0] != 1 {
        return Err("first QUIC handshake message is not a ClientHello");
    }
    let n = (usize::from(stream[1]) << 16) | (usize::from(stream[2]) << 8) | usize::from(stream[3]);
    if n + 4 > crate::wire::tls::MAX_HELLO {
        return Err("QUIC ClientHello larger than 16 KiB");
    }
    Ok(stream.get(4..4 + n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tls::parse_hello_body;

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn rfc9001_client_initial() {
        let pkt = unhex(include_str!("../../testdata/quic/rfc9001-a2-client-initial.hex"));
        assert_eq!(pkt.len(), 1200);
        let init = read_initial(&pkt).unwrap();
        assert_eq!(init.dcid, unhex("8394c8f03e515708"));
        assert_eq!(init.crypto.len(), 1);
        let c = init.crypto[0];
        assert_eq!(c.offset, 0);
        let body = hello_body(&init.payload[c.start..c.end]).unwrap().unwrap();
        let h = parse_hello_body(body, true).unwrap();
        assert_eq!(h.sni(), Some("example.com"));
        assert!(h.ja4().starts_with("q13d"), "{}", h.ja4());
        // Any flipped byte in the protected payload fails authentication, never panics.
        for i in (30..pkt.len()).step_by(97) {
            let mut bad = pkt.clone();
            bad[i] ^= 0x01;
            assert!(read_initial(&bad).is_err());
        }
        for cut in 0..pkt.len() {
            let _ = read_initial(&pkt[..cut]);
        }
    }

    #[test]
    fn not_initial() {
        assert_eq!(read_initial(&[]), Err(QuicError::NotInitial));
        assert_eq!(read_initial(&[0x40, 1, 2, 3]), Err(QuicError::NotInitial));
        assert_eq!(read_initial(&[0xc0, 0, 0, 0, 2, 0]), Err(QuicError::NotInitial));
        assert_eq!(read_initial(&[0xe0, 0, 0, 0, 1, 0, 0, 0, 0]), Err(QuicError::NotInitial));
        assert_eq!(read_initial(&[0xc0, 0, 0, 0, 1, 21]), Err(QuicError::Malformed));
    }
}
