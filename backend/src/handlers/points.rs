//! Points: balances, the ledger, mission completions and the leaderboards computed from them.
//!
//! A balance changes only through an `Add` with a floor of 0, so two concurrent debits can never
//! take it below zero. The balance, the ledger entry, the activity (and for a mission, the
//! conditional insert of its completion) are one transaction: all or none.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use serde_json::{Value, json};

use super::content::{fetch, level_for, threshold};
use super::gamify::{self, Actor};
use super::validate::{self, Mode, PERIODS};
use super::{Ctx, PageParams, Reply, body_object, page_of, paginate, str_of};
use crate::error::ApiError;
use crate::store::{self, Store};

/// How many ledger entries `GET points` shows (newest first).
pub const LEDGER_SHOWN: usize = 100;

/// A user's balance and level as `(balance, level)`.
pub async fn standing(store: &dyn Store, ws: &str, user: &str) -> Result<(i64, Value), ApiError> {
    let balance = gamify::balance_of(store, ws, user).await?;
    let levels = store.list(ws, store::LEVELS).await?;
    Ok((balance, level_for(&levels, balance)))
}

/// `GET points`: the caller's own balance, level and recent ledger.
pub async fn mine(store: &dyn Store, cx: &Ctx) -> Result<Reply, ApiError> {
    let user = cx.caller.user_id();
    let (balance, level) = standing(store, &cx.ws, user).await?;
    // Ledger keys sort newest first: read only as far as the newest entries of this user.
    let mut ledger: Vec<Value> = Vec::new();
    store::scan(store, &cx.ws, store::LEDGER, None, |_, doc| {
        if str_of(doc, "userId") == Some(user) {
            ledger.push(doc.clone());
        }
        if ledger.len() == LEDGER_SHOWN {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .await?;
    Reply::ok(json!({"userId": user, "balance": balance, "level": level, "ledger": ledger}))
}

/// `GET me`: the caller's balance, level, the next level, badges and completed missions.
pub async fn me(store: &dyn Store, cx: &Ctx) -> Result<Reply, ApiError> {
    let user = cx.caller.user_id();
    let (balance, level) = standing(store, &cx.ws, user).await?;
    let next = store
        .list(&cx.ws, store::LEVELS)
        .await?
        .into_iter()
        .filter(|(_, d)| threshold(d) > balance)
        .min_by_key(|(id, d)| (threshold(d), id.clone()))
        .map_or(Value::Null, |(id, d)| {
            json!({"id": id, "name": d.get("name"), "threshold": threshold(&d),
                   "pointsNeeded": threshold(&d) - balance})
        });
    let badges = gamify::badges_of(store, &cx.ws, user).await?;
    let completed: Vec<Value> = store::of_user(store, &cx.ws, store::COMPLETIONS, user)
        .await?
        .into_iter()
        .map(|c| c.get("missionId").cloned().unwrap_or(Value::Null))
        .collect();
    Reply::ok(json!({
        "userId": user, "workspaceId": cx.ws, "balance": balance, "level": level,
        "nextLevel": next, "badges": badges, "completedMissions": completed,
    }))
}

/// `POST points` (M2M): award positive points to a user.
pub async fn award(store: &dyn Store, cx: &Ctx) -> Result<Reply, ApiError> {
    if !cx.caller.is_m2m() {
        return Err(ApiError::Forbidden("only machine clients may award points"));
    }
    let body = validate::check(body_object(cx)?, validate::POINTS_AWARD, Mode::Create)?;
    ledger_write(store, cx, &body, 0, "points_awarded").await
}

/// `POST points/adjustments`: a manager's correction of either sign; the balance stays at or
/// above 0 unless `allowNegative` is true.
pub async fn adjust(store: &dyn Store, cx: &Ctx) -> Result<Reply, ApiError> {
    let body = validate::check(body_object(cx)?, validate::POINTS_ADJUSTMENT, Mode::Create)?;
    if body.get("points").and_then(Value::as_i64) == Some(0) {
        return Err(ApiError::field("points", "must not be 0"));
    }
    let floor = if body.get("allowNegative").and_then(Value::as_bool) == Some(true) {
        i64::MIN
    } else {
        0
    };
    ledger_write(store, cx, &body, floor, "points_adjusted").await
}

async fn ledger_write(
    store: &dyn Store,
    cx: &Ctx,
    body: &serde_json::Map<String, Value>,
    floor: i64,
    kind: &str,
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
    let actor = Actor::on_behalf(cx, user);
    let outcome = gamify::award(
        store,
        &cx.ws,
        gamify::Award {
            actor: &actor,
            points,
            reason,
            floor,
            mission: None,
            kind,
        },
        Vec::new(),
        None,
    )
    .await?;
    match outcome {
        Ok(awarded) => {
            let mut out = awarded.entry.clone();
            awarded.extend(&mut out);
            Reply::created(out)
        }
        Err(_) if points < 0 => Err(ApiError::Business {
            code: "business/insufficient_points",
            message: "the balance may not go below 0".into(),
        }),
        Err(_) => Err(ApiError::Business {
            code: "business/points_limit",
            message: "the balance would exceed its limit".into(),
        }),
    }
}

/// `GET points/ledger` (dashboard): ledger entries, newest first, optionally of one `userId`.
pub async fn ledger(store: &dyn Store, cx: &Ctx) -> Result<Reply, ApiError> {
    let page = PageParams::from_query(&cx.query)?;
    let user = cx.query.get("userId");
    Reply::ok(
        page_of(store, &cx.ws, store::LEDGER, &page, |e| {
            user.is_none_or(|u| str_of(e, "userId") == Some(u))
        })
        .await?,
    )
}

fn period_param(cx: &Ctx) -> Result<Option<&str>, ApiError> {
    match cx.query.get("period") {
        Some(p) if !PERIODS.contains(&p) => Err(ApiError::field(
            "period",
            format!("must be one of: {}", PERIODS.join(", ")),
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

/// A leaderboard definition with its period (the query's, else its own) and standings.
async fn board(
    store: &dyn Store,
    cx: &Ctx,
    id: &str,
) -> Result<(Value, Vec<(String, Value)>), ApiError> {
    let mut doc = fetch(store, cx, store::LEADERBOARDS, id).await?;
    let period = period_param(cx)?
        .or_else(|| str_of(&doc, "period"))
        .unwrap_or("all-time")
        .to_owned();
    let ranked = standings(store, &cx.ws, &period, str_of(&doc, "groupId")).await?;
    if let Some(map) = doc.as_object_mut() {
        map.insert("period".into(), Value::from(period.as_str()));
        map.insert(
            "periodStart".into(),
            crate::clock::period_start(&period).map_or(Value::Null, Value::from),
        );
        map.insert("participants".into(), Value::from(ranked.len()));
    }
    Ok((doc, ranked))
}

fn position_of(ranked: &[(String, Value)], user: &str) -> Option<usize> {
    ranked
        .iter()
        .position(|(_, e)| str_of(e, "userId") == Some(user))
}

/// `GET leaderboards/{id}`: the definition with a page of ranked `entries` (the top N is the
/// first page with `limit=N`) and the caller's own entry as `me` (null when unranked).
pub async fn leaderboard(store: &dyn Store, cx: &Ctx, id: &str) -> Result<Reply, ApiError> {
    let page = PageParams::from_query(&cx.query)?;
    let (mut doc, ranked) = board(store, cx, id).await?;
    let me = position_of(&ranked, cx.caller.user_id()).map_or(Value::Null, |i| ranked[i].1.clone());
    let entries = paginate(ranked, &page);
    if let Some(map) = doc.as_object_mut() {
        map.insert("entries".into(), entries["items"].clone());
        map.insert("nextToken".into(), entries["nextToken"].clone());
        map.insert("me".into(), me);
    }
    Reply::ok(doc)
}

/// The largest `radius` of `around-me`.
pub const MAX_RADIUS: usize = 50;

/// `GET leaderboards/{id}/around-me`: the caller's entry and up to `radius` (default 5)
/// entries above and below it; `me` null and no entries when the caller is unranked.
pub async fn around_me(store: &dyn Store, cx: &Ctx, id: &str) -> Result<Reply, ApiError> {
    let radius = match cx.query.get("radius") {
        None => 5,
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if n <= MAX_RADIUS => n,
            _ => {
                return Err(ApiError::field(
                    "radius",
                    format!("must be an integer from 0 to {MAX_RADIUS}"),
                ));
            }
        },
    };
    let (mut doc, ranked) = board(store, cx, id).await?;
    let (me, entries) = match position_of(&ranked, cx.caller.user_id()) {
        Some(i) => {
            let lo = i.saturating_sub(radius);
            let hi = (i + radius + 1).min(ranked.len());
            let window: Vec<Value> = ranked[lo..hi].iter().map(|(_, e)| e.clone()).collect();
            (ranked[i].1.clone(), window)
        }
        None => (Value::Null, Vec::new()),
    };
    if let Some(map) = doc.as_object_mut() {
        map.insert("me".into(), me);
        map.insert("entries".into(), Value::from(entries));
        map.insert("radius".into(), Value::from(radius));
    }
    Reply::ok(doc)
}

/// Ranked entries keyed by zero-padded position: all-time from balances, weekly and monthly
/// from the ledger since the period began (UTC). Users with no points in the period are not
/// ranked. Equal points share a rank (1, 2, 2, 4), ordered by user id.
async fn standings(
    store: &dyn Store,
    ws: &str,
    period: &str,
    group: Option<&str>,
) -> Result<Vec<(String, Value)>, ApiError> {
    let mut totals: BTreeMap<String, i64> = BTreeMap::new();
    if let Some((since, since_ms)) = crate::clock::period_start_with_ms(period) {
        // Ledger keys sort newest first and are made after their entry's `createdAt`: the
        // period's entries all come before the first key of an earlier millisecond.
        let boundary = store::log_key_prefix(since_ms);
        store::scan(store, ws, store::LEDGER, None, |key, e| {
            if key
                .get(..boundary.len())
                .is_some_and(|k| k > boundary.as_str())
            {
                return ControlFlow::Break(());
            }
            if str_of(e, "createdAt").is_some_and(|t| t >= since.as_str())
                && let Some(user) = str_of(e, "userId")
            {
                let points = e.get("points").and_then(Value::as_i64).unwrap_or(0);
                let total = totals.entry(user.to_owned()).or_default();
                *total = total.saturating_add(points);
            }
            ControlFlow::Continue(())
        })
        .await?;
    } else {
        for (user, b) in store.list(ws, store::BALANCES).await? {
            totals.insert(user, b.get("balance").and_then(Value::as_i64).unwrap_or(0));
        }
    }
    if let Some(group) = group {
        let members: Vec<String> = store
            .get(ws, store::GROUPS, group)
            .await?
            .and_then(|g| g.get("members").cloned())
            .and_then(|m| serde_json::from_value(m).ok())
            .unwrap_or_default();
        totals.retain(|user, _| members.contains(user));
    }
    let names: BTreeMap<String, Value> = store
        .list(ws, store::USERS)
        .await?
        .into_iter()
        .map(|(id, u)| (id, u.get("name").cloned().unwrap_or(Value::Null)))
        .collect();
    let mut ranked: Vec<(String, i64)> = totals.into_iter().filter(|(_, p)| *p > 0).collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut rank = 0;
    let mut previous = None;
    Ok(ranked
        .into_iter()
        .enumerate()
        .map(|(i, (user, points))| {
            if previous != Some(points) {
                rank = i + 1;
                previous = Some(points);
            }
            let name = names.get(&user).cloned().unwrap_or(Value::Null);
            let entry = json!({"rank": rank, "userId": user, "name": name, "points": points});
            (format!("{:010}", i + 1), entry)
        })
        .collect())
}
