//! Test-case files of `policy test`: which file is which, and the HTTP-level case format.
//!
//! Every `*.json` file directly in the tests directory is read, in name order, and told apart
//! by its top-level shape:
//! - an object with a `cases` array: HTTP-level cases ([`HttpFile`]);
//! - an array of objects that have a `request`: Cedar CLI `run-tests` cases
//!   (see [`super::runtests`]);
//! - an array of objects that have a `uid`: an entities file that `run-tests` cases name by
//!   file name; skipped;
//! - anything else: an error, so a misspelt file never passes silently.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

/// A file of HTTP-level cases.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpFile {
    /// Free text for readers.
    #[serde(default, rename = "description")]
    pub _description: Option<String>,
    /// Named claim sets the cases refer to by name.
    #[serde(default)]
    pub principals: BTreeMap<String, Map<String, Value>>,
    pub cases: Vec<HttpCase>,
}

/// One HTTP-level case.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCase {
    pub name: String,
    pub method: String,
    /// Path and optional `?query`, as sent on the wire (percent-encoded).
    pub path: String,
    /// Request headers; only `X-User-ID` (any case) takes part in a decision.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The verified token claims: an object, or the name of one of the file's `principals`.
    pub claims: ClaimsRef,
    /// Claims to change on top of `claims`; `null` removes a claim.
    #[serde(default, rename = "override")]
    pub overrides: Map<String, Value>,
    /// `allow`, `deny`, `not_found`, `invalid_path` or `invalid_request`.
    pub expect: String,
    /// When given: exactly the policies that must determine the decision (any order).
    #[serde(default)]
    pub reasons: Option<Vec<String>>,
    /// Evaluation errors expected (default 0: an error that denies is a failure, not a deny).
    #[serde(default)]
    pub errors: usize,
}

/// Claims inline or by name.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ClaimsRef {
    Named(String),
    Inline(Map<String, Value>),
}

impl HttpCase {
    /// The claims of this case, with its overrides applied.
    pub fn resolve_claims(&self, file: &HttpFile) -> Result<Map<String, Value>, String> {
        let mut claims = match &self.claims {
            ClaimsRef::Inline(m) => m.clone(),
            ClaimsRef::Named(name) => file
                .principals
                .get(name)
                .cloned()
                .ok_or_else(|| format!("no principal named `{name}` in this file"))?,
        };
        for (k, v) in &self.overrides {
            if v.is_null() {
                claims.remove(k);
            } else {
                claims.insert(k.clone(), v.clone());
            }
        }
        Ok(claims)
    }

    /// The `X-User-ID` header, if sent.
    pub fn impersonated_user(&self) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("x-user-id"))
            .map(|(_, v)| v.as_str())
    }
}

/// What a file in the tests directory holds.
pub enum CaseFile {
    Http(HttpFile),
    /// The raw cases (each parsed on its own, so one bad case fails alone).
    Cedar(Vec<Value>),
    Entities,
}

/// Tell a file's kind from its content (see the module docs).
pub fn classify(text: &str) -> Result<CaseFile, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    match value {
        Value::Object(ref m) if m.get("cases").is_some_and(Value::is_array) => {
            serde_json::from_value(value)
                .map(CaseFile::Http)
                .map_err(|e| format!("not a valid HTTP case file: {e}"))
        }
        Value::Array(items) => {
            let all_have = |key: &str| {
                items
                    .iter()
                    .all(|i| i.as_object().is_some_and(|o| o.contains_key(key)))
            };
            if all_have("request") {
                Ok(CaseFile::Cedar(items))
            } else if all_have("uid") {
                Ok(CaseFile::Entities)
            } else {
                Err("a JSON array, but neither run-tests cases (objects with `request`) nor entities (objects with `uid`)".into())
            }
        }
        _ => Err("neither an HTTP case file (an object with `cases`) nor a run-tests file (an array of cases)".into()),
    }
}

/// The `*.json` files directly in `dir`, sorted.
pub fn case_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("{}: cannot read the tests directory: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn files_are_told_apart_by_shape() {
        let http = r#"{"principals":{"m":{"sub":"u"}},"cases":[{"name":"n","method":"GET","path":"/x","claims":"m","override":{"role":"Admin","sub":null},"expect":"deny"}]}"#;
        let CaseFile::Http(f) = classify(http).unwrap() else {
            panic!("not http")
        };
        let claims = f.cases[0].resolve_claims(&f).unwrap();
        assert_eq!(Value::Object(claims), json!({"role":"Admin"}));
        assert!(matches!(
            classify(r#"[{"request":{},"decision":"allow"}]"#),
            Ok(CaseFile::Cedar(_))
        ));
        assert!(matches!(
            classify(r#"[{"uid":{"type":"A","id":"a"}}]"#),
            Ok(CaseFile::Entities)
        ));
        assert!(classify(r#"{"case":[]}"#).is_err());
        assert!(classify(r#"[{"x":1}]"#).is_err());
        assert!(classify("nope").is_err());
        // A typo in a case field is an error, not an ignored field.
        assert!(
            classify(r#"{"cases":[{"name":"n","method":"GET","path":"/x","claims":{},"expect":"deny","reason":[]}]}"#)
                .is_err()
        );
    }

    #[test]
    fn unknown_principal_names_fail_the_case() {
        let f: HttpFile = serde_json::from_value(json!({"cases":[{"name":"n","method":"GET","path":"/x","claims":"nobody","expect":"deny","headers":{"X-User-Id":"u9"}}]})).unwrap();
        assert!(f.cases[0].resolve_claims(&f).is_err());
        assert_eq!(f.cases[0].impersonated_user(), Some("u9"));
    }
}
