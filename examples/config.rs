//! Configuration from a file: an `ApiClientConfig` loaded from TOML, a client
//! built from it, and a call to a local stub that fails once before it answers.
//!
//! Run with `cargo run --example config [path/to/client.toml]` (default:
//! `examples/client.toml`). It starts its own stub server on 127.0.0.1, so it
//! needs no network.

#![allow(clippy::print_stdout)] // an example prints what it does

use resilient_http::{ApiClient, ApiClientConfig};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = std::env::args()
        .nth(1)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/examples/client.toml").to_owned());
    let text = std::fs::read_to_string(&file)?;
    // An unknown key or a bad duration stops here, with the key and line.
    let mut config: ApiClientConfig = toml::from_str(&text)?;
    println!("loaded {file}");

    // A stand-in for the users service: busy once, then fine. It answers only
    // requests that carry the configured default header.
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/users/42"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/users/42"))
        .and(header("x-tenant", "acme"))
        .respond_with(ResponseTemplate::new(200).set_body_string(r#"{"id":42,"name":"Ada"}"#))
        .mount(&server)
        .await;

    // The configuration is plain data: point it at the stub.
    config.base_url = Some(format!("{}/api/", server.uri()));
    let client = ApiClient::from_config(&config)?;

    let resp = client.get("users/42").send().await?;
    println!(
        "GET users/42 -> {} after {} attempts (max_attempts = {:?}): {}",
        resp.status(),
        resp.attempts(),
        config.retry.as_ref().and_then(|r| r.max_attempts),
        resp.text()?
    );
    // The stub fails once: the configured retry heals it on the second attempt.
    if resp.attempts() != 2 {
        return Err(format!("expected 2 attempts, got {}", resp.attempts()).into());
    }

    // Written back, durations keep their units.
    println!("\nas TOML again:\n{}", toml::to_string(&config)?);
    Ok(())
}
