//! The offline policy tools, run as the real binary: `cedargate policy validate`, `format`,
//! `authorize`, `test` (both case forms, coverage, `--export-cedar`) and `replay`, on the
//! shipped pack and on broken or changed copies of it.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use e2e_tests::{run_cli, workspace_root};
use serde_json::{Value, json};

/// Exit code of a command that ran and answered "no".
const NO: i32 = 3;

fn run(args: &[&str]) -> Output {
    run_cli(args, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn printed(out: &Output) -> String {
    format!("--- stdout\n{}--- stderr\n{}", stdout(out), stderr(out))
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn shipped() -> PathBuf {
    workspace_root().join("policies")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let target = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &target);
        } else {
            std::fs::copy(&p, &target).unwrap();
        }
    }
}

/// A private copy of the shipped pack (with its tests), at `<tmp>/policies`.
fn pack_copy() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("policies");
    copy_dir(&shipped(), &dir);
    (tmp, dir)
}

fn append(path: &Path, text: &str) {
    let mut content = std::fs::read_to_string(path).unwrap();
    content.push_str(text);
    std::fs::write(path, content).unwrap();
}

/// The 1-based number of the first line of `path` containing `needle`.
fn line_of(path: &Path, needle: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle} not in {}", path.display()))
        + 1
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", printed(out)))
}

const MEMBER: &str =
    r#"{"sub":"u-member","workspaceId":"ws-a","role":"Member","context":"app","platform":"web"}"#;

// --- validate ---------------------------------------------------------------------------

#[test]
fn validate_accepts_the_shipped_pack() {
    let out = run(&["policy", "validate", s(&shipped())]);
    assert_eq!(code(&out), 0, "{}", printed(&out));
    assert!(stdout(&out).contains(": ok ("), "{}", printed(&out));

    let out = run(&["policy", "validate", s(&shipped()), "--format", "json"]);
    assert_eq!(code(&out), 0, "{}", printed(&out));
    let v = json_of(&out);
    assert_eq!(v["ok"], true);
    assert_eq!(v["errors"], json!([]));
    assert!(v["policies"].as_u64() >= Some(20), "{v}");
    assert!(v["routes"].as_u64() >= Some(37), "{v}");
    assert_eq!(v["version"].as_str().map(str::len), Some(16));
}

#[test]
fn validate_locates_a_syntax_error() {
    let (_tmp, dir) = pack_copy();
    let file = dir.join("roles.cedar");
    append(
        &file,
        "\n@id(\"broken\")\npermit (principal, action, resource\nwhen { true };\n",
    );
    let line = line_of(&file, "when { true };");
    let out = run(&["policy", "validate", s(&dir)]);
    assert_eq!(code(&out), NO, "{}", printed(&out));
    let want = format!("{}:{line}:1: unexpected token", file.display());
    assert!(
        stderr(&out).contains(&want),
        "want {want}\n{}",
        printed(&out)
    );
}

