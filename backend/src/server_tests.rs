//! Handler tests: a real server on a loopback port, real HTTP/1.1.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::{Value, json};

use crate::store::{Store, StoreError, WriteOp};
use crate::testing::{Answer, assertion, m2m, sign, start};

const APP: &str = "/app/v1/workspaces/ws-demo";
const DASH: &str = "/dashboard/v1/workspaces/ws-demo";

fn as_is(_: &mut crate::Assertion) {}

fn viewer(a: &mut crate::Assertion) {
    a.sub = "u-viewer".into();
    a.user_id = Some("u-viewer".into());
}

fn admin(a: &mut crate::Assertion) {
    a.sub = "u-admin".into();
    a.user_id = Some("u-admin".into());
    a.role = Some("Admin".into());
    a.context = Some("dashboard".into());
}

fn assert_envelope(a: &Answer, status: u16, code: &str, path: &str) {
    assert_eq!(a.status, status, "{a:?}");
    assert_eq!(a.code(), code, "{a:?}");
    assert_eq!(a.json["status"], status);
    assert_eq!(a.json["path"], path);
    let rid = a.headers.get("x-request-id").unwrap().to_str().unwrap();
    assert_eq!(a.json["requestId"], rid);
    assert!(a.json["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(a.headers.get("content-type").unwrap(), "application/json");
}

#[tokio::test]
async fn healthz_needs_no_assertion() {
    let s = start().await;
    let a = s.raw("GET", "/healthz", None, Vec::new(), &[]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json, json!({"status": "ok"}));
    assert_eq!(a.headers.get("content-type").unwrap(), "application/json");
}

#[tokio::test]
async fn identity_comes_only_from_a_valid_assertion() {
    let s = start().await;
    let path = format!("{APP}/points");
    let spoof = [
        ("x-cedargate-user-id", "u-owner"),
        ("x-request-id", "abc-123"),
    ];
    let a = s.raw("GET", &path, None, Vec::new(), &spoof).await;
    assert_envelope(&a, 401, "auth/invalid_assertion", &path);
    assert_eq!(a.json["requestId"], "abc-123");

    let a = s.raw("GET", &path, Some("junk"), Vec::new(), &[]).await;
    assert_envelope(&a, 401, "auth/invalid_assertion", &path);

    // Bound to another path or method: refused.
    let other = sign(&assertion("GET", &format!("{APP}/missions"), "ws-demo"));
    let a = s.raw("GET", &path, Some(&other), Vec::new(), &[]).await;
    assert_envelope(&a, 401, "auth/invalid_assertion", &path);
    let post = sign(&assertion("POST", &path, "ws-demo"));
    let a = s.raw("GET", &path, Some(&post), Vec::new(), &[]).await;
    assert_envelope(&a, 401, "auth/invalid_assertion", &path);

    let a = s.call("GET", &path, as_is, None).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.json["userId"], "u-member");
    assert_eq!(a.json["balance"], 75);
    assert_eq!(a.json["level"]["id"], "level-1");

    // Without userId the principal is the user.
    let a = s.call("GET", &path, |a| a.user_id = None, None).await;
    assert_eq!(a.json["userId"], "u-member");
    let a = s
        .call("GET", &path, |a| a.user_id = Some("u-viewer".into()), None)
        .await;
    assert_eq!(a.json["userId"], "u-viewer");
    assert_eq!(a.json["ledger"][0]["reason"], "welcome gift");
}

#[tokio::test]
async fn the_path_workspace_must_be_the_assertions() {
    let s = start().await;
    let path = "/app/v1/workspaces/ws-other/missions";
    let a = s
        .call("GET", path, |a| a.workspace_id = "ws-demo".into(), None)
        .await;
    assert_envelope(&a, 403, "auth/insufficient_permissions", path);
}

#[tokio::test]
async fn a_workspace_without_data_lists_empty() {
    let s = start().await;
    let path = "/app/v1/workspaces/ws-empty/missions";
    let a = s
        .call("GET", path, |a| a.workspace_id = "ws-empty".into(), None)
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.json, json!({"items": [], "nextToken": null}));
    let path = "/app/v1/workspaces/ws-empty/missions/mission-welcome";
    let a = s
        .call("GET", path, |a| a.workspace_id = "ws-empty".into(), None)
        .await;
    assert_envelope(&a, 404, "resource/not_found", path);
}

