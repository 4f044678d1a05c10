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
//!    `Bytes` so it can be replayed); with
//!    [request coalescing](ApiClientBuilder::coalesce_requests), a GET or
//!    HEAD identical to one in flight waits for that call's answer instead
//!    of going on; with a `Cache` (feature `cache`,
//!    `ApiClientBuilder::cache`), a GET or HEAD that a fresh entry answers ends here, with no
//!    I/O, and a stale entry's validators are added to the request;
//! 2. a concurrency permit is taken, held for the whole call, never waiting
//!    past the deadline;
//! 3. for each attempt, the endpoint's server pushback pause and circuit
//!    breaker are asked (open, or paused past the deadline: the call fails at
//!    once, no I/O; paused within it: the call waits), then a rate-limit
//!    permit is taken, then the token (if any) is set, the request hooks run,
//!    the trace context is added (feature `opentelemetry`, see
//!    [Tracing](#tracing)) and the signer (if any) signs the request;
//! 4. one attempt is sent under `min(attempt_timeout, time left)`, and its body
//!    read and buffered (bounded by `max_response_bytes`) inside the attempt;
//!    with [`Hedging`], a copy is sent if it has not answered within the
//!    hedging delay (another attempt: admitted by the breaker and the rate
//!    limit, paid from the retry budget, under the same concurrency permit),
//!    and the first usable answer wins;
//! 5. the outcome is classified and recorded in the breaker;
//! 6. a retryable outcome is retried if the method may be repeated and the
//!    policy, the deadline, the breaker and the retry budget allow, after the
//!    backoff (or the server's `Retry-After`);
//! 7. after the last attempt, a call that failed with a `Retryable` or
//!    `Server` error, or that an open breaker or a server pause refused, is
//!    answered by a stale
//!    cache entry within its stale-if-error window, if there is one; else a
//!    failure of a kind the call's [fallback](ApiClientBuilder::fallback)
//!    names is answered by it.
//!
//! # Paths
//!
//! A path is joined under the base URL (`users/42`, `users?page=2`), and may
//! not leave it: a `..` segment (also `%2e%2e`), `//host` or a `\` is a
//! `Config` error before anything is sent, so text from outside cannot pick
//! another resource. Build paths from such text with [`Segments`], which
//! percent-encodes each segment; [`ApiClient::request`] lists the rules and
//! [`allow_path_escape`](ApiClientBuilder::allow_path_escape) lifts them.
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
//! Every failure is an [`Error`] with a [`kind`](Error::kind) that says what
//! can be done about it (the table of what each kind covers is on
//! [`ErrorKind`]) and a [`reason`](Error::reason) that says what happened
//! ([`ErrorReason`]).
//!
//! The error carries the status, the body (up to `max_error_body_bytes`,
//! 64 KiB by default; [`Error::body_json`] decodes it), `Retry-After`,
//! the number of attempts, the elapsed time and the redacted URL. Its `Display`
//! is one log line; secrets (Authorization, cookies, API-key headers, URL
//! passwords and password-less user names, credential-like query values,
//! URL fragments)
//! never appear in `Display`, `Debug` or tracing fields.
//!
//! # Retries, and why a budget
//!
//! Only transient failures are retried, and only when repeating the request is
//! safe: GET, HEAD, OPTIONS, TRACE, PUT and DELETE are; POST and PATCH only with
//! an [`idempotency_key`](RequestBuilder::idempotency_key), with
//! [`idempotent(true)`](RequestBuilder::idempotent), or after a failure that
//! proves the server did not process the request
//! ([`Error::is_unprocessed`]: a connect failure, a local rejection, or an HTTP/2 stream it
//! refused or dropped in a `GOAWAY`). Delays grow exponentially from
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
//! tells an outage from a flaky dependency: a dead endpoint opens it after 20
//! failed attempts and 1 s (or at the 30th failure, if sooner), a dependency
//! that fails at random (up to 30%) does not, at any call rate. The trip rules, their defaults and the arithmetic
//! behind that promise are on [`CircuitBreakerConfig`].
//!
//! Server pushback is shared the same way: a 429 or 503 with `Retry-After`
//! pauses its endpoint (not the one a redirect came from, when another
//! origin sent it) for every call until the time given (capped at
//! [`RetryPolicy::max_retry_after`]); calls go to another endpoint, wait within
//! their deadline, or fail at once ([`Error::is_server_pushback`] says why).
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
//! [`Resolver`] (or `EtcdResolver`, feature `etcd`; `DnsResolver`, feature `dns`, one endpoint per address of a name)
//! keeps the list current; [`ApiClient::endpoints`] reports each one.
//!
//! # Degrading gracefully
//!
//! [`coalesce_requests`](ApiClientBuilder::coalesce_requests) makes a burst
//! of identical reads cost the dependency one request;
//! [`fallback`](ApiClientBuilder::fallback) answers a call the dependency
//! could not (a timeout, a 503, an open circuit) with a response of the
//! program's own, an [`ApiResponse::synthetic`].
//!
//! # Embedding in a service
//!
//! [`token_provider`](ApiClientBuilder::token_provider) with a
//! [`TokenProvider`] or [`OAuth2ClientCredentials`] for credentials that
//! refresh; [`request_hook`](ApiClientBuilder::request_hook) for headers on
//! every attempt; [`ApiClient::stats`] (and the `metrics` feature) for numbers.
//!
//! # TLS and proxies
//!
//! For a private PKI, trust its CA with
//! [`tls_root_certificate_pem`](ApiClientBuilder::tls_root_certificate_pem)
//! (and only it with [`tls_built_in_roots(false)`](ApiClientBuilder::tls_built_in_roots))
//! rather than turning verification off; present a client certificate with
//! [`tls_identity_pem`](ApiClientBuilder::tls_identity_pem);
//! [`tls_min_version`](ApiClientBuilder::tls_min_version) and
//! [`tls_server_name`](ApiClientBuilder::tls_server_name) (call a server by
//! IP address, check its certificate by name) complete the set. A certificate
//! refused by either side is an [`ErrorKind::Config`] error with the reason
//! [`ErrorReason::Certificate`] and a message that names why: it never heals,
//! so it is tried once and spares the circuit breaker. Certificates are read
//! when the client is built; build a new client to rotate them.
//!
//! Proxies come from [`proxy`](ApiClientBuilder::proxy) or, without it, the
//! environment (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`);
//! [`no_proxy`](ApiClientBuilder::no_proxy) turns them off. Loopback never goes
//! through a proxy; [`proxy_bypass`](ApiClientBuilder::proxy_bypass) adds more
//! direct destinations. Proxy passwords are never shown.
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
//! `error.type`, and `otel.status_code = "ERROR"` for a failed call, which
//! OpenTelemetry layers read as the span's status; `coalesced` for a call that
//! [shared](ApiClientBuilder::coalesce_requests) another's request,
//! `served_by = "fallback"` for one a [fallback](ApiClientBuilder::fallback)
//! answered, and with a `Cache` (feature `cache`), `cache`: what
//! answered), DEBUG events per attempt and retry (targets
//! `resilient_http`, `resilient_http::retry`, `resilient_http::limit`), breaker
//! changes under `resilient_http::breaker` (WARN when opening), and a WARN when
//! a call finally fails with a `Server` or `Retryable` error. Everything is
//! emitted on the caller's task, but for the background refresh of a cache
//! entry (stale-while-revalidate), which runs on a task of its own in a span
//! that follows from the caller's (see `Cache`, feature `cache`).
//!
//! With the feature `opentelemetry`, each attempt is also a span of its own,
//! `http.client.attempt`, at INFO: an OpenTelemetry CLIENT span named after
//! the method (`otel.name`), with `http.request.resend_count` on a resend and
//! the attempt's `http.response.status_code` and `error.type`, a child of the
//! call's span, which becomes the INTERNAL span above the attempts. Each
//! attempt sends its own context in its headers through the global text map
//! propagator (`opentelemetry::global::set_text_map_propagator`):
//! `traceparent`, `tracestate`, and `baggage` when the propagator includes
//! it. Bridged to OpenTelemetry with `tracing-opentelemetry`, the trace reads
//! caller → call → attempts, and the server's spans join it under the attempt
//! that reached it.
//!
//! - A `traceparent` already on the request (set per call, as a default
//!   header, or by a request hook) wins: it is sent as it is and nothing is
//!   added; no header the request already has is replaced.
//! - When a subscriber filters the crate's spans out (for the whole
//!   subscriber, or for the OpenTelemetry layer only), the caller's current
//!   context is sent instead, so the server still joins the caller's trace.
//! - For [`send_stream`](RequestBuilder::send_stream) and
//!   [`send_events`](RequestBuilder::send_events) the attempt's span ends
//!   when the response's headers arrive.
//! - Without a valid context (no OpenTelemetry layer, no current trace) or
//!   without a propagator (OpenTelemetry's default propagator writes
//!   nothing), no header is sent.
//! - A token fetched within a call ([`OAuth2ClientCredentials`], or a
//!   [`TokenProvider`] that calls through an [`ApiClient`]) is a call of its
//!   own under the call's span: the same trace.
//!
//! Without the feature no attempt span is created and nothing is injected
//! (a request hook can still set `traceparent`); no OpenTelemetry crate is
//! compiled. The feature follows one OpenTelemetry release (see the README's
//! "Distributed tracing"); moving to another is a CHANGELOG entry.
//!
//! # Features
//!
//! JSON and HTTP/2 are always on. The default feature `rustls` is the only
//! one needed for HTTPS.
//!
//! ## TLS stacks
//!
//! | feature | TLS through | cold build, CPU time | notes |
//! |---|---|---|---|
//! | `rustls` (default) | rustls with the aws-lc-rs crypto provider | 316 s: aws-lc is most of it (C, built by `cc`) | the platform's roots via rustls-platform-verifier |
//! | `rustls-ring` | rustls with the ring crypto provider | 203 s | same roots; for binaries that already use ring, or cannot build aws-lc. reqwest is then built without a provider of its own: another `reqwest::Client` in the binary needs one installed (`rustls::crypto::CryptoProvider::install_default`) |
//! | `native-tls` | the platform's library (OpenSSL on Linux, needs its headers to build) | 124 s, with OpenSSL's headers and pkg-config installed | client key as PKCS#8 PEM; certificate failures are told from OpenSSL's wording, on other platforms they are `Connect` errors |
//! | none (`default-features = false`) | no TLS | 100 s | plain HTTP only (a mesh that terminates TLS in a sidecar): an `https` base URL or endpoint, or any `tls_*` option, is a `Config` error from `build()` |
//!
//! Build times: `cargo build --release --lib` of this crate and its
//! dependencies from nothing, user plus system CPU seconds on a 2-core x86-64
//! VM (wall time is about half on an idle machine with two cores).
//!
//! With several on, `rustls` wins, then `rustls-ring`, then `native-tls`.
//! The rustls features build their TLS configuration with an explicit
//! crypto provider and never install a process-wide one, so a binary whose
//! other crates use rustls with another provider neither breaks this client
//! nor is broken by it.
//!
//! ## Other features
//!
//! - `etcd`: `EtcdResolver`, endpoints registered in etcd (no extra dependency).
//! - `dns`: `DnsResolver`, one endpoint per address a name has in DNS (A/AAAA
//!   or SRV records); adds `hickory-resolver`.
//! - `redis`: `RateLimit::shared` with a `RedisLimiter`: one rate limit for
//!   every replica of a service, kept in Redis (the `redis` crate).
//! - `metrics`: records through the [`metrics`](https://docs.rs/metrics) facade.
//! - `cache`: an in-memory HTTP response cache for GET and HEAD calls
//!   (`ApiClientBuilder::cache` with a `Cache`): RFC 9111 freshness and
//!   revalidation, stale-if-error, stale-while-revalidate; adds `moka` and
//!   `http-cache-semantics`. Without it nothing of the cache is compiled.
//! - `opentelemetry`: a span per attempt and trace context propagation
//!   through OpenTelemetry's global propagator (see [Tracing](#tracing));
//!   adds the `opentelemetry` API crate and `tracing-opentelemetry`.
//! - `bench-internals`: exposes the layers' bookkeeping to the `hot_path`
//!   benchmark; not a stable API.

