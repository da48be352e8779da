//! # sluice-hello
//!
//! Sans-IO TLS ClientHello parser: SNI, ALPN, supported versions and the JA4 fingerprint.
//! One parser for both engines (ARCHITECTURE.md, "Crates"): the packet engine reads the hello
//! from reassembled segments and QUIC CRYPTO frames, the interception engine from its accepted
//! socket, so a flow and its interception see the same SNI, ALPN and JA4.
//!
//! Fed the client's first bytes of a TCP stream (or the CRYPTO stream of a QUIC Initial), it
//! answers "need more bytes", "not TLS", "malformed" or the parsed hello. Bounded: a hello may
//! span several TLS records, but never more than [`MAX_HELLO`] bytes; no input panics.

mod ja4;

pub use ja4::Ja4Memo;
use ja4::is_grease;

/// Largest ClientHello we wait for (the reassembly window).
pub const MAX_HELLO: usize = 16 * 1024;

/// Outcome of [`parse_client_hello`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloParse<'a> {
    /// More bytes are needed.
    Incomplete,
    /// The stream does not start with a TLS handshake record.
    NotTls,
    /// TLS, but the hello is malformed or larger than [`MAX_HELLO`].
    Malformed(&'static str),
    /// A complete hello.
    Hello(ClientHello<'a>),
}

/// A parsed ClientHello: a checked view borrowing the bytes it was parsed from. The fields the
/// verdict needs (SNI, ALPN, version) are read during parsing; the JA4 fingerprint is computed
/// on demand ([`ClientHello::ja4`]) off the decision path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientHello<'a> {
    /// Highest non-GREASE version offered (supported_versions, else legacy_version).
    pub version: u16,
    sni: Option<&'a str>,
    alpn: &'a [u8],
    ciphers: &'a [u8],
    extensions: &'a [u8],
    quic: bool,
    ech: bool,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(n.into())
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n.into())
    }
    fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }
}

fn handshake_len(hs: &[u8]) -> Result<Option<usize>, &'static str> {
    if hs.len() < 4 {
        return Ok(None);
    }
    if hs[0] != 1 {
        return Err("first handshake message is not a ClientHello");
    }
    let n = (usize::from(hs[1]) << 16) | (usize::from(hs[2]) << 8) | usize::from(hs[3]);
    if n + 4 > MAX_HELLO {
        return Err("ClientHello larger than 16 KiB");
    }
    Ok(Some(n + 4))
}

/// Parses the start of a TLS stream (JA4 protocol letter `t`). A hello inside one record is
/// parsed in place; one spread over several records is gathered into `scratch` (bounded by
/// [`MAX_HELLO`]).
pub fn parse_client_hello<'a>(stream: &'a [u8], scratch: &'a mut Vec<u8>) -> HelloParse<'a> {
    match stream {
        [] => return HelloParse::Incomplete,
        [t, ..] if *t != 0x16 => return HelloParse::NotTls,
        [_, v, ..] if *v != 0x03 => return HelloParse::NotTls,
        _ => {}
    }
    // Fast path: the whole hello in the first record.
    if let Some(hdr) = stream.get(..5) {
        let len = usize::from(u16::from_be_bytes([hdr[3], hdr[4]]));
        if len == 0 || len > 16384 + 256 {
            return HelloParse::Malformed("bad record length");
        }
        if let Some(body) = stream.get(5..5 + len) {
            match handshake_len(body) {
                Err(e) => return HelloParse::Malformed(e),
                Ok(Some(n)) if n <= body.len() => return finish(&body[4..n], false),
                _ => {}
            }
        }
    }
    scratch.clear();
    let mut pos = 0usize;
    loop {
        let Some(hdr) = stream.get(pos..pos + 5) else { return HelloParse::Incomplete };
        if hdr[0] != 0x16 {
            return HelloParse::Malformed("non-handshake record inside the ClientHello");
        }
        if hdr[1] != 0x03 {
            return HelloParse::Malformed("bad record version");
        }
        let len = usize::from(u16::from_be_bytes([hdr[3], hdr[4]]));
        if len == 0 || len > 16384 + 256 {
            return HelloParse::Malformed("bad record length");
        }
        if scratch.len() + len > MAX_HELLO {
            return HelloParse::Malformed("ClientHello larger than 16 KiB");
        }
        let Some(body) = stream.get(pos + 5..pos + 5 + len) else { return HelloParse::Incomplete };
        scratch.extend_from_slice(body);
        pos += 5 + len;
        match handshake_len(scratch) {
            Err(e) => return HelloParse::Malformed(e),
            Ok(Some(n)) if n <= scratch.len() => {
                let hs: &'a [u8] = scratch;
                return finish(&hs[4..n], false);
            }
            _ => {}
        }
    }
}

