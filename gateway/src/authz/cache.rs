//! The decision cache. The key is a SHA-256 over everything that goes into the Cedar request
//! (principal id, attributes and role, action, resource, context) plus the active and shadow
//! policy versions, so a reload invalidates every entry by construction and two requests
//! share an entry only when Cedar would see the same request.

use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;
use sha2::{Digest, Sha256};

use super::{Decision, PolicyBundle, RequestFacts};
use crate::authn::Identity;
use crate::config::DecisionCacheSettings;

type Entry = (Arc<Decision>, Option<Arc<Decision>>);

/// Cached (active, shadow) decisions by request key.
pub struct DecisionCache {
    inner: Cache<[u8; 32], Entry>,
}

impl DecisionCache {
    /// A cache with the configured size and time to live.
    pub fn new(s: &DecisionCacheSettings) -> DecisionCache {
        DecisionCache {
            inner: Cache::builder()
                .max_capacity(s.capacity)
                .time_to_live(Duration::from_secs(s.ttl_seconds))
                .build(),
        }
    }

    pub fn get(&self, key: &[u8; 32]) -> Option<Entry> {
        let hit = self.inner.get(key);
        crate::metrics::cache_lookup("decision", hit.is_some());
        hit
    }

    pub fn insert(&self, key: [u8; 32], entry: Entry) {
        self.inner.insert(key, entry);
    }

    pub fn entry_count(&self) -> u64 {
        self.inner.entry_count()
    }
}

/// Length-prefixed fields, so no two different inputs serialise alike.
struct KeyWriter(Sha256);

impl KeyWriter {
    fn field(&mut self, v: &str) {
        self.0.update((v.len() as u64).to_le_bytes());
        self.0.update(v.as_bytes());
    }

    fn opt(&mut self, v: Option<&str>) {
        match v {
            Some(v) => {
                self.0.update([1]);
                self.field(v);
            }
            None => self.0.update([0]),
        }
    }
}

/// The cache key of one request.
pub fn key(
    bundle: &PolicyBundle,
    shadow: Option<&PolicyBundle>,
    id: &Identity,
    facts: &RequestFacts<'_>,
) -> [u8; 32] {
    let mut w = KeyWriter(Sha256::new());
    w.field(&bundle.version);
    w.opt(shadow.map(|s| s.version.as_str()));
    // Principal: id, attributes, role (its parents follow from the role and the bundle).
    w.field(&id.principal_id);
    for v in [
        &id.workspace_id,
        &id.platform,
        &id.role,
        &id.department,
        &id.context,
        &id.client_id,
        &id.token_use,
    ] {
        w.opt(v.as_deref());
    }
    w.0.update([id.premium as u8, id.onboarding_completed as u8]);
    let mut scopes: Vec<&str> = id.scopes.iter().map(String::as_str).collect();
    scopes.sort_unstable();
    scopes.dedup();
    w.0.update((scopes.len() as u64).to_le_bytes());
    for s in scopes {
        w.field(s);
    }
    // Action and resource: the route and its path parameters.
    w.0.update((facts.route.route_index as u64).to_le_bytes());
    w.0.update((facts.route.params.len() as u64).to_le_bytes());
    for (k, v) in &facts.route.params {
        w.field(k);
        w.field(v);
    }
    // Context: only the query parameters the route declares reach Cedar.
    if let Some(route) = bundle.routes.routes.get(facts.route.route_index) {
        for name in &route.query {
            w.opt(
                facts
                    .query
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.as_str()),
            );
        }
    }
    w.opt(facts.impersonated_user);
    w.0.finalize().into()
}
