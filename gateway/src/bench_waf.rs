//! `cedargate bench waf`: CPU time of the WAF's detection per request, in process (not a test).
//! A typical API request (path, small query, the headers a browser or SDK sends, a JWT cookie),
//! the same with an 8 KB JSON body, and an attack (which stops at the first blocking rule).
//! [`Samples`] are also what `cargo bench` (gateway/benches) measures. Detection is measured
//! without the clean-value memory, plus one row with it.

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
        let hit = scan_once(d, view);
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

const JWT: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJ1LTEiLCJ3b3Jrc3BhY2VJZCI6IndzLWRlbW8iLCJzY29wZSI6ImFwcC9yZWFkIn0.c2lnbmF0dXJlLWJ5dGVzLWMyNjJoZmRqaGZkamtoZmtqZHNoZmtqc2Rm";

/// The request shapes measured here and by `cargo bench` (owned; views borrow them).
pub struct Samples {
    cookie: String,
    body: String,
}

impl Default for Samples {
    fn default() -> Self {
        Samples {
            cookie: format!("session={JWT}; theme=dark; lang=en-GB"),
            body: body_8k(),
        }
    }
}

impl Samples {
    /// The inspected headers of a typical browser or SDK request (never Authorization).
    pub fn headers(&self) -> Vec<(&'static str, &[u8])> {
        let all: Vec<(&'static str, &[u8])> = vec![
            ("host", b"api.example.com"),
            ("user-agent", b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"),
            ("accept", b"application/json"),
            ("accept-language", b"en-GB,en;q=0.9"),
            ("referer", b"https://app.example.com/missions?tab=active"),
            ("cookie", self.cookie.as_bytes()),
            ("x-request-id", b"4f8e1c2a-9d4b-4c6e-8a1f-2b3c4d5e6f70"),
            ("authorization", b"Bearer not-inspected"),
        ];
        all.into_iter()
            .filter(|(n, _)| inspects(DEFAULT_INSPECTED_HEADERS, n))
            .collect()
    }

    /// A GET with a path, two query parameters and `headers`.
    pub fn typical<'a>(&'a self, headers: &'a [(&'a str, &'a [u8])]) -> RequestView<'a> {
        RequestView {
            path: "/app/v1/workspaces/ws-demo/missions/V1StGXR8_Z5jdHi6B-myT",
            query: Some("limit=20&nextToken=eyJrIjoibTEifQ%3D%3D"),
            headers,
            content_type: None,
            body: b"",
            body_truncated: false,
        }
    }

    /// A POST with an 8 KB JSON body of prose (apostrophes, markdown, links).
    pub fn with_body<'a>(&'a self, headers: &'a [(&'a str, &'a [u8])]) -> RequestView<'a> {
        RequestView {
            path: "/dashboard/v1/workspaces/ws-demo/catalog",
            query: None,
            headers,
            content_type: Some("application/json"),
            body: self.body.as_bytes(),
            body_truncated: false,
        }
    }

    /// A SQL injection in the query (detection stops at the first blocking rule).
    pub fn attack<'a>(&'a self, headers: &'a [(&'a str, &'a [u8])]) -> RequestView<'a> {
        RequestView {
            path: "/app/v1/workspaces/ws-demo/missions",
            query: Some("limit=1%27%20UNION%20SELECT%20password%20FROM%20users--"),
            headers,
            content_type: None,
            body: b"",
            body_truncated: false,
        }
    }
}

/// Scan `view` once; whether a rule matched.
pub fn scan_once(d: &Detector, view: &RequestView<'_>) -> bool {
    let mut hit = false;
    d.scan(view, &|_, _, _| false, &mut |_| {
        hit = true;
        false
    });
    hit
}

/// Print median and p99 detection time per request shape.
pub fn waf(iterations: usize) -> anyhow::Result<()> {
    // Every value scanned every time: what detection costs on values not seen before.
    let d = Detector::uncached();
    let remembering = Detector::new();
    let samples = Samples::default();
    let headers = samples.headers();
    let body_len = samples.body.len();
    let typical = samples.typical(&headers);
    let with_body = samples.with_body(&headers);
    let attack = samples.attack(&headers);
    println!("WAF detection per request ({iterations} iterations each, one thread)");
    println!(
        "{:<44} {:>10} {:>10} {:>8}",
        "request", "median", "p99", "blocked"
    );
    // The last row: the detector the gateway runs, which remembers clean values (not cookies
    // or body values), on a request it has seen before.
    for (name, detector, view) in [
        ("typical GET (7 headers, JWT cookie, query)", &d, &typical),
        (
            &*format!("POST with {body_len} B JSON body"),
            &d,
            &with_body,
        ),
        ("SQL injection in the query", &d, &attack),
        (
            "typical GET, its values seen before",
            &remembering,
            &typical,
        ),
    ] {
        // Warm up the lazily compiled rules (and, for the last row, the clean values).
        run(detector, view, 10);
        let (median, p99, blocked) = run(detector, view, iterations);
        println!(
            "{name:<44} {:>8.1}µs {:>8.1}µs {blocked:>8}",
            median.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6
        );
    }
    Ok(())
}
