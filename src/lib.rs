//! An async HTTP client for service-to-service API calls, with the protections
//! a production service needs around every call.
//!
//! One builder-configured [`ApiClient`] wraps a pooled `reqwest` transport
//! (rustls) and puts layered timeouts, error classification, exponential retry
//! with jitter, `Retry-After`, a retry budget, per-endpoint circuit breakers, a
//! rate limit and a concurrency limit around each call, all visible through
//! `tracing`.
//!
//! # Quick start
//!
//! ```
//! # async fn run() -> resilient_http::Result<()> {
//! # let server = wiremock::MockServer::start().await;
//! # wiremock::Mock::given(wiremock::matchers::method("GET"))
//! #     .respond_with(wiremock::ResponseTemplate::new(200)
//! #         .set_body_json(serde_json::json!({"id": 42, "name": "Ada"})))
//! #     .mount(&server).await;
//! # wiremock::Mock::given(wiremock::matchers::method("POST"))
//! #     .respond_with(wiremock::ResponseTemplate::new(201)
//! #         .set_body_json(serde_json::json!({"id": 43, "name": "Grace"})))
//! #     .mount(&server).await;
//! use std::time::Duration;
//! use resilient_http::{ApiClient, ErrorKind};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! struct User { id: u64, name: String }
//!
//! let client = ApiClient::builder()
//!     .base_url(format!("{}/api/", server.uri()))   // e.g. "http://users.internal:8080/api/"
//!     .total_timeout(Duration::from_secs(5))
//!     .build()?;
//!
//! let user: User = client.get_json("users/42").await?;
//! let made: User = client.post_json("users", &User { id: 0, name: "Grace".into() }).await?;
//! assert_eq!((user.id, made.id), (42, 43));
//!
//! match client.get("users/42").send().await {
//!     Ok(resp) => assert_eq!(resp.attempts(), 1),
//!     Err(e) if e.kind() == ErrorKind::Client => eprintln!("our mistake: {e}"),
//!     Err(e) => eprintln!("the service is unwell: {e}"),
//! }
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
//! ```
//!
//! # The call pipeline
//!
//! For each logical call, under one total deadline:
//!
//! 1. the request is built once (URL joined, headers set, body serialized to
//!    `Bytes` so it can be replayed);
//! 2. a concurrency permit is taken, held for the whole call, never waiting
//!    past the deadline;
//! 3. for each attempt, the endpoint's circuit breaker is asked (open: the call
//!    fails at once, no I/O), then a rate-limit permit is taken;
//! 4. one attempt is sent under `min(attempt_timeout, time left)`, and its body
//!    read and buffered (bounded by `max_response_bytes`) inside the attempt;
//! 5. the outcome is classified and recorded in the breaker;
//! 6. a retryable outcome is retried if the method may be repeated and the
//!    policy, the deadline, the breaker and the retry budget allow, after the
//!    backoff (or the server's `Retry-After`).
//!
//! # Timeouts
//!
//! | timeout | bounds | default | phase |
//! |---|---|---|---|
//! | `connect_timeout` | TCP connect and TLS handshake | 2 s | [`TimeoutPhase::Connect`] |
//! | `read_timeout` | the longest gap between two reads | 10 s | [`TimeoutPhase::Read`] |
//! | `attempt_timeout` | one attempt, headers and buffered body | 10 s | [`TimeoutPhase::Attempt`] |
//! | `total_timeout` | the whole call: waits, attempts, backoff | 30 s | [`TimeoutPhase::Total`] |
//!
//! An attempt runs under `min(attempt_timeout, time left)`; when the time left
//! was the smaller, a timeout reports `Total`. [`RequestBuilder::timeout`]
//! replaces the total for one call.
//!
//! # Errors
//!
//! Every failure is an [`Error`] with a [`kind`](Error::kind):
//!
//! | kind | what | retried |
//! |---|---|---|
//! | [`Retryable`](ErrorKind::Retryable) | connect/DNS failure, reset or early close, any timeout, 408, 429, 502, 503, 504 | yes |
//! | [`Server`](ErrorKind::Server) | every other 5xx; a peer that does not speak HTTP | only with `retry_server_errors(true)` |
//! | [`Client`](ErrorKind::Client) | every other 4xx, a 3xx not followed, a redirect loop | no |
//! | [`Rejected`](ErrorKind::Rejected) | refused locally, nothing sent: open circuit, rate or concurrency limit | no |
//! | [`Decode`](ErrorKind::Decode) | a 2xx that cannot be used as asked: wrong JSON, not UTF-8, too large | no |
//! | [`Config`](ErrorKind::Config) | invalid URL, header, option, unserializable body | no |
//!
//! The error carries the status, the first 4 KiB of the body, `Retry-After`,
//! the number of attempts, the elapsed time and the redacted URL. Its `Display`
//! is one log line; secrets (Authorization, cookies, API-key headers, URL
//! passwords, credential-like query values) never appear in `Display`, `Debug`
//! or tracing fields.
//!
//! # Retries, and why a budget
//!
//! Only transient failures are retried, and only when repeating the request is
//! safe: GET, HEAD, OPTIONS, TRACE, PUT and DELETE are; POST and PATCH only with
//! an [`idempotency_key`](RequestBuilder::idempotency_key), with
//! [`idempotent(true)`](RequestBuilder::idempotent), or after a failure that
//! proves nothing was sent (a connect failure). Delays grow exponentially from
//! 100 ms to at most 5 s with full jitter; a `Retry-After` replaces the delay.
//!
//! `max_attempts` alone does not protect a struggling service: when every call
//! fails, every call retries, and the load triples exactly when the service can
//! least take it. The [`RetryBudget`] bounds retries to a share (half) of the
//! calls that recently succeeded, plus a small floor, so in a full outage
//! retries add almost nothing, while random failures up to about 30% are still
//! healed as far as the attempts allow. See [`RetryPolicy`] and [`RetryBudget`]
//! (with the arithmetic of both).
//!
//! # Circuit breaker
//!
//! One breaker per endpoint (scheme, host, port), shared by clones. Once open,
//! calls fail at once for 10 s; then one probe tests the endpoint. The default
//! tells an outage from a flaky dependency: a dead endpoint opens it within 20
//! failed attempts or 1 s, a dependency that fails at random (up to 30%) does
//! not, at any call rate. The trip rules, their defaults and the arithmetic
//! behind that promise are on [`CircuitBreakerConfig`].
//!
//! # Limits
//!
//! [`RateLimit`] keeps the client inside a partner's quota (every attempt takes
//! a permit); [`max_concurrency`](ApiClientBuilder::max_concurrency) bounds the
//! calls in flight. Both wait only within the call's deadline.
//!
//! # Several endpoints
//!
//! [`endpoints`](ApiClientBuilder::endpoints) replaces `base_url` for a
//! service with several instances; [`LoadBalance`] spreads attempts, open
//! circuit breakers eject an instance, and a retry goes to another one. A
//! [`Resolver`] (or [`EtcdResolver`](crate::ApiClientBuilder::resolver), feature
//! `etcd`) keeps the list current; [`ApiClient::endpoints`] reports each one.
//!
//! # Embedding in a service
//!
//! [`token_provider`](ApiClientBuilder::token_provider) with a
//! [`TokenProvider`] or [`OAuth2ClientCredentials`] for credentials that
//! refresh; [`request_hook`](ApiClientBuilder::request_hook) for headers on
//! every attempt; [`ApiClient::stats`] (and the `metrics` feature) for numbers.
//!
//! # Configuration files
//!
//! [`ApiClientConfig`] holds every builder option that can be written as data,
//! with serde's `Deserialize` and `Serialize`: load it with any format crate
//! (`toml`, `serde_json`, ...), then [`ApiClient::from_config`], or
//! [`ApiClientBuilder::from_config`] to add callbacks first. Keys are the
//! builder's method names, durations are text such as `"2s"` or `"150ms"`,
//! absent keys keep the defaults and an unknown key is an error that names it.
//!
//! # Tracing
//!
//! Each call is one `http.client.request` span with OpenTelemetry HTTP-client
//! fields (`http.request.method`, `url.full` (redacted), `server.address`,
//! `server.port`, `http.response.status_code`, `http.request.resend_count`,
//! `error.type`), DEBUG events per attempt and retry (targets
//! `resilient_http`, `resilient_http::retry`, `resilient_http::limit`), breaker
//! changes under `resilient_http::breaker` (WARN when opening), and a WARN when
//! a call finally fails with a `Server` or `Retryable` error. Everything is
//! emitted on the caller's task.
//!
//! # Features
//!
//! None are needed: TLS (rustls), JSON and HTTP/2 are always on.
//!
//! - `etcd`: `EtcdResolver`, endpoints registered in etcd (no extra dependency).
//! - `metrics`: records through the [`metrics`](https://docs.rs/metrics) facade.
//! - `bench-internals`: exposes the layers' bookkeeping to the `hot_path`
//!   benchmark; not a stable API.

