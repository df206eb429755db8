//! The issuer's configuration as the gateway hands it over, and its validation into the
//! internal form the token endpoint works with.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use serde_json::{Map, Value};

use crate::error::IssuerError;
use crate::secret;

/// Claims the issuer sets itself on client_credentials tokens; a client's tenant claims may
/// not use these names.
pub(crate) const RESERVED_CLAIMS: &[&str] = &[
    "iss",
    "sub",
    "client_id",
    "scope",
    "token_use",
    "iat",
    "exp",
    "nbf",
    "jti",
];

/// One OAuth2 client of the embedded issuer.
#[derive(Clone, Default)]
pub struct ClientConfig {
    pub client_id: String,
    /// argon2 PHC string of the client secret (never the secret itself).
    pub secret_hash: String,
    pub scopes: Vec<String>,
    /// Tenant claims copied into every token of this client (workspaceId, accountId, ...).
    pub claims: Map<String, Value>,
    pub token_ttl_seconds: Option<u64>,
    pub description: Option<String>,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("client_id", &self.client_id)
            .field("secret_hash", &"<redacted>")
            .field("scopes", &self.scopes)
            .field("claims", &self.claims)
            .field("token_ttl_seconds", &self.token_ttl_seconds)
            .field("description", &self.description)
            .finish()
    }
}

/// The embedded issuer's configuration.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    /// The `iss` of every token, e.g. `http://127.0.0.1:8081`.
    pub issuer: String,
    /// Base URL of the auth listener as clients reach it; discovery URLs are built on it.
    pub public_base_url: String,
    /// Token lifetime for clients without their own.
    pub token_ttl_seconds: u64,
    pub clients: Vec<ClientConfig>,
}

/// A validated client.
pub(crate) struct Client {
    /// SHA-256 over everything that shapes this client's tokens (issuer, id, secret hash,
    /// scopes, claims, lifetime): token cache keys include it, so a changed client never
    /// meets entries made under its old configuration.
    pub fingerprint: [u8; 32],
    pub secret_hash: String,
    pub scopes: BTreeSet<String>,
    pub claims: Map<String, Value>,
    pub ttl_seconds: u64,
}

/// The validated configuration.
pub(crate) struct Settings {
    pub issuer: String,
    pub public_base_url: String,
    pub default_ttl_seconds: u64,
    pub clients: HashMap<String, Client>,
}

/// RFC 6749 §3.3 scope-token: 1*( %x21 / %x23-5B / %x5D-7E ).
pub(crate) fn is_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E))
}

