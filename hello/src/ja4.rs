//! The JA4 fingerprint (FoxIO) of a ClientHello, and a memo of fingerprints by their parts.
//!
//! A JA4 is two SHA-256 prefixes over hex lists of the hello's sorted ciphers, extensions and
//! signature algorithms: about half a microsecond, more than parsing and deciding a hello
//! together. Hellos from one program repeat: a browser shuffles its extensions and GREASE
//! values, but the sets stay the same. [`Ja4Memo`] remembers each kind of hello's fingerprint
//! under a key that reads the lists once, without sorting or allocating (keyed sums over the
//! sets, so any order gives the same key), and hashes only hellos of a kind it has not seen
//! (ARCHITECTURE.md, "The packet path").

use std::sync::Arc;

use sha2::{Digest, Sha256};

const HEX: &[u8; 16] = b"0123456789abcdef";
/// The hash part of an empty list.
const EMPTY: &str = "000000000000";

/// The parts of a hello its JA4 is made of, canonical: GREASE values dropped, ciphers and
/// extensions (without SNI and ALPN) sorted.
///
/// Layout of `words`: `[flags, version, alpn, ext_count, n_ciphers, ciphers…, n_exts,
/// exts…, sigalgs…]`, where `flags` holds QUIC (1), SNI (2) and ALPN present (4), and `alpn`
/// the first and last byte of the first ALPN protocol.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Ja4Parts {
    words: Vec<u16>,
}

/// What [`Ja4Parts::fill`] reads: a hello's fields, GREASE values included.
pub(crate) struct Ja4Input<'a> {
    pub quic: bool,
    pub version: u16,
    pub has_sni: bool,
    /// The cipher suites, two bytes each.
    pub ciphers: &'a [u8],
    /// The extensions block (type, two-byte length, data; repeated).
    pub extensions: &'a [u8],
    pub first_alpn: Option<&'a [u8]>,
}

pub(crate) fn is_grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && (v >> 8) == (v & 0xff)
}

fn pairs(b: &[u8]) -> impl Iterator<Item = u16> + '_ {
    b.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]]))
}

/// The extensions of a block, type and data, up to the first that does not fit.
fn extensions(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let h = b.get(..4)?;
        let len = usize::from(u16::from_be_bytes([h[2], h[3]]));
        let data = b.get(4..4 + len)?;
        let typ = u16::from_be_bytes([h[0], h[1]]);
        b = &b[4 + len..];
        Some((typ, data))
    })
}

/// What one walk over a hello gives both readings of it ([`Ja4Parts`], [`Ja4Key`]): the
/// header words `[flags, version, alpn, ext_count]` and the signature algorithms.
struct Walked<'a> {
    head: [u16; 4],
    sigalgs: &'a [u8],
}

impl<'a> Ja4Input<'a> {
    /// Walks the hello once: each cipher but GREASE to `cipher`, each extension type but
    /// GREASE, SNI and ALPN to `ext`; the last readable signature algorithms list is kept.
    fn walk(self, mut cipher: impl FnMut(u16), mut ext: impl FnMut(u16)) -> Walked<'a> {
        pairs(self.ciphers).filter(|c| !is_grease(*c)).for_each(&mut cipher);
        let mut ext_count = 0u16;
        let mut sigalgs: &[u8] = &[];
        for (t, data) in extensions(self.extensions).filter(|(t, _)| !is_grease(*t)) {
            // Bounded by the hello's size (16 KiB): the count fits in 16 bits.
            ext_count = ext_count.saturating_add(1);
            if t != 0x0000 && t != 0x0010 {
                ext(t);
            }
            if t == 0x000d {
                sigalgs = sigalg_list(data).unwrap_or(sigalgs);
            }
        }
        let alpn = self.first_alpn.filter(|p| !p.is_empty());
        let flags =
            u16::from(self.quic) | u16::from(self.has_sni) << 1 | u16::from(alpn.is_some()) << 2;
        let alpn_word = alpn.map_or(0, |p| u16::from_be_bytes([p[0], p[p.len() - 1]]));
        Walked { head: [flags, self.version, alpn_word, ext_count], sigalgs }
    }
}

