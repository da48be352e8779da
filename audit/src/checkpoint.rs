//! Checkpoints: a chain's head at a sequence number, signed with Ed25519 by control's key.
//! The signed bytes are `sluice/checkpoint/v1\n{chain}\n{seq}\n{head}\n{ts_ms}\n` (head in
//! lowercase hex); a checkpoint travels as one line, `{chain} {seq} {head} {ts_ms} {signature}`
//! (signature in hex), which [`Checkpoint::parse_line`] reads back, bounded and checked.

use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};

use crate::chain::Link;

/// Longest chain name (a data plane's name, or `control`).
pub const MAX_CHAIN: usize = 64;

/// Why a checkpoint or key is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The line is not five fields of the right forms.
    #[error("checkpoint line unreadable: {0}")]
    Line(&'static str),
    /// The public key is not an Ed25519 key.
    #[error("not an Ed25519 public key")]
    Key,
    /// The signature does not verify under the key: forged, or signed by another key.
    #[error("checkpoint signature does not verify")]
    Signature,
}

/// A chain's head at `seq`, signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The chain (a data plane's name, or `control`).
    pub chain: String,
    /// The sequence number of the record whose link is `head`.
    pub seq: u64,
    /// That record's link.
    pub head: Link,
    /// When it was signed (unix ms).
    pub ts_ms: u64,
    /// Ed25519 over [`Checkpoint::signed_bytes`].
    pub signature: [u8; 64],
}

fn chain_name_ok(c: &str) -> bool {
    !c.is_empty()
        && c.len() <= MAX_CHAIN
        && c.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

impl Checkpoint {
    /// The bytes a checkpoint's signature covers.
    pub fn signed_bytes(chain: &str, seq: u64, head: &Link, ts_ms: u64) -> Vec<u8> {
        format!("sluice/checkpoint/v1\n{chain}\n{seq}\n{}\n{ts_ms}\n", head.to_hex()).into_bytes()
    }

    /// Checks the signature under `key`.
    pub fn verify(&self, key: &VerifyingKey) -> Result<(), CheckpointError> {
        let msg = Self::signed_bytes(&self.chain, self.seq, &self.head, self.ts_ms);
        key.verify(&msg, &Signature::from_bytes(&self.signature))
            .map_err(|_| CheckpointError::Signature)
    }

    /// The checkpoint as one line (no newline).
    pub fn to_line(&self) -> String {
        let sig = signature_to_hex(&self.signature);
        format!("{} {} {} {} {sig}", self.chain, self.seq, self.head.to_hex(), self.ts_ms)
    }

    /// Reads a line written by [`Checkpoint::to_line`] (the signature is not checked here).
    pub fn parse_line(line: &str) -> Result<Checkpoint, CheckpointError> {
        if line.len() > MAX_CHAIN + 256 {
            return Err(CheckpointError::Line("too long"));
        }
        let mut f = line.trim_end_matches(['\r', '\n']).split(' ');
        let mut next = |what| f.next().filter(|s| !s.is_empty()).ok_or(CheckpointError::Line(what));
        let chain = next("no chain")?;
        let seq = next("no sequence number")?;
        let head = next("no head")?;
        let ts = next("no time")?;
        let sig = next("no signature")?;
        if f.next().is_some() {
            return Err(CheckpointError::Line("more than five fields"));
        }
        if !chain_name_ok(chain) {
            return Err(CheckpointError::Line("chain name"));
        }
        let number = |s: &str, what| {
            (s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse::<u64>().ok())
                .flatten()
                .ok_or(CheckpointError::Line(what))
        };
        let seq = number(seq, "sequence number")?;
        let ts_ms = number(ts, "time")?;
        let head = Link::from_hex(head).ok_or(CheckpointError::Line("head"))?;
        let signature = signature_from_hex(sig).ok_or(CheckpointError::Line("signature"))?;
        Ok(Checkpoint { chain: chain.to_owned(), seq, head, ts_ms, signature })
    }
}

/// An Ed25519 signature as 128 lowercase hex digits (checkpoint lines, bundle manifests).
pub fn signature_to_hex(sig: &[u8; 64]) -> String {
    let (a, b) = sig.split_at(32);
    let half = |h: &[u8]| Link(h.try_into().unwrap_or([0; 32])).to_hex();
    half(a) + &half(b)
}

/// Reads [`signature_to_hex`]'s form back.
pub fn signature_from_hex(s: &str) -> Option<[u8; 64]> {
    let (a, b) = (Link::from_hex(s.get(..64)?)?, Link::from_hex(s.get(64..)?)?);
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(&a.0);
    out[32..].copy_from_slice(&b.0);
    Some(out)
}

/// The bytes an evidence bundle's manifest signature covers: a fixed prefix (so no signature
/// over a manifest can pass as a checkpoint's, or the other way round) and the manifest.
pub fn manifest_signed_bytes(manifest: &[u8]) -> Vec<u8> {
    let mut m = b"sluice/evidence-manifest/v1\n".to_vec();
    m.extend_from_slice(manifest);
    m
}

/// Checks an evidence bundle's manifest signature under `key`.
pub fn verify_manifest(
    key: &VerifyingKey,
    manifest: &[u8],
    signature: &[u8; 64],
) -> Result<(), CheckpointError> {
    key.verify(&manifest_signed_bytes(manifest), &Signature::from_bytes(signature))
        .map_err(|_| CheckpointError::Signature)
}

/// An Ed25519 public key from its 32 bytes.
pub fn public_key(bytes: &[u8; 32]) -> Result<VerifyingKey, CheckpointError> {
    VerifyingKey::from_bytes(bytes).map_err(|_| CheckpointError::Key)
}

/// Signs checkpoints with control's key.
pub struct Signer {
    key: SigningKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("Signer").field("public", &self.key.verifying_key()).finish()
    }
}

