//! `policy validate`: the same loading and checks as a reload (`PolicyBundle::load`), with
//! every error as `file:line:col: message`. The bundle locates Cedar's own diagnostics; the
//! route-table and schema-consistency errors name only a file, so they are located here by
//! looking the named route, action or policy up in that file.

use std::path::Path;

use serde_json::json;

use super::{OutputFormat, print_json};
use crate::authz::PolicyBundle;
use crate::authz::bundle::{ROUTES_FILE, SCHEMA_FILE};

/// One validation error, located when possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub file: String,
    pub line: Option<usize>,
    pub col: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for Located {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.line, self.col) {
            (Some(l), Some(c)) => write!(f, "{}:{l}:{c}: {}", self.file, self.message),
            _ => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

pub fn run(dir: &Path, format: OutputFormat) -> anyhow::Result<bool> {
    match PolicyBundle::load(dir) {
        Ok(bundle) => {
            let policies = bundle.policies.policies().count();
            let routes = bundle.routes.routes.len();
            match format {
                OutputFormat::Json => print_json(&json!({
                    "ok": true,
                    "errors": [],
                    "policies": policies,
                    "routes": routes,
                    "version": bundle.version,
                })),
                OutputFormat::Text => out!(
                    "{}: ok ({policies} policies, {routes} routes, policy version {})",
                    dir.display(),
                    bundle.version
                ),
            }
            Ok(true)
        }
        Err(errors) => {
            let located = locate_all(dir, &errors);
            match format {
                OutputFormat::Json => print_json(&json!({
                    "ok": false,
                    "errors": located.iter().map(|e| json!({
                        "file": e.file,
                        "line": e.line,
                        "col": e.col,
                        "message": e.message,
                    })).collect::<Vec<_>>(),
                    "policies": null,
                    "routes": null,
                    "version": null,
                })),
                OutputFormat::Text => {
                    for e in &located {
                        eprintln!("{e}");
                    }
                    eprintln!(
                        "{}: {} error{}",
                        dir.display(),
                        located.len(),
                        if located.len() == 1 { "" } else { "s" }
                    );
                }
            }
            Ok(false)
        }
    }
}

/// Turn the bundle's error lines into located errors.
pub fn locate_all(dir: &Path, errors: &[String]) -> Vec<Located> {
    errors.iter().map(|e| locate(dir, e)).collect()
}

/// Split `file:line:col: message` (or `file: message`) and, for the second form, look the
/// named thing up in the file.
pub fn locate(dir: &Path, error: &str) -> Located {
    let one_line = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    if let Some(located) = split_located(error) {
        return Located {
            message: one_line(&located.message),
            ..located
        };
    }
    let (file, message) = error.split_once(": ").unwrap_or(("", error));
    // The consistency checks name the schema and route files without their directory.
    let file = if file == ROUTES_FILE || file == SCHEMA_FILE {
        dir.join(file).display().to_string()
    } else {
        file.to_string()
    };
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    let (position, message) = if file.ends_with(ROUTES_FILE) {
        locate_in_routes(&text, message)
    } else if file.ends_with(SCHEMA_FILE) {
        (locate_action(&text, message), message.to_string())
    } else {
        (locate_in_policies(&text, message), message.to_string())
    };
    Located {
        file,
        line: position.map(|p| p.0),
        col: position.map(|p| p.1),
        message: one_line(&message),
    }
}

/// `file:line:col: message`, with the file itself free to contain `:`.
fn split_located(error: &str) -> Option<Located> {
    let head_end = error.find(": ")?;
    let head = &error[..head_end];
    let mut parts = head.rsplitn(3, ':');
    let col = parts.next()?.parse().ok()?;
    let line = parts.next()?.parse().ok()?;
    let file = parts.next()?;
    Some(Located {
        file: file.to_string(),
        line: Some(line),
        col: Some(col),
        message: error[head_end + 2..].to_string(),
    })
}

/// Line and column (1-based) of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// The text between the first pair of backticks.
fn quoted(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}

fn locate_in_routes(text: &str, message: &str) -> (Option<(usize, usize)>, String) {
    // toml: "TOML parse error at line L, column C\n  |\n...\nwhat went wrong"
    if let Some(rest) = message.strip_prefix("TOML parse error at line ") {
        let mut nums = rest
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .filter_map(|s| s.parse::<usize>().ok());
        let what = message
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty() && !l.contains('|'))
            .unwrap_or(message)
            .trim()
            .to_string();
        return match (nums.next(), nums.next()) {
            (Some(l), Some(c)) => (Some((l, c)), what),
            _ => (None, what),
        };
    }
    let blocks: Vec<usize> = text
        .match_indices("[[routes]]")
        .map(|(i, _)| i)
        .filter(|&i| i == 0 || text.as_bytes()[i - 1] == b'\n')
        .collect();
    // "routes[3] ...": the fourth [[routes]] table.
    if let Some(index) = message
        .strip_prefix("routes[")
        .and_then(|r| r.split(']').next())
        .and_then(|i| i.parse::<usize>().ok())
    {
        return (
            blocks.get(index).map(|&o| position(text, o)),
            message.to_string(),
        );
    }
    // "route GET /path has no action ...": the path line of that route.
    if let Some(rest) = message.strip_prefix("route ") {
        let mut words = rest.split_whitespace();
        if let (Some(method), Some(template)) = (words.next(), words.next()) {
            for (n, &start) in blocks.iter().enumerate() {
                let end = blocks.get(n + 1).copied().unwrap_or(text.len());
                let block = &text[start..end];
                let names_method = block.lines().any(|l| {
                    l.trim_start().starts_with("method")
                        && l.to_ascii_uppercase().contains(&format!("\"{method}\""))
                });
                let path_line = block.find(&format!("\"{template}\""));
                if let (true, Some(at)) = (names_method, path_line) {
                    let line_start = block[..at].rfind('\n').map_or(0, |i| i + 1);
                    let indent = block[line_start..].len() - block[line_start..].trim_start().len();
                    return (
                        Some(position(text, start + line_start + indent)),
                        message.to_string(),
                    );
                }
            }
        }
    }
    // "bad entity type `X`": the resource line naming it.
    if let Some(name) = quoted(message)
        && let Some(at) = text.find(&format!("\"{name}\""))
    {
        return (Some(position(text, at)), message.to_string());
    }
    (None, message.to_string())
}

