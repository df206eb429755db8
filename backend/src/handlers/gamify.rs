//! The gamification engine: points awards (balance, ledger and activity in one transaction),
//! levels reached, badges awarded by rules, mission participation, activities and completion.
//!
//! Consistency under concurrent writes:
//! - a balance changes only by the store's atomic `Add` (with a floor), in the same transaction
//!   as its ledger entry and activity, so the ledger always explains the balance and no award is
//!   lost or half-written;
//! - a completion is a conditional `Insert` in that transaction: of any number of concurrent
//!   completions of one mission by one user, exactly one commits and awards;
//! - levels reached and badges are conditional inserts keyed by (user, level|badge), so each
//!   is recorded and announced once however many awards race past its threshold.

use serde_json::{Map, Value, json};

use super::content::{fetch, level_for, threshold};
use super::validate::{self, Mode};
use super::{Ctx, Reply, body_object, optional_body, str_of};
use crate::error::ApiError;
use crate::store::{self, Store, WriteOp, completion_id, log_key};

/// Who did something: the user it counts for and, when delegated or done by a machine client
/// for someone else, the client that did it.
#[derive(Debug, Clone)]
pub struct Actor {
    /// The user the action is recorded for.
    pub user: String,
    /// The client acting for the user, if any.
    pub acted_by: Option<String>,
}

impl Actor {
    /// The caller acting for themselves (or the user a delegated client acts for).
    pub fn caller(cx: &Ctx) -> Actor {
        Actor {
            user: cx.caller.user_id().to_owned(),
            acted_by: cx.caller.impersonated_by.clone(),
        }
    }

    /// The caller acting on `user`'s account (an award or adjustment).
    pub fn on_behalf(cx: &Ctx, user: &str) -> Actor {
        let by = cx.caller.user_id();
        Actor {
            user: user.to_owned(),
            acted_by: (by != user).then(|| by.to_owned()),
        }
    }
}

/// One activity log entry as a write: `kind` plus `extra` fields, for `actor`.
pub fn activity(kind: &str, actor: &Actor, extra: Value) -> WriteOp {
    let mut doc = Map::new();
    doc.insert("id".into(), Value::from(nanoid::nanoid!()));
    doc.insert("type".into(), Value::from(kind));
    doc.insert("userId".into(), Value::from(actor.user.as_str()));
    doc.insert(
        "actedBy".into(),
        actor.acted_by.as_deref().map_or(Value::Null, Value::from),
    );
    if let Value::Object(extra) = extra {
        doc.extend(extra);
    }
    doc.insert("createdAt".into(), Value::from(crate::clock::now()));
    WriteOp::Insert {
        collection: store::ACTIVITIES.into(),
        id: log_key(),
        doc: Value::Object(doc),
    }
}

/// Append one activity on its own (outside a transaction).
pub async fn log(store: &dyn Store, ws: &str, op: WriteOp) -> Result<(), ApiError> {
    if let WriteOp::Insert {
        collection,
        id,
        doc,
    } = op
    {
        store.insert(ws, &collection, &id, doc).await?;
    }
    Ok(())
}

/// A points movement to apply.
pub struct Award<'a> {
    /// Whose balance.
    pub actor: &'a Actor,
    /// The amount (either sign, not 0 unless a completion worth nothing).
    pub points: i64,
    /// Why, for the ledger.
    pub reason: &'a str,
    /// The lowest balance allowed after it.
    pub floor: i64,
    /// The mission it is for, if any.
    pub mission: Option<&'a str>,
    /// The activity type (`points_awarded`, `points_adjusted`, `mission_completed`).
    pub kind: &'a str,
}

/// What an award changed.
#[derive(Debug)]
pub struct Awarded {
    /// The ledger entry.
    pub entry: Value,
    /// The balance read after the award (it includes awards that committed concurrently);
    /// `None` when it could not be read (the award itself committed).
    pub balance: Option<i64>,
    /// The level for that balance.
    pub level: Value,
    /// Levels reached for the first time.
    pub levels_reached: Vec<Value>,
    /// Badges awarded by this change.
    pub badges_awarded: Vec<Value>,
}