impl Signer {
    /// The signer of a 32-byte secret (the daemon draws it from the OS and keeps it 0600).
    pub fn from_secret(secret: &[u8; 32]) -> Signer {
        Signer { key: SigningKey::from_bytes(secret) }
    }

    /// The public key, to pin.
    pub fn public(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The checkpoint of `chain` at `seq`, whose link is `head`, signed now (`ts_ms`).
    /// Returns `None` for a chain name a checkpoint line cannot carry.
    pub fn sign(&self, chain: &str, seq: u64, head: Link, ts_ms: u64) -> Option<Checkpoint> {
        if !chain_name_ok(chain) {
            return None;
        }
        let sig = self.key.sign(&Checkpoint::signed_bytes(chain, seq, &head, ts_ms));
        Some(Checkpoint { chain: chain.to_owned(), seq, head, ts_ms, signature: sig.to_bytes() })
    }

    /// Signs an evidence bundle's manifest ([`manifest_signed_bytes`]).
    pub fn sign_manifest(&self, manifest: &[u8]) -> [u8; 64] {
        self.key.sign(&manifest_signed_bytes(manifest)).to_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::{GENESIS, link};

    #[test]
    fn manifests_sign_and_refuse_changes_and_checkpoint_signatures() {
        let s = Signer::from_secret(&[7; 32]);
        let sig = s.sign_manifest(b"{\"files\":[]}");
        assert_eq!(verify_manifest(&s.public(), b"{\"files\":[]}", &sig), Ok(()));
        assert!(verify_manifest(&s.public(), b"{\"files\":[1]}", &sig).is_err());
        let other = Signer::from_secret(&[8; 32]);
        assert!(verify_manifest(&other.public(), b"{\"files\":[]}", &sig).is_err());
        // A checkpoint's signature is no manifest's.
        let cp = s.sign("c", 1, GENESIS, 1).unwrap();
        let bytes = Checkpoint::signed_bytes("c", 1, &GENESIS, 1);
        assert!(verify_manifest(&s.public(), &bytes, &cp.signature).is_err());
    }

    #[test]
    fn checkpoints_sign_read_back_and_refuse_forgeries() {
        let s = Signer::from_secret(&[7; 32]);
        let head = link(&GENESIS, 1, b"r");
        let cp = s.sign("dp-1", 1, head, 1_700_000_000_000).unwrap();
        assert_eq!(cp.verify(&s.public()), Ok(()));
        let line = cp.to_line();
        assert_eq!(Checkpoint::parse_line(&line), Ok(cp.clone()));
        assert_eq!(Checkpoint::parse_line(&format!("{line}\n")), Ok(cp.clone()));
        // Any field changed, or another key: refused.
        for forged in [
            Checkpoint { seq: 2, ..cp.clone() },
            Checkpoint { head: GENESIS, ..cp.clone() },
            Checkpoint { ts_ms: 1, ..cp.clone() },
            Checkpoint { chain: "dp-2".into(), ..cp.clone() },
        ] {
            assert_eq!(forged.verify(&s.public()), Err(CheckpointError::Signature));
        }
        let other = Signer::from_secret(&[8; 32]);
        assert_eq!(cp.verify(&other.public()), Err(CheckpointError::Signature));
        assert!(s.sign("a b", 1, head, 0).is_none() && s.sign("", 1, head, 0).is_none());
        assert!(!format!("{s:?}").contains("0707"), "the secret never shows");
        assert_eq!(public_key(&s.public().to_bytes()), Ok(s.public()));
    }

    #[test]
    fn bad_lines_are_refused_with_the_reason() {
        let cp = Signer::from_secret(&[7; 32]).sign("c", 5, GENESIS, 9).unwrap();
        let line = cp.to_line();
        let fields: Vec<&str> = line.split(' ').collect();
        let with = |i: usize, v: &str| {
            let mut f = fields.clone();
            f[i] = v;
            f.join(" ")
        };
        for (bad, why) in [
            (String::new(), "no chain"),
            (with(0, "a/b"), "chain name"),
            (with(1, "-1"), "sequence number"),
            (with(1, "99999999999999999999"), "sequence number"),
            (with(2, "xyz"), "head"),
            (with(3, "1e3"), "time"),
            (with(4, "00"), "signature"),
            (format!("{line} extra"), "more than five fields"),
            (fields[..4].join(" "), "no signature"),
            ("x".repeat(400), "too long"),
        ] {
            assert_eq!(Checkpoint::parse_line(&bad), Err(CheckpointError::Line(why)), "{bad}");
        }
    }
}
