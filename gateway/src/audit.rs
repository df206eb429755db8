//! Stage 10, the record: one audit line (JSON) per authorization decision, and one access
//! line per request. Both are written once, from the request context, in pingora's
//! `logging` phase. Tokens and secrets never appear: the audit line keeps the verified
//! claims that went into the decision, which is what `cedargate policy replay` needs.
//!
//! Audit lines are written off the request path by a [`LineBuffer`] (bursts every few
//! milliseconds, so a slow disk never stalls a request); when its buffer is full the line is
//! dropped and counted (`cedargate_audit_dropped_total`).

use std::io::{BufWriter, Write};

use serde::Serialize;

use crate::config::AuditOutput;
use crate::error::now_rfc3339;
use crate::lines::LineBuffer;
use crate::proxy::RequestCtx;

/// Unwritten audit lines held at most (about 64k lines).
const BUFFER_BYTES: usize = 64 * 1024 * 1024;

/// Where audit lines go.
pub struct AuditSink {
    lines: Option<LineBuffer>,
}

fn write_failed() {
    crate::metrics::AUDIT_DROPPED
        .with_label_values(&["write_error"])
        .inc();
}

impl AuditSink {
    /// Open the configured output and start its writer thread.
    pub fn open(output: &AuditOutput) -> std::io::Result<AuditSink> {
        let out: Box<dyn Write + Send> = match output {
            AuditOutput::Off => return Ok(AuditSink { lines: None }),
            AuditOutput::Stdout => Box::new(std::io::stdout()),
            AuditOutput::Stderr => Box::new(std::io::stderr()),
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
        let lines = LineBuffer::start("audit-writer", out, BUFFER_BYTES, write_failed)?;
        Ok(AuditSink { lines: Some(lines) })
    }

    fn send(&self, record: &impl Serialize) {
        let Some(lines) = &self.lines else { return };
        let mut line = Vec::with_capacity(1024);
        if serde_json::to_writer(&mut line, record).is_err() {
            return;
        }
        line.push(b'\n');
        if !lines.push(&line) {
            crate::metrics::AUDIT_DROPPED
                .with_label_values(&["full"])
                .inc();
        }
    }
}

/// The audit line of a decided request, serialised straight from the context (no JSON tree is
/// built per request). Field order is the line's order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DecisionLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    request_id: &'a str,
    timestamp: String,
    method: &'a str,
    path: &'a str,
    query: RedactedQuery<'a>,
    principal: EntityRef<'a>,
    action: Option<EntityRef<'a>>,
    resource: Option<&'a str>,
    decision: &'static str,
    reasons: &'a [String],
    errors: &'a [String],
    policy_version: &'a str,
    decision_us: u64,
    cache_hit: bool,
    claims: &'a serde_json::value::RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    impersonated_user_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    impersonated_by: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shadow: Option<ShadowLine<'a>>,
}

/// The shadow set's decision, when it differs from the active one.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ShadowLine<'a> {
    decision: &'static str,
    reasons: &'a [String],
    errors: &'a [String],
    policy_version: &'a str,
}

/// A Cedar entity reference as text, e.g. `Identity::"u-1"` (the id quoted as Cedar does).
struct EntityRef<'a> {
    kind: &'static str,
    id: &'a str,
}

impl Serialize for EntityRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&crate::authz::mapping::EntityText {
            kind: self.kind,
            id: self.id,
        })
    }
}

/// A request's query as the audit line keeps it: the value of a parameter named like a
/// credential (`password`, `client_secret`, `access_token`, `api_key`, `signature`, `code`, ...)
/// replaced by `***`, the rest as received. Cedar sees only the parameters a route declares,
/// none of which is named so, so a replay of the line decides as the gateway did.
struct RedactedQuery<'a>(&'a str);

impl Serialize for RedactedQuery<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let pairs = || self.0.split('&');
        if !pairs().any(|pair| credential_name(pair.split('=').next().unwrap_or(""))) {
            return serializer.serialize_str(self.0);
        }
        let redacted: Vec<std::borrow::Cow<'_, str>> = pairs()
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if credential_name(name) => format!("{name}=***").into(),
                _ => pair.into(),
            })
            .collect();
        serializer.serialize_str(&redacted.join("&"))
    }
}

