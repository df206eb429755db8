//! `[token_proxy]` (the auth domain's token cache and its upstream IdP) and `[dynamodb]`
//! (the distributed stores' table settings).

use std::time::Duration;

use serde::Deserialize;
use token_proxy::cache::CacheSettings;

use super::{ConfigError, Validator};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTokenProxy {
    upstream: Option<String>,
    public_base_url: Option<String>,
    discovery_url: Option<String>,
    jwks_uri: Option<String>,
    discovery_ttl_seconds: Option<u64>,
    jwks_ttl_seconds: Option<u64>,
    upstream_timeout_ms: Option<u64>,
    cache: Option<bool>,
    ttl_ratio: Option<f64>,
    l1_capacity: Option<u64>,
    store: Option<String>,
    store_capacity: Option<u64>,
    store_retry_after_ms: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDynamoDb {
    region: Option<String>,
    endpoint: Option<String>,
    token_table: Option<String>,
    backend_table: Option<String>,
    create_tables_on_start: Option<bool>,
    timeout_ms: Option<u64>,
}

/// The auth domain's token endpoint: cache, store and (optionally) an upstream IdP.
#[derive(Debug, Clone)]
pub struct TokenProxySettings {
    /// Upstream IdP mode when set; the embedded issuer answers otherwise.
    pub upstream: Option<UpstreamIdp>,
    /// The token cache; `None` when `cache = false`.
    pub cache: Option<CacheSettings>,
    pub store: TokenStoreKind,
}

/// Where the token cache's second tier lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenStoreKind {
    /// In process (the embedded default), holding at most this many entries.
    Memory { capacity: u64 },
    /// The `[dynamodb]` token table.
    DynamoDb,
}

/// An external OAuth2/OIDC provider behind the auth listener.
#[derive(Debug, Clone)]
pub struct UpstreamIdp {
    /// Base URL (no trailing slash): `POST /oauth2/token` and every other path go here.
    pub base_url: String,
    /// Where its discovery document is fetched.
    pub discovery_url: String,
    /// Where its JWKS is fetched; `None`: the discovery document's `jwks_uri`.
    pub jwks_uri: Option<String>,
    /// The auth domain's base URL as clients reach it (discovery URLs are rewritten to it);
    /// `None`: `http(s)://<auth listener address>`.
    pub public_base_url: Option<String>,
    pub discovery_ttl: Duration,
    pub jwks_ttl: Duration,
    pub timeout: Duration,
}

/// The DynamoDB tables of the distributed stores.
#[derive(Debug, Clone)]
pub struct DynamoDbSettings {
    pub region: String,
    /// An endpoint override (a local DynamoDB-compatible server).
    pub endpoint: Option<String>,
    pub token_table: String,
    /// The embedded backend's documents when `[backend] store = "dynamodb"`.
    pub backend_table: String,
    pub create_tables_on_start: bool,
    pub timeout: Duration,
}

impl DynamoDbSettings {
    /// The token store's settings.
    pub fn token_store(&self) -> token_proxy::cache::dynamodb::DynamoSettings {
        token_proxy::cache::dynamodb::DynamoSettings {
            table: self.token_table.clone(),
            region: self.region.clone(),
            endpoint: self.endpoint.clone(),
            timeout: self.timeout,
        }
    }

    /// The client settings for the backend's table.
    pub fn backend_store(&self) -> token_proxy::cache::dynamodb::DynamoSettings {
        token_proxy::cache::dynamodb::DynamoSettings {
            table: self.backend_table.clone(),
            ..self.token_store()
        }
    }
}

