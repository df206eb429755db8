//! `policy authorize` ("explain"): one decision with everything that went into it.
//!
//! HTTP form: a request line and verified claims go through [`simulate`] (the gateway's path
//! check, route match and `authz::decide`); the Cedar request shown is the one
//! `authz::mapping::build` made for that decision. Raw form: a Cedar request and entities,
//! checked against the bundle's schema and decided with the whole policy set.

use std::path::{Path, PathBuf};

use cedar_policy::{Authorizer, Context, Entities, EntityUid, Request};
use clap::ArgGroup;
use serde_json::{Value, json};

use super::runtests;
use super::simulate::{self, HttpRequest, Verdict};
use super::{OutputFormat, load_bundle, print_json};
use crate::authz::{PolicyBundle, RequestFacts, mapping};

/// Arguments of `policy authorize`.
#[derive(clap::Args)]
#[command(group(ArgGroup::new("input").required(true).args(["request", "principal"])))]
pub struct Args {
    /// Policy directory.
    #[arg(long, default_value = super::DEFAULT_DIR)]
    policies: PathBuf,
    /// HTTP form: the request line, `METHOD /path?query`.
    #[arg(long, requires = "claims", conflicts_with_all = ["principal", "action", "resource", "context", "entities"])]
    request: Option<String>,
    /// HTTP form: the verified token claims, a JSON object (or @FILE). `token_use` defaults to
    /// "access".
    #[arg(long)]
    claims: Option<String>,
    /// HTTP form: a request header `Name: value` (repeatable). Only `X-User-ID` takes part in
    /// a decision (as `context.impersonatedUserId`).
    #[arg(long = "header", value_name = "NAME:VALUE")]
    headers: Vec<String>,
    /// Raw form: the principal, e.g. 'Identity::"u1"'.
    #[arg(long, requires_all = ["action", "resource"])]
    principal: Option<String>,
    /// Raw form: the action, e.g. 'Action::"get /app/v1/workspaces/{workspaceId}/missions"'.
    #[arg(long)]
    action: Option<String>,
    /// Raw form: the resource, e.g. 'Workspace::"ws-a"'.
    #[arg(long)]
    resource: Option<String>,
    /// Raw form: the context, a JSON object (or @FILE); default {}.
    #[arg(long)]
    context: Option<String>,
    /// Raw form: an entities file (Cedar JSON entity format); the schema's action entities are
    /// added.
    #[arg(long)]
    entities: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    format: OutputFormat,
}

/// A decision and what it was made from, ready to print.
struct Explained {
    verdict: Verdict,
    rejection: Option<String>,
    route: Option<String>,
    reasons: Vec<String>,
    errors: Vec<String>,
    principal: Option<String>,
    action: Option<String>,
    resource: Option<String>,
    context: Value,
    entities: Value,
}

pub fn run(args: &Args) -> anyhow::Result<bool> {
    let bundle = load_bundle(&args.policies)?;
    let explained = match &args.request {
        Some(line) => explain_http(&bundle, args, line)?,
        None => explain_raw(&bundle, args)?,
    };
    print(&bundle, &explained, args.format);
    Ok(explained.verdict == Verdict::Allow)
}

/// `@path` reads a file, anything else is the value itself.
pub fn text_or_file(value: &str) -> anyhow::Result<String> {
    match value.strip_prefix('@') {
        Some(path) => {
            std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {path}: {e}"))
        }
        None => Ok(value.to_string()),
    }
}

/// `METHOD target [HTTP/x]`.
fn parse_request_line(line: &str) -> anyhow::Result<(&str, &str)> {
    let mut words = line.split_whitespace();
    match (words.next(), words.next(), words.next(), words.next()) {
        (Some(m), Some(t), None, None) => Ok((m, t)),
        (Some(m), Some(t), Some(v), None) if v.starts_with("HTTP/") => Ok((m, t)),
        _ => anyhow::bail!("--request must be `METHOD /path?query`, got `{line}`"),
    }
}