#[tokio::test]
async fn unknown_routes_and_methods_are_404() {
    let s = start().await;
    for (m, p) in [
        ("GET", format!("{APP}/nope")),
        ("PATCH", format!("{APP}/missions")),
        ("DELETE", format!("{APP}/missions/mission-welcome")),
        ("GET", "/nowhere".to_owned()),
    ] {
        let a = s.call(m, &p, as_is, None).await;
        assert_envelope(&a, 404, "resource/not_found", &p);
    }
}

#[tokio::test]
async fn lists_paginate_in_a_stable_order() {
    let s = start().await;
    let a = s
        .call("GET", &format!("{APP}/missions?limit=2"), as_is, None)
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    let first: Vec<&str> = a.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(first, ["mission-first-lesson", "mission-streak"]);
    let token = a.json["nextToken"].as_str().unwrap();
    let a = s
        .call(
            "GET",
            &format!("{APP}/missions?limit=2&nextToken={token}"),
            as_is,
            None,
        )
        .await;
    assert_eq!(a.json["items"][0]["id"], "mission-welcome");
    assert_eq!(a.json["nextToken"], Value::Null);

    let p = format!("{APP}/missions");
    let a = s.call("GET", &format!("{p}?limit=500"), as_is, None).await;
    assert_envelope(&a, 400, "validation/invalid_input", &p);
    assert_eq!(a.json["details"][0]["field"], "limit");
}

#[tokio::test]
async fn completing_a_mission_awards_points_once() {
    let s = start().await;
    let p = format!("{APP}/missions/mission-first-lesson/complete");
    let a = s.call("POST", &p, as_is, Some(json!({}))).await;
    assert_eq!(a.status, 201, "{a:?}");
    assert_eq!(a.json["userId"], "u-member");
    assert_eq!(a.json["pointsAwarded"], 100);
    assert_eq!(a.json["balance"], 175);
    let a = s.call("POST", &p, as_is, None).await;
    assert_envelope(&a, 409, "resource/conflict", &p);
    let a = s.call("GET", &format!("{APP}/points"), as_is, None).await;
    assert_eq!(a.json["balance"], 175);
    assert_eq!(a.json["level"]["id"], "level-2");

    let missing = format!("{APP}/missions/nope/complete");
    let a = s.call("POST", &missing, as_is, None).await;
    assert_envelope(&a, 404, "resource/not_found", &missing);
}

#[tokio::test]
async fn points_are_awarded_by_m2m_and_never_go_negative() {
    let s = start().await;
    let p = format!("{APP}/points");
    let body = json!({"userId": "u-viewer", "points": 5, "reason": "r"});
    let a = s.call("POST", &p, m2m, Some(body.clone())).await;
    assert_eq!(a.status, 201, "{a:?}");
    assert_eq!(a.json["balance"], 15);
    assert_eq!(a.json["id"].as_str().unwrap().len(), 21);
    let a = s.call("POST", &p, as_is, Some(body)).await;
    assert_envelope(&a, 403, "auth/insufficient_permissions", &p);
    let a = s
        .call(
            "POST",
            &p,
            m2m,
            Some(json!({"userId": "u-viewer", "points": -5, "reason": "r"})),
        )
        .await;
    assert_envelope(&a, 400, "validation/invalid_input", &p);

    let adj = format!("{DASH}/points/adjustments");
    let a = s
        .call(
            "POST",
            &adj,
            admin,
            Some(json!({"userId": "u-viewer", "points": -16, "reason": "x"})),
        )
        .await;
    assert_envelope(&a, 422, "business/insufficient_points", &adj);
    let a = s
        .call(
            "POST",
            &adj,
            admin,
            Some(json!({"userId": "u-viewer", "points": -15, "reason": "x"})),
        )
        .await;
    assert_eq!(a.status, 201, "{a:?}");
    assert_eq!(a.json["balance"], 0);
}

