//! Upstream IdP mode: the IdP's token endpoint (called by the token cache on a miss), its
//! discovery document and JWKS (cached, URLs rewritten), and the pingora peer every other
//! path is passed through to.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::prelude::HttpPeer;
use serde_json::Value;
use token_proxy::discovery::{CachedDoc, rewrite_urls};
use token_proxy::{HttpAnswer, TokenCall, TokenUpstream};

use crate::config::UpstreamIdp;

/// Hop-by-hop headers (RFC 9110 §7.6.1) and those the HTTP client sets itself.
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

/// Where pass-through requests go: scheme, host, port and the base path.
#[derive(Debug, Clone)]
pub struct PeerTarget {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    /// The base URL's path (without a trailing slash), prefixed to every passed-through path.
    pub path_prefix: String,
    /// `Host` for the upstream: `host[:port]` as in the base URL.
    pub authority: String,
}

impl PeerTarget {
    /// Parse `http(s)://host[:port][/path]` (validated by the config already).
    pub fn parse(base_url: &str) -> anyhow::Result<PeerTarget> {
        let uri: http::Uri = base_url
            .parse()
            .map_err(|e| anyhow::anyhow!("token_proxy.upstream `{base_url}`: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => anyhow::bail!("token_proxy.upstream `{base_url}` is not http(s)"),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| anyhow::anyhow!("token_proxy.upstream `{base_url}` has no host"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Ok(PeerTarget {
            port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            host,
            tls,
            path_prefix: uri.path().trim_end_matches('/').to_string(),
            authority: authority.as_str().to_string(),
        })
    }

    /// A peer for one pass-through request (the host is resolved now, asynchronously).
    pub async fn peer(&self) -> pingora::Result<Box<HttpPeer>> {
        let addr = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| {
                pingora::Error::explain(
                    pingora::ErrorType::ConnectNoRoute,
                    "cannot resolve the upstream IdP",
                )
            })?;
        let sni = if self.tls {
            self.host.clone()
        } else {
            String::new()
        };
        let mut peer = HttpPeer::new(addr, self.tls, sni);
        peer.options.connection_timeout = Some(Duration::from_secs(5));
        peer.options.read_timeout = Some(Duration::from_secs(30));
        Ok(Box::new(peer))
    }
}

/// The upstream IdP: token endpoint, documents, pass-through target.
pub struct UpstreamIdpClient {
    settings: UpstreamIdp,
    public_base_url: String,
    token_url: String,
    http: reqwest::Client,
    discovery: CachedDoc,
    jwks: CachedDoc,
    pub target: PeerTarget,
}

