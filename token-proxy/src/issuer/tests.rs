use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value, json};

use super::*;
use crate::config::ClientConfig;

const ID: &str = "demo-partner";
const SECRET: &str = "demo-partner-secret";
const FORM: &str = "application/x-www-form-urlencoded";

fn secret_hash() -> String {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| secret::hash_secret(SECRET).unwrap())
        .clone()
}

fn config() -> IssuerConfig {
    let mut claims = Map::new();
    claims.insert("workspaceId".into(), "ws-demo".into());
    claims.insert("accountId".into(), "acct-demo".into());
    claims.insert("platform".into(), "m2m".into());
    claims.insert("context".into(), "app".into());
    IssuerConfig {
        issuer: "http://127.0.0.1:8081".into(),
        public_base_url: "http://127.0.0.1:8081".into(),
        token_ttl_seconds: 3600,
        clients: vec![
            ClientConfig {
                client_id: ID.into(),
                secret_hash: secret_hash(),
                scopes: vec![
                    "app/read".into(),
                    "app/write".into(),
                    "dashboard/read".into(),
                ],
                claims,
                token_ttl_seconds: None,
                description: Some("demo".into()),
            },
            ClientConfig {
                client_id: "short-lived".into(),
                secret_hash: secret_hash(),
                scopes: vec!["app/read".into()],
                token_ttl_seconds: Some(120),
                ..Default::default()
            },
        ],
    }
}

fn open() -> (tempfile::TempDir, Issuer) {
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer::open(config(), dir.path()).unwrap();
    (dir, issuer)
}

fn shared() -> &'static Issuer {
    static ISSUER: OnceLock<(tempfile::TempDir, Issuer)> = OnceLock::new();
    &ISSUER.get_or_init(open).1
}

/// Verify `token` against the issuer's JWKS the way a relying party would.
fn verify(issuer: &Issuer, token: &str) -> Map<String, Value> {
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.alg, Algorithm::RS256);
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    let kid = header.kid.expect("kid");
    let jwks = issuer.jwks();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == json!(kid))
        .expect("the kid is published");
    let key =
        DecodingKey::from_rsa_components(jwk["n"].as_str().unwrap(), jwk["e"].as_str().unwrap())
            .unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&[issuer.issuer()]);
    validation.validate_aud = false;
    jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
        .unwrap()
        .claims
}

fn basic(id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
}

fn post(issuer: &Issuer, authorization: Option<&str>, body: &str) -> HttpAnswer {
    issuer.token(&TokenRequest {
        method: "POST",
        authorization,
        content_type: Some(FORM),
        body: body.as_bytes(),
    })
}

fn body(answer: &HttpAnswer) -> Value {
    serde_json::from_slice(&answer.body).unwrap()
}

/// Status, `error`, and whether a Basic challenge came with it; checks the common headers.
fn error_of(answer: &HttpAnswer) -> (u16, String, bool) {
    assert_token_headers(answer);
    let b = body(answer);
    assert!(b["error_description"].is_string(), "{b}");
    assert!(b.get("access_token").is_none());
    let challenge = answer.header("www-authenticate");
    if let Some(c) = challenge {
        assert_eq!(c, "Basic realm=\"cedargate\"");
    }
    (
        answer.status,
        b["error"].as_str().unwrap().to_string(),
        challenge.is_some(),
    )
}

fn assert_token_headers(answer: &HttpAnswer) {
    assert_eq!(
        answer.header("content-type"),
        Some("application/json;charset=UTF-8")
    );
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    assert_eq!(answer.header("pragma"), Some("no-cache"));
}

#[test]
fn issuer_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Issuer>();
}

