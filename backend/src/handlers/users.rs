//! Workspace users and administration: users, role changes, department reports, deleting a
//! workspace.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::content::{self, fetch};
use super::points::standing;
use super::validate::{self, Mode};
use super::{Ctx, Reply, body_object, str_of};
use crate::error::ApiError;
use crate::store::{self, Store};

/// `GET users/{userId}`: the user with their balance and level.
pub async fn get(store: &dyn Store, cx: &Ctx, id: &str) -> Result<Reply, ApiError> {
    let mut user = fetch(store, cx, store::USERS, id).await?;
    let (balance, level) = standing(store, &cx.ws, id).await?;
    if let Some(map) = user.as_object_mut() {
        map.insert("balance".into(), Value::from(balance));
        map.insert("level".into(), level);
    }
    Reply::ok(user)
}

/// `GET /internal/v1/workspaces/{ws}/users/{userId}`: who a delegated request acts for
/// (`userId`, `principalId`, `workspaceId`, `lang`, `timezone`, `status`); 404 when the user
/// is not in the workspace.
pub async fn directory(store: &dyn Store, cx: &Ctx, id: &str) -> Result<Reply, ApiError> {
    let user = fetch(store, cx, store::USERS, id).await?;
    let text = |k: &str, default: &str| {
        Value::from(
            user.get(k)
                .and_then(Value::as_str)
                .unwrap_or(default)
                .to_string(),
        )
    };
    Reply::ok(json!({
        "userId": id,
        "principalId": text("principalId", id),
        "workspaceId": cx.ws,
        "lang": text("lang", "en"),
        "timezone": text("timezone", "UTC"),
        "status": text("status", "active"),
    }))
}

/// `POST users`: 409 `resource/already_exists` when the e-mail is taken (case-insensitive).
/// The check and the insert are two steps: two concurrent creates may both pass.
pub async fn create(store: &dyn Store, cx: &Ctx) -> Result<Reply, ApiError> {
    let fields = validate::check(body_object(cx)?, validate::USER, Mode::Create)?;
    let email = fields
        .get("email")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_lowercase();
    let taken = store
        .list(&cx.ws, store::USERS)
        .await?
        .iter()
        .any(|(_, u)| str_of(u, "email").is_some_and(|e| e.to_lowercase() == email));
    if taken {
        return Err(ApiError::AlreadyExists(
            "a user with this e-mail already exists".into(),
        ));
    }
    content::insert(store, cx, store::USERS, content::new_document(fields)).await
}

/// `DELETE users/{userId}`: the user and their balance (the ledger and completions stay as
/// history).
pub async fn remove(store: &dyn Store, cx: &Ctx, id: &str) -> Result<Reply, ApiError> {
    let reply = content::remove(store, cx, store::USERS, id).await?;
    store.delete(&cx.ws, store::BALANCES, id).await?;
    Ok(reply)
}

/// `PUT users/{userId}/role`.
pub async fn set_role(store: &dyn Store, cx: &Ctx, id: &str) -> Result<Reply, ApiError> {
    let patch = validate::check(body_object(cx)?, validate::ROLE_CHANGE, Mode::Create)?;
    content::merge(store, cx, store::USERS, id, patch).await
}

/// `GET departments/{departmentId}/reports`: the department's users with their points and
/// completions. A human Manager only sees their own department (the gateway's policy says the
/// same; this is defence in depth).
pub async fn report(store: &dyn Store, cx: &Ctx, department: &str) -> Result<Reply, ApiError> {
    let caller = &cx.caller;
    if !caller.is_m2m()
        && caller.role.as_deref() == Some("Manager")
        && caller.department.as_deref() != Some(department)
    {
        return Err(ApiError::Forbidden(
            "managers may only see their own department's reports",
        ));
    }
    let info = store.get(&cx.ws, store::DEPARTMENTS, department).await?;
    let members: Vec<(String, Value)> = store
        .list(&cx.ws, store::USERS)
        .await?
        .into_iter()
        .filter(|(_, u)| str_of(u, "department") == Some(department))
        .collect();
    if info.is_none() && members.is_empty() {
        return Err(ApiError::not_found("department", department));
    }
    let mut completions: BTreeMap<String, i64> = BTreeMap::new();
    for (_, c) in store.list(&cx.ws, store::COMPLETIONS).await? {
        if let Some(user) = str_of(&c, "userId") {
            *completions.entry(user.to_owned()).or_default() += 1;
        }
    }
    let mut rows = Vec::with_capacity(members.len());
    let (mut total_points, mut total_completions) = (0i64, 0i64);
    for (id, u) in &members {
        let (balance, level) = standing(store, &cx.ws, id).await?;
        let done = completions.get(id).copied().unwrap_or(0);
        total_points = total_points.saturating_add(balance);
        total_completions += done;
        rows.push(json!({
            "userId": id, "name": u.get("name"), "role": u.get("role"),
            "balance": balance, "level": level, "completions": done,
        }));
    }
    let name = info
        .as_ref()
        .and_then(|d| d.get("name").cloned())
        .unwrap_or_else(|| Value::from(department));
    Reply::ok(json!({
        "departmentId": department,
        "name": name,
        "memberCount": members.len(),
        "totalPoints": total_points,
        "totalCompletions": total_completions,
        "members": rows,
        "generatedAt": crate::clock::now(),
    }))
}

/// `DELETE /dashboard/v1/workspaces/{workspaceId}`: every key of the workspace; 204 (also when
/// it held nothing, so a retry succeeds).
pub async fn delete_workspace(store: &dyn Store, cx: &Ctx) -> Result<Reply, ApiError> {
    let n = store.delete_workspace(&cx.ws).await?;
    tracing::info!(workspace = %cx.ws, documents = n, by = %cx.caller.sub, "workspace deleted");
    Reply::no_content()
}
