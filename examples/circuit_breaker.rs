//! A stub that fails, then recovers: the breaker goes closed -> open -> half-open
//! -> closed, and open-state rejections cost no I/O.
//!
//! Run with `cargo run --example circuit_breaker`.

#![allow(clippy::print_stdout)] // an example prints what it does

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use resilient_http::{ApiClient, CircuitBreakerConfig, CircuitState};
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// 503 until told it is healthy, then 200.
struct Switch(Arc<AtomicBool>);

impl Respond for Switch {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        if self.0.load(Ordering::SeqCst) {
            ResponseTemplate::new(200)
        } else {
            ResponseTemplate::new(503)
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let healthy = Arc::new(AtomicBool::new(false));
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(Switch(Arc::clone(&healthy)))
        .mount(&server)
        .await;

    let open_for = Duration::from_millis(500);
    let client = ApiClient::builder()
        .base_url(server.uri())
        .no_retry()
        .circuit_breaker(
            CircuitBreakerConfig::default()
                .consecutive_failures(3)
                .open_duration(open_for)
                .on_state_change(|change| {
                    println!(
                        "  [callback] {}: {} -> {}",
                        change.endpoint, change.from, change.to
                    );
                }),
        )
        .build()?;

    println!("state: {:?}", client.circuit_state());
    for i in 1..=3 {
        let Err(err) = client.get("health").send().await else {
            return Err("the stub should fail".into());
        };
        println!(
            "call {i}: {} ({})",
            err.kind(),
            err.status().map_or(0, |s| s.as_u16())
        );
    }
    println!("state: {:?}", client.circuit_state());
    if client.circuit_state() != CircuitState::Open {
        return Err("three failures in a row should open the breaker".into());
    }

    let before = server.received_requests().await.unwrap_or_default().len();
    let n = 10_000u32;
    let start = Instant::now();
    for _ in 0..n {
        let result = client.get("health").send().await;
        assert!(result.is_err_and(|e| e.is_circuit_open()));
    }
    let per_call = start.elapsed() / n;
    let after = server.received_requests().await.unwrap_or_default().len();
    println!(
        "{n} calls rejected while open: {per_call:?} each, {} requests reached the server",
        after - before
    );
    if after != before {
        return Err("an open breaker should send nothing".into());
    }

    tokio::time::sleep(open_for).await;
    println!("after {open_for:?}: state {:?}", client.circuit_state());
    healthy.store(true, Ordering::SeqCst);
    let resp = client.get("health").send().await?;
    println!("probe: {}", resp.status());
    println!("state: {:?}", client.circuit_state());
    if client.circuit_state() != CircuitState::Closed {
        return Err("a successful probe should close the breaker".into());
    }
    Ok(())
}
