//! Stage 7: path normalisation and the route table (method + path template -> Cedar action).
//!
//! Paths are checked *before* matching: anything that could mean two things to two parsers
//! (dot segments, encoded separators, double encoding, empty segments, backslashes, control
//! characters) is rejected outright rather than normalised, so the gateway and the backend can
//! never disagree about which resource a request names.

use serde::Deserialize;

use crate::error::GatewayError;

/// One route of the table.
#[derive(Debug, Clone)]
pub struct Route {
    pub method: http::Method,
    /// The path template, e.g. `/app/v1/workspaces/{workspaceId}/missions/{missionId}`.
    pub template: String,
    /// Cedar action id: `"<lower-case method> <template>"`.
    pub action: String,
    /// Cedar entity type of the resource.
    pub resource_type: String,
    /// The path parameter naming the resource (None: the resource is the workspace).
    pub resource_param: Option<String>,
    /// Query parameters that reach the Cedar context.
    pub query: Vec<String>,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// A request matched to a route, with its decoded path parameters.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    pub route_index: usize,
    pub params: Vec<(String, String)>,
}

impl Route {
    /// Whether a query parameter this route passes to the policies appears more than once
    /// (then policies and backend could read different values).
    pub fn ambiguous_query(&self, query: &[(String, String)]) -> bool {
        self.query
            .iter()
            .any(|name| query.iter().filter(|(k, _)| k == name).count() > 1)
    }
}

impl RouteMatch {
    /// The value of a path parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The route table and the role hierarchy, loaded from `routes.toml`.
#[derive(Debug, Clone)]
pub struct RouteTable {
    pub routes: Vec<Route>,
    /// Roles, most privileged first; each is a member of the next.
    pub roles: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    roles: Vec<String>,
    routes: Vec<RawRoute>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    method: String,
    path: String,
    resource: String,
    #[serde(default)]
    query: Vec<String>,
}

impl RouteTable {
    /// Parse and check route-table text.
    pub fn parse(text: &str) -> Result<RouteTable, String> {
        let raw: RawTable = toml::from_str(text).map_err(|e| e.to_string())?;
        if raw.roles.is_empty() {
            return Err("`roles` must name at least one role".into());
        }
        let mut routes = Vec::with_capacity(raw.routes.len());
        for (i, r) in raw.routes.into_iter().enumerate() {
            let method: http::Method = r
                .method
                .parse()
                .map_err(|_| format!("routes[{i}]: bad method `{}`", r.method))?;
            let segments =
                parse_template(&r.path).map_err(|e| format!("routes[{i}] `{}`: {e}", r.path))?;
            let params: Vec<&str> = segments
                .iter()
                .filter_map(|s| match s {
                    Segment::Param(p) => Some(p.as_str()),
                    Segment::Literal(_) => None,
                })
                .collect();
            if !params.contains(&"workspaceId") {
                return Err(format!(
                    "routes[{i}] `{}`: every route needs {{workspaceId}}",
                    r.path
                ));
            }
            let resource_param = if r.resource == "Workspace" {
                None
            } else {
                match params.iter().rev().find(|p| **p != "workspaceId") {
                    Some(p) => Some(p.to_string()),
                    None => {
                        return Err(format!(
                            "routes[{i}] `{}`: resource `{}` needs a path parameter naming it",
                            r.path, r.resource
                        ));
                    }
                }
            };
            let route = Route {
                action: format!("{} {}", method.as_str().to_ascii_lowercase(), r.path),
                method,
                template: r.path,
                resource_type: r.resource,
                resource_param,
                query: r.query,
                segments,
            };
            if routes
                .iter()
                .any(|o: &Route| o.method == route.method && o.segments == route.segments)
            {
                return Err(format!("routes[{i}]: duplicate route {}", route.action));
            }
            routes.push(route);
        }
        Ok(RouteTable {
            routes,
            roles: raw.roles,
        })
    }