/// "action `id` has no route ...": where the schema declares it.
fn locate_action(text: &str, message: &str) -> Option<(usize, usize)> {
    let id = quoted(message)?;
    let at = text.find(&format!("\"{id}\""))?;
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    Some(position(
        text,
        if text[line_start..].trim_start().starts_with("action") {
            line_start + (text[line_start..].len() - text[line_start..].trim_start().len())
        } else {
            at
        },
    ))
}

/// "duplicate policy id `x`" and "policy templates are not supported".
fn locate_in_policies(text: &str, message: &str) -> Option<(usize, usize)> {
    if message.starts_with("duplicate policy id") {
        let id = quoted(message)?;
        let at = text.find(&format!("@id(\"{id}\")"))?;
        return Some(position(text, at));
    }
    if message.starts_with("policy templates") {
        let at = ["?principal", "?resource"]
            .iter()
            .filter_map(|slot| text.find(slot))
            .min()?;
        return Some(position(text, at));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn located_errors_split_at_the_last_two_numbers() {
        let l = split_located("/tmp/a:b/x.cedar:4:7: unknown attribute `nope`").unwrap();
        assert_eq!(l.file, "/tmp/a:b/x.cedar");
        assert_eq!((l.line, l.col), (Some(4), Some(7)));
        assert_eq!(l.message, "unknown attribute `nope`");
        assert!(split_located("routes.toml: route GET /x has no action").is_none());
    }

    #[test]
    fn route_errors_point_at_the_route() {
        let dir = tempfile::tempdir().unwrap();
        let routes = "roles = [\"A\"]\n\n[[routes]]\nmethod = \"GET\"\npath = \"/w/{workspaceId}\"\nresource = \"Workspace\"\n\n[[routes]]\nmethod = \"POST\"\npath = \"/w/{workspaceId}\"\nresource = \"Workspace\"\n";
        std::fs::write(dir.path().join(ROUTES_FILE), routes).unwrap();
        let l = locate(
            dir.path(),
            "routes.toml: route POST /w/{workspaceId} has no action `post /w/{workspaceId}` in schema.cedarschema",
        );
        assert_eq!((l.line, l.col), (Some(10), Some(1)), "{l}");
        assert!(l.file.ends_with("routes.toml"));
        let l = locate(dir.path(), "routes.toml: routes[1] `/x`: bad");
        assert_eq!(l.line, Some(8));
        let shown = format!(
            "{}: TOML parse error at line 3, column 2\n  |\n3 | x\n  | ^\nunknown field `x`",
            dir.path().join(ROUTES_FILE).display()
        );
        let l = locate(dir.path(), &shown);
        assert_eq!((l.line, l.col), (Some(3), Some(2)));
        assert_eq!(l.message, "unknown field `x`");
    }

    #[test]
    fn schema_actions_and_duplicate_ids_are_found() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(SCHEMA_FILE),
            "entity A;\n  action \"get /x\" appliesTo { principal: A, resource: A };\n",
        )
        .unwrap();
        let l = locate(
            dir.path(),
            "schema.cedarschema: action `get /x` has no route in routes.toml",
        );
        assert_eq!((l.line, l.col), (Some(2), Some(3)));
        let p = dir.path().join("p.cedar");
        std::fs::write(&p, "\n@id(\"a\")\npermit (principal, action, resource);\n").unwrap();
        let l = locate(
            dir.path(),
            &format!(
                "{}: duplicate policy id `a` (also in other.cedar)",
                p.display()
            ),
        );
        assert_eq!((l.line, l.col), (Some(2), Some(1)));
    }
}
