//! Incremental, sans-IO decoder of the chunked transfer coding (RFC 9112 §7.1). Strict where
//! smuggling lives: chunk sizes are 1-16 hex digits, lines end in CRLF, extensions and
//! trailers are bounded. Feed it any split of the bytes; it yields the data.

/// Longest chunk-size line (size, extensions) or trailer line accepted.
pub const MAX_LINE: usize = 4096;
/// Most trailer bytes accepted.
pub const MAX_TRAILERS: usize = 16 * 1024;

/// Why a chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkError {
    /// The chunk size is not 1-16 hex digits.
    #[error("bad chunk size")]
    BadSize,
    /// A line does not end in CRLF where it must.
    #[error("bad line ending in chunked body")]
    BadLineEnding,
    /// A size line, extension or trailer section is too long.
    #[error("chunked framing too long")]
    TooLong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data(u64),
    DataCr,
    DataLf,
    Trailer,
    Done,
}

/// The decoder.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    line: Vec<u8>,
    trailer_bytes: usize,
    /// Total decoded data bytes.
    pub decoded: u64,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder { state: State::Size, line: Vec::new(), trailer_bytes: 0, decoded: 0 }
    }
}

/// What one call to [`ChunkedDecoder::feed`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Input bytes consumed (the rest belongs to the next message once `done`).
    pub consumed: usize,
    /// The body (with its trailers) is complete.
    pub done: bool,
}

impl ChunkedDecoder {
    /// A decoder at the start of a body.
    pub fn new() -> Self {
        Self::default()
    }

    /// True once the last chunk and the trailers were read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from `input`, appending data to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Progress, ChunkError> {
        let mut i = 0;
        while i < input.len() && self.state != State::Done {
            match self.state {
                State::Size | State::Trailer => {
                    let b = input[i];
                    i += 1;
                    self.line.push(b);
                    if self.line.len() > MAX_LINE {
                        return Err(ChunkError::TooLong);
                    }
                    if b != b'\n' {
                        continue;
                    }
                    if self.line.len() < 2 || self.line[self.line.len() - 2] != b'\r' {
                        return Err(ChunkError::BadLineEnding);
                    }
                    let line = std::mem::take(&mut self.line);
                    let content = &line[..line.len() - 2];
                    if self.state == State::Size {
                        let size_part = content.split(|c| *c == b';').next().unwrap_or_default();
                        if size_part.is_empty()
                            || size_part.len() > 16
                            || !size_part.iter().all(u8::is_ascii_hexdigit)
                        {
                            return Err(ChunkError::BadSize);
                        }
                        let size = size_part.iter().fold(0u64, |acc, d| {
                            (acc << 4) | u64::from(char::from(*d).to_digit(16).unwrap_or(0))
                        });
                        self.state = if size == 0 { State::Trailer } else { State::Data(size) };
                    } else if content.is_empty() {
                        self.state = State::Done;
                    } else {
                        self.trailer_bytes += line.len();
                        if self.trailer_bytes > MAX_TRAILERS {
                            return Err(ChunkError::TooLong);
                        }
                    }
                }
                State::Data(left) => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(input.len() - i);
                    out.extend_from_slice(&input[i..i + n]);
                    self.decoded += n as u64;
                    i += n;
                    let left = left - n as u64;
                    self.state = if left == 0 { State::DataCr } else { State::Data(left) };
                }
                State::DataCr => {
                    if input[i] != b'\r' {
                        return Err(ChunkError::BadLineEnding);
                    }
                    i += 1;
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if input[i] != b'\n' {
                        return Err(ChunkError::BadLineEnding);
                    }
                    i += 1;
                    self.state = State::Size;
                }
                State::Done => {}
            }
        }
        Ok(Progress { consumed: i, done: self.state == State::Done })
    }
}

/// Encodes `data` as one chunk (empty data: nothing), for re-serialising a body.
pub fn encode_chunk(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk with no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\nNEXT";

    #[test]
    fn every_split_gives_the_same_result() {
        for cut in 0..BODY.len() {
            let mut d = ChunkedDecoder::new();
            let mut out = Vec::new();
            let a = d.feed(&BODY[..cut], &mut out).unwrap();
            assert_eq!(a.consumed, cut.min(BODY.len() - 4), "prefix {cut}");
            let b = d.feed(&BODY[a.consumed..], &mut out).unwrap();
            assert!(b.done, "cut {cut}");
            assert_eq!(a.consumed + b.consumed, BODY.len() - 4);
            assert_eq!(out, b"hello, world");
        }
        // One byte at a time.
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        for b in &BODY[..BODY.len() - 4] {
            d.feed(std::slice::from_ref(b), &mut out).unwrap();
        }
        assert!(d.is_done());
        assert_eq!(d.decoded, 12);
    }

    #[test]
    fn bad_bodies() {
        for (body, err) in [
            (&b"g\r\n"[..], ChunkError::BadSize),
            (b"\r\n", ChunkError::BadSize),
            (b"-1\r\n", ChunkError::BadSize),
            (b" 5\r\n", ChunkError::BadSize),
            (b"11111111111111111\r\n", ChunkError::BadSize),
            (b"5\nhello", ChunkError::BadLineEnding),
            (b"5\r\nhelloX\r\n", ChunkError::BadLineEnding),
            (b"5\r\nhello\rX", ChunkError::BadLineEnding),
        ] {
            let mut d = ChunkedDecoder::new();
            assert_eq!(
                d.feed(body, &mut Vec::new()),
                Err(err),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        let mut long = b"5;".to_vec();
        long.resize(MAX_LINE + 10, b'a');
        assert_eq!(ChunkedDecoder::new().feed(&long, &mut Vec::new()), Err(ChunkError::TooLong));
    }

    #[test]
    fn encode_round_trips() {
        let mut enc = Vec::new();
        encode_chunk(b"redacted body", &mut enc);
        encode_chunk(b"", &mut enc);
        enc.extend_from_slice(LAST_CHUNK);
        let mut out = Vec::new();
        assert!(ChunkedDecoder::new().feed(&enc, &mut out).unwrap().done);
        assert_eq!(out, b"redacted body");
    }
}
