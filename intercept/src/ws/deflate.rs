//! permessage-deflate (RFC 7692) as the engine sees it in passing: the parameters the server
//! accepted, and one inflater per direction that mirrors the receiver's (so a compressed
//! message is read exactly as its receiver will read it, context takeover included). The
//! engine never re-compresses: a message it rewrites goes uncompressed, which every receiver
//! accepts.

use flate2::{Decompress, FlushDecompress, Status};

/// The permessage-deflate parameters in force, from the server's 101.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deflate {
    /// Negotiated at all.
    pub enabled: bool,
    /// The client resets its compressor after each message.
    pub client_no_context_takeover: bool,
    /// The server resets its compressor after each message.
    pub server_no_context_takeover: bool,
}

impl Deflate {
    /// The parameters of a `Sec-WebSocket-Extensions` response header (`None`: no
    /// extension; an extension other than permessage-deflate is refused, since its frames
    /// could not be read).
    pub fn from_response(header: Option<&[u8]>) -> Result<Deflate, &'static str> {
        let Some(h) = header else { return Ok(Deflate::default()) };
        let text = std::str::from_utf8(h).map_err(|_| "extension header is not text")?;
        let mut d = Deflate::default();
        for ext in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let mut params = ext.split(';').map(str::trim);
            if params.next() != Some("permessage-deflate") || d.enabled {
                return Err("a WebSocket extension the engine cannot read");
            }
            d.enabled = true;
            for p in params {
                let name = p.split('=').next().unwrap_or("").trim();
                match name {
                    "client_no_context_takeover" => d.client_no_context_takeover = true,
                    "server_no_context_takeover" => d.server_no_context_takeover = true,
                    "client_max_window_bits" | "server_max_window_bits" => {}
                    _ => return Err("an unknown permessage-deflate parameter"),
                }
            }
        }
        Ok(d)
    }
}

/// Why a compressed message could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InflateError {
    /// Not a valid deflate stream.
    #[error("corrupt compressed message")]
    Corrupt,
    /// Larger than the limit once inflated.
    #[error("message larger than the limit once decompressed")]
    TooLarge,
}

/// Inflates one direction's messages.
pub struct Inflater {
    z: Decompress,
    reset_each: bool,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater").field("reset_each", &self.reset_each).finish_non_exhaustive()
    }
}

impl Inflater {
    /// An inflater; `no_context_takeover`: the sender starts each message afresh.
    pub fn new(no_context_takeover: bool) -> Self {
        Inflater { z: Decompress::new(false), reset_each: no_context_takeover }
    }

    /// The payload of one compressed message, inflated (at most `max` bytes).
    pub fn inflate(&mut self, payload: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
        if self.reset_each {
            self.z.reset(false);
        }
        // The sender cut the sync flush's empty block off the message (RFC 7692 §7.2.1).
        let mut input = Vec::with_capacity(payload.len() + 4);
        input.extend_from_slice(payload);
        input.extend_from_slice(&[0x00, 0x00, 0xff, 0xff]);
        let mut out = Vec::with_capacity((payload.len() * 4).clamp(64, max.max(64)));
        let mut at = 0;
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.len().max(64));
            }
            let (before_in, before_out) = (self.z.total_in(), self.z.total_out());
            let status = self
                .z
                .decompress_vec(&input[at..], &mut out, FlushDecompress::Sync)
                .map_err(|_| InflateError::Corrupt)?;
            at += usize::try_from(self.z.total_in() - before_in).unwrap_or(usize::MAX);
            if out.len() > max {
                return Err(InflateError::TooLarge);
            }
            if status == Status::StreamEnd {
                // A final block (BFINAL, RFC 7692 §7.2.3.1) ends the sender's stream: the
                // next message starts a new one. What followed it here is the trailer we
                // appended.
                self.z.reset(false);
                return Ok(out);
            }
            let progressed = self.z.total_in() != before_in || self.z.total_out() != before_out;
            // Done when every byte went in and the output had room left (nothing pending).
            if at >= input.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            if !progressed && out.len() < out.capacity() {
                return Err(InflateError::Corrupt);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    /// Compresses as a permessage-deflate sender does: sync flush, trailing 4 bytes cut.
    fn deflate(z: &mut Compress, msg: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(msg.len() + 64);
        z.compress_vec(msg, &mut out, FlushCompress::Sync).unwrap();
        assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
        out.truncate(out.len() - 4);
        out
    }

    #[test]
    fn parameters() {
        assert_eq!(Deflate::from_response(None), Ok(Deflate::default()));
        let d = Deflate::from_response(Some(
            b"permessage-deflate; client_no_context_takeover; server_max_window_bits=10",
        ))
        .unwrap();
        assert!(d.enabled && d.client_no_context_takeover && !d.server_no_context_takeover);
        assert!(Deflate::from_response(Some(b"x-webkit-deflate-frame")).is_err());
        assert!(Deflate::from_response(Some(b"permessage-deflate; foo=1")).is_err());
    }

    #[test]
    fn context_takeover_is_followed_and_bombs_are_bounded() {
        let mut z = Compress::new(Compression::default(), false);
        let mut inf = Inflater::new(false);
        let a = br#"{"type":"response.create","response":{"instructions":"hello"}}"#;
        // The second message refers back into the first: only a mirrored context reads it.
        for _ in 0..3 {
            let c = deflate(&mut z, a);
            assert_eq!(inf.inflate(&c, 1 << 20).unwrap(), a);
        }
        let mut fresh = Inflater::new(false);
        let later = deflate(&mut z, a);
        assert_ne!(fresh.inflate(&later, 1 << 20).ok().as_deref(), Some(&a[..]));
        // Without context takeover each message stands alone.
        let mut inf = Inflater::new(true);
        for _ in 0..2 {
            let mut z = Compress::new(Compression::default(), false);
            assert_eq!(inf.inflate(&deflate(&mut z, a), 1 << 20).unwrap(), a);
        }
        let zeros = vec![0u8; 4 << 20];
        let mut z = Compress::new(Compression::best(), false);
        let bomb = deflate(&mut z, &zeros);
        assert!(bomb.len() < 10_000);
        assert_eq!(Inflater::new(true).inflate(&bomb, 1 << 20), Err(InflateError::TooLarge));
        assert_eq!(Inflater::new(true).inflate(b"\xff\xff\xff", 100), Err(InflateError::Corrupt));
    }

    #[test]
    fn a_final_block_ends_the_message_and_the_next_starts_afresh() {
        let mut inf = Inflater::new(false);
        for msg in [&b"first message"[..], b"second message"] {
            // Each message compressed as a whole stream (BFINAL set), as some senders do.
            let mut z = Compress::new(Compression::default(), false);
            let mut out = Vec::with_capacity(64);
            z.compress_vec(msg, &mut out, FlushCompress::Finish).unwrap();
            assert_eq!(inf.inflate(&out, 1 << 10).unwrap(), msg);
        }
    }
}
