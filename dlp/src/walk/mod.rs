//! A strict JSON reader that hands every string value to a callback with its JSON path,
//! without building the document: the extraction step of DLP, run on every request body.
//!
//! Pure and bounded: bytes in, callbacks out; nesting is limited to 127 levels (serde_json's
//! limit) and nothing is allocated but the path and a scratch buffer for strings with escapes
//! (a string without escapes is handed over in place). It accepts exactly the documents
//! serde_json accepts, except numbers beyond `f64` (`1e400`), which serde_json refuses and
//! this reader, which never converts numbers, lets through. A test and the `json_walk` fuzz
//! target compare both on the same inputs ([`strings_serde`] is the reference).
//!
//! Why not serde_json itself: with serde_json's visitor (no document built) reading was a
//! quarter of the DLP time on prompt JSON, mostly its byte-at-a-time string scan; here string
//! bodies are skipped sixteen bytes at a time with SIMD compares (through `wide`'s safe types)
//! and UTF-8 is checked once for the whole body.

use wide::i8x16;

/// Deepest nesting of arrays and objects accepted (serde_json's default recursion limit).
const MAX_DEPTH: usize = 127;

/// Why a body is not one JSON document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WalkError {
    /// Not UTF-8.
    #[error("not UTF-8")]
    Utf8,
    /// A byte that does not fit the grammar, at this offset.
    #[error("unexpected byte at offset {0}")]
    Syntax(usize),
    /// The document ends early.
    #[error("unexpected end of input")]
    Eof,
    /// Arrays and objects nested deeper than 127 levels.
    #[error("nested too deeply")]
    Depth,
}

/// Keys whose string values are file content in base64 (the API's `file_data`): read as
/// files ([`Kind::FileData`]).
pub fn is_file_key(key: &str) -> bool {
    key == "file_data"
}

/// Keys whose string values often carry base64 media (`input_audio.data`, Realtime `audio`,
/// image results' `b64_json`) but also plain values: read as files when they decode to a
/// known format, as text otherwise.
pub fn is_media_key(key: &str) -> bool {
    matches!(key, "data" | "audio" | "b64_json")
}

/// What a visited text is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A string value.
    Value,
    /// A string value whose key carries base64 file content ([`is_file_key`]).
    FileData,
    /// An object key, visited before its value; the path is the object's.
    Key,
    /// A number, as written (`-0.5e+3`).
    Number,
}

/// One text of the document: its path, its text (escapes decoded) and kind. For a key,
/// `Some(name)` puts `name` in the paths of its value instead of the key itself (a key that
/// is itself sensitive stays out of the paths records carry); other kinds return `None`.
pub type Visit<'f> = dyn FnMut(&str, &str, Kind) -> Option<String> + 'f;

/// Reads `body` as one JSON document and calls `f(path, text, kind)` for every string value,
/// object key and number in document order (keys are also in the paths: `$.a[0].b`).
/// On an error, `f` may have been called for texts before it.
pub fn strings(body: &[u8], root: &str, f: &mut Visit<'_>) -> Result<(), WalkError> {
    let text = std::str::from_utf8(body).map_err(|_| WalkError::Utf8)?;
    text_strings(text, root, f)
}

/// [`strings`] over text already known to be UTF-8.
pub fn text_strings(text: &str, root: &str, f: &mut Visit<'_>) -> Result<(), WalkError> {
    let mut r = Reader { b: text.as_bytes(), s: text, at: 0, path: root.to_owned() };
    let mut scratch = String::new();
    r.ws();
    r.value(0, false, &mut scratch, f)?;
    r.ws();
    match r.at < r.b.len() {
        true => Err(WalkError::Syntax(r.at)),
        false => Ok(()),
    }
}

struct Reader<'a> {
    b: &'a [u8],
    /// The same bytes, checked UTF-8: string slices are cut from it at ASCII quotes.
    s: &'a str,
    at: usize,
    path: String,
}