#[tokio::test]
async fn dashboard_crud_round_trip() {
    let s = start().await;
    let p = format!("{DASH}/missions");
    let a = s
        .call(
            "POST",
            &p,
            admin,
            Some(json!({"name": "t", "description": "d", "points": 10})),
        )
        .await;
    assert_eq!(a.status, 201, "{a:?}");
    let id = a.json["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 21);
    assert_eq!(a.json["status"], "active");

    let item = format!("{DASH}/missions/{id}");
    let a = s
        .call("PUT", &item, admin, Some(json!({"name": "t2"})))
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        (a.json["name"].as_str(), a.json["points"].as_i64()),
        (Some("t2"), Some(10))
    );
    let a = s
        .call("GET", &format!("{APP}/missions/{id}"), as_is, None)
        .await;
    assert_eq!(a.json["name"], "t2");

    let a = s.call("DELETE", &item, admin, None).await;
    assert_eq!(a.status, 204, "{a:?}");
    let a = s.call("DELETE", &item, admin, None).await;
    assert_envelope(&a, 404, "resource/not_found", &item);
    let missing = format!("{DASH}/levels/level-9");
    let a = s
        .call("PUT", &missing, admin, Some(json!({"name": "x"})))
        .await;
    assert_envelope(&a, 404, "resource/not_found", &missing);
}

#[tokio::test]
async fn bad_bodies_are_400_and_huge_ones_413() {
    let s = start().await;
    let p = format!("{DASH}/missions");
    let a = s.call("POST", &p, admin, Some(json!({}))).await;
    assert_envelope(&a, 400, "validation/invalid_input", &p);
    assert_eq!(
        a.json["details"],
        json!([{"field": "name", "message": "is required"}])
    );

    let mut a = assertion("POST", &p, "ws-demo");
    admin(&mut a);
    let token = sign(&a);
    for body in [
        b"{not json".to_vec(),
        b"[1]".to_vec(),
        Vec::new(),
        vec![0xff, 0xfe],
    ] {
        let got = s.raw("POST", &p, Some(&token), body, &[]).await;
        assert_envelope(&got, 400, "validation/invalid_input", &p);
    }
    let huge = vec![b' '; crate::MAX_BODY_BYTES + 1];
    let got = s.raw("POST", &p, Some(&token), huge, &[]).await;
    assert_envelope(&got, 413, "validation/payload_too_large", &p);

    let role = format!("{DASH}/users/u-member/role");
    let a = s
        .call("PUT", &role, admin, Some(json!({"role": "King"})))
        .await;
    assert_envelope(&a, 400, "validation/invalid_input", &role);
    let a = s
        .call("PUT", &role, admin, Some(json!({"role": "Manager"})))
        .await;
    assert_eq!((a.status, a.json["role"].as_str()), (200, Some("Manager")));
}

#[tokio::test]
async fn premium_content_needs_an_entitled_caller() {
    let s = start().await;
    let item = format!("{APP}/catalog/item-masterclass");
    let a = s.call("GET", &item, as_is, None).await;
    assert_envelope(&a, 403, "auth/insufficient_permissions", &item);
    for entitle in [
        (|a: &mut crate::Assertion| a.premium = true) as fn(&mut crate::Assertion),
        |a| a.role = Some("Manager".into()),
        m2m,
    ] {
        let a = s.call("GET", &item, entitle, None).await;
        assert_eq!(a.status, 200, "{a:?}");
    }
    let free = s
        .call("GET", &format!("{APP}/catalog/item-intro"), as_is, None)
        .await;
    assert_eq!(free.status, 200);

    let list = format!("{APP}/premium-content");
    let a = s.call("GET", &list, as_is, None).await;
    assert_envelope(&a, 403, "auth/insufficient_permissions", &list);
    let a = s
        .call(
            "GET",
            &format!("{list}/premium-playbook"),
            |a| a.premium = true,
            None,
        )
        .await;
    assert_eq!(a.status, 200);

    let catalog = format!("{APP}/catalog");
    let a = s
        .call("GET", &format!("{catalog}?tier=premium"), as_is, None)
        .await;
    assert_envelope(&a, 403, "auth/insufficient_permissions", &catalog);
    let a = s.call("GET", &catalog, as_is, None).await;
    let locked = a.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == "item-masterclass")
        .unwrap();
    assert_eq!(
        (locked["locked"].as_bool(), locked.get("body")),
        (Some(true), None)
    );
    let a = s
        .call(
            "GET",
            &format!("{catalog}?category=onboarding"),
            as_is,
            None,
        )
        .await;
    assert_eq!(a.json["items"].as_array().unwrap().len(), 1);
    let a = s
        .call("GET", &format!("{catalog}?tier=gold"), as_is, None)
        .await;
    assert_envelope(&a, 400, "validation/invalid_input", &catalog);
}

