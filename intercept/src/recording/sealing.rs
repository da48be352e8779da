//! Sealing recordings (ARCHITECTURE.md, "Recordings"): envelope encryption. A random
//! AES-256-GCM data key, age-encrypted to the customer's X25519 recipients once per ten
//! minutes, seals each recording (its id bound as associated data) and travels with it, so a
//! recording opens on its own with the private key. Nonces count up under each data key
//! (after a random prefix): unique by construction, no randomness drawn per recording.

use std::io::Write as _;
use std::sync::Arc;

use base64::Engine as _;

/// How long one data key seals recordings, and for how many at most.
const KEY_LIFE: std::time::Duration = std::time::Duration::from_secs(600);
const KEY_USES: u64 = 1 << 20;

/// What recordings sealed here are sealed with (the `alg` of [`Sealed`]).
const ALG: &str = "aes-256-gcm+age";

/// The data key recordings are sealed with (AES-256-GCM), wrapped with age to the recipients
/// once per [`KEY_LIFE`]: the X25519 work is paid once per key, not per recording.
struct DataKey {
    for_recipients: Arc<[String]>,
    key: ring::aead::LessSafeKey,
    /// The key, age-encrypted to the recipients (base64): carried by every recording it seals,
    /// so each opens on its own.
    wrapped: Arc<str>,
    /// The first four bytes of every nonce under this key (the other eight count its uses).
    nonce_prefix: [u8; 4],
    born: std::time::Instant,
    uses: u64,
}

/// The data keys of a data plane (shared by its connections).
#[derive(Default)]
pub struct Sealer {
    current: std::sync::Mutex<Option<DataKey>>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(…)")
    }
}

/// A sealed recording as stored and served: the age-wrapped data key, the nonce and the
/// AES-256-GCM ciphertext (the recording's id is the associated data), each base64.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sealed {
    /// `aes-256-gcm+age`.
    pub alg: String,
    /// The data key, age-encrypted to the recipients.
    pub key: String,
    /// The nonce.
    pub nonce: String,
    /// The ciphertext and tag.
    pub data: String,
}

/// A recording just sealed, as the data plane holds it until it is written
/// ([`SealedBytes::write_json`] writes the [`Sealed`] form without copying it twice).
#[derive(Clone, PartialEq, Eq)]
pub struct SealedBytes {
    /// The wrapped data key (base64), shared by the recordings it seals.
    pub key: Arc<str>,
    nonce: [u8; ring::aead::NONCE_LEN],
    data: Vec<u8>,
}

impl std::fmt::Debug for SealedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedBytes").field("bytes", &self.data.len()).finish_non_exhaustive()
    }
}

impl SealedBytes {
    /// Bytes [`SealedBytes::write_json`] writes, at most.
    pub fn json_len(&self) -> usize {
        let b64 = |n: usize| n.div_ceil(3) * 4;
        48 + ALG.len() + self.key.len() + b64(self.nonce.len()) + b64(self.data.len())
    }

    /// Appends the [`Sealed`] JSON object (base64 needs no escaping: it is written straight
    /// into `out`, by SIMD where the CPU has it: this runs once per recording, on its bytes).
    pub fn write_json(&self, out: &mut String) {
        let b64 = base64_simd::STANDARD;
        out.push_str("{\"alg\":\"");
        out.push_str(ALG);
        out.push_str("\",\"key\":\"");
        out.push_str(&self.key);
        out.push_str("\",\"nonce\":\"");
        b64.encode_append(self.nonce, out);
        out.push_str("\",\"data\":\"");
        b64.encode_append(&self.data, out);
        out.push_str("\"}");
    }
}

/// Makes a data key wrapped to `recipients`.
fn new_key(
    recipients: &[age::x25519::Recipient],
    names: &Arc<[String]>,
) -> Result<DataKey, String> {
    let rng = ring::rand::SystemRandom::new();
    let mut raw = [0u8; 32];
    let mut nonce_prefix = [0u8; 4];
    ring::rand::SecureRandom::fill(&rng, &mut raw).map_err(|_| "no randomness".to_owned())?;
    ring::rand::SecureRandom::fill(&rng, &mut nonce_prefix)
        .map_err(|_| "no randomness".to_owned())?;
    let enc = age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
        .map_err(|e| e.to_string())?;
    let mut wrapped = Vec::with_capacity(256);
    let mut w = enc.wrap_output(&mut wrapped).map_err(|e| e.to_string())?;
    w.write_all(&raw).map_err(|e| e.to_string())?;
    w.finish().map_err(|e| e.to_string())?;
    let key = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &raw)
        .map_err(|_| "bad key".to_owned())?;
    zeroize::Zeroize::zeroize(&mut raw);
    Ok(DataKey {
        for_recipients: names.clone(),
        key: ring::aead::LessSafeKey::new(key),
        wrapped: base64::engine::general_purpose::STANDARD.encode(&wrapped).into(),
        nonce_prefix,
        born: std::time::Instant::now(),
        uses: 0,
    })
}

