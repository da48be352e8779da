//! Request bodies before extraction: Content-Encoding decoding (gzip, deflate, br, zstd),
//! bounded so a small compressed body cannot expand past the inspection limit; compression
//! and binary formats recognised by their magic bytes; multipart/form-data split into parts,
//! their transfer encodings (base64, quoted-printable) undone. Pure.

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
    /// Its Content-Transfer-Encoding, lowercase, unless 7bit, 8bit or binary.
    pub transfer_encoding: Option<String>,
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
        let mut transfer_encoding = None;
        for line in head_text.split("\r\n") {
            let lower = line.to_ascii_lowercase();
            if lower.starts_with("content-disposition:") {
                name = param(line, "name").unwrap_or_default();
                filename = param(line, "filename");
            } else if let Some(v) = lower.strip_prefix("content-type:") {
                content_type = Some(v.trim().to_owned());
            } else if let Some(v) = lower.strip_prefix("content-transfer-encoding:") {
                let v = v.trim();
                if !matches!(v, "7bit" | "8bit" | "binary" | "") {
                    transfer_encoding = Some(v.to_owned());
                }
            }
        }
        parts.push(Part { head, name, filename, content_type, transfer_encoding, data });
        at = next + 2 + d.len();
        if parts.len() > 1000 {
            return None;
        }
    }
}

/// The boundary a multipart body's first line shows (`--boundary`), whatever the header said.
pub fn first_boundary(body: &[u8]) -> Option<String> {
    let line = body.strip_prefix(b"--")?;
    let end = line.iter().take(202).position(|&b| b == b'\r')?;
    let b = std::str::from_utf8(&line[..end]).ok()?;
    (!b.is_empty() && b.len() <= 200 && !b.contains(char::is_whitespace)).then(|| b.to_owned())
}

/// A compression format recognised by its magic bytes: what [`decode`] takes.
pub fn sniff_compression(b: &[u8]) -> Option<&'static str> {
    match b {
        [0x1f, 0x8b, 8, ..] => Some("gzip"),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Some("zstd"),
        // zlib with a 32 KiB window at one of the four levels zlib writes. (`x` and one of
        // these bytes can start text too: a sniffed zlib body that does not inflate is read
        // as what it is.)
        [0x78, 0x01 | 0x5e | 0x9c | 0xda, ..] => Some("deflate"),
        _ => None,
    }
}

/// Compresses `data` as `encoding` was (the inverse of [`decode`] for what
/// [`sniff_compression`] finds).
pub fn encode(encoding: &str, data: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write;
    match encoding {
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).ok()?;
            e.finish().ok()
        }
        "deflate" => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).ok()?;
            e.finish().ok()
        }
        "zstd" => Some(ruzstd::encoding::compress_to_vec(
            data,
            ruzstd::encoding::CompressionLevel::Fastest,
        )),
        _ => None,
    }
}

/// What a binary format is, for the rule deciding whether it may pass unscanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Binary {
    /// Recorded speech or sound (`audio` in the rule).
    Audio,
    /// Images and video: files that carry no text DLP could read (`files` in the rule).
    File,
    /// A document format text is extracted from ([`crate::docs`]).
    Document,
    /// Archives and documents whose text cannot be read here (`on_unscanned`).
    Opaque,
}

/// A binary format recognised by its magic bytes: its name for records, and what it is.
pub fn sniff_binary(b: &[u8]) -> Option<(&'static str, Binary)> {
    use Binary::*;
    const MAGIC: &[(&[u8], &str, Binary)] = &[
        (b"%PDF-", "PDF document", Document),
        (b"PK\x03\x04", "zip archive", Document),
        (b"\x89PNG\r\n\x1a\n", "PNG image", File),
        (b"\xff\xd8\xff", "JPEG image", File),
        (b"GIF87a", "GIF image", File),
        (b"GIF89a", "GIF image", File),
        (b"OggS", "Ogg audio", Audio),
        (b"fLaC", "FLAC audio", Audio),
        (b"ID3", "MP3 audio", Audio),
        (b"\xff\xfb", "MP3 audio", Audio),
        (b"\xff\xf3", "MP3 audio", Audio),
        (b"\xff\xf2", "MP3 audio", Audio),
        (b"\x1aE\xdf\xa3", "WebM media", Audio),
        (b"7z\xbc\xaf\x27\x1c", "7z archive", Opaque),
        (b"Rar!", "RAR archive", Opaque),
        (b"\xd0\xcf\x11\xe0", "OLE document (doc, xls)", Opaque),
        (b"BZh", "bzip2 data", Opaque),
        (b"\xfd7zXZ\x00", "xz data", Opaque),
    ];
    if let Some((_, name, kind)) = MAGIC.iter().find(|(m, _, _)| b.starts_with(m)) {
        return Some((name, *kind));
    }
    match (b.get(..4), b.get(4..8), b.get(8..12)) {
        (Some(b"RIFF"), _, Some(b"WAVE")) => Some(("WAV audio", Audio)),
        (Some(b"RIFF"), _, Some(b"WEBP")) => Some(("WebP image", File)),
        (Some(b"RIFF"), _, _) => Some(("RIFF media", File)),
        (_, Some(b"ftyp"), Some(b"M4A ")) => Some(("M4A audio", Audio)),
        (_, Some(b"ftyp"), _) => Some(("MP4 media", File)),
        _ => None,
    }
}

/// Why a part's transfer encoding could not be undone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// Not a transfer encoding of MIME.
    #[error("unsupported transfer encoding `{0}`")]
    Unsupported(String),
    /// The data is not in it.
    #[error("corrupt {0} part")]
    Corrupt(&'static str),
}

/// A part's content with its Content-Transfer-Encoding undone.
pub fn transfer_decode(encoding: &str, data: &[u8]) -> Result<Vec<u8>, TransferError> {
    use base64::Engine as _;
    match encoding {
        "base64" => {
            let clean: Vec<u8> =
                data.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
            base64::engine::general_purpose::STANDARD
                .decode(&clean)
                .map_err(|_| TransferError::Corrupt("base64"))
        }
        "quoted-printable" => {
            quoted_printable(data).ok_or(TransferError::Corrupt("quoted-printable"))
        }
        other => Err(TransferError::Unsupported(other.to_owned())),
    }
}

/// The inverse of [`transfer_decode`] (base64 in 76-character lines; quoted-printable).
pub fn transfer_encode(encoding: &str, data: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    match encoding {
        "quoted-printable" => {
            let mut out = Vec::with_capacity(data.len());
            for &b in data {
                match b {
                    b'=' => out.extend_from_slice(b"=3D"),
                    b'\r' | b'\n' | b'\t' | 0x20..=0x7e => out.push(b),
                    _ => out.extend_from_slice(format!("={b:02X}").as_bytes()),
                }
            }
            out
        }
        _ => {
            let enc = base64::engine::general_purpose::STANDARD.encode(data);
            let mut out = Vec::with_capacity(enc.len() + enc.len() / 38);
            for (i, line) in enc.as_bytes().chunks(76).enumerate() {
                if i > 0 {
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(line);
            }
            out
        }
    }
}

fn quoted_printable(data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i] != b'=' {
            out.push(data[i]);
            i += 1;
            continue;
        }
        match (data.get(i + 1), data.get(i + 2)) {
            (Some(b'\r'), Some(b'\n')) => i += 3,
            (Some(b'\n'), _) => i += 2,
            (Some(&h), Some(&l)) => {
                let v = (h as char).to_digit(16)? << 4 | (l as char).to_digit(16)?;
                out.push(v as u8);
                i += 3;
            }
            _ => return None,
        }
    }
    Some(out)
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
