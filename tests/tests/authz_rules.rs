//! The conditional rules of the default policy pack: premium content, onboarding, department
//! reports, `X-User-ID` delegation, and tokens missing the claims every decision needs.

use std::sync::OnceLock;

use e2e_tests::{Answer, Gateway, bearer, client, human, m2m, send, with, without};
use serde_json::{Value, json};

static GW: OnceLock<Result<Gateway, String>> = OnceLock::new();

fn gw() -> &'static Gateway {
    Gateway::shared(&GW)
}

const APP: &str = "/app/v1/workspaces/ws-demo";
const DASH: &str = "/dashboard/v1/workspaces/ws-demo";

/// One expectation: `who` calling `method path` is allowed or denied.
struct Case {
    who: String,
    claims: Value,
    method: &'static str,
    path: String,
    headers: Vec<(String, String)>,
    body: Option<Value>,
    allow: bool,
}

fn case(who: &str, claims: Value, method: &'static str, path: String, allow: bool) -> Case {
    Case {
        who: who.to_owned(),
        claims,
        method,
        path,
        headers: Vec::new(),
        body: None,
        allow,
    }
}

fn judge(case: &Case, answer: &Answer) -> Option<String> {
    let ok = if case.allow {
        // Seeded resources only: an allowed read is a 2xx from the backend.
        !matches!(answer.status, 401 | 403)
            && answer.status < 500
            && (answer.status != 404 || answer.forwarded())
    } else {
        // Denied by the gateway's policy (or, for X-User-ID, by its delegation stage), not by
        // the backend after forwarding.
        let delegating = case.headers.iter().any(|(k, _)| k == "x-user-id");
        answer.status == 403
            && (answer.code().as_deref() == Some("auth/insufficient_permissions")
                || (delegating && answer.code().as_deref() == Some("auth/invalid_delegation")))
            && !answer.forwarded()
    };
    (!ok).then(|| {
        let verdict = if case.allow {
            "allow"
        } else {
            "deny (403 auth/insufficient_permissions, not forwarded)"
        };
        format!(
            "{} {} as {} should {verdict}: {answer}",
            case.method, case.path, case.who
        )
    })
}

