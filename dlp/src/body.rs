//! Request bodies before extraction: Content-Encoding decoding (gzip, deflate, br, zstd),
//! bounded so a small compressed body cannot expand past the inspection limit, and
//! multipart/form-data split into parts. Pure.

use std::io::Read;

/// Why a body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// An encoding this engine does not decode.
    #[error("unsupported content encoding `{0}`")]
    Unsupported(String),
    /// The stream is corrupt.
    #[error("corrupt {0} body")]
    Corrupt(&'static str),
    /// Decoded, it would exceed the limit.
    #[error("decoded body over the inspection limit")]
    TooLarge,
}

fn read_bounded(
    mut r: impl Read,
    limit: usize,
    what: &'static str,
) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    (&mut r).take(cap).read_to_end(&mut out).map_err(|_| DecodeError::Corrupt(what))?;
    if out.len() > limit {
        return Err(DecodeError::TooLarge);
    }
    Ok(out)
}

/// Decodes `body` per its Content-Encoding header value (codings applied in order, so undone
/// in reverse), producing at most `limit` bytes.
pub fn decode(encoding: &[u8], body: &[u8], limit: usize) -> Result<Vec<u8>, DecodeError> {
    let text = String::from_utf8_lossy(encoding).to_ascii_lowercase();
    let codings: Vec<&str> = text.split(',').map(str::trim).filter(|c| !c.is_empty()).collect();
    let mut data = body.to_vec();
    for c in codings.iter().rev() {
        data = match *c {
            "identity" => data,
            "gzip" | "x-gzip" => {
                read_bounded(flate2::read::MultiGzDecoder::new(&data[..]), limit, "gzip")?
            }
            "deflate" => {
                // HTTP's deflate is zlib-wrapped; some senders use raw deflate.
                match read_bounded(flate2::read::ZlibDecoder::new(&data[..]), limit, "deflate") {
                    Ok(d) => d,
                    Err(DecodeError::TooLarge) => return Err(DecodeError::TooLarge),
                    Err(_) => read_bounded(
                        flate2::read::DeflateDecoder::new(&data[..]),
                        limit,
                        "deflate",
                    )?,
                }
            }
            "br" => {
                read_bounded(brotli_decompressor::Decompressor::new(&data[..], 4096), limit, "br")?
            }
            "zstd" => {
                let mut src = &data[..];
                let dec = ruzstd::decoding::StreamingDecoder::new(&mut src)
                    .map_err(|_| DecodeError::Corrupt("zstd"))?;
                read_bounded(dec, limit, "zstd")?
            }
            other => return Err(DecodeError::Unsupported(other.to_owned())),
        };
    }
    Ok(data)
}

/// One part of a multipart/form-data body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part<'a> {
    /// The part's header block (without the blank line).
    pub head: &'a [u8],
    /// `name` of its Content-Disposition.
    pub name: String,
    /// `filename`, if a file.
    pub filename: Option<String>,
    /// Its Content-Type, lowercase.
    pub content_type: Option<String>,
    /// The content.
    pub data: &'a [u8],
}

/// The boundary of a multipart Content-Type, if it is one.
pub fn boundary(content_type: &[u8]) -> Option<String> {
    let ct = String::from_utf8_lossy(content_type);
    if !ct.to_ascii_lowercase().trim_start().starts_with("multipart/") {
        return None;
    }
    ct.split(';')
        .map(str::trim)
        .find_map(|p| {
            let (k, v) = p.split_once('=')?;
            k.trim().eq_ignore_ascii_case("boundary").then(|| v.trim().trim_matches('"').to_owned())
        })
        .filter(|b| !b.is_empty() && b.len() <= 200)
}

fn param(line: &str, key: &str) -> Option<String> {
    line.split(';').map(str::trim).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case(key).then(|| v.trim().trim_matches('"').to_owned())
    })
}

/// Splits a multipart body; `None` when it is not well formed.
pub fn split_multipart<'a>(body: &'a [u8], boundary: &str) -> Option<Vec<Part<'a>>> {
    let delim = format!("--{boundary}");
    let d = delim.as_bytes();
    let mut parts = Vec::new();
    let mut at = find(body, d)? + d.len();
    loop {
        if body.get(at..at + 2) == Some(b"--") {
            return Some(parts);
        }
        at += crlf_len(&body[at..])?;
        let head_end = find(&body[at..], b"\r\n\r\n")? + at;
        let head = &body[at..head_end];
        let data_start = head_end + 4;
        let next = find(&body[data_start..], &[b"\r\n", d].concat())? + data_start;
        let data = &body[data_start..next];
        let head_text = String::from_utf8_lossy(head);
        let mut name = String::new();
        let mut filename = None;
        let mut content_type = None;
        for line in head_text.split("\r\n") {
            let lower = line.to_ascii_lowercase();
            if lower.starts_with("content-disposition:") {
                name = param(line, "name").unwrap_or_default();
                filename = param(line, "filename");
            } else if let Some(v) = lower.strip_prefix("content-type:") {
                content_type = Some(v.trim().to_owned());
            }
        }
        parts.push(Part { head, name, filename, content_type, data });
        at = next + 2 + d.len();
        if parts.len() > 1000 {
            return None;
        }
    }
}

fn crlf_len(b: &[u8]) -> Option<usize> {
    b.starts_with(b"\r\n").then_some(2)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn decodes_gzip_deflate_and_bounds() {
        let text = b"hello hello hello hello".repeat(100);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&text).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(decode(b"gzip", &gz, 1 << 20).unwrap(), text);
        assert_eq!(decode(b"gzip", &gz, 100), Err(DecodeError::TooLarge));
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&text).unwrap();
        assert_eq!(decode(b"deflate", &z.finish().unwrap(), 1 << 20).unwrap(), text);
        assert_eq!(decode(b"identity", b"x", 10).unwrap(), b"x");
        assert!(matches!(decode(b"compress", b"x", 10), Err(DecodeError::Unsupported(_))));
        assert!(decode(b"gzip", b"not gzip", 10).is_err());
        assert!(decode(b"br", b"\xff\xff\xff", 10).is_err());
        assert!(decode(b"zstd", b"nope", 10).is_err());
    }

    #[test]
    fn splits_multipart() {
        let body = b"--XX\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nassistants\r\n--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\nContent-Type: text/plain\r\n\r\nline one\r\nline two\r\n--XX--\r\n";
        let b = boundary(b"multipart/form-data; boundary=XX").unwrap();
        let parts = split_multipart(body, &b).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!((parts[0].name.as_str(), parts[0].data), ("purpose", &b"assistants"[..]));
        assert_eq!(parts[1].filename.as_deref(), Some("a.txt"));
        assert_eq!(parts[1].data, b"line one\r\nline two");
        assert!(split_multipart(b"garbage", "XX").is_none());
        assert!(boundary(b"application/json").is_none());
    }
}
