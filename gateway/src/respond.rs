//! Stage 10, the answer: error envelopes written by the gateway itself, and the headers
//! every response carries.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::HeaderValue;
use pingora::Result;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;

use crate::error::{GatewayError, envelope};
use crate::request_id;

/// Headers every answer carries, whoever produced it (static values: nothing to copy).
const SECURITY_HEADERS: [(&str, HeaderValue); 3] = [
    (
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    ),
    ("x-frame-options", HeaderValue::from_static("DENY")),
    ("referrer-policy", HeaderValue::from_static("no-referrer")),
];

/// Set at start-up when a listener serves TLS: then responses carry HSTS (user agents
/// ignore the header on plain HTTP, RFC 6797 §8.1).
pub static TLS_ENABLED: AtomicBool = AtomicBool::new(false);

/// Add the request id and security headers; hide the upstream's server banner.
pub fn decorate(resp: &mut ResponseHeader, request_id: &str) -> Result<()> {
    resp.insert_header(request_id::HEADER, request_id)?;
    for (k, v) in SECURITY_HEADERS {
        resp.insert_header(k, v)?;
    }
    if TLS_ENABLED.load(Ordering::Relaxed) {
        resp.insert_header(
            "strict-transport-security",
            HeaderValue::from_static("max-age=31536000; includeSubDomains"),
        )?;
    }
    resp.remove_header("server");
    Ok(())
}

/// `Server-Timing` with the pipeline's stage durations, in milliseconds with three decimals
/// (written digit by digit: float formatting costs more than the rest of the header).
pub fn server_timing(authn: Duration, authz: Duration, upstream: Duration) -> String {
    let mut out = String::with_capacity(64);
    for (i, (name, d)) in [("authn", authn), ("authz", authz), ("upstream", upstream)]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(name);
        out.push_str(";dur=");
        // Rounded to the microsecond, as `{:.3}` of the milliseconds would.
        let micros = (d.as_nanos() + 500) / 1000;
        crate::error::push_zero_padded(&mut out, (micros / 1000) as u64, 0);
        out.push('.');
        crate::error::push_zero_padded(&mut out, (micros % 1000) as u64, 3);
    }
    out
}

/// A complete JSON response built by the gateway.
pub fn json_response(status: u16, body_len: usize, request_id: &str) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(status, Some(8))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body_len.to_string())?;
    resp.insert_header("cache-control", "no-store")?;
    decorate(&mut resp, request_id)?;
    Ok(resp)
}

/// Answer with the error envelope (and its `WWW-Authenticate` challenge, if any).
pub async fn error(
    session: &mut Session,
    request_id: &str,
    path: &str,
    err: &GatewayError,
) -> Result<()> {
    error_with(session, request_id, path, err, |_| Ok(())).await
}

/// [`error`], letting the caller add headers (e.g. CORS) to the answer.
pub async fn error_with(
    session: &mut Session,
    request_id: &str,
    path: &str,
    err: &GatewayError,
    extra: impl FnOnce(&mut ResponseHeader) -> Result<()>,
) -> Result<()> {
    let body = envelope(err, request_id, path);
    let mut resp = json_response(err.status(), body.len(), request_id)?;
    extra(&mut resp)?;
    if let Some(challenge) = err.www_authenticate() {
        resp.insert_header("www-authenticate", challenge)?;
    }
    if let GatewayError::RateLimited(applied) = err {
        rate_limit_headers(&mut resp, applied)?;
        resp.insert_header("retry-after", applied.retry_after_seconds().to_string())?;
    }
    // A refused request without a body leaves the connection clean: the client's pool may
    // reuse it. Anything with a body (possibly unread) or a hostile or malformed request closes.
    if !err.keeps_connection() || has_body(session.req_header()) {
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

/// Whether the request announces a body (`Transfer-Encoding`, or a non-zero `Content-Length`).
pub fn has_body(req: &RequestHeader) -> bool {
    req.headers.contains_key(http::header::TRANSFER_ENCODING)
        || req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// Bound how long the client's connection may sit idle between requests: pingora keeps an
/// HTTP/1.1 connection open until the client closes it, so idle clients would hold sockets
/// (and file descriptors) for good. A connection that is not kept alive is left as it is;
/// `seconds = 0` keeps pingora's behaviour. The setting carries over to the connection's
/// next requests.
pub fn bound_keepalive(session: &mut Session, seconds: u64) {
    if seconds > 0 && session.get_keepalive() == Some(0) {
        session.set_keepalive(Some(seconds));
    }
}

/// Before the gateway reads a request body itself: a client that sent `Expect: 100-continue`
/// may wait for `100 Continue` before it sends the body, so it gets it now. `true` when it was
/// sent (the backend must then not be asked again).
pub async fn continue_if_expected(session: &mut Session) -> Result<bool> {
    let expected = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expected {
        session.write_continue_response().await?;
    }
    Ok(expected)
}

/// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers) for one rule.
pub fn rate_limit_headers(
    resp: &mut ResponseHeader,
    applied: &crate::ratelimit::Applied,
) -> Result<()> {
    resp.insert_header("ratelimit-policy", applied.policy_header())?;
    resp.insert_header("ratelimit", applied.state_header())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The digit-by-digit `Server-Timing` says what `{:.3}` of the milliseconds says.
    #[test]
    fn server_timing_has_three_decimals_of_milliseconds() {
        let ms = |d: Duration| format!("{:.3}", d.as_secs_f64() * 1000.0);
        for nanos in [
            0,
            499,
            500,
            145_000,
            145_499,
            999_999,
            1_000_000,
            12_345_678_901,
        ] {
            let d = Duration::from_nanos(nanos);
            let want = format!("authn;dur={0}, authz;dur={0}, upstream;dur={0}", ms(d));
            assert_eq!(server_timing(d, d, d), want, "{nanos} ns");
        }
    }
}