#[cfg(feature = "bench-internals")]
#[doc(hidden)]
#[path = "bench.rs"]
pub mod __bench;
mod auth;
mod balance;
mod base64;
mod breaker;
mod builder;
mod client;
mod config;
mod discovery;
mod error;
#[cfg(feature = "etcd")]
mod etcd;
mod hook;
mod limit;
mod metrics;
mod pipeline;
mod redact;
mod request;
mod response;
mod retry;
mod timeout;

pub use auth::{OAuth2ClientCredentials, Token, TokenFuture, TokenProvider};
pub use balance::{Endpoint, EndpointStatus, LoadBalance};
pub use breaker::{CircuitBreakerConfig, CircuitState};
pub use builder::{
    ApiClientBuilder, DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_REDIRECTS,
    DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_READ_TIMEOUT, DEFAULT_TOTAL_TIMEOUT,
};
pub use client::ApiClient;
#[cfg(feature = "etcd")]
pub use config::EtcdSection;
pub use config::{
    ApiClientConfig, CircuitBreakerSection, EndpointEntry, FailureRateSection, RateLimitSection,
    RetryBudgetSection, RetrySection,
};
pub use discovery::{
    DEFAULT_RESOLVER_REFRESH, ResolveError, ResolveFuture, Resolver, StaticResolver,
};
pub use error::{Error, ErrorKind, Result};
#[cfg(feature = "etcd")]
pub use etcd::EtcdResolver;
pub use hook::{HookRequest, RequestHook};
pub use limit::RateLimit;
pub use metrics::ClientStats;
pub use request::{IDEMPOTENCY_KEY, RequestBuilder};
pub use response::{ApiResponse, ApiStream};
pub use retry::{RetryBudget, RetryPolicy};
pub use timeout::TimeoutPhase;

/// The README's code blocks, compiled as doctests so they cannot drift.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use bytes::Bytes;
pub use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
pub use reqwest::{Method, StatusCode, Version};
pub use url::Url;
