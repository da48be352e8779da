//! Text out of the documents people upload to a model: Office Open XML (docx, xlsx, pptx:
//! zip archives of XML), zip archives of text files, and PDF text layers. What cannot be read
//! (encrypted files, PDFs whose fonts carry no text encoding, scanned pages without a text
//! layer, archives of binaries) is an error naming why, and the caller records it unscanned.
//! Pure and bounded: at most [`MAX_ENTRIES`] archive entries or PDF streams, and at most the
//! caller's limit of extracted bytes, whatever the compression ratio.

use std::io::Read;

/// Most entries of an archive, or streams of a PDF, read.
pub const MAX_ENTRIES: usize = 10_000;

/// Why a document's text could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DocError {
    /// Not a zip archive as its magic bytes said.
    #[error("corrupt zip archive")]
    CorruptZip,
    /// Its entries are encrypted.
    #[error("encrypted zip archive")]
    EncryptedZip,
    /// More entries than read.
    #[error("archive with too many entries")]
    TooManyEntries,
    /// Decompressed, it would exceed the limit.
    #[error("document expands past the inspection limit")]
    TooLarge,
    /// An archive entry that is neither text nor XML (a binary inside a zip).
    #[error("zip archive holding binary files")]
    BinaryEntry,
    /// The PDF is encrypted.
    #[error("encrypted PDF")]
    EncryptedPdf,
    /// The PDF has no text operators (scanned pages).
    #[error("PDF without a text layer")]
    NoTextLayer,
    /// The PDF's text is written in glyph codes of fonts without a text encoding.
    #[error("PDF text not extractable (fonts without a text encoding)")]
    GlyphCodes,
    /// A compressed PDF stream does not inflate.
    #[error("corrupt PDF stream")]
    CorruptPdf,
    /// A stream in an encoding this reader does not undo (ASCII85, LZW, …).
    #[error("PDF stream in an encoding not read here")]
    PdfFilter,
}

/// Filters of image streams: no text operators in them.
const IMAGE_FILTERS: [&[u8]; 4] =
    [b"/DCTDecode", b"/JPXDecode", b"/CCITTFaxDecode", b"/JBIG2Decode"];

/// A document's text, and what in it was not read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Doc {
    /// The text.
    pub text: String,
    /// Entries skipped (media and binaries inside an Office file), by index, with their kind
    /// when it is an image or audio.
    pub skipped: Vec<(usize, Option<crate::body::Binary>)>,
}

/// The text of a document (`%PDF-` or a zip archive), at most `limit` bytes extracted.
pub fn extract(bytes: &[u8], limit: usize) -> Result<Doc, DocError> {
    match bytes.starts_with(b"%PDF-") {
        true => pdf(bytes, limit).map(|text| Doc { text, skipped: Vec::new() }),
        false => archive(bytes, limit),
    }
}

/// The text of a zip archive: OOXML parts (word/, xl/, ppt/) with their XML markup removed,
/// and entries that are text. Media inside an Office document (images) is skipped; a binary
/// entry in any other archive is an error.
fn archive(bytes: &[u8], limit: usize) -> Result<Doc, DocError> {
    let mut zip =
        zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|_| DocError::CorruptZip)?;
    if zip.len() > MAX_ENTRIES {
        return Err(DocError::TooManyEntries);
    }
    let office = zip.file_names().any(|n| n == "[Content_Types].xml");
    let mut out = String::new();
    let mut skipped = Vec::new();
    let mut read = 0usize;
    for i in 0..zip.len() {
        let mut f = match zip.by_index(i) {
            Ok(f) => f,
            Err(zip::result::ZipError::UnsupportedArchive(m)) if m.contains("ncrypt") => {
                return Err(DocError::EncryptedZip);
            }
            Err(_) => return Err(DocError::CorruptZip),
        };
        if f.is_dir() {
            continue;
        }
        if f.encrypted() {
            return Err(DocError::EncryptedZip);
        }
        let name = f.name().to_owned();
        let mut data = Vec::new();
        let room = limit.saturating_sub(read);
        (&mut f).take(room as u64 + 1).read_to_end(&mut data).map_err(|_| DocError::CorruptZip)?;
        if data.len() > room {
            return Err(DocError::TooLarge);
        }
        read += data.len();
        let (text, _) = crate::charset::decode(None, &data);
        if crate::charset::is_binary(&text) {
            if !office {
                return Err(DocError::BinaryEntry);
            }
            // An image in an Office file is a file like any other; anything else in it
            // (an embedded archive or object) was not read.
            let kind = crate::body::sniff_binary(&data)
                .map(|(_, k)| k)
                .filter(|k| matches!(k, crate::body::Binary::File | crate::body::Binary::Audio));
            skipped.push((i, kind));
            continue;
        }
        match name.ends_with(".xml") || name.ends_with(".rels") {
            true => xml_text(&text, &mut out),
            false => out.push_str(&text),
        }
        out.push('\n');
    }
    Ok(Doc { text: out, skipped })
}

