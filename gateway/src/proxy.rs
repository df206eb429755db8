//! The api listener: pingora's `ProxyHttp`, one hook per phase, each calling one stage.
//!
//! request_filter: request id -> waf (reputation, sizes, path check, detection) -> rate limit
//!   by IP -> authn -> delegation -> rate limit by principal -> route -> authz (reject = answered)
//! request_body_filter: waf on a body too large to read ahead (its head is held until inspected)
//! upstream_peer: the backend
//! upstream_request_filter: forward (strip identity headers, add the signed assertion)
//! response_filter: respond (request id, Server-Timing, security headers)
//! logging: one audit line per request, written once from the context

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorType, Result};

use crate::audit::{self, AuditSink};
use crate::authn::{Identity, Verifier, bearer_token};
use crate::authz::{Authorizer, Outcome, RequestFacts};
use crate::cors::Cors;
use crate::delegation::{Directory, DirectoryChange};
use crate::error::GatewayError;
use crate::forward::{self, AssertionSigner};
use crate::ratelimit::{Applied, Principal, RateLimiter};
use crate::request_id;
use crate::respond;
use crate::routes::split_path;
use crate::waf::{self, BodyGate, GateStep, Reputation, SampleContext, Waf};

/// Where the backend listens.
#[derive(Debug, Clone)]
pub enum Upstream {
    Unix(String),
    Tcp(std::net::SocketAddr),
}

/// Shared state of the api listener.
pub struct Gateway {
    pub verifier: Arc<Verifier>,
    pub authorizer: Arc<Authorizer>,
    pub signer: AssertionSigner,
    pub upstream: Upstream,
    pub audit: AuditSink,
    pub cors: Cors,
    /// `false`: a plain reverse proxy, no stage runs (the benchmark's baseline).
    pub pipeline: bool,
    pub waf: Arc<Waf>,
    /// The user directory for delegation (`X-User-ID`).
    pub directory: Directory,
    /// `None`: rate limiting is off.
    pub limiter: Option<Arc<RateLimiter>>,
    /// `[server] keepalive_timeout_seconds`.
    pub keepalive_seconds: u64,
    /// Whether the embedded backend serves yet (a graceful upgrade's hand-over).
    pub backend: Arc<crate::drain::Backend>,
}

/// Per-request context: what each stage learned, recorded once in `logging`.
pub struct RequestCtx {
    pub request_id: String,
    pub started: Instant,
    pub path: String,
    /// The raw query string ("" when none).
    pub query: String,
    pub method: String,
    /// The Cedar action id of the matched route.
    pub route: Option<String>,
    /// The policy bundle in force when the request arrived, and the route it matched there
    /// (matched once, by the screen, for per-route WAF exclusions and rate limits, then for
    /// the decision).
    pub bundle: Option<Arc<crate::authz::PolicyBundle>>,
    pub matched: Option<crate::routes::RouteMatch>,
    /// The client's address (the peer, or X-Forwarded-For behind a trusted proxy).
    pub client_ip: Option<IpAddr>,
    /// The body's inspection state, when the request has a body.
    pub body_gate: Option<BodyGate>,
    /// The rate-limit rule with the least room left, for the `RateLimit` headers.
    pub rate_limit: Option<Applied>,
    /// A public route (the API description): answered without authentication.
    pub public: bool,
    pub waf: Duration,
    pub ratelimit: Duration,
    /// The Cedar resource, e.g. `Mission::"m1"`.
    pub resource: Option<String>,
    pub identity: Option<Arc<Identity>>,
    pub impersonated: Option<String>,
    /// The user a delegated request acts for, as the directory describes them.
    pub delegated: Option<std::sync::Arc<crate::delegation::DelegatedUser>>,
    pub outcome: Option<Outcome>,
    pub rejected: Option<GatewayError>,
    pub authn: Duration,
    pub authz: Duration,
    pub upstream_started: Option<Instant>,
    pub upstream: Option<Duration>,
    /// The request's `Origin`, when CORS allows it.
    pub origin: Option<String>,
    /// What the request changes in the user directory, when the backend accepts it.
    pub directory_change: Option<DirectoryChange>,
    /// The gateway answered `Expect: 100-continue` itself (the backend must not answer again).
    pub continued: bool,
    /// Its connection to the embedded backend failed during a hand-over (it waits once).
    pub awaiting_backend: bool,
    /// Counts the request as in progress until its access line is written (graceful shutdown).
    _busy: crate::drain::Busy,
}

