//! `cedargate serve`: assemble the listeners and run them under one pingora server.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{BackgroundService, background_service};
use pingora::services::listening::Service;
use token_proxy::Issuer;

use crate::admin::Admin;
use crate::audit::AuditSink;
use crate::auth_domain::AuthDomain;
use crate::authn::{KeyRing, KeySource, Verifier};
use crate::authz::{Authorizer, PolicyBundle, PolicySource};
use crate::config::{BackendStore, BackendTarget, CertFiles, Config};
use crate::forward::{self, AssertionSigner};
use crate::proxy::{Gateway, Upstream};
use crate::reload::Reloader;
use crate::tls::ReloadingCert;

/// How often the TLS certificate files are checked for a renewal.
const TLS_WATCH_INTERVAL: Duration = Duration::from_secs(5);

/// Listener and path overrides from the command line.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub api_addr: Option<std::net::SocketAddr>,
    pub auth_addr: Option<std::net::SocketAddr>,
    pub admin_addr: Option<std::net::SocketAddr>,
    pub policies_dir: Option<PathBuf>,
    /// Take over a running instance's listeners (pingora graceful upgrade).
    pub upgrade: bool,
}

/// Make the data dir (0700) if needed.
pub fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| anyhow::anyhow!("cannot create data dir {}: {e}", dir.display()))?;
    }
    Ok(())
}

/// Open the embedded issuer, when enabled.
pub fn open_issuer(config: &Config, data_dir: &Path) -> anyhow::Result<Option<Arc<Issuer>>> {
    match &config.issuer {
        Some(cfg) => Ok(Some(Arc::new(
            Issuer::open(cfg.clone(), data_dir)
                .map_err(|e| anyhow::anyhow!("embedded issuer: {e}"))?,
        ))),
        None => Ok(None),
    }
}

/// The embedded issuer for a command that mints or lists its keys; an error naming `config_file`
/// (the default config's path when none was given: the embedded config always enables it) when
/// that config disables it.
pub fn required_issuer(
    config: &Config,
    config_file: Option<&Path>,
    data_dir: &Path,
) -> anyhow::Result<Arc<Issuer>> {
    open_issuer(config, data_dir)?.ok_or_else(|| {
        let file = config_file.unwrap_or(Path::new(crate::DEFAULT_CONFIG));
        anyhow::anyhow!(
            "the embedded issuer is disabled in {} ([issuer] enabled = false)",
            file.display()
        )
    })
}

/// Load a policy directory, or explain every problem.
pub fn load_policies(dir: &Path) -> anyhow::Result<PolicyBundle> {
    PolicyBundle::load(dir).map_err(|errors| invalid_policies(dir, &errors))
}

/// Every problem of a refused policy set, one `file:line:col: message` per line.
fn invalid_policies(dir: &Path, errors: &[String]) -> anyhow::Error {
    anyhow::anyhow!(
        "the policies in {} are invalid:\n{}",
        dir.display(),
        errors.join("\n")
    )
}

/// jsonwebtoken panics on first use when its crypto backend is misconfigured: find out at
/// start-up, not on the first request.
fn jwt_self_test() -> anyhow::Result<()> {
    let key = b"cedargate-self-test-key-material";
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"exp": u64::MAX / 2}),
        &jsonwebtoken::EncodingKey::from_secret(key),
    )?;
    jsonwebtoken::decode::<serde_json::Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_secret(key),
        &jsonwebtoken::Validation::default(),
    )?;
    Ok(())
}

/// Start the embedded backend of a graceful upgrade's new process: on a thread of its own, it
/// waits for the running instance's backend to release the store (once it has drained), then
/// serves.
fn take_over_backend(
    config: backend::BackendConfig,
    slot: Arc<crate::drain::Backend>,
) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("backend-take-over".into())
        .spawn(move || match backend::take_over(config) {
            Ok(handle) => {
                tracing::info!("embedded backend taken over from the previous instance");
                slot.serving(handle);
            }
            Err(e) => tracing::error!(
                error = %e,
                "embedded backend: taking it over failed; requests needing it fail"
            ),
        })
        .map_err(|e| anyhow::anyhow!("embedded backend: {e}"))?;
    Ok(())
}

/// Hand mimalloc's free pages back to the OS: `force`, all of them now; otherwise those free
/// for longer than its purge delay.
pub(crate) fn release_free_memory(force: bool) {
    // SAFETY: mi_collect only walks and purges mimalloc's own free pages; it takes no pointer.
    unsafe { libmimalloc_sys::mi_collect(force) };
}

