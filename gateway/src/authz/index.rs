//! The policy index: Cedar evaluates every policy of a set on every request, so a set of
//! thousands of policies costs milliseconds per decision. Once per load the set is sliced by
//! action (a policy whose action scope cannot match a route's action never applies to it) and
//! by workspace (a policy scoped to `resource in Workspace::"w"` never applies to another
//! tenant's request). Evaluating the slice gives exactly the decision, reasons and errors of the
//! whole set: a policy outside it fails its scope, and Cedar evaluates conditions only after the
//! scope matched.
//!
//! Each slice is also compiled once: every policy's condition (its scope and its `when`/`unless`
//! clauses as one expression) is built at load, and [`Slice::decide`] evaluates those with
//! Cedar's evaluator and combines them by Cedar's rules (a satisfied forbid denies, else a
//! satisfied permit allows, else deny). Cedar's `Authorizer` rebuilds every policy's condition
//! on every request; this is the larger part of an uncached decision's cost. A policy that
//! cannot be compiled (a template link) leaves its slice to Cedar's `Authorizer`, and so does a
//! request whose evaluation reports an error (for Cedar's own error text).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use cedar_policy::{
    ActionConstraint, Effect, EntityUid, Policy, PolicyId, PolicySet, ResourceConstraint,
};
use cedar_policy_core::ast;
use cedar_policy_core::evaluator::Evaluator;

/// Per route (same index as the route table): the policies that can apply.
pub struct PolicyIndex {
    routes: Vec<RouteSlice>,
}

struct RouteSlice {
    /// Policies that apply whatever the workspace.
    general: Slice,
    /// General policies plus those scoped to one workspace.
    by_workspace: HashMap<String, Slice>,
}

/// The policies that can apply to one route (and workspace).
pub struct Slice {
    /// As Cedar's `Authorizer` takes them.
    pub set: PolicySet,
    /// Compiled for [`Slice::decide`] (shared between slices); `None` when a policy could not
    /// be compiled.
    compiled: Option<Vec<Arc<Compiled>>>,
}

/// One policy, ready to evaluate.
struct Compiled {
    id: String,
    forbid: bool,
    /// Cedar's condition of the policy, in its order (principal scope, resource scope, then
    /// the `when`/`unless` clauses), as separate conjuncts; the policy is satisfied when every
    /// one is true. Conjuncts that are literally `true` (a scope without constraint) are left
    /// out, and so is the action scope: the slice holds only policies whose action scope
    /// matches its route's action ([`action_matches`]), so it is true for every request here.
    conjuncts: Vec<ast::Expr>,
}

/// Build a static policy's condition once (its text parsed by Cedar's own parser, under the
/// id the bundle gave it).
fn compile(policy: &Policy) -> Option<Compiled> {
    if !policy.is_static() {
        return None;
    }
    let id = policy.id().to_string();
    let parsed = cedar_policy_core::parser::parse_policy(
        Some(ast::PolicyID::from_string(&id)),
        &policy.to_string(),
    )
    .ok()?;
    let always =
        |e: &ast::Expr| matches!(e.expr_kind(), ast::ExprKind::Lit(ast::Literal::Bool(true)));
    let conjuncts = [
        Some(parsed.principal_constraint_expr()),
        Some(parsed.resource_constraint_expr()),
        parsed.non_scope_constraints().cloned(),
    ]
    .into_iter()
    .flatten()
    .filter(|e| !always(e))
    .collect();
    Some(Compiled {
        id,
        forbid: policy.effect() == Effect::Forbid,
        conjuncts,
    })
}

/// What [`Slice::decide`] found: whether the request is allowed and the policies that
/// determined it (Cedar's "reasons", unsorted).
pub struct Verdict {
    pub allowed: bool,
    pub reasons: Vec<String>,
}

impl Slice {
    fn new(policies: Vec<Policy>, compiled: &HashMap<PolicyId, Option<Arc<Compiled>>>) -> Slice {
        let compiled = policies
            .iter()
            .map(|p| compiled.get(p.id()).cloned().flatten())
            .collect();
        Slice {
            set: PolicySet::from_policies(policies).unwrap_or_else(|_| PolicySet::new()),
            compiled,
        }
    }

