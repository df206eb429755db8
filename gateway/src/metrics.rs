//! Prometheus metrics, served on the admin listener. Labels are bounded: route templates
//! (never raw paths), methods, status codes and decisions.

use std::sync::LazyLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The process's metric registry.
pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

/// Requests by route template, method, status and decision.
pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    registered(IntCounterVec::new(
        Opts::new(
            "cedargate_requests_total",
            "API requests by route, method, status and decision",
        ),
        &["route", "method", "status", "decision"],
    ))
});

/// End-to-end request latency by route template.
pub static LATENCY: LazyLock<HistogramVec> = LazyLock::new(|| {
    registered(HistogramVec::new(
        HistogramOpts::new(
            "cedargate_request_duration_seconds",
            "API request latency, end to end",
        )
        .buckets(vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ]),
        &["route"],
    ))
});

/// `metric` registered with [`REGISTRY`] (the names are fixed: valid, and registered once).
fn registered<M: prometheus::core::Collector + Clone + 'static>(
    metric: prometheus::Result<M>,
) -> M {
    let metric = metric.expect("valid metric");
    let _ = REGISTRY.register(Box::new(metric.clone()));
    metric
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    registered(IntCounterVec::new(Opts::new(name, help), labels))
}

/// Policy reloads by result (ok, refused); both series shown from the start (at 0), so a
/// reload alert is defined before the first reload.
pub static RELOADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let c = counter(
        "cedargate_policy_reloads_total",
        "Policy reloads by result",
        &["result"],
    );
    for result in ["ok", "refused"] {
        let _ = c.with_label_values(&[result]);
    }
    c
});

/// The policy sets in force: 1 for each set's current version.
pub static POLICY: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    registered(IntGaugeVec::new(
        Opts::new(
            "cedargate_policy_version_info",
            "The policy set in force (set: active or shadow; version: its content hash)",
        ),
        &["set", "version"],
    ))
});

/// Cache lookups by cache and result; every series shown from the start (at 0), so hit ratios
/// are defined before the first lookup.
pub static CACHE: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let c = counter(
        "cedargate_cache_lookups_total",
        "Cache lookups by cache (token: verified tokens, decision, delegation: the user \
         directory, client_credentials: issued M2M tokens) and result (hit, miss)",
        &["cache", "result"],
    );
    for cache in CACHES {
        for result in ["hit", "miss"] {
            let _ = c.with_label_values(&[cache, result]);
        }
    }
    c
});

/// The caches' hit ratios since start, computed from `CACHE` at each scrape (for dashboards
/// and alerts that read a ratio without a PromQL division; 0 before a cache's first lookup).
pub static CACHE_HIT_RATIO: LazyLock<prometheus::GaugeVec> = LazyLock::new(|| {
    registered(prometheus::GaugeVec::new(
        Opts::new(
            "cedargate_cache_hit_ratio",
            "Share of cache lookups that hit since start, by cache (token, decision, delegation, \
             client_credentials); 0 before the first lookup",
        ),
        &["cache"],
    ))
});

/// The caches whose lookups are counted from the start.
const CACHES: [&str; 4] = ["token", "decision", "delegation", "client_credentials"];

/// The known caches' lookup series (`[miss, hit]`), resolved once: lookups happen several
/// times per request.
static CACHE_SERIES: LazyLock<[(&str, [IntCounter; 2]); 4]> = LazyLock::new(|| {
    CACHES.map(|c| {
        (
            c,
            [
                CACHE.with_label_values(&[c, "miss"]),
                CACHE.with_label_values(&[c, "hit"]),
            ],
        )
    })
});

/// Set every cache's hit ratio from its lookup counters.
fn refresh_hit_ratios() {
    for (cache, [misses, hits]) in CACHE_SERIES.iter() {
        let (hits, misses) = (hits.get() as f64, misses.get() as f64);
        let total = hits + misses;
        let ratio = if total > 0.0 { hits / total } else { 0.0 };
        CACHE_HIT_RATIO.with_label_values(&[cache]).set(ratio);
    }
}

