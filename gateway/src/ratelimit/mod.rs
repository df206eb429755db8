//! Stages 3 and 6: rate limits by client IP (before authentication) and by principal (per M2M
//! client, per impersonated user, per tenant plan, per route).
//!
//! Every rule counts in sliding windows (`window`) that never admit more than the limit in any
//! window of its length on one instance (`table` says the one exception: more live keys than
//! `max_keys`). With N instances behind a load balancer, each counts alone: a client spread
//! evenly over them may get up to N times the limit. A cluster-wide limit is a later step.

mod table;
pub mod window;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use table::{Table, Verdict};
use window::{Standing, WindowSpec};

use crate::authn::Identity;
use crate::metrics;

/// What a rule does when a key has no room left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Refuse with 429.
    Block,
    /// Count and log only (shadow mode).
    Count,
}

impl Action {
    fn label(self) -> &'static str {
        match self {
            Action::Block => "block",
            Action::Count => "count",
        }
    }
}

/// One rule: its windows (the main one and an optional burst window) and its action.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSettings {
    pub windows: Vec<WindowSpec>,
    pub action: Action,
}

/// What a per-route rule is keyed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKey {
    Ip,
    Principal,
    Workspace,
    Client,
}

/// A limit on one route (by its Cedar action id, e.g. `post /app/v1/...`).
#[derive(Debug, Clone, PartialEq)]
pub struct RouteRuleSettings {
    pub action_id: String,
    pub key: RouteKey,
    pub rule: RuleSettings,
}

/// Per-tenant limits: a plan per workspace, or the default plan.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantSettings {
    pub default_plan: String,
    pub plans: HashMap<String, RuleSettings>,
    pub workspaces: HashMap<String, String>,
}

/// The validated `[rate_limit]` configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitSettings {
    pub enabled: bool,
    /// Keys held per rule before idle, then least recently seen, keys are forgotten.
    pub max_keys: usize,
    /// IPv6 clients are counted by this prefix (a host usually owns a whole /64).
    pub ipv6_prefix: u8,
    pub ip: Option<RuleSettings>,
    pub client: Option<RuleSettings>,
    pub user: Option<RuleSettings>,
    pub tenant: Option<TenantSettings>,
    pub routes: Vec<RouteRuleSettings>,
    /// Failed client authentications at the token endpoint (auth listener), by client IP.
    pub token_failures: Option<RuleSettings>,
}

/// The rule that decided, and where the key stands in it: the `RateLimit` headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The rule's name (`ip`, `client`, `user`, `tenant:<plan>`, `route:<action>`).
    pub rule: Arc<str>,
    pub spec: WindowSpec,
    pub standing: Standing,
}

impl Applied {
    /// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers): quota and window.
    pub fn policy_header(&self) -> String {
        self.header(
            "q",
            self.spec.limit,
            "w",
            self.spec.window_ms.div_ceil(1000),
        )
    }

    /// `RateLimit`: remaining quota and seconds until it resets.
    pub fn state_header(&self) -> String {
        let reset = self.standing.reset_ms.div_ceil(1000);
        self.header("r", self.standing.remaining, "t", reset)
    }

    /// `"<rule>";<a>=<x>;<b>=<y>`, written without the formatting machinery (two of these
    /// go out with every answer).
    fn header(&self, a: &str, x: impl itoa::Integer, b: &str, y: impl itoa::Integer) -> String {
        let mut digits = itoa::Buffer::new();
        let mut out = String::with_capacity(self.rule.len() + 32);
        out.push('"');
        out.push_str(&self.rule);
        out.push_str("\";");
        out.push_str(a);
        out.push('=');
        out.push_str(digits.format(x));
        out.push(';');
        out.push_str(b);
        out.push('=');
        out.push_str(digits.format(y));
        out
    }

    /// `Retry-After` in whole seconds (at least 1).
    pub fn retry_after_seconds(&self) -> u64 {
        self.standing.retry_after_ms.div_ceil(1000).max(1)
    }
}