/// Whether a query parameter's name (as received, percent-encoded or not) names a credential.
fn credential_name(raw: &str) -> bool {
    const EXACT: [&str; 10] = [
        "token", "key", "auth", "sig", "code", "pwd", "pass", "otp", "session", "sid",
    ];
    const PARTS: [&str; 13] = [
        "password",
        "passwd",
        "secret",
        "access_token",
        "refresh_token",
        "id_token",
        "api_key",
        "apikey",
        "api-key",
        "signature",
        "credential",
        "authorization",
        "private",
    ];
    let named = |name: &str| EXACT.contains(&name) || PARTS.iter().any(|p| name.contains(p));
    if raw.bytes().any(|b| b == b'%' || b == b'+') {
        let decoded = percent_encoding::percent_decode_str(&raw.replace('+', " "))
            .decode_utf8_lossy()
            .to_ascii_lowercase();
        named(&decoded)
    } else if raw.bytes().any(|b| b.is_ascii_uppercase()) {
        named(&raw.to_ascii_lowercase())
    } else {
        !raw.is_empty() && named(raw)
    }
}

fn verdict(allowed: bool) -> &'static str {
    if allowed { "allow" } else { "deny" }
}

/// The audit line of a decided request.
fn decision_record(ctx: &RequestCtx) -> Option<DecisionLine<'_>> {
    let outcome = ctx.outcome.as_ref()?;
    let identity = ctx.identity.as_deref()?;
    let d = &outcome.decision;
    Some(DecisionLine {
        kind: "decision",
        request_id: &ctx.request_id,
        timestamp: now_rfc3339(),
        method: &ctx.method,
        path: &ctx.path,
        query: RedactedQuery(&ctx.query),
        principal: EntityRef {
            kind: "Identity",
            id: &identity.principal_id,
        },
        action: ctx
            .route
            .as_deref()
            .map(|id| EntityRef { kind: "Action", id }),
        resource: ctx.resource.as_deref(),
        decision: verdict(d.allowed),
        reasons: &d.reasons,
        errors: &d.errors,
        policy_version: &d.policy_version,
        decision_us: ctx.authz.as_micros() as u64,
        cache_hit: outcome.cache_hit,
        claims: &identity.derived().claims_json,
        impersonated_user_id: ctx.impersonated.as_deref(),
        impersonated_by: ctx
            .impersonated
            .as_ref()
            .map(|_| identity.principal_id.as_str()),
        shadow: outcome.shadow_difference().map(|s| ShadowLine {
            decision: verdict(s.allowed),
            reasons: &s.reasons,
            errors: &s.errors,
            policy_version: &s.policy_version,
        }),
    })
}

/// Record a finished request: metrics, the access line and, if it was decided, the audit line.
pub fn record(sink: &AuditSink, ctx: &RequestCtx, status: u16) {
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
        crate::metrics::observe_stage(crate::metrics::Stage::Ratelimit, ctx.ratelimit);
    }
    if crate::lines::log_enabled() && tracing::enabled!(target: "access", tracing::Level::INFO) {
        access_line(ctx, status, decision);
    }
    if let Some(record) = decision_record(ctx) {
        sink.send(&record);
    }
}

/// The access line, in the shape of tracing's JSON lines (`timestamp`, `level`, `fields`,
/// `target`), serialised straight from the request context: it is written for every request,
/// and tracing's JSON formatting cost several times more.
#[derive(Serialize)]
struct AccessLine<'a> {
    timestamp: &'a str,
    level: &'static str,
    fields: AccessFields<'a>,
    target: &'static str,
}

#[derive(Serialize)]
struct AccessFields<'a> {
    message: &'static str,
    request_id: &'a str,
    method: &'a str,
    route: &'a str,
    client_ip: ClientIp,
    principal: std::borrow::Cow<'a, str>,
    impersonated: std::borrow::Cow<'a, str>,
    workspace: &'a str,
    decision: &'static str,
    code: &'static str,
    status: u16,
    waf_us: u64,
    ratelimit_us: u64,
    authn_us: u64,
    authz_us: u64,
    upstream_us: u64,
    total_us: u64,
}