#[tokio::test]
async fn reports_leaderboards_and_users() {
    let s = start().await;
    let r = format!("{DASH}/departments/engineering/reports");
    let a = s.call("GET", &r, admin, None).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        (
            a.json["memberCount"].as_u64(),
            a.json["totalPoints"].as_i64()
        ),
        (Some(2), Some(425))
    );
    let sales = format!("{DASH}/departments/sales/reports");
    let manager = |a: &mut crate::Assertion| a.role = Some("Manager".into());
    let a = s.call("GET", &sales, manager, None).await;
    assert_envelope(&a, 403, "auth/insufficient_permissions", &sales);
    let none = format!("{DASH}/departments/nope/reports");
    let a = s.call("GET", &none, admin, None).await;
    assert_envelope(&a, 404, "resource/not_found", &none);

    let a = s
        .call(
            "GET",
            &format!("{APP}/leaderboards/leaderboard-all-time"),
            as_is,
            None,
        )
        .await;
    assert_eq!(a.json["entries"][0]["userId"], "u-manager");
    assert_eq!(a.json["entries"][0]["rank"], 1);
    let a = s
        .call(
            "GET",
            &format!("{APP}/leaderboards/leaderboard-weekly?limit=1"),
            as_is,
            None,
        )
        .await;
    assert_eq!(a.json["entries"].as_array().unwrap().len(), 1);
    assert!(a.json["nextToken"].is_string());

    let u = format!("{DASH}/users");
    let body = json!({"name": "t", "email": "t@example.com", "role": "Member"});
    let a = s.call("POST", &u, admin, Some(body.clone())).await;
    assert_eq!(a.status, 201, "{a:?}");
    let a = s.call("POST", &u, admin, Some(body)).await;
    assert_envelope(&a, 409, "resource/already_exists", &u);
    let a = s.call("GET", &format!("{u}/u-member"), admin, None).await;
    assert_eq!(
        (a.json["role"].as_str(), a.json["balance"].as_i64()),
        (Some("Member"), Some(75))
    );
    let a = s
        .call("DELETE", &format!("{u}/u-viewer"), admin, None)
        .await;
    assert_eq!(a.status, 204);
}

#[tokio::test]
async fn deleting_the_workspace_drops_everything() {
    let s = start().await;
    let a = s.call("DELETE", DASH, admin, None).await;
    assert_eq!(a.status, 204, "{a:?}");
    assert_eq!(a.headers.get("content-type").unwrap(), "application/json");
    for p in ["missions", "catalog", "users"] {
        let a = s.call("GET", &format!("{DASH}/{p}"), admin, None).await;
        assert_eq!(a.json["items"], json!([]), "{p}");
    }
    let a = s.call("GET", &format!("{APP}/points"), as_is, None).await;
    assert_eq!(a.json["balance"], 0);
}

/// What [`Flaky`] fails while the test says so, and how many documents it listed.
#[derive(Default)]
struct Faults {
    reads_of: std::sync::Mutex<Option<&'static str>>,
    inserts_into: std::sync::Mutex<Option<&'static str>>,
    writes_outside_transactions_to: std::sync::Mutex<Option<&'static str>>,
    transactions: std::sync::atomic::AtomicBool,
    listed: std::sync::atomic::AtomicUsize,
}

/// A store that fails reads of one collection, inserts into one, puts and merges into one
/// (outside transactions), or every transaction, as [`Faults`] says, and counts the documents
/// its listings return.
struct Flaky {
    inner: Arc<dyn Store>,
    faults: Arc<Faults>,
}

fn unavailable() -> StoreError {
    StoreError::Unavailable("injected".into())
}

fn busy() -> StoreError {
    StoreError::Busy("injected".into())
}