/// The running build: always 1, its version as a label (dashboards join on it to tell which
/// instances run which release).
pub static BUILD: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    let g = registered(IntGaugeVec::new(
        Opts::new(
            "cedargate_build_info",
            "The running build (version), always 1",
        ),
        &["version"],
    ));
    g.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    g
});

/// Requests the backend could not answer, by pingora's error type (ConnectRefused,
/// ConnectTimedout, ReadTimedout, ConnectionClosed, ...).
pub static UPSTREAM_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "cedargate_upstream_errors_total",
        "Requests the backend could not answer, by error type",
        &["kind"],
    )
});

/// Client connections open now, by listener (api, auth, admin).
pub static OPEN_CONNECTIONS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    registered(IntGaugeVec::new(
        Opts::new(
            "cedargate_open_connections",
            "Client connections open now, by listener (api, auth, admin)",
        ),
        &["listener"],
    ))
});

/// Client connections accepted since start, by listener.
pub static ACCEPTED_CONNECTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "cedargate_connections_accepted_total",
        "Client connections accepted since start (after the TLS handshake, where TLS is on), by listener",
        &["listener"],
    )
});

/// Requests where the shadow policy set decided differently, by route template.
pub static SHADOW: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "cedargate_shadow_differences_total",
        "Requests the shadow policies decide differently",
        &["route", "active", "shadow"],
    )
});

/// Audit lines that could not be written.
pub static AUDIT_DROPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "cedargate_audit_dropped_total",
        "Audit lines dropped (writer saturated or failing)",
        &["reason"],
    )
});

/// Latency of each pipeline stage.
pub static STAGE: LazyLock<HistogramVec> = LazyLock::new(|| {
    registered(HistogramVec::new(
        HistogramOpts::new(
            "cedargate_stage_duration_seconds",
            "Latency of each pipeline stage (waf, ratelimit, authn, authz, upstream)",
        )
        .buckets(vec![
            0.000_005, 0.00001, 0.000_025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
            0.01, 0.05, 0.25, 1.0,
        ]),
        &["stage"],
    ))
});

/// Token endpoint answers by cache result and status class.
pub static TOKEN_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "cedargate_token_requests_total",
        "Token endpoint answers by cache result (l1_hit, l2_hit, coalesced, miss, uncached) and status class",
        &["result", "status"],
    )
});

/// Token requests sent to the issuer or upstream IdP, by status class, and their latency.
pub static TOKEN_UPSTREAM: LazyLock<HistogramVec> = LazyLock::new(|| {
    registered(HistogramVec::new(
        HistogramOpts::new(
            "cedargate_token_upstream_duration_seconds",
            "Token requests the cache sent to the issuer or upstream IdP (count and latency), by status class",
        )
        .buckets(vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
        ]),
        &["status"],
    )
    )
});

/// Token store failures by store and operation.
pub static TOKEN_STORE_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "cedargate_token_store_errors_total",
        "Token cache store (L2) failures by store and operation; requests fell back to L1 and the upstream",
        &["store", "op"],
    )
});

/// WAF detections by rule, request part and action (block, count).
pub static WAF: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "cedargate_waf_matches_total",
        "WAF rule matches by rule, request part and action (block, count)",
        &["rule", "part", "action"],
    )
});

/// Rate-limit refusals by rule and action (block, count).
pub static RATELIMIT: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "cedargate_ratelimit_rejections_total",
        "Requests over a rate limit by rule and action (block: refused with 429; count: logged only)",
        &["rule", "action"],
    )
});

/// Live rate-limit keys forgotten to keep memory bounded.
pub static RATELIMIT_EVICTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "cedargate_ratelimit_evictions_total",
        "Live rate-limit keys forgotten because a rule held max_keys keys (that key's count restarts)",
        &["rule"],
    )
});

/// IP list reloads by result.
pub static IP_LIST_RELOADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "cedargate_waf_ip_list_reloads_total",
        "WAF IP list reloads by result (ok, refused)",
        &["result"],
    )
});

/// TLS certificate reloads by result.
pub static TLS_RELOADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "cedargate_tls_reloads_total",
        "TLS certificate reloads by result (ok, refused)",
        &["result"],
    )
});

/// Count a TLS certificate reload.
pub fn tls_reload(result: &str) {
    TLS_RELOADS.with_label_values(&[result]).inc();
}

