//! The Cedar CLI's `run-tests` case format, read and written so cases move between
//! `cedargate policy test` and `cedar run-tests --policies P --schema S --tests FILE`.
//!
//! A file is a JSON array of
//! `{"name"?, "request": {"principal","action","resource","context"}, "entities",
//!   "decision": "allow"|"deny", "reason": [policy ids], "num_errors": N}`
//! where `entities` is a Cedar entities array or the name of an entities file beside the test
//! file. Checked as the Cedar CLI checks: the decision (Cedar's own, before the gateway's
//! fail-closed rule) must match, the listed reasons must be among the actual ones, and the
//! number of evaluation errors must match (the older `has_error` flag is accepted too). The
//! request, context and entities are parsed against the bundle's schema, like `--schema`.

use std::path::Path;

use cedar_policy::{Authorizer, Context, Decision, Entities, EntityUid, Request};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::authz::PolicyBundle;
use crate::authz::mapping::CedarInput;

#[derive(Debug, Deserialize)]
struct CedarCase {
    request: CedarRequest,
    entities: Value,
    decision: String,
    #[serde(default)]
    reason: Vec<String>,
    #[serde(default)]
    num_errors: Option<usize>,
    #[serde(default)]
    has_error: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct CedarRequest {
    principal: Option<String>,
    action: Option<String>,
    resource: Option<String>,
    #[serde(default)]
    context: Value,
}

/// A checked run-tests case.
pub struct CedarOutcome {
    pub name: String,
    /// `None` when the case passed, else why it failed.
    pub failure: Option<String>,
    /// The determining policies (for coverage).
    pub reasons: Vec<String>,
}

/// The display name of a raw case (before it is parsed).
pub fn case_name(raw: &Value, index: usize) -> String {
    raw.get("name")
        .and_then(Value::as_str)
        .map_or_else(|| format!("(unnamed #{})", index + 1), str::to_string)
}

/// Parse and check one case. `test_dir` is where entities files are looked up.
pub fn run_case(bundle: &PolicyBundle, raw: &Value, index: usize, test_dir: &Path) -> CedarOutcome {
    let name = case_name(raw, index);
    match check(bundle, raw, test_dir) {
        Ok((failure, reasons)) => CedarOutcome {
            name,
            failure,
            reasons,
        },
        Err(e) => CedarOutcome {
            name,
            failure: Some(e),
            reasons: Vec::new(),
        },
    }
}

fn check(
    bundle: &PolicyBundle,
    raw: &Value,
    test_dir: &Path,
) -> Result<(Option<String>, Vec<String>), String> {
    let case: CedarCase =
        serde_json::from_value(raw.clone()).map_err(|e| format!("not a run-tests case: {e}"))?;
    let uid = |what: &str, v: &Option<String>| -> Result<EntityUid, String> {
        let v = v.as_deref().ok_or(format!("request.{what} is missing"))?;
        v.parse()
            .map_err(|e| format!("failed to parse {what} `{v}`: {e}"))
    };
    let principal = uid("principal", &case.request.principal)?;
    let action = uid("action", &case.request.action)?;
    let resource = uid("resource", &case.request.resource)?;
    let context_json = match case.request.context {
        Value::Null => json!({}),
        v => v,
    };
    let context = Context::from_json_value(context_json, Some((&bundle.schema, &action)))
        .map_err(|e| format!("failed to parse context: {e}"))?;
    let request = Request::new(principal, action, resource, context, Some(&bundle.schema))
        .map_err(|e| format!("failed to create request: {e}"))?;
    let entities_json = match &case.entities {
        Value::String(file) => read_entities_file(test_dir, file)?,
        v => v.clone(),
    };
    let entities = Entities::from_json_value(entities_json, Some(&bundle.schema))
        .map_err(|e| format!("failed to parse entities: {e}"))?;

    let response = Authorizer::new().is_authorized(&request, &bundle.policies, &entities);
    // Reasons and errors as the gateway reads them; the decision as Cedar states it, which is
    // what `cedar run-tests` compares.
    let read = crate::authz::decision_of(&response, &bundle.version);
    let (reasons, errors) = (read.reasons, read.errors);
    let actual = match response.decision() {
        Decision::Allow => "allow",
        Decision::Deny => "deny",
    };
    let expected = case.decision.as_str();
    if expected != "allow" && expected != "deny" {
        return Err(format!(
            "decision must be \"allow\" or \"deny\", got {expected:?}"
        ));
    }
    let mut problems = Vec::new();
    if actual != expected {
        problems.push(format!("expected {expected}, got {actual}"));
    } else {
        let missing: Vec<&String> = case
            .reason
            .iter()
            .filter(|r| !reasons.contains(r))
            .collect();
        if !missing.is_empty() {
            problems.push(format!(
                "missing reason(s): {}",
                missing
                    .iter()
                    .map(|r| format!("`{r}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let errors_ok = match (case.num_errors, case.has_error) {
            (Some(n), _) => n == errors.len(),
            (None, Some(has)) => has != errors.is_empty(),
            (None, None) => errors.is_empty(),
        };
        if !errors_ok {
            problems.push(format!(
                "expected {} error(s), got {}{}",
                case.num_errors
                    .map_or_else(|| "some/no".to_string(), |n| n.to_string()),
                errors.len(),
                if errors.is_empty() {
                    String::new()
                } else {
                    format!(": {}", errors.join(", "))
                }
            ));
        }
    }
    if !problems.is_empty() && !reasons.is_empty() {
        problems.push(format!("actual reasons: {}", reasons.join(", ")));
    }
    let failure = (!problems.is_empty()).then(|| problems.join("; "));
    Ok((failure, reasons))
}

/// An entities file named by a case: beside the test file, never outside its directory.
fn read_entities_file(test_dir: &Path, file: &str) -> Result<Value, String> {
    let path = test_dir.join(file);
    let canonical = path
        .canonicalize()
        .map_err(|e| format!("entities file `{}`: {e}", path.display()))?;
    let dir = test_dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", test_dir.display()))?;
    if !canonical.starts_with(&dir) {
        return Err(format!(
            "entities file `{file}` is outside of the test file directory"
        ));
    }
    let text =
        std::fs::read_to_string(&canonical).map_err(|e| format!("entities file `{file}`: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("entities file `{file}`: {e}"))
}

/// A run-tests case for a Cedar request the gateway's mapping built.
pub fn export_case(
    name: &str,
    input: &CedarInput,
    decision: &str,
    reasons: &[String],
    num_errors: usize,
) -> Result<Value, String> {
    let context = input
        .request()
        .context()
        .ok_or("the request has no context")?
        .to_json_value()
        .map_err(|e| e.to_string())?;
    let entities = entities_json(input.entities())?;
    Ok(json!({
        "name": name,
        "request": {
            "principal": input.principal.to_string(),
            "action": input.action.to_string(),
            "resource": input.resource.to_string(),
            "context": context,
        },
        "entities": entities,
        "decision": decision,
        "reason": reasons,
        "num_errors": num_errors,
    }))
}

/// Entities as Cedar JSON, in a stable order (by type, then id).
pub fn entities_json(entities: &Entities) -> Result<Value, String> {
    let mut json = entities.to_json_value().map_err(|e| e.to_string())?;
    if let Value::Array(items) = &mut json {
        let key = |v: &Value| {
            let uid = &v["uid"];
            (
                uid["type"].as_str().unwrap_or_default().to_string(),
                uid["id"].as_str().unwrap_or_default().to_string(),
            )
        };
        items.sort_by_key(key);
    }
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle() -> PolicyBundle {
        PolicyBundle::load(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../policies"
        )))
        .unwrap_or_else(|e| panic!("{e:#?}"))
    }

    fn case(decision: &str, reason: Value, errors: Value) -> Value {
        json!({
            "name": "c",
            "request": {
                "principal": "Identity::\"u1\"",
                "action": "Action::\"get /app/v1/workspaces/{workspaceId}/missions\"",
                "resource": "Workspace::\"ws-a\"",
                "context": {
                    "pathParameters": {"workspaceId": "ws-a"},
                    "queryStringParameters": {},
                    "token": {"scope": [], "context": "app", "client_id": "", "token_use": "access"}
                }
            },
            "entities": [
                {"uid": {"type": "Identity", "id": "u1"}, "attrs": {"workspace": "ws-a", "platform": "web", "role": "Viewer", "premium": false, "onboardingCompleted": false, "department": ""}, "parents": [{"type": "Role", "id": "Viewer"}]},
                {"uid": {"type": "Workspace", "id": "ws-a"}, "attrs": {"workspaceId": "ws-a"}, "parents": []}
            ],
            "decision": decision,
            "reason": reason,
            "num_errors": errors,
        })
    }

    #[test]
    fn checks_decision_reasons_and_errors_like_cedar() {
        let b = bundle();
        let dir = Path::new(".");
        let ok = run_case(
            &b,
            &case("allow", json!(["app-read-viewer"]), json!(0)),
            0,
            dir,
        );
        assert_eq!(ok.failure, None);
        assert_eq!(ok.reasons, ["app-read-viewer"]);
        // Listed reasons need only be among the actual ones.
        assert_eq!(
            run_case(&b, &case("allow", json!([]), json!(0)), 0, dir).failure,
            None
        );
        let wrong = run_case(&b, &case("deny", json!([]), json!(0)), 0, dir);
        assert!(wrong.failure.unwrap().contains("expected deny, got allow"));
        let reason = run_case(
            &b,
            &case("allow", json!(["tenant-isolation"]), json!(0)),
            0,
            dir,
        );
        assert!(reason.failure.unwrap().contains("missing reason"));
        let errors = run_case(&b, &case("allow", json!([]), json!(1)), 0, dir);
        assert!(errors.failure.unwrap().contains("error(s)"));
        let mut bad = case("allow", json!([]), json!(0));
        bad["request"]["context"]["nope"] = json!(1);
        assert!(
            run_case(&b, &bad, 0, dir)
                .failure
                .unwrap()
                .contains("context")
        );
    }

    #[test]
    fn entities_files_stay_inside_the_test_directory() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("tests");
        std::fs::create_dir(&inner).unwrap();
        std::fs::write(dir.path().join("outside.json"), "[]").unwrap();
        assert!(read_entities_file(&inner, "../outside.json").is_err());
        std::fs::write(inner.join("e.json"), "[]").unwrap();
        assert_eq!(read_entities_file(&inner, "e.json").unwrap(), json!([]));
    }
}
