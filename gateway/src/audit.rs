//! One audit line per request: who asked for what, what was decided and why. Written once,
//! from the request context, in pingora's `logging` phase. Never carries tokens or secrets.

use crate::proxy::RequestCtx;

/// Emit the audit record for a finished request.
pub fn record(ctx: &RequestCtx, status: u16) {
    let identity = ctx.identity.as_deref();
    let decision = match (&ctx.decision, &ctx.rejected) {
        (Some(d), _) if d.allowed => "allow",
        (Some(_), _) => "deny",
        (None, Some(_)) => "reject",
        (None, None) => "none",
    };
    let reasons = ctx
        .decision
        .as_ref()
        .map(|d| d.reasons.join(","))
        .unwrap_or_default();
    let errors = ctx
        .decision
        .as_ref()
        .map(|d| d.errors.join("; "))
        .unwrap_or_default();
    crate::metrics::observe(
        ctx.route.as_deref().unwrap_or(""),
        &ctx.method,
        status,
        decision,
        ctx.started.elapsed().as_secs_f64(),
    );
    tracing::info!(
        target: "audit",
        request_id = %ctx.request_id,
        method = %ctx.method,
        path = %ctx.path,
        route = ctx.route.as_deref().unwrap_or(""),
        principal = identity.map_or("", |i| i.principal_id.as_str()),
        workspace = identity.and_then(|i| i.workspace_id.as_deref()).unwrap_or(""),
        client_id = identity.and_then(|i| i.client_id.as_deref()).unwrap_or(""),
        impersonated_user = ctx.impersonated.as_deref().unwrap_or(""),
        decision,
        reasons = %reasons,
        eval_errors = %errors,
        policy_version = ctx.decision.as_ref().map_or("", |d| d.policy_version.as_str()),
        code = ctx.rejected.as_ref().map_or("", |e| e.code()),
        status,
        authn_us = ctx.authn.as_micros() as u64,
        authz_us = ctx.authz.as_micros() as u64,
        upstream_us = ctx.upstream.map_or(0, |d| d.as_micros() as u64),
        total_us = ctx.started.elapsed().as_micros() as u64,
        "decision"
    );
}
