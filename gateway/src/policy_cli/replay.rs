//! `policy replay`: re-decide the requests of an audit log (one JSON object per line, as the
//! gateway's `[audit] output` writes them) with a candidate policy directory and list every
//! decision that would change.
//!
//! A decision line needs `method`, `path`, `query` (raw, "" for none), `claims` (the verified
//! claims, `Identity::to_claims()`), `decision` ("allow"/"deny") and optionally `requestId`,
//! `reasons` and `impersonatedUserId`. Lines that are not JSON objects, are not decisions
//! (`type` other than "decision"), or lack claims or fields are counted and skipped.
//! Claims are replayed as recorded: `token_use` is not filled in.

use std::io::BufRead;
use std::path::PathBuf;

use serde_json::{Map, Value, json};

use super::simulate::{self, HttpRequest};
use super::{OutputFormat, load_bundle, print_json};

/// Arguments of `policy replay`.
#[derive(clap::Args)]
pub struct Args {
    /// The audit log (JSON lines); `-` reads stdin.
    #[arg(long)]
    log: PathBuf,
    /// The candidate policy directory.
    #[arg(long, default_value = super::DEFAULT_DIR)]
    policies: PathBuf,
    #[arg(long, value_enum, default_value_t)]
    format: OutputFormat,
}

/// A decision the candidate set would change.
struct Change {
    line: usize,
    request_id: String,
    method: String,
    target: String,
    old: String,
    new: &'static str,
    old_reasons: Vec<String>,
    new_reasons: Vec<String>,
}

#[derive(Default)]
struct Counts {
    lines: usize,
    replayed: usize,
    reasons_only: usize,
    unparsable: usize,
    not_decisions: usize,
    without_claims: usize,
    incomplete: usize,
}

pub fn run(args: &Args) -> anyhow::Result<bool> {
    let bundle = load_bundle(&args.policies)?;
    let reader: Box<dyn BufRead> = if args.log.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(&args.log)
            .map_err(|e| anyhow::anyhow!("{}: cannot open: {e}", args.log.display()))?;
        Box::new(std::io::BufReader::new(f))
    };
    let mut counts = Counts::default();
    let mut changes = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| anyhow::anyhow!("{}: {e}", args.log.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        counts.lines += 1;
        let Ok(Value::Object(record)) = serde_json::from_str::<Value>(&line) else {
            counts.unparsable += 1;
            continue;
        };
        if record
            .get("type")
            .is_some_and(|t| t.as_str() != Some("decision"))
        {
            counts.not_decisions += 1;
            continue;
        }
        let Some(Value::Object(claims)) = record.get("claims") else {
            counts.without_claims += 1;
            continue;
        };
        let Some(entry) = Entry::read(&record) else {
            counts.incomplete += 1;
            continue;
        };
        let Ok(identity) = simulate::identity_from_claims(claims, false) else {
            counts.incomplete += 1;
            continue;
        };
        let target = if entry.query.is_empty() {
            entry.path.clone()
        } else {
            format!("{}?{}", entry.path, entry.query)
        };
        let sim = simulate::simulate(
            &bundle,
            &identity,
            &HttpRequest {
                method: &entry.method,
                target: &target,
                impersonated_user: entry.impersonated.as_deref(),
            },
        );
        counts.replayed += 1;
        let new = sim.verdict.as_str();
        let mut old_sorted = entry.reasons.clone();
        old_sorted.sort();
        if new != entry.decision {
            changes.push(Change {
                line: n + 1,
                request_id: entry.request_id,
                method: entry.method,
                target,
                old: entry.decision,
                new,
                old_reasons: entry.reasons,
                new_reasons: sim.reasons().to_vec(),
            });
        } else if old_sorted != sim.reasons() {
            counts.reasons_only += 1;
        }
    }
    report(args, &bundle.version, &counts, &changes);
    Ok(changes.is_empty())
}

/// The fields of a decision line.
struct Entry {
    request_id: String,
    method: String,
    path: String,
    query: String,
    decision: String,
    reasons: Vec<String>,
    impersonated: Option<String>,
}

impl Entry {
    fn read(r: &Map<String, Value>) -> Option<Entry> {
        let s = |k: &str| r.get(k).and_then(Value::as_str).map(str::to_string);
        let decision = s("decision").filter(|d| d == "allow" || d == "deny")?;
        Some(Entry {
            request_id: s("requestId").unwrap_or_default(),
            method: s("method")?,
            path: s("path")?,
            query: s("query").unwrap_or_default(),
            decision,
            reasons: r
                .get("reasons")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            impersonated: s("impersonatedUserId"),
        })
    }
}

fn report(args: &Args, version: &str, counts: &Counts, changes: &[Change]) {
    let to_allow = changes.iter().filter(|c| c.new == "allow").count();
    let skipped =
        counts.unparsable + counts.not_decisions + counts.without_claims + counts.incomplete;
    match args.format {
        OutputFormat::Json => print_json(&json!({
            "policyVersion": version,
            "changed": changes.iter().map(|c| json!({
                "line": c.line,
                "requestId": c.request_id,
                "method": c.method,
                "path": c.target,
                "old": c.old,
                "new": c.new,
                "oldReasons": c.old_reasons,
                "newReasons": c.new_reasons,
            })).collect::<Vec<_>>(),
            "summary": {
                "lines": counts.lines,
                "replayed": counts.replayed,
                "changed": changes.len(),
                "toAllow": to_allow,
                "toDeny": changes.len() - to_allow,
                "sameDecisionOtherReasons": counts.reasons_only,
                "skipped": {
                    "unparsable": counts.unparsable,
                    "notDecisions": counts.not_decisions,
                    "withoutClaims": counts.without_claims,
                    "incomplete": counts.incomplete,
                },
            },
        })),
        OutputFormat::Text => {
            for c in changes {
                out!(
                    "{} {} {}: {} -> {} (was: [{}]; now: [{}])",
                    if c.request_id.is_empty() {
                        format!("line {}", c.line)
                    } else {
                        c.request_id.clone()
                    },
                    c.method,
                    c.target,
                    c.old,
                    c.new,
                    c.old_reasons.join(", "),
                    c.new_reasons.join(", ")
                );
            }
            out!(
                "replayed {} of {} line(s) against {} (version {version}): {} decision(s) would change \
                 ({} newly allowed, {} newly refused), {} keep their decision with other reasons; skipped {skipped} \
                 ({} unparsable, {} not decisions, {} without claims, {} incomplete)",
                counts.replayed,
                counts.lines,
                args.policies.display(),
                changes.len(),
                to_allow,
                changes.len() - to_allow,
                counts.reasons_only,
                counts.unparsable,
                counts.not_decisions,
                counts.without_claims,
                counts.incomplete,
            );
        }
    }
}
