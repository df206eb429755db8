//! The crate's errors: `ApiError` for anything a request can fail with (rendered once, as the
//! one JSON envelope), `BackendError` for starting up.

use http::StatusCode;
use serde::Serialize;
use serde_json::{Value, json};

use crate::store::StoreError;

/// One invalid field of a request, reported in the envelope's `details`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// The field (or query parameter) name.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// Every way a request can fail; each maps to one status and one code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401 `auth/invalid_assertion`: the gateway's assertion is missing, invalid or not for this request.
    #[error("{0}")]
    InvalidAssertion(&'static str),
    /// 403 `auth/insufficient_permissions`.
    #[error("{0}")]
    Forbidden(&'static str),
    /// 404 `resource/not_found`.
    #[error("{0}")]
    NotFound(String),
    /// 409 `resource/already_exists`.
    #[error("{0}")]
    AlreadyExists(String),
    /// 409 `resource/conflict`.
    #[error("{0}")]
    Conflict(String),
    /// 400 `validation/invalid_input`, with the bad fields when known.
    #[error("{message}")]
    Invalid {
        /// A summary.
        message: String,
        /// One entry per bad field (may be empty).
        details: Vec<FieldError>,
    },
    /// 413 `validation/payload_too_large`.
    #[error("the request body exceeds 8 MiB")]
    PayloadTooLarge,
    /// 422 `business/*`: the request is well formed but breaks a business rule.
    #[error("{message}")]
    Business {
        /// The full code, e.g. `business/insufficient_points`.
        code: &'static str,
        /// What rule was broken.
        message: String,
    },
    /// 500 `server/internal`; the detail is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
    /// 503 `server/unavailable`: the store turned the request down for now and nothing was
    /// changed; the detail is logged, never sent.
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
}

impl ApiError {
    /// A 400 for one bad field.
    pub fn field(field: &str, message: impl Into<String>) -> ApiError {
        let message = message.into();
        ApiError::Invalid {
            message: format!("{field} {message}"),
            details: vec![FieldError {
                field: field.to_owned(),
                message,
            }],
        }
    }

    /// A 400 without field details.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::Invalid {
            message: message.into(),
            details: Vec::new(),
        }
    }

    /// A 404 for `what` (e.g. "mission") with `id`.
    pub fn not_found(what: &str, id: &str) -> ApiError {
        ApiError::NotFound(format!("{what} '{}' was not found", clip(id, 128)))
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidAssertion(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::AlreadyExists(_) | ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Invalid { .. } => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Business { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The envelope's `code`.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidAssertion(_) => "auth/invalid_assertion",
            ApiError::Forbidden(_) => "auth/insufficient_permissions",
            ApiError::NotFound(_) => "resource/not_found",
            ApiError::AlreadyExists(_) => "resource/already_exists",
            ApiError::Conflict(_) => "resource/conflict",
            ApiError::Invalid { .. } => "validation/invalid_input",
            ApiError::PayloadTooLarge => "validation/payload_too_large",
            ApiError::Business { code, .. } => code,
            ApiError::Internal(_) => "server/internal",
            ApiError::Unavailable(_) => "server/unavailable",
        }
    }

    /// The JSON envelope for this error on `path` of request `request_id`.
    pub fn envelope(&self, request_id: &str, path: &str) -> Value {
        let message = match self {
            ApiError::Internal(_) => "internal server error".to_owned(),
            ApiError::Unavailable(_) => {
                "the service is busy and changed nothing; retry later".to_owned()
            }
            other => other.to_string(),
        };
        let mut body = json!({
            "code": self.code(),
            "message": message,
            "status": self.status().as_u16(),
            "requestId": request_id,
            "timestamp": crate::clock::now(),
            "path": path,
        });
        if let (ApiError::Invalid { details, .. }, Some(map)) = (self, body.as_object_mut())
            && !details.is_empty()
        {
            map.insert("details".to_owned(), json!(details));
        }
        body
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Busy(_) => ApiError::Unavailable(format!("store: {e}")),
            e => ApiError::Internal(format!("store: {e}")),
        }
    }
}

/// At most `max` characters of `s`, for echoing client input into messages.
pub fn clip(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Why the embedded backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The shared assertion secret is too short.
    #[error("the assertion key must be at least {0} bytes")]
    WeakKey(usize),
    /// The store could not be opened or seeded.
    #[error("backend store: {0}")]
    Store(#[from] StoreError),
    /// The listener could not be bound.
    #[error("backend listener {what}: {source}")]
    Bind {
        /// The address or socket path.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The socket path holds something that is not a stale socket.
    #[error("backend socket {0}: {1}")]
    SocketPath(String, &'static str),
    /// The serving thread could not be started.
    #[error("backend thread: {0}")]
    Thread(std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_has_exactly_the_keys_and_details_only_for_validation() {
        let e = ApiError::not_found("mission", "m-1");
        let v = e.envelope("rid-1", "/p");
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "code",
                "message",
                "path",
                "requestId",
                "status",
                "timestamp"
            ]
        );
        assert_eq!(v["status"], 404);
        let v = ApiError::field("name", "is required").envelope("r", "/p");
        assert_eq!(v["details"][0]["field"], "name");
        assert_eq!(v["code"], "validation/invalid_input");
    }

    #[test]
    fn internal_detail_is_not_sent() {
        let v = ApiError::Internal("disk on fire at /secret".into()).envelope("r", "/p");
        assert!(!v.to_string().contains("secret"));
    }

    #[test]
    fn clip_respects_char_boundaries() {
        assert_eq!(clip("héllo", 2), "hé");
        assert_eq!(clip("ab", 5), "ab");
    }
}
