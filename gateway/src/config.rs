//! Configuration: the TOML file is parsed once into [`Config`], a validated type; nothing
//! downstream sees raw TOML. Unknown keys and bad values stop start-up with a message that
//! names them.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use jsonwebtoken::Algorithm;
use serde::Deserialize;
use token_proxy::{ClientConfig, IssuerConfig};

mod auth;
pub mod embedded;
mod env;
mod limits;

pub use auth::{DynamoDbSettings, TokenProxySettings, TokenStoreKind, UpstreamIdp};

/// Upper bound for clock-skew leeway on `exp`/`nbf`.
const MAX_LEEWAY_SECONDS: u64 = 60;

/// A configuration problem, with the key it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The I/O error is part of the message, not a `source` (printed once, not twice, by
    /// error chains).
    #[error("cannot read config file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: invalid value for `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

// ---- raw file shape (serde) -------------------------------------------------------------

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    listeners: RawListeners,
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    policies: RawPolicies,
    #[serde(default)]
    authn: RawAuthn,
    #[serde(default)]
    issuer: RawIssuer,
    #[serde(default)]
    backend: RawBackend,
    #[serde(default)]
    forward: RawForward,
    #[serde(default)]
    pipeline: RawPipeline,
    #[serde(default)]
    waf: limits::RawWaf,
    #[serde(default)]
    rate_limit: limits::RawRateLimit,
    #[serde(default)]
    tls: RawTls,
    #[serde(default)]
    cors: RawCors,
    #[serde(default)]
    decision_cache: RawDecisionCache,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    token_proxy: auth::RawTokenProxy,
    #[serde(default)]
    dynamodb: auth::RawDynamoDb,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCors {
    allowed_origins: Option<Vec<String>>,
    allowed_methods: Option<Vec<String>>,
    allowed_headers: Option<Vec<String>>,
    max_age_seconds: Option<u64>,
    allow_credentials: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTls {
    api: Option<RawCert>,
    auth: Option<RawCert>,
    admin: Option<RawCert>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCert {
    cert_file: String,
    key_file: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDecisionCache {
    enabled: Option<bool>,
    capacity: Option<u64>,
    ttl_seconds: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    output: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawListeners {
    api: Option<String>,
    auth: Option<String>,
    admin: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    threads: Option<usize>,
    work_stealing: Option<bool>,
    grace_period_seconds: Option<u64>,
    graceful_shutdown_timeout_seconds: Option<u64>,
    keepalive_timeout_seconds: Option<u64>,
    request_head_timeout_seconds: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicies {
    dir: Option<String>,
    shadow_dir: Option<String>,
    watch: Option<bool>,
    watch_interval_ms: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAuthn {
    algorithms: Option<Vec<String>>,
    leeway_seconds: Option<u64>,
    token_cache_capacity: Option<u64>,
    jwks_refetch_interval_seconds: Option<u64>,
    trust_embedded_issuer: Option<bool>,
    allowed_client_ids: Option<Vec<String>>,
    #[serde(default)]
    trusted_issuers: Vec<RawTrustedIssuer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrustedIssuer {
    issuer: String,
    jwks_uri: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawIssuer {
    enabled: Option<bool>,
    issuer: Option<String>,
    public_base_url: Option<String>,
    token_ttl_seconds: Option<u64>,
    #[serde(default)]
    clients: Vec<RawClient>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    client_id: String,
    secret_hash: String,
    scopes: Vec<String>,
    #[serde(default)]
    claims: serde_json::Map<String, serde_json::Value>,
    token_ttl_seconds: Option<u64>,
    description: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    mode: Option<String>,
    address: Option<String>,
    socket: Option<String>,
    store: Option<String>,
    idempotency_ttl_seconds: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawForward {
    assertion_ttl_seconds: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    enabled: Option<bool>,
}

// ---- validated config ------------------------------------------------------------------

/// The validated configuration of one `cedargate` process.
#[derive(Debug, Clone)]
pub struct Config {
    pub listeners: Listeners,
    pub server: ServerSettings,
    pub log_level: String,
    pub policies_dir: PathBuf,
    pub policies: PolicySettings,
    pub cors: crate::cors::Cors,
    pub decision_cache: DecisionCacheSettings,
    pub audit: AuditOutput,
    pub authn: AuthnSettings,
    pub issuer: Option<IssuerConfig>,
    pub backend: BackendTarget,
    pub assertion_ttl_seconds: u64,
    /// `false`: the api listener is a plain reverse proxy (benchmark baseline only).
    pub pipeline: bool,
    pub waf: crate::waf::WafSettings,
    pub rate_limit: crate::ratelimit::RateLimitSettings,
    pub token_proxy: TokenProxySettings,
    pub dynamodb: DynamoDbSettings,
}

/// Policy loading and reloading.
#[derive(Debug, Clone)]
pub struct PolicySettings {
    /// The shadow set; `None`: `<policies dir>/shadow` when it holds policies.
    pub shadow_dir: Option<PathBuf>,
    /// Reload when the files change.
    pub watch: bool,
    pub watch_interval_ms: u64,
}

/// The decision cache.
#[derive(Debug, Clone)]
pub struct DecisionCacheSettings {
    pub enabled: bool,
    pub capacity: u64,
    pub ttl_seconds: u64,
}

/// Where the audit log (one JSON line per decision) goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditOutput {
    Stdout,
    Stderr,
    File(PathBuf),
    Off,
}

/// Listener addresses, and TLS where configured.
#[derive(Debug, Clone)]
pub struct Listeners {
    pub api: SocketAddr,
    pub auth: SocketAddr,
    pub admin: SocketAddr,
    pub api_tls: Option<CertFiles>,
    pub auth_tls: Option<CertFiles>,
    pub admin_tls: Option<CertFiles>,
}

/// A PEM certificate chain and its private key (TLS 1.2 and 1.3 only).
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// `[server] work_stealing` when not set.
const WORK_STEALING_DEFAULT: bool = true;

/// Process-level pingora settings.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub threads: usize,
    /// Tokio work stealing between a listener's threads (pingora's `work_stealing`); off, each
    /// thread keeps the connections it accepted.
    pub work_stealing: bool,
    /// SIGTERM: the listeners stop accepting and requests in flight get up to this long to
    /// finish; the process exits as soon as none is left (`crate::drain`).
    pub grace_period_seconds: u64,
    /// After the grace period: how long pingora's runtimes wait for blocking work (a client
    /// secret check, ...) before the process exits.
    pub graceful_shutdown_timeout_seconds: u64,
    /// An idle keep-alive client connection (api and auth listeners) is closed after this
    /// long; 0: kept until the client closes it.
    pub keepalive_timeout_seconds: u64,
    /// A request head (on every listener) must arrive whole within this long of its first
    /// byte, or the connection is closed; 0: only pingora's per-read timeout (60 s) applies.
    pub request_head_timeout_seconds: u64,
}

/// How tokens are verified (pipeline stage 4).
#[derive(Debug, Clone)]
pub struct AuthnSettings {
    pub algorithms: Vec<Algorithm>,
    pub leeway_seconds: u64,
    pub token_cache_capacity: u64,
    pub jwks_refetch_interval_seconds: u64,
    pub trust_embedded_issuer: bool,
    pub allowed_client_ids: Option<HashSet<String>>,
    pub trusted_issuers: Vec<TrustedIssuer>,
}

/// An external issuer whose tokens the api listener accepts.
#[derive(Debug, Clone)]
pub struct TrustedIssuer {
    pub issuer: String,
    pub jwks_uri: String,
}

/// Where the embedded backend keeps its documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendStore {
    /// Files under the data dir (one process).
    Embedded,
    /// The `[dynamodb]` backend table (shared by gateways side by side).
    DynamoDb,
}

/// Where allowed requests are forwarded.
#[derive(Debug, Clone)]
pub enum BackendTarget {
    /// The embedded backend, served on a unix socket (relative paths are in the data dir).
    Embedded {
        socket: PathBuf,
        /// Where its documents live.
        store: BackendStore,
        /// How long a stored `X-Idempotency-Key` answer is replayed.
        idempotency_ttl: std::time::Duration,
    },
    /// A backend at a loopback or network address.
    External { address: SocketAddr },
}

impl Config {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Self::parse(&text, path)
    }

    /// Validate config text; `path` names it in errors and anchors relative paths.
    /// `${NAME}` in string values is read from the process environment.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Self::parse_with_env(text, path, &|name| std::env::var(name).ok())
    }

    /// [`Config::parse`] with `lookup` as the environment.
    pub fn parse_with_env(
        text: &str,
        path: &Path,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let parse_error = |e: toml::de::Error| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        };
        // The shape is checked on the text itself first, so errors point at lines.
        let mut raw: RawConfig = toml::from_str(text).map_err(parse_error)?;
        if text.contains('$') {
            let mut value: toml::Value = toml::from_str(text).map_err(parse_error)?;
            env::interpolate(&mut value, lookup).map_err(|e| ConfigError::Invalid {
                path: path.to_path_buf(),
                key: e.key,
                message: e.message,
            })?;
            raw = value.try_into().map_err(parse_error)?;
        }
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Validator { path, base: &base }.validate(raw)
    }
}

struct Validator<'a> {
    path: &'a Path,
    base: &'a Path,
}

impl Validator<'_> {
    fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn addr(
        &self,
        key: &str,
        value: Option<String>,
        default: &str,
    ) -> Result<SocketAddr, ConfigError> {
        let text = value.unwrap_or_else(|| default.to_string());
        text.parse()
            .map_err(|_| self.invalid(key, format!("`{text}` is not an IP:port address")))
    }

    fn url(&self, key: &str, value: &str) -> Result<String, ConfigError> {
        if !(value.starts_with("http://") || value.starts_with("https://")) || value.len() < 10 {
            return Err(self.invalid(key, format!("`{value}` is not an http(s) URL")));
        }
        Ok(value.trim_end_matches('/').to_string())
    }

    fn cors(&self, raw: RawCors) -> Result<crate::cors::Cors, ConfigError> {
        let origins = raw.allowed_origins.unwrap_or_default();
        for o in &origins {
            if o != "*" && !(o.starts_with("http://") || o.starts_with("https://")) {
                return Err(self.invalid(
                    "cors.allowed_origins",
                    format!("`{o}` is not an origin (scheme://host[:port]) or *"),
                ));
            }
        }
        let allow_credentials = raw.allow_credentials.unwrap_or(false);
        if allow_credentials && origins.iter().any(|o| o == "*") {
            return Err(self.invalid("cors.allow_credentials", "cannot be true with the origin *"));
        }
        let lower = |v: Vec<String>| v.into_iter().map(|h| h.to_ascii_lowercase()).collect();
        Ok(crate::cors::Cors {
            allowed_origins: origins,
            allowed_methods: raw.allowed_methods.unwrap_or_else(|| {
                ["GET", "POST", "PUT", "PATCH", "DELETE"]
                    .map(String::from)
                    .to_vec()
            }),
            allowed_headers: lower(raw.allowed_headers.unwrap_or_else(|| {
                [
                    "authorization",
                    "content-type",
                    "x-request-id",
                    "x-user-id",
                    "x-idempotency-key",
                ]
                .map(String::from)
                .to_vec()
            })),
            max_age_seconds: raw.max_age_seconds.unwrap_or(600),
            allow_credentials,
        })
    }

    fn cert(&self, key: &str, raw: Option<RawCert>) -> Result<Option<CertFiles>, ConfigError> {
        let Some(raw) = raw else { return Ok(None) };
        let files = CertFiles {
            cert_file: self.resolve(&raw.cert_file),
            key_file: self.resolve(&raw.key_file),
        };
        for (k, path) in [
            ("cert_file", &files.cert_file),
            ("key_file", &files.key_file),
        ] {
            if let Err(e) = std::fs::File::open(path) {
                return Err(self.invalid(
                    &format!("{key}.{k}"),
                    format!("cannot read {}: {e}", path.display()),
                ));
            }
        }
        Ok(Some(files))
    }

    fn resolve(&self, p: &str) -> PathBuf {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            self.base.join(p)
        }
    }

    fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let listeners = Listeners {
            api: self.addr("listeners.api", raw.listeners.api, "127.0.0.1:8080")?,
            auth: self.addr("listeners.auth", raw.listeners.auth, "127.0.0.1:8081")?,
            admin: self.addr("listeners.admin", raw.listeners.admin, "127.0.0.1:9090")?,
            api_tls: self.cert("tls.api", raw.tls.api)?,
            auth_tls: self.cert("tls.auth", raw.tls.auth)?,
            admin_tls: self.cert("tls.admin", raw.tls.admin)?,
        };
        let threads = raw.server.threads.unwrap_or(2);
        if threads == 0 || threads > 256 {
            return Err(self.invalid("server.threads", "must be between 1 and 256"));
        }
        let server = ServerSettings {
            threads,
            work_stealing: raw.server.work_stealing.unwrap_or(WORK_STEALING_DEFAULT),
            grace_period_seconds: raw.server.grace_period_seconds.unwrap_or(5),
            graceful_shutdown_timeout_seconds: raw
                .server
                .graceful_shutdown_timeout_seconds
                .unwrap_or(5),
            keepalive_timeout_seconds: raw.server.keepalive_timeout_seconds.unwrap_or(60),
            request_head_timeout_seconds: raw.server.request_head_timeout_seconds.unwrap_or(30),
        };
        let log_level = raw.log.level.unwrap_or_else(|| "info".to_string());
        if !["error", "warn", "info", "debug", "trace"].contains(&log_level.as_str()) {
            return Err(self.invalid(
                "log.level",
                "must be one of error, warn, info, debug, trace",
            ));
        }
        let policies_dir = self.resolve(raw.policies.dir.as_deref().unwrap_or("../policies"));

        let authn = self.authn(raw.authn)?;
        let issuer = self.issuer(raw.issuer)?;
        if issuer.is_none() && authn.trusted_issuers.is_empty() {
            return Err(self.invalid(
                "authn.trusted_issuers",
                "no token issuer: enable [issuer] or configure a trusted issuer",
            ));
        }
        let backend = match raw.backend.mode.as_deref().unwrap_or("embedded") {
            "embedded" => {
                if raw.backend.address.is_some() {
                    return Err(
                        self.invalid("backend.address", "only valid with mode = \"external\"")
                    );
                }
                let store = match raw.backend.store.as_deref().unwrap_or("embedded") {
                    "embedded" => BackendStore::Embedded,
                    "dynamodb" => BackendStore::DynamoDb,
                    other => {
                        return Err(self.invalid(
                            "backend.store",
                            format!("`{other}` is not one of \"embedded\", \"dynamodb\""),
                        ));
                    }
                };
                let ttl = self.range(
                    "backend.idempotency_ttl_seconds",
                    raw.backend.idempotency_ttl_seconds.unwrap_or(300),
                    1,
                    86_400,
                )?;
                BackendTarget::Embedded {
                    socket: PathBuf::from(raw.backend.socket.as_deref().unwrap_or("backend.sock")),
                    store,
                    idempotency_ttl: std::time::Duration::from_secs(ttl),
                }
            }
            "external" => {
                // `store` and `idempotency_ttl_seconds` describe the embedded backend; the
                // default file carries them, so they are accepted here and have no effect.
                let Some(address) = raw.backend.address else {
                    return Err(
                        self.invalid("backend.address", "required with mode = \"external\"")
                    );
                };
                BackendTarget::External {
                    address: self.addr("backend.address", Some(address), "")?,
                }
            }
            other => {
                return Err(self.invalid(
                    "backend.mode",
                    format!("`{other}` is not one of \"embedded\", \"external\""),
                ));
            }
        };
        let watch_interval_ms = raw.policies.watch_interval_ms.unwrap_or(1000);
        if !(100..=3_600_000).contains(&watch_interval_ms) {
            return Err(self.invalid(
                "policies.watch_interval_ms",
                "must be between 100 and 3600000",
            ));
        }
        let policies = PolicySettings {
            shadow_dir: raw.policies.shadow_dir.as_deref().map(|d| self.resolve(d)),
            watch: raw.policies.watch.unwrap_or(true),
            watch_interval_ms,
        };
        let decision_cache = DecisionCacheSettings {
            enabled: raw.decision_cache.enabled.unwrap_or(true),
            capacity: raw.decision_cache.capacity.unwrap_or(100_000),
            ttl_seconds: raw.decision_cache.ttl_seconds.unwrap_or(60),
        };
        if decision_cache.ttl_seconds == 0 || decision_cache.ttl_seconds > 86_400 {
            return Err(self.invalid("decision_cache.ttl_seconds", "must be between 1 and 86400"));
        }
        let audit = match raw.audit.output.as_deref().unwrap_or("stdout") {
            "stdout" => AuditOutput::Stdout,
            "stderr" => AuditOutput::Stderr,
            "off" => AuditOutput::Off,
            "" => {
                return Err(
                    self.invalid("audit.output", "must be stdout, stderr, off or a file path")
                );
            }
            path => AuditOutput::File(self.resolve(path)),
        };
        let assertion_ttl_seconds = raw.forward.assertion_ttl_seconds.unwrap_or(30);
        if !(1..=300).contains(&assertion_ttl_seconds) {
            return Err(self.invalid("forward.assertion_ttl_seconds", "must be between 1 and 300"));
        }
        let cors = self.cors(raw.cors)?;
        let token_proxy = self.token_proxy(raw.token_proxy)?;
        let dynamodb = self.dynamodb(raw.dynamodb)?;
        let waf = self.waf(raw.waf)?;
        let rate_limit = self.rate_limit(raw.rate_limit)?;
        Ok(Config {
            waf,
            rate_limit,
            token_proxy,
            dynamodb,
            cors,
            policies,
            decision_cache,
            audit,
            listeners,
            server,
            log_level,
            policies_dir,
            authn,
            issuer,
            backend,
            assertion_ttl_seconds,
            pipeline: raw.pipeline.enabled.unwrap_or(true),
        })
    }

    fn authn(&self, raw: RawAuthn) -> Result<AuthnSettings, ConfigError> {
        let names = raw
            .algorithms
            .unwrap_or_else(|| vec!["RS256".to_string(), "ES256".to_string()]);
        if names.is_empty() {
            return Err(self.invalid("authn.algorithms", "must list at least one algorithm"));
        }
        let mut algorithms = Vec::new();
        for name in &names {
            let alg = match name.as_str() {
                "RS256" => Algorithm::RS256,
                "RS384" => Algorithm::RS384,
                "RS512" => Algorithm::RS512,
                "PS256" => Algorithm::PS256,
                "PS384" => Algorithm::PS384,
                "PS512" => Algorithm::PS512,
                "ES256" => Algorithm::ES256,
                "ES384" => Algorithm::ES384,
                "EdDSA" => Algorithm::EdDSA,
                other => {
                    return Err(self.invalid(
                        "authn.algorithms",
                        format!("`{other}` is not an allowed asymmetric algorithm (HS* and none are never accepted)"),
                    ));
                }
            };
            algorithms.push(alg);
        }
        let leeway_seconds = raw.leeway_seconds.unwrap_or(30);
        if leeway_seconds > MAX_LEEWAY_SECONDS {
            return Err(self.invalid(
                "authn.leeway_seconds",
                format!("must be at most {MAX_LEEWAY_SECONDS}"),
            ));
        }
        let mut trusted_issuers = Vec::new();
        for (i, t) in raw.trusted_issuers.into_iter().enumerate() {
            if t.issuer.is_empty() {
                return Err(self.invalid(
                    &format!("authn.trusted_issuers[{i}].issuer"),
                    "must not be empty",
                ));
            }
            trusted_issuers.push(TrustedIssuer {
                issuer: t.issuer,
                jwks_uri: self.url(&format!("authn.trusted_issuers[{i}].jwks_uri"), &t.jwks_uri)?,
            });
        }
        Ok(AuthnSettings {
            algorithms,
            leeway_seconds,
            token_cache_capacity: raw.token_cache_capacity.unwrap_or(100_000),
            jwks_refetch_interval_seconds: raw.jwks_refetch_interval_seconds.unwrap_or(30),
            trust_embedded_issuer: raw.trust_embedded_issuer.unwrap_or(true),
            allowed_client_ids: raw.allowed_client_ids.map(|v| v.into_iter().collect()),
            trusted_issuers,
        })
    }

    fn issuer(&self, raw: RawIssuer) -> Result<Option<IssuerConfig>, ConfigError> {
        if !raw.enabled.unwrap_or(true) {
            return Ok(None);
        }
        let issuer = self.url(
            "issuer.issuer",
            raw.issuer.as_deref().unwrap_or("http://127.0.0.1:8081"),
        )?;
        let public_base_url = match raw.public_base_url {
            Some(u) => self.url("issuer.public_base_url", &u)?,
            None => issuer.clone(),
        };
        let token_ttl_seconds = raw.token_ttl_seconds.unwrap_or(3600);
        if !(60..=86_400).contains(&token_ttl_seconds) {
            return Err(self.invalid("issuer.token_ttl_seconds", "must be between 60 and 86400"));
        }
        let mut seen = HashSet::new();
        let mut clients = Vec::new();
        for (i, c) in raw.clients.into_iter().enumerate() {
            let key = |k: &str| format!("issuer.clients[{i}].{k}");
            if c.client_id.is_empty() || c.client_id.contains(':') {
                return Err(self.invalid(&key("client_id"), "must be non-empty and contain no ':'"));
            }
            if !seen.insert(c.client_id.clone()) {
                return Err(self.invalid(
                    &key("client_id"),
                    format!("duplicate client `{}`", c.client_id),
                ));
            }
            if !c.secret_hash.starts_with("$argon2") {
                return Err(self.invalid(
                    &key("secret_hash"),
                    "must be an argon2 PHC hash (make one with `cedargate hash-secret`), never a plaintext secret",
                ));
            }
            if c.scopes
                .iter()
                .any(|s| s.is_empty() || s.contains(char::is_whitespace))
            {
                return Err(self.invalid(
                    &key("scopes"),
                    "scopes must be non-empty and contain no spaces",
                ));
            }
            clients.push(ClientConfig {
                client_id: c.client_id,
                secret_hash: c.secret_hash,
                scopes: c.scopes,
                claims: c.claims,
                token_ttl_seconds: c.token_ttl_seconds,
                description: c.description,
            });
        }
        let cfg = IssuerConfig {
            issuer,
            public_base_url,
            token_ttl_seconds,
            clients,
        };
        cfg.check()
            .map_err(|e| self.invalid("issuer.clients", e.to_string()))?;
        Ok(Some(cfg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/cedargate/test.toml"))
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.listeners.api.to_string(), "127.0.0.1:8080");
        assert_eq!(c.server.keepalive_timeout_seconds, 60);
        assert_eq!(c.server.request_head_timeout_seconds, 30);
        assert_eq!(c.policies_dir, PathBuf::from("/etc/cedargate/../policies"));
        assert!(c.issuer.is_some());
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse("bogus_key = 1\n").unwrap_err().to_string();
        assert!(e.contains("bogus_key"), "{e}");
        let e = parse("[authn]\nleway_seconds = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("leway_seconds"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = parse("[listeners]\napi = \"nope\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listeners.api"), "{e}");
        let e = parse("[authn]\nalgorithms = [\"HS256\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("authn.algorithms"), "{e}");
        let e = parse("[authn]\nleeway_seconds = 61\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("leeway_seconds"), "{e}");
        let e =
            parse("[[issuer.clients]]\nclient_id = \"a\"\nsecret_hash = \"plain\"\nscopes = []\n")
                .unwrap_err()
                .to_string();
        assert!(e.contains("secret_hash"), "{e}");
    }
}