#[async_trait::async_trait]
impl Store for Flaky {
    async fn get(&self, ws: &str, collection: &str, id: &str) -> Result<Option<Value>, StoreError> {
        if *self.faults.reads_of.lock().unwrap() == Some(collection) {
            return Err(unavailable());
        }
        self.inner.get(ws, collection, id).await
    }
    async fn put(
        &self,
        ws: &str,
        collection: &str,
        id: &str,
        doc: Value,
    ) -> Result<(), StoreError> {
        if *self.faults.writes_outside_transactions_to.lock().unwrap() == Some(collection) {
            return Err(unavailable());
        }
        self.inner.put(ws, collection, id, doc).await
    }
    async fn insert(
        &self,
        ws: &str,
        collection: &str,
        id: &str,
        doc: Value,
    ) -> Result<bool, StoreError> {
        if *self.faults.inserts_into.lock().unwrap() == Some(collection) {
            return Err(unavailable());
        }
        self.inner.insert(ws, collection, id, doc).await
    }
    async fn merge(
        &self,
        ws: &str,
        collection: &str,
        id: &str,
        patch: serde_json::Map<String, Value>,
    ) -> Result<Option<Value>, StoreError> {
        if *self.faults.writes_outside_transactions_to.lock().unwrap() == Some(collection) {
            return Err(unavailable());
        }
        self.inner.merge(ws, collection, id, patch).await
    }
    async fn add_to_field(
        &self,
        ws: &str,
        collection: &str,
        id: &str,
        field: &str,
        delta: i64,
        floor: i64,
    ) -> Result<Option<i64>, StoreError> {
        self.inner
            .add_to_field(ws, collection, id, field, delta, floor)
            .await
    }
    async fn delete(&self, ws: &str, collection: &str, id: &str) -> Result<bool, StoreError> {
        self.inner.delete(ws, collection, id).await
    }
    async fn list(&self, ws: &str, collection: &str) -> Result<Vec<(String, Value)>, StoreError> {
        let all = self.inner.list(ws, collection).await?;
        self.faults.listed.fetch_add(all.len(), Ordering::Relaxed);
        Ok(all)
    }
    async fn list_page(
        &self,
        ws: &str,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<crate::store::Page, StoreError> {
        let page = self.inner.list_page(ws, collection, after, limit).await?;
        self.faults
            .listed
            .fetch_add(page.items.len(), Ordering::Relaxed);
        Ok(page)
    }
    async fn delete_workspace(&self, ws: &str) -> Result<usize, StoreError> {
        self.inner.delete_workspace(ws).await
    }
    async fn transact(&self, ws: &str, ops: Vec<WriteOp>) -> Result<bool, StoreError> {
        if self.faults.transactions.load(Ordering::Relaxed) {
            return Err(busy());
        }
        self.inner.transact(ws, ops).await
    }
}

/// A server over [`Flaky`] of the seeded store: its faults, and the seeded store itself.
async fn flaky_server() -> (crate::testing::TestServer, Arc<Faults>, Arc<dyn Store>) {
    let faults = Arc::new(Faults::default());
    let shared = Arc::clone(&faults);
    let seeded = Arc::new(std::sync::Mutex::new(None));
    let kept = Arc::clone(&seeded);
    let s = crate::testing::start_with(move |inner| {
        *kept.lock().unwrap() = Some(Arc::clone(&inner));
        Arc::new(Flaky {
            inner,
            faults: shared,
        })
    })
    .await;
    let inner = seeded.lock().unwrap().take().unwrap();
    (s, faults, inner)
}

/// An M2M award of 7 points to u-viewer with idempotency `key`.
async fn award_with_key(s: &crate::testing::TestServer, key: &str) -> Answer {
    let path = format!("{APP}/points");
    let mut a = assertion("POST", &path, "ws-demo");
    m2m(&mut a);
    let body = json!({"userId": "u-viewer", "points": 7, "reason": "retried"});
    s.raw(
        "POST",
        &path,
        Some(&sign(&a)),
        body.to_string().into_bytes(),
        &[("x-idempotency-key", key)],
    )
    .await
}

/// u-viewer's balance.
async fn viewer_balance(s: &crate::testing::TestServer) -> i64 {
    let answer = s.call("GET", &format!("{APP}/points"), viewer, None).await;
    answer.json["balance"].as_i64().unwrap()
}

/// An award is credited exactly once, whatever fails around it: when reading its consequences
/// fails after its transaction committed, it is still a 201 (balance unknown), replayed to a
/// retry; when the store turned the transaction down, nothing was written and the retry runs.
#[tokio::test]
async fn an_award_retried_after_a_failure_is_credited_once() {
    let (s, faults, _) = flaky_server().await;
    let before = viewer_balance(&s).await;

    // The ledger transaction commits; reading the new balance back fails.
    *faults.reads_of.lock().unwrap() = Some(crate::store::BALANCES);
    let first = award_with_key(&s, "after-commit").await;
    assert_eq!(first.status, 201, "{first:?}");
    assert_eq!(first.json["points"], 7, "{first:?}");
    assert!(first.json["balance"].is_null(), "{first:?}");
    *faults.reads_of.lock().unwrap() = None;
    let retry = award_with_key(&s, "after-commit").await;
    assert_eq!(retry.status, 201, "{retry:?}");
    assert_eq!(retry.headers.get("idempotent-replayed").unwrap(), "true");
    assert_eq!(retry.json, first.json, "the first answer, replayed");
    assert_eq!(viewer_balance(&s).await, before + 7, "credited once");

    // The store turns the transaction down: nothing was written, so the retry runs.
    faults.transactions.store(true, Ordering::Relaxed);
    let first = award_with_key(&s, "turned-down").await;
    assert_eq!(first.status, 503, "{first:?}");
    assert_eq!(first.code(), "server/unavailable");
    assert_eq!(viewer_balance(&s).await, before + 7);
    faults.transactions.store(false, Ordering::Relaxed);
    let retry = award_with_key(&s, "turned-down").await;
    assert_eq!(retry.status, 201, "{retry:?}");
    assert!(retry.headers.get("idempotent-replayed").is_none());
    assert_eq!(viewer_balance(&s).await, before + 14);
}

/// A completion whose badge could not be worked out (the store failed after the completion
/// committed) still answers 201, and the user's next award gives the missed badge.
#[tokio::test]
async fn a_badge_missed_after_a_completion_comes_with_the_next_award() {
    let (s, faults, _) = flaky_server().await;
    let path = format!("{APP}/missions/mission-welcome/complete");
    *faults.reads_of.lock().unwrap() = Some(crate::store::BALANCES);
    let done = s.call("POST", &path, viewer, None).await;
    *faults.reads_of.lock().unwrap() = None;
    assert_eq!(done.status, 201, "{done:?}");
    assert_eq!(done.json["badgesAwarded"], json!([]), "{done:?}");
    let award = award_with_key(&s, "next-award").await;
    assert_eq!(award.status, 201, "{award:?}");
    let badges = award.json["badgesAwarded"].as_array().unwrap();
    assert!(
        badges.iter().any(|b| b["badgeId"] == "badge-starter"),
        "{award:?}"
    );
}

/// A completion and the participation that shows it are written together: the participation
/// reads `completed` whatever fails around the completion, and neither is written when the
/// completion's transaction is turned down.
#[tokio::test]
async fn a_completion_and_its_participation_never_disagree() {
    let (s, faults, _) = flaky_server().await;
    let mission = format!("{APP}/missions/mission-first-lesson");
    let shown = |a: &Answer| a.json["participation"]["status"].clone();
    let a = s
        .call("POST", &format!("{mission}/participations"), viewer, None)
        .await;
    assert_eq!(a.status, 201, "{a:?}");

    // The store turns the transaction down: no completion, the participation as it was.
    faults.transactions.store(true, Ordering::Relaxed);
    let a = s
        .call("POST", &format!("{mission}/complete"), viewer, None)
        .await;
    assert_eq!(a.status, 503, "{a:?}");
    faults.transactions.store(false, Ordering::Relaxed);
    let a = s.call("GET", &mission, viewer, None).await;
    assert_eq!(shown(&a), "in_progress", "{a:?}");

    // Writes to participations outside a transaction fail: the completion shows all the same.
    *faults.writes_outside_transactions_to.lock().unwrap() = Some(crate::store::PARTICIPATIONS);
    let done = s
        .call("POST", &format!("{mission}/complete"), viewer, None)
        .await;
    assert_eq!(done.status, 201, "{done:?}");
    let a = s.call("GET", &mission, viewer, None).await;
    assert_eq!(shown(&a), "completed", "{a:?}");
    assert_eq!(
        a.json["participation"]["completedAt"], done.json["completedAt"],
        "{a:?}"
    );

    // A direct completion, never joined, gets a participation at full progress.
    let welcome = format!("{APP}/missions/mission-welcome");
    let done = s
        .call("POST", &format!("{welcome}/complete"), viewer, None)
        .await;
    assert_eq!(done.status, 201, "{done:?}");
    let a = s.call("GET", &welcome, viewer, None).await;
    assert_eq!(shown(&a), "completed", "{a:?}");
    assert_eq!(a.json["participation"]["progress"], 1, "{a:?}");
}

/// A write that fails with a 5xx after an earlier write of the same request committed keeps its
/// idempotency key: the retry replays the 5xx instead of counting the progress again. Without a
/// write before the failure the key is freed and the retry runs.
#[tokio::test]
async fn a_5xx_after_a_write_is_replayed_and_one_before_any_write_runs_again() {
    let (s, faults, _) = flaky_server().await;
    let path = format!("{APP}/missions/mission-streak/activities");
    let record = |key: &'static str| {
        let mut a = assertion("POST", &path, "ws-demo");
        viewer(&mut a);
        let body = json!({"count": 1}).to_string().into_bytes();
        let s = &s;
        let path = path.clone();
        async move {
            s.raw(
                "POST",
                &path,
                Some(&sign(&a)),
                body,
                &[("x-idempotency-key", key)],
            )
            .await
        }
    };
    let progress = || async {
        let path = format!("{APP}/missions/mission-streak");
        let answer = s.call("GET", &path, viewer, None).await;
        answer.json["participation"]["progress"]
            .as_i64()
            .unwrap_or(0)
    };
    // Joined (the join logs an activity of its own), one activity recorded.
    assert_eq!(record("joins").await.status, 201);
    let before = progress().await;
    assert_eq!(before, 1);

