//! `[waf]` and `[rate_limit]`: the cheap rejections before (and right after) authentication.

use std::collections::HashMap;

use serde::Deserialize;

use super::{ConfigError, Validator};
use crate::ratelimit::window::WindowSpec;
use crate::ratelimit::{
    Action, RateLimitSettings, RouteKey, RouteRuleSettings, RuleSettings, TenantSettings,
};
use crate::waf::detect::{DEFAULT_INSPECTED_HEADERS, Rule};
use crate::waf::iplist::IpSet;
use crate::waf::{Exclusion, FieldPattern, OversizeBody, WafSettings};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWaf {
    enabled: Option<bool>,
    action: Option<String>,
    rules: Option<HashMap<String, String>>,
    inspected_headers: Option<Vec<String>>,
    body_inspect_bytes: Option<u64>,
    oversize_body: Option<String>,
    max_body_bytes: Option<u64>,
    max_url_bytes: Option<u64>,
    max_header_count: Option<u64>,
    max_header_bytes: Option<u64>,
    trusted_proxies: Option<Vec<String>>,
    ip_allow_file: Option<String>,
    ip_deny_file: Option<String>,
    ip_lists_watch: Option<bool>,
    ip_lists_watch_interval_ms: Option<u64>,
    sample_log_per_second: Option<u32>,
    #[serde(default)]
    exclusions: Vec<RawExclusion>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExclusion {
    route: String,
    #[serde(default)]
    rules: Vec<String>,
    #[serde(default)]
    fields: Vec<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    enabled: Option<bool>,
    buckets: Option<u32>,
    max_keys: Option<u64>,
    ipv6_prefix: Option<u8>,
    ip: Option<RawRule>,
    client: Option<RawRule>,
    user: Option<RawRule>,
    tenant: Option<RawTenant>,
    #[serde(default)]
    plans: HashMap<String, RawRule>,
    #[serde(default)]
    routes: Vec<RawRouteRule>,
    token_failures: Option<RawRule>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawRule {
    limit: Option<u64>,
    window_seconds: Option<u64>,
    burst_limit: Option<u64>,
    burst_window_seconds: Option<u64>,
    action: Option<String>,
    enabled: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    default_plan: Option<String>,
    #[serde(default)]
    workspaces: HashMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRouteRule {
    route: String,
    key: Option<String>,
    limit: Option<u64>,
    window_seconds: Option<u64>,
    burst_limit: Option<u64>,
    burst_window_seconds: Option<u64>,
    action: Option<String>,
}

/// 6 MB: the body size limit of the seed's API.
const DEFAULT_MAX_BODY: u64 = 6 * 1024 * 1024;

impl Validator<'_> {
    fn action(&self, key: &str, value: Option<&str>) -> Result<Action, ConfigError> {
        match value.unwrap_or("block") {
            "block" => Ok(Action::Block),
            "count" => Ok(Action::Count),
            other => Err(self.invalid(key, format!("`{other}` is not block or count"))),
        }
    }

    /// `"POST /app/v1/..."` -> the route's Cedar action id `post /app/v1/...`.
    fn route_id(&self, key: &str, route: &str) -> Result<String, ConfigError> {
        let Some((method, path)) = route.trim().split_once(' ') else {
            return Err(self.invalid(key, format!("`{route}` is not `METHOD /path/template`")));
        };
        if !path.starts_with('/') || method.is_empty() {
            return Err(self.invalid(key, format!("`{route}` is not `METHOD /path/template`")));
        }
        Ok(format!("{} {}", method.to_ascii_lowercase(), path.trim()))
    }

    pub(super) fn waf(&self, raw: RawWaf) -> Result<WafSettings, ConfigError> {
        let k = |name: &str| format!("waf.{name}");
        let default_action = self.action(&k("action"), raw.action.as_deref())?;
        let mut rule_actions = HashMap::new();
        for (id, action) in raw.rules.unwrap_or_default() {
            let rule = Rule::from_id(&id).ok_or_else(|| {
                self.invalid(
                    &k("rules"),
                    format!("`{id}` is not a WAF rule ({})", rule_ids()),
                )
            })?;
            rule_actions.insert(
                rule,
                self.action(&k(&format!("rules.{id}")), Some(&action))?,
            );
        }
        let inspected_headers: Vec<String> = match raw.inspected_headers {
            Some(h) => h.into_iter().map(|h| h.to_ascii_lowercase()).collect(),
            None => DEFAULT_INSPECTED_HEADERS
                .iter()
                .map(|h| h.to_string())
                .collect(),
        };
        if inspected_headers.iter().any(|h| h == "authorization") {
            return Err(self.invalid(
                &k("inspected_headers"),
                "the bearer token is never inspected: remove `authorization`",
            ));
        }
        let oversize_body = match raw.oversize_body.as_deref().unwrap_or("inspect_head") {
            "inspect_head" => OversizeBody::InspectHead,
            "block" => OversizeBody::Block,
            other => {
                return Err(self.invalid(
                    &k("oversize_body"),
                    format!("`{other}` is not inspect_head or block"),
                ));
            }
        };
        let trusted_proxies = IpSet::from_cidrs(
            raw.trusted_proxies
                .as_deref()
                .unwrap_or_default()
                .iter()
                .map(String::as_str),
        )
        .map_err(|e| self.invalid(&k("trusted_proxies"), e))?;
        let mut exclusions = Vec::new();
        for (i, e) in raw.exclusions.into_iter().enumerate() {
            let key = format!("waf.exclusions[{i}]");
            let rules = e
                .rules
                .iter()
                .map(|id| {
                    Rule::from_id(id).ok_or_else(|| {
                        self.invalid(&key, format!("`{id}` is not a WAF rule ({})", rule_ids()))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let fields = e
                .fields
                .iter()
                .map(|f| FieldPattern::parse(f).map_err(|m| self.invalid(&key, m)))
                .collect::<Result<Vec<_>, _>>()?;
            exclusions.push(Exclusion {
                action_id: self.route_id(&format!("{key}.route"), &e.route)?,
                rules,
                fields,
            });
        }
        let file = |v: Option<String>| v.map(|p| self.resolve(&p));
        Ok(WafSettings {
            enabled: raw.enabled.unwrap_or(true),
            default_action,
            rule_actions,
            inspected_headers,
            body_inspect_bytes: self.range(
                &k("body_inspect_bytes"),
                raw.body_inspect_bytes.unwrap_or(8 * 1024),
                256,
                64 * 1024,
            )? as usize,
            oversize_body,
            max_body_bytes: self.range(
                &k("max_body_bytes"),
                raw.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY),
                1024,
                1 << 30,
            )?,
            max_url_bytes: self.range(
                &k("max_url_bytes"),
                raw.max_url_bytes.unwrap_or(8 * 1024),
                256,
                64 * 1024,
            )? as usize,
            max_header_count: self.range(
                &k("max_header_count"),
                raw.max_header_count.unwrap_or(100),
                8,
                200,
            )? as usize,
            max_header_bytes: self.range(
                &k("max_header_bytes"),
                raw.max_header_bytes.unwrap_or(32 * 1024),
                1024,
                256 * 1024,
            )? as usize,
            trusted_proxies,
            ip_allow_file: file(raw.ip_allow_file),
            ip_deny_file: file(raw.ip_deny_file),
            ip_lists_watch: raw.ip_lists_watch.unwrap_or(true),
            ip_lists_watch_interval_ms: self.range(
                &k("ip_lists_watch_interval_ms"),
                raw.ip_lists_watch_interval_ms.unwrap_or(1_000),
                100,
                3_600_000,
            )?,
            sample_log_per_second: raw.sample_log_per_second.unwrap_or(5),
            exclusions,
        })
    }

    fn rule(
        &self,
        key: &str,
        raw: &RawRule,
        buckets: u32,
    ) -> Result<Option<RuleSettings>, ConfigError> {
        if raw.enabled == Some(false) {
            return Ok(None);
        }
        self.rule_parts(
            key,
            raw.limit,
            raw.window_seconds,
            raw.burst_limit,
            raw.burst_window_seconds,
            raw.action.as_deref(),
            buckets,
        )
        .map(Some)
    }

    #[allow(clippy::too_many_arguments)]
    fn rule_parts(
        &self,
        key: &str,
        limit: Option<u64>,
        window_seconds: Option<u64>,
        burst_limit: Option<u64>,
        burst_window_seconds: Option<u64>,
        action: Option<&str>,
        buckets: u32,
    ) -> Result<RuleSettings, ConfigError> {
        let Some(limit) = limit else {
            return Err(self.invalid(&format!("{key}.limit"), "is required"));
        };
        let limit = self.range(&format!("{key}.limit"), limit, 1, u64::from(u32::MAX))? as u32;
        let window = self.range(
            &format!("{key}.window_seconds"),
            window_seconds.unwrap_or(60),
            1,
            86_400,
        )?;
        let mut windows = vec![WindowSpec {
            limit,
            window_ms: window * 1000,
            buckets,
        }];
        if let Some(burst) = burst_limit {
            let burst = self.range(&format!("{key}.burst_limit"), burst, 1, u64::from(limit))?;
            let burst_window = self.range(
                &format!("{key}.burst_window_seconds"),
                burst_window_seconds.unwrap_or(1),
                1,
                window,
            )?;
            windows.push(WindowSpec {
                limit: burst as u32,
                window_ms: burst_window * 1000,
                buckets,
            });
        } else if burst_window_seconds.is_some() {
            return Err(self.invalid(
                &format!("{key}.burst_window_seconds"),
                "only valid with burst_limit",
            ));
        }
        Ok(RuleSettings {
            windows,
            action: self.action(&format!("{key}.action"), action)?,
        })
    }

    pub(super) fn rate_limit(&self, raw: RawRateLimit) -> Result<RateLimitSettings, ConfigError> {
        let buckets = self.range(
            "rate_limit.buckets",
            u64::from(raw.buckets.unwrap_or(20)),
            1,
            600,
        )? as u32;
        // The seed's rule: 100 requests per 5 minutes per client IP.
        let ip = raw.ip.unwrap_or(RawRule {
            limit: Some(100),
            window_seconds: Some(300),
            ..RawRule::default()
        });
        // Failed client authentications per IP at the token endpoint: each costs an argon2id
        // hash (embedded issuer) or an upstream IdP call.
        let token_failures = raw.token_failures.unwrap_or(RawRule {
            limit: Some(100),
            window_seconds: Some(300),
            ..RawRule::default()
        });
        let mut plans = HashMap::new();
        for (name, rule) in &raw.plans {
            if let Some(r) = self.rule(&format!("rate_limit.plans.{name}"), rule, buckets)? {
                plans.insert(name.clone(), r);
            }
        }
        let tenant = match raw.tenant {
            None => {
                if !plans.is_empty() {
                    return Err(self.invalid(
                        "rate_limit.plans",
                        "plans need a [rate_limit.tenant] section (default_plan)",
                    ));
                }
                None
            }
            Some(t) => {
                let default_plan = t
                    .default_plan
                    .ok_or_else(|| self.invalid("rate_limit.tenant.default_plan", "is required"))?;
                for (ws, plan) in t.workspaces.iter().chain([(&String::new(), &default_plan)]) {
                    if !plans.contains_key(plan) {
                        let key = if ws.is_empty() {
                            "rate_limit.tenant.default_plan".to_string()
                        } else {
                            format!("rate_limit.tenant.workspaces.{ws}")
                        };
                        return Err(
                            self.invalid(&key, format!("no plan `{plan}` in [rate_limit.plans]"))
                        );
                    }
                }
                Some(TenantSettings {
                    default_plan,
                    plans,
                    workspaces: t.workspaces,
                })
            }
        };
        let mut routes = Vec::new();
        for (i, r) in raw.routes.iter().enumerate() {
            let key = format!("rate_limit.routes[{i}]");
            let key_kind = match r.key.as_deref().unwrap_or("principal") {
                "ip" => RouteKey::Ip,
                "principal" => RouteKey::Principal,
                "workspace" => RouteKey::Workspace,
                "client" => RouteKey::Client,
                other => {
                    return Err(self.invalid(
                        &format!("{key}.key"),
                        format!("`{other}` is not ip, principal, workspace or client"),
                    ));
                }
            };
            routes.push(RouteRuleSettings {
                action_id: self.route_id(&format!("{key}.route"), &r.route)?,
                key: key_kind,
                rule: self.rule_parts(
                    &key,
                    r.limit,
                    r.window_seconds,
                    r.burst_limit,
                    r.burst_window_seconds,
                    r.action.as_deref(),
                    buckets,
                )?,
            });
        }
        let ipv6_prefix = raw.ipv6_prefix.unwrap_or(64);
        if ipv6_prefix == 0 || ipv6_prefix > 128 {
            return Err(self.invalid("rate_limit.ipv6_prefix", "must be between 1 and 128"));
        }
        Ok(RateLimitSettings {
            enabled: raw.enabled.unwrap_or(true),
            max_keys: self.range(
                "rate_limit.max_keys",
                raw.max_keys.unwrap_or(100_000),
                64,
                100_000_000,
            )? as usize,
            ipv6_prefix,
            ip: self.rule("rate_limit.ip", &ip, buckets)?,
            client: match &raw.client {
                Some(r) => self.rule("rate_limit.client", r, buckets)?,
                None => None,
            },
            user: match &raw.user {
                Some(r) => self.rule("rate_limit.user", r, buckets)?,
                None => None,
            },
            tenant,
            routes,
            token_failures: self.rule("rate_limit.token_failures", &token_failures, buckets)?,
        })
    }
}

fn rule_ids() -> String {
    Rule::ALL
        .iter()
        .map(|r| r.id())
        .collect::<Vec<_>>()
        .join(", ")
}
