//! `policy test`: run every case file of a tests directory against a policy directory,
//! report each case, the policies no case got decided by (coverage), and a
//! `N passed, M failed` line. HTTP-level cases go through [`simulate`] (the gateway's own
//! stages); `run-tests` cases go to Cedar directly. `--export-cedar` writes the HTTP-level
//! cases as `run-tests` files, with the Cedar request and entities the mapping built.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::cases::{self, CaseFile, HttpCase, HttpFile};
use super::runtests;
use super::simulate::{self, HttpRequest, Verdict};
use super::{OutputFormat, load_bundle, print_json};
use crate::authz::{PolicyBundle, RequestFacts, mapping};

/// Arguments of `policy test`.
#[derive(clap::Args)]
pub struct Args {
    /// Policy directory; the cases are read from <DIR>/tests unless --tests is given.
    #[arg(default_value = super::DEFAULT_DIR)]
    dir: PathBuf,
    /// Directory of case files (default <DIR>/tests).
    #[arg(long)]
    tests: Option<PathBuf>,
    /// Also fail (exit 3) when a policy determined no decision of the suite.
    #[arg(long)]
    fail_on_uncovered: bool,
    /// Write the HTTP-level cases as Cedar `run-tests` files into OUTDIR, with the policies
    /// (policies.cedar) and schema to run them: `cedar run-tests --policies
    /// OUTDIR/policies.cedar --schema OUTDIR/schema.cedarschema --tests OUTDIR/<file>.json`.
    #[arg(long, value_name = "OUTDIR")]
    export_cedar: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    format: OutputFormat,
}

/// One case's result.
struct CaseResult {
    file: String,
    name: String,
    failure: Option<String>,
    reasons: Vec<String>,
}

/// Run-tests cases exported from one HTTP case file.
struct Export {
    file: String,
    cases: Vec<Value>,
}

