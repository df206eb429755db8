//! `cedargate bench authz`: decision-time measurements for bench/ (not a test). Runs the
//! gateway's own mapping and decision code, in process, on the default pack and on the pack
//! plus generated tenant policies, with and without the decision cache.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::authn::Identity;
use crate::authz::{Authorizer, PolicySource, RequestFacts, decide};
use crate::config::DecisionCacheSettings;
use crate::routes::split_path;

/// One measured configuration.
struct Row {
    name: String,
    policies: usize,
    median: Duration,
    p99: Duration,
}

fn copy_pack(from: &Path, to: &Path) -> anyhow::Result<()> {
    for e in std::fs::read_dir(from)? {
        let p = e?.path();
        if p.is_file() {
            std::fs::copy(&p, to.join(p.file_name().unwrap_or_default()))?;
        }
    }
    Ok(())
}

/// `n` tenant-specific policies spread over the route actions and `n / 10` workspaces, the
/// shape a platform with many tenants' custom rules takes.
fn generated_policies(n: usize, actions: &[String]) -> String {
    let mut out = String::with_capacity(n * 200);
    let workspaces = (n / 10).max(1);
    for i in 0..n {
        let action = &actions[i % actions.len()];
        let ws = format!("ws-{}", i % workspaces);
        let effect = if i % 5 == 0 { "forbid" } else { "permit" };
        out.push_str(&format!(
            "@id(\"gen-{i}\")\n{effect} (principal, action == Action::{action:?}, resource in Workspace::{ws:?})\nwhen {{ principal.department == \"dept-{}\" }};\n",
            i % 50
        ));
    }
    out
}

/// The `p` quantile (0..=1) of sorted samples.
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn claims_mix() -> Vec<Identity> {
    let mut out = Vec::new();
    for (role, ctx) in [
        ("Member", "app"),
        ("Manager", "dashboard"),
        ("Owner", "dashboard"),
        ("Viewer", "app"),
    ] {
        let c = json!({"sub": format!("u-{role}"), "workspaceId": "ws-1", "role": role, "context": ctx,
                        "platform": "web", "token_use": "access", "department": "dept-3", "onboardingCompleted": true});
        out.extend(Identity::from_claims(c.as_object().expect("object")));
    }
    let m2m = json!({"client_id": "c", "sub": "c", "workspaceId": "ws-1", "platform": "m2m",
                     "scope": "app/read app/write dashboard/read", "token_use": "access"});
    out.extend(Identity::from_claims(m2m.as_object().expect("object")));
    out
}

fn measure(name: &str, dir: &Path, iterations: usize, cached: bool) -> anyhow::Result<Row> {
    let cache = DecisionCacheSettings {
        enabled: cached,
        capacity: 100_000,
        ttl_seconds: 3600,
    };
    let authorizer = Authorizer::load(
        PolicySource {
            dir: dir.to_path_buf(),
            shadow_dir: None,
        },
        &cache,
    )
    .map_err(|e| anyhow::anyhow!("{}", e.join("\n")))?;
    let bundle = authorizer.current();
    let identities = claims_mix();
    let mut requests = Vec::new();
    for route in &bundle.routes.routes {
        let path = route
            .template
            .replace("{workspaceId}", "ws-1")
            .replace("{departmentId}", "dept-3")
            .replace(['{', '}'], "");
        let segments = split_path(&path).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        if let Some(m) = bundle.routes.find(&route.method, &segments) {
            requests.push(m);
        }
    }
    let mut samples = Vec::with_capacity(iterations);
    let query: Vec<(String, String)> = vec![("limit".into(), "10".into())];
    for i in 0..iterations {
        let m = &requests[i % requests.len()];
        let id = &identities[(i / requests.len()) % identities.len()];
        let facts = RequestFacts {
            route: m,
            query: &query,
            impersonated_user: None,
        };
        let t = Instant::now();
        let allowed = if cached {
            authorizer.authorize(&bundle, id, &facts).decision.allowed
        } else {
            decide(&bundle, id, &facts).allowed
        };
        samples.push(t.elapsed());
        std::hint::black_box(allowed);
    }
    samples.sort_unstable();
    Ok(Row {
        name: name.to_string(),
        policies: bundle.policies.policies().count(),
        median: percentile(&samples, 0.5),
        p99: percentile(&samples, 0.99),
    })
}

/// Run the authorization benchmark and print a table.
pub fn authz(pack: &Path, iterations: usize) -> anyhow::Result<()> {
    let base =
        crate::authz::PolicyBundle::load(pack).map_err(|e| anyhow::anyhow!("{}", e.join("\n")))?;
    let actions: Vec<String> = base
        .routes
        .routes
        .iter()
        .map(|r| r.action.clone())
        .collect();
    let mut rows = vec![
        measure("default pack", pack, iterations, false)?,
        measure("default pack, decision cache", pack, iterations, true)?,
    ];
    for n in [1_000, 10_000] {
        let dir = tempfile::tempdir()?;
        copy_pack(pack, dir.path())?;
        std::fs::write(
            dir.path().join("generated.cedar"),
            generated_policies(n, &actions),
        )?;
        rows.push(measure(
            &format!("default pack + {n} generated"),
            dir.path(),
            iterations,
            false,
        )?);
    }
    println!("| configuration | policies | median | p99 |");
    println!("|---|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {:.1} µs | {:.1} µs |",
            r.name,
            r.policies,
            r.median.as_secs_f64() * 1e6,
            r.p99.as_secs_f64() * 1e6
        );
    }
    let ratio = rows[3].median.as_secs_f64() / rows[0].median.as_secs_f64().max(1e-9);
    println!(
        "\n10,000 generated policies vs the default pack (median): {ratio:.2}x (goal: at most 2x)"
    );
    Ok(())
}