fn client_fingerprint(issuer: &str, id: &str, c: &ClientConfig, ttl_seconds: u64) -> [u8; 32] {
    use aws_lc_rs::digest::{Context, SHA256};
    let mut ctx = Context::new(&SHA256);
    let mut field = |bytes: &[u8]| {
        ctx.update(&(bytes.len() as u64).to_be_bytes());
        ctx.update(bytes);
    };
    field(b"cedargate/issuer-client/v1");
    field(issuer.as_bytes());
    field(id.as_bytes());
    field(c.secret_hash.as_bytes());
    let scopes: BTreeSet<&str> = c.scopes.iter().map(String::as_str).collect();
    for s in scopes {
        field(s.as_bytes());
    }
    // The same config serialises alike; a reordered one at worst costs a cache miss.
    field(&serde_json::to_vec(&c.claims).unwrap_or_default());
    field(&ttl_seconds.to_be_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

impl IssuerConfig {
    /// Check the configuration as `Issuer::open` would, without touching any key.
    pub fn check(&self) -> Result<(), IssuerError> {
        Settings::validate(self.clone()).map(|_| ())
    }
}

impl Settings {
    pub(crate) fn validate(cfg: IssuerConfig) -> Result<Settings, IssuerError> {
        let bad = |m: String| Err(IssuerError::Config(m));
        if cfg.issuer.trim().is_empty() {
            return bad("`issuer` must not be empty".into());
        }
        if cfg.token_ttl_seconds == 0 {
            return bad("`token_ttl_seconds` must be positive".into());
        }
        let base = cfg.public_base_url.trim_end_matches('/');
        let public_base_url = if base.is_empty() {
            cfg.issuer.trim_end_matches('/').to_string()
        } else {
            base.to_string()
        };
        let mut clients = HashMap::with_capacity(cfg.clients.len());
        for c in cfg.clients {
            let id = c.client_id.clone();
            if id.is_empty() || id.contains(':') || id.chars().any(char::is_control) {
                return bad(format!(
                    "client id {id:?} must be non-empty, without ':' or control characters"
                ));
            }
            if let Err(e) = secret::check_phc(&c.secret_hash) {
                return bad(format!("client `{id}`: secret_hash: {e}"));
            }
            if let Some(s) = c.scopes.iter().find(|s| !is_scope_token(s)) {
                return bad(format!(
                    "client `{id}`: scope {s:?} is not an RFC 6749 scope token"
                ));
            }
            if let Some(k) = c
                .claims
                .keys()
                .find(|k| RESERVED_CLAIMS.contains(&k.as_str()))
            {
                return bad(format!(
                    "client `{id}`: claim `{k}` is set by the issuer and cannot be configured"
                ));
            }
            let ttl_seconds = c.token_ttl_seconds.unwrap_or(cfg.token_ttl_seconds);
            if ttl_seconds == 0 {
                return bad(format!("client `{id}`: token_ttl_seconds must be positive"));
            }
            let fingerprint = client_fingerprint(&cfg.issuer, &id, &c, ttl_seconds);
            let client = Client {
                fingerprint,
                secret_hash: c.secret_hash,
                scopes: c.scopes.into_iter().collect(),
                claims: c.claims,
                ttl_seconds,
            };
            if clients.insert(id.clone(), client).is_some() {
                return bad(format!("client `{id}` is configured twice"));
            }
        }
        Ok(Settings {
            issuer: cfg.issuer,
            public_base_url,
            default_ttl_seconds: cfg.token_ttl_seconds,
            clients,
        })
    }

    /// The secret hash whose argon2 parameters most clients share.
    pub(crate) fn typical_secret_hash(&self) -> Option<&str> {
        // Everything before `$salt$hash`: algorithm, version and cost parameters.
        let params = |phc: &str| phc.rsplitn(3, '$').nth(2).unwrap_or_default().to_string();
        let mut counts: HashMap<String, (usize, &str)> = HashMap::new();
        for c in self.clients.values() {
            counts
                .entry(params(&c.secret_hash))
                .or_insert((0, &c.secret_hash))
                .0 += 1;
        }
        counts
            .into_values()
            .max_by_key(|(n, _)| *n)
            .map(|(_, phc)| phc)
    }

    /// The longest token lifetime any client gets.
    pub(crate) fn max_ttl_seconds(&self) -> u64 {
        self.clients
            .values()
            .map(|c| c.ttl_seconds)
            .chain([self.default_ttl_seconds])
            .max()
            .unwrap_or(self.default_ttl_seconds)
    }

    /// Every scope some client may request, sorted.
    pub(crate) fn scopes_supported(&self) -> BTreeSet<&str> {
        self.clients
            .values()
            .flat_map(|c| c.scopes.iter().map(String::as_str))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$2b2yUfk7ZTKJr0KSt3YyuBs6XM6P8vT1+Ak2vLaUxyc";

    fn cfg(clients: Vec<ClientConfig>) -> IssuerConfig {
        IssuerConfig {
            issuer: "http://127.0.0.1:8081".into(),
            public_base_url: "http://auth.example/".into(),
            token_ttl_seconds: 3600,
            clients,
        }
    }

    fn client(id: &str) -> ClientConfig {
        ClientConfig {
            client_id: id.into(),
            secret_hash: HASH.into(),
            scopes: vec!["app/read".into()],
            ..Default::default()
        }
    }

    fn err(c: IssuerConfig) -> String {
        match Settings::validate(c) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn valid_config_is_normalised() {
        let s = Settings::validate(cfg(vec![client("a")])).unwrap();
        assert_eq!(s.public_base_url, "http://auth.example");
        assert_eq!(s.clients["a"].ttl_seconds, 3600);
        assert_eq!(
            s.scopes_supported().into_iter().collect::<Vec<_>>(),
            ["app/read"]
        );
    }

    #[test]
    fn bad_clients_are_named() {
        assert!(err(cfg(vec![client("a"), client("a")])).contains("twice"));
        assert!(err(cfg(vec![client("a:b")])).contains("a:b"));
        let mut c = client("plain");
        c.secret_hash = "demo-partner-secret".into();
        let e = err(cfg(vec![c]));
        assert!(e.contains("plain") && e.contains("secret_hash"), "{e}");
        assert!(
            !e.contains("demo-partner-secret"),
            "never echo a (mistaken) secret: {e}"
        );
        let mut c = client("s");
        c.scopes = vec!["a b".into()];
        assert!(err(cfg(vec![c])).contains("scope"));
        let mut c = client("r");
        c.claims.insert("sub".into(), Value::from("x"));
        assert!(err(cfg(vec![c])).contains("`sub`"));
    }

    #[test]
    fn fingerprints_follow_the_client_configuration() {
        let fp =
            |c: ClientConfig| Settings::validate(cfg(vec![c])).unwrap().clients["a"].fingerprint;
        let base = fp(client("a"));
        assert_eq!(base, fp(client("a")));
        let mut c = client("a");
        c.scopes.push("app/write".into());
        assert_ne!(base, fp(c));
        let mut c = client("a");
        c.claims.insert("workspaceId".into(), Value::from("ws"));
        assert_ne!(base, fp(c));
        let mut c = client("a");
        c.token_ttl_seconds = Some(60);
        assert_ne!(base, fp(c));
        let mut c = client("a");
        c.secret_hash = HASH.replace("c29tZXNhbHRzb21lc2FsdA", "b3RoZXJzYWx0b3RoZXJzYWx0");
        assert_ne!(base, fp(c));
    }

    #[test]
    fn debug_redacts_the_hash() {
        let d = format!("{:?}", cfg(vec![client("a")]));
        assert!(!d.contains("argon2"), "{d}");
    }
}