#[test]
fn keys_persist_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let first = Issuer::open(config(), dir.path()).unwrap();
    let token = first.mint(Map::new(), None).unwrap();
    drop(first);
    let again = Issuer::open(config(), dir.path()).unwrap();
    assert_eq!(again.jwks()["keys"].as_array().unwrap().len(), 1);
    let kid = jsonwebtoken::decode_header(&token).unwrap().kid.unwrap();
    assert_eq!(
        again.jwks()["keys"][0]["kid"],
        json!(kid),
        "same key after reopen"
    );
    verify(&again, &token);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("keys")), 0o700);
        assert_eq!(mode(&dir.path().join("keys/rs256-00000001.pem")), 0o600);
    }
}

#[test]
fn jwks_is_public_and_well_formed() {
    let jwks = shared().jwks();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    let k = &keys[0];
    assert_eq!(
        (&k["kty"], &k["use"], &k["alg"]),
        (&json!("RSA"), &json!("sig"), &json!("RS256"))
    );
    assert_eq!(k["e"], json!("AQAB"));
    let n = URL_SAFE_NO_PAD.decode(k["n"].as_str().unwrap()).unwrap();
    assert_eq!((n.len(), n[0] != 0), (256, true));
    let obj = k.as_object().unwrap();
    assert_eq!(obj.len(), 6, "kty kid use alg n e only: {k}");
}

#[test]
fn discovery_document() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.public_base_url = "https://auth.example.com/".into();
    let d = Issuer::open(cfg, dir.path()).unwrap().discovery();
    assert_eq!(d["issuer"], json!("http://127.0.0.1:8081"));
    assert_eq!(
        d["jwks_uri"],
        json!("https://auth.example.com/.well-known/jwks.json")
    );
    assert_eq!(
        d["token_endpoint"],
        json!("https://auth.example.com/oauth2/token")
    );
    assert_eq!(d["grant_types_supported"], json!(["client_credentials"]));
    assert_eq!(
        d["token_endpoint_auth_methods_supported"],
        json!(["client_secret_basic", "client_secret_post"])
    );
    assert_eq!(d["id_token_signing_alg_values_supported"], json!(["RS256"]));
    assert_eq!(
        d["scopes_supported"],
        json!(["app/read", "app/write", "dashboard/read"])
    );
    assert_eq!(d["response_types_supported"], json!(["token"]));
}

#[test]
fn mint_fills_missing_claims() {
    let issuer = shared();
    let mut claims = Map::new();
    claims.insert("sub".into(), "u-1".into());
    claims.insert("role".into(), "Member".into());
    let token = issuer.mint(claims, Some(600)).unwrap();
    let c = verify(issuer, &token);
    assert_eq!(c["sub"], json!("u-1"));
    assert_eq!(c["role"], json!("Member"));
    assert_eq!(c["iss"], json!(issuer.issuer()));
    assert_eq!(c["token_use"], json!("access"));
    let iat = c["iat"].as_u64().unwrap();
    assert!(iat.abs_diff(now()) < 5);
    assert_eq!(c["exp"].as_u64().unwrap(), iat + 600);
    assert!(uuid::Uuid::parse_str(c["jti"].as_str().unwrap()).is_ok());
    let default_ttl = verify(issuer, &issuer.mint(Map::new(), None).unwrap());
    assert_eq!(
        default_ttl["exp"].as_u64().unwrap() - default_ttl["iat"].as_u64().unwrap(),
        3600
    );
}

#[test]
fn mint_keeps_given_claims() {
    let issuer = shared();
    let iat = now() - 100;
    let claims =
        json!({"iss": "http://other", "iat": iat, "jti": "j-1", "token_use": "id", "aud": "x"});
    let token = issuer
        .mint(claims.as_object().unwrap().clone(), Some(1000))
        .unwrap();
    let (_, payload) = token.split_once('.').unwrap();
    let payload = payload.split('.').next().unwrap();
    let c: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(c["iss"], json!("http://other"));
    assert_eq!(c["jti"], json!("j-1"));
    assert_eq!(c["token_use"], json!("id"));
    assert_eq!(c["exp"], json!(iat + 1000), "exp counts from the given iat");
    let expired = json!({"exp": 1});
    assert!(
        issuer
            .mint(expired.as_object().unwrap().clone(), None)
            .is_ok()
    );
    let bad = json!({"iat": "yesterday"});
    assert!(matches!(
        issuer.mint(bad.as_object().unwrap().clone(), None),
        Err(IssuerError::Claims(_))
    ));
}

