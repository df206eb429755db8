//! The role matrix: every caller × every route, against the default policy pack.
//!
//! Allowed means the gateway forwarded: not 401/403, below 500, and a 404 only where the resource
//! may already be gone (destructive cases) or the answer demonstrably came from the backend.
//! Denied means 403 `auth/insufficient_permissions`. Each test collects every mismatch before
//! failing, so one run shows the whole picture.

use e2e_tests::{
    Answer, DEMO_WS, Gateway, OTHER_WS, bearer, client, human, m2m, send, with, without,
};
use serde_json::{Value, json};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Class {
    /// app reads: Viewer+, M2M `app/read`.
    AppRead,
    /// app writes: Member+, M2M `app/write`.
    AppWrite,
    /// app writes for M2M `app/write` only.
    AppM2mOnly,
    /// dashboard reads: Manager+, M2M `dashboard/read`.
    DashRead,
    /// department reports: Admin+, a Manager of that department, M2M `dashboard/read`.
    DashReport,
    /// dashboard content writes: Manager+, M2M `dashboard/write`.
    DashContent,
    /// user/group management and point adjustments: Admin+, M2M `dashboard/write`.
    DashAdmin,
    /// Owner only, never M2M.
    OwnerOnly,
}

struct Route {
    method: &'static str,
    /// `app` or `dashboard`.
    area: &'static str,
    /// After `/{area}/v1/workspaces/{workspaceId}`.
    suffix: &'static str,
    class: Class,
    body: Option<Value>,
    /// Deletes what it names: run after everything else, and a later 404 still means allowed.
    destructive: bool,
}

impl Route {
    fn path(&self, ws: &str) -> String {
        format!("/{}/v1/workspaces/{ws}{}", self.area, self.suffix)
    }
}

fn route(method: &'static str, area: &'static str, suffix: &'static str, class: Class) -> Route {
    Route {
        method,
        area,
        suffix,
        class,
        body: None,
        destructive: false,
    }
}

fn write(
    method: &'static str,
    area: &'static str,
    suffix: &'static str,
    class: Class,
    body: Value,
) -> Route {
    Route {
        method,
        area,
        suffix,
        class,
        body: Some(body),
        destructive: false,
    }
}

fn destroy(area: &'static str, suffix: &'static str, class: Class) -> Route {
    Route {
        method: "DELETE",
        area,
        suffix,
        class,
        body: None,
        destructive: true,
    }
}

