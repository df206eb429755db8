//! `cedargate bench waf`: CPU time of the WAF's detection per request, in process (not a test).
//! A typical API request (path, small query, the headers a browser or SDK sends, a JWT cookie),
//! the same with an 8 KB JSON body, and an attack (which stops at the first blocking rule).

use std::time::{Duration, Instant};

use crate::bench::percentile;
use crate::waf::detect::{DEFAULT_INSPECTED_HEADERS, Detector, RequestView, inspects};

fn body_8k() -> String {
    let mut items = Vec::new();
    let mut i = 0;
    while serde_json::to_string(&items).map_or(0, |s| s.len()) < 8 * 1024 - 300 {
        items.push(serde_json::json!({
            "id": format!("V1StGXR8_Z5jdHi6B-m{i:02}"),
            "title": format!("Lesson {i}: O'Brien's guide to selecting the right union of skills"),
            "body": "Read **chapter 2** and [the FAQ](https://example.com/faq?a=1&b=2) -- then drop by.",
            "tags": ["onboarding", "weekly"],
            "points": 10 + i,
        }));
        i += 1;
    }
    serde_json::json!({"name": "Weekly digest", "items": items}).to_string()
}

fn run(d: &Detector, view: &RequestView<'_>, iterations: usize) -> (Duration, Duration, bool) {
    let mut samples = Vec::with_capacity(iterations);
    let mut blocked = false;
    for _ in 0..iterations {
        let t = Instant::now();
        let mut hit = false;
        d.scan(view, &|_, _, _| false, &mut |_| {
            hit = true;
            false
        });
        samples.push(t.elapsed());
        blocked = hit;
    }
    samples.sort_unstable();
    (
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        blocked,
    )
}

/// Print median and p99 detection time per request shape.
pub fn waf(iterations: usize) -> anyhow::Result<()> {
    let d = Detector::new();
    let jwt = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJ1LTEiLCJ3b3Jrc3BhY2VJZCI6IndzLWRlbW8iLCJzY29wZSI6ImFwcC9yZWFkIn0.c2lnbmF0dXJlLWJ5dGVzLWMyNjJoZmRqaGZkamtoZmtqZHNoZmtqc2Rm";
    let cookie = format!("session={jwt}; theme=dark; lang=en-GB");
    let all: Vec<(&str, &[u8])> = vec![
        ("host", b"api.example.com"),
        ("user-agent", b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"),
        ("accept", b"application/json"),
        ("accept-language", b"en-GB,en;q=0.9"),
        ("referer", b"https://app.example.com/missions?tab=active"),
        ("cookie", cookie.as_bytes()),
        ("x-request-id", b"4f8e1c2a-9d4b-4c6e-8a1f-2b3c4d5e6f70"),
        ("authorization", b"Bearer not-inspected"),
    ];
    let headers: Vec<(&str, &[u8])> = all
        .into_iter()
        .filter(|(n, _)| inspects(DEFAULT_INSPECTED_HEADERS, n))
        .collect();
    let body = body_8k();
    let typical = RequestView {
        path: "/app/v1/workspaces/ws-demo/missions/V1StGXR8_Z5jdHi6B-myT",
        query: Some("limit=20&nextToken=eyJrIjoibTEifQ%3D%3D"),
        headers: &headers,
        content_type: None,
        body: b"",
        body_truncated: false,
    };
    let with_body = RequestView {
        path: "/dashboard/v1/workspaces/ws-demo/catalog",
        query: None,
        headers: &headers,
        content_type: Some("application/json"),
        body: body.as_bytes(),
        body_truncated: false,
    };
    let attack = RequestView {
        path: "/app/v1/workspaces/ws-demo/missions",
        query: Some("limit=1%27%20UNION%20SELECT%20password%20FROM%20users--"),
        headers: &headers,
        content_type: None,
        body: b"",
        body_truncated: false,
    };
    println!("WAF detection per request ({iterations} iterations each, one thread)");
    println!(
        "{:<44} {:>10} {:>10} {:>8}",
        "request", "median", "p99", "blocked"
    );
    for (name, view) in [
        ("typical GET (7 headers, JWT cookie, query)", &typical),
        (
            &*format!("POST with {} B JSON body", body.len()),
            &with_body,
        ),
        ("SQL injection in the query", &attack),
    ] {
        // Warm up the lazily compiled rules.
        run(&d, view, 10);
        let (median, p99, blocked) = run(&d, view, iterations);
        println!(
            "{name:<44} {:>8.1}µs {:>8.1}µs {blocked:>8}",
            median.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6
        );
    }
    Ok(())
}