/// Hands memory freed while the process is otherwise idle back to the OS. mimalloc returns
/// freed memory after a delay (1 s), but only when an allocation or a collection in some
/// thread gets to it: without this, an idle gateway kept e.g. the 19 MiB of an argon2id
/// client-secret check (RSS 49 → 70 MB after one token request, for good).
struct AllocatorPurge;

/// How often [`AllocatorPurge`] runs (the purge itself is a no-op when nothing expired).
const ALLOCATOR_PURGE_INTERVAL: Duration = Duration::from_secs(2);

#[async_trait]
impl BackgroundService for AllocatorPurge {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(ALLOCATOR_PURGE_INTERVAL) => {}
            }
            // Not forced: it purges what has been free for the delay.
            release_free_memory(false);
        }
    }
}

struct JwksRefresher {
    verifier: Arc<Verifier>,
}

#[async_trait]
impl BackgroundService for JwksRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if !self.verifier.keys().has_remote() {
            return;
        }
        loop {
            self.verifier.keys().refresh().await;
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(Duration::from_secs(300)) => {}
            }
        }
    }
}

/// A pingora proxy service whose answer to unparsable requests is the gateway's envelope
/// ([`crate::front`]), its connections counted under the listener `name`; `counted`: those
/// refusals count in the API metrics.
fn enveloped_proxy<SV>(
    conf: &Arc<pingora::server::configuration::ServerConf>,
    inner: SV,
    name: &str,
    counted: bool,
    rules: crate::front::HeadRules,
) -> Service<crate::front::Enveloped<pingora::proxy::HttpProxy<SV>>>
where
    SV: pingora::proxy::ProxyHttp + Send + Sync + 'static,
    SV::CTX: Send + Sync,
{
    let mut proxy = pingora::proxy::HttpProxy::new(inner, conf.clone());
    proxy.handle_init_modules();
    Service::new(
        name.to_string(),
        crate::front::Enveloped::new(proxy, name, counted, rules),
    )
}

/// Add a plain or TLS (1.2/1.3, rustls) endpoint to a service; a TLS endpoint's certificate
/// joins `certs`, the ones a `Reloader` and `POST /admin/tls/reload` renew.
fn listen<A>(
    service: &mut Service<A>,
    addr: std::net::SocketAddr,
    tls: Option<&CertFiles>,
    certs: &mut Vec<Arc<ReloadingCert>>,
) -> anyhow::Result<()> {
    match tls {
        None => service.add_tcp(&addr.to_string()),
        Some(t) => {
            let cert = ReloadingCert::new(t).map_err(|e| anyhow::anyhow!("TLS on {addr}: {e}"))?;
            let settings = cert
                .settings()
                .map_err(|e| anyhow::anyhow!("TLS on {addr}: {e}"))?;
            service.add_tls_with_settings(&addr.to_string(), None, settings);
            certs.push(cert);
        }
    }
    Ok(())
}