#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "bench-internals")]
#[doc(hidden)]
#[path = "bench.rs"]
pub mod __bench;
mod adaptive;
mod auth;
mod balance;
mod breaker;
mod builder;
#[cfg(feature = "cache")]
mod cache;
mod client;
mod coalesce;
pub mod config;
mod discovery;
#[cfg(feature = "dns")]
mod dns;
mod error;
#[cfg(feature = "etcd")]
mod etcd;
mod fallback;
mod headers;
mod hedge;
mod hook;
mod limit;
mod oauth2;
mod origin;
mod otel;
mod path;
mod pipeline;
mod proxy;
mod pushback;
mod redact;
mod redirect;
mod request;
mod response;
mod retry;
#[cfg(feature = "redis")]
mod shared_limit;
mod sse;
mod stats;
mod stream;
mod timeout;
mod tls;
mod transport;
mod upload;

pub use adaptive::AdaptiveConcurrency;
pub use auth::{Token, TokenFuture, TokenProvider};
pub use balance::{Endpoint, EndpointStatus, LoadBalance};
pub use breaker::{CircuitBreakerConfig, CircuitState, StateChange};
pub use builder::ApiClientBuilder;
#[cfg(feature = "cache")]
pub use cache::Cache;
pub use client::ApiClient;
pub use config::ApiClientConfig;
pub use discovery::{ResolveError, ResolveFuture, Resolver, StaticResolver};
#[cfg(feature = "dns")]
pub use dns::DnsResolver;
pub use error::{BoxError, Error, ErrorBuilder, ErrorKind, ErrorReason, Result};
#[cfg(feature = "etcd")]
pub use etcd::EtcdResolver;
pub use hedge::Hedging;
pub use hook::{HookRequest, RequestHook, RequestSigner, SignFuture, SignRequest};
pub use limit::RateLimit;
pub use oauth2::OAuth2ClientCredentials;
pub use path::Segments;
pub use request::{IDEMPOTENCY_KEY, RequestBuilder};
pub use response::{ApiResponse, ApiStream};
pub use retry::{RetryBudget, RetryPolicy};
#[cfg(feature = "redis")]
pub use shared_limit::{
    DEFAULT_REDIS_CONNECT_TIMEOUT, DEFAULT_REDIS_OPEN_DURATION, DEFAULT_REDIS_TIMEOUT,
    RedisLimiter, StoreFallback,
};
pub use sse::{EventStream, SseEvent};
pub use stats::ClientStats;
pub use stream::{JsonArray, JsonLines};
pub use timeout::TimeoutPhase;
pub use tls::TlsVersion;

// Moved to `config` in 0.2; kept at the root for one release.
#[cfg(feature = "etcd")]
#[doc(hidden)]
pub use config::EtcdSection;
#[doc(hidden)]
pub use config::{
    CircuitBreakerSection, DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_REDIRECTS,
    DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_READ_TIMEOUT, DEFAULT_RESOLVER_REFRESH,
    DEFAULT_TOTAL_TIMEOUT, EndpointEntry, FailureRateSection, RateLimitSection, RetryBudgetSection,
    RetrySection,
};

/// The README's code blocks, compiled as doctests so they cannot drift.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use bytes::Bytes;
pub use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
pub use reqwest::{Method, StatusCode, Version};
pub use url::Url;
