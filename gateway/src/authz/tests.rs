//! Unit tests of the request mapping and of the default policy pack's key rules.

use std::path::PathBuf;

use serde_json::{Value, json};

use super::*;
use crate::routes::split_path;

fn bundle() -> PolicyBundle {
    PolicyBundle::load(&PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../policies"
    )))
    .unwrap_or_else(|e| panic!("{e:#?}"))
}

fn identity(claims: Value) -> Identity {
    let mut c = claims.as_object().unwrap().clone();
    c.entry("token_use").or_insert("access".into());
    Identity::from_claims(&c).unwrap()
}

fn decide_http(
    b: &PolicyBundle,
    claims: Value,
    method: &str,
    path_and_query: &str,
    user: Option<&str>,
) -> Decision {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let segments = split_path(path).unwrap();
    let m = b
        .routes
        .find(&method.parse().unwrap(), &segments)
        .expect("route");
    let query: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    decide(
        b,
        &identity(claims),
        &RequestFacts {
            route: &m,
            query: &query,
            impersonated_user: user,
        },
    )
}

fn human(role: &str, context: &str) -> Value {
    json!({"sub":"u1","workspaceId":"ws-a","role":role,"context":context,"platform":"web"})
}

const WS: &str = "/app/v1/workspaces/ws-a";
const DASH: &str = "/dashboard/v1/workspaces/ws-a";

