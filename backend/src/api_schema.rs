//! What each write route of the backend accepts, as JSON Schema, for the gateway's generated
//! OpenAPI document: the same field specs the handlers validate with, so the description and
//! the validation cannot drift apart.

use serde_json::{Value, json};

use crate::handlers::validate::{self as spec, Field, Mode, schema};

/// The request body of `method template` (a route template such as
/// `/dashboard/v1/workspaces/{workspaceId}/missions/{missionId}`): its schema and whether it is
/// required; `None` for routes that take no body.
pub fn request_body(method: &str, template: &str) -> Option<(Value, bool)> {
    let mut parts = template.trim_start_matches('/').splitn(5, '/');
    let area = parts.next()?;
    let rest = parts.nth(3).unwrap_or("");
    let segments: Vec<&str> = rest
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| if s.starts_with('{') { "{}" } else { s })
        .collect();
    let create = |f: &[Field]| Some((schema(f, Mode::Create), true));
    let patch = |f: &[Field]| Some((schema(f, Mode::Patch), true));
    let empty = || Some((json!({"type": "object"}), false));
    match (method, area, segments.as_slice()) {
        ("POST", "app", ["points"]) => create(spec::POINTS_AWARD),
        ("POST", "app", ["missions", "{}", "activities"]) => {
            Some((schema(spec::ACTIVITY, Mode::Create), false))
        }
        ("POST", "app", ["missions", "{}", "participations" | "complete"]) => empty(),
        ("POST", "dashboard", ["points", "adjustments"]) => create(spec::POINTS_ADJUSTMENT),
        ("PUT", "dashboard", ["users", "{}", "role"]) => create(spec::ROLE_CHANGE),
        ("POST", "dashboard", ["users"]) => create(spec::USER),
        ("PUT", "dashboard", ["users", "{}"]) => patch(spec::USER_UPDATE),
        (m @ ("POST" | "PUT"), "dashboard", [collection, ..]) => {
            let fields = match *collection {
                "missions" => spec::MISSION,
                "leaderboards" => spec::LEADERBOARD,
                "badges" => spec::BADGE,
                "levels" => spec::LEVEL,
                "catalog" => spec::CATALOG_ITEM,
                "categories" => spec::CATEGORY,
                "learning-paths" => spec::LEARNING_PATH,
                "groups" => spec::GROUP,
                _ => return None,
            };
            if m == "POST" {
                create(fields)
            } else {
                patch(fields)
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_come_from_the_validation_specs() {
        let (mission, required) =
            request_body("POST", "/dashboard/v1/workspaces/{workspaceId}/missions").unwrap();
        assert!(required);
        assert_eq!(mission["required"], json!(["name"]));
        assert_eq!(mission["properties"]["points"]["type"], "integer");
        assert_eq!(mission["additionalProperties"], false);
        let (update, _) = request_body(
            "PUT",
            "/dashboard/v1/workspaces/{workspaceId}/missions/{missionId}",
        )
        .unwrap();
        assert!(update.get("required").is_none());
        let (role, _) = request_body(
            "PUT",
            "/dashboard/v1/workspaces/{workspaceId}/users/{userId}/role",
        )
        .unwrap();
        assert_eq!(role["required"], json!(["role"]));
        let (_, required) = request_body(
            "POST",
            "/app/v1/workspaces/{workspaceId}/missions/{missionId}/complete",
        )
        .unwrap();
        assert!(!required);
        assert!(request_body("GET", "/app/v1/workspaces/{workspaceId}/missions").is_none());
    }
}