impl<'a> Reader<'a> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.at) {
            self.at += 1;
        }
    }

    fn peek(&self) -> Result<u8, WalkError> {
        self.b.get(self.at).copied().ok_or(WalkError::Eof)
    }

    fn value(
        &mut self,
        depth: usize,
        file_data: bool,
        scratch: &mut String,
        f: &mut Visit<'_>,
    ) -> Result<(), WalkError> {
        match self.peek()? {
            b'"' => {
                self.at += 1;
                let s = self.string(scratch)?;
                let kind = if file_data { Kind::FileData } else { Kind::Value };
                f(&self.path, s.get(scratch, self.s), kind);
                Ok(())
            }
            b'[' => self.array(depth + 1, scratch, f),
            b'{' => self.object(depth + 1, scratch, f),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => {
                let start = self.at;
                self.number()?;
                f(&self.path, self.cut(start, self.at)?, Kind::Number);
                Ok(())
            }
            _ => Err(WalkError::Syntax(self.at)),
        }
    }

    fn array(
        &mut self,
        depth: usize,
        scratch: &mut String,
        f: &mut Visit<'_>,
    ) -> Result<(), WalkError> {
        if self.open(depth, b']')? {
            return Ok(());
        }
        let len = self.path.len();
        for i in 0usize.. {
            push_index(&mut self.path, i);
            self.value(depth, false, scratch, f)?;
            self.path.truncate(len);
            if !self.more(b']')? {
                break;
            }
        }
        Ok(())
    }

    /// Past the opening bracket of a container at `depth`; true when it is empty (and closed).
    fn open(&mut self, depth: usize, close: u8) -> Result<bool, WalkError> {
        if depth > MAX_DEPTH {
            return Err(WalkError::Depth);
        }
        self.at += 1;
        self.ws();
        let empty = self.peek()? == close;
        if empty {
            self.at += 1;
        }
        Ok(empty)
    }

    /// After a member: past a `,` (true, another follows) or the closing bracket (false).
    fn more(&mut self, close: u8) -> Result<bool, WalkError> {
        self.ws();
        match self.peek()? {
            b',' => {
                self.at += 1;
                self.ws();
                Ok(true)
            }
            c if c == close => {
                self.at += 1;
                Ok(false)
            }
            _ => Err(WalkError::Syntax(self.at)),
        }
    }

    fn object(
        &mut self,
        depth: usize,
        scratch: &mut String,
        f: &mut Visit<'_>,
    ) -> Result<(), WalkError> {
        if self.open(depth, b'}')? {
            return Ok(());
        }
        let len = self.path.len();
        loop {
            if self.peek()? != b'"' {
                return Err(WalkError::Syntax(self.at));
            }
            self.at += 1;
            let key = self.string(scratch)?;
            let key = key.get(scratch, self.s);
            let file_data = is_file_key(key);
            let shown = f(&self.path, key, Kind::Key);
            self.path.push('.');
            self.path.push_str(shown.as_deref().unwrap_or(key));
            self.ws();
            if self.peek()? != b':' {
                return Err(WalkError::Syntax(self.at));
            }
            self.at += 1;
            self.ws();
            self.value(depth, file_data, scratch, f)?;
            self.path.truncate(len);
            if !self.more(b'}')? {
                return Ok(());
            }
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), WalkError> {
        let end = self.at + word.len();
        match self.b.get(self.at..end) {
            Some(w) if w == word => {
                self.at = end;
                Ok(())
            }
            Some(_) => Err(WalkError::Syntax(self.at)),
            None if word.starts_with(&self.b[self.at..]) => Err(WalkError::Eof),
            None => Err(WalkError::Syntax(self.at)),
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Result<(), WalkError> {
        if self.peek()? == b'-' {
            self.at += 1;
        }
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits(),
            _ => return Err(WalkError::Syntax(self.at)),
        }
        if self.b.get(self.at) == Some(&b'.') {
            self.at += 1;
            if !self.peek()?.is_ascii_digit() {
                return Err(WalkError::Syntax(self.at));
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.b.get(self.at) {
            self.at += 1;
            if let b'+' | b'-' = self.peek()? {
                self.at += 1;
            }
            if !self.peek()?.is_ascii_digit() {
                return Err(WalkError::Syntax(self.at));
            }
            self.digits();
        }
        Ok(())
    }

    fn digits(&mut self) {
        while self.b.get(self.at).is_some_and(u8::is_ascii_digit) {
            self.at += 1;
        }
    }

    /// A string after its opening quote, up to and past the closing one.
    fn string(&mut self, scratch: &mut String) -> Result<Text, WalkError> {
        let start = self.at;
        // Start of the bytes not yet copied to `scratch` (once an escape was seen).
        let mut plain = start;
        let mut escaped = false;
        loop {
            self.at = special(self.b, self.at);
            match self.peek()? {
                b'"' => break,
                b'\\' => {
                    if !escaped {
                        escaped = true;
                        scratch.clear();
                    }
                    scratch.push_str(self.cut(plain, self.at)?);
                    self.at += 1;
                    self.escape(scratch)?;
                    plain = self.at;
                }
                // A control byte.
                _ => return Err(WalkError::Syntax(self.at)),
            }
        }
        let end = self.at;
        self.at += 1;
        if escaped {
            scratch.push_str(self.cut(plain, end)?);
            Ok(Text::Scratch)
        } else {
            Ok(Text::Slice(start, end))
        }
    }

    /// `s[a..b]`; both ends are next to ASCII bytes, so always on character boundaries.
    fn cut(&self, a: usize, b: usize) -> Result<&'a str, WalkError> {
        self.s.get(a..b).ok_or(WalkError::Syntax(a))
    }

    /// One escape after its backslash, decoded into `out`. Surrogates must come in pairs.
    fn escape(&mut self, out: &mut String) -> Result<(), WalkError> {
        let c = self.peek()?;
        self.at += 1;
        let ch = match c {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = self.hex4()?;
                let code = match hi {
                    0xD800..=0xDBFF => {
                        if self.b.get(self.at..self.at + 2) != Some(&b"\\u"[..]) {
                            return Err(WalkError::Syntax(self.at));
                        }
                        self.at += 2;
                        let lo = self.hex4()?;
                        if !(0xDC00..=0xDFFF).contains(&lo) {
                            return Err(WalkError::Syntax(self.at));
                        }
                        0x1_0000 + ((u32::from(hi) - 0xD800) << 10) + (u32::from(lo) - 0xDC00)
                    }
                    0xDC00..=0xDFFF => return Err(WalkError::Syntax(self.at)),
                    _ => u32::from(hi),
                };
                char::from_u32(code).ok_or(WalkError::Syntax(self.at))?
            }
            _ => return Err(WalkError::Syntax(self.at - 1)),
        };
        out.push(ch);
        Ok(())
    }

    fn hex4(&mut self) -> Result<u16, WalkError> {
        let mut n = 0u16;
        for _ in 0..4 {
            let c = self.peek()?;
            let d = (c as char).to_digit(16).ok_or(WalkError::Syntax(self.at))?;
            n = n << 4 | d as u16;
            self.at += 1;
        }
        Ok(n)
    }
}

/// Where a string's text is: in the body, or decoded into the scratch buffer.
#[derive(Clone, Copy)]
enum Text {
    Slice(usize, usize),
    Scratch,
}

impl Text {
    fn get<'s>(self, scratch: &'s str, body: &'s str) -> &'s str {
        match self {
            Text::Slice(a, b) => body.get(a..b).unwrap_or(""),
            Text::Scratch => scratch,
        }
    }
}

/// The offset of the first `"`, `\` or control byte (below 0x20) at or after `at`, or the
/// end of `b`: 32 bytes per step where the CPU has AVX2 (checked at run time), sixteen
/// elsewhere.
fn special(b: &[u8], at: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        #[allow(unsafe_code)]
        // SAFETY: `avx2::special` needs nothing but AVX2, and the CPU has it (checked above).
        return unsafe { crate::avx2::special(b, at) };
    }
    special_sse2(b, at)
}