impl Awarded {
    /// The award's fields for an answer: `balance`, `level`, `levelsReached`, `badgesAwarded`.
    pub fn extend(&self, out: &mut Value) {
        if let Some(map) = out.as_object_mut() {
            map.insert("balance".into(), Value::from(self.balance));
            map.insert("level".into(), self.level.clone());
            map.insert(
                "levelsReached".into(),
                Value::from(self.levels_reached.clone()),
            );
            map.insert(
                "badgesAwarded".into(),
                Value::from(self.badges_awarded.clone()),
            );
        }
    }
}

/// Why a transaction with an award did not commit.
pub enum Refused {
    /// One of the caller's own conditions (`extra` writes) failed.
    Condition,
    /// The balance would have left its bounds.
    Balance,
}

/// Apply `award` with `extra` writes (all or none), then record levels and badges it unlocked.
/// `Err(Ok(Refused))` when a condition failed and nothing was written.
pub async fn award(
    store: &dyn Store,
    ws: &str,
    award: Award<'_>,
    extra: Vec<WriteOp>,
    completed_mission: Option<&str>,
) -> Result<Result<Awarded, Refused>, ApiError> {
    let actor = award.actor;
    let user = actor.user.as_str();
    let mut entry = json!({
        "id": nanoid::nanoid!(), "userId": user, "points": award.points,
        "reason": award.reason, "createdAt": crate::clock::now(),
        "actedBy": actor.acted_by,
    });
    if let (Some(m), Some(map)) = (award.mission, entry.as_object_mut()) {
        map.insert("missionId".into(), Value::from(m));
    }
    let has_extra = !extra.is_empty();
    let mut ops = extra;
    ops.push(WriteOp::Add {
        collection: store::BALANCES.into(),
        id: user.into(),
        field: "balance".into(),
        delta: award.points,
        floor: award.floor,
    });
    ops.push(WriteOp::Insert {
        collection: store::LEDGER.into(),
        id: log_key(),
        doc: entry.clone(),
    });
    let mut detail = json!({"points": award.points, "reason": award.reason});
    if let (Some(m), Some(map)) = (award.mission, detail.as_object_mut()) {
        map.insert("missionId".into(), Value::from(m));
    }
    ops.push(activity(award.kind, actor, detail));
    if !store.transact(ws, ops).await? {
        // Tell the caller's own conditions apart from the balance bound by asking again.
        return Ok(Err(if has_extra && award.points >= 0 {
            Refused::Condition
        } else {
            Refused::Balance
        }));
    }
    // The award is committed. What follows reads and records its consequences; a failure there
    // must not make the award look failed (a client would send it again, perhaps under a new
    // idempotency key): it is logged and the answer leaves out what could not be learnt. Levels
    // and badges whose rules hold are caught up by the user's next award.
    let (balance, level, levels_reached, badges_awarded) =
        match consequences(store, ws, actor, completed_mission).await {
            Ok((balance, level, levels, badges)) => (Some(balance), level, levels, badges),
            Err(e) => {
                tracing::warn!(workspace = %ws, user = %user, error = %e,
                    "award committed; its balance, level and badges were not evaluated");
                (None, Value::Null, Vec::new(), Vec::new())
            }
        };
    if let Some(map) = entry.as_object_mut() {
        map.insert("balance".into(), Value::from(balance));
    }
    Ok(Ok(Awarded {
        entry,
        balance,
        level,
        levels_reached,
        badges_awarded,
    }))
}

/// After an award: the balance, its level, the levels reached and the badges awarded.
async fn consequences(
    store: &dyn Store,
    ws: &str,
    actor: &Actor,
    completed_mission: Option<&str>,
) -> Result<(i64, Value, Vec<Value>, Vec<Value>), ApiError> {
    let balance = balance_of(store, ws, &actor.user).await?;
    let (level, levels_reached) = levels_after(store, ws, actor, balance).await?;
    let badges = badges_after(store, ws, actor, balance, completed_mission).await?;
    Ok((balance, level, levels_reached, badges))
}

/// `user`'s balance (0 when none).
pub async fn balance_of(store: &dyn Store, ws: &str, user: &str) -> Result<i64, ApiError> {
    Ok(store
        .get(ws, store::BALANCES, user)
        .await?
        .and_then(|d| d.get("balance").and_then(Value::as_i64))
        .unwrap_or(0))
}

