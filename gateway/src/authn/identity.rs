//! The verified caller: built from a token's claims only after its signature and claims
//! were checked.

use serde_json::{Map, Value};

/// The identity a verified access token carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// Principal id: `identityId`, else `sub`, else `client_id`.
    pub principal_id: String,
    pub sub: Option<String>,
    pub issuer: String,
    pub workspace_id: Option<String>,
    pub account_id: Option<String>,
    pub user_id: Option<String>,
    pub context: Option<String>,
    pub platform: Option<String>,
    pub role: Option<String>,
    pub scopes: Vec<String>,
    pub client_id: Option<String>,
    pub token_use: Option<String>,
    pub premium: bool,
    pub onboarding_completed: bool,
    pub department: Option<String>,
    /// Expiry (seconds since the epoch).
    pub exp: u64,
    /// Serialised forms every request of this identity needs, made at first use.
    pub derived: Derived,
}

/// Forms of an identity that each request would otherwise build again (an identity lives in
/// the token cache as long as its token): made once, at first use. A cache, not part of the
/// identity: clones start empty and equality ignores it.
#[derive(Default)]
pub struct Derived(std::sync::OnceLock<DerivedForms>);

/// See [`Derived`].
pub struct DerivedForms {
    /// The audit line's `claims`: [`Identity::claims`] serialised.
    pub claims_json: Box<serde_json::value::RawValue>,
    /// The signed assertion's identity claims, serialised ([`crate::forward`]).
    pub assertion_claims: Option<String>,
    /// The convenience headers for the backend, sanitised ([`crate::forward`]).
    pub headers: Vec<(&'static str, http::HeaderValue)>,
}

impl Clone for Derived {
    fn clone(&self) -> Derived {
        Derived::default()
    }
}

impl PartialEq for Derived {
    fn eq(&self, _: &Derived) -> bool {
        true
    }
}

impl std::fmt::Debug for Derived {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Derived")
    }
}

impl Identity {
    /// Build from verified claims. Non-string values of string claims are ignored.
    pub fn from_claims(claims: &Map<String, Value>) -> Option<Identity> {
        let s = |k: &str| {
            claims
                .get(k)
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        let principal_id = s("identityId")
            .or_else(|| s("sub"))
            .or_else(|| s("client_id"))?;
        let scopes = match claims.get("scope").or_else(|| claims.get("scp")) {
            Some(Value::String(text)) => text.split_whitespace().map(str::to_string).collect(),
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            _ => Vec::new(),
        };
        Some(Identity {
            principal_id,
            sub: s("sub"),
            issuer: s("iss").unwrap_or_default(),
            workspace_id: s("workspaceId"),
            account_id: s("accountId"),
            user_id: s("userId"),
            context: s("context"),
            platform: s("platform"),
            role: s("role"),
            scopes,
            client_id: s("client_id"),
            token_use: s("token_use"),
            premium: flag(claims.get("premium")),
            onboarding_completed: flag(claims.get("onboardingCompleted")),
            department: s("department"),
            exp: claims.get("exp").and_then(Value::as_u64).unwrap_or(0),
            derived: Derived::default(),
        })
    }

    /// The claims this identity was built from, as far as decisions use them: what the audit
    /// log records so a decision can be replayed (never the token itself).
    pub fn to_claims(&self) -> Map<String, Value> {
        match serde_json::to_value(self.claims()) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        }
    }

    /// [`Identity::to_claims`] as a value that serialises straight to JSON (the audit line is
    /// written per request: no map is built).
    pub fn claims(&self) -> ClaimsView<'_> {
        ClaimsView(self)
    }

    /// The identity's serialised forms (made at the first call).
    pub fn derived(&self) -> &DerivedForms {
        self.derived.0.get_or_init(|| DerivedForms {
            claims_json: serde_json::value::to_raw_value(&self.claims())
                .unwrap_or_else(|_| serde_json::value::to_raw_value(&()).expect("null")),
            assertion_claims: crate::forward::assertion_claims(self),
            headers: crate::forward::identity_headers(self),
        })
    }

    /// Whether this is a machine-to-machine caller.
    pub fn is_m2m(&self) -> bool {
        self.platform.as_deref() == Some("m2m")
    }
}

