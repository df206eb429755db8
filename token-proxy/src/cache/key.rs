//! Cache keys: one SHA-256 over the credentials exactly as presented, the grant type and the
//! normalised scope, plus a context naming who answers (the upstream URL, or the embedded
//! issuer and the client's configuration). A wrong secret is a different key, so it can never
//! reach a right secret's entry; a changed client or upstream is a different key too.
//!
//! Every field is length-prefixed (no two field lists encode alike) and the key hash and the
//! sealing key (see `seal`) are derived from the same material under different labels, so the
//! hash stored beside an entry says nothing about the key that encrypts it.

use std::collections::BTreeSet;
use std::fmt;

use aws_lc_rs::digest::{SHA256, digest};

/// Domain-separation label of the key hash.
const HASH_LABEL: &[u8] = b"cedargate/token-cache/v1/key";

/// How the client presented its credentials.
#[derive(Clone, Copy)]
pub enum Presented<'a> {
    /// The `Authorization` header value, byte for byte.
    Authorization(&'a str),
    /// `client_secret_post`: the posted `client_id` and `client_secret`.
    Posted {
        client_id: &'a str,
        client_secret: &'a str,
    },
}

/// The cache key of one token request: its hash (the L1 and L2 key) and the secret
/// material the entry's encryption key is derived from. The material never leaves the
/// process and is wiped on drop.
pub struct CacheKey {
    hash: [u8; 32],
    material: Vec<u8>,
}

impl fmt::Debug for CacheKey {
    // The material holds the client secret; the hash alone is enough to correlate.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheKey")
            .field("id", &self.short_id())
            .finish_non_exhaustive()
    }
}

fn push_field(out: &mut Vec<u8>, field: &[u8]) {
    // Fields are a few hundred bytes at most; a longer one is still encoded unambiguously
    // because the length is written in full.
    out.extend_from_slice(&(field.len() as u64).to_be_bytes());
    out.extend_from_slice(field);
}

impl CacheKey {
    /// The key for `presented` credentials asking `grant_type` with `scope` (already split,
    /// de-duplicated and sorted; `None` when the request names no scope), answered by
    /// `context`.
    pub fn new(
        context: &[u8],
        presented: Presented<'_>,
        grant_type: &str,
        scope: Option<&BTreeSet<String>>,
    ) -> CacheKey {
        let mut material = Vec::with_capacity(256);
        push_field(&mut material, context);
        match presented {
            Presented::Authorization(value) => {
                push_field(&mut material, b"authorization");
                push_field(&mut material, value.as_bytes());
            }
            Presented::Posted {
                client_id,
                client_secret,
            } => {
                push_field(&mut material, b"client_secret_post");
                push_field(&mut material, client_id.as_bytes());
                push_field(&mut material, client_secret.as_bytes());
            }
        }
        push_field(&mut material, grant_type.as_bytes());
        let scope = scope.map(|s| s.iter().map(String::as_str).collect::<Vec<_>>().join(" "));
        push_field(
            &mut material,
            scope.as_deref().unwrap_or_default().as_bytes(),
        );
        let mut input = Vec::with_capacity(HASH_LABEL.len() + material.len() + 8);
        push_field(&mut input, HASH_LABEL);
        input.extend_from_slice(&material);
        let mut hash = [0u8; 32];
        hash.copy_from_slice(digest(&SHA256, &input).as_ref());
        wipe(&mut input);
        CacheKey { hash, material }
    }

    /// The key hash: the L1 key and (hex-encoded) the L2 partition key.
    pub fn hash(&self) -> &[u8; 32] {
        &self.hash
    }

    /// The hex hash, as stored in L2.
    pub fn hex(&self) -> String {
        hex::encode(self.hash)
    }

    /// The first 8 hex digits, for logs (enough to correlate, too little to look anything up).
    pub fn short_id(&self) -> String {
        hex::encode(&self.hash[..4])
    }

    pub(crate) fn material(&self) -> &[u8] {
        &self.material
    }
}

impl Drop for CacheKey {
    fn drop(&mut self) {
        wipe(&mut self.material);
    }
}

/// Overwrite a buffer that held a secret (volatile, so the writes are not optimised away).
pub(crate) fn wipe(buf: &mut [u8]) {
    for b in buf.iter_mut() {
        // SAFETY: `b` is a valid, aligned, exclusive reference to one byte.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(s: &[&str]) -> BTreeSet<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    fn basic(v: &str) -> CacheKey {
        CacheKey::new(
            b"ctx",
            Presented::Authorization(v),
            "client_credentials",
            None,
        )
    }

    #[test]
    fn every_input_changes_the_key() {
        let base = CacheKey::new(
            b"ctx",
            Presented::Authorization("Basic YTpi"),
            "client_credentials",
            Some(&scope(&["a", "b"])),
        );
        let variants = [
            CacheKey::new(
                b"ctx2",
                Presented::Authorization("Basic YTpi"),
                "client_credentials",
                Some(&scope(&["a", "b"])),
            ),
            CacheKey::new(
                b"ctx",
                Presented::Authorization("Basic YTpj"),
                "client_credentials",
                Some(&scope(&["a", "b"])),
            ),
            CacheKey::new(
                b"ctx",
                Presented::Authorization("Basic YTpi"),
                "other",
                Some(&scope(&["a", "b"])),
            ),
            CacheKey::new(
                b"ctx",
                Presented::Authorization("Basic YTpi"),
                "client_credentials",
                Some(&scope(&["a"])),
            ),
            CacheKey::new(
                b"ctx",
                Presented::Authorization("Basic YTpi"),
                "client_credentials",
                None,
            ),
        ];
        for v in &variants {
            assert_ne!(v.hash(), base.hash());
        }
    }

    #[test]
    fn same_scope_set_same_key() {
        // The parser hands over a sorted, de-duplicated set: order and repeats cannot matter.
        let a = scope(&["b", "a", "b"]);
        let b = scope(&["a", "b"]);
        let ka = CacheKey::new(
            b"c",
            Presented::Authorization("x"),
            "client_credentials",
            Some(&a),
        );
        let kb = CacheKey::new(
            b"c",
            Presented::Authorization("x"),
            "client_credentials",
            Some(&b),
        );
        assert_eq!(ka.hash(), kb.hash());
    }

    #[test]
    fn fields_cannot_slide_into_each_other() {
        let a = CacheKey::new(
            b"c",
            Presented::Posted {
                client_id: "ab",
                client_secret: "c",
            },
            "client_credentials",
            None,
        );
        let b = CacheKey::new(
            b"c",
            Presented::Posted {
                client_id: "a",
                client_secret: "bc",
            },
            "client_credentials",
            None,
        );
        assert_ne!(a.hash(), b.hash());
        // A header value equal to the posted pair's encoding is still another key.
        let c = basic("ab");
        assert_ne!(a.hash(), c.hash());
    }

    #[test]
    fn debug_and_ids_hide_the_material() {
        let k = basic("Basic c2VjcmV0LXZhbHVl");
        let d = format!("{k:?}");
        assert!(!d.contains("c2VjcmV0"), "{d}");
        assert_eq!(k.short_id().len(), 8);
        assert_eq!(k.hex().len(), 64);
        assert!(k.hex().starts_with(&k.short_id()));
    }
}