/// The level for `balance`, and the levels at or below it that `actor.user` reaches for the
/// first time (each recorded once, with an activity).
async fn levels_after(
    store: &dyn Store,
    ws: &str,
    actor: &Actor,
    balance: i64,
) -> Result<(Value, Vec<Value>), ApiError> {
    let levels = store.list(ws, store::LEVELS).await?;
    let level = level_for(&levels, balance);
    let mut reached = Vec::new();
    let mut eligible: Vec<&(String, Value)> = levels
        .iter()
        .filter(|(_, d)| threshold(d) <= balance)
        .collect();
    eligible.sort_by_key(|(id, d)| (threshold(d), id.clone()));
    for (id, doc) in eligible {
        let record = json!({"levelId": id, "userId": actor.user, "reachedAt": crate::clock::now()});
        if store
            .insert(
                ws,
                store::LEVELS_REACHED,
                &completion_id(&actor.user, id),
                record,
            )
            .await?
        {
            let summary = json!({"id": id, "name": doc.get("name"), "threshold": threshold(doc)});
            log(
                store,
                ws,
                activity("level_reached", actor, json!({"levelId": id})),
            )
            .await?;
            reached.push(summary);
        }
    }
    Ok((level, reached))
}

/// Award every badge whose rule now holds for `actor.user` and that they do not have yet.
async fn badges_after(
    store: &dyn Store,
    ws: &str,
    actor: &Actor,
    balance: i64,
    completed_mission: Option<&str>,
) -> Result<Vec<Value>, ApiError> {
    let user = actor.user.as_str();
    let mut completions: Option<i64> = None;
    let mut awarded = Vec::new();
    for (id, badge) in store.list(ws, store::BADGES).await? {
        let holds = match str_of(&badge, "trigger").unwrap_or("manual") {
            // The mission just completed, or completed before (a badge missed then, or created
            // since, is given at the next award, as level and point badges are).
            "mission_completed" => match str_of(&badge, "missionId") {
                Some(m) if completed_mission == Some(m) => true,
                Some(m) => store
                    .get(ws, store::COMPLETIONS, &completion_id(user, m))
                    .await?
                    .is_some(),
                None => false,
            },
            "missions_completed" => {
                let Some(n) = badge.get("threshold").and_then(Value::as_i64) else {
                    continue;
                };
                if completions.is_none() {
                    completions = Some(completed_count(store, ws, user).await?);
                }
                completions.unwrap_or(0) >= n
            }
            "points_reached" => badge
                .get("threshold")
                .and_then(Value::as_i64)
                .is_some_and(|n| balance >= n),
            "level_reached" => match str_of(&badge, "levelId") {
                Some(level) => store
                    .get(ws, store::LEVELS_REACHED, &completion_id(user, level))
                    .await?
                    .is_some(),
                None => false,
            },
            _ => false,
        };
        if holds && let Some(b) = grant_badge(store, ws, actor, &id, &badge).await? {
            awarded.push(b);
        }
    }
    Ok(awarded)
}

/// Give `actor.user` the badge unless they have it; the award when new.
pub async fn grant_badge(
    store: &dyn Store,
    ws: &str,
    actor: &Actor,
    badge_id: &str,
    badge: &Value,
) -> Result<Option<Value>, ApiError> {
    let record = json!({
        "badgeId": badge_id, "userId": actor.user, "name": badge.get("name"),
        "awardedAt": crate::clock::now(),
    });
    if !store
        .insert(
            ws,
            store::USER_BADGES,
            &completion_id(&actor.user, badge_id),
            record.clone(),
        )
        .await?
    {
        return Ok(None);
    }
    log(
        store,
        ws,
        activity("badge_awarded", actor, json!({"badgeId": badge_id})),
    )
    .await?;
    Ok(Some(record))
}

async fn completed_count(store: &dyn Store, ws: &str, user: &str) -> Result<i64, ApiError> {
    Ok(store::of_user(store, ws, store::COMPLETIONS, user)
        .await?
        .len() as i64)
}

/// The badges `user` holds, oldest first.
pub async fn badges_of(store: &dyn Store, ws: &str, user: &str) -> Result<Vec<Value>, ApiError> {
    let mut out = store::of_user(store, ws, store::USER_BADGES, user).await?;
    out.sort_by(|a, b| str_of(a, "awardedAt").cmp(&str_of(b, "awardedAt")));
    Ok(out)
}

