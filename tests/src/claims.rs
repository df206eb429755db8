//! Claim sets for `cedargate token mint`: human end users and M2M clients of the demo workspace.

use serde_json::{Map, Value, json};

/// The workspace seeded on first start.
pub const DEMO_WS: &str = "ws-demo";
/// A workspace the test tokens do not belong to.
pub const OTHER_WS: &str = "ws-other";

/// A human caller of `ws-demo` in `role` with `context` ("app" or "dashboard").
///
/// Carries every optional attribute that unlocks a conditional rule (premium, onboarding,
/// department `engineering`), so the role matrix measures the role alone; the rule tests remove
/// them with [`without`].
pub fn human(role: &str, context: &str) -> Value {
    let user = format!("u-{}", role.to_ascii_lowercase());
    json!({
        "sub": user,
        "userId": user,
        "workspaceId": DEMO_WS,
        "role": role,
        "context": context,
        "platform": "web",
        "premium": true,
        "onboardingCompleted": true,
        "department": "engineering",
    })
}

/// An M2M client of `ws-demo` holding the space-separated `scope`.
pub fn m2m(scope: &str) -> Value {
    json!({
        "sub": "svc-e2e",
        "client_id": "svc-e2e",
        "workspaceId": DEMO_WS,
        "platform": "m2m",
        "scope": scope,
    })
}

/// `claims` with `key` set to `value`.
pub fn with(claims: &Value, key: &str, value: Value) -> Value {
    let mut map: Map<String, Value> = claims.as_object().cloned().unwrap_or_default();
    map.insert(key.to_owned(), value);
    Value::Object(map)
}

/// `claims` without `key`.
pub fn without(claims: &Value, key: &str) -> Value {
    let mut map: Map<String, Value> = claims.as_object().cloned().unwrap_or_default();
    map.remove(key);
    Value::Object(map)
}