/// Elements that end a paragraph, cell or row in OOXML: a line break in the text. Every other
/// tag is dropped without a space, so a number split across runs (`<w:t>41</w:t>…<w:t>11`)
/// reads whole.
const BLOCK_ENDS: [&str; 8] =
    ["</w:p>", "</w:tc>", "</a:p>", "</c>", "</si>", "</row>", "<w:br", "<w:tab"];

/// XML with its markup removed and entities decoded, appended to `out`.
fn xml_text(xml: &str, out: &mut String) {
    let mut rest = xml;
    while let Some(open) = rest.find('<') {
        entities(&rest[..open], out);
        let tag_end = rest[open..].find('>').map_or(rest.len(), |e| open + e + 1);
        let tag = &rest[open..tag_end];
        if BLOCK_ENDS.iter().any(|b| tag.starts_with(b)) {
            out.push('\n');
        }
        rest = &rest[tag_end..];
    }
    entities(rest, out);
}

/// XML character and entity references decoded.
fn entities(s: &str, out: &mut String) {
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let Some(semi) = after.find(';').filter(|&i| i <= 10) else {
            out.push('&');
            rest = after;
            continue;
        };
        let name = &after[..semi];
        let c = match name {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => name
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| name.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match c {
            Some(c) => {
                out.push(c);
                rest = &after[semi + 1..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
}

/// The text layer of a PDF: the strings its content streams show (`Tj`, `TJ`, `'`, `"`
/// between `BT` and `ET`), streams inflated where `FlateDecode`. Strings of one text object
/// are joined as they are shown; text objects end in a line break.
fn pdf(bytes: &[u8], limit: usize) -> Result<String, DocError> {
    if memchr::memmem::find(bytes, b"/Encrypt").is_some() {
        return Err(DocError::EncryptedPdf);
    }
    let mut out = Vec::new();
    let mut text_objects = 0usize;
    let mut read = 0usize;
    let mut at = 0;
    let mut streams = 0;
    while let Some(s) = memchr::memmem::find(&bytes[at..], b"stream").map(|i| at + i) {
        // `endstream` also contains `stream`: only a keyword followed by a line break opens.
        let data_start = match (bytes.get(s + 6), bytes.get(s + 7)) {
            (Some(b'\r'), Some(b'\n')) => s + 8,
            (Some(b'\n'), _) => s + 7,
            _ => {
                at = s + 6;
                continue;
            }
        };
        if s >= 3 && &bytes[s - 3..s] == b"end" {
            at = s + 6;
            continue;
        }
        streams += 1;
        if streams > MAX_ENTRIES {
            return Err(DocError::TooManyEntries);
        }
        let Some(end) = memchr::memmem::find(&bytes[data_start..], b"endstream") else { break };
        let data = &bytes[data_start..data_start + end];
        // The stream's dictionary: from its object's `N G obj` header (the last one before
        // the keyword, within 64 KiB) to the keyword.
        let window = s.saturating_sub(64 * 1024);
        let dict_from = object_start(&bytes[window..s]).map_or(window, |i| window + i);
        let dict = &bytes[dict_from..s];
        at = data_start + end + 9;
        let content = if memchr::memmem::find(dict, b"/FlateDecode").is_some() {
            let room = limit.saturating_sub(read);
            let mut d = Vec::new();
            flate2::read::ZlibDecoder::new(data)
                .take(room as u64 + 1)
                .read_to_end(&mut d)
                .map_err(|_| DocError::CorruptPdf)?;
            if d.len() > room {
                return Err(DocError::TooLarge);
            }
            d
        } else if IMAGE_FILTERS.iter().any(|f| memchr::memmem::find(dict, f).is_some()) {
            // Images carry no text operators.
            continue;
        } else if memchr::memmem::find(dict, b"/Filter").is_some() {
            return Err(DocError::PdfFilter);
        } else {
            data.to_vec()
        };
        read += content.len();
        text_objects += show_text(&content, &mut out);
        if read > limit || out.len() > limit {
            return Err(DocError::TooLarge);
        }
    }
    if text_objects == 0 {
        return Err(DocError::NoTextLayer);
    }
    let text: String = out.iter().map(|&b| char::from(b)).collect();
    // Glyph codes of Identity-encoded fonts come out as control bytes and symbols.
    let readable = text
        .chars()
        .filter(|c| {
            c.is_ascii_alphanumeric() || c.is_ascii_whitespace() || c.is_ascii_punctuation()
        })
        .count();
    if readable * 10 < text.chars().count() * 8 {
        return Err(DocError::GlyphCodes);
    }
    Ok(text)
}

/// Where the last object header `N G obj` in `b` starts (a `(obj)` inside a string of the
/// dictionary is no header: digits and spaces must come before it).
fn object_start(b: &[u8]) -> Option<usize> {
    let mut end = b.len();
    while let Some(i) = memchr::memmem::rfind(&b[..end], b"obj") {
        let head = &b[..i];
        let t = head.trim_ascii_end();
        let gen_digits = t.iter().rev().take_while(|c| c.is_ascii_digit()).count();
        let t2 = t[..t.len() - gen_digits].trim_ascii_end();
        let num_digits = t2.iter().rev().take_while(|c| c.is_ascii_digit()).count();
        if gen_digits > 0 && num_digits > 0 && t2.len() < t.len() - gen_digits {
            return Some(i);
        }
        end = i;
    }
    None
}

/// Appends the strings a content stream shows; returns its number of text objects.
fn show_text(c: &[u8], out: &mut Vec<u8>) -> usize {
    let mut objects = 0;
    let mut in_text = false;
    let mut i = 0;
    while i < c.len() {
        match c[i] {
            b'(' if in_text => i = literal(c, i + 1, out),
            b'<' if in_text && c.get(i + 1) != Some(&b'<') => i = hex(c, i + 1, out),
            b'%' => {
                while i < c.len() && c[i] != b'\n' && c[i] != b'\r' {
                    i += 1;
                }
            }
            b'B' if c.get(i + 1) == Some(&b'T') && boundary(c, i, 2) => {
                in_text = true;
                objects += 1;
                i += 2;
            }
            b'E' if in_text && c.get(i + 1) == Some(&b'T') && boundary(c, i, 2) => {
                in_text = false;
                out.push(b'\n');
                i += 2;
            }
            _ => i += 1,
        }
    }
    objects
}

/// Whether the operator of `len` bytes at `i` stands alone (delimited on both sides).
fn boundary(c: &[u8], i: usize, len: usize) -> bool {
    let delim =
        |b: Option<&u8>| b.is_none_or(|b| b.is_ascii_whitespace() || b"()<>[]{}/%".contains(b));
    (i == 0 || delim(c.get(i - 1))) && delim(c.get(i + len))
}

/// A literal string after its `(`: escapes decoded, balanced parentheses kept; returns the
/// index past its `)`.
fn literal(c: &[u8], mut i: usize, out: &mut Vec<u8>) -> usize {
    let mut depth = 0usize;
    while i < c.len() {
        match c[i] {
            b'\\' => {
                i += 1;
                let Some(&e) = c.get(i) else { break };
                match e {
                    b'n' => out.push(b'\n'),
                    b'r' => out.push(b'\r'),
                    b't' => out.push(b'\t'),
                    b'b' | b'f' => {}
                    b'0'..=b'7' => {
                        let mut v = 0u32;
                        let mut k = 0;
                        while k < 3 && c.get(i).is_some_and(|d| (b'0'..=b'7').contains(d)) {
                            v = v * 8 + u32::from(c[i] - b'0');
                            i += 1;
                            k += 1;
                        }
                        out.push(v as u8);
                        continue;
                    }
                    b'\r' | b'\n' => {}
                    other => out.push(other),
                }
            }
            b'(' => {
                depth += 1;
                out.push(b'(');
            }
            b')' if depth == 0 => return i + 1,
            b')' => {
                depth -= 1;
                out.push(b')');
            }
            b => out.push(b),
        }
        i += 1;
    }
    i
}

/// A hex string after its `<`; returns the index past its `>`.
fn hex(c: &[u8], mut i: usize, out: &mut Vec<u8>) -> usize {
    let mut hi: Option<u8> = None;
    while i < c.len() && c[i] != b'>' {
        if let Some(d) = (c[i] as char).to_digit(16) {
            match hi.take() {
                Some(h) => out.push(h << 4 | d as u8),
                None => hi = Some(d as u8),
            }
        }
        i += 1;
    }
    if let Some(h) = hi {
        out.push(h << 4);
    }
    i + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for (name, data) in entries {
            w.start_file(*name, zip::write::SimpleFileOptions::default()).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn docx_runs_are_joined_and_paragraphs_split() {
        let doc = br#"<w:document><w:body><w:p><w:r><w:t>card 41</w:t></w:r><w:r><w:t xml:space="preserve">11 1111 1111 1111</w:t></w:r></w:p><w:p><w:r><w:t>R&amp;D &#x41;</w:t></w:r></w:p></w:body></w:document>"#;
        let z = zip_of(&[
            ("[Content_Types].xml", b"<Types/>"),
            ("word/document.xml", doc),
            ("word/media/image1.png", b"\x89PNG\r\n\x1a\n\0\0\0"),
        ]);
        let doc = extract(&z, 1 << 20).unwrap();
        assert!(doc.text.contains("card 4111 1111 1111 1111\nR&D A\n"), "{:?}", doc.text);
        assert_eq!(doc.skipped, [(2, Some(crate::body::Binary::File))], "the image is named");
    }

    #[test]
    fn xlsx_cells_are_read() {
        let sheet = br#"<worksheet><sheetData><row r="1"><c r="A1" t="s"><v>0</v></c><c r="B1"><v>123456789</v></c></row></sheetData></worksheet>"#;
        let strings = br#"<sst><si><t>ssn 123-45-6789</t></si></sst>"#;
        let z = zip_of(&[
            ("[Content_Types].xml", b"<Types/>"),
            ("xl/worksheets/sheet1.xml", sheet),
            ("xl/sharedStrings.xml", strings),
        ]);
        let text = extract(&z, 1 << 20).unwrap().text;
        assert!(text.contains("ssn 123-45-6789"), "{text:?}");
        assert!(text.contains("123456789"), "{text:?}");
    }

    #[test]
    fn archives_of_binaries_bombs_and_garbage_are_errors() {
        let z = zip_of(&[("notes.txt", b"hello"), ("tool.exe", b"MZ\0\0\x01\x02\x03\0\0\0\0\0")]);
        assert_eq!(extract(&z, 1 << 20), Err(DocError::BinaryEntry));
        let big = vec![b'a'; 1 << 20];
        let z = zip_of(&[("a.txt", &big)]);
        assert_eq!(extract(&z, 1000), Err(DocError::TooLarge));
        assert_eq!(extract(b"PK\x03\x04garbage", 1000), Err(DocError::CorruptZip));
    }

    fn pdf_with(content: &[u8], flate: bool) -> Vec<u8> {
        let (data, filter) = match flate {
            true => {
                let mut z =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
                z.write_all(content).unwrap();
                (z.finish().unwrap(), "/Filter /FlateDecode ")
            }
            false => (content.to_vec(), ""),
        };
        let mut p = b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\n4 0 obj\n".to_vec();
        p.extend_from_slice(format!("<< {filter}/Length {} >>\nstream\n", data.len()).as_bytes());
        p.extend_from_slice(&data);
        p.extend_from_slice(b"\nendstream\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n");
        p
    }

    #[test]
    fn pdf_text_layers_are_read() {
        let content = b"BT /F1 12 Tf 72 720 Td (Card: 4111 ) Tj [(1111) -120 (1111 1111)] TJ ET\nBT (SSN \\061\\062\\063-45-6789) Tj ET";
        for flate in [false, true] {
            let text = extract(&pdf_with(content, flate), 1 << 20).unwrap().text;
            assert!(text.contains("Card: 4111 11111111 1111"), "{text:?}");
            assert!(text.contains("SSN 123-45-6789"), "{text:?}");
        }
        let hexed = b"BT <4361726420343131312031313131> Tj ET";
        assert!(extract(&pdf_with(hexed, true), 1 << 20).unwrap().text.contains("Card 4111 1111"));
    }

    #[test]
    fn unreadable_pdfs_say_why() {
        assert_eq!(
            extract(&pdf_with(b"q 100 0 0 100 0 0 cm /Im1 Do Q", true), 1 << 20),
            Err(DocError::NoTextLayer)
        );
        let glyphs = b"BT <0012001F00030011001A00150003> Tj ET";
        assert_eq!(extract(&pdf_with(glyphs, true), 1 << 20), Err(DocError::GlyphCodes));
        let mut enc = pdf_with(b"BT (x) Tj ET", false);
        enc.extend_from_slice(b"trailer << /Encrypt 5 0 R >>");
        assert_eq!(extract(&enc, 1 << 20), Err(DocError::EncryptedPdf));
        let a85 = pdf_with(b"BT (x) Tj ET", false);
        let a85 = String::from_utf8_lossy(&a85)
            .replace("<< /Length", "<< /Filter /ASCII85Decode /Length");
        assert_eq!(
            extract(a85.as_bytes(), 1 << 20),
            Err(DocError::PdfFilter),
            "not read, and said"
        );
        let hidden = String::from_utf8_lossy(&pdf_with(b"BT (4111 1111 1111 1111) Tj ET", true))
            .replace("/Filter /FlateDecode", "/Filter /FlateDecode /Title (obj)");
        let text = extract(hidden.as_bytes(), 1 << 20);
        assert!(
            text.is_err() || text.unwrap().text.contains("4111"),
            "a (obj) string hides no filter"
        );
        let mut bomb = pdf_with(&vec![b' '; 1 << 20], true);
        bomb.truncate(bomb.len());
        assert_eq!(extract(&bomb, 1000), Err(DocError::TooLarge));
    }
}
