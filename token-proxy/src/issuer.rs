//! The embedded issuer: configured clients, the key ring, minting, discovery, JWKS and the
//! `client_credentials` token endpoint.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use crate::answer::{HttpAnswer, OAuthError};
use crate::config::{IssuerConfig, Settings};
use crate::error::IssuerError;
use crate::keys::SigningKey;
use crate::keystore::KeyStore;
use crate::secret::{self, VerifyGate};
use crate::token_request::{self, AuthMethod, ClientCredentialsGrant, TokenRequest};

/// How long a token request waits for a free secret-verification slot before a 503.
const VERIFY_MAX_WAIT: Duration = Duration::from_secs(3);

/// The published keys; `keys[0]` signs.
struct KeySet {
    keys: Vec<SigningKey>,
    jwks: Value,
}

impl KeySet {
    fn new(keys: Vec<SigningKey>) -> Result<KeySet, IssuerError> {
        if keys.is_empty() {
            return Err(IssuerError::Crypto("no signing key"));
        }
        let jwks = json!({"keys": keys.iter().map(SigningKey::jwk).collect::<Vec<_>>()});
        Ok(KeySet { keys, jwks })
    }

    fn current(&self) -> &SigningKey {
        &self.keys[0]
    }
}

/// The embedded OAuth2 issuer. `Send + Sync`; share it with `Arc`.
pub struct Issuer {
    settings: Settings,
    store: KeyStore,
    keys: RwLock<Arc<KeySet>>,
    discovery: Value,
    /// Verified against when the client id is unknown, so both paths cost one argon2 run.
    dummy_hash: String,
    gate: VerifyGate,
}

impl fmt::Debug for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = self.key_set();
        let mut clients: Vec<&str> = self.settings.clients.keys().map(String::as_str).collect();
        clients.sort_unstable();
        f.debug_struct("Issuer")
            .field("issuer", &self.settings.issuer)
            .field("keys_dir", &self.store.dir())
            .field(
                "kids",
                &keys.keys.iter().map(SigningKey::kid).collect::<Vec<_>>(),
            )
            .field("clients", &clients)
            .finish_non_exhaustive()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Sign with every key and verify the result with jsonwebtoken using the published JWK
/// components, the way the gateway's authn stage will. jsonwebtoken panics on first use when
/// its crypto backend is misconfigured: that becomes an error here instead of a crash later.
fn self_test(issuer: &str, keys: &[SigningKey]) -> Result<(), IssuerError> {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};

    for key in keys {
        let iat = now();
        let mut claims = Map::new();
        claims.insert("iss".into(), issuer.into());
        claims.insert("sub".into(), "cedargate-self-test".into());
        claims.insert("token_use".into(), "access".into());
        claims.insert("iat".into(), iat.into());
        claims.insert("exp".into(), (iat + 300).into());
        let token = key.sign_jwt(&claims)?;
        let (n, e) = key.components();
        let outcome = catch_unwind(AssertUnwindSafe(|| -> Result<(), String> {
            let header = decode_header(&token).map_err(|e| e.to_string())?;
            if header.kid.as_deref() != Some(key.kid()) || header.alg != Algorithm::RS256 {
                return Err("the token header does not name the key".into());
            }
            let decoding = DecodingKey::from_rsa_components(n, e).map_err(|e| e.to_string())?;
            let mut validation = Validation::new(Algorithm::RS256);
            validation.set_issuer(&[issuer]);
            let data = decode::<Map<String, Value>>(&token, &decoding, &validation)
                .map_err(|e| e.to_string())?;
            if data.claims != claims {
                return Err("the verified claims differ from the signed ones".into());
            }
            Ok(())
        }));
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(IssuerError::SelfTest(format!("key {}: {e}", key.kid()))),
            Err(_) => {
                return Err(IssuerError::SelfTest(
                    "jsonwebtoken panicked; enable exactly one of its crypto backends (aws_lc_rs)"
                        .into(),
                ));
            }
        }
    }
    Ok(())
}

