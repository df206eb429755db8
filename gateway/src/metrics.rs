//! Prometheus metrics, served on the admin listener. Labels are bounded: route templates
//! (never raw paths), methods, status codes and decisions.

use std::sync::LazyLock;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

/// The process's metric registry.
pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

/// Requests by route template, method, status and decision.
pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let c = IntCounterVec::new(
        Opts::new(
            "cedargate_requests_total",
            "API requests by route, method, status and decision",
        ),
        &["route", "method", "status", "decision"],
    )
    .expect("valid metric");
    let _ = REGISTRY.register(Box::new(c.clone()));
    c
});

/// End-to-end request latency by route template.
pub static LATENCY: LazyLock<HistogramVec> = LazyLock::new(|| {
    let h = HistogramVec::new(
        HistogramOpts::new(
            "cedargate_request_duration_seconds",
            "API request latency, end to end",
        )
        .buckets(vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ]),
        &["route"],
    )
    .expect("valid metric");
    let _ = REGISTRY.register(Box::new(h.clone()));
    h
});

/// Count one finished request.
pub fn observe(route: &str, method: &str, status: u16, decision: &str, seconds: f64) {
    let route = if route.is_empty() { "unmatched" } else { route };
    REQUESTS
        .with_label_values(&[route, method_label(method), &status.to_string(), decision])
        .inc();
    LATENCY.with_label_values(&[route]).observe(seconds);
}

/// Methods outside the standard set collapse into one label value.
fn method_label(m: &str) -> &str {
    match m {
        "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS" => m,
        _ => "OTHER",
    }
}

/// The Prometheus text exposition of every metric.
pub fn render() -> String {
    LazyLock::force(&REQUESTS);
    LazyLock::force(&LATENCY);
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&REGISTRY.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}