#[test]
fn validate_locates_a_schema_violation() {
    let (_tmp, dir) = pack_copy();
    let file = dir.join("zz-extra.cedar");
    std::fs::write(
        &file,
        "// an attribute the schema does not declare\n@id(\"uses-nope\")\npermit (principal, action, resource)\nwhen { principal.nope == \"x\" };\n",
    )
    .unwrap();
    let out = run(&["policy", "validate", s(&dir)]);
    assert_eq!(code(&out), NO, "{}", printed(&out));
    let want = format!("{}:4:8: ", file.display());
    let line = stderr(&out)
        .lines()
        .find(|l| l.starts_with(&want))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no line starting {want}\n{}", printed(&out)));
    assert!(line.contains("`nope`"), "{line}");

    let out = run(&["policy", "validate", s(&dir), "--format", "json"]);
    assert_eq!(code(&out), NO, "{}", printed(&out));
    let v = json_of(&out);
    assert_eq!(v["ok"], false);
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{v:#}");
    assert_eq!(errors[0]["file"], s(&file));
    assert_eq!(
        (errors[0]["line"].clone(), errors[0]["col"].clone()),
        (json!(4), json!(8))
    );
}

#[test]
fn validate_locates_a_route_without_an_action() {
    let (_tmp, dir) = pack_copy();
    let routes = dir.join("routes.toml");
    append(
        &routes,
        "\n[[routes]]\nmethod = \"GET\"\npath = \"/app/v1/workspaces/{workspaceId}/secrets\"\nresource = \"Workspace\"\n",
    );
    let line = line_of(&routes, "/secrets");
    let out = run(&["policy", "validate", s(&dir)]);
    assert_eq!(code(&out), NO, "{}", printed(&out));
    let want = format!(
        "{}:{line}:1: route GET /app/v1/workspaces/{{workspaceId}}/secrets has no action",
        routes.display()
    );
    assert!(
        stderr(&out).contains(&want),
        "want {want}\n{}",
        printed(&out)
    );
}

#[test]
fn validate_locates_a_schema_action_without_a_route() {
    let (_tmp, dir) = pack_copy();
    let schema = dir.join("schema.cedarschema");
    append(
        &schema,
        "action \"get /app/v1/workspaces/{workspaceId}/secrets\" in [\"AppRead\"]\n  appliesTo { principal: Identity, resource: Workspace, context: RequestContext };\n",
    );
    let line = line_of(&schema, "/secrets");
    let out = run(&["policy", "validate", s(&dir)]);
    assert_eq!(code(&out), NO, "{}", printed(&out));
    let want = format!("{}:{line}:1: action `get ", schema.display());
    assert!(
        stderr(&out).contains(&want),
        "want {want}\n{}",
        printed(&out)
    );
}

// --- format -----------------------------------------------------------------------------

#[test]
fn format_check_passes_on_the_shipped_pack() {
    let out = run(&["policy", "format", "--check", s(&shipped())]);
    assert_eq!(code(&out), 0, "{}", printed(&out));
}

#[test]
fn format_check_fails_on_a_badly_formatted_copy_and_format_fixes_it() {
    let (_tmp, dir) = pack_copy();
    let file = dir.join("m2m.cedar");
    let ugly = "@id(\"m2m-app-read\")\npermit(principal,action in Action::\"AppRead\",resource) when {principal.platform==\"m2m\"&&context.token.scope.contains(\"app/read\")};\n";
    let original = std::fs::read_to_string(&file).unwrap();
    let start = original.find("@id(\"m2m-app-read\")").unwrap();
    let end = start + original[start..].find("};").unwrap() + 3;
    let messy = format!("{}{ugly}{}", &original[..start], &original[end..]);
    std::fs::write(&file, &messy).unwrap();

    let out = run(&["policy", "format", "--check", s(&dir)]);
    assert_eq!(code(&out), NO, "{}", printed(&out));
    assert!(stdout(&out).contains("m2m.cedar"), "{}", printed(&out));
    assert!(!stdout(&out).contains("roles.cedar"), "{}", printed(&out));
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        messy,
        "--check wrote"
    );

    let out = run(&["policy", "format", s(&dir)]);
    assert_eq!(code(&out), 0, "{}", printed(&out));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), original);
    let out = run(&["policy", "format", "--check", s(&dir)]);
    assert_eq!(code(&out), 0, "{}", printed(&out));
}

// --- authorize --------------------------------------------------------------------------