/// [`special`], sixteen bytes per step.
fn special_sse2(b: &[u8], mut at: usize) -> usize {
    while let Some(chunk) = b.get(at..at + 16) {
        let mut a = [0i8; 16];
        for (d, &s) in a.iter_mut().zip(chunk) {
            *d = s as i8;
        }
        let v = i8x16::new(a);
        // Bytes of 128 and over are negative as i8: neither control bytes nor quotes.
        let hit = v.simd_eq(i8x16::splat(b'"' as i8))
            | v.simd_eq(i8x16::splat(b'\\' as i8))
            | (v.simd_gt(i8x16::splat(-1)) & v.simd_lt(i8x16::splat(0x20)));
        let m = hit.to_bitmask();
        if m != 0 {
            return at + m.trailing_zeros() as usize;
        }
        at += 16;
    }
    special_tail(b, at)
}

/// [`special`] one byte at a time, for the bytes after the last whole SIMD step.
pub(crate) fn special_tail(b: &[u8], mut at: usize) -> usize {
    while let Some(&c) = b.get(at) {
        if c == b'"' || c == b'\\' || c < 0x20 {
            return at;
        }
        at += 1;
    }
    at
}

/// The reference for tests and the `json_walk` fuzz target: the same walk through serde_json's
/// deserializer (no document built). `Err` when serde_json refuses the body.
#[doc(hidden)]
pub fn strings_serde(body: &[u8], root: &str, f: &mut Visit<'_>) -> Result<(), serde_json::Error> {
    use serde::de::DeserializeSeed;
    let mut path = root.to_owned();
    let mut de = serde_json::Deserializer::from_slice(body);
    Node { f, path: &mut path, file_data: false }.deserialize(&mut de)?;
    de.end()
}

