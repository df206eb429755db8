//! Loading a policy directory: schema, Cedar policies and route table, validated together
//! and versioned by a content hash. A bundle is immutable once built; a reload builds a new
//! one and swaps it in whole.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::SystemTime;

use cedar_policy::{Entity, EntityUid, PolicyId, PolicySet, Schema, ValidationMode, Validator};
use sha2::{Digest, Sha256};

use super::index::PolicyIndex;
use crate::routes::RouteTable;

/// Entity type names the mapping needs, parsed once per load.
pub(crate) struct EntityTypes {
    pub identity: cedar_policy::EntityTypeName,
    pub workspace: cedar_policy::EntityTypeName,
    /// Per route: its resource type.
    pub resources: Vec<cedar_policy::EntityTypeName>,
}

/// File names inside a policy directory.
pub const SCHEMA_FILE: &str = "schema.cedarschema";
pub const ROUTES_FILE: &str = "routes.toml";

/// A validated, immutable policy set with everything needed to decide requests.
pub struct PolicyBundle {
    /// Hex SHA-256 (first 16 chars) over every file name and content.
    pub version: String,
    pub loaded_at: SystemTime,
    pub dir: PathBuf,
    pub policies: PolicySet,
    pub schema: Schema,
    pub routes: RouteTable,
    /// Which file each policy came from.
    pub policy_files: HashMap<String, String>,
    /// Per route (same index as `routes.routes`): its action entity, built once per load and
    /// shared by every request's entity store (Cedar's core type: no copy per request).
    pub(crate) action_entities: Vec<Arc<cedar_policy_core::ast::Entity>>,
    pub(crate) action_uids: Vec<EntityUid>,
    /// Entity type names, parsed once.
    pub(crate) types: EntityTypes,
    /// The policies that can apply, per route and workspace.
    pub(crate) index: PolicyIndex,
    /// Per role: the role itself and every role below it (the hierarchy, closed).
    pub(crate) role_closure: HashMap<String, HashSet<cedar_policy_core::ast::EntityUID>>,
}

impl std::fmt::Debug for PolicyBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyBundle")
            .field("version", &self.version)
            .field("dir", &self.dir)
            .field("policies", &self.policies.policies().count())
            .field("routes", &self.routes.routes.len())
            .finish()
    }
}

/// Render a Cedar diagnostic as `file:line:col: message` lines.
fn diagnostic_lines(
    file: &str,
    text: &str,
    diag: &dyn miette::Diagnostic,
    message: &str,
) -> Vec<String> {
    let labels: Vec<_> = diag.labels().map(|l| l.collect()).unwrap_or_default();
    if labels.is_empty() {
        return vec![format!("{file}: {message}")];
    }
    labels
        .iter()
        .map(|label: &miette::LabeledSpan| {
            let (line, col) = line_col(text, label.offset());
            match label.label() {
                Some(l) if !message.contains(l) => format!("{file}:{line}:{col}: {message} ({l})"),
                _ => format!("{file}:{line}:{col}: {message}"),
            }
        })
        .collect()
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Byte offsets where each top-level statement (policy) of a Cedar file starts, skipping
/// comments and strings; used to point at a policy Cedar gives no location for.
fn statement_starts(text: &str) -> Vec<usize> {
    let bytes = text.as_bytes();
    let (mut i, mut depth, mut starts, mut in_statement) = (0, 0i32, Vec::new(), false);
    while i < bytes.len() {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'"' => {
                if !in_statement {
                    starts.push(i);
                    in_statement = true;
                }
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'(' | b'{' | b'[' => depth += 1,
            b')' | b'}' | b']' => depth -= 1,
            b';' if depth == 0 => in_statement = false,
            c if !c.is_ascii_whitespace() && !in_statement => {
                starts.push(i);
                in_statement = true;
            }
            _ => {}
        }
        i += 1;
    }
    starts
}

/// Flatten an error and its sources into one line.
fn full_message(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let s_msg = s.to_string();
        if !msg.contains(&s_msg) {
            msg.push_str(": ");
            msg.push_str(&s_msg);
        }
        src = s.source();
    }
    msg
}

impl PolicyBundle {
    /// Load and validate a policy directory; every problem is reported, as `file:line:col: msg`.
    pub fn load(dir: &Path) -> Result<PolicyBundle, Vec<String>> {
        Self::load_parts(dir, dir)
    }

