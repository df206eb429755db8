//! A stand-in backend for tests that need to see what the gateway forwards: it answers every
//! request with `{"method","path","len","sha256","assertion"}` of what it received (the
//! assertion's claims, decoded without verification), and serves a small user directory at
//! `/internal/v1/workspaces/{ws}/users/{id}` for the delegation stage.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use serde_json::json;
use sha2::{Digest, Sha256};

/// What the echo backend saw.
#[derive(Default)]
pub struct Seen {
    /// Requests whose body arrived complete.
    pub complete: AtomicUsize,
    /// Directory lookups answered.
    pub lookups: AtomicUsize,
}

/// The users the directory knows: (workspace, user id).
pub const DIRECTORY: [(&str, &str); 3] = [
    ("ws-demo", "u-alice"),
    ("ws-demo", "u-bob"),
    ("ws-other", "u-carol"),
];

fn directory_answer(path: &str) -> Option<(u16, serde_json::Value)> {
    let rest = path.strip_prefix("/internal/v1/workspaces/")?;
    let (ws, user) = rest.split_once("/users/")?;
    Some(
        match DIRECTORY.iter().find(|(w, u)| *w == ws && *u == user) {
            Some(_) => (
                200,
                json!({"userId": user, "principalId": format!("p-{user}"), "workspaceId": ws,
                   "lang": "fr", "timezone": "Europe/Paris", "status": "active"}),
            ),
            None => (404, json!({"code": "resource/not_found"})),
        },
    )
}

fn assertion_claims(req: &hyper::Request<hyper::body::Incoming>) -> serde_json::Value {
    use base64::Engine as _;
    req.headers()
        .get("x-cedargate-assertion")
        .and_then(|v| v.to_str().ok())
        .and_then(|jwt| jwt.split('.').nth(1))
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Start the echo backend on a free loopback port (it lives as long as the runtime).
pub async fn echo_backend() -> (SocketAddr, Arc<Seen>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local_addr");
    let seen = Arc::new(Seen::default());
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let seen = seen2.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let method = req.method().to_string();
                        let path = req.uri().path().to_string();
                        let assertion = assertion_claims(&req);
                        let body = req.into_body().collect().await.map(|b| b.to_bytes());
                        let (status, reply) = if let Some(answer) = directory_answer(&path) {
                            seen.lookups.fetch_add(1, Ordering::SeqCst);
                            answer
                        } else {
                            match body {
                                Ok(b) => {
                                    seen.complete.fetch_add(1, Ordering::SeqCst);
                                    (
                                        200,
                                        json!({"method": method, "path": path, "len": b.len(),
                                               "sha256": hex(&Sha256::digest(&b)), "assertion": assertion}),
                                    )
                                }
                                Err(_) => (400, json!({"error": "incomplete body"})),
                            }
                        };
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(reply.to_string())))
                                .expect("response"),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// The default config (per-IP limit raised) pointed at an external backend at `backend`.
pub fn external_backend_config_text(backend: SocketAddr) -> String {
    crate::gateway::unlimited_config_text()
        .replace(
            "mode = \"embedded\"",
            &format!("mode = \"external\"\naddress = \"{backend}\""),
        )
        .replace("socket = \"backend.sock\"", "")
}