impl Issuer {
    /// Validate the configuration, load (or create) the keys in `data_dir/keys`, and check
    /// that signing and verification work.
    pub fn open(cfg: IssuerConfig, data_dir: &Path) -> Result<Issuer, IssuerError> {
        let settings = Settings::validate(cfg)?;
        let store = KeyStore::open(data_dir)?;
        let keys = store.load_or_create()?;
        self_test(&settings.issuer, &keys)?;
        let base = &settings.public_base_url;
        let discovery = json!({
            "issuer": settings.issuer,
            "jwks_uri": format!("{base}/.well-known/jwks.json"),
            "token_endpoint": format!("{base}/oauth2/token"),
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": settings.scopes_supported(),
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
        });
        let parallelism = std::thread::available_parallelism().map_or(2, usize::from);
        let issuer = Issuer {
            dummy_hash: secret::dummy_hash(settings.typical_secret_hash())?,
            gate: VerifyGate::new(parallelism * 2, VERIFY_MAX_WAIT),
            keys: RwLock::new(Arc::new(KeySet::new(keys)?)),
            discovery,
            store,
            settings,
        };
        tracing::info!(
            issuer = %issuer.settings.issuer,
            kid = issuer.key_set().current().kid(),
            keys = issuer.key_set().keys.len(),
            clients = issuer.settings.clients.len(),
            "embedded issuer ready"
        );
        Ok(issuer)
    }

