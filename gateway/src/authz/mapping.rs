//! The request mapping: verified identity + matched route + query -> a Cedar request and
//! its entities. The running gateway and the offline CLI both call [`build`], so what an
//! admin tests is what production decides.

use std::collections::{HashMap, HashSet};

use cedar_policy::{
    Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, Request, RestrictedExpression,
};

use super::bundle::PolicyBundle;
use crate::authn::Identity;
use crate::routes::RouteMatch;

/// What a decision is about, besides the token.
pub struct RequestFacts<'a> {
    pub route: &'a RouteMatch,
    /// Decoded query pairs; only parameters the route declares are used (first value wins).
    pub query: &'a [(String, String)],
    /// The `X-User-ID` header, when sent.
    pub impersonated_user: Option<&'a str>,
}

/// A Cedar request with the entities it needs.
pub struct CedarInput {
    pub principal: EntityUid,
    pub action: EntityUid,
    pub resource: EntityUid,
    pub request: Request,
    /// Built with Cedar's core API so the transitive closure is not recomputed per request:
    /// every parent set here is closed already (see [`build`]).
    core_entities: cedar_policy_core::entities::Entities,
}

impl CedarInput {
    /// The entities of the request.
    pub fn entities(&self) -> &Entities {
        use ref_cast::RefCast;
        Entities::ref_cast(&self.core_entities)
    }
}

pub(crate) fn type_name(name: &str) -> Result<EntityTypeName, String> {
    name.parse()
        .map_err(|e| format!("bad entity type `{name}`: {e}"))
}

fn uid(type_name: EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(type_name, EntityId::new(id))
}

fn string(s: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(s.to_string())
}

