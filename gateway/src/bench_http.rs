//! `cedargate bench backend` and `cedargate bench http-mix`: what bench/run.sh needs to load the
//! backend alone, nginx and cedargate with one request mix (not a test).
//!
//! The backend trusts only the gateway's signed assertion, so a mix line carries both a bearer
//! token (what the full pipeline verifies, then replaces by its own assertion) and a pre-signed
//! assertion (what the backend checks when it is reached without the pipeline: directly, through
//! nginx, or through cedargate with `[pipeline] enabled = false`). Every target thus answers the
//! same requests with the same backend work.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use serde_json::{Value, json};

use crate::authn::Identity;
use crate::config::Config;
use crate::forward::{AssertionSigner, load_or_create_secret};
use crate::{DEFAULT_CONFIG, serve};

/// Serve the embedded backend alone on TCP.
#[derive(Args)]
pub struct BackendArgs {
    /// TCP address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// Data directory: the store (`backend/`) and the assertion secret (`assertion.key`).
    #[arg(long)]
    data_dir: PathBuf,
}

/// Run the embedded backend on `--listen` until the process is killed.
pub fn backend(args: BackendArgs) -> anyhow::Result<()> {
    serve::prepare_data_dir(&args.data_dir)?;
    let secret = load_or_create_secret(&args.data_dir)?;
    let handle = backend::spawn(backend::BackendConfig {
        data_dir: args.data_dir.clone(),
        listen: backend::Listen::Tcp(args.listen),
        assertion_key: secret,
        store: backend::StoreChoice::Embedded,
        idempotency_ttl: std::time::Duration::from_secs(300),
    })
    .map_err(|e| anyhow::anyhow!("backend: {e}"))?;
    eprintln!("backend listening on {:?}", handle.listen());
    loop {
        std::thread::park();
    }
}

/// Print the request mix of bench/run.sh.
#[derive(Args)]
pub struct MixArgs {
    /// Configuration (its embedded issuer signs the tokens).
    #[arg(long, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Data directory of the gateway that verifies the tokens (its issuer keys).
    #[arg(long)]
    data_dir: PathBuf,
    /// Data directory holding the backend's `assertion.key`.
    #[arg(long)]
    assertion_data_dir: PathBuf,
    /// Lifetime of tokens and assertions, in seconds (longer than the whole run).
    #[arg(long, default_value_t = 1800)]
    ttl: u64,
}

/// Callers of the demo workspace and the GETs each of them is allowed.
fn callers() -> Vec<(Value, &'static [&'static str])> {
    const APP: &[&str] = &[
        "/app/v1/workspaces/ws-demo/missions?limit=10",
        "/app/v1/workspaces/ws-demo/missions/mission-welcome",
        "/app/v1/workspaces/ws-demo/badges",
        "/app/v1/workspaces/ws-demo/levels",
        "/app/v1/workspaces/ws-demo/points",
        "/app/v1/workspaces/ws-demo/catalog?limit=5",
        "/app/v1/workspaces/ws-demo/catalog/item-intro",
        "/app/v1/workspaces/ws-demo/leaderboards",
        "/app/v1/workspaces/ws-demo/leaderboards/leaderboard-weekly",
        "/app/v1/workspaces/ws-demo/groups",
    ];
    const M2M: &[&str] = &[
        "/app/v1/workspaces/ws-demo/missions?limit=10",
        "/app/v1/workspaces/ws-demo/badges",
        "/app/v1/workspaces/ws-demo/catalog?limit=5",
        "/app/v1/workspaces/ws-demo/leaderboards",
    ];
    const DASHBOARD: &[&str] = &[
        "/dashboard/v1/workspaces/ws-demo/missions",
        "/dashboard/v1/workspaces/ws-demo/users",
        "/dashboard/v1/workspaces/ws-demo/users/u-member",
        "/dashboard/v1/workspaces/ws-demo/leaderboards",
        "/dashboard/v1/workspaces/ws-demo/catalog",
    ];
    let human = |sub: &str, role: &str, context: &str, platform: &str| {
        json!({"sub": sub, "workspaceId": "ws-demo", "role": role, "context": context,
               "platform": platform, "department": "engineering", "onboardingCompleted": true})
    };
    vec![
        (human("u-member", "Member", "app", "web"), APP),
        (human("u-viewer", "Viewer", "app", "mobile"), APP),
        (human("u-manager", "Manager", "dashboard", "web"), DASHBOARD),
        (
            json!({"sub": "demo-partner", "client_id": "demo-partner", "workspaceId": "ws-demo",
                   "platform": "m2m", "context": "app", "scope": "app/read app/write dashboard/read"}),
            M2M,
        ),
    ]
}

/// Print one tab-separated line per request: method, path and query, bearer token, assertion.
pub fn mix(args: MixArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    serve::prepare_data_dir(&args.data_dir)?;
    let issuer = serve::required_issuer(&config, Some(&args.config), &args.data_dir)?;
    let signer = AssertionSigner::new(&load_or_create_secret(&args.assertion_data_dir)?, args.ttl);
    for (claims, paths) in callers() {
        let claims = claims.as_object().cloned().unwrap_or_default();
        let token = issuer
            .mint(claims.clone(), Some(args.ttl))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut verified = claims;
        verified.insert("token_use".into(), "access".into());
        let identity = Identity::from_claims(&verified)
            .ok_or_else(|| anyhow::anyhow!("claims without a subject"))?;
        for path_and_query in paths {
            let path = path_and_query.split('?').next().unwrap_or_default();
            let assertion = signer
                .sign(&identity, None, "GET", path, "bench")
                .ok_or_else(|| anyhow::anyhow!("cannot sign an assertion"))?;
            println!("GET\t{path_and_query}\t{token}\t{assertion}");
        }
    }
    Ok(())
}
