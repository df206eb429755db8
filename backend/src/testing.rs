//! Test helpers: signed assertions and a real server on a loopback port with a seeded store.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;

use crate::assertion::{ASSERTION_AUDIENCE, ASSERTION_HEADER, ASSERTION_ISSUER, Assertion};
use crate::server::{App, serve};
use crate::store::{EmbeddedStore, Store};

/// The shared secret of the tests.
pub const KEY: &[u8] = b"test-assertion-key-0123456789abcdef";

/// A fresh assertion for a premium-less Member `u-member` of `ws`, bound to `method path`.
pub fn assertion(method: &str, path: &str, ws: &str) -> Assertion {
    let now = crate::clock::unix_now();
    Assertion {
        iss: ASSERTION_ISSUER.into(),
        aud: ASSERTION_AUDIENCE.into(),
        iat: now,
        exp: now + 30,
        htm: method.into(),
        htu: path.into(),
        rid: "rid-test".into(),
        sub: "u-member".into(),
        workspace_id: ws.into(),
        role: Some("Member".into()),
        platform: "web".into(),
        scope: String::new(),
        client_id: None,
        user_id: Some("u-member".into()),
        department: Some("engineering".into()),
        premium: false,
        onboarding_completed: true,
        context: Some("app".into()),
        impersonated_by: None,
        lang: None,
        timezone: None,
    }
}

/// Make `a` an M2M client's assertion.
pub fn m2m(a: &mut Assertion) {
    a.sub = "svc-test".into();
    a.client_id = Some("svc-test".into());
    a.user_id = None;
    a.role = None;
    a.department = None;
    a.platform = "m2m".into();
}

/// `a` signed with [`KEY`].
pub fn sign(a: &Assertion) -> String {
    sign_with(a, KEY, Algorithm::HS256)
}

/// `a` signed with `key` and `alg`.
pub fn sign_with(a: &Assertion, key: &[u8], alg: Algorithm) -> String {
    jsonwebtoken::encode(&Header::new(alg), a, &EncodingKey::from_secret(key)).unwrap()
}

/// A served backend over a seeded store in a temp dir.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The data dir (kept alive with the server).
    _dir: tempfile::TempDir,
}

/// One answer.
#[derive(Debug)]
pub struct Answer {
    /// The status.
    pub status: u16,
    /// The headers.
    pub headers: HeaderMap,
    /// The body as JSON (`Null` when empty or not JSON).
    pub json: Value,
}

impl Answer {
    /// The envelope's `code`.
    pub fn code(&self) -> &str {
        self.json["code"].as_str().unwrap_or("")
    }
}

/// Start a server on 127.0.0.1:0.
pub async fn start() -> TestServer {
    start_with(|store| store).await
}

/// Start a server on 127.0.0.1:0 whose store is `wrap` of the seeded embedded store.
pub async fn start_with(wrap: impl FnOnce(Arc<dyn Store>) -> Arc<dyn Store>) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("backend"), crate::seed::demo).unwrap();
    let app = Arc::new(App::new(wrap(Arc::new(store)), KEY));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, app));
    TestServer { addr, _dir: dir }
}

impl TestServer {
    /// Send a raw request: `token` as the assertion header, `body` as is.
    pub async fn raw(
        &self,
        method: &str,
        target: &str,
        token: Option<&str>,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(target)
            .header("host", "backend");
        if let Some(t) = token {
            req = req.header(ASSERTION_HEADER, t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body))).unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    /// Call `method target` as the default Member of ws-demo changed by `who`, with a JSON body.
    pub async fn call(
        &self,
        method: &str,
        target: &str,
        who: impl FnOnce(&mut Assertion),
        body: Option<Value>,
    ) -> Answer {
        let path = target.split('?').next().unwrap_or(target);
        let mut a = assertion(method, path, "ws-demo");
        who(&mut a);
        let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        self.raw(method, target, Some(&sign(&a)), body, &[]).await
    }
}