    /// Load the schema and routes of `base` with the `*.cedar` policies of `policy_dir`
    /// (a shadow set shares the active set's schema and routes).
    pub fn load_parts(base: &Path, policy_dir: &Path) -> Result<PolicyBundle, Vec<String>> {
        let mut errors = Vec::new();
        let read = |name: &Path| {
            std::fs::read_to_string(name)
                .map_err(|e| format!("{}: cannot read: {e}", name.display()))
        };
        let mut hasher = Sha256::new();

        let schema_path = base.join(SCHEMA_FILE);
        let schema_text = read(&schema_path).map_err(|e| vec![e])?;
        hasher.update(SCHEMA_FILE.as_bytes());
        hasher.update(schema_text.as_bytes());
        let schema = match Schema::from_cedarschema_str(&schema_text) {
            Ok((schema, _warnings)) => Some(schema),
            Err(e) => {
                errors.extend(diagnostic_lines(
                    &schema_path.display().to_string(),
                    &schema_text,
                    &e,
                    &full_message(&e),
                ));
                None
            }
        };

        let routes_path = base.join(ROUTES_FILE);
        let routes = match read(&routes_path) {
            Ok(text) => {
                hasher.update(ROUTES_FILE.as_bytes());
                hasher.update(text.as_bytes());
                RouteTable::parse(&text)
                    .map_err(|e| errors.push(format!("{}: {e}", routes_path.display())))
                    .ok()
            }
            Err(e) => {
                errors.push(e);
                None
            }
        };

        let dir = policy_dir;
        let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "cedar") && p.is_file())
                .collect(),
            Err(e) => {
                return Err(vec![format!(
                    "{}: cannot read directory: {e}",
                    dir.display()
                )]);
            }
        };
        files.sort();
        if files.is_empty() {
            errors.push(format!("{}: no *.cedar policy files", dir.display()));
        }

        let mut policies = PolicySet::new();
        let mut policy_files = HashMap::new();
        for path in &files {
            let shown = path.display().to_string();
            let text = match read(path) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            hasher.update(
                path.file_name()
                    .map(|n| n.as_encoded_bytes())
                    .unwrap_or_default(),
            );
            hasher.update(text.as_bytes());
            let parsed = match PolicySet::from_str(&text) {
                Ok(p) => p,
                Err(e) => {
                    errors.extend(diagnostic_lines(&shown, &text, &e, &full_message(&e)));
                    continue;
                }
            };
            if parsed.templates().next().is_some() {
                errors.push(format!("{shown}: policy templates are not supported"));
            }
            let mut file_set = PolicySet::new();
            let starts = statement_starts(&text);
            for policy in parsed.policies() {
                let Some(id) = policy.annotation("id").map(str::to_string) else {
                    // Cedar names unnamed policies policy0..N in source order.
                    let index: usize = policy
                        .id()
                        .to_string()
                        .trim_start_matches("policy")
                        .parse()
                        .unwrap_or(0);
                    let (line, col) = line_col(&text, starts.get(index).copied().unwrap_or(0));
                    errors.push(format!(
                        "{shown}:{line}:{col}: every policy needs an @id(\"...\") annotation"
                    ));
                    continue;
                };
                if let Some(other) = policy_files.get(&id) {
                    errors.push(format!(
                        "{shown}: duplicate policy id `{id}` (also in {other})"
                    ));
                    continue;
                }
                let named = policy.new_id(PolicyId::new(&id));
                policy_files.insert(id.clone(), shown.clone());
                for set in [&mut file_set, &mut policies] {
                    if let Err(e) = set.add(named.clone()) {
                        errors.push(format!("{shown}: {e}"));
                    }
                }
            }
            if let Some(schema) = &schema {
                let result =
                    Validator::new(schema.clone()).validate(&file_set, ValidationMode::Strict);
                for e in result.validation_errors() {
                    errors.extend(diagnostic_lines(&shown, &text, e, &full_message(e)));
                }
            }
        }

        let (Some(schema), Some(routes)) = (schema, routes) else {
            return Err(errors);
        };
        let (action_entities, action_uids, action_ancestors) = match route_actions(&schema, &routes)
        {
            Ok(v) => v,
            Err(mut e) => {
                errors.append(&mut e);
                return Err(errors);
            }
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        let version = hex::encode(hasher.finalize())[..16].to_string();
        let index = PolicyIndex::build(&policies, &action_uids, &action_ancestors);
        let parse =
            |n: &str| super::mapping::type_name(n).map_err(|e| vec![format!("{ROUTES_FILE}: {e}")]);
        let types = EntityTypes {
            identity: parse("Identity")?,
            workspace: parse("Workspace")?,
            resources: routes
                .routes
                .iter()
                .map(|r| parse(&r.resource_type))
                .collect::<Result<_, _>>()?,
        };
        Ok(PolicyBundle {
            types,
            index,
            version,
            loaded_at: SystemTime::now(),
            dir: dir.to_path_buf(),
            policies,
            role_closure: role_closure(&routes.roles),
            schema,
            routes,
            policy_files,
            action_entities: action_entities
                .iter()
                .map(|e| Arc::new(AsRef::<cedar_policy_core::ast::Entity>::as_ref(e).clone()))
                .collect(),
            action_uids,
        })
    }
}

/// Route-table consistency: every route's action is in the schema, and every route action
/// of the schema (`"<method> <path>"`) has a route.
type RouteActions = (Vec<Entity>, Vec<EntityUid>, Vec<HashSet<EntityUid>>);