/// Build the Cedar request for one API call. Fails (and the caller denies) only if the
/// bundle or the inputs are malformed.
pub fn build(
    bundle: &PolicyBundle,
    identity: &Identity,
    facts: &RequestFacts<'_>,
) -> Result<CedarInput, String> {
    let route = bundle
        .routes
        .routes
        .get(facts.route.route_index)
        .ok_or("route index out of range")?;
    let workspace_id = facts
        .route
        .param("workspaceId")
        .ok_or("route without workspaceId")?;

    // Principal: claims only. Machine callers get no role parents: they act by scope.
    let principal_uid = uid(bundle.types.identity.clone(), &identity.principal_id);
    let parents: HashSet<EntityUid> = match (&identity.role, identity.is_m2m()) {
        (Some(role), false) => bundle.role_closure.get(role).cloned().unwrap_or_default(),
        _ => HashSet::new(),
    };
    let claim = |v: &Option<String>| v.clone().unwrap_or_default();
    let principal_attrs = [
        ("workspace", claim(&identity.workspace_id)),
        ("platform", claim(&identity.platform)),
        ("role", claim(&identity.role)),
        ("department", claim(&identity.department)),
    ];
    let mut attrs: HashMap<String, RestrictedExpression> = principal_attrs
        .iter()
        .map(|(k, v)| (k.to_string(), string(v)))
        .collect();
    attrs.insert(
        "premium".into(),
        RestrictedExpression::new_bool(identity.premium),
    );
    attrs.insert(
        "onboardingCompleted".into(),
        RestrictedExpression::new_bool(identity.onboarding_completed),
    );
    let principal =
        Entity::new(principal_uid.clone(), attrs, parents.clone()).map_err(|e| e.to_string())?;

    // Resource: of the route's type, named by its path parameter (or the workspace itself),
    // inside Workspace::"<workspaceId from the path>".
    let workspace_uid = uid(bundle.types.workspace.clone(), workspace_id);
    let ws_attr = || HashMap::from([("workspaceId".to_string(), string(workspace_id))]);
    let workspace =
        Entity::new(workspace_uid.clone(), ws_attr(), HashSet::new()).map_err(|e| e.to_string())?;
    let (resource_uid, resource) = match &route.resource_param {
        None => (workspace_uid.clone(), None),
        Some(param) => {
            let id = facts
                .route
                .param(param)
                .ok_or("missing resource parameter")?;
            let r_uid = uid(
                bundle
                    .types
                    .resources
                    .get(facts.route.route_index)
                    .cloned()
                    .ok_or("route index out of range")?,
                id,
            );
            let entity = Entity::new(
                r_uid.clone(),
                ws_attr(),
                HashSet::from([workspace_uid.clone()]),
            )
            .map_err(|e| e.to_string())?;
            (r_uid, Some(entity))
        }
    };

    // Context.
    let path_params = &facts.route.params;
    let mut query: Vec<(String, String)> = Vec::new();
    for name in &route.query {
        if let Some((_, v)) = facts.query.iter().find(|(k, _)| k == name) {
            query.push((name.clone(), v.clone()));
        }
    }
    let record = |pairs: &[(String, String)]| {
        RestrictedExpression::new_record(pairs.iter().map(|(k, v)| (k.clone(), string(v))))
            .map_err(|e| e.to_string())
    };
    let token = RestrictedExpression::new_record([
        (
            "scope".to_string(),
            RestrictedExpression::new_set(identity.scopes.iter().map(|s| string(s))),
        ),
        ("context".to_string(), string(&claim(&identity.context))),
        ("client_id".to_string(), string(&claim(&identity.client_id))),
        ("token_use".to_string(), string(&claim(&identity.token_use))),
    ])
    .map_err(|e| e.to_string())?;
    let mut context_pairs = vec![
        ("pathParameters".to_string(), record(path_params)?),
        ("queryStringParameters".to_string(), record(&query)?),
        ("token".to_string(), token),
    ];
    if let Some(user) = facts.impersonated_user {
        context_pairs.push(("impersonatedUserId".to_string(), string(user)));
    }
    let context = Context::from_pairs(context_pairs).map_err(|e| e.to_string())?;

    let action = bundle.action_uids[facts.route.route_index].clone();
    let action_entity = bundle.action_entities[facts.route.route_index].clone();
    let mut list = vec![principal, workspace, action_entity];
    list.extend(resource);
    // Every parent set is transitively closed by construction: the principal's roles come
    // from the closed role hierarchy, the resource's parent is the workspace (which has none),
    // and the schema's action entities are closed. Cedar's per-request closure computation
    // (the largest single cost of a decision) is therefore skipped.
    let core_entities = cedar_policy_core::entities::Entities::from_entities(
        list.iter()
            .map(|e| AsRef::<cedar_policy_core::ast::Entity>::as_ref(e).clone()),
        None::<&cedar_policy_core::entities::NoEntitiesSchema>,
        cedar_policy_core::entities::TCComputation::AssumeAlreadyComputed,
        cedar_policy_core::extensions::Extensions::all_available(),
    )
    .map_err(|e| e.to_string())?;
    let request = Request::new(
        principal_uid.clone(),
        action.clone(),
        resource_uid.clone(),
        context,
        None,
    )
    .map_err(|e| e.to_string())?;
    Ok(CedarInput {
        principal: principal_uid,
        action,
        resource: resource_uid,
        request,
        core_entities,
    })
}

/// The context of [`build`] as JSON, for people reading a decision (explain, tests).
pub fn context_json(
    bundle: &PolicyBundle,
    identity: &Identity,
    facts: &RequestFacts<'_>,
) -> serde_json::Value {
    let declared: &[String] = bundle
        .routes
        .routes
        .get(facts.route.route_index)
        .map_or(&[], |r| r.query.as_slice());
    let query: serde_json::Map<String, serde_json::Value> = declared
        .iter()
        .filter_map(|name| {
            facts
                .query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(k, v)| (k.clone(), v.clone().into()))
        })
        .collect();
    let claim = |v: &Option<String>| v.clone().unwrap_or_default();
    let mut out = serde_json::json!({
        "pathParameters": facts.route.params.iter().map(|(k, v)| (k.clone(), v.clone().into())).collect::<serde_json::Map<_, _>>(),
        "queryStringParameters": query,
        "token": {
            "scope": identity.scopes,
            "context": claim(&identity.context),
            "client_id": claim(&identity.client_id),
            "token_use": claim(&identity.token_use),
        },
    });
    if let Some(user) = facts.impersonated_user {
        out["impersonatedUserId"] = user.into();
    }
    out
}
