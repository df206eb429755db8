//! The backend through the running gateway with real tokens, on the embedded store and on
//! DynamoDB (moto, started by scripts/test.sh): a full gamification story, concurrent awards,
//! idempotent retries (also 20 racing), pagination without gaps or duplicates, and tenant
//! isolation by id.
//!
//! Every test works in a workspace of its own (a fresh id per run), so they share one gateway
//! per store and never see each other's data.

use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use e2e_tests::gateway::{dynamodb_backend_config_text, process_dir, write_config};
use e2e_tests::{Answer, Gateway, bearer, client, human, m2m, raw_request, send, with};
use serde_json::{Value, json};

/// Backend refusals as a method, for chained calls.
trait Refused {
    fn refused_as(&self, status: u16, code: &str);
}

impl Refused for Answer {
    fn refused_as(&self, status: u16, code: &str) {
        refused(self, status, code);
    }
}

static EMBEDDED: OnceLock<Result<Gateway, String>> = OnceLock::new();
static DYNAMO: OnceLock<Result<Gateway, String>> = OnceLock::new();
fn embedded() -> &'static Gateway {
    Gateway::shared(&EMBEDDED)
}

/// The gateway with `[backend] store = "dynamodb"` on a fresh table, or `None` (skipped) when
/// no DynamoDB-compatible server is configured outside CI.
fn dynamo() -> Option<&'static Gateway> {
    let table = format!("cedargate-e2e-backend-{}-{}", std::process::id(), unique());
    let text = dynamodb_backend_config_text(&table)?;
    let gw = DYNAMO.get_or_init(|| {
        let dir = process_dir("ddb").map_err(|e| e.to_string())?;
        let path = write_config(&dir, "backend-dynamodb.toml", &text);
        Gateway::try_start_with(&path, &[])
    });
    match gw {
        Ok(gw) => Some(gw),
        Err(e) => panic!("{e}"),
    }
}

fn unique() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{nanos:x}{}", N.fetch_add(1, Ordering::Relaxed))
}

/// A workspace and the callers of it.
struct Tenant<'g> {
    gw: &'g Gateway,
    ws: String,
}

