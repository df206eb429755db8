//! Points: balances, the ledger, mission completions and the leaderboards computed from them.
//!
//! A balance changes only through `Store::add_to_field` with a floor of 0, so two concurrent
//! debits can never take it below zero. A completion is claimed with a conditional insert
//! before its points are credited; if crediting fails the claim is released again.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::content::{fetch, level_for};
use super::validate::{self, Mode, PERIODS};
use super::{Ctx, PageParams, Reply, body_object, optional_body, paginate, str_of};
use crate::error::ApiError;
use crate::store::{self, Store};

/// How many ledger entries `GET points` shows (newest first).
pub const LEDGER_SHOWN: usize = 100;

async fn balance(store: &dyn Store, ws: &str, user: &str) -> Result<i64, ApiError> {
    Ok(store
        .get(ws, store::BALANCES, user)
        .await?
        .and_then(|d| d.get("balance").and_then(Value::as_i64))
        .unwrap_or(0))
}

/// A user's balance and level as `(balance, level)`.
pub async fn standing(store: &dyn Store, ws: &str, user: &str) -> Result<(i64, Value), ApiError> {
    let balance = balance(store, ws, user).await?;
    let levels = store.list(ws, store::LEVELS).await?;
    Ok((balance, level_for(&levels, balance)))
}

/// `GET points`: the caller's own balance, level and recent ledger.
pub async fn mine(store: &dyn Store, cx: &Ctx) -> Result<Reply, ApiError> {
    let user = cx.caller.user_id();
    let (balance, level) = standing(store, &cx.ws, user).await?;
    let mut ledger: Vec<Value> = store
        .list(&cx.ws, store::LEDGER)
        .await?
        .into_iter()
        .map(|(_, doc)| doc)
        .filter(|doc| str_of(doc, "userId") == Some(user))
        .collect();
    ledger.sort_by(|a, b| {
        let key = |d: &Value| {
            (
                str_of(d, "createdAt").map(str::to_owned),
                str_of(d, "id").map(str::to_owned),
            )
        };
        key(b).cmp(&key(a))
    });
    ledger.truncate(LEDGER_SHOWN);
    Reply::ok(json!({"userId": user, "balance": balance, "level": level, "ledger": ledger}))
}

/// Change `user`'s balance by `delta` and record it in the ledger; the ledger entry.
async fn credit(
    store: &dyn Store,
    ws: &str,
    user: &str,
    delta: i64,
    reason: &str,
    mission: Option<&str>,
) -> Result<Value, ApiError> {
    let Some(balance) = store
        .add_to_field(ws, store::BALANCES, user, "balance", delta, 0)
        .await?
    else {
        return Err(if delta < 0 {
            ApiError::Business {
                code: "business/insufficient_points",
                message: "the balance may not go below 0".into(),
            }
        } else {
            ApiError::Business {
                code: "business/points_limit",
                message: "the balance would exceed its limit".into(),
            }
        });
    };
    let id = nanoid::nanoid!();
    let mut entry = json!({
        "id": id, "userId": user, "points": delta, "reason": reason,
        "balance": balance, "createdAt": crate::clock::now(),
    });
    if let (Some(m), Some(map)) = (mission, entry.as_object_mut()) {
        map.insert("missionId".into(), Value::from(m));
    }
    store.put(ws, store::LEDGER, &id, entry.clone()).await?;
    Ok(entry)
}

/// `POST points` (M2M): award positive points to a user.
pub async fn award(store: &dyn Store, cx: &Ctx) -> Result<Reply, ApiError> {
    if !cx.caller.is_m2m() {
        return Err(ApiError::Forbidden("only machine clients may award points"));
    }
    let body = validate::check(body_object(cx)?, validate::POINTS_AWARD, Mode::Create)?;
    ledger_write(store, cx, &body).await
}

/// `POST points/adjustments`: a manager's correction of either sign.
pub async fn adjust(store: &dyn Store, cx: &Ctx) -> Result<Reply, ApiError> {
    let body = validate::check(body_object(cx)?, validate::POINTS_ADJUSTMENT, Mode::Create)?;
    if body.get("points").and_then(Value::as_i64) == Some(0) {
        return Err(ApiError::field("points", "must not be 0"));
    }
    ledger_write(store, cx, &body).await
}

async fn ledger_write(
    store: &dyn Store,
    cx: &Ctx,
    body: &serde_json::Map<String, Value>,
) -> Result<Reply, ApiError> {
    let user = body
        .get("userId")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let points = body.get("points").and_then(Value::as_i64).unwrap_or(0);
    let reason = body
        .get("reason")
        .and_then(Value::as_str)
        .unwrap_or_default();
    Reply::created(credit(store, &cx.ws, user, points, reason, None).await?)
}

