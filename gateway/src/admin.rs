//! The admin listener: liveness, readiness (policies, keys and backend all up), Prometheus
//! metrics and the policy status.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::authn::Verifier;
use crate::authz::Authorizer;
use crate::proxy::Upstream;

/// Shared state of the admin listener.
pub struct Admin {
    pub authorizer: Arc<Authorizer>,
    pub verifier: Arc<Verifier>,
    pub upstream: Upstream,
    pub waf: Arc<crate::waf::Waf>,
    /// The TLS listeners' certificates (set once every listener is configured).
    pub certs: Arc<std::sync::OnceLock<Arc<Vec<Arc<crate::tls::ReloadingCert>>>>>,
}

fn json(status: u16, value: serde_json::Value) -> Response<Vec<u8>> {
    let body = serde_json::to_vec(&value).unwrap_or_default();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .header("x-content-type-options", "nosniff")
        .body(body)
        .unwrap_or_default()
}

/// Whether the backend accepts connections.
async fn backend_up(upstream: &Upstream) -> bool {
    let attempt = async {
        match upstream {
            Upstream::Unix(path) => tokio::net::UnixStream::connect(path).await.is_ok(),
            Upstream::Tcp(addr) => tokio::net::TcpStream::connect(addr).await.is_ok(),
        }
    };
    tokio::time::timeout(Duration::from_millis(500), attempt)
        .await
        .unwrap_or(false)
}

impl Admin {
    async fn readiness(&self) -> Response<Vec<u8>> {
        let bundle = self.authorizer.current();
        if self.verifier.keys().is_empty() {
            self.verifier.keys().refresh_if_due().await;
        }
        let keys = !self.verifier.keys().is_empty();
        let backend = backend_up(&self.upstream).await;
        let checks = serde_json::json!({
            "policies": {"ok": true, "version": bundle.version},
            "keys": {"ok": keys, "count": self.verifier.keys().len()},
            "backend": {"ok": backend},
        });
        let ready = keys && backend;
        json(
            if ready { 200 } else { 503 },
            serde_json::json!({"status": if ready { "ready" } else { "not_ready" }, "checks": checks}),
        )
    }

    fn policies(&self) -> Response<Vec<u8>> {
        json(200, self.authorizer.status_json())
    }

    async fn reload(&self) -> Response<Vec<u8>> {
        let authorizer = self.authorizer.clone();
        let result = tokio::task::spawn_blocking(move || authorizer.reload("admin API")).await;
        match result {
            Ok(Ok(version)) => json(
                200,
                serde_json::json!({"status": "reloaded", "version": version}),
            ),
            Ok(Err(errors)) => json(
                422,
                serde_json::json!({
                    "code": "validation/invalid_policies",
                    "message": "the new policy set is invalid; the last good set keeps serving",
                    "status": 422,
                    "errors": errors,
                    "activeVersion": self.authorizer.current().version,
                }),
            ),
            Err(_) => json(
                500,
                serde_json::json!({"code": "server/internal", "message": "reload failed", "status": 500}),
            ),
        }
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        match path.as_str() {
            "/healthz" => json(200, serde_json::json!({"status": "ok"})),
            "/readyz" => self.readiness().await,
            "/admin/policies" => self.policies(),
            "/admin/waf/reload" if session.req_header().method == http::Method::POST => {
                let waf = self.waf.clone();
                match tokio::task::spawn_blocking(move || waf.reload_ip_lists("admin API")).await {
                    Ok(Ok((allow, deny))) => json(
                        200,
                        serde_json::json!({"status": "reloaded", "allowRanges": allow, "denyRanges": deny}),
                    ),
                    Ok(Err(e)) => json(
                        422,
                        serde_json::json!({"code": "validation/invalid_ip_list", "message": e, "status": 422}),
                    ),
                    Err(_) => json(
                        500,
                        serde_json::json!({"code": "server/internal", "message": "reload failed", "status": 500}),
                    ),
                }
            }
            "/admin/tls/reload" if session.req_header().method == http::Method::POST => {
                let certs = self.certs.get().cloned().unwrap_or_default();
                let result = tokio::task::spawn_blocking(move || {
                    certs
                        .iter()
                        .map(|c| c.reload("admin API"))
                        .collect::<Result<Vec<()>, String>>()
                        .map(|v| v.len())
                })
                .await;
                match result {
                    Ok(Ok(n)) => json(
                        200,
                        serde_json::json!({"status": "reloaded", "certificates": n}),
                    ),
                    Ok(Err(e)) => json(
                        422,
                        serde_json::json!({"code": "validation/invalid_certificate", "message": e, "status": 422}),
                    ),
                    Err(_) => json(
                        500,
                        serde_json::json!({"code": "server/internal", "message": "reload failed", "status": 500}),
                    ),
                }
            }
            "/admin/policies/reload" if session.req_header().method == http::Method::POST => {
                self.reload().await
            }
            "/metrics" => {
                let text = crate::metrics::render();
                Response::builder()
                    .status(200)
                    .header("content-type", "text/plain; version=0.0.4")
                    .header("x-content-type-options", "nosniff")
                    .header("content-length", text.len())
                    .body(text.into_bytes())
                    .unwrap_or_default()
            }
            _ => json(
                404,
                serde_json::json!({"code": "resource/not_found", "message": "no such admin endpoint", "status": 404}),
            ),
        }
    }
}