impl<'g> Tenant<'g> {
    fn new(gw: &'g Gateway, name: &str) -> Tenant<'g> {
        Tenant {
            gw,
            ws: format!("ws-{name}-{}", unique()),
        }
    }

    /// A human of this workspace: `role` in `context`, user id `user`.
    fn human(&self, user: &str, role: &str, context: &str) -> String {
        let claims = with(
            &with(
                &with(&human(role, context), "workspaceId", json!(self.ws)),
                "sub",
                json!(user),
            ),
            "userId",
            json!(user),
        );
        self.gw.mint(&claims, None)
    }

    fn manager(&self) -> String {
        self.human("u-boss", "Manager", "dashboard")
    }

    fn admin(&self) -> String {
        self.human("u-admin", "Admin", "dashboard")
    }

    fn member(&self, user: &str) -> String {
        self.human(user, "Member", "app")
    }

    fn machine(&self) -> String {
        self.gw.mint(
            &with(
                &m2m("app/read app/write dashboard/read dashboard/write"),
                "workspaceId",
                json!(self.ws),
            ),
            None,
        )
    }

    fn url(&self, area: &str, rest: &str) -> String {
        self.gw
            .api_url(&format!("/{area}/v1/workspaces/{}{rest}", self.ws))
    }

    async fn call(
        &self,
        token: &str,
        method: &str,
        area: &str,
        rest: &str,
        body: Option<Value>,
    ) -> Answer {
        send(
            &client(),
            method,
            &self.url(area, rest),
            &[bearer(token)],
            body.as_ref(),
        )
        .await
    }

    /// The call's JSON answer, asserting `status`.
    async fn ok(
        &self,
        token: &str,
        method: &str,
        area: &str,
        rest: &str,
        body: Option<Value>,
        status: u16,
    ) -> Value {
        let a = self.call(token, method, area, rest, body).await;
        a.assert_status(status);
        a.json().unwrap_or(Value::Null)
    }

    async fn create(&self, token: &str, rest: &str, body: Value) -> String {
        let doc = self
            .ok(token, "POST", "dashboard", rest, Some(body), 201)
            .await;
        let id = doc["id"].as_str().expect("a created id").to_owned();
        assert_eq!(id.len(), 21, "nanoid ids: {doc}");
        id
    }

    async fn balance(&self, user: &str) -> i64 {
        let me = self
            .ok(&self.member(user), "GET", "app", "/me", None, 200)
            .await;
        me["balance"].as_i64().expect("a balance")
    }
}

/// A backend's refusal: `status` with the error envelope's `code`.
fn refused(a: &Answer, status: u16, code: &str) {
    a.assert_status(status);
    assert_eq!(a.code().as_deref(), Some(code), "{a}");
    let body = a.json().unwrap_or_default();
    assert_eq!(body["status"], status, "{a}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{a}"
    );
}

fn ids(list: &Value, key: &str) -> Vec<String> {
    list.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x[key].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn story(gw: &Gateway) {
    let t = Tenant::new(gw, "story");
    let boss = t.manager();
    let (a, b, c) = (t.member("u-a"), t.member("u-b"), t.member("u-c"));

    // Levels, missions, badges and boards, by a manager.
    t.create(&boss, "/levels", json!({"name": "Bronze", "threshold": 0}))
        .await;
    let silver = t
        .create(
            &boss,
            "/levels",
            json!({"name": "Silver", "threshold": 100}),
        )
        .await;
    t.create(&boss, "/levels", json!({"name": "Gold", "threshold": 1000}))
        .await;
    let course = t
        .create(
            &boss,
            "/missions",
            json!({"name": "Three lessons", "points": 60, "targetCount": 3}),
        )
        .await;
    let quiz = t
        .create(&boss, "/missions", json!({"name": "Quiz", "points": 50}))
        .await;
    let finisher = t
        .create(
            &boss,
            "/badges",
            json!({"name": "Finisher", "trigger": "mission_completed", "missionId": course}),
        )
        .await;
    let rising = t
        .create(
            &boss,
            "/badges",
            json!({"name": "Rising", "trigger": "level_reached", "levelId": silver}),
        )
        .await;
    // A rule without what its trigger needs is refused.
    t.call(
        &boss,
        "POST",
        "dashboard",
        "/badges",
        Some(json!({"name": "Broken", "trigger": "level_reached"})),
    )
    .await
    .refused_as(400, "validation/invalid_input");
    let board = t
        .create(
            &boss,
            "/leaderboards",
            json!({"name": "All time", "period": "all-time"}),
        )
        .await;
    let weekly = t
        .create(
            &boss,
            "/leaderboards",
            json!({"name": "Week", "period": "weekly"}),
        )
        .await;

    // A joins the course and records activities; completing early is refused.
    let joined = t
        .ok(
            &a,
            "POST",
            "app",
            &format!("/missions/{course}/participations"),
            None,
            201,
        )
        .await;
    assert_eq!(joined["progress"], 0, "{joined}");
    t.call(
        &a,
        "POST",
        "app",
        &format!("/missions/{course}/participations"),
        None,
    )
    .await
    .refused_as(409, "resource/already_exists");
    let step = t
        .ok(
            &a,
            "POST",
            "app",
            &format!("/missions/{course}/activities"),
            Some(json!({"count": 2})),
            201,
        )
        .await;
    assert_eq!(
        (step["progress"].as_i64(), step["completed"].as_bool()),
        (Some(2), Some(false)),
        "{step}"
    );
    t.call(
        &a,
        "POST",
        "app",
        &format!("/missions/{course}/complete"),
        None,
    )
    .await
    .refused_as(422, "business/mission_incomplete");
    let done = t
        .ok(
            &a,
            "POST",
            "app",
            &format!("/missions/{course}/activities"),
            Some(json!({"note": "lesson 3"})),
            201,
        )
        .await;
    assert_eq!(done["completed"], true, "{done}");
    let completion = &done["completion"];
    assert_eq!(completion["pointsAwarded"], 60, "{done}");
    assert_eq!(completion["balance"], 60, "{done}");
    assert_eq!(
        ids(&completion["badgesAwarded"], "badgeId"),
        std::slice::from_ref(&finisher),
        "{done}"
    );
    assert!(
        ids(&completion["levelsReached"], "name")
            .iter()
            .all(|n| n != "Silver"),
        "{done}"
    );

    // The quiz takes A past Silver: level-up and the level badge.
    let quiz_done = t
        .ok(
            &a,
            "POST",
            "app",
            &format!("/missions/{quiz}/complete"),
            None,
            201,
        )
        .await;
    assert_eq!(quiz_done["balance"], 110, "{quiz_done}");
    assert_eq!(quiz_done["level"]["name"], "Silver", "{quiz_done}");
    assert_eq!(
        ids(&quiz_done["levelsReached"], "name"),
        ["Silver"],
        "{quiz_done}"
    );
    assert_eq!(
        ids(&quiz_done["badgesAwarded"], "badgeId"),
        std::slice::from_ref(&rising),
        "{quiz_done}"
    );
    t.call(
        &a,
        "POST",
        "app",
        &format!("/missions/{quiz}/complete"),
        None,
    )
    .await
    .refused_as(409, "resource/conflict");

    // B and C finish the quiz; a machine client awards C five more points.
    for user in [&b, &c] {
        t.ok(
            user,
            "POST",
            "app",
            &format!("/missions/{quiz}/complete"),
            None,
            201,
        )
        .await;
    }
    let bonus = t
        .ok(
            &t.machine(),
            "POST",
            "app",
            "/points",
            Some(json!({"userId": "u-c", "points": 5, "reason": "bonus"})),
            201,
        )
        .await;
    assert_eq!(bonus["balance"], 55, "{bonus}");

    // Ranks: A 110, C 55, B 50, on the all-time and this week's board.
    for id in [&board, &weekly] {
        let lb = t
            .ok(&b, "GET", "app", &format!("/leaderboards/{id}"), None, 200)
            .await;
        let ranks: Vec<(String, i64, i64)> = lb["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["userId"].as_str().unwrap().to_owned(),
                    e["rank"].as_i64().unwrap(),
                    e["points"].as_i64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            ranks,
            [
                ("u-a".to_owned(), 1, 110),
                ("u-c".to_owned(), 2, 55),
                ("u-b".to_owned(), 3, 50)
            ],
            "{lb}"
        );
        assert_eq!(lb["me"]["rank"], 3, "{lb}");
    }
    let top = t
        .ok(
            &b,
            "GET",
            "app",
            &format!("/leaderboards/{board}?limit=1"),
            None,
            200,
        )
        .await;
    assert_eq!(ids(&top["entries"], "userId"), ["u-a"], "{top}");
    assert!(top["nextToken"].is_string(), "{top}");
    let around = t
        .ok(
            &c,
            "GET",
            "app",
            &format!("/leaderboards/{board}/around-me?radius=1"),
            None,
            200,
        )
        .await;
    assert_eq!(
        ids(&around["entries"], "userId"),
        ["u-a", "u-c", "u-b"],
        "{around}"
    );
    assert_eq!(around["me"]["rank"], 2, "{around}");

    // A's profile and activity log.
    let me = t.ok(&a, "GET", "app", "/me", None, 200).await;
    assert_eq!(me["balance"], 110, "{me}");
    assert_eq!(me["level"]["name"], "Silver", "{me}");
    assert_eq!(me["nextLevel"]["pointsNeeded"], 890, "{me}");
    let mut badges = ids(&me["badges"], "badgeId");
    badges.sort();
    let mut expected = vec![finisher, rising];
    expected.sort();
    assert_eq!(badges, expected, "{me}");
    let log = t.ok(&a, "GET", "app", "/me/activities", None, 200).await;
    let kinds = ids(&log["items"], "type");
    for kind in [
        "mission_joined",
        "activity_recorded",
        "mission_completed",
        "level_reached",
        "badge_awarded",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
    }
    assert!(
        log["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["userId"] == "u-a"),
        "{log}"
    );
    // The award to C names the client that made it.
    let awards = t
        .ok(
            &boss,
            "GET",
            "dashboard",
            "/activities?userId=u-c&type=points_awarded",
            None,
            200,
        )
        .await;
    let items = awards["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{awards}");
    assert_eq!(items[0]["actedBy"], "svc-e2e", "{awards}");
    let participants = t
        .ok(
            &boss,
            "GET",
            "dashboard",
            &format!("/missions/{course}/participants"),
            None,
            200,
        )
        .await;
    assert_eq!(
        participants["items"][0]["status"], "completed",
        "{participants}"
    );
}

#[tokio::test]
async fn a_gamification_story_on_the_embedded_store() {
    story(embedded()).await;
}

#[tokio::test]
async fn a_gamification_story_on_dynamodb() {
    if let Some(gw) = dynamo() {
        story(gw).await;
    }
}

/// 40 concurrent awards to one user: every point arrives, every award has its ledger entry.
async fn concurrent_awards(gw: &Gateway) {
    let t = Tenant::new(gw, "race");
    let machine = t.machine();
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let url = t.url("app", "/points");
            let token = machine.clone();
            tokio::spawn(async move {
                let body = json!({"userId": "u-racer", "points": 7, "reason": format!("r{i}")});
                send(&client(), "POST", &url, &[bearer(&token)], Some(&body)).await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().assert_status(201);
    }
    assert_eq!(t.balance("u-racer").await, 280);
    let boss = t.admin();
    let mut seen = 0;
    let mut token: Option<String> = None;
    loop {
        let q = token.map_or_else(String::new, |t| format!("&nextToken={t}"));
        let page = t
            .ok(
                &boss,
                "GET",
                "dashboard",
                &format!("/points/ledger?userId=u-racer&limit=15{q}"),
                None,
                200,
            )
            .await;
        seen += page["items"].as_array().unwrap().len();
        match page["nextToken"].as_str() {
            Some(next) => token = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, 40, "one ledger entry per award");

    // Debits racing a small balance never take it below zero.
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let url = t.url("dashboard", "/points/adjustments");
            let token = boss.clone();
            tokio::spawn(async move {
                let body = json!({"userId": "u-racer", "points": -50, "reason": "spend"});
                send(&client(), "POST", &url, &[bearer(&token)], Some(&body)).await
            })
        })
        .collect();
    let mut granted = 0;
    for task in tasks {
        let a = task.await.unwrap();
        match a.status {
            201 => granted += 1,
            _ => refused(&a, 422, "business/insufficient_points"),
        }
    }
    assert_eq!(granted, 5, "280 points pay for five debits of 50");
    assert_eq!(t.balance("u-racer").await, 30);
}

#[tokio::test]
async fn concurrent_awards_lose_nothing_on_the_embedded_store() {
    concurrent_awards(embedded()).await;
}

#[tokio::test]
async fn concurrent_awards_lose_nothing_on_dynamodb() {
    if let Some(gw) = dynamo() {
        concurrent_awards(gw).await;
    }
}

async fn award_with_key(t: &Tenant<'_>, key: &str, points: i64) -> Answer {
    send(
        &client(),
        "POST",
        &t.url("app", "/points"),
        &[
            bearer(&t.machine()),
            ("x-idempotency-key".to_owned(), key.to_owned()),
        ],
        Some(&json!({"userId": "u-idem", "points": points, "reason": "once"})),
    )
    .await
}

async fn idempotent_retries(gw: &Gateway) {
    let t = Tenant::new(gw, "idem");
    let first = award_with_key(&t, "order-1", 10).await;
    first.assert_status(201);
    assert_eq!(
        first.header("x-idempotency-key"),
        Some("order-1"),
        "{first}"
    );
    let retry = award_with_key(&t, "order-1", 10).await;
    retry.assert_status(201);
    assert_eq!(retry.json(), first.json(), "the stored answer is replayed");
    assert_eq!(
        retry.header("x-idempotency-key"),
        Some("order-1"),
        "{retry}"
    );
    assert_eq!(retry.header("idempotent-replayed"), Some("true"), "{retry}");
    assert_eq!(t.balance("u-idem").await, 10, "awarded once");

    award_with_key(&t, "order-1", 11)
        .await
        .refused_as(422, "business/idempotency_key_reused");

    // 20 racing retries of one new request: one execution, one answer.
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let url = t.url("app", "/points");
            let token = t.machine();
            tokio::spawn(async move {
                send(
                    &client(),
                    "POST",
                    &url,
                    &[
                        bearer(&token),
                        ("x-idempotency-key".to_owned(), "order-2".to_owned()),
                    ],
                    Some(&json!({"userId": "u-idem", "points": 5, "reason": "once"})),
                )
                .await
            })
        })
        .collect();
    let mut bodies = BTreeSet::new();
    for task in tasks {
        let a = task.await.unwrap();
        a.assert_status(201);
        bodies.insert(a.text());
    }
    assert_eq!(
        bodies.len(),
        1,
        "every racer sees the one answer: {bodies:?}"
    );
    assert_eq!(t.balance("u-idem").await, 15, "awarded once");

    // A failed request's answer is kept too; a malformed key is refused.
    let bad = send(
        &client(),
        "POST",
        &t.url("app", "/points"),
        &[
            bearer(&t.machine()),
            ("x-idempotency-key".to_owned(), "has space".to_owned()),
        ],
        Some(&json!({"userId": "u-idem", "points": 5, "reason": "once"})),
    )
    .await;
    refused(&bad, 400, "validation/invalid_input");
}

#[tokio::test]
async fn idempotent_retries_run_once_on_the_embedded_store() {
    idempotent_retries(embedded()).await;
}

#[tokio::test]
async fn idempotent_retries_run_once_on_dynamodb() {
    if let Some(gw) = dynamo() {
        idempotent_retries(gw).await;
    }
}

#[tokio::test]
async fn pages_cover_a_collection_without_gaps_or_duplicates() {
    let t = Tenant::new(embedded(), "pages");
    let boss = t.manager();
    let mut created = BTreeSet::new();
    for i in 0..23 {
        created.insert(
            t.create(
                &boss,
                "/missions",
                json!({"name": format!("m{i}"), "points": i}),
            )
            .await,
        );
    }
    let member = t.member("u-reader");
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let q = token.map_or_else(String::new, |t| format!("&nextToken={t}"));
        let page = t
            .ok(
                &member,
                "GET",
                "app",
                &format!("/missions?limit=5{q}"),
                None,
                200,
            )
            .await;
        pages += 1;
        seen.extend(ids(&page["items"], "id"));
        match page["nextToken"].as_str() {
            Some(next) => token = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 5);
    assert_eq!(seen.len(), 23, "no duplicates: {seen:?}");
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), created);
    let tail = t
        .ok(
            &member,
            "GET",
            "app",
            "/missions?limit=5&offset=20",
            None,
            200,
        )
        .await;
    assert_eq!(ids(&tail["items"], "id"), seen[20..], "{tail}");
    t.call(&member, "GET", "app", "/missions?nextToken=garbage", None)
        .await
        .refused_as(400, "validation/invalid_input");
}

