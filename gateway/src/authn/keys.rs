//! The verification key ring: keys from the embedded issuer and from trusted issuers' JWKS.
//!
//! Lifecycle: the ring starts with the embedded issuer's keys (remote issuers are fetched in
//! the background at start). A token with an unknown `kid` triggers at most one refetch per
//! `jwks_refetch_interval_seconds`; a failed fetch keeps that issuer's last good keys.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use token_proxy::Issuer;

/// A key to verify signatures with, and who it belongs to.
pub struct VerifyKey {
    pub issuer: String,
    pub key: DecodingKey,
    /// The JWK's declared algorithm, when it declares one.
    pub algorithm: Option<Algorithm>,
}

/// Where keys come from.
pub enum KeySource {
    /// The in-process embedded issuer.
    Embedded(Arc<Issuer>),
    /// A trusted issuer's JWKS document.
    Remote { issuer: String, jwks_uri: String },
}

impl KeySource {
    fn issuer(&self) -> &str {
        match self {
            KeySource::Embedded(i) => i.issuer(),
            KeySource::Remote { issuer, .. } => issuer,
        }
    }
}

type KeyMap = HashMap<String, Arc<VerifyKey>>;

/// All verification keys, by `kid`; refreshed atomically.
pub struct KeyRing {
    sources: Vec<KeySource>,
    /// Keys per source (same index as `sources`), so a failed fetch keeps that source's keys.
    per_source: ArcSwap<Vec<KeyMap>>,
    merged: ArcSwap<KeyMap>,
    refetch_interval: Duration,
    last_refresh: tokio::sync::Mutex<Option<Instant>>,
    http: reqwest::Client,
}

fn keys_from_jwks(issuer: &str, set: &JwkSet) -> KeyMap {
    set.keys
        .iter()
        .filter_map(|jwk: &Jwk| {
            let kid = jwk.common.key_id.clone()?;
            let key = DecodingKey::from_jwk(jwk).ok()?;
            let algorithm = jwk
                .common
                .key_algorithm
                .and_then(|a| a.to_string().parse::<Algorithm>().ok());
            Some((
                kid,
                Arc::new(VerifyKey {
                    issuer: issuer.to_string(),
                    key,
                    algorithm,
                }),
            ))
        })
        .collect()
}

impl KeyRing {
    /// A ring over these sources; embedded keys are loaded now, remote ones on refresh.
    pub fn new(sources: Vec<KeySource>, refetch_interval: Duration) -> KeyRing {
        let per_source: Vec<KeyMap> = sources
            .iter()
            .map(|s| match s {
                KeySource::Embedded(issuer) => embedded_keys(issuer),
                KeySource::Remote { .. } => KeyMap::new(),
            })
            .collect();
        KeyRing {
            sources,
            merged: ArcSwap::from_pointee(merge(&per_source)),
            per_source: ArcSwap::from_pointee(per_source),
            refetch_interval,
            last_refresh: tokio::sync::Mutex::new(None),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(3))
                .build()
                .unwrap_or_default(),
        }
    }

    /// The key for a `kid`.
    pub fn get(&self, kid: &str) -> Option<Arc<VerifyKey>> {
        self.merged.load().get(kid).cloned()
    }

    /// Whether no key at all is available.
    pub fn is_empty(&self) -> bool {
        self.merged.load().is_empty()
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.merged.load().len()
    }

    /// Whether any remote issuer is configured.
    pub fn has_remote(&self) -> bool {
        self.sources
            .iter()
            .any(|s| matches!(s, KeySource::Remote { .. }))
    }

    /// Refetch every source unless that happened less than the refetch interval ago.
    pub async fn refresh_if_due(&self) {
        let mut last = self.last_refresh.lock().await;
        if last.is_some_and(|t| t.elapsed() < self.refetch_interval) {
            return;
        }
        *last = Some(Instant::now());
        self.refresh().await;
    }

    /// Refetch every source now; a source that fails keeps its last good keys.
    pub async fn refresh(&self) {
        let old = self.per_source.load_full();
        let mut fresh = Vec::with_capacity(self.sources.len());
        for (i, source) in self.sources.iter().enumerate() {
            let keys = match source {
                KeySource::Embedded(issuer) => Some(embedded_keys(issuer)),
                KeySource::Remote { jwks_uri, .. } => match self.fetch(jwks_uri).await {
                    Ok(set) => Some(keys_from_jwks(source.issuer(), &set)),
                    Err(e) => {
                        tracing::warn!(issuer = source.issuer(), error = %e, "JWKS fetch failed; keeping the last good keys");
                        None
                    }
                },
            };
            fresh.push(keys.unwrap_or_else(|| old.get(i).cloned().unwrap_or_default()));
        }
        self.merged.store(Arc::new(merge(&fresh)));
        self.per_source.store(Arc::new(fresh));
    }

    async fn fetch(&self, uri: &str) -> Result<JwkSet, String> {
        let resp = self
            .http
            .get(uri)
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        resp.json::<JwkSet>()
            .await
            .map_err(|e| e.without_url().to_string())
    }
}

fn embedded_keys(issuer: &Issuer) -> KeyMap {
    match serde_json::from_value::<JwkSet>(issuer.jwks()) {
        Ok(set) => keys_from_jwks(issuer.issuer(), &set),
        Err(e) => {
            tracing::error!(error = %e, "the embedded issuer's JWKS does not parse");
            KeyMap::new()
        }
    }
}

fn merge(per_source: &[KeyMap]) -> KeyMap {
    let mut all = KeyMap::new();
    for keys in per_source {
        for (kid, key) in keys {
            // A kid shared by two issuers is ambiguous: the first source wins, and the
            // issuer check in verification still binds the token to that key's issuer.
            all.entry(kid.clone()).or_insert_with(|| key.clone());
        }
    }
    all
}
