//! Stage 2: the web application firewall. IP reputation, size limits, and attack detection on
//! the decoded request (see `detect`) — before authentication, so an attacker costs little.
//!
//! Bodies: a body whose `Content-Length` fits pingora's retry buffer (64 KiB) is read whole in
//! this stage and inspected before authentication; pingora then replays it to the backend. A
//! larger or chunked body is inspected as it streams (`BodyGate`): its head is held back until
//! inspected, then everything flows on untouched, so bodies up to `max_body_bytes` reach the
//! backend intact and a blocked one never reaches it complete.

pub mod detect;
pub mod iplist;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use pingora::http::RequestHeader;

use crate::error::GatewayError;
use crate::metrics;
use crate::ratelimit::Action;
use detect::{Detector, Hit, Part, RequestView, Rule};
use iplist::IpSet;

/// A body larger than this is never read whole before the backend is contacted (it is
/// pingora's retry buffer, which replays what was read; see PITFALLS.md).
pub const READ_AHEAD_LIMIT: u64 = 64 * 1024;
/// How long a client may take to send a body read ahead of authentication.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// What happens to the part of a body beyond `body_inspect_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OversizeBody {
    /// Inspect the head; the rest passes uninspected.
    InspectHead,
    /// Refuse bodies larger than the inspection limit.
    Block,
}

/// A field a rule is excluded from: `part` (`path`, `query`, `header`, `cookie`, `body`) and
/// a name pattern where `*` matches anything (`items[*].text`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPattern {
    pub part: &'static str,
    pub name: String,
}

impl FieldPattern {
    /// `body:lesson.text`, `query:q`, `header:user-agent`, `cookie:prefs`, `path`.
    pub fn parse(text: &str) -> Result<FieldPattern, String> {
        let (part, name) = text.split_once(':').unwrap_or((text, "*"));
        let part = match part {
            "path" => "path",
            "query" => "query",
            "header" => "header",
            "cookie" => "cookie",
            "body" => "body",
            other => {
                return Err(format!(
                    "field `{text}`: `{other}` is not path, query, header, cookie or body"
                ));
            }
        };
        let name = if part == "header" {
            name.to_ascii_lowercase()
        } else {
            name.to_string()
        };
        Ok(FieldPattern { part, name })
    }

    fn matches(&self, part: Part, name: &str) -> bool {
        part_group(part) == self.part && glob(&self.name, name)
    }
}

fn part_group(part: Part) -> &'static str {
    match part {
        Part::Path => "path",
        Part::QueryName | Part::QueryValue => "query",
        Part::Header => "header",
        Part::Cookie => "cookie",
        Part::BodyKey | Part::BodyValue | Part::Body => "body",
    }
}

/// `*` matches any run of characters; everything else literally.
fn glob(pattern: &str, text: &str) -> bool {
    let Some((head, rest)) = pattern.split_once('*') else {
        return pattern == text;
    };
    let Some(mut text) = text.strip_prefix(head) else {
        return false;
    };
    let parts: Vec<&str> = rest.split('*').collect();
    let (last, middle) = parts.split_last().unwrap_or((&"", &[]));
    for p in middle {
        match text.find(p) {
            Some(i) => text = &text[i + p.len()..],
            None => return false,
        }
    }
    text.ends_with(last)
}

/// Rules switched off for (some fields of) one route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exclusion {
    /// The route's Cedar action id (`post /dashboard/v1/...`).
    pub action_id: String,
    /// Empty: every rule.
    pub rules: Vec<Rule>,
    /// Empty: every field.
    pub fields: Vec<FieldPattern>,
}

/// The validated `[waf]` configuration.
#[derive(Debug, Clone)]
pub struct WafSettings {
    pub enabled: bool,
    pub default_action: Action,
    pub rule_actions: HashMap<Rule, Action>,
    pub inspected_headers: Vec<String>,
    pub body_inspect_bytes: usize,
    pub oversize_body: OversizeBody,
    pub max_body_bytes: u64,
    pub max_url_bytes: usize,
    pub max_header_count: usize,
    pub max_header_bytes: usize,
    pub trusted_proxies: IpSet,
    pub ip_allow_file: Option<PathBuf>,
    pub ip_deny_file: Option<PathBuf>,
    pub ip_lists_watch: bool,
    pub ip_lists_watch_interval_ms: u64,
    pub sample_log_per_second: u32,
    pub exclusions: Vec<Exclusion>,
}

/// The reputation lists in force.
#[derive(Debug, Default)]
pub struct IpLists {
    pub allow: IpSet,
    pub deny: IpSet,
}

