//! Stage 4: bearer-token authentication.
//!
//! A token is accepted only when its header names an allow-listed asymmetric algorithm and a
//! `kid` we hold a key for, its signature verifies with that key, its `iss` is exactly the
//! key's issuer, `exp`/`nbf` hold within the leeway and `token_use` is `access`. Verified
//! identities are cached by the token's SHA-256 until the token expires.

mod identity;
pub mod keys;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Validation, decode, decode_header};
use moka::sync::Cache;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

pub use identity::{ClaimsView, Identity};
pub use keys::{KeyRing, KeySource};

use crate::config::AuthnSettings;
use crate::error::GatewayError;

/// Why a token was refused; mapped to the error envelope by [`AuthnError::into_gateway`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthnError {
    Missing,
    Malformed,
    Invalid(&'static str),
    Expired,
    NoKeys,
}

impl AuthnError {
    /// The pipeline error this becomes.
    pub fn into_gateway(self) -> GatewayError {
        match self {
            Self::Missing => GatewayError::MissingToken,
            Self::Malformed => {
                GatewayError::InvalidToken("the Authorization header is not a Bearer token")
            }
            Self::Invalid(why) => GatewayError::InvalidToken(why),
            Self::Expired => GatewayError::ExpiredToken,
            Self::NoKeys => GatewayError::IssuerUnavailable,
        }
    }
}

struct ExpireAtTokenExp;

impl moka::Expiry<[u8; 32], Arc<Identity>> for ExpireAtTokenExp {
    fn expire_after_create(
        &self,
        _k: &[u8; 32],
        v: &Arc<Identity>,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(v.exp.saturating_sub(now_secs())))
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Verifies bearer tokens against the key ring; caches verified identities.
pub struct Verifier {
    settings: AuthnSettings,
    keys: KeyRing,
    cache: Cache<[u8; 32], Arc<Identity>>,
}

/// Extract the token from an `Authorization` header value (scheme case-insensitive).
pub fn bearer_token(header: Option<&[u8]>) -> Result<&str, AuthnError> {
    let Some(raw) = header else {
        return Err(AuthnError::Missing);
    };
    let text = std::str::from_utf8(raw)
        .map_err(|_| AuthnError::Malformed)?
        .trim();
    let (scheme, token) = text
        .split_once(' ')
        .ok_or(if text.eq_ignore_ascii_case("bearer") {
            AuthnError::Invalid("the bearer token is empty")
        } else {
            AuthnError::Malformed
        })?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthnError::Malformed);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthnError::Invalid("the bearer token is empty"));
    }
    Ok(token)
}

impl Verifier {
    /// A verifier over the given key ring.
    pub fn new(settings: AuthnSettings, keys: KeyRing) -> Verifier {
        let cache = Cache::builder()
            .max_capacity(settings.token_cache_capacity)
            .expire_after(ExpireAtTokenExp)
            .build();
        Verifier {
            settings,
            keys,
            cache,
        }
    }

    /// The key ring (for readiness and refresh).
    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// Verify a token and return the identity it carries.
    pub async fn verify(&self, token: &str) -> Result<Arc<Identity>, AuthnError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let cached = self.cache.get(&digest);
        crate::metrics::cache_lookup("token", cached.is_some());
        if let Some(identity) = cached {
            // The cache expires entries at `exp`; check again so a late eviction never admits.
            if identity.exp + self.settings.leeway_seconds > now_secs() {
                return Ok(identity);
            }
            self.cache.invalidate(&digest);
            return Err(AuthnError::Expired);
        }
        let identity = Arc::new(self.verify_uncached(token).await?);
        self.cache.insert(digest, identity.clone());
        Ok(identity)
    }

    /// Verify a token without the identity cache (what a cache miss costs; benches use it).
    pub async fn verify_uncached(&self, token: &str) -> Result<Identity, AuthnError> {
        let header =
            decode_header(token).map_err(|_| AuthnError::Invalid("the token is malformed"))?;
        if !self.settings.algorithms.contains(&header.alg) {
            return Err(AuthnError::Invalid("the token's algorithm is not allowed"));
        }
        let kid = header
            .kid
            .as_deref()
            .filter(|k| !k.is_empty())
            .ok_or(AuthnError::Invalid("the token has no key id"))?;
        let key = match self.keys.get(kid) {
            Some(k) => k,
            None => {
                if self.keys.is_empty() {
                    self.keys.refresh_if_due().await;
                    if self.keys.is_empty() {
                        return Err(AuthnError::NoKeys);
                    }
                } else {
                    self.keys.refresh_if_due().await;
                }
                self.keys
                    .get(kid)
                    .ok_or(AuthnError::Invalid("the token's key id is unknown"))?
            }
        };
        if key.algorithm.is_some_and(|a| a != header.alg) {
            return Err(AuthnError::Invalid(
                "the token's algorithm does not match its key",
            ));
        }
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.leeway = self.settings.leeway_seconds;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_issuer(&[key.issuer.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss"]);
        let data =
            decode::<Map<String, Value>>(token, &key.key, &validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::ExpiredSignature => AuthnError::Expired,
                    ErrorKind::ImmatureSignature => {
                        AuthnError::Invalid("the token is not valid yet")
                    }
                    ErrorKind::InvalidIssuer => {
                        AuthnError::Invalid("the token's issuer is not trusted")
                    }
                    ErrorKind::InvalidSignature => {
                        AuthnError::Invalid("the token's signature is invalid")
                    }
                    ErrorKind::MissingRequiredClaim(_) => {
                        AuthnError::Invalid("the token lacks a required claim")
                    }
                    _ => AuthnError::Invalid("the token is invalid"),
                }
            })?;
        let claims = data.claims;
        if claims.get("token_use").and_then(Value::as_str) != Some("access") {
            return Err(AuthnError::Invalid("only access tokens are accepted"));
        }
        let identity = Identity::from_claims(&claims)
            .ok_or(AuthnError::Invalid("the token names no subject"))?;
        if let Some(allowed) = &self.settings.allowed_client_ids
            && !identity
                .client_id
                .as_ref()
                .is_some_and(|c| allowed.contains(c))
        {
            return Err(AuthnError::Invalid("the token's client is not allowed"));
        }
        Ok(identity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token(Some(b"Bearer abc")), Ok("abc"));
        assert_eq!(bearer_token(Some(b"bEaReR   abc ")), Ok("abc"));
        assert_eq!(bearer_token(None), Err(AuthnError::Missing));
        assert_eq!(bearer_token(Some(b"Basic abc")), Err(AuthnError::Malformed));
        assert!(matches!(
            bearer_token(Some(b"Bearer")),
            Err(AuthnError::Invalid(_))
        ));
        assert!(matches!(
            bearer_token(Some(b"Bearer  ")),
            Err(AuthnError::Invalid(_))
        ));
        assert_eq!(bearer_token(Some(b"\xff\xfe")), Err(AuthnError::Malformed));
    }
}
