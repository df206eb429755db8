//! Stage 9: what the backend receives. Inbound identity headers are dropped (no spoofing),
//! the bearer token is not forwarded, and the verified identity travels as a short-lived
//! HS256 assertion bound to the request's method and path, plus plain convenience headers
//! the backend must not trust.

use std::path::Path;

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use pingora::http::RequestHeader;

use crate::authn::Identity;

/// Header prefixes and names that only the gateway may set.
const IDENTITY_HEADER_PREFIXES: &[&str] = &[
    "x-cedargate-",
    "x-identity-",
    "x-principal-",
    "x-amzn-oidc-",
    "x-auth-",
];
const IDENTITY_HEADERS: &[&str] = &[
    "authorization",
    "x-user-id",
    "x-workspace-id",
    "x-account-id",
    "x-client-id",
    "x-role",
    "x-scope",
    "x-forwarded-user",
    "x-remote-user",
    "x-impersonated-by",
    "cookie",
];

/// Signs the per-request identity assertion: a compact HS256 JWT, put together here rather
/// than by `jsonwebtoken::encode` (one per request: the fixed header is encoded once, the HMAC
/// key is prepared once, and the claims are serialised straight into the token). The backend
/// verifies it with `jsonwebtoken`.
pub struct AssertionSigner {
    key: hmac::Key,
    ttl_seconds: u64,
}

/// `{"typ":"JWT","alg":"HS256"}`, base64url-encoded.
const HS256_HEADER: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9";