/// What the IP lists say about a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reputation {
    /// On the allow list: no deny list, no IP rate limit (still inspected).
    Allowed,
    Neutral,
}

/// The WAF of the api listener.
pub struct Waf {
    settings: WafSettings,
    detector: Detector,
    lists: ArcSwap<IpLists>,
    log_budget: AtomicU64,
}

impl Waf {
    /// The WAF for `settings`; fails when an IP list cannot be read.
    pub fn new(settings: WafSettings) -> Result<Waf, String> {
        let lists = load_lists(&settings)?;
        let detector = if settings.enabled {
            Detector::new()
        } else {
            Detector::lazy()
        };
        let waf = Waf {
            settings,
            detector,
            lists: ArcSwap::from_pointee(lists),
            log_budget: AtomicU64::new(0),
        };
        Ok(waf)
    }

    /// The settings in force.
    pub fn settings(&self) -> &WafSettings {
        &self.settings
    }

    /// Re-read the IP lists; on error the lists in force stay.
    pub fn reload_ip_lists(&self, trigger: &str) -> Result<(usize, usize), String> {
        match load_lists(&self.settings) {
            Ok(lists) => {
                let counts = (lists.allow.len(), lists.deny.len());
                self.lists.store(Arc::new(lists));
                metrics::ip_list_reload("ok");
                tracing::info!(
                    trigger,
                    allow = counts.0,
                    deny = counts.1,
                    "IP lists reloaded"
                );
                Ok(counts)
            }
            Err(e) => {
                metrics::ip_list_reload("refused");
                tracing::error!(trigger, error = %e, "IP lists refused; the previous lists stay in force");
                Err(e)
            }
        }
    }

