//! What the crate reads 32 bytes at a time where the CPU has AVX2 (chosen at run time by the
//! callers): the block pass ([`crate::blocks`]), whose SSE2 classification
//! (`classify_block`) is the reference, and the JSON reader's search for a string's end
//! ([`crate::walk`]). Tests check both against their SSE2 forms.
//!
//! The masks of each half of a block are collected as `u32`s and joined at the end: joined
//! as they were made (`lo | hi << 32` per class), LLVM fused each pair into one 64-lane mask
//! that AVX2 has no instruction for, and took it apart byte by byte (twice slower than SSE2).

use core::arch::x86_64::{
    __m256i, _mm256_and_si256, _mm256_cmpeq_epi8, _mm256_cmpgt_epi8, _mm256_loadu_si256,
    _mm256_movemask_epi8, _mm256_or_si256, _mm256_set1_epi8,
};

use crate::blocks::{Also, Block, scan_with};
use crate::{DetectorSet, Match};

/// The block pass ([`crate::blocks`]) with AVX2 classification.
#[target_feature(enable = "avx2")]
pub(crate) fn scan(
    b: &[u8],
    set: &DetectorSet,
    out: &mut Vec<Match>,
    runs: Option<&mut Vec<(usize, usize)>>,
    also: &mut Also<'_>,
) {
    scan_with(b, set, out, runs, also, |c| classify(c));
}

/// The block classification, 32 bytes at a time.
#[target_feature(enable = "avx2")]
#[inline]
pub(crate) fn classify(c: &[u8; 64]) -> Block {
    let mut h = [[0u32; 9]; 2];
    for (k, half) in h.iter_mut().enumerate() {
        let v = load(c, k);
        let digit = range(v, b'0', b'9');
        // Either case in one test: setting bit 5 maps `A`-`Z` onto `a`-`z` and nothing else
        // into that range.
        let word = or(or(digit, range(or(v, splat(0x20)), b'a', b'z')), eq(v, b'_'));
        *half = [
            mask(digit),
            mask(or(eq(v, b'('), eq(v, b'+'))),
            mask(range(v, b'A', b'Z')),
            mask(word),
            mask(or(eq(v, b'.'), eq(v, b'-'))),
            // [`crate::text::superset`]: `+` (0x2B) and above.
            mask(_mm256_cmpgt_epi8(v, splat(0x2A))),
            mask(or(eq(v, b'@'), eq(v, b'~'))),
            mask(eq(v, b'S')),
            mask(or(or(eq(v, b':'), eq(v, b'=')), eq(v, b'>'))),
        ];
    }
    let join = |i: usize| u64::from(h[0][i]) | u64::from(h[1][i]) << 32;
    Block {
        digit: join(0),
        open: join(1),
        upper: join(2),
        word: join(3),
        joiner: join(4),
        base64: join(5),
        mark: join(6),
        s: join(7),
        assign: join(8),
    }
}

/// The JSON reader's search for the end of a string's plain run ([`crate::walk`]): the offset
/// of the first `"`, `\` or control byte (below 0x20) at or after `at`, or the end of `b`.
#[target_feature(enable = "avx2")]
pub(crate) fn special(b: &[u8], mut at: usize) -> usize {
    while let Some(chunk) = b.get(at..at + 32).and_then(|c| <&[u8; 32]>::try_from(c).ok()) {
        #[allow(unsafe_code)]
        // SAFETY: `chunk` is 32 readable bytes, and an unaligned load needs nothing more.
        let v = unsafe { _mm256_loadu_si256(chunk.as_ptr().cast()) };
        // Bytes of 128 and over are negative as i8: neither control bytes nor quotes.
        let control = _mm256_and_si256(
            _mm256_cmpgt_epi8(v, _mm256_set1_epi8(-1)),
            _mm256_cmpgt_epi8(splat(0x20), v),
        );
        let m = mask(or(or(eq(v, b'"'), eq(v, b'\\')), control));
        if m != 0 {
            return at + m.trailing_zeros() as usize;
        }
        at += 32;
    }
    crate::walk::special_tail(b, at)
}

/// Bytes `32 * k..32 * k + 32` of `c` (`k` is 0 or 1).
#[target_feature(enable = "avx2")]
#[inline]
fn load(c: &[u8; 64], k: usize) -> __m256i {
    let half: &[u8; 32] = match k {
        0 => c.first_chunk(),
        _ => c.last_chunk(),
    }
    .unwrap_or(&[0; 32]);
    #[allow(unsafe_code)]
    // SAFETY: `half` is 32 readable bytes, and an unaligned load needs nothing more.
    unsafe {
        _mm256_loadu_si256(half.as_ptr().cast())
    }
}

// Helpers as functions with the target feature, not closures: an intrinsic in a closure was
// compiled as a call.

#[target_feature(enable = "avx2")]
#[inline]
fn splat(c: u8) -> __m256i {
    _mm256_set1_epi8(c as i8)
}

#[target_feature(enable = "avx2")]
#[inline]
fn or(a: __m256i, b: __m256i) -> __m256i {
    _mm256_or_si256(a, b)
}

/// Bytes `lo..=hi` (both ASCII, `lo` > 0, `hi` < 127): signed compares, so bytes of 128 and
/// over (negative as `i8`) never count.
#[target_feature(enable = "avx2")]
#[inline]
fn range(v: __m256i, lo: u8, hi: u8) -> __m256i {
    _mm256_and_si256(_mm256_cmpgt_epi8(v, splat(lo - 1)), _mm256_cmpgt_epi8(splat(hi + 1), v))
}

#[target_feature(enable = "avx2")]
#[inline]
fn eq(v: __m256i, c: u8) -> __m256i {
    _mm256_cmpeq_epi8(v, splat(c))
}

/// One bit per byte of `m`.
#[target_feature(enable = "avx2")]
#[inline]
fn mask(m: __m256i) -> u32 {
    _mm256_movemask_epi8(m) as u32
}