/// Seals `plaintext` in place (the recording `id` bound as associated data) with the current
/// data key of `sealer`, made anew when there is none, it is old, it has sealed its most, or
/// it wraps other recipients than `names`.
pub(super) fn seal(
    sealer: &Sealer,
    recipients: &[age::x25519::Recipient],
    names: &Arc<[String]>,
    id: &str,
    mut data: Vec<u8>,
) -> Result<SealedBytes, String> {
    let (key, nonce) = {
        let mut cur = sealer.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let stale = cur.as_ref().is_none_or(|k| {
            k.for_recipients != *names || k.born.elapsed() > KEY_LIFE || k.uses >= KEY_USES
        });
        if stale {
            *cur = Some(new_key(recipients, names)?);
        }
        let Some(k) = cur.as_mut() else { return Err("no data key".into()) };
        let mut nonce = [0u8; ring::aead::NONCE_LEN];
        nonce[..4].copy_from_slice(&k.nonce_prefix);
        nonce[4..].copy_from_slice(&k.uses.to_be_bytes());
        k.uses += 1;
        k.key
            .seal_in_place_append_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(id.as_bytes()),
                &mut data,
            )
            .map_err(|_| "sealing failed".to_owned())?;
        (k.wrapped.clone(), nonce)
    };
    Ok(SealedBytes { key, nonce, data })
}

/// Opens a recording sealed here (`sluicectl sessions show`): the data key with the age
/// `identities`, then the ciphertext. Returns the plaintext ([`super::plain::read`] reads it).
pub fn open(
    sealed: &Sealed,
    id: &str,
    identities: &[Box<dyn age::Identity>],
) -> Result<Vec<u8>, String> {
    let b64 = &base64::engine::general_purpose::STANDARD;
    if sealed.alg != ALG {
        return Err(format!("unknown sealing {}", sealed.alg));
    }
    let wrapped = b64.decode(&sealed.key).map_err(|e| format!("key: {e}"))?;
    let d = age::Decryptor::new_buffered(&wrapped[..]).map_err(|e| format!("key: {e}"))?;
    let mut r = d
        .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut r, &mut raw).map_err(|e| e.to_string())?;
    let key = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &raw)
        .map_err(|_| "the data key is not 32 bytes".to_owned())?;
    zeroize::Zeroize::zeroize(&mut raw);
    let nonce: [u8; ring::aead::NONCE_LEN] =
        b64.decode(&sealed.nonce).ok().and_then(|n| n.try_into().ok()).ok_or("bad nonce")?;
    let mut data = b64.decode(&sealed.data).map_err(|e| format!("data: {e}"))?;
    let plain = ring::aead::LessSafeKey::new(key)
        .open_in_place(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            ring::aead::Aad::from(id.as_bytes()),
            &mut data,
        )
        .map_err(|_| "the recording does not open: altered, or another recording's".to_owned())?;
    Ok(plain.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_count_under_one_key_and_the_written_form_opens() {
        let id = age::x25519::Identity::generate();
        let recipients = [id.to_public()];
        let names: Arc<[String]> = vec![id.to_public().to_string()].into();
        let sealer = Sealer::default();
        let a = seal(&sealer, &recipients, &names, "rec_a", b"one".to_vec()).unwrap();
        let b = seal(&sealer, &recipients, &names, "rec_b", b"two".to_vec()).unwrap();
        assert_eq!(a.key, b.key, "one data key for both");
        assert_eq!(a.nonce[..4], b.nonce[..4]);
        assert_ne!(a.nonce, b.nonce);
        let mut text = String::new();
        b.write_json(&mut text);
        assert!(text.len() <= b.json_len());
        let sealed: Sealed = serde_json::from_str(&text).unwrap();
        let mine: Vec<Box<dyn age::Identity>> = vec![Box::new(id)];
        assert_eq!(open(&sealed, "rec_b", &mine).unwrap(), b"two");
        assert!(open(&sealed, "rec_a", &mine).is_err(), "bound to its id");
        assert!(!format!("{b:?}").contains("two"));
        // Other recipients: another data key.
        let other = age::x25519::Identity::generate();
        let names2: Arc<[String]> = vec![other.to_public().to_string()].into();
        let c = seal(&sealer, &[other.to_public()], &names2, "rec_c", b"x".to_vec()).unwrap();
        assert_ne!(c.key, a.key);
    }
}
