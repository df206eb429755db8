//! Plain resources (missions, badges, levels, leaderboards, groups, catalog, premium content):
//! list, get, create, update, delete, plus the catalog's filters and premium gating.

use serde_json::{Map, Value, json};

use super::validate::{self, Field, Mode, TIERS};
use super::{Ctx, PageParams, Reply, body_object, paginate, str_of};
use crate::error::ApiError;
use crate::store::{self, Store};

/// The singular name of a collection's documents, for messages.
pub fn noun(collection: &str) -> &'static str {
    match collection {
        store::MISSIONS => "mission",
        store::BADGES => "badge",
        store::LEVELS => "level",
        store::LEADERBOARDS => "leaderboard",
        store::CATALOG => "catalog item",
        store::PREMIUM => "premium content",
        store::GROUPS => "group",
        store::USERS => "user",
        store::DEPARTMENTS => "department",
        _ => "resource",
    }
}

/// A page of a collection.
pub async fn list(store: &dyn Store, cx: &Ctx, collection: &str) -> Result<Reply, ApiError> {
    let page = PageParams::from_query(&cx.query)?;
    Reply::ok(super::page_of(store, &cx.ws, collection, &page, |_| true).await?)
}

/// One document, or 404.
pub async fn get(
    store: &dyn Store,
    cx: &Ctx,
    collection: &str,
    id: &str,
) -> Result<Reply, ApiError> {
    Reply::ok(fetch(store, cx, collection, id).await?)
}

/// The document or a 404.
pub async fn fetch(
    store: &dyn Store,
    cx: &Ctx,
    collection: &str,
    id: &str,
) -> Result<Value, ApiError> {
    store
        .get(&cx.ws, collection, id)
        .await?
        .ok_or_else(|| ApiError::not_found(noun(collection), id))
}

/// Create a document from the body with a fresh 21-character nanoid; 201 with the document.
pub async fn create(
    store: &dyn Store,
    cx: &Ctx,
    collection: &str,
    spec: &[Field],
) -> Result<Reply, ApiError> {
    let fields = validate::check(body_object(cx)?, spec, Mode::Create)?;
    let doc = new_document(fields);
    insert(store, cx, collection, doc).await
}

/// `fields` with a new id and timestamps.
pub fn new_document(fields: Map<String, Value>) -> Value {
    let now = crate::clock::now();
    let mut doc = Map::new();
    doc.insert("id".into(), Value::from(nanoid::nanoid!()));
    doc.extend(fields);
    doc.insert("createdAt".into(), Value::from(now.clone()));
    doc.insert("updatedAt".into(), Value::from(now));
    Value::Object(doc)
}

/// Store a new document under its `id`; 201.
pub async fn insert(
    store: &dyn Store,
    cx: &Ctx,
    collection: &str,
    doc: Value,
) -> Result<Reply, ApiError> {
    let id = str_of(&doc, "id").unwrap_or_default().to_owned();
    if !store.insert(&cx.ws, collection, &id, doc.clone()).await? {
        return Err(ApiError::Conflict(format!(
            "{} '{id}' already exists",
            noun(collection)
        )));
    }
    Reply::created(doc)
}

/// Merge the body into an existing document; 200 with the result, 404 when missing.
pub async fn update(
    store: &dyn Store,
    cx: &Ctx,
    collection: &str,
    id: &str,
    spec: &[Field],
) -> Result<Reply, ApiError> {
    let patch = validate::check(body_object(cx)?, spec, Mode::Patch)?;
    merge(store, cx, collection, id, patch).await
}

/// Merge `patch` (plus `updatedAt`) into the document; 404 when missing.
pub async fn merge(
    store: &dyn Store,
    cx: &Ctx,
    collection: &str,
    id: &str,
    mut patch: Map<String, Value>,
) -> Result<Reply, ApiError> {
    patch.insert("updatedAt".into(), Value::from(crate::clock::now()));
    match store.merge(&cx.ws, collection, id, patch).await? {
        Some(doc) => Reply::ok(doc),
        None => Err(ApiError::not_found(noun(collection), id)),
    }
}

/// Delete a document; 204, or 404 when missing.
pub async fn remove(
    store: &dyn Store,
    cx: &Ctx,
    collection: &str,
    id: &str,
) -> Result<Reply, ApiError> {
    if store.delete(&cx.ws, collection, id).await? {
        Reply::no_content()
    } else {
        Err(ApiError::not_found(noun(collection), id))
    }
}

