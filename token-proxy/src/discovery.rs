//! The upstream IdP's OpenID discovery document and JWKS as the auth domain republishes
//! them: URLs that point at the upstream are rewritten to the auth domain's public base URL,
//! and both documents are cached for a configurable time (one fetch at a time; a failed
//! refetch keeps serving the last good document).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Rewrite every string in `doc` that starts with one of `upstream_bases` (no trailing
/// slash) to start with `public_base` instead. `issuer` is kept: it is the `iss` of the
/// upstream's tokens, and clients compare the two.
pub fn rewrite_urls(doc: &mut Value, upstream_bases: &[&str], public_base: &str) {
    fn walk(v: &mut Value, bases: &[&str], public: &str, top: bool) {
        match v {
            Value::String(s) => {
                for base in bases.iter().filter(|b| !b.is_empty()) {
                    if let Some(rest) = s.strip_prefix(*base)
                        && (rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'))
                    {
                        *s = format!("{public}{rest}");
                        return;
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|i| walk(i, bases, public, false)),
            Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    if !(top && k == "issuer") {
                        walk(v, bases, public, false);
                    }
                }
            }
            _ => {}
        }
    }
    walk(doc, upstream_bases, public_base, true);
}

/// One cached JSON document.
pub struct CachedDoc {
    ttl: Duration,
    slot: tokio::sync::Mutex<Option<(Instant, Arc<Value>)>>,
}

impl CachedDoc {
    /// A cache that refetches after `ttl`.
    pub fn new(ttl: Duration) -> CachedDoc {
        CachedDoc {
            ttl,
            slot: tokio::sync::Mutex::new(None),
        }
    }

    /// The cached document, or `fetch`'s. Concurrent callers wait for one fetch. When a
    /// refetch fails and a document is held, it is served again (and retried after
    /// `min(ttl, 30 s)`); with none held, the error is returned.
    pub async fn get<F, Fut, E>(&self, fetch: F) -> Result<Arc<Value>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Value, E>>,
        E: std::fmt::Display,
    {
        let mut slot = self.slot.lock().await;
        if let Some((at, doc)) = slot.as_ref()
            && at.elapsed() < self.ttl
        {
            return Ok(doc.clone());
        }
        match fetch().await {
            Ok(doc) => {
                let doc = Arc::new(doc);
                *slot = Some((Instant::now(), doc.clone()));
                Ok(doc)
            }
            Err(e) => match slot.as_mut() {
                Some((at, doc)) => {
                    tracing::warn!(error = %e, "refetching an upstream document failed; serving the last good one");
                    let retry = self.ttl.min(Duration::from_secs(30));
                    *at = Instant::now()
                        .checked_sub(self.ttl.saturating_sub(retry))
                        .unwrap_or_else(Instant::now);
                    Ok(doc.clone())
                }
                None => Err(e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn upstream_urls_are_rewritten_but_not_the_issuer() {
        let mut doc = json!({
            "issuer": "https://idp.example",
            "token_endpoint": "https://idp.example/oauth2/token",
            "jwks_uri": "https://keys.example/pool/.well-known/jwks.json",
            "userinfo_endpoint": "https://idp.example/oauth2/userInfo?x=1",
            "elsewhere": "https://idp.example.evil/oauth2/token",
            "other": "https://third.example/x",
            "nested": {"issuer": "https://idp.example/a", "list": ["https://idp.example"]},
            "n": 3
        });
        rewrite_urls(
            &mut doc,
            &["https://idp.example", "https://keys.example/pool"],
            "https://auth.example",
        );
        assert_eq!(doc["issuer"], json!("https://idp.example"));
        assert_eq!(
            doc["token_endpoint"],
            json!("https://auth.example/oauth2/token")
        );
        assert_eq!(
            doc["jwks_uri"],
            json!("https://auth.example/.well-known/jwks.json")
        );
        assert_eq!(
            doc["userinfo_endpoint"],
            json!("https://auth.example/oauth2/userInfo?x=1")
        );
        assert_eq!(
            doc["elsewhere"],
            json!("https://idp.example.evil/oauth2/token")
        );
        assert_eq!(doc["other"], json!("https://third.example/x"));
        assert_eq!(doc["nested"]["issuer"], json!("https://auth.example/a"));
        assert_eq!(doc["nested"]["list"][0], json!("https://auth.example"));
        assert_eq!(doc["n"], json!(3));
    }

    #[tokio::test]
    async fn documents_are_cached_and_the_last_good_one_survives_failures() {
        let cache = CachedDoc::new(Duration::from_millis(50));
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let fetch_ok = || async {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, String>(json!({"v": 1}))
        };
        assert_eq!(*cache.get(fetch_ok).await.unwrap(), json!({"v": 1}));
        assert_eq!(*cache.get(fetch_ok).await.unwrap(), json!({"v": 1}));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(60)).await;
        let failing = || async { Err::<Value, _>("down".to_string()) };
        assert_eq!(*cache.get(failing).await.unwrap(), json!({"v": 1}));
        let empty = CachedDoc::new(Duration::from_secs(1));
        assert_eq!(empty.get(failing).await.unwrap_err(), "down");
    }
}