/// Load the shared assertion secret from the data dir, creating it (0600) on first start.
pub fn load_or_create_secret(data_dir: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join("assertion.key");
    match std::fs::read(&path) {
        Ok(bytes) if bytes.len() >= 32 => return Ok(bytes),
        Ok(_) => {
            return Err(std::io::Error::other(format!(
                "{} is too short",
                path.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut secret = vec![0u8; 32];
    rand::fill(&mut secret[..]);
    let tmp = data_dir.join(format!("assertion.key.{}.tmp", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&secret)?;
    f.sync_all()?;
    // hard_link fails if another process created the key first: then use theirs.
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(secret),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read(&path),
        Err(e) => Err(e),
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl AssertionSigner {
    /// A signer with the shared secret.
    pub fn new(secret: &[u8], ttl_seconds: u64) -> AssertionSigner {
        AssertionSigner {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            ttl_seconds,
        }
    }

    /// Sign the identity for one request.
    /// `acting_for` is the user an M2M caller impersonates (`X-User-ID`), when allowed, as the
    /// directory describes them.
    pub fn sign(
        &self,
        identity: &Identity,
        acting_for: Option<&crate::delegation::DelegatedUser>,
        method: &str,
        path: &str,
        request_id: &str,
    ) -> Option<String> {
        let iat = now_secs();
        let exp = iat + self.ttl_seconds;
        let known = match acting_for {
            None => identity.derived().assertion_claims.as_deref(),
            Some(_) => None,
        };
        let payload = match known {
            // The identity's claims were serialised at its first request: only the request's
            // own claims are written here.
            Some(identity_claims) => {
                let mut p = Vec::with_capacity(
                    160 + method.len() + path.len() + request_id.len() + identity_claims.len(),
                );
                request_claims(&mut p, iat, exp, method, path, request_id);
                p.extend_from_slice(identity_claims.as_bytes());
                p
            }
            None => {
                let claims = claims(identity, acting_for, iat, exp, method, path, request_id);
                serde_json::to_vec(&claims).ok()?
            }
        };
        let mut token = String::with_capacity(HS256_HEADER.len() + payload.len() * 4 / 3 + 52);
        token.push_str(HS256_HEADER);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let tag = hmac::sign(&self.key, token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(tag.as_ref(), &mut token);
        Some(token)
    }
}

/// The assertion's claims for one request.
fn claims(
    identity: &Identity,
    acting_for: Option<&crate::delegation::DelegatedUser>,
    iat: u64,
    exp: u64,
    method: &str,
    path: &str,
    request_id: &str,
) -> backend::Assertion {
    backend::Assertion {
        iss: backend::ASSERTION_ISSUER.to_string(),
        aud: backend::ASSERTION_AUDIENCE.to_string(),
        iat,
        exp,
        htm: method.to_string(),
        htu: path.to_string(),
        rid: request_id.to_string(),
        sub: identity.principal_id.clone(),
        workspace_id: identity.workspace_id.clone().unwrap_or_default(),
        role: identity.role.clone(),
        platform: identity.platform.clone().unwrap_or_default(),
        scope: identity.scopes.join(" "),
        client_id: identity.client_id.clone(),
        user_id: match acting_for {
            Some(user) => Some(user.user_id.clone()),
            None => identity.user_id.clone().or_else(|| identity.sub.clone()),
        },
        department: identity.department.clone(),
        premium: identity.premium,
        onboarding_completed: identity.onboarding_completed,
        context: identity.context.clone(),
        impersonated_by: acting_for.map(|_| identity.principal_id.clone()),
        lang: acting_for.and_then(|u| u.lang.clone()),
        timezone: acting_for.and_then(|u| u.timezone.clone()),
    }
}

/// The JSON of `backend::Assertion` up to and including its per-request claims (`iss` to
/// `rid`, the struct's first fields, in its order), without the closing brace.
fn request_claims(out: &mut Vec<u8>, iat: u64, exp: u64, method: &str, path: &str, rid: &str) {
    let mut digits = itoa::Buffer::new();
    let string = |out: &mut Vec<u8>, name: &[u8], value: &str| {
        out.extend_from_slice(name);
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, value);
    };
    string(out, b"{\"iss\":", backend::ASSERTION_ISSUER);
    string(out, b",\"aud\":", backend::ASSERTION_AUDIENCE);
    out.extend_from_slice(b",\"iat\":");
    out.extend_from_slice(digits.format(iat).as_bytes());
    out.extend_from_slice(b",\"exp\":");
    out.extend_from_slice(digits.format(exp).as_bytes());
    string(out, b",\"htm\":", method);
    string(out, b",\"htu\":", path);
    string(out, b",\"rid\":", rid);
}

/// The rest of the assertion's JSON for an identity acting for itself (from its `sub` claim
/// to the closing brace), the same for all its requests: [`AssertionSigner::sign`] appends it
/// to [`request_claims`]. `None` if serde's output does not start as `request_claims` writes
/// (then every request serialises the whole assertion).
pub fn assertion_claims(identity: &Identity) -> Option<String> {
    let whole = serde_json::to_vec(&claims(identity, None, 0, 0, "", "", "")).ok()?;
    let mut head = Vec::new();
    request_claims(&mut head, 0, 0, "", "", "");
    let rest = whole.strip_prefix(head.as_slice())?;
    String::from_utf8(rest.to_vec()).ok()
}

/// The convenience headers for an identity, sanitised.
pub fn identity_headers(identity: &Identity) -> Vec<(&'static str, http::HeaderValue)> {
    [
        ("x-cedargate-principal-id", Some(&identity.principal_id)),
        ("x-cedargate-workspace-id", identity.workspace_id.as_ref()),
        ("x-cedargate-role", identity.role.as_ref()),
        ("x-cedargate-platform", identity.platform.as_ref()),
        ("x-cedargate-client-id", identity.client_id.as_ref()),
    ]
    .into_iter()
    .filter_map(|(name, value)| {
        let value = http::HeaderValue::from_str(&sanitize(value?)).ok()?;
        Some((name, value))
    })
    .collect()
}

/// Drop every inbound header that could claim an identity.
pub fn strip_identity_headers(req: &mut RequestHeader) {
    let doomed: Vec<http::HeaderName> = req
        .headers
        .keys()
        .filter(|name| {
            let n = name.as_str();
            IDENTITY_HEADERS.contains(&n)
                || IDENTITY_HEADER_PREFIXES.iter().any(|p| n.starts_with(p))
        })
        .cloned()
        .collect();
    for name in doomed {
        req.remove_header(&name);
    }
}

/// Set the assertion and the convenience headers on the upstream request.
pub fn add_identity_headers(
    req: &mut RequestHeader,
    identity: &Identity,
    assertion: &str,
) -> pingora::Result<()> {
    req.insert_header(backend::ASSERTION_HEADER, assertion)?;
    for (name, value) in &identity.derived().headers {
        req.insert_header(*name, value.clone())?;
    }
    Ok(())
}

/// Claim values are attacker-influenced: keep header values to visible ASCII.
fn sanitize(v: &str) -> String {
    v.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(256)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_segment_is_hs256() {
        assert_eq!(
            URL_SAFE_NO_PAD.decode(HS256_HEADER).unwrap(),
            br#"{"typ":"JWT","alg":"HS256"}"#
        );
    }

    /// The hand-made token is a JWT `jsonwebtoken` (the backend's verifier) accepts, and only
    /// under the same secret.
    #[test]
    fn assertions_verify_with_jsonwebtoken() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let signer = AssertionSigner::new(secret, 60);
        let claims = serde_json::json!({
            "sub": "u-1", "workspaceId": "ws-1", "role": "Member", "platform": "web",
            "scope": "app/read", "department": "Sales \"EMEA\" ✓",
        });
        let identity = Identity::from_claims(claims.as_object().unwrap()).expect("identity");
        let token = signer
            .sign(
                &identity,
                None,
                "GET",
                "/app/v1/workspaces/ws-1/missions",
                "rid-1",
            )
            .expect("signed");
        let verified = backend::AssertionVerifier::new(secret)
            .verify(&token, "GET", "/app/v1/workspaces/ws-1/missions")
            .expect("verifies");
        assert_eq!(verified.sub, "u-1");
        assert_eq!(verified.workspace_id, "ws-1");
        assert_eq!(verified.rid, "rid-1");
        assert_eq!(verified.department.as_deref(), Some("Sales \"EMEA\" ✓"));
        assert!(verified.exp > verified.iat);
        let other = backend::AssertionVerifier::new(b"another secret, 32 bytes long...");
        assert!(
            other
                .verify(&token, "GET", "/app/v1/workspaces/ws-1/missions")
                .is_err()
        );
        // Bound to the method and path.
        let same = backend::AssertionVerifier::new(secret);
        assert!(
            same.verify(&token, "POST", "/app/v1/workspaces/ws-1/missions")
                .is_err()
        );
    }

    /// The assertion written from the identity's serialised claims is, byte for byte, the
    /// backend's `Assertion` serialised whole (including claims that need escaping).
    #[test]
    fn prepared_claims_make_the_same_assertion() {
        let signer = AssertionSigner::new(b"0123456789abcdef0123456789abcdef", 60);
        for claims in [
            serde_json::json!({"sub": "u-1", "workspaceId": "ws-1", "role": "Member",
                "platform": "web", "scope": "app/read app/write", "premium": true,
                "department": "Sales \"EMEA\" \u{1} ✓", "context": "app"}),
            serde_json::json!({"client_id": "partner", "platform": "m2m", "scope": "app/read",
                "workspaceId": "ws-2"}),
        ] {
            let identity = Identity::from_claims(claims.as_object().unwrap()).unwrap();
            assert!(identity.derived().assertion_claims.is_some());
            let token = signer
                .sign(&identity, None, "GET", "/a/\"b\"", "rid \\ 1")
                .unwrap();
            let payload = URL_SAFE_NO_PAD
                .decode(token.split('.').nth(1).unwrap())
                .unwrap();
            let decoded: backend::Assertion = serde_json::from_slice(&payload).unwrap();
            let whole = claims_json(&identity, decoded.iat, decoded.exp);
            assert_eq!(String::from_utf8(payload).unwrap(), whole);
            assert_eq!(decoded.exp, decoded.iat + 60);
        }
    }

    fn claims_json(identity: &Identity, iat: u64, exp: u64) -> String {
        serde_json::to_string(&claims(
            identity, None, iat, exp, "GET", "/a/\"b\"", "rid \\ 1",
        ))
        .unwrap()
    }

    #[test]
    fn identity_headers_are_stripped() {
        let mut req = RequestHeader::build("GET", b"/x", None).unwrap();
        for h in [
            "X-Cedargate-Assertion",
            "x-cedargate-role",
            "X-User-Id",
            "Authorization",
            "X-Forwarded-User",
            "Accept",
        ] {
            req.insert_header(h, "v").unwrap();
        }
        strip_identity_headers(&mut req);
        let left: Vec<_> = req.headers.keys().map(|k| k.as_str().to_string()).collect();
        assert_eq!(left, ["accept"]);
    }

    #[test]
    fn secret_is_created_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_secret(dir.path()).unwrap();
        let b = load_or_create_secret(dir.path()).unwrap();
        assert_eq!(a, b);
        let mode = std::fs::metadata(dir.path().join("assertion.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
