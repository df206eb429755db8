//! The policy index: Cedar evaluates every policy of a set on every request, so a set of
//! thousands of policies costs milliseconds per decision. Once per load the set is sliced by
//! action (a policy whose action scope cannot match a route's action never applies to it) and
//! by workspace (a policy scoped to `resource in Workspace::"w"` never applies to another
//! tenant's request). Evaluating the slice gives exactly the decision, reasons and errors of the
//! whole set: a policy outside it fails its scope, and Cedar evaluates conditions only after the
//! scope matched.

use std::collections::{HashMap, HashSet};

use cedar_policy::{ActionConstraint, EntityUid, Policy, PolicySet, ResourceConstraint};

/// Per route (same index as the route table): the policies that can apply.
pub struct PolicyIndex {
    routes: Vec<RouteSlice>,
}

struct RouteSlice {
    /// Policies that apply whatever the workspace.
    general: PolicySet,
    /// General policies plus those scoped to one workspace.
    by_workspace: HashMap<String, PolicySet>,
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
                let set = |ps: Vec<Policy>| {
                    PolicySet::from_policies(ps).unwrap_or_else(|_| PolicySet::new())
                };
                let by_workspace = pinned
                    .into_iter()
                    .map(|(ws, mut ps)| {
                        ps.extend(general.iter().cloned());
                        (ws, set(ps))
                    })
                    .collect();
                RouteSlice {
                    general: set(general),
                    by_workspace,
                }
            })
            .collect();
        PolicyIndex { routes }
    }

    /// The policies to evaluate for a route and a workspace.
    pub fn slice(&self, route_index: usize, workspace: &str) -> Option<&PolicySet> {
        let r = self.routes.get(route_index)?;
        Some(r.by_workspace.get(workspace).unwrap_or(&r.general))
    }
}