    /// Decide with the compiled conditions, as Cedar's `Authorizer` would. `None`: not
    /// compiled, or a policy's evaluation failed (the caller asks Cedar's `Authorizer`, which
    /// reports the error).
    pub fn decide(
        &self,
        request: ast::Request,
        entities: &cedar_policy_core::entities::Entities,
    ) -> Option<Verdict> {
        let compiled = self.compiled.as_ref()?;
        let eval = Evaluator::new(
            request,
            entities,
            cedar_policy_core::extensions::Extensions::all_available(),
        );
        let slots = ast::SlotEnv::new();
        let mut permits = Vec::new();
        let mut forbids = Vec::new();
        for p in compiled {
            // Cedar's `&&`: left to right, stopping at the first false.
            let mut satisfied = true;
            for e in &p.conjuncts {
                match eval.interpret(e, &slots).ok()?.value {
                    ast::ValueKind::Lit(ast::Literal::Bool(true)) => {}
                    ast::ValueKind::Lit(ast::Literal::Bool(false)) => {
                        satisfied = false;
                        break;
                    }
                    // Not a boolean: Cedar reports a type error.
                    _ => return None,
                }
            }
            if satisfied {
                if p.forbid {
                    forbids.push(p.id.clone());
                } else {
                    permits.push(p.id.clone());
                }
            }
        }
        Some(if forbids.is_empty() {
            Verdict {
                allowed: !permits.is_empty(),
                reasons: permits,
            }
        } else {
            Verdict {
                allowed: false,
                reasons: forbids,
            }
        })
    }
}

/// The workspace a policy's resource scope pins it to, if any.
fn pinned_workspace(policy: &Policy) -> Option<String> {
    let uid = match policy.resource_constraint() {
        ResourceConstraint::In(uid)
        | ResourceConstraint::Eq(uid)
        | ResourceConstraint::IsIn(_, uid) => uid,
        _ => return None,
    };
    (uid.type_name().to_string() == "Workspace").then(|| uid.id().unescaped().to_string())
}

fn action_matches(
    policy: &Policy,
    action_and_ancestors: &HashSet<EntityUid>,
    action: &EntityUid,
) -> bool {
    match policy.action_constraint() {
        ActionConstraint::Any => true,
        ActionConstraint::Eq(a) => &a == action,
        ActionConstraint::In(list) => list.iter().any(|a| action_and_ancestors.contains(a)),
    }
}

impl PolicyIndex {
    /// Slice `policies` for each route action; `ancestors[i]` holds route i's action and
    /// every action group it belongs to.
    pub fn build(
        policies: &PolicySet,
        actions: &[EntityUid],
        ancestors: &[HashSet<EntityUid>],
    ) -> PolicyIndex {
        // Each policy is compiled once, whatever the number of slices it is in.
        let compiled: HashMap<PolicyId, Option<Arc<Compiled>>> = policies
            .policies()
            .map(|p| (p.id().clone(), compile(p).map(Arc::new)))
            .collect();
        let routes = actions
            .iter()
            .zip(ancestors)
            .map(|(action, anc)| {
                let mut general = Vec::new();
                let mut pinned: HashMap<String, Vec<Policy>> = HashMap::new();
                for p in policies
                    .policies()
                    .filter(|p| action_matches(p, anc, action))
                {
                    match pinned_workspace(p) {
                        Some(ws) => pinned.entry(ws).or_default().push(p.clone()),
                        None => general.push(p.clone()),
                    }
                }
                let by_workspace = pinned
                    .into_iter()
                    .map(|(ws, mut ps)| {
                        ps.extend(general.iter().cloned());
                        (ws, Slice::new(ps, &compiled))
                    })
                    .collect();
                RouteSlice {
                    general: Slice::new(general, &compiled),
                    by_workspace,
                }
            })
            .collect();
        PolicyIndex { routes }
    }

    /// The policies to evaluate for a route and a workspace.
    pub fn slice(&self, route_index: usize, workspace: &str) -> Option<&Slice> {
        let r = self.routes.get(route_index)?;
        Some(r.by_workspace.get(workspace).unwrap_or(&r.general))
    }
}