    /// Match decoded path segments against the table: exact and case-sensitive.
    pub fn find(&self, method: &http::Method, segments: &[String]) -> Option<RouteMatch> {
        'routes: for (route_index, route) in self.routes.iter().enumerate() {
            if route.method != method || route.segments.len() != segments.len() {
                continue;
            }
            for (tpl, seg) in route.segments.iter().zip(segments) {
                match tpl {
                    Segment::Literal(l) if l != seg => continue 'routes,
                    Segment::Param(_) if seg.is_empty() => continue 'routes,
                    _ => {}
                }
            }
            let params = route
                .segments
                .iter()
                .zip(segments)
                .filter_map(|(tpl, seg)| match tpl {
                    Segment::Param(p) => Some((p.clone(), seg.clone())),
                    Segment::Literal(_) => None,
                })
                .collect();
            return Some(RouteMatch {
                route_index,
                params,
            });
        }
        None
    }
}

fn parse_template(path: &str) -> Result<Vec<Segment>, String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err("must start with /".into());
    };
    rest.split('/')
        .map(|s| {
            if s.is_empty() {
                Err("empty segment".to_string())
            } else if let Some(p) = s.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                if p.is_empty() || !p.chars().all(|c| c.is_ascii_alphanumeric()) {
                    Err(format!("bad parameter name `{p}`"))
                } else {
                    Ok(Segment::Param(p.to_string()))
                }
            } else if s.contains(['{', '}']) {
                Err(format!("bad segment `{s}`"))
            } else {
                Ok(Segment::Literal(s.to_string()))
            }
        })
        .collect()
}