impl Ja4Parts {
    /// Refills the parts from a hello's fields.
    pub(crate) fn fill(&mut self, i: Ja4Input<'_>) {
        let (mut ciphers, mut exts) = (Vec::new(), Vec::new());
        let walked = i.walk(|c| ciphers.push(c), |t| exts.push(t));
        ciphers.sort_unstable();
        exts.sort_unstable();
        let count = |v: &[u16]| u16::try_from(v.len()).unwrap_or(u16::MAX);
        let w = &mut self.words;
        w.clear();
        w.extend_from_slice(&walked.head);
        w.push(count(&ciphers));
        w.extend_from_slice(&ciphers);
        w.push(count(&exts));
        w.extend_from_slice(&exts);
        w.extend(pairs(walked.sigalgs));
    }

    /// The fingerprint.
    pub fn ja4(&self) -> String {
        let w = &self.words;
        let (flags, version, alpn, ext_count) = (w[0], w[1], w[2], w[3]);
        let n_ciphers = usize::from(w[4]);
        let ciphers = &w[5..5 + n_ciphers];
        let n_exts = usize::from(w[5 + n_ciphers]);
        let exts = &w[6 + n_ciphers..6 + n_ciphers + n_exts];
        let sigalgs = &w[6 + n_ciphers + n_exts..];
        let ver = match version {
            0x0304 => "13",
            0x0303 => "12",
            0x0302 => "11",
            0x0301 => "10",
            0x0300 => "s3",
            0x0002 => "s2",
            0xfeff => "d1",
            0xfefd => "d2",
            0xfefc => "d3",
            _ => "00",
        };
        let mut out = String::with_capacity(36);
        out.push(if flags & 1 != 0 { 'q' } else { 't' });
        out.push_str(ver);
        out.push(if flags & 2 != 0 { 'd' } else { 'i' });
        push_dec2(&mut out, n_ciphers.min(99));
        push_dec2(&mut out, usize::from(ext_count).min(99));
        if flags & 4 == 0 {
            out.push_str("00");
        } else {
            let [f, l] = alpn.to_be_bytes();
            if f.is_ascii_alphanumeric() && l.is_ascii_alphanumeric() {
                out.push(char::from(f));
                out.push(char::from(l));
            } else {
                // The first hex digit of the first byte, the last of the last.
                out.push(char::from(HEX[usize::from(f >> 4)]));
                out.push(char::from(HEX[usize::from(l & 0xf)]));
            }
        }
        out.push('_');
        if ciphers.is_empty() {
            out.push_str(EMPTY);
        } else {
            let mut h = Sha256::new();
            hex_list(&mut h, ciphers);
            push_hash12(&mut out, h);
        }
        out.push('_');
        if exts.is_empty() {
            out.push_str(EMPTY);
        } else {
            let mut h = Sha256::new();
            hex_list(&mut h, exts);
            if !sigalgs.is_empty() {
                h.update(b"_");
                hex_list(&mut h, sigalgs);
            }
            push_hash12(&mut out, h);
        }
        out
    }
}

fn push_dec2(out: &mut String, n: usize) {
    out.push(char::from(b'0' + (n / 10) as u8));
    out.push(char::from(b'0' + (n % 10) as u8));
}

/// Feeds `v` as comma-separated four-digit hex, as JA4 hashes it.
fn hex_list(h: &mut Sha256, v: &[u16]) {
    let mut buf = [0u8; 5 * 64];
    for (n, chunk) in v.chunks(64).enumerate() {
        let mut len = 0;
        for (i, x) in chunk.iter().enumerate() {
            if n > 0 || i > 0 {
                buf[len] = b',';
                len += 1;
            }
            for shift in [12, 8, 4, 0] {
                buf[len] = HEX[usize::from((x >> shift) & 0xf)];
                len += 1;
            }
        }
        h.update(&buf[..len]);
    }
}

/// The first six bytes of the digest, in hex.
fn push_hash12(out: &mut String, h: Sha256) {
    for b in &h.finalize()[..6] {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
}

/// The memo's key for a hello: the header fields as they are, and keyed sums over the
/// cipher and extension sets (order-independent) and the signature algorithms (in order).
/// Its hash is keyed too (`hash`: the sums and a keyed mix of the header), so nobody outside
/// can line keys up in one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ja4Key {
    head: [u16; 6],
    sums: [u64; 3],
    hash: u64,
}

impl std::hash::Hash for Ja4Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// A keyed 64-bit mix of one value: the folded 128-bit product of value and key (as wyhash
/// and foldhash mix), with an odd multiplier drawn from the key.
fn mix(x: u64, key: u64) -> u64 {
    let m = u128::from(x ^ key) * u128::from((key.rotate_left(29) ^ 0x9e37_79b9_7f4a_7c15) | 1);
    (m as u64) ^ ((m >> 64) as u64)
}

