//! One API request through the gateway's stages that decide it, offline: path check, the
//! token-in-query check, route match, then `authz::decide` with the verified claims standing
//! in for the token (signature, `exp` and issuer checks need a token and are not repeated).
//! Same order and same functions as `proxy::Gateway::admit`.

use serde_json::{Map, Value};

use crate::authn::Identity;
use crate::authz::{self, Decision, PolicyBundle, RequestFacts};
use crate::routes::{RouteMatch, split_path};

/// What the gateway would answer, as far as the policies and the route table decide it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Forwarded to the backend.
    Allow,
    /// 403: Cedar denied (or an evaluation error denied).
    Deny,
    /// 404: no route matches method and path.
    NotFound,
    /// 400 `validation/invalid_path`.
    InvalidPath,
    /// 400 `auth/invalid_request`: a token in the query string.
    InvalidRequest,
}

impl Verdict {
    /// The name used in case files, audit logs and JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::NotFound => "not_found",
            Verdict::InvalidPath => "invalid_path",
            Verdict::InvalidRequest => "invalid_request",
        }
    }

    /// The HTTP status the gateway answers (200 stands for "forwarded").
    pub fn status(self) -> u16 {
        match self {
            Verdict::Allow => 200,
            Verdict::Deny => 403,
            Verdict::NotFound => 404,
            Verdict::InvalidPath | Verdict::InvalidRequest => 400,
        }
    }

    /// Parse a name from [`Verdict::as_str`].
    pub fn parse(s: &str) -> Option<Verdict> {
        [
            Verdict::Allow,
            Verdict::Deny,
            Verdict::NotFound,
            Verdict::InvalidPath,
            Verdict::InvalidRequest,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

/// An HTTP request as the gateway sees it.
pub struct HttpRequest<'a> {
    pub method: &'a str,
    /// Origin-form request target: path and optional `?query`, still percent-encoded.
    pub target: &'a str,
    /// The `X-User-ID` header, when sent.
    pub impersonated_user: Option<&'a str>,
}

/// The result of [`simulate`].
pub struct Simulated {
    pub verdict: Verdict,
    /// Why the request never reached Cedar (for the 400s).
    pub rejection: Option<String>,
    /// The matched route and the decoded query (when a route matched).
    pub route: Option<RouteMatch>,
    pub query: Vec<(String, String)>,
    /// Cedar's decision (when a route matched).
    pub decision: Option<Decision>,
}

impl Simulated {
    fn rejected(verdict: Verdict, why: String) -> Simulated {
        Simulated {
            verdict,
            rejection: Some(why),
            route: None,
            query: Vec::new(),
            decision: None,
        }
    }

    /// The determining policy ids (empty when Cedar was not asked).
    pub fn reasons(&self) -> &[String] {
        self.decision.as_ref().map_or(&[], |d| d.reasons.as_slice())
    }

    /// Cedar's evaluation errors (empty when Cedar was not asked).
    pub fn errors(&self) -> &[String] {
        self.decision.as_ref().map_or(&[], |d| d.errors.as_slice())
    }
}

/// Split a request target into its path and raw query, the way the gateway's HTTP layer does.
pub fn split_target(target: &str) -> Result<(String, String), String> {
    let uri: http::Uri = target
        .parse()
        .map_err(|e| format!("`{target}` is not a valid request target: {e}"))?;
    Ok((
        uri.path().to_string(),
        uri.query().unwrap_or_default().to_string(),
    ))
}

/// Decide one request with `bundle`, as the gateway would.
pub fn simulate(bundle: &PolicyBundle, identity: &Identity, req: &HttpRequest<'_>) -> Simulated {
    // The HTTP layer refuses a malformed request line with a 400 before any stage runs.
    let Ok(method) = http::Method::from_bytes(req.method.as_bytes()) else {
        return Simulated::rejected(
            Verdict::InvalidPath,
            format!("`{}` is not an HTTP method", req.method),
        );
    };
    let (path, raw_query) = match split_target(req.target) {
        Ok(parts) => parts,
        Err(e) => return Simulated::rejected(Verdict::InvalidPath, e),
    };
    let segments = match split_path(&path) {
        Ok(s) => s,
        Err(e) => return Simulated::rejected(Verdict::InvalidPath, e.message().to_string()),
    };
    let query: Vec<(String, String)> = form_urlencoded::parse(raw_query.as_bytes())
        .into_owned()
        .collect();
    if query.iter().any(|(k, _)| k == "access_token") {
        return Simulated::rejected(
            Verdict::InvalidRequest,
            "access tokens are not accepted in the query string".into(),
        );
    }
    let Some(route) = bundle.routes.find(&method, &segments) else {
        return Simulated {
            verdict: Verdict::NotFound,
            rejection: Some("no route matches method and path".into()),
            route: None,
            query,
            decision: None,
        };
    };
    if bundle.routes.routes[route.route_index].ambiguous_query(&query) {
        return Simulated::rejected(
            Verdict::InvalidRequest,
            "a query parameter the route reads is given more than once".into(),
        );
    }
    let decision = authz::decide(
        bundle,
        identity,
        &RequestFacts {
            route: &route,
            query: &query,
            impersonated_user: req.impersonated_user,
        },
    );
    Simulated {
        verdict: if decision.allowed {
            Verdict::Allow
        } else {
            Verdict::Deny
        },
        rejection: None,
        route: Some(route),
        query,
        decision: Some(decision),
    }
}

/// The verified identity for offline claims. `token_use` is filled with "access" when absent,
/// as `cedargate token mint` does (the gateway accepts only access tokens).
pub fn identity_from_claims(claims: &Map<String, Value>, fill: bool) -> Result<Identity, String> {
    let filled;
    let claims = if fill && !claims.contains_key("token_use") {
        let mut c = claims.clone();
        c.insert("token_use".into(), "access".into());
        filled = c;
        &filled
    } else {
        claims
    };
    Identity::from_claims(claims)
        .ok_or_else(|| "the claims name no principal (identityId, sub or client_id)".to_string())
}

/// Parse claims given as JSON text.
pub fn parse_claims(text: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("the claims must be a JSON object".into()),
        Err(e) => Err(format!("the claims are not valid JSON: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bundle() -> PolicyBundle {
        PolicyBundle::load(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../policies"
        )))
        .unwrap_or_else(|e| panic!("{e:#?}"))
    }

    fn member() -> Identity {
        let claims = json!({"sub":"u1","workspaceId":"ws-a","role":"Member","context":"app","platform":"web"});
        identity_from_claims(claims.as_object().unwrap(), true).unwrap()
    }

    fn run(b: &PolicyBundle, method: &str, target: &str) -> Simulated {
        simulate(
            b,
            &member(),
            &HttpRequest {
                method,
                target,
                impersonated_user: None,
            },
        )
    }

    #[test]
    fn stages_answer_in_the_gateway_order() {
        let b = bundle();
        let ok = run(&b, "GET", "/app/v1/workspaces/ws-a/missions?limit=3");
        assert_eq!(ok.verdict, Verdict::Allow);
        assert_eq!(ok.reasons(), ["app-read-viewer"]);
        assert_eq!(
            run(&b, "GET", "/app/v1/workspaces/ws-b/missions").verdict,
            Verdict::Deny
        );
        assert_eq!(
            run(&b, "GET", "/app/v1/workspaces/ws-a/nothing").verdict,
            Verdict::NotFound
        );
        assert_eq!(
            run(&b, "GET", "/app/v1/workspaces/ws-a/../ws-b/missions").verdict,
            Verdict::InvalidPath
        );
        // The path check comes before the query check, which comes before routing.
        assert_eq!(
            run(&b, "GET", "/app/v1/x?access_token=abc").verdict,
            Verdict::InvalidRequest
        );
        assert_eq!(
            run(&b, "GET", "/app/v1/%2e%2e/x?access_token=abc").verdict,
            Verdict::InvalidPath
        );
        assert_eq!(run(&b, "GET", "not a target").verdict, Verdict::InvalidPath);
    }

    #[test]
    fn token_use_is_filled_only_when_absent() {
        let c = json!({"sub":"u1"});
        let i = identity_from_claims(c.as_object().unwrap(), true).unwrap();
        assert_eq!(i.token_use.as_deref(), Some("access"));
        let c = json!({"sub":"u1","token_use":"id"});
        let i = identity_from_claims(c.as_object().unwrap(), true).unwrap();
        assert_eq!(i.token_use.as_deref(), Some("id"));
        let c = json!({"sub":"u1"});
        let i = identity_from_claims(c.as_object().unwrap(), false).unwrap();
        assert_eq!(i.token_use, None);
        assert!(identity_from_claims(json!({"role":"x"}).as_object().unwrap(), true).is_err());
    }

    #[test]
    fn the_context_shown_is_the_one_cedar_decided_with() {
        let b = bundle();
        let id = member();
        let segments = split_path("/app/v1/workspaces/ws-a/catalog").unwrap();
        let route = b.routes.find(&http::Method::GET, &segments).unwrap();
        let query = vec![("tier".to_string(), "premium".to_string())];
        let facts = RequestFacts {
            route: &route,
            query: &query,
            impersonated_user: Some("u9"),
        };
        let input = crate::authz::mapping::build(&b, &id, &facts).unwrap();
        let from_cedar = input.request().context().unwrap().to_json_value().unwrap();
        assert_eq!(
            from_cedar,
            crate::authz::mapping::context_json(&b, &id, &facts)
        );
    }
}