impl UpstreamIdpClient {
    /// `public_base_url`: where clients reach the auth listener.
    pub fn new(
        settings: UpstreamIdp,
        public_base_url: String,
    ) -> anyhow::Result<UpstreamIdpClient> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            // Relay what the IdP says, redirects included.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| anyhow::anyhow!("HTTP client for the upstream IdP: {e}"))?;
        Ok(UpstreamIdpClient {
            target: PeerTarget::parse(&settings.base_url)?,
            token_url: format!("{}/oauth2/token", settings.base_url),
            discovery: CachedDoc::new(settings.discovery_ttl),
            jwks: CachedDoc::new(settings.jwks_ttl),
            http,
            settings,
            public_base_url,
        })
    }

    async fn fetch_json(&self, url: &str) -> Result<Value, String> {
        let resp = self
            .http
            .get(url)
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if !resp.status().is_success() {
            return Err(format!("{url} answered {}", resp.status()));
        }
        resp.json::<Value>()
            .await
            .map_err(|e| format!("{url}: not JSON: {}", e.without_url()))
    }

    /// The upstream's discovery document as fetched (cached).
    async fn raw_discovery(&self) -> Result<Arc<Value>, String> {
        self.discovery
            .get(|| self.fetch_json(&self.settings.discovery_url))
            .await
    }

    /// The discovery document with URLs that point at the upstream rewritten.
    pub async fn discovery(&self) -> Result<Value, String> {
        let raw = self.raw_discovery().await?;
        let mut doc = (*raw).clone();
        let discovery_base = self
            .settings
            .discovery_url
            .strip_suffix("/.well-known/openid-configuration")
            .unwrap_or_default();
        let jwks_base = raw
            .get("jwks_uri")
            .and_then(Value::as_str)
            .and_then(|u| u.strip_suffix("/.well-known/jwks.json"))
            .unwrap_or_default()
            .to_string();
        rewrite_urls(
            &mut doc,
            &[&self.settings.base_url, discovery_base, &jwks_base],
            &self.public_base_url,
        );
        Ok(doc)
    }

    /// The upstream's JWKS (cached): from `jwks_uri` in config, else the discovery
    /// document's, else `<upstream>/.well-known/jwks.json`.
    pub async fn jwks(&self) -> Result<Arc<Value>, String> {
        let uri = match &self.settings.jwks_uri {
            Some(u) => u.clone(),
            None => match self.raw_discovery().await {
                Ok(doc) => doc
                    .get("jwks_uri")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("{}/.well-known/jwks.json", self.settings.base_url)),
                Err(_) => format!("{}/.well-known/jwks.json", self.settings.base_url),
            },
        };
        self.jwks.get(|| self.fetch_json(&uri)).await
    }
}

#[async_trait]
impl TokenUpstream for UpstreamIdpClient {
    async fn token(&self, call: &TokenCall) -> HttpAnswer {
        let url = match &call.query {
            Some(q) => format!("{}?{q}", self.token_url),
            None => self.token_url.clone(),
        };
        let mut req = self
            .http
            .request(call.method.clone(), url)
            .body(call.body.clone());
        for (name, value) in &call.headers {
            let n = name.as_str();
            // The cache must read the answer: ask for it uncompressed.
            if is_hop_by_hop(n) || n == "accept-encoding" {
                continue;
            }
            req = req.header(name, value);
        }
        let failed = |status: u16, what: &str| {
            let mut a = HttpAnswer {
                status,
                headers: vec![("Content-Type".into(), "application/json".into())],
                body: serde_json::to_vec(&serde_json::json!({
                    "error": "temporarily_unavailable",
                    "error_description": what,
                }))
                .unwrap_or_default(),
            };
            token_proxy::enforce_no_store(&mut a);
            a
        };
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                tracing::warn!(error = %e.without_url(), "the upstream IdP timed out");
                return failed(504, "the identity provider did not answer in time");
            }
            Err(e) => {
                tracing::warn!(error = %e.without_url(), "the upstream IdP is unreachable");
                return failed(502, "the identity provider is unreachable");
            }
        };
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .filter(|(n, _)| !is_hop_by_hop(n.as_str()))
            .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        match resp.bytes().await {
            Ok(body) => HttpAnswer {
                status,
                headers,
                body: body.to_vec(),
            },
            Err(e) => {
                tracing::warn!(error = %e.without_url(), "reading the upstream IdP's answer failed");
                failed(502, "the identity provider's answer was cut off")
            }
        }
    }

    fn cache_context(&self) -> String {
        self.token_url.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_targets() {
        let t = PeerTarget::parse("https://idp.example.com").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.tls),
            ("idp.example.com", 443, true)
        );
        assert_eq!(t.path_prefix, "");
        assert_eq!(t.authority, "idp.example.com");
        let t = PeerTarget::parse("http://127.0.0.1:9000/base").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.tls), ("127.0.0.1", 9000, false));
        assert_eq!(t.path_prefix, "/base");
        assert_eq!(t.authority, "127.0.0.1:9000");
        let t = PeerTarget::parse("http://[::1]:9000").unwrap();
        assert_eq!(t.host, "::1");
    }
}