impl RequestCtx {
    fn new() -> RequestCtx {
        RequestCtx {
            request_id: String::new(),
            started: Instant::now(),
            path: String::new(),
            query: String::new(),
            method: String::new(),
            route: None,
            bundle: None,
            matched: None,
            client_ip: None,
            body_gate: None,
            rate_limit: None,
            public: false,
            waf: Duration::ZERO,
            ratelimit: Duration::ZERO,
            resource: None,
            identity: None,
            impersonated: None,
            delegated: None,
            outcome: None,
            rejected: None,
            authn: Duration::ZERO,
            authz: Duration::ZERO,
            upstream_started: None,
            upstream: None,
            origin: None,
            directory_change: None,
            continued: false,
            awaiting_backend: false,
            _busy: crate::drain::Busy::new(),
        }
    }
}

impl Gateway {
    /// Stages 2 and 3: the WAF (reputation, sizes, smuggled paths, detection on the head and
    /// on a body small enough to read ahead) and the rate limit by client IP.
    async fn screen(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<(), GatewayError> {
        let t = Instant::now();
        let client_ip = self.waf.session_client_ip(session);
        let req = session.req_header();
        ctx.method = req.method.as_str().to_string();
        ctx.path = req.uri.path().to_string();
        ctx.query = req.uri.query().unwrap_or_default().to_string();
        ctx.client_ip = Some(client_ip);
        let reputation = self.waf.check_client_and_size(client_ip, req, true)?;
        // Stage 7, first half: a smuggled path is refused before anything costs more.
        let segments = split_path(req.uri.path())?;
        // The route is needed early for per-route WAF exclusions and rate limits.
        let bundle = self.authorizer.current();
        let matched = bundle.routes.find(&req.method, &segments);
        ctx.route = matched
            .as_ref()
            .map(|m| bundle.routes.routes[m.route_index].action.clone());
        ctx.matched = matched;
        ctx.bundle = Some(bundle);
        let has_body = respond::has_body(req);
        let mut body = BytesMut::new();
        let read_ahead = waf::read_ahead_length(req).filter(|_| self.waf.settings().enabled);
        if let Some(len) = read_ahead {
            // A client waiting for `100 Continue` before it sends the body (RFC 9110 §10.1.1)
            // gets it now: the body is read here, before the backend sees the request.
            ctx.continued = respond::continue_if_expected(session)
                .await
                .map_err(|_| GatewayError::InvalidRequest("the request body could not be read"))?;
            // Small enough for pingora's retry buffer, which replays it to the backend.
            session.enable_retry_buffering();
            let read = async {
                while let Some(chunk) = session.read_request_body().await? {
                    body.extend_from_slice(&chunk);
                    if body.len() as u64 >= len {
                        break;
                    }
                }
                Ok::<(), Box<Error>>(())
            };
            match tokio::time::timeout(waf::BODY_READ_TIMEOUT, read).await {
                Err(_) => return Err(GatewayError::BodyTimeout),
                Ok(Err(_)) => {
                    return Err(GatewayError::InvalidRequest(
                        "the request body could not be read",
                    ));
                }
                Ok(Ok(())) => {}
            }
            ctx.body_gate = Some(BodyGate::inspected());
        } else if has_body {
            ctx.body_gate = Some(self.waf.body_gate());
        }
        let req = session.req_header();
        let sample = SampleContext {
            request_id: &ctx.request_id,
            client_ip,
            method: &ctx.method,
            path: &ctx.path,
        };
        let inspected = self
            .waf
            .inspect(req, ctx.route.as_deref(), &body, false, &sample);
        ctx.waf = t.elapsed();
        crate::metrics::observe_stage(crate::metrics::Stage::Waf, ctx.waf);
        inspected?;

        // Stage 3: the rate limit by client IP (allow-listed clients are exempt).
        if let (Some(limiter), Reputation::Neutral) = (&self.limiter, reputation) {
            let t = Instant::now();
            let checked = limiter.check_ip(client_ip);
            ctx.ratelimit += t.elapsed();
            match checked {
                Ok(applied) => ctx.rate_limit = applied,
                Err(refused) => return Err(GatewayError::RateLimited(refused)),
            }
        }
        Ok(())
    }

    /// Stages 4 to 8. `Err(e)` means the request is rejected with `e`.
    async fn admit(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<(), GatewayError> {
        self.screen(session, ctx).await?;
        let req = session.req_header();
        if is_public(req) {
            // The API description: public, answered by the gateway from its route table.
            ctx.public = true;
            return Ok(());
        }
        let query: Vec<(String, String)> = req
            .uri
            .query()
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        if query.iter().any(|(k, _)| k == "access_token") {
            return Err(GatewayError::TokenInQuery);
        }

        // Stage 4: authentication.
        let t = Instant::now();
        let authorization = req
            .headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        let token = bearer_token(authorization).map_err(|e| e.into_gateway())?;
        let verified = self.verifier.verify(token).await;
        ctx.authn = t.elapsed();
        let identity = verified.map_err(|e| e.into_gateway())?;
        ctx.identity = Some(identity.clone());

        // Stage 5: delegation (an M2M client acting for a user of its workspace).
        let delegated = self
            .directory
            .delegate(
                &identity,
                req.headers.get("x-user-id").map(|v| v.as_bytes()),
                &ctx.request_id,
            )
            .await?;
        let impersonated = delegated.as_ref().map(|u| u.user_id.clone());

        // Stage 6: rate limits by principal (client, impersonated user, tenant plan, route).
        if let Some(limiter) = &self.limiter {
            let t = Instant::now();
            let checked = limiter.check_principal(&Principal {
                identity: &identity,
                impersonated_user: impersonated.as_deref(),
                action_id: ctx.route.as_deref(),
                client_ip: ctx.client_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            });
            ctx.ratelimit += t.elapsed();
            match checked {
                Ok(Some(applied)) => {
                    if ctx
                        .rate_limit
                        .as_ref()
                        .is_none_or(|a| applied.standing.remaining < a.standing.remaining)
                    {
                        ctx.rate_limit = Some(applied);
                    }
                }
                Ok(None) => {}
                Err(refused) => return Err(GatewayError::RateLimited(refused)),
            }
        }

        // Stage 7: the route.
        let (Some(bundle), Some(matched)) = (ctx.bundle.take(), ctx.matched.take()) else {
            return Err(GatewayError::RouteNotFound);
        };
        let route = &bundle.routes.routes[matched.route_index];
        ctx.directory_change = DirectoryChange::of(&req.method, &route.template, |p| {
            matched.param(p).map(str::to_owned)
        });
        // Policies and backend must never read different values of one parameter.
        if route.ambiguous_query(&query) {
            return Err(GatewayError::AmbiguousQuery);
        }
        let resource_id = match &route.resource_param {
            Some(p) => matched.param(p),
            None => matched.param("workspaceId"),
        };
        ctx.resource = Some(
            crate::authz::mapping::EntityText {
                kind: &route.resource_type,
                id: resource_id.unwrap_or_default(),
            }
            .to_string(),
        );

        // Stage 8: authorization (with the shadow set beside it).
        let t = Instant::now();
        let outcome = self.authorizer.authorize(
            &bundle,
            &identity,
            &RequestFacts {
                route: &matched,
                query: &query,
                impersonated_user: impersonated.as_deref(),
            },
        );
        ctx.authz = t.elapsed();
        if let Some(shadow) = outcome.shadow_difference() {
            crate::metrics::shadow_difference(
                &route.action,
                outcome.decision.allowed,
                shadow.allowed,
            );
            tracing::info!(
                target: "shadow",
                request_id = %ctx.request_id,
                route = %route.action,
                active = outcome.decision.allowed,
                shadow = shadow.allowed,
                shadow_reasons = ?shadow.reasons,
                "shadow policies decide differently"
            );
        }
        let allowed = outcome.decision.allowed;
        ctx.outcome = Some(outcome);
        ctx.impersonated = impersonated;
        ctx.delegated = delegated;
        if !allowed {
            return Err(GatewayError::Forbidden);
        }
        Ok(())
    }
}

/// The only routes answered without a token: `GET`/`HEAD /openapi.json` (no query).
fn is_public(req: &RequestHeader) -> bool {
    (req.method == http::Method::GET || req.method == http::Method::HEAD)
        && req.uri.path() == "/openapi.json"
        && req.uri.query().is_none()
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        respond::bound_keepalive(session, self.keepalive_seconds);
        ctx.request_id = request_id::accept_or_generate(
            session
                .req_header()
                .headers
                .get(request_id::HEADER)
                .map(|v| v.as_bytes()),
        );
        if !self.pipeline {
            return Ok(false);
        }
        if !self.cors.allowed_origins.is_empty() {
            let req = session.req_header();
            ctx.origin = self.cors.allowed_origin(req).map(str::to_string);
            if Cors::is_preflight(req) {
                // Preflights are answered here: no token, no policy, no backend.
                let mut resp = self.cors.preflight(req)?;
                resp.insert_header(request_id::HEADER, &ctx.request_id)?;
                ctx.method = "OPTIONS".into();
                ctx.path = req.uri.path().to_string();
                session.write_response_header(Box::new(resp), true).await?;
                return Ok(true);
            }
        }
        match self.admit(session, ctx).await {
            Ok(()) if ctx.public => {
                let bundle = self.authorizer.current();
                let body = bytes::Bytes::from(
                    serde_json::to_vec(&crate::openapi::document(&bundle.routes))
                        .unwrap_or_default(),
                );
                let mut resp = respond::json_response(200, body.len(), &ctx.request_id)?;
                resp.insert_header("cache-control", "public, max-age=60")?;
                self.cors.decorate(ctx.origin.as_deref(), &mut resp)?;
                let head_only = session.req_header().method == http::Method::HEAD;
                session
                    .write_response_header(Box::new(resp), head_only)
                    .await?;
                if !head_only {
                    session.write_response_body(Some(body), true).await?;
                }
                Ok(true)
            }
            Ok(()) => Ok(false),
            Err(err) => {
                let (cors, origin) = (&self.cors, ctx.origin.as_deref());
                respond::error_with(session, &ctx.request_id, &ctx.path, &err, |r| {
                    cors.decorate(origin, r)
                })
                .await?;
                ctx.rejected = Some(err);
                Ok(true)
            }
        }
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(mut gate) = ctx.body_gate.take() else {
            return Ok(());
        };
        let outcome = match gate.take(&self.waf, body, end_of_stream) {
            Ok(GateStep::Pass) => Ok(()),
            Ok(GateStep::Inspect { truncated }) => {
                let t = Instant::now();
                let sample = SampleContext {
                    request_id: &ctx.request_id,
                    client_ip: ctx.client_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                    method: &ctx.method,
                    path: &ctx.path,
                };
                let inspected = self.waf.inspect(
                    session.req_header(),
                    ctx.route.as_deref(),
                    gate.head(),
                    truncated,
                    &sample,
                );
                let spent = t.elapsed();
                ctx.waf += spent;
                crate::metrics::observe_stage(crate::metrics::Stage::Waf, spent);
                if inspected.is_ok() {
                    gate.release(body);
                }
                inspected
            }
            Err(e) => Err(e),
        };
        ctx.body_gate = Some(gate);
        outcome.map_err(|e| {
            ctx.rejected = Some(e);
            // fail_to_proxy answers with the rejection recorded in the context.
            Error::explain(
                ErrorType::Custom("request body rejected"),
                "request body rejected",
            )
        })
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        if ctx.awaiting_backend && !self.backend.wait_ready().await {
            return Err(Error::explain(
                ErrorType::ConnectRefused,
                "the embedded backend was not handed over in time",
            ));
        }
        let peer = match &self.upstream {
            Upstream::Unix(path) => HttpPeer::new_uds(path, false, String::new())?,
            Upstream::Tcp(addr) => HttpPeer::new(*addr, false, String::new()),
        };
        Ok(Box::new(peer))
    }

    /// pingora's policy (retry an idempotent request after a failure on a reused connection),
    /// plus, during a graceful upgrade's hand-over, a request the previous instance's backend
    /// did not take: it closes its idle connections when it stops, and a request written on one
    /// just then fails on the write, or finds the connection closed or reset before a byte of
    /// answer. A backend that has read a request answers it before it stops (only a process
    /// killed mid-request, past its grace period, breaks that).
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        _ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let untaken = match e.etype() {
            ErrorType::WriteError => true,
            // pingora's read of the answer's head says how much it had (nothing else does).
            ErrorType::ConnectionClosed | ErrorType::ReadError => e
                .context
                .as_ref()
                .is_some_and(|c| c.as_str().ends_with("bytes already read: 0")),
            _ => false,
        };
        let mut e = e.more_context(format!("Peer: {peer}"));
        if session.as_ref().retry_buffer_truncated() {
            e.set_retry(false);
        } else if session.req_header().method.is_idempotent() {
            e.retry.decide_reuse(client_reused);
        } else {
            e.set_retry(client_reused && untaken && !self.backend.is_ready());
        }
        e
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // A graceful upgrade's hand-over: the previous instance's backend has stopped and this
        // one's is not serving yet. The request waits for it (`upstream_peer`), once.
        if !self.backend.is_ready() && !ctx.awaiting_backend {
            ctx.awaiting_backend = true;
            e.set_retry(true);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if !self.pipeline {
            return Ok(());
        }
        forward::strip_identity_headers(upstream);
        if ctx.continued {
            upstream.remove_header(&http::header::EXPECT);
        }
        let identity = ctx.identity.as_ref().ok_or_else(|| {
            Error::explain(ErrorType::InternalError, "forwarding without an identity")
        })?;
        let assertion = self
            .signer
            .sign(
                identity,
                ctx.delegated.as_deref(),
                &ctx.method,
                &ctx.path,
                &ctx.request_id,
            )
            .ok_or_else(|| {
                Error::explain(
                    ErrorType::InternalError,
                    "cannot sign the identity assertion",
                )
            })?;
        forward::add_identity_headers(upstream, identity, &assertion)?;
        upstream.insert_header(request_id::HEADER, &ctx.request_id)?;
        ctx.upstream_started = Some(Instant::now());
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(started) = ctx.upstream_started {
            ctx.upstream = Some(started.elapsed());
        }
        // Before the client hears of the change, so that its next request sees it.
        if let Some(change) = &ctx.directory_change
            && resp.status.is_success()
        {
            self.directory.forget(change).await;
        }
        respond::decorate(resp, &ctx.request_id)?;
        self.cors.decorate(ctx.origin.as_deref(), resp)?;
        if let Some(applied) = &ctx.rate_limit {
            respond::rate_limit_headers(resp, applied)?;
        }
        resp.insert_header(
            "server-timing",
            respond::server_timing(ctx.authn, ctx.authz, ctx.upstream.unwrap_or_default()),
        )?;
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy
    where
        RequestCtx: Send + Sync,
    {
        let envelope = match e.etype() {
            ErrorType::HTTPStatus(code) => GatewayError::of_http_status(*code),
            _ => None,
        };
        let err = match (e.etype(), envelope) {
            // The body stage rejected the request (the upstream never got the whole body).
            _ if ctx.rejected.is_some() => ctx.rejected.take().unwrap_or(GatewayError::Internal),
            // A request the HTTP layer refused: our envelope where we have a code.
            (_, Some(err)) => err,
            (ErrorType::HTTPStatus(code), None) if *code < 500 => {
                let _ = session.respond_error(*code).await;
                return FailToProxy {
                    error_code: *code,
                    can_reuse_downstream: false,
                };
            }
            _ => match e.esource() {
                pingora::ErrorSource::Upstream => {
                    crate::metrics::upstream_error(e.etype().as_str());
                    GatewayError::UpstreamUnavailable
                }
                pingora::ErrorSource::Downstream => {
                    return FailToProxy {
                        error_code: 0,
                        can_reuse_downstream: false,
                    };
                }
                _ => GatewayError::Internal,
            },
        };
        let code = err.status();
        if session.response_written().is_none() {
            let _ = respond::error(session, &ctx.request_id, &ctx.path, &err).await;
        }
        ctx.rejected = Some(err);
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        if !self.pipeline {
            return;
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        audit::record(&self.audit, ctx, status);
    }
}
