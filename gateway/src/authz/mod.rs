//! Stage 8: Cedar authorization. Fail closed: any evaluation error denies, even when Cedar's
//! decision says Allow (Cedar skips a policy that errors, including a forbid).

pub mod bundle;
pub mod mapping;

use std::sync::Arc;

use arc_swap::ArcSwap;
use cedar_policy::{Authorizer as CedarAuthorizer, Decision as CedarDecision};

pub use bundle::PolicyBundle;
pub use mapping::RequestFacts;

use crate::authn::Identity;

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

/// Decide one request against a bundle.
pub fn decide(bundle: &PolicyBundle, identity: &Identity, facts: &RequestFacts<'_>) -> Decision {
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
        CedarAuthorizer::new().is_authorized(&input.request, &bundle.policies, &input.entities);
    let diagnostics = response.diagnostics();
    let errors: Vec<String> = diagnostics.errors().map(|e| e.to_string()).collect();
    let reasons: Vec<String> = diagnostics.reason().map(|id| id.to_string()).collect();
    Decision {
        allowed: response.decision() == CedarDecision::Allow && errors.is_empty(),
        reasons,
        errors,
        policy_version: bundle.version.clone(),
    }
}

/// The active policy bundle, swapped atomically: a request keeps the bundle it started with.
pub struct Authorizer {
    active: ArcSwap<PolicyBundle>,
}

impl Authorizer {
    /// Start with a loaded bundle.
    pub fn new(bundle: PolicyBundle) -> Authorizer {
        Authorizer {
            active: ArcSwap::from_pointee(bundle),
        }
    }

    /// The bundle in force now.
    pub fn current(&self) -> Arc<PolicyBundle> {
        self.active.load_full()
    }

    /// Activate a new bundle.
    pub fn swap(&self, bundle: PolicyBundle) {
        self.active.store(Arc::new(bundle));
    }
}

#[cfg(test)]
mod tests;