    fn key_set(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The `iss` of every token this issuer signs.
    pub fn issuer(&self) -> &str {
        &self.settings.issuer
    }

    /// The JWKS document: every key in the key directory, the current signer first.
    pub fn jwks(&self) -> Value {
        self.key_set().jwks.clone()
    }

    /// The OpenID discovery document.
    pub fn discovery(&self) -> Value {
        self.discovery.clone()
    }

    /// Sign `claims` with the current key, adding `iss`, `iat`, `exp` (= `iat` + ttl), `jti`
    /// and `token_use = "access"` where absent. `ttl_seconds` defaults to the issuer's.
    pub fn mint(
        &self,
        mut claims: Map<String, Value>,
        ttl_seconds: Option<u64>,
    ) -> Result<String, IssuerError> {
        let ttl = ttl_seconds.unwrap_or(self.settings.default_ttl_seconds);
        let iat = match claims.get("iat") {
            None => {
                let now = now();
                claims.insert("iat".into(), now.into());
                now
            }
            Some(v) => v.as_u64().ok_or_else(|| {
                IssuerError::Claims("`iat` must be a non-negative integer".into())
            })?,
        };
        if !claims.contains_key("exp") {
            let exp = iat
                .checked_add(ttl)
                .ok_or_else(|| IssuerError::Claims("`iat` + ttl overflows".into()))?;
            claims.insert("exp".into(), exp.into());
        }
        claims
            .entry("iss")
            .or_insert_with(|| self.settings.issuer.clone().into());
        claims
            .entry("jti")
            .or_insert_with(|| uuid::Uuid::new_v4().to_string().into());
        claims.entry("token_use").or_insert_with(|| "access".into());
        self.key_set().current().sign_jwt(&claims)
    }

    /// Make a new signing key; earlier keys stay published so their tokens still verify.
    pub fn rotate_key(&self) -> Result<(), IssuerError> {
        let keys = self.store.rotate()?;
        self_test(&self.settings.issuer, &keys)?;
        let set = Arc::new(KeySet::new(keys)?);
        tracing::info!(
            kid = set.current().kid(),
            keys = set.keys.len(),
            "rotated the signing key"
        );
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = set;
        Ok(())
    }

    /// Re-read the key directory (another process, `cedargate keys rotate`, may have added
    /// or removed keys); `true` when the published set changed. A directory that no longer
    /// yields a usable key keeps the current set.
    pub fn reload_keys(&self) -> Result<bool, IssuerError> {
        let keys = self.store.load()?;
        let current = self.key_set();
        let same = keys.len() == current.keys.len()
            && keys
                .iter()
                .zip(&current.keys)
                .all(|(a, b)| a.kid() == b.kid());
        if same || keys.is_empty() {
            return Ok(false);
        }
        self_test(&self.settings.issuer, &keys)?;
        let set = Arc::new(KeySet::new(keys)?);
        tracing::info!(
            kid = set.current().kid(),
            keys = set.keys.len(),
            "signing keys reloaded from the key directory"
        );
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = set;
        Ok(true)
    }

    /// The kid of the current signing key.
    pub fn current_kid(&self) -> String {
        self.key_set().current().kid().to_string()
    }

    /// The kids of every published key, the signer first.
    pub fn kids(&self) -> Vec<String> {
        self.key_set()
            .keys
            .iter()
            .map(|k| k.kid().to_string())
            .collect()
    }

    /// The longest token lifetime of any client (what a retired key must outlive).
    pub fn max_token_ttl_seconds(&self) -> u64 {
        self.settings.max_ttl_seconds()
    }

    /// Delete the files of keys retired longer than `keep`: a key is retired when a newer
    /// key was created, and every token it signed has expired once the longest token
    /// lifetime has passed since. Returns the removed file names; the signer always stays.
    pub fn prune_retired_keys(
        &self,
        keep: std::time::Duration,
    ) -> Result<Vec<String>, IssuerError> {
        let removed = self.store.prune_retired(keep)?;
        if !removed.is_empty() {
            self.reload_keys()?;
        }
        Ok(removed)
    }

    /// What the token cache keys on for this grant: the requested client's configuration
    /// fingerprint and the current signing key's kid (instances with other keys, or after a
    /// rotation, do not share entries), when the client exists and may have the requested
    /// scopes. `None` sends the request to [`Issuer::token`] uncached (which then rejects it
    /// in its own time).
    pub(crate) fn cache_context(&self, grant: &ClientCredentialsGrant) -> Option<Vec<u8>> {
        let client = self.settings.clients.get(&grant.credentials.client_id)?;
        if let Some(requested) = &grant.scope
            && !requested.is_subset(&client.scopes)
        {
            return None;
        }
        let mut context = client.fingerprint.to_vec();
        context.extend_from_slice(self.key_set().current().kid().as_bytes());
        Some(context)
    }

    /// Answer `POST /oauth2/token` (client_credentials). Blocks for the argon2 secret check
    /// (tens of milliseconds): call it off the I/O threads.
    pub fn token(&self, req: &TokenRequest<'_>) -> HttpAnswer {
        match self.token_inner(req) {
            Ok(answer) => answer,
            Err(e) => e.into_answer(),
        }
    }

    fn token_inner(&self, req: &TokenRequest<'_>) -> Result<HttpAnswer, OAuthError> {
        let grant = token_request::parse(req)?;
        let creds = &grant.credentials;
        let client = self.settings.clients.get(&creds.client_id);
        let verified = {
            let Some(_permit) = self.gate.enter() else {
                tracing::warn!("token endpoint saturated: secret verifications are queueing");
                return Err(OAuthError::new(
                    503,
                    "temporarily_unavailable",
                    "the token endpoint is busy; retry shortly",
                ));
            };
            let hash = client.map_or(self.dummy_hash.as_str(), |c| c.secret_hash.as_str());
            secret::verify_secret(hash, &creds.secret) && client.is_some()
        };
        let Some(client) = client.filter(|_| verified) else {
            tracing::info!(client_id = %creds.client_id, "client authentication failed");
            return Err(OAuthError::invalid_client(
                "client authentication failed",
                creds.method == AuthMethod::Basic,
            ));
        };
        let granted = match grant.scope {
            None => client.scopes.clone(),
            Some(requested) => {
                if let Some(s) = requested.iter().find(|s| !client.scopes.contains(*s)) {
                    return Err(OAuthError::invalid_scope(format!(
                        "scope `{s}` is not allowed for this client"
                    )));
                }
                requested
            }
        };
        let scope = granted.into_iter().collect::<Vec<_>>().join(" ");
        let iat = now();
        let mut claims = client.claims.clone();
        claims.insert("iss".into(), self.settings.issuer.clone().into());
        claims.insert("sub".into(), creds.client_id.clone().into());
        claims.insert("client_id".into(), creds.client_id.clone().into());
        claims.insert("scope".into(), scope.clone().into());
        claims.insert("token_use".into(), "access".into());
        claims.insert("iat".into(), iat.into());
        claims.insert("exp".into(), iat.saturating_add(client.ttl_seconds).into());
        claims.insert("jti".into(), uuid::Uuid::new_v4().to_string().into());
        let token = self.key_set().current().sign_jwt(&claims).map_err(|e| {
            tracing::error!(error = %e, "signing an access token failed");
            OAuthError::new(500, "server_error", "the token could not be signed")
        })?;
        tracing::debug!(client_id = %creds.client_id, scope = %scope, "issued an access token");
        Ok(HttpAnswer::token_json(
            200,
            &json!({
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": client.ttl_seconds,
                "scope": scope,
            }),
        ))
    }
}

#[cfg(test)]
mod tests;
