//! The gateway's identity assertion: an HS256 JWT in `X-Cedargate-Assertion`, bound to one
//! request's method and path. It is the only source of identity the backend trusts.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// The header carrying the assertion.
pub const ASSERTION_HEADER: &str = "x-cedargate-assertion";
/// The assertion's `iss`.
pub const ASSERTION_ISSUER: &str = "cedargate";
/// The assertion's `aud`.
pub const ASSERTION_AUDIENCE: &str = "cedargate-backend";
/// Clock skew allowed on `exp` and `iat`, in seconds.
pub const LEEWAY_SECONDS: u64 = 5;

/// Roles from most to least privileged.
pub const ROLES: [&str; 5] = ["Owner", "Admin", "Manager", "Member", "Viewer"];

/// The claims the gateway signs for one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assertion {
    /// Always [`ASSERTION_ISSUER`].
    pub iss: String,
    /// Always [`ASSERTION_AUDIENCE`].
    pub aud: String,
    /// Issued at (seconds since the epoch).
    pub iat: u64,
    /// Expires at (seconds since the epoch).
    pub exp: u64,
    /// The HTTP method the assertion is bound to.
    pub htm: String,
    /// The request path (no query) the assertion is bound to.
    pub htu: String,
    /// The request id.
    #[serde(default)]
    pub rid: String,
    /// The principal id.
    pub sub: String,
    /// The caller's workspace.
    #[serde(rename = "workspaceId")]
    pub workspace_id: String,
    /// The caller's role, for humans.
    #[serde(default)]
    pub role: Option<String>,
    /// `web`, `mobile`, `m2m`, ...
    #[serde(default)]
    pub platform: String,
    /// Space-separated scopes.
    #[serde(default)]
    pub scope: String,
    /// The OAuth client id, for M2M callers.
    #[serde(rename = "clientId", default)]
    pub client_id: Option<String>,
    /// The end user the request acts for (impersonated or own).
    #[serde(rename = "userId", default)]
    pub user_id: Option<String>,
    /// The caller's department.
    #[serde(default)]
    pub department: Option<String>,
    /// Whether the caller has a premium subscription.
    #[serde(default)]
    pub premium: bool,
    /// Whether the caller finished onboarding.
    #[serde(rename = "onboardingCompleted", default)]
    pub onboarding_completed: bool,
    /// `app` or `dashboard`.
    #[serde(default)]
    pub context: Option<String>,
    /// The M2M principal that impersonates `user_id`, when delegated.
    #[serde(rename = "impersonatedBy", default)]
    pub impersonated_by: Option<String>,
    /// The delegated user's language (from the directory), when delegated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lang: Option<String>,
    /// The delegated user's time zone (from the directory), when delegated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

impl Assertion {
    /// The end user this request is for: `userId`, else `sub`.
    pub fn user_id(&self) -> &str {
        match self.user_id.as_deref() {
            Some(u) if !u.is_empty() => u,
            _ => &self.sub,
        }
    }

    /// Whether the caller is a machine client.
    pub fn is_m2m(&self) -> bool {
        self.platform == "m2m"
    }

    /// The role's rank (0 = Owner), for humans with a known role.
    pub fn role_rank(&self) -> Option<usize> {
        let role = self.role.as_deref()?;
        ROLES.iter().position(|r| *r == role)
    }

    /// Whether the caller may see premium content: premium, Manager and up, or M2M.
    pub fn premium_entitled(&self) -> bool {
        self.premium || self.is_m2m() || self.role_rank().is_some_and(|r| r <= 2)
    }
}

/// Checks assertions against the shared secret.
pub struct AssertionVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for AssertionVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AssertionVerifier")
    }
}

