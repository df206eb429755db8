//! RS256 signing keys: generation, PEM (PKCS#8) encoding, kid derivation, the public JWK and
//! JWS compact signing.

use std::fmt;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::error::IssuerError;

const PKCS8_LABEL: &str = "PRIVATE KEY";
const PKCS1_LABEL: &str = "RSA PRIVATE KEY";

/// One RSA key pair with its derived public identity. The private half never leaves this
/// type (its `Debug` shows the kid only).
pub(crate) struct SigningKey {
    pair: RsaKeyPair,
    kid: String,
    n: String,
    e: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    &bytes[start..]
}

impl SigningKey {
    /// A fresh 2048-bit key.
    pub(crate) fn generate() -> Result<SigningKey, IssuerError> {
        let pair = RsaKeyPair::generate(KeySize::Rsa2048)
            .map_err(|_| IssuerError::Crypto("RSA key generation failed"))?;
        SigningKey::from_pair(pair)
    }

    fn from_pair(pair: RsaKeyPair) -> Result<SigningKey, IssuerError> {
        let public = pair.public_key();
        let spki = public
            .as_der()
            .map_err(|_| IssuerError::Crypto("encoding the public key failed"))?;
        let digest = Sha256::digest(spki.as_ref());
        let kid = URL_SAFE_NO_PAD.encode(&digest[..16]);
        let n = URL_SAFE_NO_PAD.encode(strip_leading_zeros(
            public.modulus().big_endian_without_leading_zero(),
        ));
        let e = URL_SAFE_NO_PAD.encode(strip_leading_zeros(
            public.exponent().big_endian_without_leading_zero(),
        ));
        Ok(SigningKey { pair, kid, n, e })
    }

    /// Parse a PEM file: PKCS#8 `PRIVATE KEY` (what this crate writes) or PKCS#1
    /// `RSA PRIVATE KEY` (what `openssl genrsa -traditional` writes). `Err` is a reason that
    /// never quotes the file.
    pub(crate) fn from_pem(text: &[u8]) -> Result<SigningKey, String> {
        let text = std::str::from_utf8(text).map_err(|_| "not a PEM text file".to_string())?;
        let (label, der) = pem_decode(text)?;
        let pair = match label {
            PKCS8_LABEL => RsaKeyPair::from_pkcs8(&der),
            PKCS1_LABEL => RsaKeyPair::from_der(&der),
            other => {
                return Err(format!(
                    "unsupported PEM block `{other}` (want PRIVATE KEY)"
                ));
            }
        }
        .map_err(|e| format!("not a usable RSA private key ({e})"))?;
        if pair.public_modulus_len() < 256 {
            return Err("RSA keys must have at least 2048 bits".into());
        }
        SigningKey::from_pair(pair).map_err(|e| e.to_string())
    }

    /// The private key as PKCS#8 PEM, for the key file.
    pub(crate) fn to_pem(&self) -> Result<String, IssuerError> {
        let der = self
            .pair
            .as_der()
            .map_err(|_| IssuerError::Crypto("encoding the private key failed"))?;
        Ok(pem_encode(PKCS8_LABEL, der.as_ref()))
    }

    pub(crate) fn kid(&self) -> &str {
        &self.kid
    }

    /// Base64url modulus and exponent, as in the JWK.
    pub(crate) fn components(&self) -> (&str, &str) {
        (&self.n, &self.e)
    }

    /// The public JWK (RFC 7517/7518): no private members.
    pub(crate) fn jwk(&self) -> Value {
        json!({"kty": "RSA", "kid": self.kid, "use": "sig", "alg": "RS256", "n": self.n, "e": self.e})
    }

    /// Sign `claims` as a compact JWS with header `{"alg":"RS256","typ":"JWT","kid":...}`.
    ///
    /// Signs with the parsed aws-lc key directly: `jsonwebtoken::encode` would re-parse and
    /// re-check the DER key on every call. The start-up self-test verifies the output with
    /// jsonwebtoken, so both sides agree on the format.
    pub(crate) fn sign_jwt(&self, claims: &Map<String, Value>) -> Result<String, IssuerError> {
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": self.kid});
        let header = serde_json::to_vec(&header).map_err(|e| IssuerError::Claims(e.to_string()))?;
        let payload = serde_json::to_vec(claims).map_err(|e| IssuerError::Claims(e.to_string()))?;
        let mut token = String::with_capacity((header.len() + payload.len()) * 4 / 3 + 350);
        URL_SAFE_NO_PAD.encode_string(&header, &mut token);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let mut signature = vec![0u8; self.pair.public_modulus_len()];
        let rng = aws_lc_rs::rand::SystemRandom::new();
        self.pair
            .sign(&RSA_PKCS1_SHA256, &rng, token.as_bytes(), &mut signature)
            .map_err(|_| IssuerError::Crypto("RSA signing failed"))?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&signature, &mut token);
        Ok(token)
    }
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        // Base64 output is ASCII, so any chunk boundary is a char boundary.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The label and DER bytes of the first PEM block in `text`.
fn pem_decode(text: &str) -> Result<(&str, Vec<u8>), String> {
    let mut lines = text.lines().map(str::trim);
    let label = lines
        .by_ref()
        .find_map(|l| {
            l.strip_prefix("-----BEGIN ")
                .and_then(|l| l.strip_suffix("-----"))
        })
        .ok_or("no PEM BEGIN line")?;
    let end = format!("-----END {label}-----");
    let mut b64 = String::new();
    for line in lines.by_ref() {
        if line == end {
            let der = STANDARD
                .decode(b64.as_bytes())
                .map_err(|_| "bad base64 in the PEM block".to_string())?;
            return Ok((label, der));
        }
        if line.contains(':') {
            return Err("encrypted or annotated PEM keys are not supported".into());
        }
        b64.push_str(line);
    }
    Err(format!("no `{end}` line"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_keeps_the_kid() {
        let key = SigningKey::generate().unwrap();
        let pem = key.to_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "PKCS#8");
        assert!(pem.lines().all(|l| l.len() <= 64));
        let back = SigningKey::from_pem(pem.as_bytes()).unwrap();
        assert_eq!(back.kid(), key.kid());
        assert_eq!(back.components(), key.components());
        assert!(
            !format!("{back:?}").contains(&pem[30..60]),
            "Debug shows no key material"
        );
    }

    #[test]
    fn jwk_components_are_minimal_base64url() {
        let key = SigningKey::generate().unwrap();
        let (n, e) = key.components();
        assert_eq!(e, "AQAB");
        let n = URL_SAFE_NO_PAD.decode(n).unwrap();
        assert_eq!(n.len(), 256, "2048-bit modulus, no leading zero byte");
        assert_ne!(n[0], 0);
        assert_eq!(key.kid().len(), 22, "16 bytes, base64url without padding");
        let jwk = key.jwk();
        for private in ["d", "p", "q", "dp", "dq", "qi"] {
            assert!(jwk.get(private).is_none());
        }
    }

    #[test]
    fn bad_pem_is_explained() {
        assert!(
            SigningKey::from_pem(b"hello")
                .unwrap_err()
                .contains("BEGIN")
        );
        let e =
            SigningKey::from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
                .unwrap_err();
        assert!(e.contains("RSA private key"), "{e}");
        let e =
            SigningKey::from_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
                .unwrap_err();
        assert!(e.contains("CERTIFICATE"), "{e}");
    }
}
