//! `GET /openapi.json`: the API description, generated from the route table in force (the same
//! table that routes and authorizes every request), so it lists exactly the routes the gateway
//! serves — never hand-written, never out of date after a policy reload.

use serde_json::{Map, Value, json};

use crate::routes::RouteTable;

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
}

/// The OpenAPI 3.0 document for `table`.
pub fn document(table: &RouteTable) -> Value {
    let mut paths = Map::new();
    for route in &table.routes {
        let params: Vec<Value> = route
            .template
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| {
                json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}})
            })
            .chain(route.query.iter().map(|name| {
                json!({"name": name, "in": "query", "required": false, "schema": {"type": "string"}})
            }))
            .collect();
        let method = route.method.as_str().to_ascii_lowercase();
        let has_body = matches!(method.as_str(), "post" | "put" | "patch");
        let mut op = json!({
            "operationId": route.action,
            "summary": format!("{} {}", route.method, route.template),
            "tags": [route.template.split('/').nth(1).unwrap_or("api")],
            "parameters": params,
            "security": [{"bearer": []}],
            "x-cedar-action": format!("Action::{:?}", route.action),
            "x-cedar-resource-type": route.resource_type,
            "responses": {
                "200": {"description": "success", "content": {"application/json": {"schema": {"type": "object"}}}},
                "400": error_response("validation/* — invalid path, query or input"),
                "401": error_response("auth/invalid_token, auth/expired_token"),
                "403": error_response("auth/insufficient_permissions, auth/invalid_delegation, waf/blocked"),
                "404": error_response("resource/not_found"),
                "413": error_response("waf/payload_too_large"),
                "429": error_response("rate_limit/exceeded"),
                "502": error_response("server/upstream_unavailable"),
            }
        });
        let success = match method.as_str() {
            "post" => "201",
            "delete" => "204",
            _ => "200",
        };
        if success != "200" {
            let responses = op["responses"].as_object_mut().expect("an object");
            let ok = responses.remove("200").unwrap_or(Value::Null);
            responses.insert(
                success.to_owned(),
                if success == "204" {
                    json!({"description": "done"})
                } else {
                    ok
                },
            );
        }
        if has_body {
            let (schema, required) =
                backend::api_schema::request_body(route.method.as_str(), &route.template)
                    .unwrap_or_else(|| (json!({"type": "object"}), false));
            op["requestBody"] = json!({
                "required": required,
                "content": {"application/json": {"schema": schema}}
            });
            let responses = op["responses"].as_object_mut().expect("an object");
            responses.insert(
                "409".to_owned(),
                error_response("resource/already_exists, resource/conflict"),
            );
            responses.insert(
                "422".to_owned(),
                error_response("business/* — a business rule refused the request"),
            );
            op["parameters"]
                .as_array_mut()
                .expect("an array")
                .push(json!({"name": "X-Idempotency-Key", "in": "header", "required": false, "schema": {"type": "string"}}));
        }
        let entry = paths
            .entry(route.template.clone())
            .or_insert_with(|| json!({}));
        entry[method] = op;
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "cedargate API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every route the gateway serves, from its route table. Each request is authenticated (JWT) and decided by Cedar; X-User-ID lets an M2M client with a write scope act for a user."
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["code", "message", "status", "requestId", "timestamp", "path"],
                    "properties": {
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "status": {"type": "integer"},
                        "requestId": {"type": "string"},
                        "timestamp": {"type": "string", "format": "date-time"},
                        "path": {"type": "string"},
                        "rule": {"type": "string"},
                        "retryAfter": {"type": "integer"}
                    }
                }
            }
        }
    })
}