/// Check a raw request path and split it into decoded segments.
///
/// Rejects (400 `validation/invalid_path`): a path not starting with `/`, `.` and `..`
/// segments, `//`, backslashes, encoded `.`, `/`, `\` and `%` (so double encoding never
/// survives), NUL and control characters, and bytes that do not decode to UTF-8. A trailing
/// slash yields an empty last segment, which matches no route (404).
pub fn split_path(raw: &str) -> Result<Vec<String>, GatewayError> {
    let Some(rest) = raw.strip_prefix('/') else {
        return Err(GatewayError::InvalidPath("the path must start with /"));
    };
    let bytes = raw.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\\' {
            return Err(GatewayError::InvalidPath(
                "backslashes are not allowed in paths",
            ));
        }
        if b < 0x20 || b == 0x7f {
            return Err(GatewayError::InvalidPath(
                "control characters are not allowed in paths",
            ));
        }
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            let Some(value) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) else {
                return Err(GatewayError::InvalidPath("malformed percent-encoding"));
            };
            match value {
                b'.' | b'/' | b'\\' => {
                    return Err(GatewayError::InvalidPath(
                        "encoded '.', '/' or '\\' is not allowed in paths",
                    ));
                }
                b'%' => {
                    return Err(GatewayError::InvalidPath(
                        "double percent-encoding is not allowed in paths",
                    ));
                }
                v if v < 0x20 || v == 0x7f => {
                    return Err(GatewayError::InvalidPath(
                        "control characters are not allowed in paths",
                    ));
                }
                _ => {}
            }
        }
    }
    let count = rest.bytes().filter(|&b| b == b'/').count() + 1;
    let mut out = Vec::with_capacity(count);
    for (i, seg) in rest.split('/').enumerate() {
        if seg.is_empty() && i + 1 != count {
            return Err(GatewayError::InvalidPath(
                "empty path segments ('//') are not allowed",
            ));
        }
        if seg == "." || seg == ".." {
            return Err(GatewayError::InvalidPath(
                "'.' and '..' segments are not allowed",
            ));
        }
        let decoded = percent_encoding::percent_decode_str(seg)
            .decode_utf8()
            .map_err(|_| GatewayError::InvalidPath("path segments must be UTF-8"))?;
        if decoded.chars().any(char::is_control) {
            return Err(GatewayError::InvalidPath(
                "control characters are not allowed in paths",
            ));
        }
        out.push(decoded.into_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../policies/routes.toml"
        ))
        .unwrap();
        RouteTable::parse(&text).unwrap()
    }

    fn seg(p: &str) -> Vec<String> {
        split_path(p).unwrap()
    }

    #[test]
    fn smuggled_paths_are_rejected() {
        for p in [
            "/app/v1/workspaces/ws-demo/../ws-other/missions",
            "/app/v1/workspaces/ws-demo/./missions",
            "/app/v1/workspaces/ws-demo/%2e%2e/missions",
            "/app/v1/workspaces/ws-demo/%2E/missions",
            "/app/v1/workspaces/ws-demo%2fmissions",
            "/app/v1/workspaces/ws-demo%2Fmissions",
            "/app/v1/workspaces/%252e%252e/missions",
            "/app/v1/workspaces/ws-demo%252fmissions",
            "/app/v1//workspaces/ws-demo/missions",
            "/app/v1/workspaces/ws-demo\\missions",
            "/app/v1/workspaces/ws-demo%5cmissions",
            "/app/v1/workspaces/ws-demo%00/missions",
            "/app/v1/workspaces/ws-demo%0a/missions",
            "/app/v1/workspaces/ws-demo/missions%",
            "/app/v1/workspaces/ws-demo/missions%zz",
            "/app/v1/workspaces/%ff%fe/missions",
            "app/v1/workspaces",
        ] {
            assert!(
                matches!(split_path(p), Err(GatewayError::InvalidPath(_))),
                "{p} should be rejected"
            );
        }
    }

    #[test]
    fn ordinary_paths_decode() {
        assert_eq!(
            seg("/app/v1/workspaces/ws%20a/missions"),
            ["app", "v1", "workspaces", "ws a", "missions"]
        );
        assert_eq!(seg("/a/b/"), ["a", "b", ""]);
    }

    #[test]
    fn matching_is_exact_and_case_sensitive() {
        let t = table();
        let get = http::Method::GET;
        let m = t
            .find(&get, &seg("/app/v1/workspaces/ws-demo/missions/mission-1"))
            .unwrap();
        let route = &t.routes[m.route_index];
        assert_eq!(
            route.action,
            "get /app/v1/workspaces/{workspaceId}/missions/{missionId}"
        );
        assert_eq!(route.resource_param.as_deref(), Some("missionId"));
        assert_eq!(m.param("workspaceId"), Some("ws-demo"));
        assert_eq!(m.param("missionId"), Some("mission-1"));
        assert!(
            t.find(&get, &seg("/APP/v1/workspaces/ws-demo/missions"))
                .is_none()
        );
        assert!(
            t.find(&get, &seg("/app/v1/workspaces/ws-demo/missions/"))
                .is_none()
        );
        assert!(
            t.find(
                &http::Method::PATCH,
                &seg("/app/v1/workspaces/ws-demo/missions")
            )
            .is_none()
        );
        let del = t
            .find(
                &http::Method::DELETE,
                &seg("/dashboard/v1/workspaces/ws-demo"),
            )
            .unwrap();
        assert_eq!(t.routes[del.route_index].resource_type, "Workspace");
    }

    #[test]
    fn bad_tables_are_refused() {
        assert!(
            RouteTable::parse(
                "roles=[\"A\"]\n[[routes]]\nmethod=\"GET\"\npath=\"/x\"\nresource=\"Workspace\"\n"
            )
            .is_err()
        );
        assert!(RouteTable::parse("roles=[]\nroutes=[]\n").is_err());
        let dup = "roles=[\"A\"]\n[[routes]]\nmethod=\"GET\"\npath=\"/w/{workspaceId}\"\nresource=\"Workspace\"\n[[routes]]\nmethod=\"GET\"\npath=\"/w/{workspaceId}\"\nresource=\"Workspace\"\n";
        assert!(RouteTable::parse(dup).unwrap_err().contains("duplicate"));
    }
}