/// Every route of the default route table except `DELETE` of the workspace itself.
fn routes() -> Vec<Route> {
    use Class::*;
    let mission = json!({"name": "t", "description": "d", "points": 10});
    let named = json!({"name": "t"});
    let renamed = json!({"name": "t2"});
    let catalog = json!({"title": "t", "body": "b", "type": "article", "tier": "free"});
    let user = json!({"name": "t", "email": "t@example.com", "role": "Member"});
    let points = json!({"userId": "u-member", "points": 5, "reason": "r"});
    vec![
        route("GET", "app", "/missions", AppRead),
        route("GET", "app", "/missions/mission-welcome", AppRead),
        route("GET", "app", "/badges", AppRead),
        route("GET", "app", "/levels", AppRead),
        route("GET", "app", "/points", AppRead),
        route("GET", "app", "/groups", AppRead),
        route("GET", "app", "/catalog", AppRead),
        route("GET", "app", "/catalog/item-intro", AppRead),
        route("GET", "app", "/leaderboards", AppRead),
        route("GET", "app", "/leaderboards/leaderboard-weekly", AppRead),
        route("GET", "app", "/premium-content", AppRead),
        route("GET", "app", "/premium-content/premium-playbook", AppRead),
        write(
            "POST",
            "app",
            "/missions/mission-first-lesson/complete",
            AppWrite,
            json!({}),
        ),
        write("POST", "app", "/points", AppM2mOnly, points.clone()),
        route("GET", "app", "/me", AppRead),
        route("GET", "app", "/me/activities", AppRead),
        route("GET", "app", "/categories", AppRead),
        route("GET", "app", "/learning-paths", AppRead),
        route("GET", "app", "/learning-paths/path-new-starter", AppRead),
        route(
            "GET",
            "app",
            "/leaderboards/leaderboard-weekly/around-me",
            AppRead,
        ),
        write(
            "POST",
            "app",
            "/missions/mission-streak/participations",
            AppWrite,
            json!({}),
        ),
        write(
            "POST",
            "app",
            "/missions/mission-streak/activities",
            AppWrite,
            json!({"count": 1}),
        ),
        route("GET", "dashboard", "/missions/mission-welcome", DashRead),
        route(
            "GET",
            "dashboard",
            "/missions/mission-welcome/participants",
            DashRead,
        ),
        route(
            "GET",
            "dashboard",
            "/leaderboards/leaderboard-weekly",
            DashRead,
        ),
        route("GET", "dashboard", "/levels", DashRead),
        route("GET", "dashboard", "/catalog/item-intro", DashRead),
        route("GET", "dashboard", "/categories", DashRead),
        route("GET", "dashboard", "/learning-paths", DashRead),
        route(
            "GET",
            "dashboard",
            "/learning-paths/path-new-starter",
            DashRead,
        ),
        route("GET", "dashboard", "/groups/group-engineering", DashRead),
        route("GET", "dashboard", "/activities", DashRead),
        route("GET", "dashboard", "/points/ledger", DashRead),
        write(
            "PUT",
            "dashboard",
            "/leaderboards/leaderboard-weekly",
            DashContent,
            renamed.clone(),
        ),
        write(
            "PUT",
            "dashboard",
            "/badges/badge-starter",
            DashContent,
            renamed.clone(),
        ),
        write(
            "POST",
            "dashboard",
            "/levels",
            DashContent,
            json!({"name": "t", "threshold": 5000}),
        ),
        write(
            "PUT",
            "dashboard",
            "/catalog/item-intro",
            DashContent,
            json!({"title": "t2"}),
        ),
        write(
            "POST",
            "dashboard",
            "/categories",
            DashContent,
            named.clone(),
        ),
        write(
            "PUT",
            "dashboard",
            "/categories/onboarding",
            DashContent,
            renamed.clone(),
        ),
        write(
            "POST",
            "dashboard",
            "/learning-paths",
            DashContent,
            json!({"title": "t", "itemIds": ["item-intro"]}),
        ),
        write(
            "PUT",
            "dashboard",
            "/learning-paths/path-new-starter",
            DashContent,
            json!({"title": "t2"}),
        ),
        route("GET", "dashboard", "/missions", DashRead),
        route("GET", "dashboard", "/leaderboards", DashRead),
        route("GET", "dashboard", "/badges", DashRead),
        route("GET", "dashboard", "/catalog", DashRead),
        route("GET", "dashboard", "/users", DashRead),
        route("GET", "dashboard", "/users/u-member", DashRead),
        route("GET", "dashboard", "/groups", DashRead),
        route(
            "GET",
            "dashboard",
            "/departments/engineering/reports",
            DashReport,
        ),
        write("POST", "dashboard", "/missions", DashContent, mission),
        write(
            "POST",
            "dashboard",
            "/leaderboards",
            DashContent,
            named.clone(),
        ),
        write("POST", "dashboard", "/badges", DashContent, named.clone()),
        write("POST", "dashboard", "/catalog", DashContent, catalog),
        write(
            "PUT",
            "dashboard",
            "/missions/mission-welcome",
            DashContent,
            renamed.clone(),
        ),
        write(
            "PUT",
            "dashboard",
            "/levels/level-2",
            DashContent,
            renamed.clone(),
        ),
        write("POST", "dashboard", "/users", DashAdmin, user),
        write(
            "PUT",
            "dashboard",
            "/users/u-member",
            DashAdmin,
            json!({"name": "Max"}),
        ),
        write("POST", "dashboard", "/groups", DashAdmin, named),
        write(
            "POST",
            "dashboard",
            "/points/adjustments",
            DashAdmin,
            points,
        ),
        write(
            "PUT",
            "dashboard",
            "/groups/group-engineering",
            DashAdmin,
            renamed,
        ),
        write(
            "PUT",
            "dashboard",
            "/users/u-member/role",
            OwnerOnly,
            json!({"role": "Member"}),
        ),
        destroy("dashboard", "/missions/mission-streak", DashContent),
        destroy("dashboard", "/catalog/item-masterclass", DashContent),
        destroy("dashboard", "/users/u-viewer", DashAdmin),
        destroy(
            "dashboard",
            "/leaderboards/leaderboard-monthly",
            DashContent,
        ),
        destroy("dashboard", "/badges/badge-scholar", DashContent),
        destroy("dashboard", "/levels/level-3", DashContent),
        destroy("dashboard", "/categories/leadership", DashContent),
        destroy("dashboard", "/learning-paths/path-new-starter", DashContent),
        destroy("dashboard", "/groups/group-sales", DashAdmin),
    ]
}

