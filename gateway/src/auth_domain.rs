//! The auth listener, a pingora `ProxyHttp`: `POST /oauth2/token` through the token cache
//! (in front of the embedded issuer or an upstream IdP), discovery and JWKS, and, in upstream
//! mode, every other path passed through to the IdP by pingora itself.
//!
//! Phases: `request_filter` answers the three auth-domain paths (the token body is read in
//! full, validated, then the cache or the issuer answers) and returns `false` for anything
//! else in upstream mode; `upstream_peer` names the IdP (TLS with SNI for https);
//! `upstream_request_filter` sets `Host` and the base path. Answers of the pass-through are
//! relayed untouched.

mod upstream;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::{Error, ErrorType, Result};
use token_proxy::cache::dynamodb::DynamoStore;
use token_proxy::cache::{CacheEvents, Lookup, MemoryStore, SystemClock, TokenCache, TokenStore};
use token_proxy::{HttpAnswer, Issuer, TokenCall, TokenEndpoint, TokenSource};

use crate::config::{Config, TokenStoreKind};
use crate::error::GatewayError;
use crate::metrics;
use crate::ratelimit::{Applied, RateLimiter};
use crate::request_id;
use crate::respond;
use crate::waf::{Reputation, SampleContext, Waf};
pub use upstream::UpstreamIdpClient;

/// The token endpoint.
const TOKEN_PATH: &str = "/oauth2/token";

/// Largest token request body accepted.
const MAX_TOKEN_BODY: usize = 16 * 1024;

/// Longest client id written to an access line (in characters).
const MAX_LOGGED_CLIENT_ID: usize = 128;

/// How often the signing keys are re-read from the data dir (`cedargate keys rotate`).
const KEY_RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// Shared state of the auth listener.
pub struct AuthDomain {
    issuer: Option<Arc<Issuer>>,
    tokens: Option<TokenEndpoint>,
    upstream: Option<Arc<UpstreamIdpClient>>,
    /// The api listener's WAF: its trusted proxies say where the client's address comes from.
    waf: Arc<Waf>,
    /// `[rate_limit.token_failures]`: failed client authentications per address.
    limiter: Option<Arc<RateLimiter>>,
    /// `[server] keepalive_timeout_seconds`.
    keepalive_seconds: u64,
}

/// Per-request context of the auth listener, and what its access line reports.
pub struct AuthCtx {
    request_id: String,
    started: Instant,
    client_ip: IpAddr,
    /// The client's standing in the WAF's IP lists (allow-listed: exempt from rate limits).
    reputation: Reputation,
    /// The endpoint, as `get /.well-known/jwks.json`; `proxied` for the IdP's other paths.
    route: &'static str,
    /// The client id a token request claims (never its secret).
    client_id: Option<String>,
    /// The token cache's lookup (`l1_hit`, `miss`, ...) or `uncached`.
    cache: &'static str,
    /// The refusal's code: the envelope's, or the OAuth `error` of a token answer.
    code: String,
    /// Counts the request as in progress until its access line is written (graceful shutdown).
    _busy: crate::drain::Busy,
}

/// Token cache events as Prometheus metrics.
struct TokenMetrics {
    store: &'static str,
}

impl CacheEvents for TokenMetrics {
    fn upstream(&self, status: u16, elapsed: Duration) {
        metrics::token_upstream(status, elapsed.as_secs_f64());
    }

    fn store_error(&self, op: &'static str) {
        metrics::token_store_error(self.store, op);
    }
}

/// Open the token cache's L2 store from config.
pub fn open_token_store(config: &Config) -> anyhow::Result<Arc<dyn TokenStore>> {
    match config.token_proxy.store {
        TokenStoreKind::Memory { capacity } => Ok(Arc::new(MemoryStore::new(capacity))),
        TokenStoreKind::DynamoDb => {
            let settings = config.dynamodb.token_store();
            if config.dynamodb.create_tables_on_start {
                // A client of its own on a runtime of its own: the serving client's
                // connections must not belong to a runtime that is about to go away.
                let creator = DynamoStore::connect(&settings)?;
                let outcome = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
                    .block_on(creator.create_table())
                    .map_err(|e| anyhow::anyhow!("dynamodb.create_tables_on_start: {e}"))?;
                tracing::info!(table = %settings.table, ?outcome, "token cache table ready");
            }
            Ok(Arc::new(DynamoStore::connect(&settings)?))
        }
    }
}