struct Rule<K> {
    name: Arc<str>,
    action: Action,
    table: Table<K>,
}

impl<K: std::hash::Hash + Eq + Clone> Rule<K> {
    fn new(name: &str, settings: &RuleSettings, max_keys: usize) -> Rule<K> {
        // The rule's refusal series exists from the start, at 0.
        metrics::ratelimit_rule(name, settings.action.label());
        Rule {
            name: name.into(),
            action: settings.action,
            table: Table::new(settings.windows.clone(), max_keys),
        }
    }

    /// `Err` when the request must be refused.
    fn check<Q>(
        &self,
        key: &Q,
        now_ms: u64,
        owned: impl FnOnce() -> K,
    ) -> Result<Applied, Box<Applied>>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.judge(self.count(key, now_ms, owned))
    }

    /// Count a request of `key` when every window has room (keys forgotten to make room are
    /// counted in the metrics); the verdict, not yet acted on.
    fn count<Q>(&self, key: &Q, now_ms: u64, owned: impl FnOnce() -> K) -> Verdict
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        let (verdict, evicted) = self.table.check(key, now_ms, owned);
        if evicted > 0 {
            metrics::ratelimit_evictions(&self.name, evicted);
        }
        verdict
    }

    /// Like [`Rule::check`], counting nothing: for rules that count some outcomes only.
    fn peek<Q>(&self, key: &Q, now_ms: u64) -> Result<Applied, Box<Applied>>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.judge(self.table.peek(key, now_ms))
    }

    fn judge(&self, verdict: Verdict) -> Result<Applied, Box<Applied>> {
        let applied = Applied {
            rule: self.name.clone(),
            spec: self.table.windows()[verdict.window],
            standing: verdict.standing,
        };
        if verdict.admitted {
            return Ok(applied);
        }
        metrics::ratelimit_rejection(&self.name, self.action.label());
        match self.action {
            Action::Block => Err(Box::new(applied)),
            Action::Count => {
                tracing::info!(target: "ratelimit", rule = %self.name, "count-only rate limit exceeded");
                Ok(applied)
            }
        }
    }
}

/// The principal-side facts stage 6 keys on.
pub struct Principal<'a> {
    pub identity: &'a Identity,
    pub impersonated_user: Option<&'a str>,
    /// The matched route's Cedar action id.
    pub action_id: Option<&'a str>,
    pub client_ip: IpAddr,
}

/// The rules of one route, each with what it is keyed on.
type RouteRules = Vec<(RouteKey, Rule<Box<str>>)>;

/// Every rate-limit rule of the api listener.
pub struct RateLimiter {
    epoch: Instant,
    ipv6_prefix: u8,
    ip: Option<Rule<u128>>,
    client: Option<Rule<Box<str>>>,
    user: Option<Rule<Box<str>>>,
    tenant_plans: HashMap<String, Rule<Box<str>>>,
    tenant_default: Option<String>,
    tenant_workspaces: HashMap<String, String>,
    routes: HashMap<String, RouteRules>,
    token_failures: Option<Rule<u128>>,
}