    // The progress is counted; logging the activity fails.
    *faults.inserts_into.lock().unwrap() = Some(crate::store::ACTIVITIES);
    let first = record("after-a-write").await;
    assert_eq!(first.status, 500, "{first:?}");
    *faults.inserts_into.lock().unwrap() = None;
    let retry = record("after-a-write").await;
    assert_eq!(retry.status, 500, "{retry:?}");
    assert_eq!(retry.headers.get("idempotent-replayed").unwrap(), "true");
    assert_eq!(retry.json, first.json, "the first answer, replayed");
    assert_eq!(progress().await, before + 1, "counted once");

    // Nothing written before the failure: reading the mission fails, the retry runs.
    *faults.reads_of.lock().unwrap() = Some(crate::store::MISSIONS);
    let first = record("before-any-write").await;
    assert_eq!(first.status, 500, "{first:?}");
    *faults.reads_of.lock().unwrap() = None;
    let retry = record("before-any-write").await;
    assert_eq!(retry.status, 201, "{retry:?}");
    assert!(retry.headers.get("idempotent-replayed").is_none());
    assert_eq!(progress().await, before + 2);
}

/// The ledger and the activities grow without bound: their pages, a user's recent ledger and
/// the weekly leaderboard read only the entries they need, not the whole log, and give the
/// same answers as before (newest first, pages without gaps, the period's entries only).
#[tokio::test]
async fn log_readers_stop_where_their_answer_ends() {
    let (s, faults, inner) = flaky_server().await;
    // A long history: 2,000 entries of u-old from last year, under keys of their time.
    let year_ago_ms = crate::store::now_ms() - 365 * 24 * 3600 * 1000;
    for i in 0..2000u64 {
        let key = format!(
            "{}-old{i:04}",
            crate::store::log_key_prefix(year_ago_ms + i)
        );
        let doc = json!({"id": key, "userId": "u-old", "points": 1000, "reason": "old",
                         "createdAt": "2025-01-01T00:00:00.000Z"});
        assert!(
            inner
                .insert("ws-demo", crate::store::LEDGER, &key, doc)
                .await
                .unwrap()
        );
    }
    for _ in 0..3 {
        assert_eq!(
            award_with_key(&s, &crate::store::log_key()).await.status,
            201
        );
    }
    let listed = |faults: &Faults| faults.listed.swap(0, Ordering::Relaxed);
    listed(&faults);

    // The dashboard's ledger: a page of 5, then the next, newest first, without gaps.
    let path = format!("{DASH}/points/ledger");
    let first = s.call("GET", &format!("{path}?limit=5"), admin, None).await;
    assert_eq!(first.status, 200, "{first:?}");
    let items = first.json["items"].as_array().unwrap();
    assert_eq!(items.len(), 5);
    assert!(
        items[..3].iter().all(|e| e["reason"] == "retried"),
        "{items:?}"
    );
    let read = listed(&faults);
    assert!(
        read <= crate::store::SCAN_CHUNK,
        "read {read} entries for a page of 5"
    );
    let token = first.json["nextToken"].as_str().unwrap();
    let second = s
        .call(
            "GET",
            &format!("{path}?limit=5&nextToken={token}"),
            admin,
            None,
        )
        .await;
    let next = second.json["items"].as_array().unwrap();
    assert_eq!(next.len(), 5);
    assert!(next[0]["id"].as_str() > items[4]["id"].as_str());
    listed(&faults);

    // u-viewer's own ledger: the 3 awards first, and not every old entry read to find them
    // (the seed's two u-viewer entries lie behind the old ones).
    let mine = s.call("GET", &format!("{APP}/points"), viewer, None).await;
    let ledger = mine.json["ledger"].as_array().unwrap();
    assert!(
        ledger[..3].iter().all(|e| e["reason"] == "retried"),
        "{ledger:?}"
    );
    assert!(ledger.iter().all(|e| e["userId"] == "u-viewer"));
    listed(&faults);

    // The weekly leaderboard ranks this week's awards only, reading up to the week's start.
    let weekly = s
        .call(
            "GET",
            &format!("{APP}/leaderboards/leaderboard-weekly"),
            as_is,
            None,
        )
        .await;
    assert_eq!(weekly.status, 200, "{weekly:?}");
    let entries = weekly.json["entries"].as_array().unwrap();
    assert!(
        entries.iter().all(|e| e["userId"] != "u-old"),
        "{entries:?}"
    );
    assert!(
        entries.iter().any(|e| e["userId"] == "u-viewer"),
        "{entries:?}"
    );
    let read = listed(&faults);
    assert!(read < 1000, "read {read} documents for the weekly board");
}