/// Count an IP list reload.
pub fn ip_list_reload(result: &str) {
    IP_LIST_RELOADS.with_label_values(&[result]).inc();
}

/// Count one WAF match.
pub fn waf_match(rule: &str, part: &str, action: &str) {
    WAF.with_label_values(&[rule, part, action]).inc();
}

/// Count one rate-limit refusal.
pub fn ratelimit_rejection(rule: &str, action: &str) {
    RATELIMIT.with_label_values(&[rule, action]).inc();
}

/// Show a configured rate-limit rule's refusal series before its first refusal.
pub fn ratelimit_rule(rule: &str, action: &str) {
    // Resolving a series creates it at 0, as for the reload and cache series.
    let _ = RATELIMIT.with_label_values(&[rule, action]);
}

/// Count forgotten rate-limit keys.
pub fn ratelimit_evictions(rule: &str, n: u64) {
    RATELIMIT_EVICTIONS.with_label_values(&[rule]).inc_by(n);
}

/// Record one stage's duration (`waf`, `ratelimit`, ...).
pub fn observe_stage(stage: Stage, d: std::time::Duration) {
    STAGES[stage as usize].observe(d.as_secs_f64());
}

/// A pipeline stage of `cedargate_stage_duration_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Waf,
    Ratelimit,
    Authn,
    Authz,
    Upstream,
}

impl Stage {
    /// Every stage, in declaration order (`STAGES` is indexed by `stage as usize`).
    const ALL: [Stage; 5] = [
        Stage::Waf,
        Stage::Ratelimit,
        Stage::Authn,
        Stage::Authz,
        Stage::Upstream,
    ];

    /// The `stage` label value.
    fn label(self) -> &'static str {
        match self {
            Stage::Waf => "waf",
            Stage::Ratelimit => "ratelimit",
            Stage::Authn => "authn",
            Stage::Authz => "authz",
            Stage::Upstream => "upstream",
        }
    }
}

/// The stage histograms, looked up once (a label lookup per observation cost more than the
/// observation).
static STAGES: LazyLock<[prometheus::Histogram; 5]> =
    LazyLock::new(|| Stage::ALL.map(|s| STAGE.with_label_values(&[s.label()])));

