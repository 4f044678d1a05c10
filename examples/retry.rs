//! A flaky stub (503, 503, then 200 after a Retry-After) healed by the client.
//!
//! Run with `cargo run --example retry`.

#![allow(clippy::print_stdout)] // an example prints what it does

use std::time::{Duration, Instant};

use resilient_http::{ApiClient, RetryPolicy};
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// 503, then 503 with `Retry-After: 1`, then 200.
struct Flaky(std::sync::atomic::AtomicUsize);

impl Respond for Flaky {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        match self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
            0 => ResponseTemplate::new(503),
            1 => ResponseTemplate::new(503).insert_header("retry-after", "1"),
            _ => ResponseTemplate::new(200).set_body_string("healed"),
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(Flaky(0.into()))
        .mount(&server)
        .await;

    let client = ApiClient::builder()
        .base_url(server.uri())
        .retry(
            RetryPolicy::exponential()
                .max_attempts(3)
                .initial_backoff(Duration::from_millis(100)),
        )
        .build()?;

    let start = Instant::now();
    let resp = client.get("inventory").send().await?;
    let elapsed = start.elapsed();

    let received = server.received_requests().await.unwrap_or_default();
    for (i, req) in received.iter().enumerate() {
        println!(
            "server saw attempt {}: {} {}",
            i + 1,
            req.method,
            req.url.path()
        );
    }
    println!(
        "client got {} {:?} after {} attempts in {} ms (the second wait was the server's Retry-After: 1 s)",
        resp.status(),
        resp.text()?,
        resp.attempts(),
        elapsed.as_millis()
    );
    if resp.attempts() != 3 || received.len() != 3 || resp.text()? != "healed" {
        return Err("expected the third attempt to succeed".into());
    }
    if elapsed < Duration::from_secs(1) {
        return Err("the client did not wait for the server's Retry-After".into());
    }
    Ok(())
}
