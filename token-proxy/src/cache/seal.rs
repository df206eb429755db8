//! Encryption of cached answers at rest (L2): AES-256-GCM under a key derived with
//! HKDF-SHA256 from the cache key's credential material. Without the credentials a stored
//! blob cannot be opened, and the key hash beside it does not help (different label).
//!
//! Blob layout: `version (1) || nonce (12) || ciphertext || tag (16)`. The AAD binds the
//! blob to its key hash, so a blob copied onto another item does not open.

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};

use super::key::{CacheKey, wipe};

const VERSION: u8 = 1;
const SALT: &[u8] = b"cedargate/token-cache/v1/hkdf-salt";
const INFO: &[u8] = b"cedargate/token-cache/v1/aes-256-gcm";
const AAD_LABEL: &[u8] = b"cedargate/token-cache/v1/aad:";

/// Why a blob could not be sealed or opened. Carries no data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("sealing failed")]
    Seal,
    #[error("the stored entry does not open with these credentials")]
    Open,
}

fn entry_key(key: &CacheKey) -> Result<RandomizedNonceKey, SealError> {
    let mut bytes = [0u8; 32];
    Salt::new(HKDF_SHA256, SALT)
        .extract(key.material())
        .expand(&[INFO], &AES_256_GCM)
        .and_then(|okm| okm.fill(&mut bytes))
        .map_err(|_| SealError::Seal)?;
    let sealing = RandomizedNonceKey::new(&AES_256_GCM, &bytes).map_err(|_| SealError::Seal);
    wipe(&mut bytes);
    sealing
}

fn aad(key: &CacheKey) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_LABEL.len() + 32);
    aad.extend_from_slice(AAD_LABEL);
    aad.extend_from_slice(key.hash());
    aad
}

/// Encrypt `plaintext` for `key`'s entry.
pub(crate) fn seal(key: &CacheKey, mut plaintext: Vec<u8>) -> Result<Vec<u8>, SealError> {
    let sealing = entry_key(key)?;
    let result = sealing.seal_in_place_append_tag(Aad::from(aad(key)), &mut plaintext);
    let nonce = match result {
        Ok(n) => n,
        Err(_) => {
            wipe(&mut plaintext);
            return Err(SealError::Seal);
        }
    };
    let mut blob = Vec::with_capacity(1 + NONCE_LEN + plaintext.len());
    blob.push(VERSION);
    blob.extend_from_slice(nonce.as_ref());
    blob.extend_from_slice(&plaintext);
    Ok(blob)
}

/// Decrypt a blob sealed for `key`.
pub(crate) fn open(key: &CacheKey, blob: &[u8]) -> Result<Vec<u8>, SealError> {
    if blob.len() < 1 + NONCE_LEN + AES_256_GCM.tag_len() || blob[0] != VERSION {
        return Err(SealError::Open);
    }
    let nonce =
        Nonce::try_assume_unique_for_key(&blob[1..1 + NONCE_LEN]).map_err(|_| SealError::Open)?;
    let mut in_out = blob[1 + NONCE_LEN..].to_vec();
    let opening = entry_key(key).map_err(|_| SealError::Open)?;
    let len = opening
        .open_in_place(nonce, Aad::from(aad(key)), &mut in_out)
        .map_err(|_| SealError::Open)?
        .len();
    in_out.truncate(len);
    Ok(in_out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::key::Presented;

    fn key(secret: &str) -> CacheKey {
        CacheKey::new(
            b"ctx",
            Presented::Posted {
                client_id: "c",
                client_secret: secret,
            },
            "client_credentials",
            None,
        )
    }

    #[test]
    fn round_trip_and_fresh_nonces() {
        let k = key("s");
        let a = seal(&k, b"the token".to_vec()).unwrap();
        let b = seal(&k, b"the token".to_vec()).unwrap();
        assert_ne!(a, b, "a fresh nonce every time");
        assert_eq!(open(&k, &a).unwrap(), b"the token");
        assert!(!a.windows(9).any(|w| w == b"the token"), "ciphertext only");
    }

    #[test]
    fn other_credentials_or_tampering_do_not_open() {
        let k = key("s");
        let blob = seal(&k, b"payload".to_vec()).unwrap();
        assert_eq!(open(&key("t"), &blob), Err(SealError::Open));
        let mut bad = blob.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(open(&k, &bad), Err(SealError::Open));
        assert_eq!(open(&k, &blob[..10]), Err(SealError::Open));
        let mut v2 = blob;
        v2[0] = 2;
        assert_eq!(open(&k, &v2), Err(SealError::Open));
    }
}