fn target_count(mission: &Value) -> i64 {
    mission
        .get("targetCount")
        .and_then(Value::as_i64)
        .unwrap_or(1)
        .max(1)
}

fn check_active(mission: &Value, id: &str) -> Result<(), ApiError> {
    if str_of(mission, "status").is_some_and(|s| s != "active") {
        return Err(ApiError::Business {
            code: "business/mission_not_active",
            message: format!("mission '{id}' is not active"),
        });
    }
    Ok(())
}

fn already_completed(id: &str) -> ApiError {
    ApiError::Conflict(format!("mission '{id}' is already completed by this user"))
}

/// The caller's participation in a mission, if any.
pub async fn participation(
    store: &dyn Store,
    ws: &str,
    user: &str,
    mission: &str,
) -> Result<Option<Value>, ApiError> {
    Ok(store
        .get(ws, store::PARTICIPATIONS, &completion_id(user, mission))
        .await?)
}

/// The mission, if the caller may still play it (it exists, is active and they have not
/// completed it), with the caller's participation key.
async fn playable(
    store: &dyn Store,
    cx: &Ctx,
    actor: &Actor,
    mission_id: &str,
) -> Result<(Value, String), ApiError> {
    let mission = fetch(store, cx, store::MISSIONS, mission_id).await?;
    check_active(&mission, mission_id)?;
    let key = completion_id(&actor.user, mission_id);
    if store.get(&cx.ws, store::COMPLETIONS, &key).await?.is_some() {
        return Err(already_completed(mission_id));
    }
    Ok((mission, key))
}

/// Create the caller's participation unless it exists (with its activity); whether it did.
async fn start(
    store: &dyn Store,
    cx: &Ctx,
    actor: &Actor,
    mission_id: &str,
    mission: &Value,
    key: &str,
) -> Result<Option<Value>, ApiError> {
    let doc = json!({
        "missionId": mission_id, "userId": actor.user, "progress": 0,
        "targetCount": target_count(mission), "status": "in_progress",
        "joinedAt": crate::clock::now(),
    });
    if !store
        .insert(&cx.ws, store::PARTICIPATIONS, key, doc.clone())
        .await?
    {
        return Ok(None);
    }
    log(
        store,
        &cx.ws,
        activity("mission_joined", actor, json!({"missionId": mission_id})),
    )
    .await?;
    Ok(Some(doc))
}

/// `POST missions/{missionId}/participations`: join a mission (201); 409
/// `resource/already_exists` when already joined.
pub async fn join(store: &dyn Store, cx: &Ctx, mission_id: &str) -> Result<Reply, ApiError> {
    optional_body(cx)?;
    let actor = Actor::caller(cx);
    let (mission, key) = playable(store, cx, &actor, mission_id).await?;
    match start(store, cx, &actor, mission_id, &mission, &key).await? {
        Some(doc) => Reply::created(doc),
        None => Err(ApiError::AlreadyExists(format!(
            "already participating in mission '{mission_id}'"
        ))),
    }
}

