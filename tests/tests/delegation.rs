//! Stage 5 through the running gateway, against a stand-in backend whose directory knows
//! `u-alice` and `u-bob` in ws-demo and `u-carol` in ws-other: an M2M client with a write
//! scope acts for a user of its workspace; everything else is 403 `auth/invalid_delegation`.

use std::sync::atomic::Ordering;

use e2e_tests::claims::{human, m2m};
use e2e_tests::echo::{echo_backend, external_backend_config_text};
use e2e_tests::gateway::{Gateway, write_config};
use e2e_tests::http::{bearer, client, send};
use serde_json::json;

const MISSIONS: &str = "/app/v1/workspaces/ws-demo/missions";

fn acting_for(user: &str) -> (String, String) {
    ("x-user-id".to_owned(), user.to_owned())
}

#[tokio::test]
async fn m2m_clients_act_for_users_of_their_workspace_only() {
    let (backend, seen) = echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let text = external_backend_config_text(backend)
        + "\n[rate_limit.user]\nlimit = 3\nwindow_seconds = 60\n";
    let gw = Gateway::start_with(&write_config(dir.path(), "cedargate.toml", &text), &[]);
    let c = client();
    let url = gw.api_url(MISSIONS);
    let writer = gw.mint(&m2m("app/read app/write"), None);

    // Allowed: the backend's assertion names the user, done by the client.
    let a = send(
        &c,
        "GET",
        &url,
        &[bearer(&writer), acting_for("u-alice")],
        None,
    )
    .await;
    a.assert_status(200);
    let claims = &a.json().unwrap()["assertion"];
    assert_eq!(claims["userId"], "u-alice", "{a}");
    assert_eq!(claims["impersonatedBy"], "svc-e2e", "{a}");
    assert_eq!(claims["sub"], "svc-e2e", "{a}");
    // The identity is enriched from the directory.
    assert_eq!(claims["lang"], "fr", "{a}");
    assert_eq!(claims["timezone"], "Europe/Paris", "{a}");
    // The directory answer is cached: a second request makes no second lookup.
    let lookups = seen.lookups.load(Ordering::SeqCst);
    send(
        &c,
        "GET",
        &url,
        &[bearer(&writer), acting_for("u-alice")],
        None,
    )
    .await
    .assert_status(200);
    assert_eq!(seen.lookups.load(Ordering::SeqCst), lookups);

    // Refused before the backend sees the request.
    let forwarded_before = seen.complete.load(Ordering::SeqCst);
    let reader = gw.mint(&m2m("app/read"), None);
    let member = gw.mint(&human("Member", "app"), None);
    for (who, token, user) in [
        ("an unknown user", &writer, "u-nobody"),
        ("a user of another workspace", &writer, "u-carol"),
        ("an id that is not an id", &writer, "not an id!"),
        ("a client without a write scope", &reader, "u-alice"),
        ("a human token", &member, "u-alice"),
    ] {
        let a = send(&c, "GET", &url, &[bearer(token), acting_for(user)], None).await;
        assert_eq!(a.status, 403, "{who}: {a}");
        a.assert_error(403, "auth/invalid_delegation");
    }
    assert_eq!(seen.complete.load(Ordering::SeqCst), forwarded_before);

    // Rate limits apply per impersonated user: u-alice has used 2 of 3.
    send(
        &c,
        "GET",
        &url,
        &[bearer(&writer), acting_for("u-alice")],
        None,
    )
    .await
    .assert_status(200);
    let a = send(
        &c,
        "GET",
        &url,
        &[bearer(&writer), acting_for("u-alice")],
        None,
    )
    .await;
    a.assert_error(429, "rate_limit/exceeded");
    assert_eq!(a.json().unwrap()["rule"], "user");
    send(
        &c,
        "GET",
        &url,
        &[bearer(&writer), acting_for("u-bob")],
        None,
    )
    .await
    .assert_status(200);
}

/// The directory cache forgets a user as soon as a change to them passes through the gateway:
/// disabled, enabled again and deleted, each seen by the very next delegated request (the
/// cache would otherwise hold the user for 30 s). Against the embedded backend.
#[tokio::test]
async fn changes_to_a_user_through_the_gateway_apply_to_the_next_delegated_request() {
    let gw = Gateway::start();
    let c = client();
    let admin = gw.mint(&human("Admin", "dashboard"), None);
    let writer = gw.mint(&m2m("app/read app/write"), None);
    let users = gw.api_url("/dashboard/v1/workspaces/ws-demo/users");
    let created = send(
        &c,
        "POST",
        &users,
        &[bearer(&admin)],
        Some(&json!({"name": "Dee", "email": "dee@example.com"})),
    )
    .await;
    created.assert_status(201);
    let id = created.json().unwrap()["id"]
        .as_str()
        .unwrap_or_else(|| panic!("an id: {created}"))
        .to_owned();
    let user_url = format!("{users}/{id}");
    let act = || {
        let (c, url, h) = (
            c.clone(),
            gw.api_url(MISSIONS),
            vec![bearer(&writer), acting_for(&id)],
        );
        async move { send(&c, "GET", &url, &h, None).await }
    };
    act().await.assert_status(200);
    act().await.assert_status(200);
    let update = |status: &'static str| {
        let (c, url, h) = (c.clone(), user_url.clone(), vec![bearer(&admin)]);
        async move {
            let body = json!({"name": "Dee", "lang": "en", "timezone": "UTC", "status": status});
            send(&c, "PUT", &url, &h, Some(&body)).await
        }
    };
    update("disabled").await.assert_status(200);
    act().await.assert_error(403, "auth/invalid_delegation");
    update("active").await.assert_status(200);
    act().await.assert_status(200);
    let deleted = send(&c, "DELETE", &user_url, &[bearer(&admin)], None).await;
    assert!(deleted.status / 100 == 2, "{deleted}");
    act().await.assert_error(403, "auth/invalid_delegation");
}
