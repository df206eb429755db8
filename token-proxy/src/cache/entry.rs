//! One cached token answer: the upstream's JSON body, when the token expires and until when
//! the cache may serve it.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::answer::HttpAnswer;

/// A successful token answer held by the cache.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct CachedToken {
    /// The answer's JSON object (`access_token`, `token_type`, `expires_in`, `scope`, ...).
    body: Map<String, Value>,
    /// When the token itself expires (Unix ms): the answer's `expires_in` counted from the
    /// moment the request was sent, so never later than the IdP's own clock says.
    #[serde(rename = "tokenExpiresAtMs")]
    pub token_expires_at_ms: u64,
    /// When the cache stops serving it (Unix ms): `ttl_ratio` of the lifetime.
    #[serde(rename = "cacheUntilMs")]
    pub cache_until_ms: u64,
}

impl fmt::Debug for CachedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedToken")
            .field("token_expires_at_ms", &self.token_expires_at_ms)
            .field("cache_until_ms", &self.cache_until_ms)
            .finish_non_exhaustive()
    }
}

impl CachedToken {
    /// The cacheable part of an upstream answer: a 200 whose JSON body has a string
    /// `access_token` and a positive integer `expires_in`. Anything else is relayed, never
    /// cached.
    pub(crate) fn from_answer(
        answer: &HttpAnswer,
        sent_at_ms: u64,
        ttl_ratio: f64,
    ) -> Option<Self> {
        if answer.status != 200 {
            return None;
        }
        let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&answer.body) else {
            return None;
        };
        if !body.get("access_token").is_some_and(Value::is_string) {
            return None;
        }
        let lifetime_s = body.get("expires_in").and_then(|v| match v {
            Value::Number(n) => n.as_u64(),
            // Some IdPs send it as a string.
            Value::String(s) => s.parse().ok(),
            _ => None,
        })?;
        if lifetime_s == 0 {
            return None;
        }
        let lifetime_ms = lifetime_s.saturating_mul(1000);
        let cache_ms = (lifetime_ms as f64 * ttl_ratio) as u64;
        if cache_ms == 0 {
            return None;
        }
        Some(CachedToken {
            body,
            token_expires_at_ms: sent_at_ms.saturating_add(lifetime_ms),
            cache_until_ms: sent_at_ms.saturating_add(cache_ms),
        })
    }

    /// Whether the cache may still serve it at `now_ms`.
    pub(crate) fn fresh(&self, now_ms: u64) -> bool {
        self.cache_until_ms > now_ms
    }

    /// The answer served from the cache at `now_ms`: the stored body with `expires_in` set to
    /// the remaining lifetime in whole seconds (rounded down).
    pub(crate) fn answer(&self, now_ms: u64) -> HttpAnswer {
        let remaining = self.token_expires_at_ms.saturating_sub(now_ms) / 1000;
        let mut body = self.body.clone();
        body.insert("expires_in".into(), remaining.into());
        HttpAnswer::token_json(200, &Value::Object(body))
    }

    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(body: Value) -> HttpAnswer {
        HttpAnswer::token_json(200, &body)
    }

    #[test]
    fn lifetime_ratio_and_remaining_expires_in() {
        let a = ok(
            json!({"access_token": "t", "token_type": "Bearer", "expires_in": 100, "scope": "a"}),
        );
        let t = CachedToken::from_answer(&a, 1_000_000, 0.75).unwrap();
        assert_eq!(t.token_expires_at_ms, 1_100_000);
        assert_eq!(t.cache_until_ms, 1_075_000);
        assert!(t.fresh(1_074_999));
        assert!(!t.fresh(1_075_000), "expiresAt > now, strictly");
        let served = t.answer(1_040_500);
        let body: Value = serde_json::from_slice(&served.body).unwrap();
        assert_eq!(body["expires_in"], json!(59), "remaining, rounded down");
        assert_eq!(body["access_token"], json!("t"));
        assert_eq!(body["scope"], json!("a"));
        assert_eq!(served.header("cache-control"), Some("no-store"));
        assert_eq!(served.header("pragma"), Some("no-cache"));
    }

    #[test]
    fn only_successful_token_answers_are_cacheable() {
        let good = json!({"access_token": "t", "expires_in": 60});
        assert!(CachedToken::from_answer(&ok(good.clone()), 0, 0.75).is_some());
        assert!(
            CachedToken::from_answer(
                &ok(json!({"access_token": "t", "expires_in": "60"})),
                0,
                0.5
            )
            .is_some()
        );
        let mut err = ok(good);
        err.status = 400;
        assert!(CachedToken::from_answer(&err, 0, 0.75).is_none());
        for body in [
            json!({"access_token": "t"}),
            json!({"access_token": "t", "expires_in": 0}),
            json!({"access_token": 1, "expires_in": 60}),
            json!({"expires_in": 60}),
            json!(["access_token"]),
        ] {
            assert!(
                CachedToken::from_answer(&ok(body.clone()), 0, 0.75).is_none(),
                "{body}"
            );
        }
        let not_json = HttpAnswer {
            status: 200,
            headers: vec![],
            body: b"access_token=t&expires_in=60".to_vec(),
        };
        assert!(CachedToken::from_answer(&not_json, 0, 0.75).is_none());
    }

    #[test]
    fn bytes_round_trip_and_debug_hides_the_token() {
        let t = CachedToken::from_answer(
            &ok(json!({"access_token": "secret-token", "expires_in": 60})),
            5,
            0.5,
        )
        .unwrap();
        let back = CachedToken::from_bytes(&t.to_bytes()).unwrap();
        assert_eq!(back.cache_until_ms, t.cache_until_ms);
        assert_eq!(back.answer(10).body, t.answer(10).body);
        assert!(!format!("{t:?}").contains("secret-token"));
    }
}
