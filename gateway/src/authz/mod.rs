//! Stage 8: Cedar authorization. Fail closed: any evaluation error denies, even when Cedar's
//! decision says Allow (Cedar skips a policy that errors, including a forbid).
//!
//! Reload lifecycle: a reload parses and validates the whole new set (and the shadow set)
//! first; only a set that passes is swapped in, atomically, so a request keeps the bundle it
//! started with. A refused set leaves the last good one serving and is recorded with its
//! errors for `GET /admin/policies`.

pub mod bundle;
mod cache;
mod index;
pub mod mapping;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, ArcSwapOption};
use cedar_policy::{Authorizer as CedarAuthorizer, Decision as CedarDecision, PolicySet};

pub use bundle::PolicyBundle;
pub use mapping::RequestFacts;

use crate::authn::Identity;
use crate::config::DecisionCacheSettings;

/// The outcome of one authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Ids of the policies that determined the decision.
    pub reasons: Vec<String>,
    /// Evaluation errors (any error denies).
    pub errors: Vec<String>,
    /// Version of the policy bundle that decided.
    pub policy_version: String,
}

/// Decide one request against a bundle (evaluating only the policies its index says can apply,
/// with their conditions compiled at load; see `index`).
pub fn decide(bundle: &PolicyBundle, identity: &Identity, facts: &RequestFacts<'_>) -> Decision {
    let workspace = facts.route.param("workspaceId").unwrap_or_default();
    let Some(slice) = bundle.index.slice(facts.route.route_index, workspace) else {
        return decide_with(bundle, &bundle.policies, identity, facts);
    };
    let input = match mapping::build(bundle, identity, facts) {
        Ok(i) => i,
        Err(e) => {
            return Decision {
                allowed: false,
                reasons: Vec::new(),
                errors: vec![format!("request mapping failed: {e}")],
                policy_version: bundle.version.clone(),
            };
        }
    };
    let (request, entities) = input.core();
    match slice.decide(request.clone(), entities) {
        Some(verdict) => {
            let mut reasons = verdict.reasons;
            reasons.sort();
            Decision {
                allowed: verdict.allowed,
                reasons,
                errors: Vec::new(),
                policy_version: bundle.version.clone(),
            }
        }
        // An evaluation error: Cedar's authorizer reports it in its own words.
        None => decision_of(
            &CedarAuthorizer::new().is_authorized(input.request(), &slice.set, input.entities()),
            &bundle.version,
        ),
    }
}

/// Decide one request against an explicit policy set.
fn decide_with(
    bundle: &PolicyBundle,
    policies: &PolicySet,
    identity: &Identity,
    facts: &RequestFacts<'_>,
) -> Decision {
    let deny = |errors: Vec<String>| Decision {
        allowed: false,
        reasons: Vec::new(),
        errors,
        policy_version: bundle.version.clone(),
    };
    let input = match mapping::build(bundle, identity, facts) {
        Ok(i) => i,
        Err(e) => return deny(vec![format!("request mapping failed: {e}")]),
    };
    let response =
        CedarAuthorizer::new().is_authorized(input.request(), policies, input.entities());
    decision_of(&response, &bundle.version)
}

/// Read a Cedar response the gateway's way: reasons sorted, and any evaluation error denies,
/// even next to an Allow (Cedar skips a policy that errors, including a forbid).
pub fn decision_of(response: &cedar_policy::Response, policy_version: &str) -> Decision {
    let diagnostics = response.diagnostics();
    let errors: Vec<String> = diagnostics.errors().map(|e| e.to_string()).collect();
    let mut reasons: Vec<String> = diagnostics.reason().map(|id| id.to_string()).collect();
    reasons.sort();
    Decision {
        allowed: response.decision() == CedarDecision::Allow && errors.is_empty(),
        reasons,
        errors,
        policy_version: policy_version.to_string(),
    }
}

/// Where the policies come from.
#[derive(Debug, Clone)]
pub struct PolicySource {
    pub dir: PathBuf,
    /// The shadow set; `None` means `<dir>/shadow` when it exists.
    pub shadow_dir: Option<PathBuf>,
}

impl PolicySource {
    fn shadow_dir(&self) -> Option<PathBuf> {
        match &self.shadow_dir {
            Some(d) => Some(d.clone()),
            None => {
                let d = self.dir.join("shadow");
                let has_policies = std::fs::read_dir(&d).is_ok_and(|rd| {
                    rd.filter_map(Result::ok)
                        .any(|e| e.path().extension().is_some_and(|x| x == "cedar"))
                });
                has_policies.then_some(d)
            }
        }
    }

    /// Load the active and shadow sets; both must be valid.
    fn load(&self) -> Result<(PolicyBundle, Option<PolicyBundle>), Vec<String>> {
        let active = PolicyBundle::load(&self.dir);
        let shadow = self
            .shadow_dir()
            .map(|d| PolicyBundle::load_parts(&self.dir, &d));
        match (active, shadow) {
            (Ok(a), None) => Ok((a, None)),
            (Ok(a), Some(Ok(s))) => Ok((a, Some(s))),
            (Err(mut e), Some(Err(se))) => {
                e.extend(se.into_iter().map(|x| format!("shadow: {x}")));
                Err(e)
            }
            (Err(e), _) => Err(e),
            (Ok(_), Some(Err(se))) => Err(se.into_iter().map(|x| format!("shadow: {x}")).collect()),
        }
    }

    /// A cheap fingerprint of the files (names, sizes, modification times) for change polling.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let mut dirs = vec![self.dir.clone()];
        dirs.extend(
            self.shadow_dir
                .clone()
                .or_else(|| Some(self.dir.join("shadow"))),
        );
        for d in dirs {
            let mut entries: Vec<_> = std::fs::read_dir(&d)
                .map(|rd| rd.filter_map(Result::ok).collect())
                .unwrap_or_default();
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                e.file_name().hash(&mut h);
                if let Ok(m) = e.metadata() {
                    m.len().hash(&mut h);
                    m.modified().ok().hash(&mut h);
                }
            }
        }
        h.finish()
    }
}