/// `POST missions/{missionId}/activities`: record `count` activities towards the mission's
/// `targetCount` (joining it if needed); reaching the target completes the mission and awards
/// its points. 201 with the progress and, when it completed, the completion.
pub async fn record_activity(
    store: &dyn Store,
    cx: &Ctx,
    mission_id: &str,
) -> Result<Reply, ApiError> {
    let body = if cx.body.iter().all(u8::is_ascii_whitespace) {
        validate::check(Map::new(), validate::ACTIVITY, Mode::Create)?
    } else {
        validate::check(body_object(cx)?, validate::ACTIVITY, Mode::Create)?
    };
    let count = body.get("count").and_then(Value::as_i64).unwrap_or(1);
    let actor = Actor::caller(cx);
    let (mission, key) = playable(store, cx, &actor, mission_id).await?;
    let target = target_count(&mission);
    start(store, cx, &actor, mission_id, &mission, &key).await?;
    let progress = store
        .add_to_field(&cx.ws, store::PARTICIPATIONS, &key, "progress", count, 0)
        .await?
        .unwrap_or(0);
    let mut detail = json!({"missionId": mission_id, "count": count, "progress": progress});
    if let (Some(note), Some(map)) = (body.get("note"), detail.as_object_mut()) {
        map.insert("note".into(), note.clone());
    }
    log(store, &cx.ws, activity("activity_recorded", &actor, detail)).await?;
    let mut completion = Value::Null;
    if progress >= target {
        match complete_for(store, cx, &actor, mission_id, &mission).await {
            Ok(done) => completion = done,
            // Another request completed it first: the mission is done either way.
            Err(ApiError::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Reply::created(json!({
        "missionId": mission_id, "userId": actor.user,
        "progress": progress.min(target), "targetCount": target,
        "completed": progress >= target, "completion": completion,
    }))
}

/// `POST missions/{missionId}/complete`: complete the mission (its `targetCount` of activities
/// must be recorded when above 1) and award its points; 409 when already completed.
pub async fn complete(store: &dyn Store, cx: &Ctx, mission_id: &str) -> Result<Reply, ApiError> {
    optional_body(cx)?;
    let actor = Actor::caller(cx);
    let mission = fetch(store, cx, store::MISSIONS, mission_id).await?;
    check_active(&mission, mission_id)?;
    let target = target_count(&mission);
    if target > 1 {
        let progress = participation(store, &cx.ws, &actor.user, mission_id)
            .await?
            .and_then(|p| p.get("progress").and_then(Value::as_i64))
            .unwrap_or(0);
        if progress < target {
            if store
                .get(
                    &cx.ws,
                    store::COMPLETIONS,
                    &completion_id(&actor.user, mission_id),
                )
                .await?
                .is_some()
            {
                return Err(already_completed(mission_id));
            }
            return Err(ApiError::Business {
                code: "business/mission_incomplete",
                message: format!(
                    "mission '{mission_id}' needs {target} activities; {progress} recorded"
                ),
            });
        }
    }
    let done = complete_for(store, cx, &actor, mission_id, &mission).await?;
    Reply::created(done)
}

/// Claim the completion, show it on the participation and award the points in one
/// transaction, then the engine's effects.
async fn complete_for(
    store: &dyn Store,
    cx: &Ctx,
    actor: &Actor,
    mission_id: &str,
    mission: &Value,
) -> Result<Value, ApiError> {
    let points = mission
        .get("points")
        .and_then(Value::as_i64)
        .unwrap_or(0)
        .max(0);
    let key = completion_id(&actor.user, mission_id);
    let mut record = json!({
        "missionId": mission_id, "userId": actor.user,
        "completedAt": crate::clock::now(), "pointsAwarded": points,
    });
    if let (Some(by), Some(map)) = (&actor.acted_by, record.as_object_mut()) {
        map.insert("actedBy".into(), Value::from(by.as_str()));
    }
    let completed_at = record.get("completedAt").cloned().unwrap_or(Value::Null);
    let shown =
        completed_participation(store, &cx.ws, actor, mission, mission_id, completed_at).await?;
    let ops = vec![
        WriteOp::Insert {
            collection: store::COMPLETIONS.into(),
            id: key.clone(),
            doc: record.clone(),
        },
        WriteOp::Put {
            collection: store::PARTICIPATIONS.into(),
            id: key,
            doc: shown,
        },
    ];
    let reason = format!("mission {mission_id}");
    let outcome = award(
        store,
        &cx.ws,
        Award {
            actor,
            points,
            reason: &reason,
            floor: i64::MIN,
            mission: Some(mission_id),
            kind: "mission_completed",
        },
        ops,
        Some(mission_id),
    )
    .await?;
    let awarded = match outcome {
        Ok(a) => a,
        Err(_) => return Err(already_completed(mission_id)),
    };
    awarded.extend(&mut record);
    Ok(record)
}

/// `actor`'s participation in `mission` as its completion leaves it: the one they have with
/// `status` completed and `completedAt`, or, for a direct completion that never joined, a new
/// one at full progress. Written in the completion's transaction, so that the two never
/// disagree (an activity recorded meanwhile is refused by the completion's existence; its
/// progress, counted before, is then of no account).
async fn completed_participation(
    store: &dyn Store,
    ws: &str,
    actor: &Actor,
    mission: &Value,
    mission_id: &str,
    completed_at: Value,
) -> Result<Value, ApiError> {
    let target = target_count(mission);
    let mut doc = match participation(store, ws, &actor.user, mission_id).await? {
        Some(Value::Object(current)) => current,
        _ => {
            let mut new = Map::new();
            new.insert("missionId".into(), Value::from(mission_id));
            new.insert("userId".into(), Value::from(actor.user.as_str()));
            new.insert("progress".into(), Value::from(target));
            new.insert("targetCount".into(), Value::from(target));
            new
        }
    };
    doc.insert("status".into(), Value::from("completed"));
    doc.insert("completedAt".into(), completed_at);
    Ok(Value::Object(doc))
}

/// A badge's rule must name what its trigger needs: `missionId` for `mission_completed`,
/// `levelId` for `level_reached`, `threshold` for `missions_completed` and `points_reached`.
fn check_badge_rule(doc: &Map<String, Value>) -> Result<(), ApiError> {
    let needs = match doc
        .get("trigger")
        .and_then(Value::as_str)
        .unwrap_or("manual")
    {
        "mission_completed" => Some("missionId"),
        "level_reached" => Some("levelId"),
        "missions_completed" | "points_reached" => Some("threshold"),
        _ => None,
    };
    match needs {
        Some(field) if doc.get(field).is_none_or(Value::is_null) => {
            Err(ApiError::field(field, "is required by the badge's trigger"))
        }
        _ => Ok(()),
    }
}

/// `POST badges`: a badge definition with its award rule.
pub async fn create_badge(store: &dyn Store, cx: &Ctx) -> Result<Reply, ApiError> {
    let fields = validate::check(body_object(cx)?, validate::BADGE, Mode::Create)?;
    check_badge_rule(&fields)?;
    super::content::insert(
        store,
        cx,
        store::BADGES,
        super::content::new_document(fields),
    )
    .await
}

/// `PUT badges/{badgeId}`: change a definition (the rule checked on the result).
pub async fn update_badge(store: &dyn Store, cx: &Ctx, id: &str) -> Result<Reply, ApiError> {
    let patch = validate::check(body_object(cx)?, validate::BADGE, Mode::Patch)?;
    let current = fetch(store, cx, store::BADGES, id).await?;
    let mut merged = current.as_object().cloned().unwrap_or_default();
    merged.extend(patch.clone());
    check_badge_rule(&merged)?;
    super::content::merge(store, cx, store::BADGES, id, patch).await
}

/// The activity log, newest first, filtered by `userId` (forced to the caller's own user when
/// `own`) and `type`.
pub async fn activities(store: &dyn Store, cx: &Ctx, own: bool) -> Result<Reply, ApiError> {
    let page = super::PageParams::from_query(&cx.query)?;
    let user = if own {
        Some(cx.caller.user_id())
    } else {
        cx.query.get("userId")
    };
    let kind = cx.query.get("type");
    let keep = |a: &Value| {
        user.is_none_or(|u| str_of(a, "userId") == Some(u))
            && kind.is_none_or(|k| str_of(a, "type") == Some(k))
    };
    Reply::ok(super::page_of(store, &cx.ws, store::ACTIVITIES, &page, keep).await?)
}

/// `GET missions/{missionId}` for end users: the mission with the caller's `participation`
/// (null when they have not started it).
pub async fn mission_for_user(store: &dyn Store, cx: &Ctx, id: &str) -> Result<Reply, ApiError> {
    let mut mission = fetch(store, cx, store::MISSIONS, id).await?;
    let mine = participation(store, &cx.ws, cx.caller.user_id(), id).await?;
    if let Some(map) = mission.as_object_mut() {
        map.insert("participation".into(), mine.unwrap_or(Value::Null));
    }
    Reply::ok(mission)
}

/// `GET missions/{missionId}/participants` (dashboard): every user's progress on the mission.
pub async fn participants(store: &dyn Store, cx: &Ctx, id: &str) -> Result<Reply, ApiError> {
    let page = super::PageParams::from_query(&cx.query)?;
    fetch(store, cx, store::MISSIONS, id).await?;
    let of_mission = |p: &Value| str_of(p, "missionId") == Some(id);
    Reply::ok(super::page_of(store, &cx.ws, store::PARTICIPATIONS, &page, of_mission).await?)
}