impl Ja4Key {
    /// The key of a hello's fields under the memo's secret `keys` (so that nobody outside
    /// can aim two kinds of hello at one key).
    fn of(i: Ja4Input<'_>, keys: &[u64; 3]) -> Self {
        let (mut in_ciphers, mut in_exts, mut in_sigalgs) = (0u64, 0u64, 0u64);
        let (mut n_ciphers, mut n_exts) = (0u16, 0u16);
        let walked = i.walk(
            |c| {
                in_ciphers = in_ciphers.wrapping_add(mix(u64::from(c) | 1 << 16, keys[0]));
                n_ciphers = n_ciphers.wrapping_add(1);
            },
            |t| {
                in_exts = in_exts.wrapping_add(mix(u64::from(t) | 1 << 16, keys[1]));
                n_exts = n_exts.wrapping_add(1);
            },
        );
        // In order: each value mixed with its position (independent mixes, not a chain).
        for (n, s) in pairs(walked.sigalgs).enumerate() {
            let at = (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            in_sigalgs = in_sigalgs.wrapping_add(mix(u64::from(s) | 1 << 16, keys[2] ^ at));
        }
        let sums = [in_ciphers, in_exts, in_sigalgs];
        let [flags, version, alpn, ext_count] = walked.head;
        let head = [flags, version, alpn, ext_count, n_ciphers, n_exts];
        let packed = |w: &[u16]| w.iter().fold(0u64, |a, x| a << 16 | u64::from(*x));
        let hash = mix(packed(&head[..4]), keys[0].rotate_left(7))
            ^ mix(packed(&head[4..]), keys[1].rotate_left(7))
            ^ sums[0]
            ^ sums[1].rotate_left(21)
            ^ sums[2].rotate_left(42);
        Ja4Key { head, sums, hash }
    }
}

/// The list of a `signature_algorithms` extension's data: a two-byte length, then the list.
fn sigalg_list(data: &[u8]) -> Option<&[u8]> {
    let l = data.get(..2)?;
    data.get(2..2 + usize::from(u16::from_be_bytes([l[0], l[1]])))
}

/// JA4s remembered by the kind of hello, bounded: past `cap` kinds (an attacker's unique
/// hellos) new ones are computed and not kept until [`Ja4Memo::purge`] (at the engine's
/// sweep) drops the entries no flow holds any more. The fingerprints are shared: a flow
/// holds its JA4 as an `Arc<str>`.
#[derive(Debug)]
pub struct Ja4Memo {
    map: std::collections::HashMap<Ja4Key, Arc<str>, BuildKeyHasher>,
    cap: usize,
    keys: [u64; 3],
}

impl Ja4Memo {
    /// A memo of at most `cap` fingerprints, with keys of its own.
    pub fn new(cap: usize) -> Self {
        use std::hash::{BuildHasher, Hasher};
        let random = |n: u64| {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(n);
            h.finish()
        };
        Ja4Memo {
            map: std::collections::HashMap::default(),
            cap,
            keys: [random(0), random(1), random(2)],
        }
    }

    /// The JA4 of `h`, computed only for a kind of hello not seen yet.
    pub fn ja4(&mut self, h: &crate::ClientHello<'_>) -> Arc<str> {
        let key = h.with_ja4_input(|i| Ja4Key::of(i, &self.keys));
        if let Some(v) = self.map.get(&key) {
            return v.clone();
        }
        let v: Arc<str> = h.ja4().into();
        // Full: new kinds are not kept until a purge (the engine's sweep) makes room; purging
        // here would scan the whole memo for every new kind a flood brings.
        if self.map.len() < self.cap {
            self.map.insert(key, v.clone());
        }
        v
    }

    /// Drops the fingerprints only the memo holds.
    pub fn purge(&mut self) {
        self.map.retain(|_, v| Arc::strong_count(v) > 1);
    }

    /// How many fingerprints are kept.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// The map's hasher: the key carries its own keyed hash ([`Ja4Key`]), passed through.
#[derive(Debug, Default, Clone, Copy)]
struct BuildKeyHasher;

#[derive(Debug, Default)]
struct KeyHasher(u64);

impl std::hash::BuildHasher for BuildKeyHasher {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(0)
    }
}

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (the key's own hash); anything else is folded in.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

#[cfg(test)]
#[path = "ja4_tests.rs"]
mod tests;