impl crate::reload::Reload for Authorizer {
    type Stamp = u64;

    fn stamp(&self) -> u64 {
        self.source().fingerprint()
    }

    fn reload_files(&self, trigger: &'static str) {
        let _ = self.reload(trigger);
    }
}

/// A refused reload.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub at: SystemTime,
    pub trigger: String,
    pub errors: Vec<String>,
}

#[derive(Debug, Default)]
struct ReloadStatus {
    last_refused: Option<Refusal>,
    reloads: u64,
    refusals: u64,
}

/// One authorization with everything the audit line needs.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub decision: Arc<Decision>,
    /// The shadow set's decision, when there is a shadow set.
    pub shadow: Option<Arc<Decision>>,
    pub cache_hit: bool,
}

impl Outcome {
    /// The shadow decision when it differs from the active one.
    pub fn shadow_difference(&self) -> Option<&Decision> {
        self.shadow
            .as_deref()
            .filter(|s| s.allowed != self.decision.allowed)
    }
}

/// The active (and shadow) policy bundle, swapped atomically, plus the decision cache.
pub struct Authorizer {
    source: PolicySource,
    active: ArcSwap<PolicyBundle>,
    shadow: ArcSwapOption<PolicyBundle>,
    status: Mutex<ReloadStatus>,
    cache: Option<cache::DecisionCache>,
}

fn epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Authorizer {
    /// Load the policies (refusing to start on any error).
    pub fn load(
        source: PolicySource,
        cache: &DecisionCacheSettings,
    ) -> Result<Authorizer, Vec<String>> {
        let (active, shadow) = source.load()?;
        crate::metrics::policy_versions(
            &active.version,
            shadow.as_ref().map(|s| s.version.as_str()),
        );
        Ok(Authorizer {
            source,
            active: ArcSwap::from_pointee(active),
            shadow: ArcSwapOption::from(shadow.map(Arc::new)),
            status: Mutex::new(ReloadStatus::default()),
            cache: cache.enabled.then(|| cache::DecisionCache::new(cache)),
        })
    }

    /// The bundle in force now.
    pub fn current(&self) -> Arc<PolicyBundle> {
        self.active.load_full()
    }

    /// Where the policies are read from.
    pub fn source(&self) -> &PolicySource {
        &self.source
    }

    /// Validate the files again and, if they pass, activate them. Returns the new version.
    pub fn reload(&self, trigger: &str) -> Result<String, Vec<String>> {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        match self.source.load() {
            Ok((active, shadow)) => {
                let version = active.version.clone();
                let changed = version != self.active.load().version;
                crate::metrics::policy_versions(
                    &version,
                    shadow.as_ref().map(|s| s.version.as_str()),
                );
                self.active.store(Arc::new(active));
                self.shadow.store(shadow.map(Arc::new));
                status.reloads += 1;
                crate::metrics::policy_reload("ok");
                tracing::info!(trigger, version = %version, changed, "policies reloaded");
                Ok(version)
            }
            Err(errors) => {
                status.refusals += 1;
                crate::metrics::policy_reload("refused");
                tracing::warn!(trigger, errors = ?errors, "policy reload refused; the last good set keeps serving");
                status.last_refused = Some(Refusal {
                    at: SystemTime::now(),
                    trigger: trigger.to_string(),
                    errors: errors.clone(),
                });
                Err(errors)
            }
        }
    }

    /// Decide with the active set (through the cache) and the shadow set.
    pub fn authorize(
        &self,
        bundle: &PolicyBundle,
        identity: &Identity,
        facts: &RequestFacts<'_>,
    ) -> Outcome {
        let shadow = self.shadow.load_full();
        let key = self
            .cache
            .as_ref()
            .map(|_| cache::key(bundle, shadow.as_deref(), identity, facts));
        if let (Some(c), Some(k)) = (&self.cache, &key)
            && let Some(hit) = c.get(k)
        {
            return Outcome {
                decision: hit.0,
                shadow: hit.1,
                cache_hit: true,
            };
        }
        let decision = Arc::new(decide(bundle, identity, facts));
        let shadow = shadow.map(|s| Arc::new(decide(&s, identity, facts)));
        if let (Some(c), Some(k)) = (&self.cache, key) {
            c.insert(k, (decision.clone(), shadow.clone()));
        }
        Outcome {
            decision,
            shadow,
            cache_hit: false,
        }
    }

    /// `GET /admin/policies`: the active version, when it loaded, the last refused attempt.
    pub fn status_json(&self) -> serde_json::Value {
        let b = self.current();
        let shadow = self.shadow.load_full();
        let status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        serde_json::json!({
            "version": b.version,
            "loadedAt": epoch(b.loaded_at),
            "dir": b.dir.display().to_string(),
            "policies": b.policies.policies().count(),
            "routes": b.routes.routes.len(),
            "shadow": shadow.map(|s| serde_json::json!({
                "version": s.version,
                "dir": s.dir.display().to_string(),
                "policies": s.policies.policies().count(),
            })),
            "reloads": status.reloads,
            "refusals": status.refusals,
            "lastRefused": status.last_refused.as_ref().map(|r| serde_json::json!({
                "at": epoch(r.at),
                "trigger": r.trigger,
                "errors": r.errors,
            })),
            "decisionCache": self.cache.as_ref().map(|c| serde_json::json!({"entries": c.entry_count()})),
        })
    }
}

#[cfg(test)]
mod tests;
