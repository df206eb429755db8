//! `GET /openapi.json`: public, generated from the route table, complete.

use e2e_tests::gateway::{Gateway, workspace_root};
use e2e_tests::http::{client, send};

#[tokio::test]
async fn the_api_description_lists_every_route() {
    let gw = Gateway::start();
    let a = send(&client(), "GET", &gw.api_url("/openapi.json"), &[], None).await;
    a.assert_status(200);
    assert!(
        a.header("content-type")
            .is_some_and(|v| v.starts_with("application/json"))
    );
    let doc = a.json().expect("JSON");
    assert_eq!(doc["openapi"], "3.0.3");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let routes: toml::Table = toml::from_str(
        &std::fs::read_to_string(workspace_root().join("policies/routes.toml")).unwrap(),
    )
    .unwrap();
    let routes = routes["routes"].as_array().unwrap();
    let mut operations = 0;
    for r in routes {
        let path = r["path"].as_str().unwrap();
        let method = r["method"].as_str().unwrap().to_ascii_lowercase();
        let op = &doc["paths"][path][&method];
        assert!(op.is_object(), "{method} {path} missing from /openapi.json");
        let success = match method.as_str() {
            "post" => "201",
            "delete" => "204",
            _ => "200",
        };
        assert!(
            op["responses"][success].is_object() && op["responses"]["403"].is_object(),
            "{method} {path}: {op}"
        );
        if method == "post" || method == "put" {
            // Bodies are described by the backend's own validation specs.
            let schema = &op["requestBody"]["content"]["application/json"]["schema"];
            assert_eq!(schema["type"], "object", "{method} {path}");
        }
        for name in path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        {
            assert!(
                op["parameters"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["name"] == name && p["in"] == "path"),
                "{method} {path}: path parameter {name} undocumented"
            );
        }
        operations += 1;
    }
    let documented: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_object().unwrap().len())
        .sum();
    assert_eq!(
        documented, operations,
        "the document lists routes the gateway does not serve"
    );
    let create = &doc["paths"]["/dashboard/v1/workspaces/{workspaceId}/missions"]["post"];
    let body = &create["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(body["required"], serde_json::json!(["name"]), "{create}");
    assert_eq!(
        body["properties"]["targetCount"]["type"], "integer",
        "{create}"
    );
    // Anything else still needs a token.
    send(
        &client(),
        "GET",
        &gw.api_url("/openapi.json?x=1"),
        &[],
        None,
    )
    .await
    .assert_error(401, "auth/invalid_token");
}
