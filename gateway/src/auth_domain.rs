//! The auth listener: the token endpoint, discovery and JWKS of the embedded issuer, served
//! through pingora (`ProxyHttp`, so pass-through to an upstream IdP can share it later).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::prelude::HttpPeer;
use pingora::proxy::{ProxyHttp, Session};
use pingora::{Error, ErrorType, Result};
use token_proxy::{HttpAnswer, Issuer, TokenRequest};

use crate::error::GatewayError;
use crate::request_id;
use crate::respond;

/// Largest token request body accepted.
const MAX_TOKEN_BODY: usize = 16 * 1024;

/// Shared state of the auth listener.
pub struct AuthDomain {
    pub issuer: Option<Arc<Issuer>>,
}

/// Per-request context of the auth listener.
pub struct AuthCtx {
    request_id: String,
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
    answer
        .headers
        .push(("cache-control".into(), "no-store".into()));
    answer.headers.push(("pragma".into(), "no-cache".into()));
    answer
}

async fn write_answer(session: &mut Session, answer: HttpAnswer, request_id: &str) -> Result<()> {
    let mut resp = ResponseHeader::build(answer.status, Some(answer.headers.len() + 4))?;
    for (k, v) in &answer.headers {
        resp.insert_header(k.clone(), v.as_str())?;
    }
    resp.insert_header("content-length", answer.body.len().to_string())?;
    respond::decorate(&mut resp, request_id)?;
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from(answer.body)), true)
        .await?;
    Ok(())
}

/// Read a small request body; `None` when it exceeds `limit`.
async fn read_body(session: &mut Session, limit: usize) -> Result<Option<Bytes>> {
    let mut body = BytesMut::new();
    while let Some(chunk) = session.read_request_body().await? {
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body.freeze()))
}

impl AuthDomain {
    async fn token(&self, issuer: &Arc<Issuer>, session: &mut Session) -> Result<HttpAnswer> {
        let Some(body) = read_body(session, MAX_TOKEN_BODY).await? else {
            return Ok(oauth_error(
                413,
                "invalid_request",
                "the request body is too large",
            ));
        };
        let req = session.req_header();
        let header = |name: http::header::HeaderName| {
            req.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let method = req.method.as_str().to_string();
        let authorization = header(http::header::AUTHORIZATION);
        let content_type = header(http::header::CONTENT_TYPE);
        let issuer = issuer.clone();
        // Secret verification (argon2) is deliberately slow: keep it off the I/O threads.
        let answer = tokio::task::spawn_blocking(move || {
            issuer.token(&TokenRequest {
                method: &method,
                authorization: authorization.as_deref(),
                content_type: content_type.as_deref(),
                body: &body,
            })
        })
        .await
        .map_err(|_| Error::explain(ErrorType::InternalError, "token task failed"))?;
        Ok(answer)
    }
}

#[async_trait]
impl ProxyHttp for AuthDomain {
    type CTX = AuthCtx;

    fn new_ctx(&self) -> AuthCtx {
        AuthCtx {
            request_id: String::new(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut AuthCtx) -> Result<bool> {
        ctx.request_id = request_id::accept_or_generate(
            session
                .req_header()
                .headers
                .get(request_id::HEADER)
                .map(|v| v.as_bytes()),
        );
        let path = session.req_header().uri.path().to_string();
        let is_get = session.req_header().method == http::Method::GET;
        let Some(issuer) = &self.issuer else {
            respond::error(
                session,
                &ctx.request_id,
                &path,
                &GatewayError::RouteNotFound,
            )
            .await?;
            return Ok(true);
        };
        let answer = match path.as_str() {
            "/oauth2/token" => self.token(issuer, session).await?,
            "/.well-known/jwks.json" if is_get => {
                let mut a = json(200, &issuer.jwks());
                a.headers
                    .push(("cache-control".into(), "public, max-age=300".into()));
                a
            }
            "/.well-known/openid-configuration" if is_get => {
                let mut a = json(200, &issuer.discovery());
                a.headers
                    .push(("cache-control".into(), "public, max-age=300".into()));
                a
            }
            _ => {
                respond::error(
                    session,
                    &ctx.request_id,
                    &path,
                    &GatewayError::RouteNotFound,
                )
                .await?;
                return Ok(true);
            }
        };
        write_answer(session, answer, &ctx.request_id).await?;
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut AuthCtx,
    ) -> Result<Box<HttpPeer>> {
        Err(Error::explain(
            ErrorType::InternalError,
            "the auth domain has no upstream in embedded mode",
        ))
    }
}