/// `2xx`, `4xx`, ... for a status code.
fn status_class(status: u16) -> &'static str {
    match status {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

/// Count one token endpoint answer (`result`: the cache's lookup, or `uncached`).
pub fn token_request(result: &str, status: u16) {
    TOKEN_REQUESTS
        .with_label_values(&[result, status_class(status)])
        .inc();
    if result != "uncached" {
        cache_lookup("client_credentials", result != "miss");
    }
}

/// Record one token request sent upstream.
pub fn token_upstream(status: u16, seconds: f64) {
    TOKEN_UPSTREAM
        .with_label_values(&[status_class(status)])
        .observe(seconds);
}

/// Count one token store failure.
pub fn token_store_error(store: &str, op: &str) {
    TOKEN_STORE_ERRORS.with_label_values(&[store, op]).inc();
}

/// Count a policy reload.
pub fn policy_reload(result: &str) {
    RELOADS.with_label_values(&[result]).inc();
}

/// Record the policy versions in force (after a load or a reload).
pub fn policy_versions(active: &str, shadow: Option<&str>) {
    POLICY.reset();
    POLICY.with_label_values(&["active", active]).set(1);
    if let Some(v) = shadow {
        POLICY.with_label_values(&["shadow", v]).set(1);
    }
}

/// Count a request the backend could not answer (`kind`: pingora's error type, a fixed set).
pub fn upstream_error(kind: &'static str) {
    UPSTREAM_ERRORS.with_label_values(&[kind]).inc();
}

/// Count a cache lookup.
pub fn cache_lookup(cache: &str, hit: bool) {
    match CACHE_SERIES.iter().find(|(name, _)| *name == cache) {
        Some((_, series)) => series[usize::from(hit)].inc(),
        None => CACHE
            .with_label_values(&[cache, if hit { "hit" } else { "miss" }])
            .inc(),
    }
}

/// Count a shadow difference.
pub fn shadow_difference(route: &str, active: bool, shadow: bool) {
    let d = |a: bool| if a { "allow" } else { "deny" };
    SHADOW
        .with_label_values(&[route, d(active), d(shadow)])
        .inc();
}

/// Count one finished request.
pub fn observe(route: &str, method: &str, status: u16, decision: &'static str, seconds: f64) {
    let route = if route.is_empty() { "unmatched" } else { route };
    let method = method_label(method);
    SERIES.with_borrow_mut(|series| {
        // One lookup for a known route; a new one is resolved and kept.
        if let Some(of_route) = series.get_mut(route) {
            of_route.record(route, method, status, decision, seconds);
            return;
        }
        let mut of_route = RouteSeries {
            latency: LATENCY.with_label_values(&[route]),
            requests: Vec::new(),
        };
        of_route.record(route, method, status, decision, seconds);
        series.insert(route.to_string(), of_route);
    });
}

/// One route's series, as a thread last resolved them.
struct RouteSeries {
    latency: Histogram,
    /// `cedargate_requests_total` by method, status and decision.
    requests: Vec<(&'static str, u16, &'static str, IntCounter)>,
}

impl RouteSeries {
    /// Count one request of `route` and observe its latency.
    fn record(
        &mut self,
        route: &str,
        method: &'static str,
        status: u16,
        decision: &'static str,
        seconds: f64,
    ) {
        self.latency.observe(seconds);
        let known = self
            .requests
            .iter()
            .find(|(m, s, d, _)| *m == method && *s == status && *d == decision);
        match known {
            Some((.., counter)) => counter.inc(),
            None => {
                // Formatted on the stack: no allocation per request.
                let mut digits = itoa::Buffer::new();
                let counter =
                    REQUESTS.with_label_values(&[route, method, digits.format(status), decision]);
                counter.inc();
                self.requests.push((method, status, decision, counter));
            }
        }
    }
}

thread_local! {
    /// This thread's handles of the per-request series: resolving labels (a hash, a shared
    /// lock and two shared reference counts) happens once per series and thread, not per
    /// request. Bounded as the labels are (routes x methods x statuses x decisions).
    static SERIES: std::cell::RefCell<std::collections::HashMap<String, RouteSeries>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// Record the stage durations of one request (a stage that did not run is not recorded).
pub fn observe_stages(
    authn: std::time::Duration,
    authz: std::time::Duration,
    upstream: Option<std::time::Duration>,
) {
    if !authn.is_zero() {
        observe_stage(Stage::Authn, authn);
    }
    if !authz.is_zero() {
        observe_stage(Stage::Authz, authz);
    }
    if let Some(u) = upstream {
        observe_stage(Stage::Upstream, u);
    }
}

/// Methods outside the standard set collapse into one label value.
fn method_label(m: &str) -> &'static str {
    match m {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "OTHER",
    }
}

/// Process metrics with the conventional names (`process_*`), read from `/proc/self` at scrape
/// time. Written here rather than through prometheus' `process` feature, which would pull a
/// second `rustix` into the build.
mod process {
    use prometheus::{Counter, Gauge, IntGauge, Opts};
    use std::sync::{LazyLock, Mutex};

    fn gauge(name: &str, help: &str) -> Gauge {
        super::registered(Gauge::with_opts(Opts::new(name, help)))
    }

    fn int_gauge(name: &str, help: &str) -> IntGauge {
        super::registered(IntGauge::with_opts(Opts::new(name, help)))
    }

    /// A counter, as the convention has it: raised at each scrape by the CPU time used since.
    static CPU: LazyLock<Counter> = LazyLock::new(|| {
        super::registered(Counter::with_opts(Opts::new(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds",
        )))
    });
    static RSS: LazyLock<IntGauge> = LazyLock::new(|| {
        int_gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
        )
    });
    static VSZ: LazyLock<IntGauge> = LazyLock::new(|| {
        int_gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
        )
    });
    static FDS: LazyLock<IntGauge> =
        LazyLock::new(|| int_gauge("process_open_fds", "Number of open file descriptors"));
    static MAX_FDS: LazyLock<IntGauge> =
        LazyLock::new(|| int_gauge("process_max_fds", "Maximum number of open file descriptors"));
    static THREADS: LazyLock<IntGauge> =
        LazyLock::new(|| int_gauge("process_threads", "Number of OS threads in the process"));
    static START: LazyLock<Gauge> = LazyLock::new(|| {
        gauge(
            "process_start_time_seconds",
            "Start time of the process since the unix epoch in seconds",
        )
    });

    /// Clock ticks per second and page size: fixed at 100 and 4096 on Linux x86_64/aarch64.
    const TICKS: f64 = 100.0;
    const PAGE: i64 = 4096;

    /// Refresh every process metric (a missing /proc leaves them as they were). Concurrent
    /// scrapes take turns, so the CPU counter is raised once for each interval.
    pub fn refresh() {
        static TURN: Mutex<()> = Mutex::new(());
        let _turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the parenthesised command name (which may hold spaces).
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            // man 5 proc: utime 14, stime 15, num_threads 20, starttime 22, vsize 23, rss 24
            // (1-based, counting pid and comm); here 0-based after comm: minus 3.
            let used = (num(11) + num(12)) / TICKS;
            if used > CPU.get() {
                CPU.inc_by(used - CPU.get());
            }
            THREADS.set(num(17) as i64);
            VSZ.set(num(20) as i64);
            RSS.set(num(21) as i64 * PAGE);
            if let Some(boot) = boot_time() {
                START.set(boot + num(19) / TICKS);
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            FDS.set(dir.count() as i64);
        }
        if let Some(max) = max_fds() {
            MAX_FDS.set(max);
        }
    }

    /// The soft limit on open files ("Max open files  1024  4096  files"; "unlimited" is left out).
    fn max_fds() -> Option<i64> {
        let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        line["Max open files".len()..]
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    fn boot_time() -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        stat.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse().ok())
    }
}

