//! Authentication on the api listener: the Bearer scheme, and every hostile token we know of.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use e2e_tests::jwt::{
    self, assemble, confusion_secrets, find_private_key_pem, parts, sign_hs256, sign_rs256,
};
use e2e_tests::{Answer, Gateway, bearer, client, human, read_answer, send, with};
use serde_json::{Value, json};

static GW: OnceLock<Result<Gateway, String>> = OnceLock::new();

fn gw() -> &'static Gateway {
    Gateway::shared(&GW)
}

const MISSIONS: &str = "/app/v1/workspaces/ws-demo/missions";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

fn member() -> Value {
    human("Member", "app")
}

async fn get_missions(authorization: Option<&str>) -> Answer {
    let headers: Vec<(String, String)> = authorization
        .map(|a| vec![("authorization".to_owned(), a.to_owned())])
        .unwrap_or_default();
    send(&client(), "GET", &gw().api_url(MISSIONS), &headers, None).await
}

#[tokio::test]
async fn a_valid_token_reaches_the_backend() {
    let token = gw().mint(&member(), None);
    let answer = get_missions(Some(&format!("Bearer {token}"))).await;
    answer.assert_status(200);
    assert!(
        answer.json().is_some(),
        "the backend answers JSON: {answer}"
    );
}

#[tokio::test]
async fn no_token_is_401_with_a_bare_bearer_challenge() {
    let answer = get_missions(None).await;
    answer.assert_status(401);
    let challenge = answer.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.to_ascii_lowercase().starts_with("bearer"),
        "WWW-Authenticate should start with Bearer: {answer}"
    );
    assert!(
        !challenge.contains("error="),
        "no error code when no token was sent (RFC 6750 §3.1): {answer}"
    );
    assert!(
        answer.code().is_some_and(|c| c.starts_with("auth/")),
        "an auth/* code: {answer}"
    );
    let problems = answer.envelope_problems();
    assert!(problems.is_empty(), "{problems:?}: {answer}");
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let token = gw().mint(&member(), None);
    for scheme in ["bearer", "BEARER", "BeArEr"] {
        let answer = get_missions(Some(&format!("{scheme} {token}"))).await;
        assert_eq!(answer.status, 200, "scheme {scheme:?}: {answer}");
    }
}

#[tokio::test]
async fn a_token_in_the_query_string_is_refused() {
    let token = gw().mint(&member(), None);
    let url = gw().api_url(&format!("{MISSIONS}?access_token={token}"));
    let alone = send(&client(), "GET", &url, &[], None).await;
    assert!(
        (400..500).contains(&alone.status),
        "?access_token= must be refused with a 4xx: {alone}"
    );
    assert!(
        !alone.forwarded(),
        "?access_token= must never be forwarded: {alone}"
    );
    // Even beside a valid header: a token in a URL ends up in logs and must not be accepted.
    let beside = send(&client(), "GET", &url, &[bearer(&token)], None).await;
    assert!(
        (400..500).contains(&beside.status),
        "?access_token= beside a valid Authorization header must be refused with a 4xx: {beside}"
    );
    assert!(!beside.forwarded(), "never forwarded: {beside}");
}