/// The client's address as text, or `""`. IPv4 addresses (nearly all) are written without the
/// formatting machinery.
struct ClientIp(Option<std::net::IpAddr>);

impl Serialize for ClientIp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(std::net::IpAddr::V4(v4)) => {
                let mut text = String::with_capacity(15);
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text.push('.');
                    }
                    text.push_str(itoa::Buffer::new().format(octet));
                }
                serializer.serialize_str(&text)
            }
            Some(ip) => serializer.collect_str(&ip),
            None => serializer.serialize_str(""),
        }
    }
}

fn access_line(ctx: &RequestCtx, status: u16, decision: &'static str) {
    let identity = ctx.identity.as_deref();
    let mut timestamp = String::with_capacity(32);
    crate::error::write_now_rfc3339(&mut timestamp, 6);
    let line = AccessLine {
        timestamp: &timestamp,
        level: "INFO",
        fields: AccessFields {
            message: "request",
            request_id: &ctx.request_id,
            method: &ctx.method,
            // As in the metrics' route label.
            route: ctx.route.as_deref().unwrap_or("unmatched"),
            client_ip: ClientIp(ctx.client_ip),
            principal: mask_email(identity.map_or("", |i| i.principal_id.as_str())),
            impersonated: mask_email(ctx.impersonated.as_deref().unwrap_or("")),
            workspace: identity
                .and_then(|i| i.workspace_id.as_deref())
                .unwrap_or(""),
            decision,
            code: ctx.rejected.as_ref().map_or("", |e| e.code()),
            status,
            waf_us: ctx.waf.as_micros() as u64,
            ratelimit_us: ctx.ratelimit.as_micros() as u64,
            authn_us: ctx.authn.as_micros() as u64,
            authz_us: ctx.authz.as_micros() as u64,
            upstream_us: ctx.upstream.map_or(0, |d| d.as_micros() as u64),
            total_us: ctx.started.elapsed().as_micros() as u64,
        },
        target: "access",
    };
    let mut out = Vec::with_capacity(512);
    if serde_json::to_writer(&mut out, &line).is_ok() {
        out.push(b'\n');
        crate::lines::log_line(&out);
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
    use super::{RedactedQuery, mask_email};

    fn redacted(query: &str) -> String {
        serde_json::to_value(RedactedQuery(query))
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn credentials_in_queries_are_redacted_and_the_rest_kept() {
        for (query, expected) in [
            ("", ""),
            ("limit=10&nextToken=abc", "limit=10&nextToken=abc"),
            (
                "status=active&password=hunter2",
                "status=active&password=***",
            ),
            (
                "client_secret=s3cr3t&api_key=k&X-Amz-Signature=f00&code=c",
                "client_secret=***&api_key=***&X-Amz-Signature=***&code=***",
            ),
            ("pass%77ord=x&tier=free", "pass%77ord=***&tier=free"),
            ("token", "token"),
            (
                "keyword=rust&monkey=1&period=weekly",
                "keyword=rust&monkey=1&period=weekly",
            ),
        ] {
            assert_eq!(redacted(query), expected, "{query}");
        }
    }

    #[test]
    fn client_ips_are_their_text() {
        for ip in [
            "127.0.0.1",
            "0.0.0.0",
            "203.0.113.255",
            "10.20.3.4",
            "::1",
            "2001:db8::7",
        ] {
            let parsed: std::net::IpAddr = ip.parse().unwrap();
            let json = serde_json::to_string(&super::ClientIp(Some(parsed))).unwrap();
            assert_eq!(json, format!("\"{ip}\""));
        }
        assert_eq!(
            serde_json::to_string(&super::ClientIp(None)).unwrap(),
            "\"\""
        );
    }

    #[test]
    fn emails_are_masked_and_ids_kept() {
        assert_eq!(mask_email("jane.doe@example.com"), "j***@example.com");
        assert_eq!(mask_email("u-owner"), "u-owner");
        assert_eq!(mask_email("svc@internal"), "svc@internal");
        assert_eq!(mask_email(""), "");
    }
}