/// The `X-User-ID` header among `Name: value` headers (the last one wins).
fn impersonated_user(headers: &[String]) -> anyhow::Result<Option<String>> {
    let mut user = None;
    for h in headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("--header must be `Name: value`, got `{h}`"))?;
        if name.trim().eq_ignore_ascii_case("x-user-id") {
            user = Some(value.trim().to_string());
        }
    }
    Ok(user)
}

fn explain_http(bundle: &PolicyBundle, args: &Args, line: &str) -> anyhow::Result<Explained> {
    let (method, target) = parse_request_line(line)?;
    let claims_text = text_or_file(args.claims.as_deref().unwrap_or("{}"))?;
    let claims =
        simulate::parse_claims(&claims_text).map_err(|e| anyhow::anyhow!("--claims: {e}"))?;
    let identity = simulate::identity_from_claims(&claims, true)
        .map_err(|e| anyhow::anyhow!("--claims: {e}"))?;
    let user = impersonated_user(&args.headers)?;
    let sim = simulate::simulate(
        bundle,
        &identity,
        &HttpRequest {
            method,
            target,
            impersonated_user: user.as_deref(),
        },
    );
    let mut out = Explained {
        verdict: sim.verdict,
        rejection: sim.rejection.clone(),
        route: None,
        reasons: sim.reasons().to_vec(),
        errors: sim.errors().to_vec(),
        principal: None,
        action: None,
        resource: None,
        context: Value::Null,
        entities: Value::Null,
    };
    if let Some(route) = &sim.route {
        let r = &bundle.routes.routes[route.route_index];
        out.route = Some(format!("{} {}", r.method, r.template));
        let facts = RequestFacts {
            route,
            query: &sim.query,
            impersonated_user: user.as_deref(),
        };
        match mapping::build(bundle, &identity, &facts) {
            Ok(input) => {
                out.principal = Some(input.principal.to_string());
                out.action = Some(input.action.to_string());
                out.resource = Some(input.resource.to_string());
                // The context Cedar decided with; the mapping's own rendering if Cedar
                // cannot serialise it.
                out.context = input
                    .request()
                    .context()
                    .and_then(|c| c.to_json_value().ok())
                    .unwrap_or_else(|| mapping::context_json(bundle, &identity, &facts));
                out.entities = runtests::entities_json(input.entities()).unwrap_or(Value::Null);
            }
            Err(e) => out.errors.push(format!("request mapping failed: {e}")),
        }
    }
    Ok(out)
}

fn explain_raw(bundle: &PolicyBundle, args: &Args) -> anyhow::Result<Explained> {
    let uid = |flag: &str, v: &Option<String>| -> anyhow::Result<EntityUid> {
        let v = v
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("--{flag} is required"))?;
        v.parse()
            .map_err(|e| anyhow::anyhow!("--{flag} `{v}` is not an entity uid: {e}"))
    };
    let principal = uid("principal", &args.principal)?;
    let action = uid("action", &args.action)?;
    let resource = uid("resource", &args.resource)?;
    let context_json: Value =
        serde_json::from_str(&text_or_file(args.context.as_deref().unwrap_or("{}"))?)
            .map_err(|e| anyhow::anyhow!("--context is not valid JSON: {e}"))?;
    let context = Context::from_json_value(context_json.clone(), Some((&bundle.schema, &action)))
        .map_err(|e| anyhow::anyhow!("--context: {e}"))?;
    let (entities, entities_json) = load_entities(bundle, args.entities.as_deref())?;
    let request = Request::new(
        principal.clone(),
        action.clone(),
        resource.clone(),
        context,
        Some(&bundle.schema),
    )
    .map_err(|e| anyhow::anyhow!("the request does not fit the schema: {e}"))?;
    let response = Authorizer::new().is_authorized(&request, &bundle.policies, &entities);
    // Fail closed like the gateway: an evaluation error denies even next to an Allow.
    let decided = crate::authz::decision_of(&response, &bundle.version);
    let (allowed, reasons, errors) = (decided.allowed, decided.reasons, decided.errors);
    Ok(Explained {
        verdict: if allowed {
            Verdict::Allow
        } else {
            Verdict::Deny
        },
        rejection: None,
        route: None,
        reasons,
        errors,
        principal: Some(principal.to_string()),
        action: Some(action.to_string()),
        resource: Some(resource.to_string()),
        context: context_json,
        entities: entities_json,
    })
}