/// The Prometheus text exposition of every metric.
pub fn render() -> String {
    LazyLock::force(&BUILD);
    LazyLock::force(&REQUESTS);
    LazyLock::force(&LATENCY);
    LazyLock::force(&RELOADS);
    LazyLock::force(&POLICY);
    LazyLock::force(&UPSTREAM_ERRORS);
    LazyLock::force(&CACHE);
    LazyLock::force(&SHADOW);
    LazyLock::force(&AUDIT_DROPPED);
    LazyLock::force(&STAGES);
    LazyLock::force(&TOKEN_REQUESTS);
    LazyLock::force(&TOKEN_UPSTREAM);
    LazyLock::force(&TOKEN_STORE_ERRORS);
    LazyLock::force(&WAF);
    LazyLock::force(&RATELIMIT);
    LazyLock::force(&RATELIMIT_EVICTIONS);
    LazyLock::force(&IP_LIST_RELOADS);
    LazyLock::force(&TLS_RELOADS);
    refresh_hit_ratios();
    process::refresh();
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&REGISTRY.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_stage_series_is_exposed() {
        for (i, stage) in super::Stage::ALL.into_iter().enumerate() {
            assert_eq!(stage as usize, i, "Stage::ALL out of declaration order");
        }
        let text = super::render();
        for stage in ["waf", "ratelimit", "authn", "authz", "upstream"] {
            let series = format!("cedargate_stage_duration_seconds_count{{stage=\"{stage}\"}}");
            assert!(text.contains(&series), "{series} missing");
        }
    }

    #[test]
    fn the_build_is_exposed() {
        let text = super::render();
        let series = format!(
            "cedargate_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&series), "{series} missing");
    }

    #[test]
    fn process_metrics_are_exposed_with_their_conventional_types() {
        // Spend some CPU so that the counter has something to count.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        let text = super::render();
        for (name, kind) in [
            ("process_cpu_seconds_total", "counter"),
            ("process_resident_memory_bytes", "gauge"),
            ("process_open_fds", "gauge"),
            ("process_max_fds", "gauge"),
            ("process_start_time_seconds", "gauge"),
        ] {
            let type_line = format!("# TYPE {name} {kind}");
            assert!(text.contains(&type_line), "{type_line} missing");
            let line = text
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("{name} missing"));
            let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
            assert!(value > 0.0, "{line}");
        }
    }
}