/// Every hostile token with the code it must be refused with.
fn hostile_tokens(gw: &Gateway, jwks: &Value) -> Vec<(String, String, &'static str)> {
    let valid = gw.mint(&member(), None);
    let header = jwt::header(&valid);
    let payload = jwt::payload(&valid);
    let kid = header["kid"]
        .as_str()
        .expect("minted tokens carry a kid")
        .to_owned();
    let keys = jwks["keys"].as_array().expect("JWKS has keys");
    let jwk = keys
        .iter()
        .find(|k| k["kid"] == json!(kid))
        .unwrap_or_else(|| panic!("kid {kid} of a minted token is not in the JWKS {jwks}"));
    let (h, p, _) = parts(&valid);
    let invalid = "auth/invalid_token";
    let mut out: Vec<(String, String, &'static str)> = Vec::new();

    for alg in ["none", "None", "NONE"] {
        let none = assemble(&json!({"alg": alg, "typ": "JWT", "kid": kid}), &payload, "");
        out.push((format!("alg {alg}"), none, invalid));
    }
    for (what, secret) in confusion_secrets(jwk) {
        let forged = sign_hs256(&json!({"kid": kid}), &payload, &secret);
        out.push((
            format!("HS256 keyed with the public key ({what})"),
            forged,
            invalid,
        ));
    }
    let mut unknown = header.clone();
    unknown["kid"] = json!("e2e-unknown-kid");
    out.push((
        "unknown kid".to_owned(),
        jwt::with_header(&valid, &unknown),
        invalid,
    ));
    // The strongest no-kid case is a token the issuer's own key signed; fall back to editing the
    // header when the key is not a PEM file we can find.
    match find_private_key_pem(gw.data_dir()).and_then(|pem| sign_rs256(&pem, None, &payload)) {
        Some(signed) => out.push((
            "no kid (validly signed by the issuer key)".to_owned(),
            signed,
            invalid,
        )),
        None => {
            let mut no_kid = header.clone();
            no_kid.as_object_mut().expect("header object").remove("kid");
            out.push((
                "no kid (header edited)".to_owned(),
                jwt::with_header(&valid, &no_kid),
                invalid,
            ));
        }
    }
    let t = now();
    let expired = with(
        &with(&member(), "exp", json!(t - 3600)),
        "iat",
        json!(t - 7200),
    );
    out.push((
        "expired an hour ago".to_owned(),
        gw.mint(&expired, None),
        "auth/expired_token",
    ));
    let future = with(&member(), "nbf", json!(t + 3600));
    out.push((
        "nbf an hour ahead".to_owned(),
        gw.mint(&future, None),
        invalid,
    ));
    let evil = with(&member(), "iss", json!("https://evil.example.com"));
    out.push(("wrong iss".to_owned(), gw.mint(&evil, None), invalid));
    let id_token = with(&member(), "token_use", json!("id"));
    out.push(("token_use=id".to_owned(), gw.mint(&id_token, None), invalid));
    let viewer = gw.mint(&human("Viewer", "app"), None);
    let mut escalated = jwt::payload(&viewer);
    escalated["role"] = json!("Owner");
    out.push((
        "tampered payload (Viewer -> Owner)".to_owned(),
        jwt::with_payload(&viewer, &escalated),
        invalid,
    ));
    let mut moved = payload.clone();
    moved["workspaceId"] = json!("ws-other");
    out.push((
        "tampered payload (workspaceId)".to_owned(),
        jwt::with_payload(&valid, &moved),
        invalid,
    ));
    out.push((
        "stripped signature (h.p.)".to_owned(),
        format!("{h}.{p}."),
        invalid,
    ));
    out.push(("two parts (h.p)".to_owned(), format!("{h}.{p}"), invalid));
    out.push(("garbage".to_owned(), "garbage".to_owned(), invalid));
    out.push((
        "three garbage parts".to_owned(),
        "a.b.c".to_owned(),
        invalid,
    ));
    out.push(("empty parts".to_owned(), "..".to_owned(), invalid));
    out.push((
        "valid token plus junk".to_owned(),
        format!("{valid}x"),
        invalid,
    ));
    out
}

#[tokio::test]
async fn hostile_tokens_are_401_invalid_token() {
    let gw = gw();
    let c = client();
    let jwks = send(&c, "GET", &gw.auth_url("/.well-known/jwks.json"), &[], None).await;
    jwks.assert_status(200);
    let jwks = jwks.json().expect("JWKS is JSON");
    let cases = hostile_tokens(gw, &jwks);
    let names: Vec<&str> = cases.iter().map(|(name, _, _)| name.as_str()).collect();
    eprintln!("hostile tokens: {names:?}");
    let mut failures = Vec::new();
    for (name, token, code) in &cases {
        let answer = send(&c, "GET", &gw.api_url(MISSIONS), &[bearer(token)], None).await;
        let challenge = answer.header("www-authenticate").unwrap_or_default();
        let leaked = parts_longer_than(token, 16).any(|part| answer.text().contains(part));
        if answer.status != 401
            || answer.code().as_deref() != Some(*code)
            || !challenge.to_ascii_lowercase().starts_with("bearer")
            || !challenge.contains(r#"error="invalid_token""#)
            || leaked
            || answer.forwarded()
        {
            failures.push(format!(
                "{name}: want 401 {code} with WWW-Authenticate Bearer error=\"invalid_token\"{}; got {answer}",
                if leaked { " and no token contents in the body" } else { "" }
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} hostile tokens mishandled:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn parts_longer_than(token: &str, len: usize) -> impl Iterator<Item = &str> {
    token.split('.').filter(move |p| p.len() > len)
}

#[tokio::test]
async fn empty_or_non_bearer_credentials_are_401() {
    for authorization in [
        "Bearer",
        "Bearer ",
        "Bearer    ",
        "Basic ZGVtby1wYXJ0bmVyOmRlbW8tcGFydG5lci1zZWNyZXQ=",
        "Token abc",
    ] {
        let answer = get_missions(Some(authorization)).await;
        assert_eq!(
            answer.status, 401,
            "Authorization {authorization:?}: {answer}"
        );
        assert!(
            !answer.forwarded(),
            "Authorization {authorization:?} must not be forwarded: {answer}"
        );
    }
}

/// A refused request without a body leaves its keep-alive connection usable (clients' pools
/// are not churned by 401s and 403s); a hostile one closes it.
#[tokio::test]
async fn refusals_keep_the_connection_and_hostile_requests_close_it() {
    use tokio::io::AsyncWriteExt;
    let gw = gw();
    let host = format!("Host: {}\r\n", gw.api);
    let mut stream = tokio::net::TcpStream::connect(gw.api).await.unwrap();
    stream
        .write_all(format!("GET {MISSIONS} HTTP/1.1\r\n{host}\r\n").as_bytes())
        .await
        .unwrap();
    let a = read_answer(&mut stream, "no token")
        .await
        .expect("an answer");
    assert_eq!(a.status, 401, "{a:?}");
    assert_ne!(a.header("connection"), Some("close"), "{a:?}");
    let token = gw.mint(&human("Member", "app"), None);
    stream
        .write_all(
            format!("GET {MISSIONS} HTTP/1.1\r\n{host}Authorization: Bearer {token}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let a = read_answer(&mut stream, "valid token, same connection")
        .await
        .expect("the connection still carries a request after a 401");
    assert_eq!(a.status, 200, "{a:?}");

    // A request the WAF blocks: answered, then the connection is closed.
    let mut stream = tokio::net::TcpStream::connect(gw.api).await.unwrap();
    stream
        .write_all(
            format!(
                "GET {MISSIONS}?q=%3Cscript%3Ealert(1)%3C/script%3E HTTP/1.1\r\n{host}Authorization: Bearer {token}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let a = read_answer(&mut stream, "blocked")
        .await
        .expect("an answer");
    assert_eq!(a.status, 403, "{a:?}");
    assert_eq!(a.header("connection"), Some("close"), "{a:?}");
    assert!(
        read_answer(&mut stream, "after the block").await.is_none(),
        "the connection stays open after a blocked request"
    );
}