async fn run(what: &str, cases: Vec<Case>) {
    let gw = gw();
    let c = client();
    let mut failures = Vec::new();
    for case in &cases {
        let token = gw.mint(&case.claims, None);
        let mut headers = vec![bearer(&token)];
        headers.extend(case.headers.iter().cloned());
        let answer = send(
            &c,
            case.method,
            &gw.api_url(&case.path),
            &headers,
            case.body.as_ref(),
        )
        .await;
        failures.extend(judge(case, &answer));
    }
    assert!(
        failures.is_empty(),
        "{what}: {} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn plain(role: &str, context: &str) -> Value {
    // A human without the optional attributes that unlock conditional rules.
    let claims = human(role, context);
    let claims = without(&claims, "premium");
    let claims = without(&claims, "onboardingCompleted");
    without(&claims, "department")
}

#[tokio::test]
async fn premium_content_needs_premium_except_managers_and_m2m() {
    let paths = [
        format!("{APP}/premium-content"),
        format!("{APP}/premium-content/premium-playbook"),
        format!("{APP}/catalog?tier=premium"),
    ];
    let mut cases = Vec::new();
    for path in &paths {
        for role in ["Viewer", "Member"] {
            let base = plain(role, "app");
            cases.push(case(
                &format!("{role} without premium"),
                base.clone(),
                "GET",
                path.clone(),
                false,
            ));
            cases.push(case(
                &format!("{role} premium=false"),
                with(&base, "premium", json!(false)),
                "GET",
                path.clone(),
                false,
            ));
            cases.push(case(
                &format!("{role} premium=true"),
                with(&base, "premium", json!(true)),
                "GET",
                path.clone(),
                true,
            ));
        }
        for role in ["Manager", "Admin", "Owner"] {
            cases.push(case(
                &format!("{role} without premium"),
                plain(role, "app"),
                "GET",
                path.clone(),
                true,
            ));
        }
        cases.push(case(
            "m2m[app/read]",
            m2m("app/read"),
            "GET",
            path.clone(),
            true,
        ));
    }
    // The ordinary catalog stays open to non-premium members.
    for path in [
        format!("{APP}/catalog"),
        format!("{APP}/catalog?tier=free"),
        format!("{APP}/catalog/item-intro"),
    ] {
        cases.push(case(
            "Member without premium",
            plain("Member", "app"),
            "GET",
            path,
            true,
        ));
    }
    run("premium", cases).await;
}

#[tokio::test]
async fn app_leaderboards_need_onboarding_for_humans() {
    let paths = [
        format!("{APP}/leaderboards"),
        format!("{APP}/leaderboards/leaderboard-weekly"),
    ];
    let mut cases = Vec::new();
    for path in &paths {
        for role in ["Viewer", "Member", "Manager", "Admin", "Owner"] {
            let base = plain(role, "app");
            cases.push(case(
                &format!("{role} without onboarding"),
                base.clone(),
                "GET",
                path.clone(),
                false,
            ));
            cases.push(case(
                &format!("{role} onboardingCompleted=false"),
                with(&base, "onboardingCompleted", json!(false)),
                "GET",
                path.clone(),
                false,
            ));
            cases.push(case(
                &format!("{role} onboardingCompleted=true"),
                with(&base, "onboardingCompleted", json!(true)),
                "GET",
                path.clone(),
                true,
            ));
        }
        cases.push(case(
            "m2m[app/read]",
            m2m("app/read"),
            "GET",
            path.clone(),
            true,
        ));
    }
    // Onboarding gates leaderboards only.
    cases.push(case(
        "Member without onboarding",
        plain("Member", "app"),
        "GET",
        format!("{APP}/missions"),
        true,
    ));
    run("onboarding", cases).await;
}

#[tokio::test]
async fn department_reports_admins_any_managers_their_own() {
    let eng = format!("{DASH}/departments/engineering/reports");
    let sales = format!("{DASH}/departments/sales/reports");
    let dept = |role: &str, d: Option<&str>| {
        let base = plain(role, "dashboard");
        match d {
            Some(d) => with(&base, "department", json!(d)),
            None => base,
        }
    };
    let cases = vec![
        case(
            "Manager of engineering",
            dept("Manager", Some("engineering")),
            "GET",
            eng.clone(),
            true,
        ),
        case(
            "Manager of engineering",
            dept("Manager", Some("engineering")),
            "GET",
            sales.clone(),
            false,
        ),
        case(
            "Manager of sales",
            dept("Manager", Some("sales")),
            "GET",
            sales.clone(),
            true,
        ),
        case(
            "Manager of sales",
            dept("Manager", Some("sales")),
            "GET",
            eng.clone(),
            false,
        ),
        case(
            "Manager without department",
            dept("Manager", None),
            "GET",
            eng.clone(),
            false,
        ),
        case(
            "Admin of sales",
            dept("Admin", Some("sales")),
            "GET",
            eng.clone(),
            true,
        ),
        case(
            "Admin without department",
            dept("Admin", None),
            "GET",
            sales.clone(),
            true,
        ),
        case(
            "Owner without department",
            dept("Owner", None),
            "GET",
            eng.clone(),
            true,
        ),
        case(
            "Member of engineering",
            dept("Member", Some("engineering")),
            "GET",
            eng.clone(),
            false,
        ),
        case(
            "Viewer of engineering",
            dept("Viewer", Some("engineering")),
            "GET",
            eng.clone(),
            false,
        ),
        case(
            "m2m[dashboard/read]",
            m2m("dashboard/read"),
            "GET",
            eng.clone(),
            true,
        ),
        case(
            "m2m[dashboard/read]",
            m2m("dashboard/read"),
            "GET",
            sales.clone(),
            true,
        ),
        case("m2m[app/read]", m2m("app/read"), "GET", eng, false),
    ];
    run("department reports", cases).await;
}

#[tokio::test]
async fn x_user_id_only_for_m2m_write_scopes_on_app_routes() {
    let xuid = ("x-user-id".to_owned(), "u-member".to_owned());
    let points = json!({"userId": "u-member", "points": 5, "reason": "r"});
    let delegated = |who: &str, claims: Value, method: &'static str, path: String, allow: bool| {
        let mut c = case(who, claims, method, path, allow);
        c.headers.push(xuid.clone());
        if method == "POST" {
            c.body = Some(points.clone());
        }
        c
    };
    let cases = vec![
        delegated(
            "m2m[app/read app/write]",
            m2m("app/read app/write"),
            "GET",
            format!("{APP}/missions"),
            true,
        ),
        delegated(
            "m2m[app/read app/write]",
            m2m("app/read app/write"),
            "GET",
            format!("{APP}/points"),
            true,
        ),
        delegated(
            "m2m[app/write]",
            m2m("app/write"),
            "POST",
            format!("{APP}/points"),
            true,
        ),
        delegated(
            "m2m[app/read dashboard/write]",
            m2m("app/read dashboard/write"),
            "GET",
            format!("{APP}/missions"),
            true,
        ),
        delegated(
            "m2m[app/read]",
            m2m("app/read"),
            "GET",
            format!("{APP}/missions"),
            false,
        ),
        delegated(
            "m2m[app/read dashboard/read]",
            m2m("app/read dashboard/read"),
            "GET",
            format!("{APP}/missions"),
            false,
        ),
        delegated(
            "Owner (human)",
            human("Owner", "app"),
            "GET",
            format!("{APP}/missions"),
            false,
        ),
        delegated(
            "Member (human) naming itself",
            human("Member", "app"),
            "GET",
            format!("{APP}/missions"),
            false,
        ),
        delegated(
            "m2m[dashboard/read dashboard/write] on /dashboard",
            m2m("dashboard/read dashboard/write"),
            "GET",
            format!("{DASH}/missions"),
            false,
        ),
        delegated(
            "Owner (human) on /dashboard",
            human("Owner", "dashboard"),
            "GET",
            format!("{DASH}/missions"),
            false,
        ),
        // Controls: the same callers without the header.
        case(
            "m2m[app/read] without X-User-ID",
            m2m("app/read"),
            "GET",
            format!("{APP}/missions"),
            true,
        ),
        case(
            "Owner (human) without X-User-ID",
            human("Owner", "app"),
            "GET",
            format!("{APP}/missions"),
            true,
        ),
        case(
            "m2m[dashboard/read dashboard/write] without X-User-ID",
            m2m("dashboard/read dashboard/write"),
            "GET",
            format!("{DASH}/missions"),
            true,
        ),
    ];
    run("X-User-ID", cases).await;
}

