//! Micro-benchmarks of the request pipeline's stages, in process (`cargo bench -p gateway`):
//! JWT verification (cold and cached), the Cedar decision on the default pack (whole, and the
//! request building alone), the decision cache, the WAF on a typical request and on an 8 KB
//! body, a token-cache hit at the token endpoint, and the route match. Figures and the
//! end-to-end comparison: bench/README.md.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cedargate::authn::{Identity, KeyRing, KeySource, Verifier};
use cedargate::authz::{Authorizer, PolicyBundle, PolicySource, RequestFacts, decide, mapping};
use cedargate::bench_waf::{Samples, scan_once};
use cedargate::config::{Config, DecisionCacheSettings};
use cedargate::routes::{RouteMatch, split_path};
use cedargate::waf::detect::Detector;
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use token_proxy::cache::{CacheSettings, MemoryStore, NoEvents, SystemClock, TokenCache};
use token_proxy::{Issuer, TokenCall, TokenEndpoint, TokenSource};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn default_config() -> Config {
    Config::load(&workspace_root().join("config/cedargate.toml")).expect("the default config")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn claims(value: Value) -> serde_json::Map<String, Value> {
    value.as_object().cloned().expect("an object")
}

/// Five callers of one workspace (four human roles and an M2M client), as `bench authz` uses.
fn callers() -> Vec<Identity> {
    let mut out = Vec::new();
    for (role, ctx) in [
        ("Member", "app"),
        ("Manager", "dashboard"),
        ("Owner", "dashboard"),
        ("Viewer", "app"),
    ] {
        out.extend(Identity::from_claims(&claims(json!({
            "sub": format!("u-{role}"), "workspaceId": "ws-1", "role": role, "context": ctx,
            "platform": "web", "token_use": "access", "department": "dept-3",
            "onboardingCompleted": true}))));
    }
    out.extend(Identity::from_claims(&claims(json!({
        "client_id": "c", "sub": "c", "workspaceId": "ws-1", "platform": "m2m",
        "scope": "app/read app/write dashboard/read", "token_use": "access"}))));
    out
}

/// One match per route of the pack, with its parameters filled in.
fn route_matches(bundle: &PolicyBundle) -> Vec<RouteMatch> {
    bundle
        .routes
        .routes
        .iter()
        .filter_map(|route| {
            let path = route
                .template
                .replace("{workspaceId}", "ws-1")
                .replace("{departmentId}", "dept-3")
                .replace(['{', '}'], "");
            bundle.routes.find(&route.method, &split_path(&path).ok()?)
        })
        .collect()
}

fn jwt(c: &mut Criterion) {
    let config = default_config();
    let dir = tempfile::tempdir().expect("a temp dir");
    let issuer = Arc::new(
        Issuer::open(config.issuer.clone().expect("the issuer"), dir.path()).expect("issuer"),
    );
    let token = issuer
        .mint(
            claims(
                json!({"sub": "u-member", "workspaceId": "ws-demo", "role": "Member",
                           "context": "app", "platform": "web"}),
            ),
            Some(3600),
        )
        .expect("a token");
    let keys = KeyRing::new(vec![KeySource::Embedded(issuer)], Duration::from_secs(30));
    let verifier = Verifier::new(config.authn.clone(), keys);
    let rt = runtime();
    let mut g = c.benchmark_group("jwt");
    g.bench_function("verify RS256, cold (no cache)", |b| {
        b.iter(|| rt.block_on(verifier.verify_uncached(black_box(&token))))
    });
    rt.block_on(verifier.verify(&token)).expect("valid");
    g.bench_function("verify, cached identity", |b| {
        b.iter(|| rt.block_on(verifier.verify(black_box(&token))))
    });
    g.finish();
}

fn authz(c: &mut Criterion) {
    let dir = workspace_root().join("policies");
    let bundle = PolicyBundle::load(&dir).expect("the default pack");
    let matches = route_matches(&bundle);
    let ids = callers();
    let query: Vec<(String, String)> = vec![("limit".into(), "10".into())];
    let mut cases: Vec<(&Identity, RequestFacts<'_>)> = Vec::new();
    for id in &ids {
        for m in &matches {
            let facts = RequestFacts {
                route: m,
                query: &query,
                impersonated_user: None,
            };
            cases.push((id, facts));
        }
    }
    let mut g = c.benchmark_group("authz (default pack, 5 callers x every route)");
    let mut i = 0;
    g.bench_function("decide (uncached)", |b| {
        b.iter(|| {
            i = (i + 1) % cases.len();
            let (id, facts) = &cases[i];
            decide(&bundle, id, facts).allowed
        })
    });
    g.bench_function("build the Cedar request only", |b| {
        b.iter(|| {
            i = (i + 1) % cases.len();
            let (id, facts) = &cases[i];
            mapping::build(&bundle, id, facts).is_ok()
        })
    });
    let authorizer = Authorizer::load(
        PolicySource {
            dir,
            shadow_dir: None,
        },
        &DecisionCacheSettings {
            enabled: true,
            capacity: 100_000,
            ttl_seconds: 3600,
        },
    )
    .expect("the default pack");
    let current = authorizer.current();
    for (id, facts) in &cases {
        authorizer.authorize(&current, id, facts);
    }
    g.bench_function("decision cache hit", |b| {
        b.iter(|| {
            i = (i + 1) % cases.len();
            let (id, facts) = &cases[i];
            authorizer.authorize(&current, id, facts).cache_hit
        })
    });
    g.finish();
}

fn waf(c: &mut Criterion) {
    let detector = Detector::uncached();
    let remembering = Detector::new();
    let samples = Samples::default();
    let headers = samples.headers();
    let typical = samples.typical(&headers);
    let with_body = samples.with_body(&headers);
    let mut g = c.benchmark_group("waf");
    g.bench_function("typical GET (7 headers, JWT cookie, query)", |b| {
        b.iter(|| scan_once(&detector, black_box(&typical)))
    });
    g.bench_function("typical GET, its values seen before", |b| {
        b.iter(|| scan_once(&remembering, black_box(&typical)))
    });
    g.bench_function("POST with an 8 KB JSON body", |b| {
        b.iter(|| scan_once(&detector, black_box(&with_body)))
    });
    g.finish();
}

fn token_cache(c: &mut Criterion) {
    let config = default_config();
    let dir = tempfile::tempdir().expect("a temp dir");
    let issuer = Arc::new(
        Issuer::open(config.issuer.clone().expect("the issuer"), dir.path()).expect("issuer"),
    );
    let cache = TokenCache::new(
        CacheSettings::default(),
        Arc::new(MemoryStore::new(1000)),
        Arc::new(SystemClock),
        Arc::new(NoEvents),
    );
    let endpoint = TokenEndpoint::new(TokenSource::Embedded(issuer), Some(Arc::new(cache)));
    let mut headers = http::HeaderMap::new();
    // The demo client of the default config (base64 of "demo-partner:demo-partner-secret").
    headers.insert(
        http::header::AUTHORIZATION,
        http::HeaderValue::from_static("Basic ZGVtby1wYXJ0bmVyOmRlbW8tcGFydG5lci1zZWNyZXQ="),
    );
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    let call = TokenCall {
        method: http::Method::POST,
        headers,
        query: None,
        body: Bytes::from_static(b"grant_type=client_credentials&scope=app%2Fread"),
    };
    let rt = runtime();
    let first = rt.block_on(endpoint.token(call.clone()));
    assert_eq!(first.answer.status, 200, "the demo client gets a token");
    c.bench_function("token endpoint: cache hit (client_credentials)", |b| {
        b.iter(|| rt.block_on(endpoint.token(call.clone())).answer.status)
    });
}

fn routes(c: &mut Criterion) {
    let bundle = PolicyBundle::load(&workspace_root().join("policies")).expect("the default pack");
    let method = http::Method::GET;
    c.bench_function("route match (split + find, 37 routes)", |b| {
        b.iter(|| {
            let segments = split_path(black_box(
                "/dashboard/v1/workspaces/ws-demo/departments/engineering/reports",
            ))
            .ok()?;
            bundle
                .routes
                .find(&method, &segments)
                .map(|m| m.route_index)
        })
    });
}

criterion_group!(benches, jwt, authz, waf, token_cache, routes);
criterion_main!(benches);