#[test]
fn rotation_publishes_old_and_new_keys() {
    let (_dir, issuer) = open();
    let old = issuer.mint(Map::new(), None).unwrap();
    issuer.rotate_key().unwrap();
    let new = issuer.mint(Map::new(), None).unwrap();
    let kid = |t: &str| jsonwebtoken::decode_header(t).unwrap().kid.unwrap();
    assert_ne!(kid(&old), kid(&new));
    let jwks = issuer.jwks();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
    assert_eq!(
        jwks["keys"][0]["kid"],
        json!(kid(&new)),
        "the signer is listed first"
    );
    verify(&issuer, &old);
    verify(&issuer, &new);
}

#[test]
fn open_rejects_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.clients[0].claims.insert("scope".into(), "admin".into());
    let e = Issuer::open(cfg, dir.path()).unwrap_err().to_string();
    assert!(e.contains("`scope`"), "{e}");
}

#[test]
fn debug_output_holds_no_secrets() {
    let issuer = shared();
    let d = format!("{issuer:?}");
    assert!(
        d.contains(ID) && !d.contains("argon2") && !d.contains("PRIVATE"),
        "{d}"
    );
    let answer = post(
        issuer,
        Some(&basic(ID, SECRET)),
        "grant_type=client_credentials",
    );
    let token = body(&answer)["access_token"].as_str().unwrap().to_string();
    assert!(!format!("{answer:?}").contains(&token));
}

// ---- token endpoint ----------------------------------------------------------------------

#[test]
fn basic_success() {
    let issuer = shared();
    let answer = post(
        issuer,
        Some(&basic(ID, SECRET)),
        "grant_type=client_credentials&scope=app%2Fwrite+app%2Fread+app%2Fwrite",
    );
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_token_headers(&answer);
    assert!(answer.header("www-authenticate").is_none());
    let b = body(&answer);
    assert_eq!(b["token_type"], json!("Bearer"));
    assert_eq!(b["expires_in"], json!(3600));
    assert_eq!(
        b["scope"],
        json!("app/read app/write"),
        "deduplicated and sorted"
    );
    let c = verify(issuer, b["access_token"].as_str().unwrap());
    assert_eq!(c["iss"], json!("http://127.0.0.1:8081"));
    assert_eq!(c["sub"], json!(ID));
    assert_eq!(c["client_id"], json!(ID));
    assert_eq!(c["scope"], json!("app/read app/write"));
    assert_eq!(c["token_use"], json!("access"));
    assert_eq!(c["workspaceId"], json!("ws-demo"));
    assert_eq!(c["accountId"], json!("acct-demo"));
    assert_eq!(c["platform"], json!("m2m"));
    assert_eq!(c["context"], json!("app"));
    assert_eq!(
        c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(),
        3600
    );
    assert!(uuid::Uuid::parse_str(c["jti"].as_str().unwrap()).is_ok());
}

#[test]
fn post_success_with_all_scopes_and_client_ttl() {
    let issuer = shared();
    let answer = post(
        issuer,
        None,
        &format!("grant_type=client_credentials&client_id={ID}&client_secret={SECRET}"),
    );
    assert_eq!(answer.status, 200);
    let b = body(&answer);
    assert_eq!(
        b["scope"],
        json!("app/read app/write dashboard/read"),
        "absent scope: all"
    );

    let answer = post(
        issuer,
        Some(&basic("short-lived", SECRET)),
        "grant_type=client_credentials&scope=",
    );
    assert_eq!(answer.status, 200);
    let b = body(&answer);
    assert_eq!(
        (&b["expires_in"], &b["scope"]),
        (&json!(120), &json!("app/read"))
    );
    let c = verify(issuer, b["access_token"].as_str().unwrap());
    assert!(
        c.get("workspaceId").is_none(),
        "no tenant claims configured"
    );
}