#[tokio::test]
async fn another_tenant_cannot_read_by_id() {
    let gw = embedded();
    let owner = Tenant::new(gw, "owner");
    let intruder = Tenant::new(gw, "intruder");
    let mission = owner
        .create(&owner.manager(), "/missions", json!({"name": "secret"}))
        .await;
    let spy = intruder.member("u-spy");
    // Its own workspace in the path: the id does not exist there.
    intruder
        .call(&spy, "GET", "app", &format!("/missions/{mission}"), None)
        .await
        .refused_as(404, "resource/not_found");
    intruder
        .call(
            &spy,
            "POST",
            "app",
            &format!("/missions/{mission}/complete"),
            None,
        )
        .await
        .refused_as(404, "resource/not_found");
    // The other workspace in the path: refused by the tenancy policy.
    send(
        &client(),
        "GET",
        &owner.url("app", &format!("/missions/{mission}")),
        &[bearer(&spy)],
        None,
    )
    .await
    .assert_error(403, "auth/insufficient_permissions");
    // A forged path that climbs into the other workspace never reaches it.
    let forged = format!(
        "/app/v1/workspaces/{}/missions/..%2F..%2F{}%2Fmissions%2F{mission}",
        intruder.ws, owner.ws
    );
    let answer = raw_request(gw.api, "GET", &forged, &[bearer(&spy)]).await;
    assert!(
        [400, 404].contains(&answer.status),
        "forged path answered {answer}"
    );
    assert!(!answer.text().contains("secret"), "{answer}");
}