/// `POST missions/{missionId}/complete`: record the caller's completion and award the points.
pub async fn complete_mission(
    store: &dyn Store,
    cx: &Ctx,
    mission_id: &str,
) -> Result<Reply, ApiError> {
    optional_body(cx)?;
    let user = cx.caller.user_id();
    let mission = fetch(store, cx, store::MISSIONS, mission_id).await?;
    if str_of(&mission, "status").is_some_and(|s| s != "active") {
        return Err(ApiError::Business {
            code: "business/mission_not_active",
            message: format!("mission '{mission_id}' is not active"),
        });
    }
    let points = mission
        .get("points")
        .and_then(Value::as_i64)
        .unwrap_or(0)
        .max(0);
    let completed_at = crate::clock::now();
    let key = store::completion_id(user, mission_id);
    let record = json!({
        "missionId": mission_id, "userId": user,
        "completedAt": completed_at, "pointsAwarded": points,
    });
    if !store
        .insert(&cx.ws, store::COMPLETIONS, &key, record.clone())
        .await?
    {
        return Err(ApiError::Conflict(format!(
            "mission '{mission_id}' is already completed by this user"
        )));
    }
    let reason = format!("mission {mission_id}");
    let entry = match credit(store, &cx.ws, user, points, &reason, Some(mission_id)).await {
        Ok(entry) => entry,
        Err(e) => {
            let _ = store.delete(&cx.ws, store::COMPLETIONS, &key).await;
            return Err(e);
        }
    };
    let mut out = record;
    if let Some(map) = out.as_object_mut() {
        map.insert(
            "balance".into(),
            entry.get("balance").cloned().unwrap_or(Value::Null),
        );
    }
    Reply::created(out)
}

fn period_param(cx: &Ctx) -> Result<Option<&str>, ApiError> {
    match cx.query.get("period") {
        Some(p) if !PERIODS.contains(&p) => Err(ApiError::field(
            "period",
            "must be one of: weekly, all-time",
        )),
        other => Ok(other),
    }
}

/// `GET leaderboards`: the definitions, optionally of one `period`.
pub async fn leaderboards(store: &dyn Store, cx: &Ctx) -> Result<Reply, ApiError> {
    let page = PageParams::from_query(&cx.query)?;
    let period = period_param(cx)?;
    let items = store
        .list(&cx.ws, store::LEADERBOARDS)
        .await?
        .into_iter()
        .filter(|(_, doc)| period.is_none_or(|p| str_of(doc, "period").unwrap_or("all-time") == p))
        .collect();
    Reply::ok(paginate(items, &page))
}

/// `GET leaderboards/{id}`: the definition with a page of ranked `entries`.
pub async fn leaderboard(store: &dyn Store, cx: &Ctx, id: &str) -> Result<Reply, ApiError> {
    let page = PageParams::from_query(&cx.query)?;
    let mut doc = fetch(store, cx, store::LEADERBOARDS, id).await?;
    let period = period_param(cx)?
        .or_else(|| str_of(&doc, "period"))
        .unwrap_or("all-time")
        .to_owned();
    let ranked = standings(store, &cx.ws, &period).await?;
    let entries = paginate(ranked, &page);
    if let Some(map) = doc.as_object_mut() {
        map.insert("period".into(), Value::from(period));
        map.insert("entries".into(), entries["items"].clone());
        map.insert("nextToken".into(), entries["nextToken"].clone());
    }
    Reply::ok(doc)
}

/// Ranked entries keyed by zero-padded rank: all-time from balances, weekly from the ledger of
/// the last seven days. Ties share no rank; they are ordered by user id.
async fn standings(
    store: &dyn Store,
    ws: &str,
    period: &str,
) -> Result<Vec<(String, Value)>, ApiError> {
    let mut totals: BTreeMap<String, i64> = BTreeMap::new();
    if period == "weekly" {
        let since = crate::clock::days_ago(7);
        for (_, e) in store.list(ws, store::LEDGER).await? {
            if str_of(&e, "createdAt").is_some_and(|t| t >= since.as_str())
                && let Some(user) = str_of(&e, "userId")
            {
                let points = e.get("points").and_then(Value::as_i64).unwrap_or(0);
                let total = totals.entry(user.to_owned()).or_default();
                *total = total.saturating_add(points);
            }
        }
    } else {
        for (user, b) in store.list(ws, store::BALANCES).await? {
            totals.insert(user, b.get("balance").and_then(Value::as_i64).unwrap_or(0));
        }
    }
    let names: BTreeMap<String, Value> = store
        .list(ws, store::USERS)
        .await?
        .into_iter()
        .map(|(id, u)| (id, u.get("name").cloned().unwrap_or(Value::Null)))
        .collect();
    let mut ranked: Vec<(String, i64)> = totals.into_iter().filter(|(_, p)| *p > 0).collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok(ranked
        .into_iter()
        .enumerate()
        .map(|(i, (user, points))| {
            let name = names.get(&user).cloned().unwrap_or(Value::Null);
            let entry = json!({"rank": i + 1, "userId": user, "name": name, "points": points});
            (format!("{:010}", i + 1), entry)
        })
        .collect())
}
