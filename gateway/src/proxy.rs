//! The api listener: pingora's `ProxyHttp`, one hook per phase, each calling one stage.
//!
//! request_filter: request id -> path check -> authn -> route -> authz (reject = answered)
//! upstream_peer: the backend
//! upstream_request_filter: forward (strip identity headers, add the signed assertion)
//! response_filter: respond (request id, Server-Timing, security headers)
//! logging: one audit line per request, written once from the context

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorType, Result};

use crate::audit::{self, AuditSink};
use crate::authn::{Identity, Verifier, bearer_token};
use crate::authz::{Authorizer, Outcome, RequestFacts};
use crate::cors::Cors;
use crate::error::GatewayError;
use crate::forward::{self, AssertionSigner};
use crate::request_id;
use crate::respond;
use crate::routes::split_path;

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
    /// The Cedar resource, e.g. `Mission::"m1"`.
    pub resource: Option<String>,
    pub identity: Option<Arc<Identity>>,
    pub impersonated: Option<String>,
    pub outcome: Option<Outcome>,
    pub rejected: Option<GatewayError>,
    pub authn: Duration,
    pub authz: Duration,
    pub upstream_started: Option<Instant>,
    pub upstream: Option<Duration>,
    /// The request's `Origin`, when CORS allows it.
    pub origin: Option<String>,
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
            resource: None,
            identity: None,
            impersonated: None,
            outcome: None,
            rejected: None,
            authn: Duration::ZERO,
            authz: Duration::ZERO,
            upstream_started: None,
            upstream: None,
            origin: None,
        }
    }
}

impl Gateway {
    /// Stages 1, 4, 7 and 8. `Err(e)` means the request is rejected with `e`.
    async fn admit(&self, session: &Session, ctx: &mut RequestCtx) -> Result<(), GatewayError> {
        let req = session.req_header();
        ctx.method = req.method.as_str().to_string();
        ctx.path = req.uri.path().to_string();
        ctx.query = req.uri.query().unwrap_or_default().to_string();

        // Stage 7, first half: a smuggled path is refused before anything costs more.
        let segments = split_path(req.uri.path())?;
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

        // Stage 7: the route.
        let bundle = self.authorizer.current();
        let matched = bundle
            .routes
            .find(&req.method, &segments)
            .ok_or(GatewayError::RouteNotFound)?;
        let route = &bundle.routes.routes[matched.route_index];
        ctx.route = Some(route.action.clone());
        // Policies and backend must never read different values of one parameter.
        if route.ambiguous_query(&query) {
            return Err(GatewayError::AmbiguousQuery);
        }
        let resource_id = match &route.resource_param {
            Some(p) => matched.param(p),
            None => matched.param("workspaceId"),
        };
        ctx.resource = Some(format!(
            "{}::{:?}",
            route.resource_type,
            resource_id.unwrap_or_default()
        ));

        // Stage 8: authorization (with the shadow set beside it).
        let t = Instant::now();
        let impersonated = req
            .headers
            .get("x-user-id")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
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
        if !allowed {
            return Err(GatewayError::Forbidden);
        }
        Ok(())
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
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

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let peer = match &self.upstream {
            Upstream::Unix(path) => HttpPeer::new_uds(path, false, String::new())?,
            Upstream::Tcp(addr) => HttpPeer::new(*addr, false, String::new()),
        };
        Ok(Box::new(peer))
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
        let identity = ctx.identity.as_ref().ok_or_else(|| {
            Error::explain(ErrorType::InternalError, "forwarding without an identity")
        })?;
        let assertion = self
            .signer
            .sign(
                identity,
                ctx.impersonated.as_deref(),
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
        respond::decorate(resp, &ctx.request_id)?;
        self.cors.decorate(ctx.origin.as_deref(), resp)?;
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
        let err = match e.etype() {
            ErrorType::HTTPStatus(code) if *code < 500 => {
                // A malformed request the HTTP layer refused.
                let _ = session.respond_error(*code).await;
                return FailToProxy {
                    error_code: *code,
                    can_reuse_downstream: false,
                };
            }
            _ => match e.esource() {
                pingora::ErrorSource::Upstream => GatewayError::UpstreamUnavailable,
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