#[test]
fn mapping_builds_principal_resource_and_context() {
    let b = bundle();
    let segments = split_path("/app/v1/workspaces/ws-a/catalog/item-1").unwrap();
    let m = b.routes.find(&http::Method::GET, &segments).unwrap();
    let id = identity(
        json!({"sub":"u1","workspaceId":"ws-a","role":"Member","scope":"a b","premium":true}),
    );
    let query = vec![
        ("tier".to_string(), "premium".to_string()),
        ("evil".to_string(), "x".to_string()),
    ];
    let facts = RequestFacts {
        route: &m,
        query: &query,
        impersonated_user: None,
    };
    let input = mapping::build(&b, &id, &facts).unwrap();
    assert_eq!(input.principal.to_string(), r#"Identity::"u1""#);
    assert_eq!(input.resource.to_string(), r#"CatalogItem::"item-1""#);
    assert_eq!(
        input.action.to_string(),
        r#"Action::"get /app/v1/workspaces/{workspaceId}/catalog/{itemId}""#
    );
    let ctx = mapping::context_json(&b, &id, &facts);
    assert_eq!(ctx["pathParameters"]["workspaceId"], "ws-a");
    assert_eq!(ctx["pathParameters"]["itemId"], "item-1");
    // catalog/{itemId} declares no query parameters: none reach Cedar.
    assert_eq!(ctx["queryStringParameters"], json!({}));
    assert_eq!(ctx["token"]["scope"], json!(["a", "b"]));
    // The request conforms to the schema (strict mapping check).
    cedar_policy::Request::new(
        input.principal.clone(),
        input.action.clone(),
        input.resource.clone(),
        cedar_policy::Context::from_json_value(ctx, Some((&b.schema, &input.action))).unwrap(),
        Some(&b.schema),
    )
    .unwrap();
}

#[test]
fn role_hierarchy_and_context() {
    let b = bundle();
    let missions = format!("{WS}/missions");
    assert!(decide_http(&b, human("Viewer", "app"), "GET", &missions, None).allowed);
    assert!(decide_http(&b, human("Owner", "app"), "GET", &missions, None).allowed);
    let complete = format!("{WS}/missions/m1/complete");
    assert!(!decide_http(&b, human("Viewer", "app"), "POST", &complete, None).allowed);
    assert!(decide_http(&b, human("Member", "app"), "POST", &complete, None).allowed);
    let dash = format!("{DASH}/missions");
    assert!(!decide_http(&b, human("Member", "dashboard"), "GET", &dash, None).allowed);
    assert!(decide_http(&b, human("Manager", "dashboard"), "GET", &dash, None).allowed);
    assert!(!decide_http(&b, human("Manager", "app"), "GET", &dash, None).allowed);
    let role = format!("{DASH}/users/u2/role");
    assert!(!decide_http(&b, human("Admin", "dashboard"), "PUT", &role, None).allowed);
    let d = decide_http(&b, human("Owner", "dashboard"), "PUT", &role, None);
    assert!(d.allowed);
    assert_eq!(d.reasons, ["dashboard-owner-only"]);
}

#[test]
fn tenant_isolation_and_missing_claims() {
    let b = bundle();
    let other = "/app/v1/workspaces/ws-b/missions";
    let d = decide_http(&b, human("Owner", "app"), "GET", other, None);
    assert!(!d.allowed);
    assert_eq!(d.reasons, ["tenant-isolation"]);
    let no_ws = json!({"sub":"u1","role":"Owner","context":"app","platform":"web"});
    assert!(!decide_http(&b, no_ws, "GET", &format!("{WS}/missions"), None).allowed);
    let no_role = json!({"sub":"u1","workspaceId":"ws-a","context":"app","platform":"web"});
    assert!(!decide_http(&b, no_role, "GET", &format!("{WS}/missions"), None).allowed);
    let id_token =
        json!({"sub":"u1","workspaceId":"ws-a","role":"Owner","context":"app","token_use":"id"});
    assert!(!decide_http(&b, id_token, "GET", &format!("{WS}/missions"), None).allowed);
}

#[test]
fn m2m_scopes_premium_onboarding_reports_delegation() {
    let b = bundle();
    let m2m = |scope: &str| json!({"client_id":"c","sub":"c","workspaceId":"ws-a","platform":"m2m","scope":scope});
    assert!(decide_http(&b, m2m("app/read"), "GET", &format!("{WS}/missions"), None).allowed);
    assert!(!decide_http(&b, m2m("app/read"), "POST", &format!("{WS}/points"), None).allowed);
    assert!(decide_http(&b, m2m("app/write"), "POST", &format!("{WS}/points"), None).allowed);
    assert!(
        !decide_http(
            &b,
            human("Owner", "app"),
            "POST",
            &format!("{WS}/points"),
            None
        )
        .allowed
    );
    assert!(
        decide_http(
            &b,
            m2m("dashboard/write"),
            "POST",
            &format!("{DASH}/users"),
            None
        )
        .allowed
    );
    assert!(!decide_http(&b, m2m("dashboard/write"), "DELETE", DASH, None).allowed);
    assert!(
        decide_http(
            &b,
            m2m("app/read"),
            "GET",
            &format!("{WS}/premium-content"),
            None
        )
        .allowed
    );

    let premium = format!("{WS}/premium-content/p1");
    assert!(!decide_http(&b, human("Member", "app"), "GET", &premium, None).allowed);
    let mut paid = human("Member", "app");
    paid["premium"] = true.into();
    assert!(decide_http(&b, paid, "GET", &premium, None).allowed);
    assert!(decide_http(&b, human("Manager", "app"), "GET", &premium, None).allowed);
    assert!(
        !decide_http(
            &b,
            human("Member", "app"),
            "GET",
            &format!("{WS}/catalog?tier=premium"),
            None
        )
        .allowed
    );
    assert!(
        decide_http(
            &b,
            human("Member", "app"),
            "GET",
            &format!("{WS}/catalog?tier=free"),
            None
        )
        .allowed
    );

    let boards = format!("{WS}/leaderboards");
    assert!(!decide_http(&b, human("Member", "app"), "GET", &boards, None).allowed);
    let mut onboarded = human("Member", "app");
    onboarded["onboardingCompleted"] = true.into();
    assert!(decide_http(&b, onboarded, "GET", &boards, None).allowed);

    let reports = format!("{DASH}/departments/sales/reports");
    let mut manager = human("Manager", "dashboard");
    manager["department"] = "sales".into();
    assert!(decide_http(&b, manager.clone(), "GET", &reports, None).allowed);
    manager["department"] = "engineering".into();
    assert!(!decide_http(&b, manager, "GET", &reports, None).allowed);
    assert!(decide_http(&b, human("Admin", "dashboard"), "GET", &reports, None).allowed);

    let complete = format!("{WS}/missions/m1/complete");
    assert!(decide_http(&b, m2m("app/write"), "POST", &complete, Some("u9")).allowed);
    assert!(
        !decide_http(
            &b,
            m2m("app/read"),
            "GET",
            &format!("{WS}/missions"),
            Some("u9")
        )
        .allowed
    );
    assert!(
        !decide_http(
            &b,
            human("Owner", "app"),
            "GET",
            &format!("{WS}/missions"),
            Some("u9")
        )
        .allowed
    );
    assert!(
        !decide_http(
            &b,
            m2m("dashboard/write dashboard/read"),
            "GET",
            &format!("{DASH}/users"),
            Some("u9")
        )
        .allowed
    );
}

#[test]
fn the_compiled_index_decides_exactly_like_cedar_on_the_whole_set() {
    // The default pack plus tenant-pinned and action-specific policies.
    let dir = tempfile::tempdir().unwrap();
    let src = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../policies"));
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    let mut extra = String::new();
    for (i, ws) in ["ws-a", "ws-b"].iter().enumerate() {
        extra.push_str(&format!(
            "@id(\"pin-{i}\")\nforbid (principal, action == Action::\"get /app/v1/workspaces/{{workspaceId}}/badges\", resource in Workspace::\"{ws}\") when {{ principal.department == \"blocked\" }};\n"
        ));
        extra.push_str(&format!(
            "@id(\"boom-{i}\")\nforbid (principal, action, resource in Workspace::\"{ws}\") when {{ principal.department == \"guests\" && 9223372036854775807 + 1 > 0 }};\n"
        ));
        extra.push_str(&format!(
            "@id(\"pin-permit-{i}\")\npermit (principal, action in Action::\"AppRead\", resource in Workspace::\"{ws}\") when {{ principal.department == \"guests\" }};\n"
        ));
    }
    std::fs::write(dir.path().join("extra.cedar"), extra).unwrap();
    let b = PolicyBundle::load(dir.path()).unwrap_or_else(|e| panic!("{e:#?}"));
    let templates: Vec<String> = b.routes.routes.iter().map(|r| r.template.clone()).collect();
    let mut checked = 0;
    let mut errors_seen = 0;
    for (ri, template) in templates.iter().enumerate() {
        for ws in ["ws-a", "ws-b", "ws-c"] {
            let path = template
                .replace("{workspaceId}", ws)
                .replace("{departmentId}", "sales")
                .replace(['{', '}'], "");
            let segments = split_path(&path).unwrap();
            let m = b
                .routes
                .find(&b.routes.routes[ri].method, &segments)
                .unwrap();
            for role in ["Owner", "Manager", "Viewer", ""] {
                for dept in ["blocked", "guests", "sales"] {
                    for claims in [
                        json!({"sub":"u","workspaceId":"ws-a","role":role,"context":"dashboard","platform":"web","department":dept}),
                        json!({"sub":"c","workspaceId":ws,"platform":"m2m","scope":"app/read dashboard/write","department":dept}),
                    ] {
                        let id = identity(claims);
                        for user in [None, Some("u2")] {
                            let facts = RequestFacts {
                                route: &m,
                                query: &[],
                                impersonated_user: user,
                            };
                            let sliced = decide(&b, &id, &facts);
                            let whole = decide_with(&b, &b.policies, &id, &facts);
                            assert_eq!(sliced, whole, "{path} {id:?}");
                            // The compiled conditions decided, not the fallback to Cedar's
                            // authorizer.
                            let input = mapping::build(&b, &id, &facts).unwrap();
                            let (request, entities) = input.core();
                            let slice = b.index.slice(ri, ws).unwrap();
                            // An evaluation error (the overflowing `boom` policies for the
                            // guests department) goes to Cedar's authorizer for its words.
                            let erring = dept == "guests" && ws != "ws-c";
                            assert_eq!(
                                slice.decide(request.clone(), entities).is_none(),
                                erring,
                                "{path} {id:?}"
                            );
                            if erring {
                                assert!(!sliced.allowed && !sliced.errors.is_empty());
                                errors_seen += 1;
                            }
                            checked += 1;
                        }
                    }
                }
            }
        }
    }
    assert!(checked > 1000);
    assert!(errors_seen > 100);
}

/// `EntityText` writes what `{:?}` writes, for plain ids (its fast path) and ids that need
/// escaping alike.
#[test]
fn entity_text_quotes_as_debug_does() {
    for id in [
        "m-1",
        "a b",
        "o'brien",
        "q\"uote",
        "back\\slash",
        "tab\there",
        "é✓",
        "",
    ] {
        let text = crate::authz::mapping::EntityText {
            kind: "Mission",
            id,
        }
        .to_string();
        assert_eq!(text, format!("Mission::{id:?}"), "{id:?}");
    }
}