    /// The address of a session's client: the peer (unspecified when it has none, e.g. a unix
    /// socket), or `X-Forwarded-For` behind a trusted proxy.
    pub fn session_client_ip(&self, session: &pingora::proxy::Session) -> IpAddr {
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |a| a.ip());
        self.client_ip(peer, session.req_header())
    }

    /// The client's address (the peer, or `X-Forwarded-For` behind a trusted proxy).
    pub fn client_ip(&self, peer: IpAddr, req: &RequestHeader) -> IpAddr {
        iplist::client_ip(
            peer,
            &self.settings.trusted_proxies,
            req.headers
                .get_all("x-forwarded-for")
                .iter()
                .map(|v| v.as_bytes()),
        )
    }

    /// Reputation, then size limits: the cheapest refusals. `inspects_body`: the body will be
    /// inspected, so `oversize_body = "block"` refuses one larger than the inspection cap.
    pub fn check_client_and_size(
        &self,
        ip: IpAddr,
        req: &RequestHeader,
        inspects_body: bool,
    ) -> Result<Reputation, GatewayError> {
        let lists = self.lists.load();
        let reputation = if lists.allow.contains(ip) {
            Reputation::Allowed
        } else if lists.deny.contains(ip) {
            metrics::waf_match("ip-deny-list", "client", "block");
            return Err(GatewayError::WafBlocked("ip-deny-list"));
        } else {
            Reputation::Neutral
        };
        let s = &self.settings;
        let uri_len = req.uri.path_and_query().map_or(0, |p| p.as_str().len());
        if uri_len > s.max_url_bytes {
            return Err(GatewayError::UriTooLong);
        }
        if req.headers.len() > s.max_header_count {
            return Err(GatewayError::HeadersTooLarge);
        }
        let header_bytes: usize = req
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum();
        if header_bytes > s.max_header_bytes {
            return Err(GatewayError::HeadersTooLarge);
        }
        if let Some(len) = content_length(req)? {
            if len > s.max_body_bytes {
                return Err(GatewayError::PayloadTooLarge);
            }
            if inspects_body
                && s.oversize_body == OversizeBody::Block
                && len > s.body_inspect_bytes as u64
            {
                return Err(GatewayError::BodyNotInspectable);
            }
        }
        Ok(reputation)
    }

    /// Attack detection on the request head and, when given, the body's head.
    pub fn inspect(
        &self,
        req: &RequestHeader,
        action_id: Option<&str>,
        body: &[u8],
        body_truncated: bool,
        log: &SampleContext<'_>,
    ) -> Result<(), GatewayError> {
        if !self.settings.enabled {
            return Ok(());
        }
        let mut headers: smallvec_like::Headers<'_> = smallvec_like::Headers::new();
        for (name, v) in req.headers.iter() {
            if detect::inspects(&self.settings.inspected_headers, name.as_str()) {
                headers.push((name.as_str(), v.as_bytes()));
            }
        }
        let content_type = req
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let view = RequestView {
            path: req.uri.path(),
            query: req.uri.query(),
            headers: headers.as_slice(),
            content_type,
            body: &body[..body.len().min(self.settings.body_inspect_bytes)],
            body_truncated: body_truncated || body.len() > self.settings.body_inspect_bytes,
        };
        let exclusions: Vec<&Exclusion> = match action_id {
            Some(id) => self
                .settings
                .exclusions
                .iter()
                .filter(|e| e.action_id == id)
                .collect(),
            None => Vec::new(),
        };
        let skip = |rule: Rule, part: Part, name: &str| {
            exclusions.iter().any(|e| {
                (e.rules.is_empty() || e.rules.contains(&rule))
                    && (e.fields.is_empty() || e.fields.iter().any(|f| f.matches(part, name)))
            })
        };
        let mut blocked: Option<Hit> = None;
        let mut on_hit = |hit: Hit| {
            let action = self
                .settings
                .rule_actions
                .get(&hit.rule)
                .copied()
                .unwrap_or(self.settings.default_action);
            let label = match action {
                Action::Block => "block",
                Action::Count => "count",
            };
            metrics::waf_match(hit.rule.id(), hit.part.as_str(), label);
            self.sample(&hit, label, action_id, log);
            if action == Action::Block {
                blocked = Some(hit);
                false
            } else {
                true
            }
        };
        self.detector.scan(&view, &skip, &mut on_hit);
        match blocked {
            Some(hit) => Err(GatewayError::WafBlocked(hit.rule.id())),
            None => Ok(()),
        }
    }

    /// Log a match, at most `sample_log_per_second` per second: never the payload, only
    /// where it was.
    fn sample(&self, hit: &Hit, action: &str, action_id: Option<&str>, log: &SampleContext<'_>) {
        let per_second = u64::from(self.settings.sample_log_per_second);
        if per_second == 0 {
            return;
        }
        let second = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // High 40 bits: the second; low 24 bits: lines written in it.
        let budget = self.log_budget.load(Ordering::Relaxed);
        let (at, used) = (budget >> 24, budget & 0xff_ffff);
        let next = if at == second { used + 1 } else { 1 };
        if next > per_second
            || self
                .log_budget
                .compare_exchange(
                    budget,
                    (second << 24) | next,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        tracing::warn!(
            target: "waf",
            request_id = %log.request_id,
            client_ip = %log.client_ip,
            method = %log.method,
            route = action_id.unwrap_or("unmatched"),
            path = %truncate(log.path, 200),
            rule = hit.rule.id(),
            part = hit.part.as_str(),
            field = %truncate(&hit.name, 100),
            action,
            "WAF rule matched"
        );
    }

    /// A gate for a body inspected while it streams, or `None` when none is needed.
    pub fn body_gate(&self) -> BodyGate {
        BodyGate {
            held: BytesMut::new(),
            seen: 0,
            inspected: !self.settings.enabled,
        }
    }

    /// The body size limit.
    pub fn max_body_bytes(&self) -> u64 {
        self.settings.max_body_bytes
    }
}

/// What the sampled block log says about the request (never headers, query values or body).
pub struct SampleContext<'a> {
    pub request_id: &'a str,
    pub client_ip: IpAddr,
    pub method: &'a str,
    pub path: &'a str,
}

/// The body of one request while it streams: the head is held until inspected.
#[derive(Debug)]
pub struct BodyGate {
    held: BytesMut,
    seen: u64,
    inspected: bool,
}

/// What to do with a body chunk.
pub enum GateStep {
    /// Send this (possibly empty: hold) now.
    Pass,
    /// The held head is complete: inspect it (`truncated`: more follows), then call
    /// [`BodyGate::release`].
    Inspect { truncated: bool },
}

impl BodyGate {
    /// A gate that inspects nothing (the body was read and inspected ahead).
    pub fn inspected() -> BodyGate {
        BodyGate {
            held: BytesMut::new(),
            seen: 0,
            inspected: true,
        }
    }