/// DynamoDB table names: 3-255 of `A-Za-z0-9_.-`.
fn is_table_name(s: &str) -> bool {
    (3..=255).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl Validator<'_> {
    pub(super) fn range(&self, key: &str, v: u64, lo: u64, hi: u64) -> Result<u64, ConfigError> {
        if (lo..=hi).contains(&v) {
            Ok(v)
        } else {
            Err(self.invalid(key, format!("must be between {lo} and {hi}")))
        }
    }

    pub(super) fn token_proxy(
        &self,
        raw: RawTokenProxy,
    ) -> Result<TokenProxySettings, ConfigError> {
        let k = |name: &str| format!("token_proxy.{name}");
        let timeout = Duration::from_millis(self.range(
            &k("upstream_timeout_ms"),
            raw.upstream_timeout_ms.unwrap_or(10_000),
            100,
            120_000,
        )?);
        let upstream = match raw.upstream {
            None => {
                for (name, set) in [
                    ("discovery_url", raw.discovery_url.is_some()),
                    ("jwks_uri", raw.jwks_uri.is_some()),
                    ("public_base_url", raw.public_base_url.is_some()),
                ] {
                    if set {
                        return Err(self.invalid(&k(name), "only valid with `upstream`"));
                    }
                }
                None
            }
            Some(u) => {
                let base_url = self.url(&k("upstream"), &u)?;
                let discovery_url = match raw.discovery_url {
                    Some(d) => self.url(&k("discovery_url"), &d)?,
                    None => format!("{base_url}/.well-known/openid-configuration"),
                };
                let jwks_uri = raw
                    .jwks_uri
                    .map(|j| self.url(&k("jwks_uri"), &j))
                    .transpose()?;
                let public_base_url = raw
                    .public_base_url
                    .map(|p| self.url(&k("public_base_url"), &p))
                    .transpose()?;
                Some(UpstreamIdp {
                    base_url,
                    discovery_url,
                    jwks_uri,
                    public_base_url,
                    discovery_ttl: Duration::from_secs(self.range(
                        &k("discovery_ttl_seconds"),
                        raw.discovery_ttl_seconds.unwrap_or(300),
                        1,
                        86_400,
                    )?),
                    jwks_ttl: Duration::from_secs(self.range(
                        &k("jwks_ttl_seconds"),
                        raw.jwks_ttl_seconds.unwrap_or(300),
                        1,
                        86_400,
                    )?),
                    timeout,
                })
            }
        };
        let ttl_ratio = raw.ttl_ratio.unwrap_or(0.75);
        if !(ttl_ratio > 0.0 && ttl_ratio < 1.0) {
            return Err(self.invalid(&k("ttl_ratio"), "must be greater than 0 and less than 1"));
        }
        let cache = raw.cache.unwrap_or(true).then(|| CacheSettings {
            ttl_ratio,
            l1_capacity: raw.l1_capacity.unwrap_or(100_000).max(1),
            store_retry_after: Duration::from_millis(
                raw.store_retry_after_ms
                    .unwrap_or(5_000)
                    .clamp(100, 600_000),
            ),
        });
        let store = match raw.store.as_deref().unwrap_or("memory") {
            "memory" => TokenStoreKind::Memory {
                capacity: raw.store_capacity.unwrap_or(100_000).max(1),
            },
            "dynamodb" => {
                if raw.store_capacity.is_some() {
                    return Err(
                        self.invalid(&k("store_capacity"), "only valid with store = \"memory\"")
                    );
                }
                TokenStoreKind::DynamoDb
            }
            other => {
                return Err(self.invalid(
                    &k("store"),
                    format!("`{other}` is not one of \"memory\", \"dynamodb\""),
                ));
            }
        };
        Ok(TokenProxySettings {
            upstream,
            cache,
            store,
        })
    }

    pub(super) fn dynamodb(&self, raw: RawDynamoDb) -> Result<DynamoDbSettings, ConfigError> {
        let region = raw.region.unwrap_or_else(|| "us-east-1".to_string());
        if region.is_empty()
            || !region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(self.invalid("dynamodb.region", format!("`{region}` is not a region")));
        }
        let endpoint = raw
            .endpoint
            .map(|e| self.url("dynamodb.endpoint", &e))
            .transpose()?;
        let token_table = raw
            .token_table
            .unwrap_or_else(|| "cedargate-token-cache".to_string());
        if !is_table_name(&token_table) {
            return Err(self.invalid(
                "dynamodb.token_table",
                "must be 3-255 characters of A-Z a-z 0-9 _ . -",
            ));
        }
        let backend_table = raw
            .backend_table
            .unwrap_or_else(|| "cedargate-backend".to_string());
        if !is_table_name(&backend_table) {
            return Err(self.invalid(
                "dynamodb.backend_table",
                "must be 3-255 characters of A-Z a-z 0-9 _ . -",
            ));
        }
        if backend_table == token_table {
            return Err(self.invalid(
                "dynamodb.backend_table",
                "must differ from dynamodb.token_table",
            ));
        }
        Ok(DynamoDbSettings {
            region,
            endpoint,
            token_table,
            backend_table,
            create_tables_on_start: raw.create_tables_on_start.unwrap_or(false),
            timeout: Duration::from_millis(self.range(
                "dynamodb.timeout_ms",
                raw.timeout_ms.unwrap_or(1_000),
                50,
                60_000,
            )?),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::Config;
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_with_env(text, Path::new("/etc/cedargate/test.toml"), &|name| {
            (name == "IDP").then(|| "https://idp.example/".to_string())
        })
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_the_embedded_issuer_with_a_memory_cache() {
        let c = parse("").unwrap();
        assert!(c.token_proxy.upstream.is_none());
        let cache = c.token_proxy.cache.unwrap();
        assert_eq!(cache.ttl_ratio, 0.75);
        assert_eq!(
            c.token_proxy.store,
            TokenStoreKind::Memory { capacity: 100_000 }
        );
        assert_eq!(c.dynamodb.token_table, "cedargate-token-cache");
        assert!(!c.dynamodb.create_tables_on_start);
    }

    #[test]
    fn upstream_mode_from_the_environment() {
        let c = parse(
            "[token_proxy]\nupstream = \"${IDP}\"\nttl_ratio = 0.5\nstore = \"dynamodb\"\n\
             [dynamodb]\nendpoint = \"http://127.0.0.1:8000\"\nregion = \"eu-west-1\"\n",
        )
        .unwrap();
        let up = c.token_proxy.upstream.unwrap();
        assert_eq!(up.base_url, "https://idp.example");
        assert_eq!(
            up.discovery_url,
            "https://idp.example/.well-known/openid-configuration"
        );
        assert_eq!(
            up.public_base_url, None,
            "the auth listener's, at serve time"
        );
        assert_eq!(c.token_proxy.cache.unwrap().ttl_ratio, 0.5);
        assert_eq!(c.token_proxy.store, TokenStoreKind::DynamoDb);
        assert_eq!(
            c.dynamodb.endpoint.as_deref(),
            Some("http://127.0.0.1:8000")
        );
    }

    #[test]
    fn bad_values_and_unset_variables_are_named() {
        assert!(err("[token_proxy]\nbogus = 1\n").contains("bogus"));
        assert!(err("[dynamodb]\nbogus = 1\n").contains("bogus"));
        for ratio in ["0.0", "1.0", "1.5", "-0.1"] {
            let e = err(&format!("[token_proxy]\nttl_ratio = {ratio}\n"));
            assert!(e.contains("token_proxy.ttl_ratio"), "{e}");
        }
        let e = err("[token_proxy]\nstore = \"redis\"\n");
        assert!(e.contains("token_proxy.store"), "{e}");
        let e = err("[token_proxy]\nupstream = \"${NOT_SET_ANYWHERE}\"\n");
        assert!(
            e.contains("token_proxy.upstream") && e.contains("NOT_SET_ANYWHERE"),
            "{e}"
        );
        let e = err("[token_proxy]\nupstream = \"ftp://x.example\"\n");
        assert!(e.contains("token_proxy.upstream"), "{e}");
        let e = err("[token_proxy]\njwks_uri = \"https://x.example/j\"\n");
        assert!(e.contains("token_proxy.jwks_uri"), "{e}");
        let e = err("[dynamodb]\ntoken_table = \"a b\"\n");
        assert!(e.contains("dynamodb.token_table"), "{e}");
        // An environment value is data: it cannot add keys or break the TOML.
        let c = Config::parse_with_env("[log]\nlevel = \"${L}\"\n", Path::new("/x.toml"), &|_| {
            Some("info\"\n[evil]\nx = 1".into())
        });
        assert!(c.unwrap_err().to_string().contains("log.level"));
    }
}