#[tokio::test]
async fn tokens_without_workspace_or_role_are_denied_everywhere() {
    let app_reads = [
        "/missions",
        "/missions/mission-welcome",
        "/badges",
        "/levels",
        "/points",
        "/catalog",
        "/leaderboards",
        "/premium-content",
    ];
    let dash_reads = [
        "/missions",
        "/users",
        "/users/u-member",
        "/groups",
        "/departments/engineering/reports",
    ];
    let mut cases = Vec::new();
    let full = "app/read app/write dashboard/read dashboard/write";
    for suffix in app_reads {
        let path = format!("{APP}{suffix}");
        cases.push(case(
            "Owner without workspaceId",
            without(&human("Owner", "app"), "workspaceId"),
            "GET",
            path.clone(),
            false,
        ));
        cases.push(case(
            "human without role",
            without(&human("Owner", "app"), "role"),
            "GET",
            path.clone(),
            false,
        ));
        cases.push(case(
            "m2m without workspaceId",
            without(&m2m(full), "workspaceId"),
            "GET",
            path.clone(),
            false,
        ));
    }
    for suffix in dash_reads {
        let path = format!("{DASH}{suffix}");
        cases.push(case(
            "Owner without workspaceId",
            without(&human("Owner", "dashboard"), "workspaceId"),
            "GET",
            path.clone(),
            false,
        ));
        cases.push(case(
            "human without role",
            without(&human("Owner", "dashboard"), "role"),
            "GET",
            path.clone(),
            false,
        ));
        cases.push(case(
            "m2m without workspaceId",
            without(&m2m(full), "workspaceId"),
            "GET",
            path.clone(),
            false,
        ));
    }
    let mut write = case(
        "Owner without workspaceId",
        without(&human("Owner", "dashboard"), "workspaceId"),
        "POST",
        format!("{DASH}/missions"),
        false,
    );
    write.body = Some(json!({"name": "t", "description": "d", "points": 10}));
    cases.push(write);
    run("missing claims", cases).await;
}

#[tokio::test]
async fn m2m_is_judged_by_scope_not_by_a_role_claim() {
    // An M2M token that also claims to be an Owner with dashboard context gains nothing.
    let claims = with(
        &with(&m2m("app/read"), "role", json!("Owner")),
        "context",
        json!("dashboard"),
    );
    let mut role_change = case(
        "m2m[app/read] claiming Owner",
        claims.clone(),
        "PUT",
        format!("{DASH}/users/u-member/role"),
        false,
    );
    role_change.body = Some(json!({"role": "Member"}));
    let mut content = case(
        "m2m[app/read] claiming Owner",
        claims.clone(),
        "POST",
        format!("{DASH}/missions"),
        false,
    );
    content.body = Some(json!({"name": "t", "description": "d", "points": 10}));
    let cases = vec![
        case(
            "m2m[app/read] claiming Owner",
            claims.clone(),
            "GET",
            format!("{DASH}/users"),
            false,
        ),
        role_change,
        content,
        case(
            "m2m[app/read] claiming Owner",
            claims,
            "GET",
            format!("{APP}/missions"),
            true,
        ),
    ];
    run("m2m role claim", cases).await;
}