    /// Take one chunk. `Err` when the body grows past `max_body_bytes` or, with
    /// `OversizeBody::Block`, past the inspection limit.
    pub fn take(
        &mut self,
        waf: &Waf,
        chunk: &mut Option<Bytes>,
        end: bool,
    ) -> Result<GateStep, GatewayError> {
        let len = chunk.as_ref().map_or(0, |c| c.len()) as u64;
        self.seen += len;
        if self.seen > waf.settings.max_body_bytes {
            return Err(GatewayError::PayloadTooLarge);
        }
        if self.inspected {
            return Ok(GateStep::Pass);
        }
        if let Some(c) = chunk.take() {
            self.held.extend_from_slice(&c);
        }
        let limit = waf.settings.body_inspect_bytes;
        if waf.settings.oversize_body == OversizeBody::Block && self.held.len() > limit {
            return Err(GatewayError::BodyNotInspectable);
        }
        if self.held.len() >= limit || end {
            return Ok(GateStep::Inspect {
                truncated: self.held.len() > limit || !end,
            });
        }
        // Hold: an empty chunk is not written upstream (and does not end the body).
        *chunk = Some(Bytes::new());
        Ok(GateStep::Pass)
    }

    /// The held head, for inspection.
    pub fn head(&self) -> &[u8] {
        &self.held
    }

    /// After a clean inspection: everything held goes on, and later chunks pass untouched.
    pub fn release(&mut self, chunk: &mut Option<Bytes>) {
        self.inspected = true;
        *chunk = Some(std::mem::take(&mut self.held).freeze());
    }
}

/// A parsed `Content-Length`; a malformed one is refused (pingora also refuses it).
fn content_length(req: &RequestHeader) -> Result<Option<u64>, GatewayError> {
    match req.headers.get(http::header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Some)
            .ok_or(GatewayError::InvalidRequest(
                "Content-Length is not a number",
            )),
    }
}

/// Whether the body is small enough to be read whole before authentication.
pub fn read_ahead_length(req: &RequestHeader) -> Option<u64> {
    let len = content_length(req).ok()??;
    (len > 0
        && len <= READ_AHEAD_LIMIT
        && !req.headers.contains_key(http::header::TRANSFER_ENCODING))
    .then_some(len)
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn load_lists(s: &WafSettings) -> Result<IpLists, String> {
    let load = |p: &Option<PathBuf>| match p {
        Some(p) => IpSet::load(p),
        None => Ok(IpSet::default()),
    };
    Ok(IpLists {
        allow: load(&s.ip_allow_file)?,
        deny: load(&s.ip_deny_file)?,
    })
}

impl crate::reload::Reload for Waf {
    type Stamp = [Option<SystemTime>; 2];

    fn stamp(&self) -> Self::Stamp {
        [&self.settings.ip_allow_file, &self.settings.ip_deny_file]
            .map(|p| p.as_deref().and_then(crate::reload::modified))
    }

    fn reload_files(&self, trigger: &'static str) {
        let _ = self.reload_ip_lists(trigger);
    }
}

/// A small inline list of headers, so inspection allocates nothing for typical requests.
mod smallvec_like {
    pub struct Headers<'a> {
        inline: [(&'a str, &'a [u8]); 8],
        len: usize,
        spill: Vec<(&'a str, &'a [u8])>,
    }

    impl<'a> Headers<'a> {
        pub fn new() -> Headers<'a> {
            Headers {
                inline: [("", &[]); 8],
                len: 0,
                spill: Vec::new(),
            }
        }

        pub fn push(&mut self, item: (&'a str, &'a [u8])) {
            if self.spill.is_empty() && self.len < self.inline.len() {
                self.inline[self.len] = item;
                self.len += 1;
            } else {
                if self.spill.is_empty() {
                    self.spill.extend_from_slice(&self.inline[..self.len]);
                }
                self.spill.push(item);
            }
        }

        pub fn as_slice(&self) -> &[(&'a str, &'a [u8])] {
            if self.spill.is_empty() {
                &self.inline[..self.len]
            } else {
                &self.spill
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_json_paths_and_names() {
        assert!(glob("items[*].text", "items[3].text"));
        assert!(!glob("items[*].text", "items[3].title"));
        assert!(glob("*", "anything"));
        assert!(glob("body", "body"));
        assert!(!glob("body", "bodies"));
        assert!(glob("a*b*c", "a-x-b-y-c"));
    }

    #[test]
    fn field_patterns_parse_and_match_parts() {
        let p = FieldPattern::parse("body:lesson.text").unwrap();
        assert!(p.matches(Part::BodyValue, "lesson.text"));
        assert!(!p.matches(Part::QueryValue, "lesson.text"));
        let h = FieldPattern::parse("header:User-Agent").unwrap();
        assert!(h.matches(Part::Header, "user-agent"));
        assert!(FieldPattern::parse("nose:x").is_err());
        assert!(FieldPattern::parse("path").unwrap().matches(Part::Path, ""));
    }
}