/// Run the gateway until a signal stops it.
pub fn run(mut config: Config, data_dir: PathBuf, overrides: Overrides) -> anyhow::Result<()> {
    if let Some(a) = overrides.api_addr {
        config.listeners.api = a;
    }
    if let Some(a) = overrides.auth_addr {
        config.listeners.auth = a;
    }
    if let Some(a) = overrides.admin_addr {
        config.listeners.admin = a;
    }
    if let Some(p) = overrides.policies_dir {
        config.policies_dir = p;
    }
    // pingora retries a taken address for 30 s (while the other listeners serve) before it
    // gives up: a plain bind first fails at once, naming the address. An upgrade takes the
    // running instance's sockets instead.
    let listeners = [
        ("api", config.listeners.api),
        ("auth", config.listeners.auth),
        ("admin", config.listeners.admin),
    ];
    for (name, addr) in listeners.into_iter().filter(|_| !overrides.upgrade) {
        std::net::TcpListener::bind(addr)
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr} ({name} listener): {e}"))?;
    }
    jwt_self_test().map_err(|e| anyhow::anyhow!("JWT crypto self-test failed: {e}"))?;
    prepare_data_dir(&data_dir)?;

    let source = PolicySource {
        dir: config.policies_dir.clone(),
        shadow_dir: config.policies.shadow_dir.clone(),
    };
    let authorizer = Arc::new(
        Authorizer::load(source, &config.decision_cache)
            .map_err(|errors| invalid_policies(&config.policies_dir, &errors))?,
    );
    tracing::info!(version = %authorizer.current().version, dir = %config.policies_dir.display(), "policies loaded");
    let audit = AuditSink::open(&config.audit).map_err(|e| anyhow::anyhow!("audit output: {e}"))?;
    let issuer = open_issuer(&config, &data_dir)?;

    let mut sources = Vec::new();
    if let (Some(issuer), true) = (&issuer, config.authn.trust_embedded_issuer) {
        sources.push(KeySource::Embedded(issuer.clone()));
    }
    for t in &config.authn.trusted_issuers {
        sources.push(KeySource::Remote {
            issuer: t.issuer.clone(),
            jwks_uri: t.jwks_uri.clone(),
        });
    }
    let keys = KeyRing::new(
        sources,
        Duration::from_secs(config.authn.jwks_refetch_interval_seconds),
    );
    let verifier = Arc::new(Verifier::new(config.authn.clone(), keys));

    let secret = forward::load_or_create_secret(&data_dir)
        .map_err(|e| anyhow::anyhow!("assertion key in {}: {e}", data_dir.display()))?;
    // An external backend serves from the start; the embedded one once it has been spawned.
    let embedded_backend = Arc::new(crate::drain::Backend::new(matches!(
        config.backend,
        BackendTarget::External { .. }
    )));
    let upstream = match &config.backend {
        BackendTarget::Embedded {
            socket,
            store,
            idempotency_ttl,
        } => {
            let path = if socket.is_absolute() {
                socket.clone()
            } else {
                data_dir.join(socket)
            };
            let backend_config = backend::BackendConfig {
                data_dir: data_dir.clone(),
                listen: backend::Listen::Unix(path.clone()),
                assertion_key: secret.clone(),
                store: match store {
                    BackendStore::Embedded => backend::StoreChoice::Embedded,
                    BackendStore::DynamoDb => {
                        let settings = config.dynamodb.backend_store();
                        backend::StoreChoice::DynamoDb {
                            client: token_proxy::cache::dynamodb::client(&settings)
                                .map_err(|e| anyhow::anyhow!("backend DynamoDB store: {e}"))?,
                            table: settings.table,
                            create_table: config.dynamodb.create_tables_on_start,
                        }
                    }
                },
                idempotency_ttl: *idempotency_ttl,
            };
            if overrides.upgrade {
                // The running instance's backend holds the store and serves on the socket
                // until it has drained; this one starts then.
                take_over_backend(backend_config, embedded_backend.clone())?;
            } else {
                let handle = backend::spawn(backend_config)
                    .map_err(|e| anyhow::anyhow!("embedded backend: {e}"))?;
                embedded_backend.serving(handle);
            }
            Upstream::Unix(path.to_string_lossy().into_owned())
        }
        BackendTarget::External { address } => Upstream::Tcp(*address),
    };

    let conf = ServerConf {
        threads: config.server.threads,
        work_stealing: config.server.work_stealing,
        grace_period_seconds: Some(config.server.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(config.server.graceful_shutdown_timeout_seconds),
        pid_file: data_dir
            .join("cedargate.pid")
            .to_string_lossy()
            .into_owned(),
        upgrade_sock: data_dir
            .join("cedargate-upgrade.sock")
            .to_string_lossy()
            .into_owned(),
        ..ServerConf::default()
    };
    // The pid file lets operators signal this instance (`kill -HUP $(cat data/cedargate.pid)`).
    std::fs::write(
        data_dir.join("cedargate.pid"),
        format!("{}\n", std::process::id()),
    )
    .map_err(|e| anyhow::anyhow!("cannot write the pid file in {}: {e}", data_dir.display()))?;
    let any_tls = [
        &config.listeners.api_tls,
        &config.listeners.auth_tls,
        &config.listeners.admin_tls,
    ]
    .iter()
    .any(|t| t.is_some());
    crate::respond::TLS_ENABLED.store(any_tls, std::sync::atomic::Ordering::Relaxed);
    let opt = pingora::server::configuration::Opt {
        upgrade: overrides.upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    let conf = server.configuration.clone();

    let waf = Arc::new(
        crate::waf::Waf::new(config.waf.clone()).map_err(|e| anyhow::anyhow!("waf: {e}"))?,
    );
    let limiter = crate::ratelimit::RateLimiter::new(&config.rate_limit).map(Arc::new);
    let gateway = Gateway {
        verifier: verifier.clone(),
        authorizer: authorizer.clone(),
        signer: AssertionSigner::new(&secret, config.assertion_ttl_seconds),
        upstream: upstream.clone(),
        audit,
        cors: config.cors.clone(),
        pipeline: config.pipeline,
        waf: waf.clone(),
        directory: crate::delegation::Directory::new(
            &upstream,
            AssertionSigner::new(&secret, config.assertion_ttl_seconds),
            embedded_backend.clone(),
        )?,
        limiter: limiter.clone(),
        keepalive_seconds: config.server.keepalive_timeout_seconds,
        backend: embedded_backend.clone(),
    };
    if !config.pipeline {
        tracing::warn!(
            "pipeline.enabled = false: the api listener forwards everything unchecked (benchmark baseline only)"
        );
    }
    let mut certs = Vec::new();
    let tls_certs = Arc::new(std::sync::OnceLock::new());
    let head_rules = crate::front::HeadRules {
        timeout: std::time::Duration::from_secs(config.server.request_head_timeout_seconds),
        max_url_bytes: config.waf.max_url_bytes,
        max_header_count: config.waf.max_header_count,
        max_header_bytes: config.waf.max_header_bytes,
    };
    let mut api = enveloped_proxy(&conf, gateway, "api", true, head_rules);
    listen(
        &mut api,
        config.listeners.api,
        config.listeners.api_tls.as_ref(),
        &mut certs,
    )?;

    let auth_domain = AuthDomain::new(&config, issuer.clone(), waf.clone(), limiter)?;
    let mut auth = enveloped_proxy(&conf, auth_domain, "auth", false, head_rules);
    listen(
        &mut auth,
        config.listeners.auth,
        config.listeners.auth_tls.as_ref(),
        &mut certs,
    )?;

    // Wrapped as the other listeners are: pingora's canned answers get the envelope, and a
    // request head must arrive in time.
    let mut admin = Service::new(
        "admin".to_string(),
        crate::front::Enveloped::new(
            Admin {
                authorizer: authorizer.clone(),
                verifier: verifier.clone(),
                upstream,
                waf: waf.clone(),
                certs: tls_certs.clone(),
            },
            "admin",
            false,
            head_rules,
        ),
    );
    listen(
        &mut admin,
        config.listeners.admin,
        config.listeners.admin_tls.as_ref(),
        &mut certs,
    )?;
    let certs = Arc::new(certs);
    let _ = tls_certs.set(certs.clone());

    server.add_service(api);
    server.add_service(auth);
    server.add_service(admin);
    server.add_service(background_service(
        "signing key reload",
        crate::auth_domain::KeyReloader { issuer },
    ));
    let waf_settings = waf.settings();
    if waf_settings.ip_allow_file.is_some() || waf_settings.ip_deny_file.is_some() {
        let watch = waf_settings
            .ip_lists_watch
            .then(|| Duration::from_millis(waf_settings.ip_lists_watch_interval_ms));
        server.add_service(background_service(
            "ip list reload",
            Reloader::new("ip lists", waf, watch),
        ));
    }
    for cert in certs.iter() {
        server.add_service(background_service(
            "tls reload",
            Reloader::new("tls", cert.clone(), Some(TLS_WATCH_INTERVAL)),
        ));
    }
    server.add_service(background_service("allocator purge", AllocatorPurge));
    server.add_service(background_service(
        "jwks refresh",
        JwksRefresher { verifier },
    ));
    let watch = config
        .policies
        .watch
        .then(|| Duration::from_millis(config.policies.watch_interval_ms));
    server.add_service(background_service(
        "policy reload",
        Reloader::new("policies", authorizer, watch),
    ));
    tracing::info!(
        api = %config.listeners.api,
        auth = %config.listeners.auth,
        admin = %config.listeners.admin,
        "cedargate listening"
    );
    // Startup (policies, WAF rules, the backend's load) left freed memory in this thread's
    // allocator heap; hand it back before serving, so the idle process stays small.
    release_free_memory(true);
    crate::drain::exit_when_drained(
        server.watch_execution_phase(),
        embedded_backend,
        Duration::from_secs(config.server.grace_period_seconds),
    );
    server.run(pingora::server::RunArgs::default());
    // Lines queued during the last milliseconds of the drain are flushed on the way out.
    crate::drain::exit(0)
}
