//! Query parameters that reach the policies must be unambiguous.

use e2e_tests::claims::{human, without};
use e2e_tests::gateway::Gateway;
use e2e_tests::http::{bearer, client, send};

#[tokio::test]
async fn a_repeated_policy_parameter_is_refused_before_authorization() {
    let gw = Gateway::start();
    let member = gw.mint(&without(&human("Member", "app"), "premium"), None);
    let c = client();
    let url = |q: &str| gw.api_url(&format!("/app/v1/workspaces/ws-demo/catalog?{q}"));
    // One value: decided by policy (free allowed, premium refused).
    send(&c, "GET", &url("tier=free"), &[bearer(&member)], None)
        .await
        .assert_status(200);
    send(&c, "GET", &url("tier=premium"), &[bearer(&member)], None)
        .await
        .assert_error(403, "auth/insufficient_permissions");
    // Two values: the policy could read one and the backend the other.
    for q in [
        "tier=free&tier=premium",
        "tier=premium&tier=free",
        "tier=free&tier=free",
    ] {
        send(&c, "GET", &url(q), &[bearer(&member)], None)
            .await
            .assert_error(400, "validation/invalid_query");
    }
}