fn finish(body: &[u8], quic: bool) -> HelloParse<'_> {
    match parse_hello_body(body, quic) {
        Some(h) => HelloParse::Hello(h),
        None => HelloParse::Malformed("malformed ClientHello"),
    }
}

/// Parses a ClientHello handshake body (after the 4-byte handshake header).
pub fn parse_hello_body(body: &[u8], quic: bool) -> Option<ClientHello<'_>> {
    let mut r = Reader::new(body);
    let legacy_version = r.u16()?;
    r.take(32)?; // random
    r.vec8()?; // session id
    let ciphers = r.vec16()?;
    if ciphers.len() % 2 != 0 {
        return None;
    }
    r.vec8()?; // compression methods
    let mut out = ClientHello {
        version: legacy_version,
        sni: None,
        alpn: &[],
        ciphers,
        extensions: &[],
        quic,
        ech: false,
    };
    if r.is_empty() {
        return Some(out);
    }
    out.extensions = r.vec16()?;
    let mut best_version: Option<u16> = None;
    let mut e = Reader::new(out.extensions);
    while !e.is_empty() {
        let typ = e.u16()?;
        let mut d = Reader::new(e.vec16()?);
        match typ {
            0x0000 => {
                let mut list = Reader::new(d.vec16()?);
                while !list.is_empty() {
                    let kind = list.u8()?;
                    let name = list.vec16()?;
                    if kind == 0 && out.sni.is_none() {
                        if name.is_empty()
                            || name.len() > 255
                            || !name.iter().all(u8::is_ascii_graphic)
                        {
                            return None;
                        }
                        out.sni = std::str::from_utf8(name).ok();
                    }
                }
            }
            0x0010 => {
                out.alpn = d.vec16()?;
                let mut list = Reader::new(out.alpn);
                while !list.is_empty() {
                    list.vec8()?;
                }
            }
            // encrypted_client_hello (RFC 9849): present in real and in GREASE ECH alike.
            0xfe0d => out.ech = true,
            0x002b => {
                let v = d.vec8()?;
                for c in v.chunks_exact(2) {
                    let ver = u16::from_be_bytes([c[0], c[1]]);
                    if !is_grease(ver) {
                        best_version = Some(best_version.map_or(ver, |b| b.max(ver)));
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(v) = best_version {
        out.version = v;
    }
    Some(out)
}

impl<'a> ClientHello<'a> {
    /// Server name (host_name type), as sent.
    pub fn sni(&self) -> Option<&'a str> {
        self.sni
    }

    /// Whether the hello carries an `encrypted_client_hello` extension. Real ECH and GREASE
    /// ECH (sent by Chrome to every server) look alike here: the outer name tells them apart.
    pub fn ech(&self) -> bool {
        self.ech
    }

    /// ALPN protocols in order.
    pub fn alpn(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let mut r = Reader::new(self.alpn);
        std::iter::from_fn(move || r.vec8())
    }

    /// The ALPN extension's protocol list as the hello carries it (empty without one).
    pub fn alpn_raw(&self) -> &'a [u8] {
        self.alpn
    }

    /// ALPN protocols as strings (lossy), at most 16.
    pub fn alpn_strings(&self) -> Vec<String> {
        self.alpn().take(16).map(|p| String::from_utf8_lossy(p).into_owned()).collect()
    }

    /// The JA4 fingerprint (FoxIO).
    pub fn ja4(&self) -> String {
        self.with_ja4_input(|i| {
            let mut parts = ja4::Ja4Parts::default();
            parts.fill(i);
            parts.ja4()
        })
    }

    /// Runs `f` on the fields JA4 reads.
    fn with_ja4_input<R>(&self, f: impl FnOnce(ja4::Ja4Input<'_>) -> R) -> R {
        f(ja4::Ja4Input {
            quic: self.quic,
            version: self.version,
            has_sni: self.sni.is_some(),
            ciphers: self.ciphers,
            extensions: self.extensions,
            first_alpn: self.alpn().next(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_tls_and_garbage() {
        let mut sc = Vec::new();
        assert_eq!(parse_client_hello(b"", &mut sc), HelloParse::Incomplete);
        assert_eq!(parse_client_hello(b"GET / HTTP/1.1\r\n", &mut sc), HelloParse::NotTls);
        assert_eq!(parse_client_hello(&[0x16], &mut sc), HelloParse::Incomplete);
        assert_eq!(
            parse_client_hello(&[0x16, 0x03, 0x01, 0, 0], &mut sc),
            HelloParse::Malformed("bad record length")
        );
        assert!(matches!(
            parse_client_hello(&[0x16, 0x03, 0x01, 0, 4, 2, 0, 0, 0], &mut sc),
            HelloParse::Malformed(_)
        ));
        assert!(matches!(
            parse_client_hello(&[0x16, 0x03, 0x01, 0, 4, 1, 0, 0, 0], &mut sc),
            HelloParse::Malformed(_)
        ));
    }
}
