//! `cedargate bench token`: token endpoint latency and throughput over loopback HTTP, for
//! bench/token_cache.sh (not a test). Sequential requests give the latency distribution,
//! concurrent ones the request rate; every answer must be a 200.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;

/// What to measure.
#[derive(Args)]
pub struct TokenBench {
    /// The token endpoint.
    #[arg(long)]
    url: String,
    /// A label for the printed row.
    #[arg(long, default_value = "token endpoint")]
    label: String,
    /// Sequential requests (latency).
    #[arg(long, default_value_t = 2_000)]
    requests: usize,
    /// Concurrent connections for the throughput run.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// How long the throughput run lasts, in seconds.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    #[arg(long, default_value = "demo-partner")]
    client_id: String,
    #[arg(long, default_value = "demo-partner-secret")]
    client_secret: String,
    #[arg(long, default_value = "app/read")]
    scope: String,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn one(http: &reqwest::Client, b: &TokenBench) -> anyhow::Result<()> {
    let resp = http
        .post(&b.url)
        .basic_auth(&b.client_id, Some(&b.client_secret))
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(format!(
            "grant_type=client_credentials&scope={}",
            form_urlencoded::byte_serialize(b.scope.as_bytes()).collect::<String>()
        ))
        .send()
        .await?;
    let status = resp.status();
    resp.bytes().await?;
    anyhow::ensure!(status == 200, "the token endpoint answered {status}");
    Ok(())
}

/// Run the measurement and print one markdown row.
pub fn run(b: TokenBench) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(b.concurrency.max(1))
            .build()?;
        // Warm-up: connections, and the first (cache-filling) request.
        for _ in 0..3 {
            one(&http, &b).await?;
        }
        let mut latencies = Vec::with_capacity(b.requests);
        for _ in 0..b.requests.max(1) {
            let started = Instant::now();
            one(&http, &b).await?;
            latencies.push(started.elapsed());
        }
        latencies.sort_unstable();
        let b = Arc::new(b);
        let deadline = Instant::now() + Duration::from_secs(b.seconds.max(1));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..b.concurrency.max(1) {
            let (http, b) = (http.clone(), b.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    one(&http, &b).await?;
                    n += 1;
                }
                anyhow::Ok(n)
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await??;
        }
        let rate = total as f64 / started.elapsed().as_secs_f64();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "| {} | {:.3} ms | {:.3} ms | {:.0} req/s ({} connections) |",
            b.label,
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.99)),
            rate,
            b.concurrency
        );
        Ok(())
    })
}