impl AssertionVerifier {
    /// A verifier for assertions signed with `secret`.
    pub fn new(secret: &[u8]) -> AssertionVerifier {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_exp = true;
        validation.set_issuer(&[ASSERTION_ISSUER]);
        validation.set_audience(&[ASSERTION_AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        AssertionVerifier {
            key: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Verify `token` for a request of `method` on `path` (no query).
    pub fn verify(&self, token: &str, method: &str, path: &str) -> Result<Assertion, ApiError> {
        const BAD: ApiError = ApiError::InvalidAssertion("the gateway assertion is invalid");
        if token.is_empty() || token.len() > 16 * 1024 {
            return Err(BAD);
        }
        let claims = jsonwebtoken::decode::<Assertion>(token, &self.key, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    ApiError::InvalidAssertion("the gateway assertion has expired")
                }
                _ => BAD,
            })?
            .claims;
        // jsonwebtoken accepts an array `aud`/`iss` that merely contains ours; the typed claims
        // already refuse arrays, this keeps the check exact whatever the library does.
        if claims.iss != ASSERTION_ISSUER || claims.aud != ASSERTION_AUDIENCE {
            return Err(BAD);
        }
        if claims.iat > crate::clock::unix_now() + LEEWAY_SECONDS {
            return Err(ApiError::InvalidAssertion(
                "the gateway assertion is issued in the future",
            ));
        }
        if claims.htm != method || claims.htu != path {
            return Err(ApiError::InvalidAssertion(
                "the gateway assertion is bound to another request",
            ));
        }
        if claims.workspace_id.is_empty() || claims.sub.is_empty() {
            return Err(ApiError::InvalidAssertion(
                "the gateway assertion has no workspace or subject",
            ));
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{KEY, assertion, sign, sign_with};

    fn verifier() -> AssertionVerifier {
        AssertionVerifier::new(KEY)
    }

    fn code(r: Result<Assertion, ApiError>) -> &'static str {
        r.err().map(|e| e.code()).unwrap_or("ok")
    }

    #[test]
    fn a_good_assertion_verifies() {
        let a = assertion("GET", "/app/v1/workspaces/ws-demo/points", "ws-demo");
        let got = verifier()
            .verify(&sign(&a), "GET", "/app/v1/workspaces/ws-demo/points")
            .unwrap();
        assert_eq!(got, a);
    }

    #[test]
    fn json_field_names_are_camel_case() {
        let v = serde_json::to_value(assertion("GET", "/p", "ws")).unwrap();
        for k in [
            "workspaceId",
            "clientId",
            "userId",
            "onboardingCompleted",
            "impersonatedBy",
        ] {
            assert!(v.get(k).is_some(), "{k} in {v}");
        }
    }

    #[test]
    fn a_bad_signature_is_refused() {
        let a = assertion("GET", "/p", "ws");
        let forged = sign_with(&a, b"another-secret-another-secret-xx", Algorithm::HS256);
        assert_eq!(
            code(verifier().verify(&forged, "GET", "/p")),
            "auth/invalid_assertion"
        );
        assert_eq!(
            code(verifier().verify("junk", "GET", "/p")),
            "auth/invalid_assertion"
        );
        assert_eq!(
            code(verifier().verify("", "GET", "/p")),
            "auth/invalid_assertion"
        );
    }

    #[test]
    fn other_algorithms_are_refused() {
        let a = assertion("GET", "/p", "ws");
        let hs384 = sign_with(&a, KEY, Algorithm::HS384);
        assert_eq!(
            code(verifier().verify(&hs384, "GET", "/p")),
            "auth/invalid_assertion"
        );
    }

    #[test]
    fn expired_is_refused_within_leeway_is_not() {
        let now = crate::clock::unix_now();
        let mut a = assertion("GET", "/p", "ws");
        a.iat = now - 100;
        a.exp = now - 30;
        assert_eq!(
            code(verifier().verify(&sign(&a), "GET", "/p")),
            "auth/invalid_assertion"
        );
        a.exp = now - 2;
        assert_eq!(code(verifier().verify(&sign(&a), "GET", "/p")), "ok");
    }

    #[test]
    fn wrong_issuer_or_audience_is_refused() {
        let mut a = assertion("GET", "/p", "ws");
        a.iss = "someone-else".into();
        assert_eq!(
            code(verifier().verify(&sign(&a), "GET", "/p")),
            "auth/invalid_assertion"
        );
        let mut a = assertion("GET", "/p", "ws");
        a.aud = "other".into();
        assert_eq!(
            code(verifier().verify(&sign(&a), "GET", "/p")),
            "auth/invalid_assertion"
        );
    }

    #[test]
    fn it_cannot_be_replayed_onto_another_request() {
        let a = assertion("GET", "/app/v1/workspaces/ws/points", "ws");
        let t = sign(&a);
        let v = verifier();
        assert_eq!(
            code(v.verify(&t, "POST", "/app/v1/workspaces/ws/points")),
            "auth/invalid_assertion"
        );
        assert_eq!(
            code(v.verify(&t, "GET", "/app/v1/workspaces/ws/missions")),
            "auth/invalid_assertion"
        );
        assert_eq!(
            code(v.verify(&t, "get", "/app/v1/workspaces/ws/points")),
            "auth/invalid_assertion"
        );
    }

    #[test]
    fn entitlement_and_user() {
        let mut a = assertion("GET", "/p", "ws");
        a.premium = false;
        a.role = Some("Member".into());
        assert!(!a.premium_entitled());
        a.role = Some("Manager".into());
        assert!(a.premium_entitled());
        a.role = None;
        a.platform = "m2m".into();
        assert!(a.premium_entitled());
        a.user_id = None;
        assert_eq!(a.user_id(), a.sub);
        a.user_id = Some(String::new());
        assert_eq!(a.user_id(), a.sub);
    }
}