#[test]
fn authorize_explains_an_allow() {
    let out = run(&[
        "policy",
        "authorize",
        "--policies",
        s(&shipped()),
        "--request",
        "GET /app/v1/workspaces/ws-a/missions?limit=5&evil=1",
        "--claims",
        MEMBER,
        "--format",
        "json",
    ]);
    assert_eq!(code(&out), 0, "{}", printed(&out));
    let v = json_of(&out);
    assert_eq!(v["decision"], "allow");
    assert_eq!(v["reasons"], json!(["app-read-viewer"]));
    assert_eq!(v["errors"], json!([]));
    assert_eq!(v["principal"], r#"Identity::"u-member""#);
    assert_eq!(
        v["action"],
        r#"Action::"get /app/v1/workspaces/{workspaceId}/missions""#
    );
    assert_eq!(v["resource"], r#"Workspace::"ws-a""#);
    // Only declared query parameters reach Cedar; token_use defaults to access.
    assert_eq!(v["context"]["queryStringParameters"], json!({"limit": "5"}));
    assert_eq!(v["context"]["token"]["token_use"], "access");
    let identity = v["entities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["uid"]["type"] == "Identity")
        .expect("the principal entity");
    assert_eq!(identity["attrs"]["role"], "Member");
    assert_eq!(
        identity["parents"].as_array().unwrap().len(),
        2,
        "{identity}"
    );

    // The human-readable form says the same.
    let out = run(&[
        "policy",
        "authorize",
        "--policies",
        s(&shipped()),
        "--request",
        "GET /app/v1/workspaces/ws-a/missions",
        "--claims",
        MEMBER,
    ]);
    assert_eq!(code(&out), 0, "{}", printed(&out));
    let text = stdout(&out);
    assert!(text.contains("decision:  allow"), "{text}");
    assert!(text.contains("app-read-viewer"), "{text}");
    assert!(
        text.contains(r#"principal: Identity::"u-member""#),
        "{text}"
    );
}

#[test]
fn authorize_explains_a_deny() {
    let pack = shipped();
    let deny = |request: &str, headers: &[&str]| {
        let mut args = vec![
            "policy",
            "authorize",
            "--policies",
            s(&pack),
            "--request",
            request,
            "--claims",
            MEMBER,
            "--format",
            "json",
        ];
        for h in headers {
            args.extend(["--header", h]);
        }
        let out = run(&args);
        assert_eq!(code(&out), NO, "{}", printed(&out));
        json_of(&out)
    };
    let v = deny("GET /app/v1/workspaces/ws-b/missions", &[]);
    assert_eq!(v["decision"], "deny");
    assert_eq!(v["status"], 403);
    assert_eq!(v["reasons"], json!(["tenant-isolation"]));
    assert!(
        v["reasonFiles"]["tenant-isolation"]
            .as_str()
            .unwrap()
            .ends_with("tenancy.cedar")
    );

    let v = deny("GET /app/v1/workspaces/ws-a/missions", &["X-User-ID: u-42"]);
    assert_eq!(v["reasons"], json!(["delegation-m2m-write-scope-only"]));
    assert_eq!(v["context"]["impersonatedUserId"], "u-42");

    let v = deny("POST /app/v1/workspaces/ws-a/nothing", &[]);
    assert_eq!(v["decision"], "not_found");
    assert_eq!(v["status"], 404);

    let v = deny("GET /app/v1/workspaces/ws-a/../ws-b/missions", &[]);
    assert_eq!(v["decision"], "invalid_path");
    assert_eq!(v["status"], 400);
}

#[test]
fn authorize_takes_a_raw_cedar_request() {
    let tmp = tempfile::tempdir().unwrap();
    let entities = tmp.path().join("entities.json");
    std::fs::write(
        &entities,
        json!([
            {"uid": {"type": "Identity", "id": "u1"}, "attrs": {"workspace": "ws-a", "platform": "web", "role": "Owner", "premium": false, "onboardingCompleted": true, "department": ""}, "parents": [{"type": "Role", "id": "Owner"}, {"type": "Role", "id": "Admin"}, {"type": "Role", "id": "Manager"}, {"type": "Role", "id": "Member"}, {"type": "Role", "id": "Viewer"}]},
            {"uid": {"type": "Workspace", "id": "ws-a"}, "attrs": {"workspaceId": "ws-a"}, "parents": []},
            {"uid": {"type": "User", "id": "u2"}, "attrs": {"workspaceId": "ws-a"}, "parents": [{"type": "Workspace", "id": "ws-a"}]}
        ])
        .to_string(),
    )
    .unwrap();
    let context = json!({
        "pathParameters": {"workspaceId": "ws-a", "userId": "u2"},
        "queryStringParameters": {},
        "token": {"scope": [], "context": "dashboard", "client_id": "", "token_use": "access"}
    })
    .to_string();
    let out = run(&[
        "policy",
        "authorize",
        "--policies",
        s(&shipped()),
        "--principal",
        r#"Identity::"u1""#,
        "--action",
        r#"Action::"put /dashboard/v1/workspaces/{workspaceId}/users/{userId}/role""#,
        "--resource",
        r#"User::"u2""#,
        "--context",
        &context,
        "--entities",
        s(&entities),
        "--format",
        "json",
    ]);
    assert_eq!(code(&out), 0, "{}", printed(&out));
    assert_eq!(json_of(&out)["reasons"], json!(["dashboard-owner-only"]));
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let pack = shipped();
    for args in [
        vec![
            "policy",
            "authorize",
            "--request",
            "GET /x",
            "--claims",
            "not json",
        ],
        vec![
            "policy",
            "authorize",
            "--request",
            "GET /x",
            "--claims",
            "{\"role\":\"x\"}",
        ],
        vec!["policy", "authorize", "--request", "/x", "--claims", "{}"],
        vec![
            "policy",
            "authorize",
            "--principal",
            "nope",
            "--action",
            "x",
            "--resource",
            "y",
        ],
        vec!["policy", "test", "/nonexistent"],
        vec!["policy", "replay", "--log", "/nonexistent.jsonl"],
        vec!["policy", "format", "/nonexistent"],
    ] {
        let mut full = args.clone();
        if full[1] == "authorize" || full[1] == "replay" {
            full.extend(["--policies", s(&pack)]);
        }
        let out = run(&full);
        assert_eq!(code(&out), 1, "{full:?}\n{}", printed(&out));
        assert!(
            stderr(&out).starts_with("cedargate: "),
            "{full:?}\n{}",
            printed(&out)
        );
        assert!(
            !stderr(&out).contains("panicked"),
            "{full:?}\n{}",
            printed(&out)
        );
    }
}

// --- test -------------------------------------------------------------------------------

#[test]
fn the_shipped_suite_passes_and_covers_every_policy() {
    let out = run(&["policy", "test", s(&shipped()), "--fail-on-uncovered"]);
    assert_eq!(code(&out), 0, "{}", printed(&out));
    let text = stdout(&out);
    assert!(
        text.contains("coverage: every policy (") && text.contains(") determined at least one"),
        "{text}"
    );
    let last = text.lines().last().unwrap_or_default();
    assert!(last.ends_with(" passed, 0 failed"), "{last}");
    // Both case forms ran: the HTTP-level files and the run-tests file.
    assert!(
        text.contains("ok    roles.json: owner changes a role"),
        "{text}"
    );
    assert!(text.contains("ok    cedar-requests.json: "), "{text}");
}

#[test]
fn a_wrong_expectation_fails_the_suite() {
    let (_tmp, dir) = pack_copy();
    let file = dir.join("tests").join("roles.json");
    let text = std::fs::read_to_string(&file).unwrap();
    let case = r#""name": "admin cannot change a role", "method": "PUT", "path": "/dashboard/v1/workspaces/ws-a/users/u-1/role", "claims": "admin", "expect": "deny""#;
    assert!(text.contains(case), "roles.json changed shape");
    std::fs::write(
        &file,
        text.replace(case, &case.replace("\"deny\"", "\"allow\"")),
    )
    .unwrap();

    let out = run(&["policy", "test", s(&dir)]);
    assert_eq!(code(&out), NO, "{}", printed(&out));
    let text = stdout(&out);
    let failures: Vec<&str> = text.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(failures.len(), 1, "{text}");
    assert!(
        failures[0].contains("admin cannot change a role: expected allow, got deny"),
        "{text}"
    );
    assert!(
        text.lines().last().unwrap().ends_with(" passed, 1 failed"),
        "{text}"
    );

    let out = run(&["policy", "test", s(&dir), "--format", "json"]);
    assert_eq!(code(&out), NO, "{}", printed(&out));
    assert_eq!(json_of(&out)["failed"], 1);
}

#[test]
fn a_policy_change_shows_in_coverage_and_expected_reasons() {
    let (_tmp, dir) = pack_copy();
    // Drop the owner-only rule: its cases fail and it can no longer determine anything.
    let roles = dir.join("roles.cedar");
    let text = std::fs::read_to_string(&roles).unwrap();
    let start = text.find("@id(\"dashboard-owner-only\")").unwrap();
    let end = start + text[start..].find("};").unwrap() + 2;
    std::fs::write(&roles, format!("{}{}", &text[..start], &text[end..])).unwrap();
    std::fs::write(
        dir.join("unused.cedar"),
        "@id(\"never-applies\")\nforbid (principal, action, resource)\nwhen { context.token.client_id == \"nobody-has-this\" };\n",
    )
    .unwrap();
    let out = run(&["policy", "test", s(&dir)]);
    assert_eq!(code(&out), NO, "{}", printed(&out));
    let text = stdout(&out);
    assert!(
        text.contains("FAIL  roles.json: owner changes a role"),
        "{text}"
    );
    assert!(
        text.contains(" policies never determined a decision: never-applies\n"),
        "{text}"
    );
}

#[test]
fn uncovered_policies_fail_only_when_asked() {
    let (_tmp, dir) = pack_copy();
    std::fs::write(
        dir.join("unused.cedar"),
        "@id(\"never-applies\")\nforbid (principal, action, resource)\nwhen { context.token.client_id == \"nobody-has-this\" };\n",
    )
    .unwrap();
    let out = run(&["policy", "test", s(&dir)]);
    assert_eq!(code(&out), 0, "{}", printed(&out));
    assert!(stdout(&out).contains("never-applies"), "{}", printed(&out));
    let out = run(&["policy", "test", s(&dir), "--fail-on-uncovered"]);
    assert_eq!(code(&out), NO, "{}", printed(&out));
}

/// A case file exactly as the Cedar CLI's `run-tests` reads it (`cedar run-tests --policies
/// all.cedar --schema schema.cedarschema --tests FILE`), entities inline and from a file.
#[test]
fn a_run_tests_file_runs_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = r#"[
  {
    "name": "owner deletes the workspace",
    "request": {
      "principal": "Identity::\"u-owner\"",
      "action": "Action::\"delete /dashboard/v1/workspaces/{workspaceId}\"",
      "resource": "Workspace::\"ws-a\"",
      "context": {
        "pathParameters": {"workspaceId": "ws-a"},
        "queryStringParameters": {},
        "token": {"scope": [], "context": "dashboard", "client_id": "", "token_use": "access"}
      }
    },
    "entities": [
      {"uid": {"type": "Identity", "id": "u-owner"}, "attrs": {"workspace": "ws-a", "platform": "web", "role": "Owner", "premium": false, "onboardingCompleted": false, "department": ""}, "parents": [{"type": "Role", "id": "Owner"}]},
      {"uid": {"type": "Workspace", "id": "ws-a"}, "attrs": {"workspaceId": "ws-a"}, "parents": []}
    ],
    "decision": "allow",
    "reason": ["dashboard-owner-only"],
    "num_errors": 0
  },
  {
    "request": {
      "principal": "Identity::\"u-owner\"",
      "action": "Action::\"delete /dashboard/v1/workspaces/{workspaceId}\"",
      "resource": "Workspace::\"ws-b\"",
      "context": {
        "pathParameters": {"workspaceId": "ws-b"},
        "queryStringParameters": {},
        "token": {"scope": [], "context": "dashboard", "client_id": "", "token_use": "access"}
      }
    },
    "entities": "owner-entities.json",
    "decision": "deny",
    "reason": ["tenant-isolation"],
    "num_errors": 0
  }
]"#;
    let entities = r#"[
  {"uid": {"type": "Identity", "id": "u-owner"}, "attrs": {"workspace": "ws-a", "platform": "web", "role": "Owner", "premium": false, "onboardingCompleted": false, "department": ""}, "parents": [{"type": "Role", "id": "Owner"}]},
  {"uid": {"type": "Workspace", "id": "ws-b"}, "attrs": {"workspaceId": "ws-b"}, "parents": []}
]"#;
    std::fs::write(tmp.path().join("cedar.json"), cases).unwrap();
    std::fs::write(tmp.path().join("owner-entities.json"), entities).unwrap();
    let out = run(&["policy", "test", s(&shipped()), "--tests", s(tmp.path())]);
    assert_eq!(code(&out), 0, "{}", printed(&out));
    let text = stdout(&out);
    assert!(
        text.contains("ok    cedar.json: owner deletes the workspace"),
        "{text}"
    );
    assert!(text.contains("ok    cedar.json: (unnamed #2)"), "{text}");
    assert!(
        text.lines().last().unwrap() == "2 passed, 0 failed",
        "{text}"
    );

    // The same file with a wrong decision fails like Cedar's run-tests would.
    std::fs::write(
        tmp.path().join("cedar.json"),
        cases.replace("\"decision\": \"deny\"", "\"decision\": \"allow\""),
    )
    .unwrap();
    let out = run(&["policy", "test", s(&shipped()), "--tests", s(tmp.path())]);
    assert_eq!(code(&out), NO, "{}", printed(&out));
    assert!(
        stdout(&out).contains("FAIL  cedar.json: (unnamed #2): expected allow, got deny"),
        "{}",
        printed(&out)
    );
}

#[test]
fn exported_cases_run_as_run_tests_files() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("exported");
    let out = run(&[
        "policy",
        "test",
        s(&shipped()),
        "--export-cedar",
        s(&out_dir),
    ]);
    assert_eq!(code(&out), 0, "{}", printed(&out));
    for name in [
        "policies.cedar",
        "schema.cedarschema",
        "roles.json",
        "tenancy.json",
    ] {
        assert!(
            out_dir.join(name).is_file(),
            "{name} not exported\n{}",
            printed(&out)
        );
    }
    let roles: Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("roles.json")).unwrap())
            .unwrap();
    let case = roles
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "owner changes a role")
        .expect("exported case");
    assert_eq!(case["decision"], "allow");
    assert_eq!(case["reason"], json!(["dashboard-owner-only"]));
    assert_eq!(case["request"]["resource"], r#"User::"u-1""#);
    assert_eq!(
        case["request"]["context"]["pathParameters"]["userId"],
        "u-1"
    );

    // The exported files are run-tests files: they run (with Cedar, not the mapping) as-is.
    let out = run(&["policy", "test", s(&shipped()), "--tests", s(&out_dir)]);
    assert_eq!(code(&out), 0, "{}", printed(&out));
    assert!(stdout(&out).contains("ok    roles.json: owner changes a role"));
}

