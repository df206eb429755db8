//! Every case of the OWASP CRS regression corpus (`../shared/waf-corpus/crs-regression.jsonl`)
//! through the WAF's detector, built as the gateway builds it. Prints detection per family and
//! paranoia level and the false-positive rate; fails below the floors in `tests/waf/floors.toml`
//! (floors only ever go up). `WAF_CORPUS_VERBOSE=1` lists misses and false positives.

use std::collections::BTreeMap;
use std::path::Path;

use cedargate::waf::detect::{DEFAULT_INSPECTED_HEADERS, Detector, RequestView, inspects};
use serde_json::Value;

const BODY_LIMIT: usize = 8 * 1024;

#[derive(Default)]
struct Tally {
    hit: usize,
    total: usize,
}

impl Tally {
    fn rate(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.hit as f64 / self.total as f64
        }
    }
}

fn blocked(d: &Detector, case: &Value) -> bool {
    let uri = case["uri"].as_str().unwrap_or("/");
    let (path, query) = match uri.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (uri, None),
    };
    let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
    let mut content_type = None;
    if let Some(map) = case["headers"].as_object() {
        for (k, v) in map {
            let name = k.to_ascii_lowercase();
            let value = v.as_str().unwrap_or("").as_bytes().to_vec();
            if name == "content-type" {
                content_type = Some(String::from_utf8_lossy(&value).into_owned());
            }
            if inspects(DEFAULT_INSPECTED_HEADERS, &name) {
                headers.push((name, value));
            }
        }
    }
    let header_refs: Vec<(&str, &[u8])> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    let body = case["body"].as_str().unwrap_or("").as_bytes();
    let view = RequestView {
        path,
        query,
        headers: &header_refs,
        content_type: content_type.as_deref(),
        body: &body[..body.len().min(BODY_LIMIT)],
        body_truncated: body.len() > BODY_LIMIT,
    };
    let mut any = false;
    d.scan(&view, &|_, _, _| false, &mut |_| {
        any = true;
        false
    });
    any
}

#[test]
fn crs_regression_corpus_meets_the_floors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let corpus = root.join("../../shared/waf-corpus/crs-regression.jsonl");
    let text = std::fs::read_to_string(&corpus).unwrap_or_else(|e| {
        panic!(
            "the CRS corpus is needed at {} (../shared beside the repo): {e}",
            corpus.display()
        )
    });
    let floors: toml::Table =
        toml::from_str(&std::fs::read_to_string(root.join("tests/waf/floors.toml")).unwrap())
            .unwrap();
    let not_benign: Vec<&str> = floors["fp_not_benign"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    let verbose = std::env::var_os("WAF_CORPUS_VERBOSE").is_some();
    let d = Detector::new();
    let mut detection: BTreeMap<(String, i64), Tally> = BTreeMap::new();
    let mut pl1: BTreeMap<String, Tally> = BTreeMap::new();
    let mut fp: BTreeMap<String, Tally> = BTreeMap::new();
    let mut scope: Tally = Tally::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let case: Value = serde_json::from_str(line).expect("a JSON line");
        let id = case["id"].as_str().unwrap_or("?");
        let family = case["rule_family"].as_str().unwrap_or("?").to_string();
        let pl = case["paranoia_level"].as_i64().unwrap_or(0);
        let hit = blocked(&d, &case);
        match (case["expect"].as_str(), case["negative_kind"].as_str()) {
            (Some("block"), _) => {
                let t = detection.entry((family.clone(), pl)).or_default();
                t.total += 1;
                t.hit += usize::from(hit);
                if pl == 1 {
                    let t = pl1.entry(family.clone()).or_default();
                    t.total += 1;
                    t.hit += usize::from(hit);
                    if !hit && verbose {
                        eprintln!("missed {id}: {}", &line[..line.len().min(300)]);
                    }
                }
            }
            (Some("allow"), Some("fp_regression")) if !not_benign.contains(&id) => {
                let t = fp.entry(family.clone()).or_default();
                t.total += 1;
                t.hit += usize::from(hit);
                if hit && verbose {
                    eprintln!("false positive {id}: {}", &line[..line.len().min(300)]);
                }
            }
            (Some("allow"), _) => {
                scope.total += 1;
                scope.hit += usize::from(hit);
            }
            _ => {}
        }
    }
    println!("detection of `block` cases by family and paranoia level:");
    for ((family, pl), t) in &detection {
        println!(
            "  {family:<22} PL{pl}: {:>4}/{:<4} {:5.1}%",
            t.hit,
            t.total,
            100.0 * t.rate()
        );
    }
    let all_pl1 = Tally {
        hit: pl1.values().map(|t| t.hit).sum(),
        total: pl1.values().map(|t| t.total).sum(),
    };
    println!(
        "PL1 overall: {}/{} {:.1}%",
        all_pl1.hit,
        all_pl1.total,
        100.0 * all_pl1.rate()
    );
    let all_fp = Tally {
        hit: fp.values().map(|t| t.hit).sum(),
        total: fp.values().map(|t| t.total).sum(),
    };
    for (family, t) in &fp {
        println!(
            "  false positives {family:<22} {:>3}/{:<3} {:5.1}%",
            t.hit,
            t.total,
            100.0 * t.rate()
        );
    }
    println!(
        "false positives overall (fp_regression): {}/{} {:.1}%",
        all_fp.hit,
        all_fp.total,
        100.0 * all_fp.rate()
    );
    println!(
        "rule_scope allow cases blocked (information only): {}/{}",
        scope.hit, scope.total
    );

    let mut failures = Vec::new();
    let floor = |k: &str| floors["pl1_detection"][k].as_float().unwrap_or(1.0);
    for (family, t) in &pl1 {
        if t.rate() + 1e-9 < floor(family) {
            failures.push(format!(
                "{family} PL1 detection {:.3} < floor {:.3}",
                t.rate(),
                floor(family)
            ));
        }
    }
    if all_pl1.rate() + 1e-9 < floor("overall") {
        failures.push(format!(
            "PL1 overall {:.3} < floor {:.3}",
            all_pl1.rate(),
            floor("overall")
        ));
    }
    let ceiling = floors["fp_ceiling"].as_float().unwrap();
    if all_fp.rate() > ceiling + 1e-9 {
        failures.push(format!(
            "false positives {:.3} > ceiling {ceiling:.3}",
            all_fp.rate()
        ));
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Our own realistic traffic (`tests/waf/benign.jsonl`): nothing may be blocked.
#[test]
fn benign_corpus_passes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("tests/waf/benign.jsonl")).unwrap();
    let d = Detector::new();
    let mut blocked_ids = Vec::new();
    let mut n = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let case: Value = serde_json::from_str(line).expect("a JSON line");
        n += 1;
        if blocked(&d, &case) {
            blocked_ids.push(case["id"].as_str().unwrap_or("?").to_string());
        }
    }
    println!("benign corpus: {} of {n} blocked", blocked_ids.len());
    assert!(n >= 50, "the benign corpus is too small");
    assert!(
        blocked_ids.is_empty(),
        "benign requests blocked: {blocked_ids:?}"
    );
}
