//! Request-body validation: each resource lists its writable fields and their kinds; one pass
//! checks a body and reports every bad field at once in `details`. Unknown fields are refused,
//! so a typo is an error rather than silently stored data.

use serde_json::{Map, Value};

use crate::assertion::ROLES;
use crate::error::{ApiError, FieldError, clip};

/// What a field may hold.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// A string of at most this many characters (non-blank when required).
    Text(usize),
    /// An integer in `min..=max`.
    Int(i64, i64),
    /// One of these strings.
    OneOf(&'static [&'static str]),
    /// An e-mail address.
    Email,
    /// A list of at most `.0` strings of at most `.1` characters.
    TextList(usize, usize),
    /// `true` or `false`.
    Bool,
}

/// The value a field gets on create when the body leaves it out.
#[derive(Debug, Clone, Copy)]
pub enum Fallback {
    /// None: the field stays absent.
    Absent,
    /// This string.
    Str(&'static str),
    /// This integer.
    Int(i64),
    /// This boolean.
    Bool(bool),
}

/// One writable field.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    name: &'static str,
    kind: Kind,
    required: bool,
    fallback: Fallback,
}

/// A required field.
pub const fn req(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: true,
        fallback: Fallback::Absent,
    }
}

/// An optional field.
pub const fn opt(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: false,
        fallback: Fallback::Absent,
    }
}

/// An optional field with a default for create.
pub const fn or(name: &'static str, kind: Kind, fallback: Fallback) -> Field {
    Field {
        name,
        kind,
        required: false,
        fallback,
    }
}

const NAME: Kind = Kind::Text(200);
const DESCRIPTION: Kind = Kind::Text(4000);
const POINTS_MAX: i64 = 1_000_000;

/// The statuses a mission can have (only `active` missions can be completed).
pub const MISSION_STATUSES: &[&str] = &["active", "draft", "archived"];
/// The leaderboard periods: calendar weeks (Monday, UTC) and months, or everything.
pub const PERIODS: &[&str] = &["weekly", "monthly", "all-time"];
/// What awards a badge (`manual`: only a manager's grant).
pub const BADGE_TRIGGERS: &[&str] = &[
    "manual",
    "mission_completed",
    "missions_completed",
    "level_reached",
    "points_reached",
];
const ID: Kind = Kind::Text(128);
/// The catalog tiers.
pub const TIERS: &[&str] = &["free", "premium"];

/// Missions.
pub const MISSION: &[Field] = &[
    req("name", NAME),
    opt("description", DESCRIPTION),
    or("points", Kind::Int(0, POINTS_MAX), Fallback::Int(0)),
    or("targetCount", Kind::Int(1, 10_000), Fallback::Int(1)),
    or(
        "status",
        Kind::OneOf(MISSION_STATUSES),
        Fallback::Str("active"),
    ),
];
/// Badges.
pub const BADGE: &[Field] = &[
    req("name", NAME),
    opt("description", DESCRIPTION),
    opt("icon", Kind::Text(500)),
    opt("criteria", DESCRIPTION),
    or(
        "trigger",
        Kind::OneOf(BADGE_TRIGGERS),
        Fallback::Str("manual"),
    ),
    opt("missionId", ID),
    opt("levelId", ID),
    opt("threshold", Kind::Int(1, i64::MAX)),
];
/// Leaderboards.
pub const LEADERBOARD: &[Field] = &[
    req("name", NAME),
    opt("description", DESCRIPTION),
    or("period", Kind::OneOf(PERIODS), Fallback::Str("all-time")),
    opt("groupId", ID),
];
/// Levels.
pub const LEVEL: &[Field] = &[
    req("name", NAME),
    opt("description", DESCRIPTION),
    req("threshold", Kind::Int(0, i64::MAX)),
];
/// Catalog items.
pub const CATALOG_ITEM: &[Field] = &[
    req("title", NAME),
    opt("description", DESCRIPTION),
    opt("body", Kind::Text(200_000)),
    or("type", Kind::Text(50), Fallback::Str("article")),
    or("tier", Kind::OneOf(TIERS), Fallback::Str("free")),
    opt("category", Kind::Text(100)),
    or("tags", Kind::TextList(20, 50), Fallback::Absent),
    or("language", Kind::Text(16), Fallback::Str("en")),
];
/// Catalog categories.
pub const CATEGORY: &[Field] = &[
    req("name", NAME),
    opt("description", DESCRIPTION),
    opt("parentId", ID),
];
/// Learning paths: catalog items in order.
pub const LEARNING_PATH: &[Field] = &[
    req("title", NAME),
    opt("description", DESCRIPTION),
    req("itemIds", Kind::TextList(200, 128)),
    or("language", Kind::Text(16), Fallback::Str("en")),
    opt("category", Kind::Text(100)),
];
/// An activity a user reports on a mission.
pub const ACTIVITY: &[Field] = &[
    or("count", Kind::Int(1, 1000), Fallback::Int(1)),
    opt("note", Kind::Text(500)),
];
/// Groups.
pub const GROUP: &[Field] = &[
    req("name", NAME),
    opt("description", DESCRIPTION),
    opt("members", Kind::TextList(10_000, 128)),
];
/// The statuses a user can have (only `active` users can be acted for by a client).
pub const USER_STATUSES: &[&str] = &["active", "disabled"];
/// Users.
pub const USER: &[Field] = &[
    req("name", NAME),
    req("email", Kind::Email),
    or("role", Kind::OneOf(&ROLES), Fallback::Str("Member")),
    opt("department", Kind::Text(100)),
    or("lang", Kind::Text(16), Fallback::Str("en")),
    or("timezone", Kind::Text(64), Fallback::Str("UTC")),
    or(
        "status",
        Kind::OneOf(USER_STATUSES),
        Fallback::Str("active"),
    ),
];
/// A user's profile change (the role has its own Owner-only route; the e-mail is the identity).
pub const USER_UPDATE: &[Field] = &[
    req("name", NAME),
    opt("department", Kind::Text(100)),
    req("lang", Kind::Text(16)),
    req("timezone", Kind::Text(64)),
    req("status", Kind::OneOf(USER_STATUSES)),
];
/// A role change.
pub const ROLE_CHANGE: &[Field] = &[req("role", Kind::OneOf(&ROLES))];
/// Points awarded by an M2M client (positive).
pub const POINTS_AWARD: &[Field] = &[
    req("userId", Kind::Text(128)),
    req("points", Kind::Int(1, POINTS_MAX)),
    req("reason", Kind::Text(500)),
];
/// A manager's points adjustment (either sign); `allowNegative` lets the balance go below 0.
pub const POINTS_ADJUSTMENT: &[Field] = &[
    req("userId", Kind::Text(128)),
    req("points", Kind::Int(-POINTS_MAX, POINTS_MAX)),
    req("reason", Kind::Text(500)),
    or("allowNegative", Kind::Bool, Fallback::Bool(false)),
];

