//! Catalog structure: categories and learning paths (catalog items in a set order).

use serde_json::{Map, Value};

use super::content::{self, fetch, teaser};
use super::validate::{self, Field, Mode};
use super::{Ctx, PageParams, Reply, body_object, paginate, str_of};
use crate::error::{ApiError, FieldError};
use crate::store::{self, Store};

/// Every `itemIds` entry must name a catalog item of the workspace (400 naming the missing).
async fn check_items(
    store: &dyn Store,
    cx: &Ctx,
    fields: &Map<String, Value>,
) -> Result<(), ApiError> {
    let Some(ids) = fields.get("itemIds").and_then(Value::as_array) else {
        return Ok(());
    };
    let mut details = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let id = id.as_str().unwrap_or_default();
        if store.get(&cx.ws, store::CATALOG, id).await?.is_none() && details.len() < 20 {
            details.push(FieldError {
                field: format!("itemIds[{i}]"),
                message: format!(
                    "catalog item '{}' does not exist",
                    crate::error::clip(id, 64)
                ),
            });
        }
    }
    if details.is_empty() {
        return Ok(());
    }
    Err(ApiError::Invalid {
        message: "itemIds names catalog items that do not exist".into(),
        details,
    })
}

/// `POST learning-paths`.
pub async fn create_path(store: &dyn Store, cx: &Ctx) -> Result<Reply, ApiError> {
    let fields = validate::check(body_object(cx)?, validate::LEARNING_PATH, Mode::Create)?;
    check_items(store, cx, &fields).await?;
    content::insert(
        store,
        cx,
        store::LEARNING_PATHS,
        content::new_document(fields),
    )
    .await
}

/// `PUT learning-paths/{pathId}`.
pub async fn update_path(store: &dyn Store, cx: &Ctx, id: &str) -> Result<Reply, ApiError> {
    let patch = validate::check(body_object(cx)?, validate::LEARNING_PATH, Mode::Patch)?;
    check_items(store, cx, &patch).await?;
    content::merge(store, cx, store::LEARNING_PATHS, id, patch).await
}

/// `GET learning-paths`, optionally of one `language` or `category`.
pub async fn list_paths(store: &dyn Store, cx: &Ctx) -> Result<Reply, ApiError> {
    let page = PageParams::from_query(&cx.query)?;
    let language = cx.query.get("language");
    let category = cx.query.get("category");
    let items = store
        .list(&cx.ws, store::LEARNING_PATHS)
        .await?
        .into_iter()
        .filter(|(_, d)| language.is_none_or(|l| str_of(d, "language") == Some(l)))
        .filter(|(_, d)| category.is_none_or(|c| str_of(d, "category") == Some(c)))
        .collect();
    Reply::ok(paginate(items, &page))
}

/// `GET learning-paths/{pathId}`: the path with its `items` in order (premium items locked for
/// callers without premium access; items deleted since are left out).
pub async fn get_path(store: &dyn Store, cx: &Ctx, id: &str) -> Result<Reply, ApiError> {
    let mut path = fetch(store, cx, store::LEARNING_PATHS, id).await?;
    let entitled = cx.caller.premium_entitled();
    let ids: Vec<String> = path
        .get("itemIds")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    let mut items = Vec::with_capacity(ids.len());
    for (position, item) in ids.iter().enumerate() {
        if let Some(mut doc) = store.get(&cx.ws, store::CATALOG, item).await? {
            if let Some(map) = doc.as_object_mut() {
                map.insert("position".into(), Value::from(position + 1));
            }
            items.push(teaser(doc, entitled));
        }
    }
    if let Some(map) = path.as_object_mut() {
        map.insert("items".into(), Value::from(items));
    }
    Reply::ok(path)
}

/// Create a document in a collection with `spec`, checking a category's `parentId` exists.
pub async fn create_category(
    store: &dyn Store,
    cx: &Ctx,
    spec: &[Field],
) -> Result<Reply, ApiError> {
    let fields = validate::check(body_object(cx)?, spec, Mode::Create)?;
    if let Some(parent) = fields.get("parentId").and_then(Value::as_str)
        && store
            .get(&cx.ws, store::CATEGORIES, parent)
            .await?
            .is_none()
    {
        return Err(ApiError::field(
            "parentId",
            format!(
                "category '{}' does not exist",
                crate::error::clip(parent, 64)
            ),
        ));
    }
    content::insert(store, cx, store::CATEGORIES, content::new_document(fields)).await
}
