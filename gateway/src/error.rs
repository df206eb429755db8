//! The one error type of the request pipeline, mapped once to the error envelope
//! `{"code","message","status","requestId","timestamp","path"}`.

use bytes::Bytes;
use serde::Serialize;

/// Why a request was rejected. Messages never carry token contents, secrets or payloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayError {
    /// No bearer token was sent.
    MissingToken,
    /// The token failed verification (signature, claims, format).
    InvalidToken(&'static str),
    /// The token's `exp` has passed.
    ExpiredToken,
    /// An access token was sent in the query string.
    TokenInQuery,
    /// No verification key could be obtained for any issuer.
    IssuerUnavailable,
    /// The path is ambiguous or smuggles segments.
    InvalidPath(&'static str),
    /// A query parameter the policies read appears more than once.
    AmbiguousQuery,
    /// No route matches method and path.
    RouteNotFound,
    /// Cedar denied the request (or evaluation failed, which denies).
    Forbidden,
    /// A WAF rule (or the IP deny list) blocked the request; the rule id, never the payload.
    WafBlocked(&'static str),
    /// The body is larger than `waf.max_body_bytes`.
    PayloadTooLarge,
    /// The body is larger than the WAF inspects, and `waf.oversize_body = "block"`.
    BodyNotInspectable,
    /// The request target is longer than `waf.max_url_bytes`.
    UriTooLong,
    /// Too many headers, or too many header bytes.
    HeadersTooLarge,
    /// The client took too long to send a body.
    BodyTimeout,
    /// The request is malformed at the HTTP level.
    InvalidRequest(&'static str),
    /// The HTTP layer does not serve this method (`CONNECT`).
    MethodNotAllowed,
    /// `X-User-ID` was sent by a caller that may not act for that user (or for anyone).
    InvalidDelegation(&'static str),
    /// A rate limit refused the request.
    RateLimited(Box<crate::ratelimit::Applied>),
    /// The upstream could not be reached or failed.
    UpstreamUnavailable,
    /// Something inside the gateway failed.
    Internal,
}

impl GatewayError {
    /// The error for a status pingora's HTTP layer refused a request with (its canned answers
    /// carry no body); `None` for a status the gateway has no envelope for.
    pub fn of_http_status(status: u16) -> Option<GatewayError> {
        Some(match status {
            400 => Self::InvalidRequest("the request is not valid HTTP/1.1"),
            405 => Self::MethodNotAllowed,
            408 => Self::BodyTimeout,
            413 => Self::PayloadTooLarge,
            414 => Self::UriTooLong,
            431 => Self::HeadersTooLarge,
            _ => return None,
        })
    }

    /// HTTP status of this error.
    pub fn status(&self) -> u16 {
        match self {
            Self::MissingToken | Self::InvalidToken(_) | Self::ExpiredToken => 401,
            Self::TokenInQuery | Self::InvalidPath(_) | Self::AmbiguousQuery => 400,
            Self::IssuerUnavailable => 503,
            Self::WafBlocked(_) | Self::InvalidDelegation(_) => 403,
            Self::PayloadTooLarge | Self::BodyNotInspectable => 413,
            Self::UriTooLong => 414,
            Self::HeadersTooLarge => 431,
            Self::BodyTimeout => 408,
            Self::InvalidRequest(_) => 400,
            Self::MethodNotAllowed => 405,
            Self::RateLimited(_) => 429,
            Self::RouteNotFound => 404,
            Self::Forbidden => 403,
            Self::UpstreamUnavailable => 502,
            Self::Internal => 500,
        }
    }

    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            // RFC 6750 §3.1: a missing token is still an invalid-token failure; only the
            // challenge differs (no error code).
            Self::MissingToken | Self::InvalidToken(_) => "auth/invalid_token",
            Self::ExpiredToken => "auth/expired_token",
            Self::TokenInQuery => "auth/invalid_request",
            Self::IssuerUnavailable => "auth/issuer_unavailable",
            Self::InvalidPath(_) => "validation/invalid_path",
            Self::AmbiguousQuery => "validation/invalid_query",
            Self::RouteNotFound => "resource/not_found",
            Self::WafBlocked(_) => "waf/blocked",
            Self::InvalidDelegation(_) => "auth/invalid_delegation",
            Self::PayloadTooLarge => "waf/payload_too_large",
            Self::BodyNotInspectable => "waf/body_not_inspectable",
            Self::UriTooLong => "waf/uri_too_long",
            Self::HeadersTooLarge => "waf/headers_too_large",
            Self::BodyTimeout => "validation/request_timeout",
            Self::InvalidRequest(_) => "validation/invalid_request",
            Self::MethodNotAllowed => "validation/method_not_allowed",
            Self::RateLimited(_) => "rate_limit/exceeded",
            Self::Forbidden => "auth/insufficient_permissions",
            Self::UpstreamUnavailable => "server/upstream_unavailable",
            Self::Internal => "server/internal",
        }
    }

    /// Human-readable message, safe to show to the caller.
    pub fn message(&self) -> &'static str {
        match self {
            Self::MissingToken => "an access token is required (Authorization: Bearer <token>)",
            Self::InvalidToken(why) => why,
            Self::ExpiredToken => "the access token has expired",
            Self::TokenInQuery => {
                "access tokens are not accepted in the query string; use the Authorization header"
            }
            Self::IssuerUnavailable => {
                "no signing keys are available to verify tokens; try again later"
            }
            Self::InvalidPath(why) => why,
            Self::AmbiguousQuery => {
                "a query parameter the route reads is given more than once; send it once"
            }
            Self::RouteNotFound => "no such route",
            Self::WafBlocked(_) => "the request was blocked by the web application firewall",
            Self::PayloadTooLarge => "the request body is larger than allowed",
            Self::BodyNotInspectable => {
                "the request body is larger than the firewall inspects, and such bodies are refused"
            }
            Self::UriTooLong => "the request URL is longer than allowed",
            Self::HeadersTooLarge => "the request has too many headers or header bytes",
            Self::BodyTimeout => "the request body did not arrive in time",
            Self::InvalidRequest(why) | Self::InvalidDelegation(why) => why,
            Self::MethodNotAllowed => "the gateway does not serve this method",
            Self::RateLimited(_) => "too many requests; retry after the time given in Retry-After",
            Self::Forbidden => "the caller is not allowed to perform this action",
            Self::UpstreamUnavailable => "the backend is unavailable",
            Self::Internal => "internal error",
        }
    }

    /// Whether the client's connection may carry its next request after this answer: yes for
    /// a well-formed request refused by policy (authentication, authorization, routing, rate
    /// limits); no for malformed, oversized or hostile requests and for server faults, where
    /// the connection's state is not trusted.
    pub fn keeps_connection(&self) -> bool {
        matches!(
            self,
            Self::MissingToken
                | Self::InvalidToken(_)
                | Self::ExpiredToken
                | Self::TokenInQuery
                | Self::IssuerUnavailable
                | Self::AmbiguousQuery
                | Self::RouteNotFound
                | Self::Forbidden
                | Self::InvalidDelegation(_)
                | Self::RateLimited(_)
        )
    }

    /// The RFC 6750 `WWW-Authenticate` challenge, where one applies.
    pub fn www_authenticate(&self) -> Option<&'static str> {
        match self {
            Self::MissingToken => Some("Bearer realm=\"cedargate\""),
            Self::InvalidToken(_) => Some(
                "Bearer realm=\"cedargate\", error=\"invalid_token\", error_description=\"the access token is invalid\"",
            ),
            Self::ExpiredToken => Some(
                "Bearer realm=\"cedargate\", error=\"invalid_token\", error_description=\"the access token expired\"",
            ),
            Self::TokenInQuery => Some("Bearer realm=\"cedargate\", error=\"invalid_request\""),
            Self::Forbidden => None,
            _ => None,
        }
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    code: &'a str,
    message: &'a str,
    status: u16,
    #[serde(rename = "requestId")]
    request_id: &'a str,
    timestamp: String,
    path: &'a str,
    /// The WAF or rate-limit rule that refused the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<&'a str>,
    /// Seconds until a rate-limited request may be retried.
    #[serde(rename = "retryAfter", skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
}

/// The JSON body of an error answer.
pub fn envelope(err: &GatewayError, request_id: &str, path: &str) -> Bytes {
    let body = Envelope {
        code: err.code(),
        message: err.message(),
        status: err.status(),
        request_id,
        timestamp: now_rfc3339(),
        path,
        rule: match err {
            GatewayError::WafBlocked(rule) => Some(rule),
            GatewayError::RateLimited(a) => Some(&a.rule),
            _ => None,
        },
        retry_after: match err {
            GatewayError::RateLimited(a) => Some(a.retry_after_seconds()),
            _ => None,
        },
    };
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

/// The current UTC time as RFC 3339 with millisecond precision.
pub fn now_rfc3339() -> String {
    let mut out = String::with_capacity(24);
    write_now_rfc3339(&mut out, 3);
    out
}

/// Append the current UTC time as RFC 3339 (`2026-12-07T02:45:18.123Z`) with `digits` (at
/// most 9) fractional digits. The date and time of day are formatted once per second and
/// thread; within the second only the fraction is written.
pub fn write_now_rfc3339(out: &mut String, digits: usize) {
    use std::cell::RefCell;
    thread_local! {
        static SECOND: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
    }
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs() as i64;
    SECOND.with_borrow_mut(|(cached, text)| {
        if *cached != secs {
            let fmt =
                time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
            text.clear();
            if let Ok(t) = time::OffsetDateTime::from_unix_timestamp(secs)
                && let Ok(s) = t.format(&fmt)
            {
                text.push_str(&s);
            }
            *cached = secs;
        }
        out.push_str(text);
    });
    let digits = digits.min(9);
    let fraction = since.subsec_nanos() / 10u32.pow(9 - digits as u32);
    out.push('.');
    push_zero_padded(out, u64::from(fraction), digits);
    out.push('Z');
}

/// Append `n` in decimal, with leading zeros up to `width` digits: what `{n:0width$}` writes,
/// without the formatting machinery (it runs for several fields of every request).
pub fn push_zero_padded(out: &mut String, n: u64, width: usize) {
    let mut digits = itoa::Buffer::new();
    let text = digits.format(n);
    for _ in text.len()..width {
        out.push('0');
    }
    out.push_str(text);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let fmt = time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
        );
        let now = || {
            time::OffsetDateTime::now_utc()
                .format(&fmt)
                .expect("formats")
        };
        let before = now();
        let ms = now_rfc3339();
        let mut us = String::new();
        write_now_rfc3339(&mut us, 6);
        let after = now();
        assert_eq!((ms.len(), us.len()), (24, 27), "{ms} {us}");
        // Same-length RFC 3339 UTC strings sort as the times they name.
        assert!(
            before[..23] <= ms[..23] && ms[..23] <= after[..23],
            "{before} {ms} {after}"
        );
        assert!(before <= us && us <= after, "{before} {us} {after}");
        assert!(ms.ends_with('Z') && ms.as_bytes()[19] == b'.', "{ms}");
    }

    #[test]
    fn zero_padding_is_formats() {
        for (n, width) in [
            (0, 0),
            (0, 3),
            (7, 3),
            (45, 3),
            (145, 3),
            (1234, 3),
            (5, 9),
            (0, 1),
        ] {
            let mut out = String::from(">");
            push_zero_padded(&mut out, n, width);
            assert_eq!(out, format!(">{n:0width$}"));
        }
    }

    #[test]
    fn envelope_has_every_field() {
        let body = envelope(&GatewayError::Forbidden, "rid-1", "/app/v1/x");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["code"], "auth/insufficient_permissions");
        assert_eq!(v["status"], 403);
        assert_eq!(v["requestId"], "rid-1");
        assert_eq!(v["path"], "/app/v1/x");
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
        assert!(v["message"].as_str().is_some());
    }

    #[test]
    fn challenge_only_names_an_error_when_a_token_was_sent() {
        assert!(
            !GatewayError::MissingToken
                .www_authenticate()
                .unwrap()
                .contains("error=")
        );
        assert!(
            GatewayError::ExpiredToken
                .www_authenticate()
                .unwrap()
                .contains("invalid_token")
        );
    }
}