/// The JSON Schema (OpenAPI 3.0 dialect) of a body `spec` accepts in `mode`.
pub fn schema(spec: &[Field], mode: Mode) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for f in spec {
        let kind = match f.kind {
            Kind::Text(max) => serde_json::json!({"type": "string", "maxLength": max}),
            Kind::Int(min, max) => {
                serde_json::json!({"type": "integer", "minimum": min, "maximum": max})
            }
            Kind::OneOf(values) => serde_json::json!({"type": "string", "enum": values}),
            Kind::Email => {
                serde_json::json!({"type": "string", "format": "email", "maxLength": 254})
            }
            Kind::TextList(items, max) => serde_json::json!({
                "type": "array", "maxItems": items,
                "items": {"type": "string", "maxLength": max}
            }),
            Kind::Bool => serde_json::json!({"type": "boolean"}),
        };
        properties.insert(f.name.to_owned(), kind);
        if f.required && mode == Mode::Create {
            required.push(Value::from(f.name));
        }
    }
    let mut out = serde_json::json!({
        "type": "object", "properties": properties, "additionalProperties": false,
    });
    if !required.is_empty() {
        out["required"] = Value::from(required);
    }
    out
}

/// Whether the body creates a document (required fields, defaults) or patches one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every required field must be there; defaults are filled in.
    Create,
    /// Only the fields given are checked.
    Patch,
}

const MAX_DETAILS: usize = 20;

/// Check `body` against `spec`; the accepted fields (with defaults on create), or a 400 with
/// every problem.
pub fn check(
    body: Map<String, Value>,
    spec: &[Field],
    mode: Mode,
) -> Result<Map<String, Value>, ApiError> {
    let mut errors: Vec<FieldError> = Vec::new();
    let mut push = |field: &str, message: String| {
        if errors.len() < MAX_DETAILS {
            errors.push(FieldError {
                field: clip(field, 64).to_owned(),
                message,
            });
        }
    };
    for key in body.keys() {
        if !spec.iter().any(|f| f.name == key) {
            let message = if key == "id" || key == "createdAt" || key == "updatedAt" {
                "is read-only"
            } else {
                "is not a known field"
            };
            push(key, message.to_owned());
        }
    }
    let mut out = Map::new();
    for f in spec {
        match body.get(f.name) {
            None | Some(Value::Null) if mode == Mode::Patch => {
                if body.get(f.name).is_some() {
                    push(f.name, "must not be null".to_owned());
                }
            }
            None | Some(Value::Null) => {
                if f.required {
                    push(f.name, "is required".to_owned());
                }
                match f.fallback {
                    Fallback::Absent => {}
                    Fallback::Str(s) => {
                        out.insert(f.name.to_owned(), Value::from(s));
                    }
                    Fallback::Int(n) => {
                        out.insert(f.name.to_owned(), Value::from(n));
                    }
                    Fallback::Bool(b) => {
                        out.insert(f.name.to_owned(), Value::from(b));
                    }
                }
            }
            Some(v) => match check_value(v, f) {
                Ok(v) => {
                    out.insert(f.name.to_owned(), v);
                }
                Err(message) => push(f.name, message),
            },
        }
    }
    if errors.is_empty() {
        return Ok(out);
    }
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    Err(ApiError::Invalid {
        message: format!("invalid fields: {}", fields.join(", ")),
        details: errors,
    })
}

