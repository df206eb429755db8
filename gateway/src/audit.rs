//! Stage 10, the record: one audit line (JSON) per authorization decision, and one access
//! line per request. Both are written once, from the request context, in pingora's
//! `logging` phase. Tokens and secrets never appear: the audit line keeps the verified
//! claims that went into the decision, which is what `cedargate policy replay` needs.
//!
//! Audit lines go through a bounded channel to a writer thread, so a slow disk never
//! stalls a request; when the channel is full the line is dropped and counted
//! (`cedargate_audit_dropped_total`). The writer works in bursts: it writes what is queued,
//! flushes, then sleeps [`BATCH_INTERVAL`], so under load a request almost never has to wake
//! it (one futex wake and one `write` per line cost about a tenth of the gateway's CPU) and a
//! line reaches the output at most a few milliseconds late.

use std::io::{BufWriter, Write};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use serde_json::{Value, json};

use crate::config::AuditOutput;
use crate::error::now_rfc3339;
use crate::proxy::RequestCtx;

/// Lines buffered between requests and the writer thread.
const CHANNEL_CAPACITY: usize = 65_536;

/// The writer's pause after each burst (lines queued meanwhile are written together).
const BATCH_INTERVAL: Duration = Duration::from_millis(5);

/// Where audit lines go.
pub struct AuditSink {
    tx: Option<SyncSender<Vec<u8>>>,
}

fn writer_loop(rx: Receiver<Vec<u8>>, mut out: Box<dyn Write + Send>) {
    while let Ok(line) = rx.recv() {
        let mut ok = out.write_all(&line).is_ok();
        // Drain what is queued before flushing: one flush per burst, not per line.
        while let Ok(more) = rx.try_recv() {
            ok &= out.write_all(&more).is_ok();
        }
        ok &= out.flush().is_ok();
        if !ok {
            crate::metrics::AUDIT_DROPPED
                .with_label_values(&["write_error"])
                .inc();
        }
        std::thread::sleep(BATCH_INTERVAL);
    }
}

impl AuditSink {
    /// Open the configured output and start its writer thread.
    pub fn open(output: &AuditOutput) -> std::io::Result<AuditSink> {
        let out: Box<dyn Write + Send> = match output {
            AuditOutput::Off => return Ok(AuditSink { tx: None }),
            // Buffered: a burst is one `write`, not one per line.
            AuditOutput::Stdout => Box::new(BufWriter::with_capacity(64 * 1024, std::io::stdout())),
            AuditOutput::Stderr => Box::new(BufWriter::with_capacity(64 * 1024, std::io::stderr())),
            AuditOutput::File(path) => {
                use std::os::unix::fs::OpenOptionsExt;
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(path)?;
                Box::new(BufWriter::with_capacity(64 * 1024, f))
            }
        };
        let (tx, rx) = sync_channel(CHANNEL_CAPACITY);
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer_loop(rx, out))?;
        Ok(AuditSink { tx: Some(tx) })
    }

    fn send(&self, record: &Value) {
        let Some(tx) = &self.tx else { return };
        let mut line = serde_json::to_vec(record).unwrap_or_default();
        line.push(b'\n');
        match tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => crate::metrics::AUDIT_DROPPED
                .with_label_values(&["full"])
                .inc(),
            Err(TrySendError::Disconnected(_)) => crate::metrics::AUDIT_DROPPED
                .with_label_values(&["closed"])
                .inc(),
        }
    }
}

/// The audit line of a decided request.
fn decision_record(ctx: &RequestCtx) -> Option<Value> {
    let outcome = ctx.outcome.as_ref()?;
    let identity = ctx.identity.as_deref()?;
    let d = &outcome.decision;
    let mut record = json!({
        "type": "decision",
        "requestId": ctx.request_id,
        "timestamp": now_rfc3339(),
        "method": ctx.method,
        "path": ctx.path,
        "query": ctx.query,
        "principal": format!("Identity::{:?}", identity.principal_id),
        "action": ctx.route.as_deref().map(|a| format!("Action::{a:?}")),
        "resource": ctx.resource,
        "decision": if d.allowed { "allow" } else { "deny" },
        "reasons": d.reasons,
        "errors": d.errors,
        "policyVersion": d.policy_version,
        "decisionUs": ctx.authz.as_micros() as u64,
        "cacheHit": outcome.cache_hit,
        "claims": identity.to_claims(),
    });
    if let Some(user) = &ctx.impersonated {
        record["impersonatedUserId"] = user.clone().into();
        record["impersonatedBy"] = identity.principal_id.clone().into();
    }
    if let Some(s) = outcome.shadow_difference() {
        record["shadow"] = json!({
            "decision": if s.allowed { "allow" } else { "deny" },
            "reasons": s.reasons,
            "errors": s.errors,
            "policyVersion": s.policy_version,
        });
    }
    Some(record)
}

/// Record a finished request: metrics, the access line and, if it was decided, the audit line.
pub fn record(sink: &AuditSink, ctx: &RequestCtx, status: u16) {
    let identity = ctx.identity.as_deref();
    let decision = match (&ctx.outcome, &ctx.rejected) {
        (Some(o), _) if o.decision.allowed => "allow",
        (Some(_), _) => "deny",
        (None, Some(_)) => "reject",
        (None, None) => "none",
    };
    crate::metrics::observe(
        ctx.route.as_deref().unwrap_or(""),
        &ctx.method,
        status,
        decision,
        ctx.started.elapsed().as_secs_f64(),
    );
    crate::metrics::observe_stages(ctx.authn, ctx.authz, ctx.upstream);
    if !ctx.ratelimit.is_zero() {
        crate::metrics::observe_stage("ratelimit", ctx.ratelimit);
    }
    tracing::info!(
        target: "access",
        request_id = %ctx.request_id,
        method = %ctx.method,
        route = ctx.route.as_deref().unwrap_or(""),
        client_ip = ctx.client_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        principal = %mask_email(identity.map_or("", |i| i.principal_id.as_str())),
        impersonated = %mask_email(ctx.impersonated.as_deref().unwrap_or("")),
        workspace = identity.and_then(|i| i.workspace_id.as_deref()).unwrap_or(""),
        decision,
        code = ctx.rejected.as_ref().map_or("", |e| e.code()),
        status,
        waf_us = ctx.waf.as_micros() as u64,
        ratelimit_us = ctx.ratelimit.as_micros() as u64,
        authn_us = ctx.authn.as_micros() as u64,
        authz_us = ctx.authz.as_micros() as u64,
        upstream_us = ctx.upstream.map_or(0, |d| d.as_micros() as u64),
        total_us = ctx.started.elapsed().as_micros() as u64,
        "request"
    );
    if let Some(record) = decision_record(ctx) {
        sink.send(&record);
    }
}

/// An email address as `j***@example.com` (access lines name principals without exposing
/// addresses); anything else unchanged.
pub fn mask_email(id: &str) -> std::borrow::Cow<'_, str> {
    match id.split_once('@') {
        Some((local, domain)) if !local.is_empty() && domain.contains('.') => {
            let first = local.chars().next().unwrap_or('*');
            format!("{first}***@{domain}").into()
        }
        _ => id.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::mask_email;

    #[test]
    fn emails_are_masked_and_ids_kept() {
        assert_eq!(mask_email("jane.doe@example.com"), "j***@example.com");
        assert_eq!(mask_email("u-owner"), "u-owner");
        assert_eq!(mask_email("svc@internal"), "svc@internal");
        assert_eq!(mask_email(""), "");
    }
}