const ROLES: [&str; 5] = ["Viewer", "Member", "Manager", "Admin", "Owner"];
const M2M_SCOPES: [&str; 5] = [
    "app/read",
    "app/write",
    "dashboard/read",
    "dashboard/write",
    "app/read app/write dashboard/read dashboard/write",
];

#[derive(Clone)]
enum Caller {
    /// Index into [`ROLES`] (its rank).
    Human(usize),
    M2m(&'static str),
}

impl Caller {
    fn all() -> Vec<Caller> {
        (0..ROLES.len())
            .map(Caller::Human)
            .chain(M2M_SCOPES.iter().map(|s| Caller::M2m(s)))
            .collect()
    }

    fn name(&self) -> String {
        match self {
            Caller::Human(rank) => ROLES[*rank].to_owned(),
            Caller::M2m(scope) => format!("m2m[{scope}]"),
        }
    }

    /// Claims for calling `area` routes (humans carry the matching `context`).
    fn claims(&self, area: &str) -> Value {
        match self {
            Caller::Human(rank) => human(ROLES[*rank], area),
            Caller::M2m(scope) => m2m(scope),
        }
    }

    /// What the default policy pack decides (human tokens have department `engineering`,
    /// premium and onboarding, so only the role and the scope matter here).
    fn allowed(&self, class: Class) -> bool {
        use Class::*;
        const MEMBER: usize = 1;
        const MANAGER: usize = 2;
        const ADMIN: usize = 3;
        const OWNER: usize = 4;
        match self {
            Caller::Human(rank) => match class {
                AppRead => true,
                AppWrite => *rank >= MEMBER,
                AppM2mOnly => false,
                DashRead | DashReport | DashContent => *rank >= MANAGER,
                DashAdmin => *rank >= ADMIN,
                OwnerOnly => *rank == OWNER,
            },
            Caller::M2m(scope) => {
                let has = |s: &str| scope.split(' ').any(|x| x == s);
                match class {
                    AppRead => has("app/read"),
                    AppWrite | AppM2mOnly => has("app/write"),
                    DashRead | DashReport => has("dashboard/read"),
                    DashContent | DashAdmin => has("dashboard/write"),
                    OwnerOnly => false,
                }
            }
        }
    }
}

/// Why `answer` is not an "allowed" outcome, if it is not.
fn not_allowed(answer: &Answer, may_be_gone: bool) -> Option<String> {
    let s = answer.status;
    if s == 401 || s == 403 || s >= 500 {
        return Some(format!("denied or failed: {answer}"));
    }
    if s == 404 && !may_be_gone && !answer.forwarded() {
        return Some(format!(
            "404 not from the backend (no upstream Server-Timing): {answer}"
        ));
    }
    None
}

/// Why `answer` is not the gateway's policy denial, if it is not.
///
/// The backend refusing a request the gateway let through (it double-checks some rules) does
/// not count: the policy pack must deny it before it is forwarded.
fn not_denied(answer: &Answer) -> Option<String> {
    if answer.status != 403 || answer.code().as_deref() != Some("auth/insufficient_permissions") {
        Some(format!(
            "expected 403 auth/insufficient_permissions: {answer}"
        ))
    } else if answer.forwarded() {
        Some(format!(
            "denied by the backend, but the gateway forwarded it: {answer}"
        ))
    } else {
        None
    }
}

/// Sends `route` for `claims` against `ws`, returning the answer.
async fn call(
    gw: &Gateway,
    c: &reqwest::Client,
    route: &Route,
    ws: &str,
    claims: &Value,
) -> Answer {
    let token = gw.mint(claims, None);
    send(
        c,
        route.method,
        &gw.api_url(&route.path(ws)),
        &[bearer(&token)],
        route.body.as_ref(),
    )
    .await
}

fn report(what: &str, failures: &[String], total: usize) {
    assert!(
        failures.is_empty(),
        "{what}: {} of {total} cases wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn every_role_and_scope_on_every_route() {
    let gw = Gateway::start();
    let c = client();
    let callers = Caller::all();
    let mut all = routes();
    // Destructive routes last, so every other case sees the seeded data.
    all.sort_by_key(|r| r.destructive);
    let mut failures = Vec::new();
    let mut total = 0;
    for route in &all {
        for caller in &callers {
            total += 1;
            let answer = call(&gw, &c, route, DEMO_WS, &caller.claims(route.area)).await;
            let expect_allow = caller.allowed(route.class);
            let problem = if expect_allow {
                not_allowed(&answer, route.destructive)
            } else {
                not_denied(&answer)
            };
            if let Some(problem) = problem {
                let verdict = if expect_allow { "allow" } else { "deny" };
                failures.push(format!(
                    "{} {} as {} ({:?}) should {verdict}: {problem}",
                    route.method,
                    route.path(DEMO_WS),
                    caller.name(),
                    route.class
                ));
            }
        }
    }
    report("role matrix", &failures, total);
}

#[tokio::test]
async fn deleting_the_workspace_is_owner_only() {
    let gw = Gateway::start();
    let c = client();
    let path = format!("/dashboard/v1/workspaces/{DEMO_WS}");
    let mut failures = Vec::new();
    let mut denied: Vec<(String, Value)> = Vec::new();
    for role in ["Viewer", "Member", "Manager", "Admin"] {
        denied.push((role.to_owned(), human(role, "dashboard")));
    }
    for scope in M2M_SCOPES {
        denied.push((format!("m2m[{scope}]"), m2m(scope)));
    }
    denied.push(("Owner with context app".to_owned(), human("Owner", "app")));
    for (name, claims) in &denied {
        let token = gw.mint(claims, None);
        let answer = send(&c, "DELETE", &gw.api_url(&path), &[bearer(&token)], None).await;
        if let Some(problem) = not_denied(&answer) {
            failures.push(format!("DELETE {path} as {name}: {problem}"));
        }
    }
    let owner = gw.mint(&human("Owner", "dashboard"), None);
    let answer = send(&c, "DELETE", &gw.api_url(&path), &[bearer(&owner)], None).await;
    if let Some(problem) = not_allowed(&answer, false) {
        failures.push(format!("DELETE {path} as Owner should allow: {problem}"));
    }
    report("workspace deletion", &failures, denied.len() + 1);
}

#[tokio::test]
async fn cross_workspace_is_denied_on_every_route() {
    let gw = Gateway::start();
    let c = client();
    let mut all = routes();
    all.push(destroy("dashboard", "", Class::OwnerOnly));
    all.sort_by_key(|r| r.destructive);
    let full = M2M_SCOPES[4];
    let mut failures = Vec::new();
    let mut total = 0;
    for route in &all {
        // Tokens of ws-demo against ws-other paths.
        let own = [("Owner", human("Owner", route.area)), ("m2m", m2m(full))];
        for (name, claims) in &own {
            total += 1;
            let answer = call(&gw, &c, route, OTHER_WS, claims).await;
            if let Some(problem) = not_denied(&answer) {
                failures.push(format!(
                    "{} {} as {name} of {DEMO_WS}: {problem}",
                    route.method,
                    route.path(OTHER_WS)
                ));
            }
        }
        // Tokens of ws-other against ws-demo paths.
        for (name, claims) in &own {
            total += 1;
            let foreign = with(claims, "workspaceId", json!(OTHER_WS));
            let answer = call(&gw, &c, route, DEMO_WS, &foreign).await;
            if let Some(problem) = not_denied(&answer) {
                failures.push(format!(
                    "{} {} as {name} of {OTHER_WS}: {problem}",
                    route.method,
                    route.path(DEMO_WS)
                ));
            }
        }
    }
    // The workspace id is compared exactly: case differences are another workspace.
    let upper = route("GET", "app", "/missions", Class::AppRead);
    total += 1;
    let answer = call(&gw, &c, &upper, "WS-DEMO", &human("Owner", "app")).await;
    if let Some(problem) = not_denied(&answer) {
        failures.push(format!(
            "GET {} as Owner of {DEMO_WS}: {problem}",
            upper.path("WS-DEMO")
        ));
    }
    report("cross-workspace", &failures, total);
}

#[tokio::test]
async fn humans_reach_the_dashboard_only_with_dashboard_context() {
    let gw = Gateway::start();
    let c = client();
    let mut all: Vec<Route> = routes()
        .into_iter()
        .filter(|r| r.area == "dashboard")
        .collect();
    all.push(destroy("dashboard", "", Class::OwnerOnly));
    all.sort_by_key(|r| r.destructive);
    let mut failures = Vec::new();
    let mut total = 0;
    for route in &all {
        for role in ["Manager", "Admin", "Owner"] {
            let dashboard = human(role, "dashboard");
            let variants = [
                ("context app", with(&dashboard, "context", json!("app"))),
                ("no context", without(&dashboard, "context")),
            ];
            for (variant, claims) in &variants {
                total += 1;
                let answer = call(&gw, &c, route, DEMO_WS, claims).await;
                if let Some(problem) = not_denied(&answer) {
                    failures.push(format!(
                        "{} {} as {role} with {variant}: {problem}",
                        route.method,
                        route.path(DEMO_WS)
                    ));
                }
            }
        }
    }
    report("dashboard context", &failures, total);
}

/// The matrix above names every route of `policies/routes.toml` (but deleting the workspace),
/// so a route added without a matrix row fails here.
#[test]
fn the_matrix_covers_every_route() {
    let text = std::fs::read_to_string(e2e_tests::workspace_root().join("policies/routes.toml"))
        .expect("read routes.toml");
    let table: toml::Value = toml::from_str(&text).expect("parse routes.toml");
    let rows = routes();
    let mut missing = Vec::new();
    for r in table["routes"].as_array().expect("[[routes]]") {
        let method = r["method"].as_str().unwrap_or_default();
        let path = r["path"].as_str().unwrap_or_default();
        let template: Vec<&str> = path.split('/').collect();
        if method == "DELETE" && path.ends_with("/{workspaceId}") {
            continue;
        }
        let covered = rows.iter().any(|row| {
            let concrete = row.path(DEMO_WS);
            let segments: Vec<&str> = concrete.split('/').collect();
            row.method == method
                && segments.len() == template.len()
                && segments
                    .iter()
                    .zip(&template)
                    .all(|(s, t)| t.starts_with('{') || s == t)
        });
        if !covered {
            missing.push(format!("{method} {path}"));
        }
    }
    assert!(
        missing.is_empty(),
        "routes without a matrix row: {missing:#?}"
    );
}