fn json(status: u16, value: &serde_json::Value) -> HttpAnswer {
    HttpAnswer {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: serde_json::to_vec(value).unwrap_or_default(),
    }
}

fn oauth_error(status: u16, error: &str, description: &str) -> HttpAnswer {
    let mut answer = json(
        status,
        &serde_json::json!({"error": error, "error_description": description}),
    );
    token_proxy::enforce_no_store(&mut answer);
    answer
}

/// The OAuth `error` of a refusal (`invalid_client`, ...), when its body has one.
fn oauth_error_code(answer: &HttpAnswer) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct OAuthErrorBody {
        error: Option<String>,
    }
    if answer.status < 400 {
        return None;
    }
    serde_json::from_slice::<OAuthErrorBody>(&answer.body)
        .ok()
        .and_then(|b| b.error)
}

/// A refused client authentication: 401, or `invalid_client` with another status (an
/// upstream IdP may answer it with 400, as Cognito does).
fn is_failed_client_authentication(answer: &HttpAnswer) -> bool {
    answer.status == 401 || oauth_error_code(answer).as_deref() == Some("invalid_client")
}

/// 429 while an address has used up its failed client authentications: the gateway's error
/// envelope with the OAuth error fields beside it, `Retry-After` and the `RateLimit` headers.
fn too_many_failures(applied: &Applied, request_id: &str) -> HttpAnswer {
    let refused = GatewayError::RateLimited(Box::new(applied.clone()));
    let mut body: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&crate::error::envelope(&refused, request_id, TOKEN_PATH))
            .unwrap_or_default();
    body.insert("error".into(), "temporarily_unavailable".into());
    body.insert(
        "error_description".into(),
        "too many failed client authentications from this address".into(),
    );
    let mut answer = json(429, &serde_json::Value::Object(body));
    token_proxy::enforce_no_store(&mut answer);
    answer.headers.extend([
        (
            "retry-after".to_string(),
            applied.retry_after_seconds().to_string(),
        ),
        ("ratelimit-policy".to_string(), applied.policy_header()),
        ("ratelimit".to_string(), applied.state_header()),
    ]);
    answer
}

fn public_document(value: &serde_json::Value) -> HttpAnswer {
    let mut a = json(200, value);
    a.headers
        .push(("cache-control".into(), "public, max-age=300".into()));
    a
}

async fn write_answer(session: &mut Session, answer: HttpAnswer, request_id: &str) -> Result<()> {
    let mut resp = ResponseHeader::build(answer.status, Some(answer.headers.len() + 4))?;
    for (k, v) in &answer.headers {
        // Framing is ours: the body is written whole.
        if k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding") {
            continue;
        }
        resp.append_header(k.clone(), v.as_str())?;
    }
    resp.insert_header("content-length", answer.body.len().to_string())?;
    respond::decorate(&mut resp, request_id)?;
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from(answer.body)), true)
        .await?;
    Ok(())
}

/// Read a small request body; `None` when it exceeds `limit`. A client waiting for
/// `100 Continue` gets it first.
async fn read_body(session: &mut Session, limit: usize) -> Result<Option<Bytes>> {
    crate::respond::continue_if_expected(session).await?;
    let mut body = BytesMut::new();
    while let Some(chunk) = session.read_request_body().await? {
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body.freeze()))
}

/// What the auth listener does with a request.
enum Endpoint<'a> {
    Token(&'a TokenEndpoint),
    Jwks,
    Discovery,
    /// Upstream mode: the IdP's other paths, which pingora proxies.
    Proxied,
    Unmatched,
}