#[test]
fn both_methods_at_once() {
    let answer = post(
        shared(),
        Some(&basic(ID, SECRET)),
        &format!("grant_type=client_credentials&client_id={ID}&client_secret={SECRET}"),
    );
    assert_eq!(error_of(&answer), (400, "invalid_request".into(), false));
}

#[test]
fn no_client_authentication() {
    let answer = post(shared(), None, "grant_type=client_credentials");
    assert_eq!(error_of(&answer), (401, "invalid_client".into(), true));
}

#[test]
fn wrong_secret_and_unknown_client_look_alike() {
    let issuer = shared();
    let wrong = post(
        issuer,
        Some(&basic(ID, "wrong")),
        "grant_type=client_credentials",
    );
    assert_eq!(error_of(&wrong), (401, "invalid_client".into(), true));
    let unknown = post(
        issuer,
        Some(&basic("nobody", SECRET)),
        "grant_type=client_credentials",
    );
    assert_eq!(error_of(&unknown), (401, "invalid_client".into(), true));
    assert_eq!(
        wrong.body, unknown.body,
        "same answer, so client ids cannot be probed"
    );
    assert!(
        !String::from_utf8_lossy(&wrong.body).contains("wrong"),
        "never echo the secret"
    );

    let posted = post(
        issuer,
        None,
        &format!("grant_type=client_credentials&client_id={ID}&client_secret=wrong"),
    );
    assert_eq!(
        error_of(&posted),
        (401, "invalid_client".into(), false),
        "no Basic challenge"
    );
}

#[test]
fn unknown_grant() {
    let answer = post(
        shared(),
        Some(&basic(ID, SECRET)),
        "grant_type=password&username=a&password=b",
    );
    assert_eq!(
        error_of(&answer),
        (400, "unsupported_grant_type".into(), false)
    );
    let missing = post(shared(), Some(&basic(ID, SECRET)), "scope=app%2Fread");
    assert_eq!(error_of(&missing), (400, "invalid_request".into(), false));
}

#[test]
fn scopes_the_client_lacks() {
    for scope in [
        "admin%2Feverything",
        "dashboard%2Fwrite",
        "app%2Fread+dashboard%2Fwrite",
        "a%09b",
    ] {
        let answer = post(
            shared(),
            Some(&basic(ID, SECRET)),
            &format!("grant_type=client_credentials&scope={scope}"),
        );
        assert_eq!(
            error_of(&answer),
            (400, "invalid_scope".into(), false),
            "{scope}"
        );
    }
}

#[test]
fn repeated_parameter() {
    let answer = post(
        shared(),
        Some(&basic(ID, SECRET)),
        "grant_type=client_credentials&scope=app%2Fread&scope=app%2Fwrite",
    );
    assert_eq!(error_of(&answer), (400, "invalid_request".into(), false));
}

#[test]
fn wrong_content_type_and_method() {
    let auth = basic(ID, SECRET);
    let json_body = shared().token(&TokenRequest {
        method: "POST",
        authorization: Some(&auth),
        content_type: Some("application/json"),
        body: br#"{"grant_type":"client_credentials"}"#,
    });
    assert_eq!(error_of(&json_body), (400, "invalid_request".into(), false));
    let get = shared().token(&TokenRequest {
        method: "GET",
        authorization: Some(&auth),
        content_type: None,
        body: b"",
    });
    assert_eq!(error_of(&get), (405, "invalid_request".into(), false));
    assert_eq!(get.header("allow"), Some("POST"));
    let charset = shared().token(&TokenRequest {
        method: "POST",
        authorization: Some(&auth),
        content_type: Some("application/x-www-form-urlencoded; charset=UTF-8"),
        body: b"grant_type=client_credentials",
    });
    assert_eq!(charset.status, 200);
}
