//! `POST /oauth2/token` in front of the cache: validate the request completely, derive the
//! cache key, and let the cache answer or ask whoever issues tokens (the embedded issuer, or
//! an upstream IdP). Every answer leaves with `Cache-Control: no-store` and `Pragma: no-cache`.
//!
//! What may reach the cache: a syntactically valid `client_credentials` request (RFC 6749
//! §4.4, one client authentication method, no repeated parameter, a well-formed scope). With
//! the embedded issuer also: a configured client asking only for scopes it has; the key then
//! includes a fingerprint of that client's configuration (secret hash, scopes, claims,
//! lifetime) and the current signing key, so a changed or removed client never meets its old
//! entries and a key rotation starts afresh. The key includes
//! the credentials as presented, so a hit proves that exactly these credentials were accepted
//! by the issuer within the cache lifetime; anything else (a wrong secret, an unknown client)
//! is a miss and gets the issuer's own answer.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, Method};

use crate::answer::{HttpAnswer, OAuthError};
use crate::cache::{CacheKey, Lookup, Presented, TokenCache};
use crate::issuer::Issuer;
use crate::token_request::{self, AuthMethod, TokenRequest};

/// A token request as the listener received it: method, headers, query and the whole body.
#[derive(Clone)]
pub struct TokenCall {
    pub method: Method,
    pub headers: HeaderMap,
    /// The query string, without `?`.
    pub query: Option<String>,
    pub body: Bytes,
}

impl fmt::Debug for TokenCall {
    // Headers and body can both carry the client secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCall")
            .field("method", &self.method)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl TokenCall {
    fn header(&self, name: http::header::HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The parts the request parser looks at.
    pub fn as_token_request(&self) -> TokenRequest<'_> {
        TokenRequest {
            method: self.method.as_str(),
            authorization: self.header(http::header::AUTHORIZATION),
            content_type: self.header(http::header::CONTENT_TYPE),
            body: &self.body,
        }
    }
}

/// An external IdP's token endpoint.
#[async_trait]
pub trait TokenUpstream: Send + Sync + 'static {
    /// Send the request on unchanged and return the answer as it came (status, headers,
    /// body); a transport failure becomes a 502/504 answer.
    async fn token(&self, call: &TokenCall) -> HttpAnswer;
    /// What names this upstream in cache keys (its token URL): another upstream never
    /// shares entries.
    fn cache_context(&self) -> String;
}

/// Who issues tokens behind the cache.
#[derive(Clone)]
pub enum TokenSource {
    Embedded(Arc<Issuer>),
    Upstream(Arc<dyn TokenUpstream>),
}

/// How a token request was answered.
#[derive(Debug)]
pub struct TokenOutcome {
    pub answer: HttpAnswer,
    /// `None` when the request did not go through the cache (rejected before it, a grant
    /// that is not cached, or the cache is off).
    pub lookup: Option<Lookup>,
}

/// The token endpoint of the auth domain.
pub struct TokenEndpoint {
    source: TokenSource,
    cache: Option<Arc<TokenCache>>,
}

/// Replace whatever caching headers an answer has with RFC 6749 §5.1's.
pub fn enforce_no_store(answer: &mut HttpAnswer) {
    answer.headers.retain(|(k, _)| {
        !k.eq_ignore_ascii_case("cache-control") && !k.eq_ignore_ascii_case("pragma")
    });
    answer
        .headers
        .push(("Cache-Control".into(), "no-store".into()));
    answer.headers.push(("Pragma".into(), "no-cache".into()));
}

async fn embedded_token(issuer: Arc<Issuer>, call: Arc<TokenCall>) -> HttpAnswer {
    // Secret verification (argon2) is deliberately slow: keep it off the async workers.
    tokio::task::spawn_blocking(move || issuer.token(&call.as_token_request()))
        .await
        .unwrap_or_else(|_| {
            OAuthError::new(500, "server_error", "the token could not be issued").into_answer()
        })
}

impl TokenEndpoint {
    /// An endpoint over `source`, with `cache` (none: every request goes to the source).
    pub fn new(source: TokenSource, cache: Option<Arc<TokenCache>>) -> TokenEndpoint {
        TokenEndpoint { source, cache }
    }

    /// Who issues tokens.
    pub fn source(&self) -> &TokenSource {
        &self.source
    }

    /// The cache, when on.
    pub fn cache(&self) -> Option<&Arc<TokenCache>> {
        self.cache.as_ref()
    }

    /// Answer one token request.
    pub async fn token(&self, call: TokenCall) -> TokenOutcome {
        let mut outcome = self.answer(call).await;
        enforce_no_store(&mut outcome.answer);
        outcome
    }

    async fn answer(&self, call: TokenCall) -> TokenOutcome {
        let uncached = |answer| TokenOutcome {
            answer,
            lookup: None,
        };
        let grant = match token_request::parse(&call.as_token_request()) {
            Ok(grant) => grant,
            // Other grants (authorization_code, refresh_token, ...) are the upstream's
            // business: relayed, never cached.
            Err(e) if e.error == "unsupported_grant_type" => {
                return match &self.source {
                    TokenSource::Upstream(up) => uncached(up.token(&call).await),
                    TokenSource::Embedded(_) => uncached(e.into_answer()),
                };
            }
            Err(e) => return uncached(e.into_answer()),
        };
        let context = match &self.source {
            TokenSource::Upstream(up) => {
                let mut c = b"upstream\0".to_vec();
                c.extend_from_slice(up.cache_context().as_bytes());
                Some(c)
            }
            TokenSource::Embedded(issuer) => issuer.cache_context(&grant).map(|fingerprint| {
                let mut c = b"embedded\0".to_vec();
                c.extend_from_slice(&fingerprint);
                c
            }),
        };
        let call = Arc::new(call);
        let fetch = {
            let call = call.clone();
            let source = self.source.clone();
            move || async move {
                match source {
                    TokenSource::Upstream(up) => up.token(&call).await,
                    TokenSource::Embedded(issuer) => embedded_token(issuer, call).await,
                }
            }
        };
        // An unknown client or a scope it lacks: the issuer answers (at the cost of a
        // secret verification, so unknown and known ids take equally long).
        let (Some(cache), Some(context)) = (&self.cache, context) else {
            return uncached(fetch().await);
        };
        let presented = match (
            grant.credentials.method,
            call.as_token_request().authorization,
        ) {
            (AuthMethod::Basic, Some(authorization)) => Presented::Authorization(authorization),
            _ => Presented::Posted {
                client_id: &grant.credentials.client_id,
                client_secret: &grant.credentials.secret,
            },
        };
        let key = CacheKey::new(
            &context,
            presented,
            "client_credentials",
            grant.scope.as_ref(),
        );
        let (answer, lookup) = cache.get_or_fetch(&key, fetch).await;
        TokenOutcome {
            answer,
            lookup: Some(lookup),
        }
    }
}

#[cfg(test)]
mod tests;
