//! How much load retries add: N calls against an always-503 server and against
//! a 20%-flaky one, for several retry policies. Prints server requests per
//! logical call and the success rate.
//!
//! Run with `cargo run --release --example outage`.

#![allow(clippy::print_stdout)] // an example prints what it does

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use resilient_http::{ApiClient, ApiClientBuilder, RetryBudget, RetryPolicy};
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const CALLS: usize = 2000;
const TASKS: usize = 8;

/// Fails every `every`-th request with 503 (every request when `every` is 1).
struct Failing {
    every: usize,
    seen: Arc<AtomicUsize>,
}

impl Respond for Failing {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let n = self.seen.fetch_add(1, Ordering::SeqCst);
        if n.is_multiple_of(self.every) {
            ResponseTemplate::new(503)
        } else {
            ResponseTemplate::new(200)
        }
    }
}

fn fast(policy: RetryPolicy) -> RetryPolicy {
    policy
        .initial_backoff(Duration::from_millis(1))
        .max_backoff(Duration::from_millis(2))
}

/// Applies one retry policy to a builder.
type Configure = fn(ApiClientBuilder) -> ApiClientBuilder;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let policies: [(&str, Configure); 4] = [
        ("default (budget + breaker)", |b| {
            b.retry(fast(RetryPolicy::exponential()))
        }),
        ("default budget, no breaker", |b| {
            b.retry(fast(RetryPolicy::exponential()))
                .no_circuit_breaker()
        }),
        ("unlimited budget, no breaker", |b| {
            b.retry(fast(
                RetryPolicy::exponential().budget(RetryBudget::unlimited()),
            ))
            .no_circuit_breaker()
        }),
        ("no retry, no breaker", |b| {
            b.no_retry().no_circuit_breaker()
        }),
    ];
    println!("{CALLS} calls over {TASKS} tasks, 3 attempts max, 1 ms backoff");
    println!("{:<30} {:>22} {:>22}", "policy", "always 503", "20% flaky");
    println!(
        "{:<30} {:>22} {:>22}",
        "", "req/call  success", "req/call  success"
    );
    for (i, (name, configure)) in policies.into_iter().enumerate() {
        let outage = run(1, configure).await?;
        let flaky = run(5, configure).await?;
        check(i, outage, flaky)?;
        println!(
            "{name:<30} {:>10.3} {:>9.1}%   {:>10.3} {:>9.1}%",
            outage.0,
            outage.1 * 100.0,
            flaky.0,
            flaky.1 * 100.0
        );
    }
    Ok(())
}

/// Fails on an outcome that contradicts what the table is meant to show.
#[allow(clippy::float_cmp)] // exact ratios of whole counts
fn check(policy: usize, outage: (f64, f64), flaky: (f64, f64)) -> Result<(), String> {
    let ok = match policy {
        // The budget caps retries in an outage near its floor, far below 3 per call.
        1 => outage.0 >= 1.0 && outage.0 < 2.0,
        // An unlimited budget makes every call use all 3 attempts.
        2 => outage.0 == 3.0 && outage.1 == 0.0,
        // No retry: one request per call; every 5th request fails.
        3 => outage == (1.0, 0.0) && flaky == (1.0, 0.8),
        _ => outage.1 == 0.0,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "policy {policy}: unexpected outcome: outage {outage:?}, flaky {flaky:?}"
        ))
    }
}

/// Returns (server requests per call, share of calls that succeeded).
#[allow(clippy::cast_precision_loss)]
async fn run(every: usize, configure: Configure) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let seen = Arc::new(AtomicUsize::new(0));
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(Failing {
            every,
            seen: Arc::clone(&seen),
        })
        .mount(&server)
        .await;
    let client: ApiClient = configure(ApiClient::builder().base_url(server.uri())).build()?;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..TASKS {
        let client = client.clone();
        tasks.spawn(async move {
            let mut ok = 0usize;
            for _ in 0..CALLS / TASKS {
                ok += usize::from(client.get("x").send().await.is_ok());
            }
            ok
        });
    }
    let mut ok = 0;
    while let Some(n) = tasks.join_next().await {
        ok += n?;
    }
    let requests = seen.load(Ordering::SeqCst);
    Ok((requests as f64 / CALLS as f64, ok as f64 / CALLS as f64))
}
