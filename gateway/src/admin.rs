//! The admin listener: liveness, readiness (policies, keys and backend all up), Prometheus
//! metrics and the policy status.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::Response;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;

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

/// An error answer's body: the envelope's `code`, `message` and `status`, with `extra` fields.
fn failure(status: u16, code: &str, message: &str, extra: serde_json::Value) -> Response<Vec<u8>> {
    let mut body = serde_json::json!({"code": code, "message": message, "status": status});
    if let (Some(body), serde_json::Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    json(status, body)
}

/// 500 for a reload task that did not finish (it panicked).
fn reload_failed() -> Response<Vec<u8>> {
    failure(
        500,
        "server/internal",
        "reload failed",
        serde_json::Value::Null,
    )
}

fn json(status: u16, value: serde_json::Value) -> Response<Vec<u8>> {
    let body = serde_json::to_vec(&value).unwrap_or_default();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .header("cache-control", "no-store")
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
            Ok(Err(errors)) => failure(
                422,
                "validation/invalid_policies",
                "the new policy set is invalid; the last good set keeps serving",
                serde_json::json!({
                    "errors": errors,
                    "activeVersion": self.authorizer.current().version,
                }),
            ),
            Err(_) => reload_failed(),
        }
    }

    /// The answer to one admin request (its head read, its body, if any, not).
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
                    Ok(Err(e)) => failure(
                        422,
                        "validation/invalid_ip_list",
                        &e,
                        serde_json::Value::Null,
                    ),
                    Err(_) => reload_failed(),
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
                    Ok(Err(e)) => failure(
                        422,
                        "validation/invalid_certificate",
                        &e,
                        serde_json::Value::Null,
                    ),
                    Err(_) => reload_failed(),
                }
            }
            "/admin/policies/reload" if session.req_header().method == http::Method::POST => {
                self.reload().await
            }
            "/admin/log-level" => log_level(session.req_header()),
            "/metrics" => {
                let text = crate::metrics::render();
                Response::builder()
                    .status(200)
                    .header("content-type", "text/plain; version=0.0.4")
                    .header("content-length", text.len())
                    .body(text.into_bytes())
                    .unwrap_or_default()
            }
            "/admin/waf/reload" | "/admin/tls/reload" | "/admin/policies/reload" => {
                method_not_allowed("POST")
            }
            _ => failure(
                404,
                "resource/not_found",
                "no such admin endpoint",
                serde_json::Value::Null,
            ),
        }
    }
}

/// `GET /admin/log-level`: the log filter in force; `POST /admin/log-level?level=FILTER` puts
/// another in force (tracing's env-filter syntax), until the next change or restart.
fn log_level(req: &pingora::http::RequestHeader) -> Response<Vec<u8>> {
    let invalid = |message: &str| {
        failure(
            422,
            "validation/invalid_input",
            message,
            serde_json::json!({"details": [{"field": "level", "message": message}]}),
        )
    };
    match req.method {
        http::Method::GET => match crate::log_level::current() {
            Some(level) => json(200, serde_json::json!({"level": level})),
            None => failure(
                404,
                "resource/not_found",
                "no reloadable log",
                serde_json::Value::Null,
            ),
        },
        http::Method::POST => {
            let level = req.uri.query().and_then(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "level")
                    .map(|(_, v)| v.into_owned())
            });
            let Some(level) = level else {
                return invalid("the query parameter `level` is required (e.g. ?level=debug)");
            };
            match crate::log_level::set(&level) {
                Ok(()) => json(
                    200,
                    serde_json::json!({"status": "changed", "level": level.trim()}),
                ),
                Err(e) => invalid(&e),
            }
        }
        _ => method_not_allowed("GET, POST"),
    }
}

/// 405 for an admin endpoint that takes only the `allow`ed methods (named in `Allow`).
fn method_not_allowed(allow: &'static str) -> Response<Vec<u8>> {
    let mut answer = failure(
        405,
        "validation/method_not_allowed",
        &format!("this admin endpoint takes {}", allow.replace(", ", " or ")),
        serde_json::Value::Null,
    );
    answer
        .headers_mut()
        .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
    answer
}

/// One admin request per call, as pingora's `ServeHttp` apps are served, but a head pingora
/// cannot parse is answered (with its canned 400, which `front::Restyled` turns into the
/// envelope, or 414/431 by the head's size) instead of the connection closing without a word;
/// every answer carries an `X-Request-Id` and the security headers, and error bodies are the
/// envelope (`requestId`, `timestamp` and `path` added here).
#[async_trait]
impl HttpServerApp for Admin {
    async fn process_new_http(
        self: &Arc<Self>,
        mut http: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match http.read_request().await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                if matches!(e.etype, pingora::ErrorType::InvalidHTTPHeader) {
                    let _ = http.respond_error(400).await;
                }
                return None;
            }
        }
        // In progress (for a graceful shutdown) until its answer has gone out.
        let _busy = crate::drain::Busy::new();
        http.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
        let request_id = crate::request_id::accept_or_generate(
            http.req_header()
                .headers
                .get(crate::request_id::HEADER)
                .map(|v| v.as_bytes()),
        );
        let answer = self.response(&mut http).await;
        let (parts, mut body) = answer.into_parts();
        if parts.status.as_u16() >= 400 {
            body = enveloped(body, &request_id, http.req_header().uri.path());
        }
        let mut header: ResponseHeader = parts.into();
        // The request id and the security headers every listener's answers carry (HSTS too
        // when a listener serves TLS).
        let _ = crate::respond::decorate(&mut header, &request_id);
        let _ = header.insert_header(http::header::CONTENT_LENGTH, body.len());
        if http.write_response_header(Box::new(header)).await.is_err() {
            return None;
        }
        if !body.is_empty() && http.write_response_body(body.into(), true).await.is_err() {
            return None;
        }
        let settings = HttpPersistentSettings::for_session(&http);
        match http.finish().await {
            Ok(reusable) => reusable.map(|s| ReusedHttpStream::from_reusable_stream(s, settings)),
            Err(_) => None,
        }
    }
}

/// An error body completed into the gateway's envelope: the request's id, the time and the
/// path added to its `code`, `message` and `status` (a body that is not a JSON object is left
/// as it is).
fn enveloped(body: Vec<u8>, request_id: &str, path: &str) -> Vec<u8> {
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Object(mut fields)) => {
            fields.insert("requestId".into(), request_id.into());
            fields.insert("timestamp".into(), crate::error::now_rfc3339().into());
            fields.insert("path".into(), path.into());
            serde_json::to_vec(&fields).unwrap_or(body)
        }
        _ => body,
    }
}