impl Endpoint<'_> {
    /// The access line's `route`.
    fn label(&self) -> &'static str {
        match self {
            Endpoint::Token(_) => "post /oauth2/token",
            Endpoint::Jwks => "get /.well-known/jwks.json",
            Endpoint::Discovery => "get /.well-known/openid-configuration",
            Endpoint::Proxied => "proxied",
            Endpoint::Unmatched => "unmatched",
        }
    }
}

impl AuthDomain {
    /// The endpoint of a request for `path` (`is_get`: its method is GET).
    fn endpoint(&self, path: &str, is_get: bool) -> Endpoint<'_> {
        match (path, &self.tokens) {
            (TOKEN_PATH, Some(tokens)) => Endpoint::Token(tokens),
            ("/.well-known/jwks.json", _) if is_get => Endpoint::Jwks,
            ("/.well-known/openid-configuration", _) if is_get => Endpoint::Discovery,
            _ if self.upstream.is_some() => Endpoint::Proxied,
            _ => Endpoint::Unmatched,
        }
    }

    /// The auth domain of `config` (after command-line overrides), over the embedded
    /// `issuer` when there is one.
    pub fn new(
        config: &Config,
        issuer: Option<Arc<Issuer>>,
        waf: Arc<Waf>,
        limiter: Option<Arc<RateLimiter>>,
    ) -> anyhow::Result<AuthDomain> {
        let settings = &config.token_proxy;
        let upstream = match &settings.upstream {
            Some(up) => {
                let scheme = if config.listeners.auth_tls.is_some() {
                    "https"
                } else {
                    "http"
                };
                let public = up
                    .public_base_url
                    .clone()
                    .unwrap_or_else(|| format!("{scheme}://{}", config.listeners.auth));
                Some(Arc::new(UpstreamIdpClient::new(up.clone(), public)?))
            }
            None => None,
        };
        let source = match (&upstream, &issuer) {
            (Some(up), _) => Some(TokenSource::Upstream(up.clone())),
            (None, Some(issuer)) => Some(TokenSource::Embedded(issuer.clone())),
            (None, None) => None,
        };
        let tokens = match source {
            None => None,
            Some(source) => {
                let cache = match &settings.cache {
                    None => None,
                    Some(cache_settings) => {
                        let store = open_token_store(config)?;
                        Some(Arc::new(TokenCache::new(
                            cache_settings.clone(),
                            store.clone(),
                            Arc::new(SystemClock),
                            Arc::new(TokenMetrics {
                                store: store.name(),
                            }),
                        )))
                    }
                };
                tracing::info!(
                    mode = if upstream.is_some() {
                        "upstream"
                    } else {
                        "embedded"
                    },
                    cache = cache.is_some(),
                    store = cache.as_ref().map_or("none", |c| c.store_name()),
                    "token endpoint ready"
                );
                Some(TokenEndpoint::new(source, cache))
            }
        };
        Ok(AuthDomain {
            issuer,
            tokens,
            upstream,
            waf,
            limiter,
            keepalive_seconds: config.server.keepalive_timeout_seconds,
        })
    }

    async fn token(
        &self,
        tokens: &TokenEndpoint,
        session: &mut Session,
        ctx: &mut AuthCtx,
    ) -> Result<HttpAnswer> {
        let (client_ip, request_id) = (ctx.client_ip, ctx.request_id.as_str());
        // Allow-listed addresses are exempt, as from the api listener's per-IP rule.
        let limiter = self
            .limiter
            .as_deref()
            .filter(|_| ctx.reputation != Reputation::Allowed);
        if let Some(Err(applied)) = limiter.map(|l| l.check_token_failures(client_ip)) {
            tracing::info!(target: "ratelimit", client_ip = %client_ip, "token endpoint: too many failed client authentications");
            return Ok(too_many_failures(&applied, request_id));
        }
        let Some(body) = read_body(session, MAX_TOKEN_BODY).await? else {
            return Ok(oauth_error(
                413,
                "invalid_request",
                "the request body is too large",
            ));
        };
        let req = session.req_header();
        let call = TokenCall {
            method: req.method.clone(),
            headers: req.headers.clone(),
            query: req.uri.query().map(str::to_string),
            body,
        };
        // Unauthenticated yet, so bounded: a claimed id is logged, not a client's essay.
        ctx.client_id = call
            .as_token_request()
            .claimed_client_id()
            .map(|id| id.chars().take(MAX_LOGGED_CLIENT_ID).collect());
        let outcome = tokens.token(call).await;
        let failed_authentication = is_failed_client_authentication(&outcome.answer);
        let secret_checked = self.issuer.is_some()
            && !outcome.lookup.is_some_and(Lookup::is_hit)
            && (outcome.answer.status == 200 || failed_authentication);
        if secret_checked {
            // The embedded issuer checked a secret: argon2 allocated (and freed) 19 MiB, which
            // the allocator would keep until the next purge (up to ~3 s; RSS 49 → 66 MB).
            // Requests refused before the check (malformed, busy) cost no collection. Forced,
            // so the freed segment goes back to the OS now.
            crate::serve::release_free_memory(true);
        }
        if let Some(limiter) = limiter
            && failed_authentication
        {
            limiter.record_token_failure(client_ip);
        }
        let result = outcome.lookup.map_or("uncached", Lookup::as_str);
        ctx.cache = result;
        metrics::token_request(result, outcome.answer.status);
        tracing::debug!(
            status = outcome.answer.status,
            cache = result,
            "token request answered"
        );
        Ok(outcome.answer)
    }

    async fn jwks(&self) -> HttpAnswer {
        match (&self.upstream, &self.issuer) {
            (Some(up), _) => match up.jwks().await {
                Ok(doc) => public_document(&doc),
                Err(e) => {
                    tracing::warn!(error = %e, "the upstream IdP's JWKS is unavailable");
                    oauth_error(502, "temporarily_unavailable", "the JWKS is unavailable")
                }
            },
            (None, Some(issuer)) => public_document(&issuer.jwks()),
            (None, None) => oauth_error(404, "not_found", "no keys"),
        }
    }

    async fn discovery(&self) -> HttpAnswer {
        match (&self.upstream, &self.issuer) {
            (Some(up), _) => match up.discovery().await {
                Ok(doc) => public_document(&doc),
                Err(e) => {
                    tracing::warn!(error = %e, "the upstream IdP's discovery document is unavailable");
                    oauth_error(
                        502,
                        "temporarily_unavailable",
                        "the discovery document is unavailable",
                    )
                }
            },
            (None, Some(issuer)) => public_document(&issuer.discovery()),
            (None, None) => oauth_error(404, "not_found", "no discovery document"),
        }
    }
}