/// Entities from a file (or none), checked against the schema, plus the schema's actions;
/// also the file's JSON as given (for display: the schema's actions are many).
pub fn load_entities(
    bundle: &PolicyBundle,
    file: Option<&Path>,
) -> anyhow::Result<(Entities, Value)> {
    let json = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{} is not valid JSON: {e}", path.display()))?
        }
        None => json!([]),
    };
    let entities = Entities::from_json_value(json.clone(), Some(&bundle.schema))
        .map_err(|e| anyhow::anyhow!("entities: {e}"))?;
    Ok((entities, json))
}

fn print(bundle: &PolicyBundle, e: &Explained, format: OutputFormat) {
    let file_of = |id: &str| bundle.policy_files.get(id).cloned().unwrap_or_default();
    match format {
        OutputFormat::Json => print_json(&json!({
            "decision": e.verdict.as_str(),
            "status": e.verdict.status(),
            "rejection": e.rejection,
            "reasons": e.reasons,
            "reasonFiles": e.reasons.iter().map(|r| (r.clone(), Value::from(file_of(r)))).collect::<serde_json::Map<_, _>>(),
            "errors": e.errors,
            "route": e.route,
            "principal": e.principal,
            "action": e.action,
            "resource": e.resource,
            "context": e.context,
            "entities": e.entities,
            "policyVersion": bundle.version,
        })),
        OutputFormat::Text => {
            let mut decision = format!("{} (HTTP {})", e.verdict.as_str(), e.verdict.status());
            if let Some(why) = &e.rejection {
                decision.push_str(&format!(": {why}"));
            }
            out!("decision:  {decision}");
            if e.reasons.is_empty() {
                let none = match e.verdict {
                    Verdict::Deny => "none (no permit applies)",
                    _ => "none",
                };
                out!("reasons:   {none}");
            } else {
                out!("reasons:");
                for r in &e.reasons {
                    out!("  {r}  ({})", file_of(r));
                }
            }
            if e.errors.is_empty() {
                out!("errors:    none");
            } else {
                out!("errors:");
                for err in &e.errors {
                    out!("  {err}");
                }
            }
            if let Some(route) = &e.route {
                out!("route:     {route}");
            }
            let show = |label: &str, v: &Option<String>| {
                if let Some(v) = v {
                    out!("{label:<10} {v}");
                }
            };
            show("principal:", &e.principal);
            show("action:", &e.action);
            show("resource:", &e.resource);
            for (label, v) in [("context:", &e.context), ("entities:", &e.entities)] {
                if !v.is_null() {
                    let pretty = serde_json::to_string_pretty(v).unwrap_or_default();
                    out!("{label}");
                    for l in pretty.lines() {
                        out!("  {l}");
                    }
                }
            }
            out!(
                "policies:  {} (version {})",
                bundle.dir.display(),
                bundle.version
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_and_headers() {
        assert_eq!(parse_request_line("GET /a?b=1").unwrap(), ("GET", "/a?b=1"));
        assert_eq!(
            parse_request_line(" POST /a HTTP/1.1 ").unwrap(),
            ("POST", "/a")
        );
        assert!(parse_request_line("/a").is_err());
        assert!(parse_request_line("GET /a b c").is_err());
        assert_eq!(
            impersonated_user(&["x-user-id: u2".into(), "Accept: */*".into()]).unwrap(),
            Some("u2".into())
        );
        assert_eq!(impersonated_user(&[]).unwrap(), None);
        assert!(impersonated_user(&["nocolon".into()]).is_err());
    }
}
