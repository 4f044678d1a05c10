//! Three local stub instances of one service, one of them failing: calls
//! spread over the healthy ones, the failing one is ejected by its circuit
//! breaker, retries go to another instance, and once it recovers it is
//! admitted again.
//!
//! Run with `cargo run --example load_balance`.

#![allow(clippy::print_stdout)] // an example prints what it does

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use resilient_http::{ApiClient, CircuitBreakerConfig, LoadBalance, RetryPolicy};
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// Answers with the instance's name, or 503 while `failing` is set.
struct Instance {
    name: &'static str,
    failing: Arc<AtomicBool>,
}

impl Respond for Instance {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        if self.failing.load(Ordering::SeqCst) {
            ResponseTemplate::new(503)
        } else {
            ResponseTemplate::new(200).set_body_string(self.name)
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut urls = Vec::new();
    let mut servers = Vec::new();
    let c_failing = Arc::new(AtomicBool::new(true));
    for name in ["a", "b", "c"] {
        let failing = if name == "c" {
            Arc::clone(&c_failing)
        } else {
            Arc::new(AtomicBool::new(false))
        };
        let server = MockServer::start().await;
        Mock::given(any())
            .respond_with(Instance { name, failing })
            .mount(&server)
            .await;
        urls.push(format!("{}/api/", server.uri()));
        servers.push((name, server));
    }

    let open_for = Duration::from_millis(300);
    let client = ApiClient::builder()
        .endpoints(&urls)
        .load_balance(LoadBalance::RoundRobin)
        .retry(RetryPolicy::exponential().initial_backoff(Duration::from_millis(5)))
        .circuit_breaker(
            CircuitBreakerConfig::default()
                .consecutive_failures(3)
                .open_duration(open_for)
                .on_state_change(|change| {
                    println!(
                        "  [breaker] {}: {} -> {}",
                        change.endpoint, change.from, change.to
                    );
                }),
        )
        .build()?;

    println!("instance c fails (503); 90 calls, round robin:");
    let served = spread(&client, 90).await?;
    println!("  served by: {served:?}");
    let reached_c = reached(&servers).await;
    println!("  requests that reached each instance: {reached_c:?}");
    print_endpoints(&client);
    // Every call succeeded (spread returns the first error); c answered none
    // and, once ejected, got far fewer than its round-robin share of 30
    // (3 failures, then a probe each time its breaker half-opens).
    if served.contains_key("c") || reached_c.get("c").is_none_or(|&n| n >= 30) {
        return Err("the failing instance should be ejected after 3 failures".into());
    }

    println!("c recovers; after {open_for:?} its breaker lets a probe through:");
    c_failing.store(false, Ordering::SeqCst);
    tokio::time::sleep(open_for).await;
    let served = spread(&client, 90).await?;
    println!("  served by: {served:?}");
    print_endpoints(&client);
    if !served.contains_key("c") {
        return Err("the recovered instance should be admitted again".into());
    }
    Ok(())
}

/// Makes `calls` calls; how many each instance answered, and how many
/// needed a retry.
async fn spread(
    client: &ApiClient,
    calls: usize,
) -> Result<BTreeMap<String, usize>, resilient_http::Error> {
    let mut served = BTreeMap::new();
    for _ in 0..calls {
        let resp = client.get("orders/7").send().await?;
        if resp.attempts() > 1 {
            *served.entry("(after a retry)".to_owned()).or_default() += 1;
        }
        *served.entry(resp.text()?).or_default() += 1;
    }
    Ok(served)
}

async fn reached(servers: &[(&'static str, MockServer)]) -> BTreeMap<&'static str, usize> {
    let mut counts = BTreeMap::new();
    for (name, server) in servers {
        let n = server.received_requests().await.unwrap_or_default().len();
        counts.insert(*name, n);
    }
    counts
}

fn print_endpoints(client: &ApiClient) {
    for ep in client.endpoints() {
        println!(
            "  {:<28} weight {} state {:<8} in flight {}",
            ep.url.as_str(),
            ep.weight,
            format!("{:?}", ep.state),
            ep.in_flight
        );
    }
}