pub fn run(args: &Args) -> anyhow::Result<bool> {
    let bundle = load_bundle(&args.dir)?;
    let tests_dir = args.tests.clone().unwrap_or_else(|| args.dir.join("tests"));
    let files = cases::case_files(&tests_dir)?;
    let mut results = Vec::new();
    let mut exports = Vec::new();
    let mut not_exported = 0usize;
    for path in &files {
        let shown = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                results.push(file_failure(&shown, format!("cannot read: {e}")));
                continue;
            }
        };
        match cases::classify(&text) {
            Err(e) => results.push(file_failure(&shown, e)),
            Ok(CaseFile::Entities) => {}
            Ok(CaseFile::Cedar(items)) => {
                for (i, raw) in items.iter().enumerate() {
                    let o = runtests::run_case(&bundle, raw, i, &tests_dir);
                    results.push(CaseResult {
                        file: shown.clone(),
                        name: o.name,
                        failure: o.failure,
                        reasons: o.reasons,
                    });
                }
            }
            Ok(CaseFile::Http(file)) => {
                let mut exported = Vec::new();
                for case in &file.cases {
                    let (result, export) =
                        run_http_case(&bundle, &shown, &file, case, args.export_cedar.is_some());
                    results.push(result);
                    match export {
                        Some(v) => exported.push(v),
                        None => not_exported += 1,
                    }
                }
                if !exported.is_empty() {
                    exports.push(Export {
                        file: shown.clone(),
                        cases: exported,
                    });
                }
            }
        }
    }
    if results.is_empty() {
        anyhow::bail!("{}: no test cases found", tests_dir.display());
    }

    let covered: BTreeSet<&str> = results
        .iter()
        .flat_map(|r| r.reasons.iter().map(String::as_str))
        .collect();
    let mut all: Vec<String> = bundle
        .policies
        .policies()
        .map(|p| p.id().to_string())
        .collect();
    all.sort();
    let uncovered: Vec<&String> = all
        .iter()
        .filter(|id| !covered.contains(id.as_str()))
        .collect();
    let failed = results.iter().filter(|r| r.failure.is_some()).count();
    let passed = results.len() - failed;

    match args.format {
        OutputFormat::Json => print_json(&json!({
            "passed": passed,
            "failed": failed,
            "policies": all.len(),
            "uncovered": uncovered,
            "policyVersion": bundle.version,
            "cases": results.iter().map(|r| json!({
                "file": r.file,
                "name": r.name,
                "ok": r.failure.is_none(),
                "message": r.failure,
                "reasons": r.reasons,
            })).collect::<Vec<_>>(),
        })),
        OutputFormat::Text => {
            for r in &results {
                match &r.failure {
                    None => out!("ok    {}: {}", r.file, r.name),
                    Some(why) => out!("FAIL  {}: {}: {why}", r.file, r.name),
                }
            }
            if uncovered.is_empty() {
                out!(
                    "coverage: every policy ({}) determined at least one decision",
                    all.len()
                );
            } else {
                out!(
                    "coverage: {} of {} policies never determined a decision: {}",
                    uncovered.len(),
                    all.len(),
                    uncovered
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            out!("{passed} passed, {failed} failed");
        }
    }

    if let Some(out) = &args.export_cedar {
        write_exports(&bundle, out, &exports, not_exported)?;
    }
    let coverage_ok = !args.fail_on_uncovered || uncovered.is_empty();
    Ok(failed == 0 && coverage_ok)
}

fn file_failure(file: &str, why: String) -> CaseResult {
    CaseResult {
        file: file.to_string(),
        name: "(file)".into(),
        failure: Some(why),
        reasons: Vec::new(),
    }
}

/// Check one HTTP-level case; with `export`, also return it as a `run-tests` case when it
/// reaches Cedar.
fn run_http_case(
    bundle: &PolicyBundle,
    shown: &str,
    file: &HttpFile,
    case: &HttpCase,
    export: bool,
) -> (CaseResult, Option<Value>) {
    let mut result = CaseResult {
        file: shown.to_string(),
        name: case.name.clone(),
        failure: None,
        reasons: Vec::new(),
    };
    let Some(expected) = Verdict::parse(&case.expect) else {
        result.failure = Some(format!(
            "expect must be allow, deny, not_found, invalid_path or invalid_request, not {:?}",
            case.expect
        ));
        return (result, None);
    };
    let identity = match case
        .resolve_claims(file)
        .and_then(|c| simulate::identity_from_claims(&c, true))
    {
        Ok(i) => i,
        Err(e) => {
            result.failure = Some(e);
            return (result, None);
        }
    };
    let user = case.impersonated_user();
    let sim = simulate::simulate(
        bundle,
        &identity,
        &HttpRequest {
            method: &case.method,
            target: &case.path,
            impersonated_user: user,
        },
    );
    result.reasons = sim.reasons().to_vec();
    let mut problems = Vec::new();
    if sim.verdict != expected {
        let mut p = format!(
            "expected {}, got {}",
            expected.as_str(),
            sim.verdict.as_str()
        );
        if let Some(why) = &sim.rejection {
            p.push_str(&format!(" ({why})"));
        }
        problems.push(p);
    } else if let Some(want) = &case.reasons {
        let want: BTreeSet<&str> = want.iter().map(String::as_str).collect();
        let got: BTreeSet<&str> = sim.reasons().iter().map(String::as_str).collect();
        if want != got {
            problems.push(format!(
                "expected reasons [{}]",
                want.into_iter().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    if sim.errors().len() != case.errors {
        problems.push(format!(
            "expected {} evaluation error(s), got {}{}",
            case.errors,
            sim.errors().len(),
            if sim.errors().is_empty() {
                String::new()
            } else {
                format!(": {}", sim.errors().join("; "))
            }
        ));
    }
    if !problems.is_empty() && sim.decision.is_some() {
        problems.push(format!("actual reasons [{}]", sim.reasons().join(", ")));
    }
    result.failure = (!problems.is_empty()).then(|| problems.join("; "));

    // Only requests that reach Cedar without evaluation errors have a run-tests equivalent
    // (with errors, Cedar's own decision may differ from the gateway's fail-closed one).
    let exportable =
        export && matches!(expected, Verdict::Allow | Verdict::Deny) && sim.errors().is_empty();
    let exported = match (&sim.route, exportable) {
        (Some(route), true) => {
            let facts = RequestFacts {
                route,
                query: &sim.query,
                impersonated_user: user,
            };
            let reasons = case
                .reasons
                .clone()
                .unwrap_or_else(|| sim.reasons().to_vec());
            mapping::build(bundle, &identity, &facts)
                .and_then(|input| {
                    runtests::export_case(&case.name, &input, expected.as_str(), &reasons, 0)
                })
                .ok()
        }
        _ => None,
    };
    (result, exported)
}

fn write_exports(
    bundle: &PolicyBundle,
    out: &Path,
    exports: &[Export],
    not_exported: usize,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)
        .map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", out.display()))?;
    let write = |name: &str, text: &str| {
        let path = out.join(name);
        std::fs::write(&path, text)
            .map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", path.display()))
    };
    // The Cedar CLI takes one policy file; the ids come from the @id annotations, as here.
    let sources: BTreeSet<&String> = bundle.policy_files.values().collect();
    let mut policies = String::new();
    for source in sources {
        let text = std::fs::read_to_string(source)
            .map_err(|e| anyhow::anyhow!("{source}: cannot read: {e}"))?;
        policies.push_str(&format!("// --- {source}\n{text}\n"));
    }
    write("policies.cedar", &policies)?;
    let schema = bundle.dir.join(crate::authz::bundle::SCHEMA_FILE);
    let schema_text = std::fs::read_to_string(&schema)
        .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", schema.display()))?;
    write(crate::authz::bundle::SCHEMA_FILE, &schema_text)?;
    let mut count = 0;
    for export in exports {
        count += export.cases.len();
        write(
            &export.file,
            &serde_json::to_string_pretty(&export.cases).unwrap_or_default(),
        )?;
    }
    eprintln!(
        "exported {count} case(s) to {} ({not_exported} not exported: they never reach Cedar or \
         expect evaluation errors); cross-check each file with\n  cedar run-tests --policies {0}/policies.cedar --schema {0}/{} --tests {0}/<file>.json",
        out.display(),
        crate::authz::bundle::SCHEMA_FILE,
    );
    Ok(())
}