fn route_actions(schema: &Schema, routes: &RouteTable) -> Result<RouteActions, Vec<String>> {
    let actions = schema
        .action_entities()
        .map_err(|e| vec![format!("{SCHEMA_FILE}: {e}")])?;
    let mut errors = Vec::new();
    let mut entities = Vec::new();
    let mut uids = Vec::new();
    let mut ancestors = Vec::new();
    let mut routed = HashSet::new();
    for route in &routes.routes {
        let uid = action_uid(&route.action);
        match actions.get(&uid) {
            Some(e) => {
                entities.push(e.clone());
                routed.insert(uid.clone());
            }
            None => errors.push(format!(
                "{ROUTES_FILE}: route {} {} has no action `{}` in {SCHEMA_FILE}",
                route.method, route.template, route.action
            )),
        }
        let mut anc: HashSet<EntityUid> = actions
            .ancestors(&uid)
            .map(|a| a.cloned().collect())
            .unwrap_or_default();
        anc.insert(uid.clone());
        ancestors.push(anc);
        uids.push(uid);
    }
    for entity in actions.iter() {
        let uid = entity.uid();
        let id = uid.id().unescaped().to_string();
        let is_route_action = [
            "get ", "post ", "put ", "patch ", "delete ", "head ", "options ",
        ]
        .iter()
        .any(|m| id.starts_with(m));
        if is_route_action && !routed.contains(&uid) {
            errors.push(format!(
                "{SCHEMA_FILE}: action `{id}` has no route in {ROUTES_FILE}"
            ));
        }
    }
    if errors.is_empty() {
        Ok((entities, uids, ancestors))
    } else {
        Err(errors)
    }
}

/// `Action::"<id>"`.
pub fn action_uid(id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(
        "Action".parse().expect("Action is a valid type name"),
        cedar_policy::EntityId::new(id),
    )
}

/// Each role maps to itself and every role after it in the list (less privileged).
fn role_closure(roles: &[String]) -> HashMap<String, HashSet<cedar_policy_core::ast::EntityUID>> {
    let role_type: cedar_policy::EntityTypeName =
        "Role".parse().expect("Role is a valid type name");
    roles
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let below = roles[i..]
                .iter()
                .map(|x| {
                    EntityUid::from_type_name_and_id(
                        role_type.clone(),
                        cedar_policy::EntityId::new(x),
                    )
                    .into()
                })
                .collect();
            (r.clone(), below)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy_dir() -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../policies"))
    }

    fn copy_dir() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(policy_dir()).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                std::fs::copy(&p, tmp.path().join(p.file_name().unwrap())).unwrap();
            }
        }
        tmp
    }

    #[test]
    fn default_pack_loads() {
        let b = PolicyBundle::load(&policy_dir()).unwrap_or_else(|e| panic!("{e:#?}"));
        assert_eq!(b.version.len(), 16);
        assert!(
            b.policies
                .policy(&PolicyId::new("tenant-isolation"))
                .is_some()
        );
        assert_eq!(b.action_entities.len(), b.routes.routes.len());
        assert_eq!(b.role_closure["Owner"].len(), 5);
        assert_eq!(b.role_closure["Viewer"].len(), 1);
    }

    #[test]
    fn type_errors_name_file_and_line() {
        let dir = copy_dir();
        std::fs::write(
            dir.path().join("zz-bad.cedar"),
            "\n@id(\"bad\")\npermit (principal, action, resource)\nwhen { principal.nope == 1 };\n",
        )
        .unwrap();
        let errors = PolicyBundle::load(dir.path()).unwrap_err();
        assert!(
            errors.iter().any(|e| e.contains("zz-bad.cedar:4:")),
            "{errors:#?}"
        );
    }

    #[test]
    fn parse_errors_and_missing_ids_are_reported() {
        let dir = copy_dir();
        std::fs::write(
            dir.path().join("x.cedar"),
            "permit (principal, action, resource);\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("y.cedar"),
            "@id(\"y\")\npermit (principal, action, resource\n",
        )
        .unwrap();
        let errors = PolicyBundle::load(dir.path()).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.contains("x.cedar:1:1") && e.contains("@id")),
            "{errors:#?}"
        );
        assert!(errors.iter().any(|e| e.contains("y.cedar:")), "{errors:#?}");
    }

    #[test]
    fn route_without_action_is_refused() {
        let dir = copy_dir();
        let mut routes = std::fs::read_to_string(dir.path().join(ROUTES_FILE)).unwrap();
        routes.push_str("\n[[routes]]\nmethod = \"GET\"\npath = \"/app/v1/workspaces/{workspaceId}/secret\"\nresource = \"Workspace\"\n");
        std::fs::write(dir.path().join(ROUTES_FILE), routes).unwrap();
        let errors = PolicyBundle::load(dir.path()).unwrap_err();
        assert!(errors.iter().any(|e| e.contains("/secret")), "{errors:#?}");
    }
}
