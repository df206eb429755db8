//! The request mapping: verified identity + matched route + query -> a Cedar request and
//! its entities. The running gateway and the offline CLI both call [`build`], so what an
//! admin tests is what production decides.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use cedar_policy::{Entities, EntityId, EntityTypeName, EntityUid, Request};
use cedar_policy_core::ast;

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

/// An entity reference as text for logs and the audit line: `Mission::"m1"` (the id quoted
/// and escaped as Rust's `{:?}` does).
pub struct EntityText<'a> {
    pub kind: &'a str,
    pub id: &'a str,
}

impl std::fmt::Display for EntityText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Ids are nearly always plain ASCII, which `{:?}` leaves as it is: skip its
        // per-character escaping for them.
        if self
            .id
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
        {
            write!(f, "{}::\"{}\"", self.kind, self.id)
        } else {
            write!(f, "{}::{:?}", self.kind, self.id)
        }
    }
}

/// A Cedar request with the entities it needs.
pub struct CedarInput {
    pub principal: EntityUid,
    pub action: EntityUid,
    pub resource: EntityUid,
    /// Built with Cedar's core API (see [`build`]); read through [`CedarInput::request`].
    core_request: ast::Request,
    /// Built with Cedar's core API so the transitive closure is not recomputed per request:
    /// every parent set here is closed already (see [`build`]).
    core_entities: cedar_policy_core::entities::Entities,
}

impl CedarInput {
    /// The Cedar request.
    pub fn request(&self) -> &Request {
        use ref_cast::RefCast;
        Request::ref_cast(&self.core_request)
    }

    /// The entities of the request.
    pub fn entities(&self) -> &Entities {
        use ref_cast::RefCast;
        Entities::ref_cast(&self.core_entities)
    }

    /// The request and its entities as Cedar's core types.
    pub(crate) fn core(&self) -> (&ast::Request, &cedar_policy_core::entities::Entities) {
        (&self.core_request, &self.core_entities)
    }
}

pub(crate) fn type_name(name: &str) -> Result<EntityTypeName, String> {
    name.parse()
        .map_err(|e| format!("bad entity type `{name}`: {e}"))
}

fn uid(type_name: EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(type_name, EntityId::new(id))
}

fn string(s: &str) -> ast::Value {
    ast::Value::from(s)
}

fn claim(v: &Option<String>) -> ast::Value {
    string(v.as_deref().unwrap_or_default())
}

fn record<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> ast::Value {
    ast::Value::record(pairs.into_iter().map(|(k, v)| (k, string(v))), None)
}

/// An entity whose attributes are plain values: nothing for Cedar to evaluate.
fn entity(
    uid: ast::EntityUID,
    attrs: impl IntoIterator<Item = (&'static str, ast::Value)>,
    parents: HashSet<ast::EntityUID>,
) -> ast::Entity {
    ast::Entity::new_with_attr_partial_value(
        uid,
        attrs
            .into_iter()
            .map(|(k, v)| (k.into(), ast::PartialValue::Value(v))),
        HashSet::new(),
        parents,
        [],
    )
}

/// Build the Cedar request for one API call. Fails (and the caller denies) only if the
/// bundle or the inputs are malformed.
///
/// Entities and context are built as Cedar values directly, with Cedar's core API: the
/// public API takes attributes as expressions and evaluates each of them per request, which
/// was about half the cost of a decision.
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
    let parents: HashSet<ast::EntityUID> = match (&identity.role, identity.is_m2m()) {
        (Some(role), false) => bundle.role_closure.get(role).cloned().unwrap_or_default(),
        _ => HashSet::new(),
    };
    let principal = entity(
        principal_uid.clone().into(),
        [
            ("workspace", claim(&identity.workspace_id)),
            ("platform", claim(&identity.platform)),
            ("role", claim(&identity.role)),
            ("department", claim(&identity.department)),
            ("premium", ast::Value::from(identity.premium)),
            (
                "onboardingCompleted",
                ast::Value::from(identity.onboarding_completed),
            ),
        ],
        parents,
    );

    // Resource: of the route's type, named by its path parameter (or the workspace itself),
    // inside Workspace::"<workspaceId from the path>".
    let workspace_uid = uid(bundle.types.workspace.clone(), workspace_id);
    let workspace_core: ast::EntityUID = workspace_uid.clone().into();
    let ws_attr = || [("workspaceId", string(workspace_id))];
    let workspace = entity(workspace_core.clone(), ws_attr(), HashSet::new());
    let (resource_uid, resource) = match &route.resource_param {
        None => (workspace_uid, None),
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
            let entity = entity(
                r_uid.clone().into(),
                ws_attr(),
                HashSet::from([workspace_core]),
            );
            (r_uid, Some(entity))
        }
    };

    // Context.
    let query = route.query.iter().filter_map(|name| {
        facts
            .query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| (name.as_str(), v.as_str()))
    });
    let token = ast::Value::record(
        [
            (
                "scope",
                ast::Value::set(identity.scopes.iter().map(|s| string(s)), None),
            ),
            ("context", claim(&identity.context)),
            ("client_id", claim(&identity.client_id)),
            ("token_use", claim(&identity.token_use)),
        ],
        None,
    );
    let mut context = BTreeMap::new();
    context.insert(
        "pathParameters".into(),
        record(
            facts
                .route
                .params
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        ),
    );
    context.insert("queryStringParameters".into(), record(query));
    context.insert("token".into(), token);
    if let Some(user) = facts.impersonated_user {
        context.insert("impersonatedUserId".into(), string(user));
    }

    let action = bundle.action_uids[facts.route.route_index].clone();
    let action_entity = bundle.action_entities[facts.route.route_index].clone();
    let mut list = vec![Arc::new(principal), Arc::new(workspace), action_entity];
    list.extend(resource.map(Arc::new));
    // Every parent set is transitively closed by construction: the principal's roles come
    // from the closed role hierarchy, the resource's parent is the workspace (which has none),
    // and the schema's action entities are closed. Cedar's per-request closure computation
    // (the largest single cost of a decision) is therefore skipped.
    let core_entities = cedar_policy_core::entities::Entities::new()
        .add_entities(
            list,
            None::<&cedar_policy_core::entities::NoEntitiesSchema>,
            cedar_policy_core::entities::TCComputation::AssumeAlreadyComputed,
            cedar_policy_core::extensions::Extensions::all_available(),
        )
        .map_err(|e| e.to_string())?;
    let core_request = ast::Request::new_unchecked(
        ast::EntityUIDEntry::known(principal_uid.clone().into(), None),
        ast::EntityUIDEntry::known(action.clone().into(), None),
        ast::EntityUIDEntry::known(resource_uid.clone().into(), None),
        Some(ast::Context::Value(Arc::new(context))),
    );
    Ok(CedarInput {
        principal: principal_uid,
        action,
        resource: resource_uid,
        core_request,
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
