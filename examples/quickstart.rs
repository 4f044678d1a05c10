//! Quick start: typed calls and a classified error, against a local stub.
//!
//! Run with `cargo run --example quickstart`. It starts its own stub server on
//! 127.0.0.1, so it needs no network.

#![allow(clippy::print_stdout)] // an example prints what it does

use std::time::Duration;

use resilient_http::{ApiClient, ErrorKind};
use serde::{Deserialize, Serialize};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[derive(Debug, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A stand-in for the service we call.
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/users/42"))
        .respond_with(ResponseTemplate::new(200).set_body_json(User {
            id: 42,
            name: "Ada".into(),
        }))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/users"))
        .respond_with(ResponseTemplate::new(201).set_body_json(User {
            id: 43,
            name: "Grace".into(),
        }))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/users/7"))
        .respond_with(ResponseTemplate::new(404).set_body_string("no user 7"))
        .mount(&server)
        .await;

    // One client per service; clones share its pool, breaker and limits.
    let client = ApiClient::builder()
        .base_url(format!("{}/api/", server.uri()))
        .total_timeout(Duration::from_secs(5))
        .user_agent("quickstart/1.0")
        .build()?;

    let user: User = client.get_json("users/42").await?;
    println!("GET users/42  -> {user:?}");
    if user.id != 42 {
        return Err(format!("GET users/42 returned {user:?}").into());
    }

    let made: User = client
        .post_json(
            "users",
            &User {
                id: 0,
                name: "Grace".into(),
            },
        )
        .await?;
    println!("POST users    -> {made:?}");
    if made.id != 43 {
        return Err(format!("POST users returned {made:?}").into());
    }

    // Errors are classified: a 404 is the caller's problem, not worth a retry.
    match client.get_json::<User>("users/7").await {
        Ok(user) => return Err(format!("GET users/7 should be a 404, got {user:?}").into()),
        Err(err) if err.kind() != ErrorKind::Client => {
            return Err(format!("GET users/7 should be a Client error, got {err}").into());
        }
        Err(err) => {
            println!("GET users/7   -> {} error: {err}", err.kind());
            println!(
                "                 status {:?}, body {:?}, retryable: {}, attempts: {}",
                err.status(),
                err.body_text(),
                err.is_retryable(),
                err.attempts()
            );
        }
    }
    Ok(())
}