/// One value of the document, at `path`.
struct Node<'p, 'f> {
    f: &'p mut Visit<'f>,
    path: &'p mut String,
    file_data: bool,
}

impl<'de> serde::de::DeserializeSeed<'de> for Node<'_, '_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Node<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_str<E>(self, s: &str) -> Result<(), E> {
        (self.f)(self.path, s, if self.file_data { Kind::FileData } else { Kind::Value });
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    // Numbers are visited with serde_json's rendering of their value, not as written: tests
    // compare only their paths ([`same_visits`]).
    fn visit_i64<E>(self, n: i64) -> Result<(), E> {
        (self.f)(self.path, &n.to_string(), Kind::Number);
        Ok(())
    }

    fn visit_u64<E>(self, n: u64) -> Result<(), E> {
        (self.f)(self.path, &n.to_string(), Kind::Number);
        Ok(())
    }

    fn visit_f64<E>(self, n: f64) -> Result<(), E> {
        (self.f)(self.path, &n.to_string(), Kind::Number);
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        for i in 0usize.. {
            let len = self.path.len();
            push_index(self.path, i);
            let item = Node { f: &mut *self.f, path: &mut *self.path, file_data: false };
            let more = seq.next_element_seed(item)?;
            self.path.truncate(len);
            if more.is_none() {
                break;
            }
        }
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        loop {
            let len = self.path.len();
            let Some(file_data) = map.next_key_seed(Key(&mut *self.path, &mut *self.f))? else {
                return Ok(());
            };
            map.next_value_seed(Node { f: &mut *self.f, path: &mut *self.path, file_data })?;
            self.path.truncate(len);
        }
    }
}

/// A key of an object: visited, then appended to the path as `.key`; tells whether it is
/// `file_data`.
struct Key<'p, 'f>(&'p mut String, &'p mut Visit<'f>);

impl<'de> serde::de::DeserializeSeed<'de> for Key<'_, '_> {
    type Value = bool;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Key<'_, '_> {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, k: &str) -> Result<bool, E> {
        let shown = (self.1)(self.0, k, Kind::Key);
        self.0.push('.');
        self.0.push_str(shown.as_deref().unwrap_or(k));
        Ok(is_file_key(k))
    }
}

/// One visit as tests and the fuzz target compare them: numbers by path and kind only.
#[doc(hidden)]
pub type Seen = (String, String, Kind);

/// Whether two walks visited the same texts (numbers compared by path, since the reference
/// sees their value, not how they are written).
#[doc(hidden)]
pub fn same_visits(a: &[Seen], b: &[Seen]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.0 == y.0 && x.2 == y.2 && (x.2 == Kind::Number || x.1 == y.1))
}

/// `[i]` appended to a path (once per array element: without the formatting machinery).
fn push_index(path: &mut String, i: usize) {
    path.push('[');
    path.push_str(itoa::Buffer::new().format(i));
    path.push(']');
}

#[cfg(test)]
mod tests;