/// Boolean claims arrive as JSON booleans or, from IdPs with string-only custom attributes,
/// as "true"/"false".
fn flag(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

/// The claims of an identity, serialised in the order [`Identity::to_claims`] lists them.
pub struct ClaimsView<'a>(&'a Identity);

impl serde::Serialize for ClaimsView<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let id = self.0;
        let mut m = serializer.serialize_map(None)?;
        let optional = [
            ("sub", id.sub.as_deref()),
            ("iss", Some(id.issuer.as_str()).filter(|i| !i.is_empty())),
            ("workspaceId", id.workspace_id.as_deref()),
            ("accountId", id.account_id.as_deref()),
            ("userId", id.user_id.as_deref()),
            ("context", id.context.as_deref()),
            ("platform", id.platform.as_deref()),
            ("role", id.role.as_deref()),
            ("client_id", id.client_id.as_deref()),
            ("token_use", id.token_use.as_deref()),
            ("department", id.department.as_deref()),
        ];
        for (k, v) in optional {
            if let Some(v) = v {
                m.serialize_entry(k, v)?;
            }
        }
        if id.sub.as_deref() != Some(id.principal_id.as_str())
            && id.client_id.as_deref() != Some(id.principal_id.as_str())
        {
            m.serialize_entry("identityId", &id.principal_id)?;
        }
        m.serialize_entry("scope", &ScopeList(&id.scopes))?;
        m.serialize_entry("premium", &id.premium)?;
        m.serialize_entry("onboardingCompleted", &id.onboarding_completed)?;
        m.serialize_entry("exp", &id.exp)?;
        m.end()
    }
}

/// Scopes as one space-separated string, without joining them into a new `String`.
struct ScopeList<'a>(&'a [String]);

impl serde::Serialize for ScopeList<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Joined<'a>(&'a [String]);
        impl std::fmt::Display for Joined<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                for (i, s) in self.0.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" ")?;
                    }
                    f.write_str(s)?;
                }
                Ok(())
            }
        }
        serializer.collect_str(&Joined(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn id(v: Value) -> Option<Identity> {
        Identity::from_claims(v.as_object().unwrap())
    }

    #[test]
    fn principal_id_precedence() {
        assert_eq!(
            id(json!({"identityId":"i","sub":"s","client_id":"c"}))
                .unwrap()
                .principal_id,
            "i"
        );
        assert_eq!(
            id(json!({"sub":"s","client_id":"c"})).unwrap().principal_id,
            "s"
        );
        assert_eq!(id(json!({"client_id":"c"})).unwrap().principal_id, "c");
        assert!(id(json!({"workspaceId":"w"})).is_none());
    }

    #[test]
    fn claims_round_trip() {
        for v in [
            json!({"identityId":"i","sub":"s","workspaceId":"w","role":"Admin","scope":"a b","premium":true,"exp":5}),
            json!({"client_id":"c","platform":"m2m","scope":"app/read","token_use":"access"}),
        ] {
            let a = id(v).unwrap();
            let b = Identity::from_claims(&a.to_claims()).unwrap();
            assert_eq!(a, b);
        }
    }

    #[test]
    fn claims_are_read_leniently_but_safely() {
        let i = id(json!({"sub":"s","scope":"a b  a","premium":"true","onboardingCompleted":true,"role":7})).unwrap();
        assert_eq!(i.scopes, ["a", "b", "a"]);
        assert!(i.premium && i.onboarding_completed);
        assert_eq!(i.role, None);
        let i = id(json!({"sub":"s","scp":["x"],"premium":1})).unwrap();
        assert_eq!(i.scopes, ["x"]);
        assert!(!i.premium);
    }
}