// --- replay -----------------------------------------------------------------------------

fn audit_line(
    id: &str,
    method: &str,
    path: &str,
    query: &str,
    claims: Value,
    decision: &str,
    reasons: &[&str],
) -> String {
    json!({
        "type": "decision",
        "requestId": id,
        "timestamp": "2026-11-23T22:00:00.000Z",
        "method": method,
        "path": path,
        "query": query,
        "principal": "Identity::\"x\"",
        "decision": decision,
        "reasons": reasons,
        "errors": [],
        "policyVersion": "0000000000000000",
        "claims": claims,
    })
    .to_string()
}

#[test]
fn replay_reports_exactly_the_changed_decisions() {
    let member = json!({"sub":"u-member","workspaceId":"ws-a","role":"Member","context":"app","platform":"web","token_use":"access","scope":"","premium":false,"onboardingCompleted":true,"exp":1});
    let partner = json!({"client_id":"partner","workspaceId":"ws-a","platform":"m2m","token_use":"access","scope":"app/write","premium":false,"onboardingCompleted":false,"exp":1});
    let mut delegated: Value = serde_json::from_str(&audit_line(
        "r-delegated",
        "POST",
        "/app/v1/workspaces/ws-a/points",
        "",
        partner,
        "allow",
        &["m2m-app-write"],
    ))
    .unwrap();
    delegated["impersonatedUserId"] = "u-9".into();
    let log = [
        audit_line("r-badges", "GET", "/app/v1/workspaces/ws-a/badges", "", member.clone(), "allow", &["app-read-viewer"]),
        audit_line("r-premium", "GET", "/app/v1/workspaces/ws-a/catalog", "tier=premium", member.clone(), "deny", &["premium-listing-requires-premium"]),
        audit_line("r-missions", "GET", "/app/v1/workspaces/ws-a/missions", "limit=5", member.clone(), "allow", &["app-read-viewer"]),
        audit_line("r-other-ws", "GET", "/app/v1/workspaces/ws-b/badges", "", member.clone(), "deny", &["tenant-isolation"]),
        delegated.to_string(),
        "this is not JSON".to_string(),
        json!({"type":"decision","requestId":"r-no-claims","method":"GET","path":"/app/v1/workspaces/ws-a/badges","query":"","decision":"allow","reasons":[]}).to_string(),
    ]
    .join("\n");
    let tmp = tempfile::tempdir().unwrap();
    let log_path = tmp.path().join("audit.jsonl");
    std::fs::write(&log_path, format!("{log}\n")).unwrap();

    // Against the policies that made the decisions: nothing changes.
    let out = run(&[
        "policy",
        "replay",
        "--log",
        s(&log_path),
        "--policies",
        s(&shipped()),
    ]);
    assert_eq!(code(&out), 0, "{}", printed(&out));
    assert!(
        stdout(&out).contains("0 decision(s) would change"),
        "{}",
        printed(&out)
    );

    // A candidate set: badges forbidden, premium listings open to everyone.
    let (_tmp2, dir) = pack_copy();
    std::fs::write(
        dir.join("zz-no-badges.cedar"),
        "@id(\"no-badges\")\nforbid (principal, action == Action::\"get /app/v1/workspaces/{workspaceId}/badges\", resource);\n",
    )
    .unwrap();
    let attributes = dir.join("attributes.cedar");
    let text = std::fs::read_to_string(&attributes).unwrap();
    let start = text
        .find("@id(\"premium-listing-requires-premium\")")
        .unwrap();
    let end = start + text[start..].find("};").unwrap() + 2;
    std::fs::write(&attributes, format!("{}{}", &text[..start], &text[end..])).unwrap();

    let out = run(&[
        "policy",
        "replay",
        "--log",
        s(&log_path),
        "--policies",
        s(&dir),
        "--format",
        "json",
    ]);
    assert_eq!(code(&out), NO, "{}", printed(&out));
    let v = json_of(&out);
    let changed: Vec<(String, String, String)> = v["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["requestId"].as_str().unwrap().to_string(),
                c["old"].as_str().unwrap().to_string(),
                c["new"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        changed,
        [
            (
                "r-badges".to_string(),
                "allow".to_string(),
                "deny".to_string()
            ),
            (
                "r-premium".to_string(),
                "deny".to_string(),
                "allow".to_string()
            ),
        ],
        "{v:#}"
    );
    assert_eq!(v["changed"][0]["newReasons"], json!(["no-badges"]));
    assert_eq!(
        v["changed"][1]["path"],
        "/app/v1/workspaces/ws-a/catalog?tier=premium"
    );
    // r-other-ws is still denied, now for two reasons: not a change, but counted.
    assert_eq!(v["summary"]["replayed"], 5);
    assert_eq!(v["summary"]["sameDecisionOtherReasons"], 1);
    assert_eq!(v["summary"]["skipped"]["unparsable"], 1);
    assert_eq!(v["summary"]["skipped"]["withoutClaims"], 1);

    let out = run(&[
        "policy",
        "replay",
        "--log",
        s(&log_path),
        "--policies",
        s(&dir),
    ]);
    assert_eq!(code(&out), NO, "{}", printed(&out));
    let text = stdout(&out);
    assert!(
        text.contains("r-badges GET /app/v1/workspaces/ws-a/badges: allow -> deny"),
        "{text}"
    );
    assert!(text.contains("2 decision(s) would change"), "{text}");
}
