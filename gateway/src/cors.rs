//! CORS, answered at the gateway from config: preflights never reach authentication or the
//! backend, and actual responses get `Access-Control-Allow-Origin` only for listed origins.

use pingora::Result;
use pingora::http::{RequestHeader, ResponseHeader};

/// Validated CORS settings; no origins means CORS is off.
#[derive(Debug, Clone, Default)]
pub struct Cors {
    pub allowed_origins: Vec<String>,
    pub allowed_methods: Vec<String>,
    pub allowed_headers: Vec<String>,
    pub max_age_seconds: u64,
    pub allow_credentials: bool,
}

/// Headers a browser script may read.
const EXPOSED: &str = "x-request-id, server-timing, retry-after, ratelimit, ratelimit-policy, \
                       idempotent-replayed, www-authenticate";

impl Cors {
    /// The request's `Origin`, if CORS is on and it is listed (or `*` is).
    pub fn allowed_origin<'a>(&self, req: &'a RequestHeader) -> Option<&'a str> {
        let origin = req.headers.get("origin")?.to_str().ok()?;
        self.allowed_origins
            .iter()
            .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
            .then_some(origin)
    }

    /// Whether this is a preflight (`OPTIONS` with `Access-Control-Request-Method`).
    pub fn is_preflight(req: &RequestHeader) -> bool {
        req.method == http::Method::OPTIONS
            && req.headers.contains_key("access-control-request-method")
    }

    /// The answer to a preflight: 204 with the allowances, or 403 when the origin, method or
    /// headers are not allowed.
    pub fn preflight(&self, req: &RequestHeader) -> Result<ResponseHeader> {
        let method_ok = req
            .headers
            .get("access-control-request-method")
            .and_then(|m| m.to_str().ok())
            .is_some_and(|m| {
                self.allowed_methods
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(m))
            });
        let headers_ok = req
            .headers
            .get("access-control-request-headers")
            .and_then(|h| h.to_str().ok())
            .is_none_or(|h| {
                h.split(',')
                    .map(str::trim)
                    .filter(|x| !x.is_empty())
                    .all(|x| {
                        self.allowed_headers
                            .iter()
                            .any(|a| a.eq_ignore_ascii_case(x))
                    })
            });
        let origin = self.allowed_origin(req);
        let mut resp = ResponseHeader::build(
            if origin.is_some() && method_ok && headers_ok {
                204
            } else {
                403
            },
            Some(8),
        )?;
        resp.insert_header(
            "vary",
            "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        )?;
        resp.insert_header("content-length", "0")?;
        if let (Some(origin), true, true) = (origin, method_ok, headers_ok) {
            resp.insert_header("access-control-allow-origin", origin)?;
            resp.insert_header(
                "access-control-allow-methods",
                self.allowed_methods.join(", "),
            )?;
            resp.insert_header(
                "access-control-allow-headers",
                self.allowed_headers.join(", "),
            )?;
            resp.insert_header("access-control-max-age", self.max_age_seconds.to_string())?;
            if self.allow_credentials {
                resp.insert_header("access-control-allow-credentials", "true")?;
            }
        }
        Ok(resp)
    }

    /// Add the CORS headers of an actual (non-preflight) response.
    pub fn decorate(&self, origin: Option<&str>, resp: &mut ResponseHeader) -> Result<()> {
        if self.allowed_origins.is_empty() {
            return Ok(());
        }
        resp.insert_header("vary", "Origin")?;
        if let Some(origin) = origin {
            resp.insert_header("access-control-allow-origin", origin)?;
            resp.insert_header("access-control-expose-headers", EXPOSED)?;
            if self.allow_credentials {
                resp.insert_header("access-control-allow-credentials", "true")?;
            }
        }
        Ok(())
    }
}