impl RateLimiter {
    /// The limiter for `settings`; `None` when rate limiting is off.
    pub fn new(settings: &RateLimitSettings) -> Option<RateLimiter> {
        if !settings.enabled {
            return None;
        }
        let max = settings.max_keys;
        let mut routes: HashMap<String, RouteRules> = HashMap::new();
        for r in &settings.routes {
            routes.entry(r.action_id.clone()).or_default().push((
                r.key,
                Rule::new(&format!("route:{}", r.action_id), &r.rule, max),
            ));
        }
        let (tenant_plans, tenant_default, tenant_workspaces) = match &settings.tenant {
            Some(t) => (
                t.plans
                    .iter()
                    .map(|(plan, rule)| {
                        (
                            plan.clone(),
                            Rule::new(&format!("tenant:{plan}"), rule, max),
                        )
                    })
                    .collect(),
                Some(t.default_plan.clone()),
                t.workspaces.clone(),
            ),
            None => (HashMap::new(), None, HashMap::new()),
        };
        Some(RateLimiter {
            epoch: Instant::now(),
            ipv6_prefix: settings.ipv6_prefix,
            ip: settings.ip.as_ref().map(|r| Rule::new("ip", r, max)),
            client: settings
                .client
                .as_ref()
                .map(|r| Rule::new("client", r, max)),
            user: settings.user.as_ref().map(|r| Rule::new("user", r, max)),
            tenant_plans,
            tenant_default,
            tenant_workspaces,
            routes,
            token_failures: settings
                .token_failures
                .as_ref()
                .map(|r| Rule::new("token_failures", r, max)),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The counting key of a client address: IPv4 as is, IPv6 by its configured prefix.
    pub fn ip_key(&self, ip: IpAddr) -> u128 {
        match ip {
            IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => u128::from(v4.to_ipv6_mapped()),
                None => {
                    let bits = u32::from(self.ipv6_prefix.min(128));
                    let mask = if bits == 0 {
                        0
                    } else {
                        u128::MAX << (128 - bits)
                    };
                    u128::from(v6) & mask
                }
            },
        }
    }

    /// Stage 3: the per-IP rule.
    pub fn check_ip(&self, ip: IpAddr) -> Result<Option<Applied>, Box<Applied>> {
        let Some(rule) = &self.ip else {
            return Ok(None);
        };
        let key = self.ip_key(ip);
        rule.check(&key, self.now_ms(), || key).map(Some)
    }

    /// The token endpoint, before the credentials are checked: `Err` while this address has
    /// no failed client authentications left in the window (every request is then refused,
    /// right credentials too: checking them is what a guesser wants to make us do).
    pub fn check_token_failures(&self, ip: IpAddr) -> Result<(), Box<Applied>> {
        match &self.token_failures {
            Some(rule) => rule.peek(&self.ip_key(ip), self.now_ms()).map(drop),
            None => Ok(()),
        }
    }

    /// The token endpoint refused this address' client authentication: count it.
    pub fn record_token_failure(&self, ip: IpAddr) {
        if let Some(rule) = &self.token_failures {
            let key = self.ip_key(ip);
            rule.count(&key, self.now_ms(), || key);
        }
    }

    /// Stage 6: the principal's rules, most specific first. Returns the admitted rule with the
    /// least room left (for the `RateLimit` headers), or the refusal.
    pub fn check_principal(&self, p: &Principal<'_>) -> Result<Option<Applied>, Box<Applied>> {
        let now = self.now_ms();
        let mut tightest: Option<Applied> = None;
        let mut keep = |a: Applied| {
            if tightest
                .as_ref()
                .is_none_or(|t| a.standing.remaining < t.standing.remaining)
            {
                tightest = Some(a);
            }
        };
        let ws = p.identity.workspace_id.as_deref().unwrap_or("");
        if let Some(rules) = self.routes_for(p.action_id) {
            for (key_kind, rule) in rules {
                let key = match key_kind {
                    RouteKey::Ip => format!("{:032x}", self.ip_key(p.client_ip)),
                    RouteKey::Principal => scoped(ws, &p.identity.principal_id),
                    RouteKey::Workspace => ws.to_string(),
                    RouteKey::Client => scoped(
                        ws,
                        p.identity
                            .client_id
                            .as_deref()
                            .unwrap_or(&p.identity.principal_id),
                    ),
                };
                keep(rule.check(key.as_str(), now, || key.as_str().into())?);
            }
        }
        if let (Some(rule), Some(user)) = (&self.user, p.impersonated_user) {
            let key = scoped(ws, user);
            keep(rule.check(key.as_str(), now, || key.as_str().into())?);
        }
        if let Some(rule) = &self.client
            && is_m2m(p.identity)
        {
            let id = p
                .identity
                .client_id
                .as_deref()
                .unwrap_or(&p.identity.principal_id);
            keep(rule.check(id, now, || id.into())?);
        }
        if let Some(rule) = self.tenant_rule(ws) {
            keep(rule.check(ws, now, || ws.into())?);
        }
        Ok(tightest)
    }

    fn routes_for(&self, action_id: Option<&str>) -> Option<&RouteRules> {
        self.routes.get(action_id?)
    }

    fn tenant_rule(&self, ws: &str) -> Option<&Rule<Box<str>>> {
        if ws.is_empty() {
            return None;
        }
        let plan = self
            .tenant_workspaces
            .get(ws)
            .or(self.tenant_default.as_ref())?;
        self.tenant_plans.get(plan)
    }
}

fn is_m2m(identity: &Identity) -> bool {
    identity.platform.as_deref() == Some("m2m")
}

/// A key that cannot collide across workspaces (the workspace id is length-prefixed).
fn scoped(ws: &str, id: &str) -> String {
    format!("{}:{ws}:{id}", ws.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(limit: u32, window_s: u64) -> RuleSettings {
        RuleSettings {
            windows: vec![WindowSpec {
                limit,
                window_ms: window_s * 1000,
                buckets: 20,
            }],
            action: Action::Block,
        }
    }

    fn settings() -> RateLimitSettings {
        RateLimitSettings {
            enabled: true,
            max_keys: 10_000,
            ipv6_prefix: 64,
            ip: Some(rule(3, 60)),
            client: None,
            user: None,
            tenant: None,
            routes: Vec::new(),
            token_failures: Some(rule(2, 60)),
        }
    }

    #[test]
    fn ipv6_clients_count_by_prefix_and_mapped_v4_as_v4() {
        let rl = RateLimiter::new(&settings()).unwrap();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(rl.ip_key(a), rl.ip_key(b));
        assert_ne!(rl.ip_key(a), rl.ip_key(c));
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(rl.ip_key(v4), rl.ip_key(mapped));
    }

    #[test]
    fn the_ip_rule_refuses_with_retry_after_and_headers() {
        let rl = RateLimiter::new(&settings()).unwrap();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert!(rl.check_ip(ip).is_ok());
        }
        let refused = rl.check_ip(ip).unwrap_err();
        assert_eq!(&*refused.rule, "ip");
        assert!(refused.retry_after_seconds() >= 1);
        assert_eq!(refused.policy_header(), "\"ip\";q=3;w=60");
        assert!(refused.state_header().starts_with("\"ip\";r=0;t="));
        assert!(rl.check_ip("192.0.2.2".parse().unwrap()).is_ok());
    }

    #[test]
    fn count_only_rules_admit() {
        let mut s = settings();
        s.ip.as_mut().unwrap().action = Action::Count;
        let rl = RateLimiter::new(&s).unwrap();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..10 {
            assert!(rl.check_ip(ip).is_ok());
        }
    }

    #[test]
    fn token_failures_refuse_an_address_only_after_its_failures() {
        let rl = RateLimiter::new(&settings()).unwrap();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..10 {
            assert!(rl.check_token_failures(ip).is_ok(), "checks count nothing");
        }
        rl.record_token_failure(ip);
        assert!(rl.check_token_failures(ip).is_ok());
        rl.record_token_failure(ip);
        let refused = rl.check_token_failures(ip).unwrap_err();
        assert_eq!(&*refused.rule, "token_failures");
        assert!(refused.retry_after_seconds() >= 1);
        assert!(
            rl.check_token_failures("192.0.2.2".parse().unwrap())
                .is_ok()
        );
        assert!(rl.check_ip(ip).is_ok(), "the ip rule counts apart");
    }

    #[test]
    fn scoped_keys_do_not_collide_across_workspaces() {
        assert_ne!(scoped("a:b", "c"), scoped("a", "b:c"));
    }
}