fn is_premium(doc: &Value) -> bool {
    str_of(doc, "tier") == Some("premium")
}

const NOT_PREMIUM: ApiError =
    ApiError::Forbidden("premium content needs a premium subscription or a manager role");

/// The catalog, filtered by `tier`, `category`, `type`, `tag` and `language`. For callers
/// without premium access, premium items are listed as locked teasers without their `body`,
/// and `tier=premium` is refused.
pub async fn catalog_list(store: &dyn Store, cx: &Ctx) -> Result<Reply, ApiError> {
    let page = PageParams::from_query(&cx.query)?;
    let tier = cx.query.get("tier");
    if let Some(t) = tier
        && !TIERS.contains(&t)
    {
        return Err(ApiError::field("tier", "must be one of: free, premium"));
    }
    let entitled = cx.caller.premium_entitled();
    if tier == Some("premium") && !entitled {
        return Err(NOT_PREMIUM);
    }
    let field_is = |name: &'static str| {
        let wanted = cx.query.get(name);
        move |doc: &Value| wanted.is_none_or(|w| str_of(doc, name) == Some(w))
    };
    let (category, kind, language) = (field_is("category"), field_is("type"), field_is("language"));
    let tag = cx.query.get("tag");
    let items = store
        .list(&cx.ws, store::CATALOG)
        .await?
        .into_iter()
        .filter(|(_, doc)| tier.is_none_or(|t| str_of(doc, "tier").unwrap_or("free") == t))
        .filter(|(_, doc)| category(doc) && kind(doc) && language(doc))
        .filter(|(_, doc)| {
            tag.is_none_or(|t| {
                doc.get("tags")
                    .and_then(Value::as_array)
                    .is_some_and(|tags| tags.iter().any(|x| x.as_str() == Some(t)))
            })
        })
        .map(|(id, doc)| (id, teaser(doc, entitled)))
        .collect();
    Reply::ok(paginate(items, &page))
}

/// A premium item without its `body` and marked `locked`, for callers without access.
pub fn teaser(mut doc: Value, entitled: bool) -> Value {
    if !entitled
        && is_premium(&doc)
        && let Some(map) = doc.as_object_mut()
    {
        map.remove("body");
        map.insert("locked".into(), Value::Bool(true));
    }
    doc
}

/// One catalog item; a premium one only for callers with premium access.
pub async fn catalog_item(store: &dyn Store, cx: &Ctx, id: &str) -> Result<Reply, ApiError> {
    let doc = fetch(store, cx, store::CATALOG, id).await?;
    if is_premium(&doc) && !cx.caller.premium_entitled() {
        return Err(NOT_PREMIUM);
    }
    Reply::ok(doc)
}

/// Premium content (list or one item): only for callers with premium access.
pub async fn premium(store: &dyn Store, cx: &Ctx, id: Option<&str>) -> Result<Reply, ApiError> {
    if !cx.caller.premium_entitled() {
        return Err(NOT_PREMIUM);
    }
    match id {
        Some(id) => get(store, cx, store::PREMIUM, id).await,
        None => list(store, cx, store::PREMIUM).await,
    }
}

/// Levels ordered by threshold, then id.
pub async fn levels(store: &dyn Store, cx: &Ctx) -> Result<Reply, ApiError> {
    let page = PageParams::from_query(&cx.query)?;
    let mut items = store.list(&cx.ws, store::LEVELS).await?;
    items.sort_by_key(|(id, doc)| (threshold(doc), id.clone()));
    // Keys must ascend for the page token: use the sort position, zero-padded.
    let items = items
        .into_iter()
        .enumerate()
        .map(|(i, (_, doc))| (format!("{i:010}"), doc))
        .collect();
    Reply::ok(paginate(items, &page))
}

/// A level's threshold (missing = 0).
pub fn threshold(doc: &Value) -> i64 {
    doc.get("threshold").and_then(Value::as_i64).unwrap_or(0)
}

/// The highest level reached with `balance` points, as `{id, name, threshold}` (or null).
pub fn level_for(levels: &[(String, Value)], balance: i64) -> Value {
    levels
        .iter()
        .filter(|(_, doc)| threshold(doc) <= balance)
        .max_by_key(|(id, doc)| (threshold(doc), id.clone()))
        .map_or(
            Value::Null,
            |(id, doc)| json!({"id": id, "name": doc.get("name"), "threshold": threshold(doc)}),
        )
}