fn check_value(v: &Value, f: &Field) -> Result<Value, String> {
    match f.kind {
        Kind::Text(max) => text(v, max, f.required).map(Value::from),
        Kind::Email => {
            let s = text(v, 254, true)?;
            let ok = s
                .split_once('@')
                .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'))
                && !s.chars().any(char::is_whitespace);
            if ok {
                Ok(Value::from(s))
            } else {
                Err("must be an e-mail address".to_owned())
            }
        }
        Kind::Int(min, max) => match v.as_i64() {
            Some(n) if (min..=max).contains(&n) => Ok(Value::from(n)),
            Some(_) => Err(format!("must be between {min} and {max}")),
            None => Err("must be an integer".to_owned()),
        },
        Kind::OneOf(allowed) => match v.as_str() {
            Some(s) if allowed.contains(&s) => Ok(Value::from(s)),
            _ => Err(format!("must be one of: {}", allowed.join(", "))),
        },
        Kind::Bool => v
            .as_bool()
            .map(Value::from)
            .ok_or_else(|| "must be true or false".to_owned()),
        Kind::TextList(max_items, max_len) => {
            let Some(items) = v.as_array() else {
                return Err("must be a list of strings".to_owned());
            };
            if items.len() > max_items {
                return Err(format!("must have at most {max_items} entries"));
            }
            items
                .iter()
                .map(|i| text(i, max_len, true).map(Value::from))
                .collect::<Result<Vec<Value>, String>>()
                .map(Value::Array)
        }
    }
}

fn text(v: &Value, max: usize, non_blank: bool) -> Result<String, String> {
    let Some(s) = v.as_str() else {
        return Err("must be a string".to_owned());
    };
    if non_blank && s.trim().is_empty() {
        return Err("must not be empty".to_owned());
    }
    if s.chars().count() > max {
        return Err(format!("must be at most {max} characters"));
    }
    if s.chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r')
    {
        return Err("must not contain control characters".to_owned());
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    fn fields(r: Result<Map<String, Value>, ApiError>) -> Vec<String> {
        match r {
            Err(ApiError::Invalid { details, .. }) => {
                details.into_iter().map(|d| d.field).collect()
            }
            other => panic!("expected 400, got {other:?}"),
        }
    }

    #[test]
    fn create_fills_defaults_and_requires_fields() {
        let m = check(
            obj(json!({"name": "t", "points": 10})),
            MISSION,
            Mode::Create,
        )
        .unwrap();
        assert_eq!(m["status"], "active");
        assert_eq!(m["targetCount"], 1);
        assert_eq!(fields(check(Map::new(), MISSION, Mode::Create)), ["name"]);
    }

    #[test]
    fn every_problem_is_reported() {
        let bad = obj(json!({"name": 5, "points": -1, "status": "x", "extra": 1, "id": "a"}));
        let mut got = fields(check(bad, MISSION, Mode::Create));
        got.sort();
        assert_eq!(got, ["extra", "id", "name", "points", "status"]);
        assert_eq!(
            fields(check(obj(json!({"points": 1.5})), MISSION, Mode::Patch)),
            ["points"]
        );
        assert_eq!(
            fields(check(obj(json!({"name": null})), MISSION, Mode::Patch)),
            ["name"]
        );
    }

    #[test]
    fn patch_checks_only_what_is_given() {
        let m = check(obj(json!({"name": "t2"})), LEVEL, Mode::Patch).unwrap();
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn emails_and_roles() {
        let ok = json!({"name": "t", "email": "t@example.com"});
        assert_eq!(
            check(obj(ok), USER, Mode::Create).unwrap()["role"],
            "Member"
        );
        let bad = json!({"name": "t", "email": "nope", "role": "God"});
        assert_eq!(
            fields(check(obj(bad), USER, Mode::Create)),
            ["email", "role"]
        );
    }
}