/// Per-user reads (`me`: completions and badges; the badge rules of an award) read the user's
/// key range, and a page of users reads the page, not every user's documents.
#[tokio::test]
async fn per_user_reads_and_pages_read_key_ranges() {
    let (s, faults, inner) = flaky_server().await;
    for i in 0..1500 {
        let user = format!("u-bulk-{i:04}");
        let doc = json!({"userId": user, "missionId": "mission-welcome", "pointsAwarded": 50});
        let key = crate::store::completion_id(&user, "mission-welcome");
        assert!(
            inner
                .insert("ws-demo", crate::store::COMPLETIONS, &key, doc)
                .await
                .unwrap()
        );
        let badge = json!({"userId": user, "badgeId": "badge-starter", "name": "Starter"});
        let key = crate::store::completion_id(&user, "badge-starter");
        assert!(
            inner
                .insert("ws-demo", crate::store::USER_BADGES, &key, badge)
                .await
                .unwrap()
        );
        let person = json!({"name": user, "role": "Member"});
        assert!(
            inner
                .insert("ws-demo", crate::store::USERS, &user, person)
                .await
                .unwrap()
        );
    }
    faults.listed.swap(0, Ordering::Relaxed);

    let me = s.call("GET", &format!("{APP}/me"), as_is, None).await;
    assert_eq!(me.status, 200, "{me:?}");
    assert!(
        me.json["completedMissions"]
            .as_array()
            .unwrap()
            .contains(&json!("mission-welcome")),
        "{me:?}"
    );
    assert_eq!(me.json["badges"][0]["badgeId"], "badge-starter", "{me:?}");
    let read = faults.listed.swap(0, Ordering::Relaxed);
    assert!(read < 100, "read {read} documents for one user's `me`");

    let award = award_with_key(&s, "badge-rules").await;
    assert_eq!(award.status, 201, "{award:?}");
    let read = faults.listed.swap(0, Ordering::Relaxed);
    assert!(read < 200, "read {read} documents for one award");

    let page = s
        .call("GET", &format!("{DASH}/users?limit=5"), admin, None)
        .await;
    assert_eq!(page.json["items"].as_array().unwrap().len(), 5, "{page:?}");
    assert!(page.json["nextToken"].is_string());
    let read = faults.listed.swap(0, Ordering::Relaxed);
    assert!(
        read <= crate::store::SCAN_CHUNK,
        "read {read} users for a page of 5"
    );
}