#[async_trait]
impl ProxyHttp for AuthDomain {
    type CTX = AuthCtx;

    fn new_ctx(&self) -> AuthCtx {
        AuthCtx {
            request_id: String::new(),
            started: Instant::now(),
            client_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            reputation: Reputation::Neutral,
            route: "unmatched",
            client_id: None,
            cache: "",
            code: String::new(),
            _busy: crate::drain::Busy::new(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut AuthCtx) -> Result<bool> {
        crate::respond::bound_keepalive(session, self.keepalive_seconds);
        ctx.request_id = request_id::accept_or_generate(
            session
                .req_header()
                .headers
                .get(request_id::HEADER)
                .map(|v| v.as_bytes()),
        );
        let path = session.req_header().uri.path().to_string();
        // The api listener's IP lists, size limits and attack detection hold here too; on the
        // request head only: a token request's body carries client secrets, random strings that
        // detection rules could mistake for attacks, and the endpoint parses it strictly.
        ctx.client_ip = self.waf.session_client_ip(session);
        let req = session.req_header();
        let sample = SampleContext {
            request_id: &ctx.request_id,
            client_ip: ctx.client_ip,
            method: req.method.as_str(),
            path: &path,
        };
        let checked = self
            .waf
            .check_client_and_size(ctx.client_ip, req, false)
            .and_then(|reputation| {
                self.waf.inspect(req, None, &[], false, &sample)?;
                Ok(reputation)
            });
        let is_get = session.req_header().method == http::Method::GET;
        let endpoint = self.endpoint(&path, is_get);
        ctx.route = endpoint.label();
        match checked {
            Ok(reputation) => ctx.reputation = reputation,
            Err(refused) => {
                ctx.code = refused.code().to_owned();
                respond::error(session, &ctx.request_id, &path, &refused).await?;
                return Ok(true);
            }
        }
        let answer = match endpoint {
            Endpoint::Token(tokens) => self.token(tokens, session, ctx).await?,
            Endpoint::Jwks => self.jwks().await,
            Endpoint::Discovery => self.discovery().await,
            Endpoint::Proxied => return Ok(false),
            Endpoint::Unmatched => {
                let refused = GatewayError::RouteNotFound;
                ctx.code = refused.code().to_owned();
                respond::error(session, &ctx.request_id, &path, &refused).await?;
                return Ok(true);
            }
        };
        if let Some(code) = oauth_error_code(&answer) {
            ctx.code = code;
        }
        write_answer(session, answer, &ctx.request_id).await?;
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut AuthCtx,
    ) -> Result<Box<HttpPeer>> {
        match &self.upstream {
            Some(up) => up.target.peer().await,
            None => Err(Error::explain(
                ErrorType::InternalError,
                "the auth domain has no upstream in embedded mode",
            )),
        }
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        _ctx: &mut AuthCtx,
    ) -> Result<()> {
        let Some(up) = &self.upstream else {
            return Ok(());
        };
        // Virtual hosts (and TLS certificates) are the IdP's own name, not ours.
        upstream_request.insert_header(http::header::HOST, up.target.authority.as_str())?;
        if !up.target.path_prefix.is_empty() {
            let pq = upstream_request
                .uri
                .path_and_query()
                .map_or("/", |pq| pq.as_str());
            let uri: http::Uri = format!("{}{pq}", up.target.path_prefix)
                .parse()
                .map_err(|_| Error::explain(ErrorType::InternalError, "bad upstream path"))?;
            upstream_request.set_uri(uri);
        }
        Ok(())
    }

    /// One access line per request, as the api listener writes (`listener: "auth"`; the
    /// principal is the client id a token request claims, never its secret).
    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut AuthCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        tracing::info!(
            target: "access",
            listener = "auth",
            request_id = %ctx.request_id,
            method = %session.req_header().method,
            route = ctx.route,
            client_ip = %ctx.client_ip,
            principal = %crate::audit::mask_email(ctx.client_id.as_deref().unwrap_or("")),
            cache = ctx.cache,
            // As on the api listener: no policy decides here, a refusal is a rejection.
            decision = if ctx.code.is_empty() { "none" } else { "reject" },
            code = %ctx.code,
            status,
            total_us = ctx.started.elapsed().as_micros() as u64,
            "request"
        );
    }
}

/// Re-reads the embedded issuer's key directory, so `cedargate keys rotate` (another
/// process) takes effect in a running gateway within seconds.
pub struct KeyReloader {
    pub issuer: Option<Arc<Issuer>>,
}

#[async_trait]
impl BackgroundService for KeyReloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(issuer) = self.issuer.clone() else {
            return;
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(KEY_RELOAD_INTERVAL) => {}
            }
            let issuer = issuer.clone();
            let started = Instant::now();
            // Reading and parsing key files is blocking work.
            match tokio::task::spawn_blocking(move || issuer.reload_keys()).await {
                Ok(Ok(true)) => tracing::info!(
                    took_ms = started.elapsed().as_millis() as u64,
                    "the embedded issuer picked up new signing keys"
                ),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "re-reading the signing keys failed; keeping the current ones")
                }
                Err(_) => {}
            }
        }
    }
}
