//! Transport-free HTTP answers and the RFC 6749 §5.2 error responses of the token endpoint.

use std::borrow::Cow;
use std::fmt;

use serde_json::{Value, json};

/// An HTTP answer for the gateway to write: status, headers, body.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl fmt::Debug for HttpAnswer {
    // The body may hold an access token, which is a credential: show its size only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpAnswer")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl HttpAnswer {
    /// A JSON answer with the headers RFC 6749 §5.1 requires of every token response.
    pub(crate) fn token_json(status: u16, body: &Value) -> HttpAnswer {
        HttpAnswer {
            status,
            headers: vec![
                (
                    "Content-Type".into(),
                    "application/json;charset=UTF-8".into(),
                ),
                ("Cache-Control".into(), "no-store".into()),
                ("Pragma".into(), "no-cache".into()),
            ],
            body: serde_json::to_vec(body).unwrap_or_default(),
        }
    }

    /// The value of the first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The realm advertised on 401 answers.
pub(crate) const WWW_AUTHENTICATE: &str = "Basic realm=\"cedargate\"";

/// An OAuth error answer of the token endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OAuthError {
    pub status: u16,
    pub error: &'static str,
    pub description: Cow<'static, str>,
    /// Add `WWW-Authenticate: Basic` (401 answers unless credentials came in the body).
    pub challenge: bool,
}

impl OAuthError {
    pub(crate) fn new(
        status: u16,
        error: &'static str,
        description: impl Into<Cow<'static, str>>,
    ) -> Self {
        OAuthError {
            status,
            error,
            description: description.into(),
            challenge: false,
        }
    }

    pub(crate) fn invalid_request(description: impl Into<Cow<'static, str>>) -> Self {
        OAuthError::new(400, "invalid_request", description)
    }

    /// 401 `invalid_client`; `challenge` when the client used (or should use) Basic.
    pub(crate) fn invalid_client(
        description: impl Into<Cow<'static, str>>,
        challenge: bool,
    ) -> Self {
        OAuthError {
            challenge,
            ..OAuthError::new(401, "invalid_client", description)
        }
    }

    pub(crate) fn invalid_scope(description: impl Into<Cow<'static, str>>) -> Self {
        OAuthError::new(400, "invalid_scope", description)
    }

    pub(crate) fn into_answer(self) -> HttpAnswer {
        let mut answer = HttpAnswer::token_json(
            self.status,
            &json!({"error": self.error, "error_description": self.description}),
        );
        if self.challenge {
            answer
                .headers
                .push(("WWW-Authenticate".into(), WWW_AUTHENTICATE.into()));
        }
        match self.status {
            405 => answer.headers.push(("Allow".into(), "POST".into())),
            503 => answer.headers.push(("Retry-After".into(), "1".into())),
            _ => {}
        }
        answer
    }
}
