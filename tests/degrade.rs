//! Degrading gracefully: request coalescing (identical reads in flight share
//! one request, each caller with its own deadline and cancellation) and
//! fallbacks (an answer of the program's own when the dependency is
//! unavailable).
//!
//! Calls that must overlap are all polled before the stub's delay ends (the
//! first poll of each joins the shared call), so the overlap does not depend
//! on timing; the delays only keep the shared call in flight, with wide
//! margins.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{capture_traces, closed_port, fast_builder, received};
use futures_util::future::join_all;
use resilient_http::{
    ApiClient, ApiClientBuilder, ApiClientConfig, ApiResponse, CircuitBreakerConfig, Error,
    ErrorKind, StatusCode, TimeoutPhase,
};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// Long enough for every caller of a test to join the shared call.
const IN_FLIGHT: Duration = Duration::from_millis(300);

/// A stub answering `GET /{route}` with `body` after `delay`.
async fn slow_stub(server: &MockServer, route: &str, body: &str, delay: Duration) {
    Mock::given(method("GET"))
        .and(path(format!("/{route}")))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_string(body)
                .set_delay(delay),
        )
        .mount(server)
        .await;
}

/// A stub answering every request with `status` after `delay`.
async fn answering(status: u16, delay: Duration) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(status).set_delay(delay))
        .mount(&server)
        .await;
    server
}

/// A client for `server` that coalesces requests.
fn coalescing(server: &MockServer) -> ApiClient {
    fast_builder(&server.uri())
        .coalesce_requests(true)
        .build()
        .unwrap()
}

/// A fallback that answers 200 with `body`.
fn synthetic(body: &'static str) -> impl Fn(&Error) -> Option<ApiResponse> + Send + Sync {
    move |_| Some(ApiResponse::synthetic(StatusCode::OK, body))
}

/// Every call was answered, `requests` requests reached the server, and
/// `coalesced` calls shared another's.
async fn assert_answered(
    answers: &[resilient_http::Result<ApiResponse>],
    server: &MockServer,
    client: &ApiClient,
    requests: usize,
    coalesced: u64,
) {
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    assert_eq!(received(server).await, requests);
    assert_eq!(client.stats().coalesced, coalesced);
}

// ---------------------------------------------------------------- coalescing

#[tokio::test]
async fn a_hundred_identical_gets_send_one_request() {
    let server = MockServer::start().await;
    slow_stub(&server, "items", "the items", IN_FLIGHT).await;
    let client = coalescing(&server);

    let calls = (0..100).map(|_| client.get("items").send());
    let answers = join_all(calls).await;

    assert_eq!(received(&server).await, 1);
    for answer in answers {
        let resp = answer.unwrap();
        assert_eq!(resp.text().unwrap(), "the items");
        assert!(!resp.is_synthetic());
    }
    let stats = client.stats();
    assert_eq!(
        (
            stats.calls,
            stats.succeeded,
            stats.attempts,
            stats.coalesced
        ),
        (1, 1, 1, 99)
    );
    assert_eq!(stats.in_flight, 0);
}

#[tokio::test]
async fn identical_heads_share_one_request_too() {
    let server = answering(200, IN_FLIGHT).await;
    let client = coalescing(&server);

    let answers = join_all((0..3).map(|_| client.head("items").send())).await;

    assert_answered(&answers, &server, &client, 1, 2).await;
}

#[tokio::test]
async fn without_coalescing_every_call_sends_its_request() {
    let server = MockServer::start().await;
    slow_stub(&server, "items", "the items", IN_FLIGHT).await;
    let client = fast_builder(&server.uri()).build().unwrap();

    let answers = join_all((0..5).map(|_| client.get("items").send())).await;

    assert_answered(&answers, &server, &client, 5, 0).await;
}

#[tokio::test]
async fn other_credentials_or_headers_send_their_own_requests() {
    let server = MockServer::start().await;
    for (token, body) in [("Bearer ada", "ada's"), ("Bearer bob", "bob's")] {
        Mock::given(header("authorization", token))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_string(body)
                    .set_delay(IN_FLIGHT),
            )
            .mount(&server)
            .await;
    }
    let client = coalescing(&server);
    let get = |token: &str| client.get("me").bearer_auth(token);

    let answers = join_all([
        get("ada").send(),
        get("bob").send(),
        get("ada").header("x-tenant", "t2").send(),
        get("ada").send(),
        get("bob").send(),
    ])
    .await;

    let bodies: Vec<String> = answers
        .into_iter()
        .map(|a| a.unwrap().text().unwrap())
        .collect();
    assert_eq!(bodies, ["ada's", "bob's", "ada's", "ada's", "bob's"]);
    // ada, bob, and ada for tenant t2: the other two shared.
    assert_eq!(received(&server).await, 3);
    assert_eq!(client.stats().coalesced, 2);
}

#[tokio::test]
async fn other_queries_methods_and_allowed_statuses_do_not_share() {
    let server = answering(200, IN_FLIGHT).await;
    let client = coalescing(&server);

    let answers = join_all([
        client.get("items").send(),
        client.get("items").query(&[("page", "2")]).send(),
        client.head("items").send(),
        client
            .get("items")
            .allow_status(StatusCode::NOT_FOUND)
            .send(),
        client.post("items").send(),
        client.post("items").send(),
        client.get("items").no_coalescing().send(),
    ])
    .await;

    assert_answered(&answers, &server, &client, 7, 0).await;
}

#[tokio::test]
async fn a_call_after_the_shared_one_ended_sends_its_own_request() {
    let server = MockServer::start().await;
    slow_stub(&server, "items", "the items", Duration::ZERO).await;
    let client = coalescing(&server);

    client.get("items").send().await.unwrap();
    client.get("items").send().await.unwrap();

    assert_eq!(received(&server).await, 2);
    assert_eq!(client.stats().coalesced, 0);
}

/// A call that has not ended.
type Pending = Pin<Box<dyn Future<Output = resilient_http::Result<ApiResponse>> + Send>>;

/// Two identical calls to a slow stub, each polled once: the second joined
/// the first.
async fn two_joined_calls() -> (MockServer, ApiClient, Pending, Pending) {
    let server = MockServer::start().await;
    slow_stub(&server, "items", "the items", IN_FLIGHT).await;
    let client = coalescing(&server);
    let mut first: Pending = Box::pin(client.get("items").send());
    let mut second: Pending = Box::pin(client.get("items").send());
    assert!(futures_util::poll!(first.as_mut()).is_pending());
    assert!(futures_util::poll!(second.as_mut()).is_pending());
    assert_eq!(client.stats().coalesced, 1, "the second joined the first");
    (server, client, first, second)
}

#[tokio::test]
async fn a_dropped_first_caller_does_not_fail_the_others() {
    let (server, client, first, second) = two_joined_calls().await;

    drop(first);
    let resp = second.await.unwrap();

    assert_eq!(resp.text().unwrap(), "the items");
    assert_eq!(received(&server).await, 1);
    let stats = client.stats();
    assert_eq!((stats.succeeded, stats.cancelled), (1, 0));
}

#[tokio::test]
async fn a_shared_call_no_caller_waits_for_is_cancelled() {
    let (_server, client, first, second) = two_joined_calls().await;

    drop((first, second));

    let stats = client.stats();
    assert_eq!((stats.cancelled, stats.in_flight), (1, 0));
    // A new call starts one of its own.
    client.get("items").send().await.unwrap();
    assert_eq!(client.stats().coalesced, 1);
}

#[tokio::test]
async fn a_first_caller_past_its_deadline_does_not_fail_the_others() {
    let server = MockServer::start().await;
    slow_stub(&server, "items", "the items", IN_FLIGHT).await;
    let client = coalescing(&server);

    let (first, second) = tokio::join!(
        client
            .get("items")
            .timeout(Duration::from_millis(50))
            .send(),
        client.get("items").send(),
    );

    let err = first.unwrap_err();
    assert_eq!(err.timeout_phase(), Some(TimeoutPhase::Total));
    assert_eq!(second.unwrap().text().unwrap(), "the items");
    assert_eq!(received(&server).await, 1);
}

#[tokio::test]
async fn each_caller_keeps_its_own_deadline() {
    let server = MockServer::start().await;
    slow_stub(&server, "items", "the items", Duration::from_millis(1500)).await;
    let client = coalescing(&server);
    let started = tokio::time::Instant::now();

    let impatient = async {
        let result = client
            .get("items")
            .timeout(Duration::from_millis(100))
            .send()
            .await;
        (result, started.elapsed())
    };
    let (first, (second, waited)) = tokio::join!(client.get("items").send(), impatient);

    assert_eq!(first.unwrap().text().unwrap(), "the items");
    let err = second.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert_eq!(err.timeout_phase(), Some(TimeoutPhase::Total));
    assert!(waited < Duration::from_secs(1), "gave up after {waited:?}");
    assert_eq!(received(&server).await, 1);
}

#[tokio::test]
async fn coalesced_callers_share_the_error() {
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(
            ResponseTemplate::new(500)
                .set_body_string("down")
                .set_delay(IN_FLIGHT),
        )
        .mount(&server)
        .await;
    let client = one_attempt(&server)
        .coalesce_requests(true)
        .build()
        .unwrap();

    let answers = join_all((0..3).map(|_| client.get("items").send())).await;

    for answer in answers {
        let err = answer.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Server);
        assert_eq!(err.status(), Some(StatusCode::INTERNAL_SERVER_ERROR));
        assert_eq!(err.body_text(), Some("down"));
        assert_eq!(err.attempts(), 1);
    }
    assert_eq!(received(&server).await, 1);
    let stats = client.stats();
    assert_eq!((stats.failed, stats.coalesced), (1, 2));
}

#[tokio::test]
async fn a_coalesced_call_takes_one_concurrency_permit() {
    let server = MockServer::start().await;
    slow_stub(&server, "items", "the items", IN_FLIGHT).await;
    let client = fast_builder(&server.uri())
        .max_concurrency(1)
        .coalesce_requests(true)
        .build()
        .unwrap();

    let answers = join_all((0..3).map(|_| {
        // Three calls in turn would need three times the delay.
        client.get("items").timeout(IN_FLIGHT * 8 / 3).send()
    }))
    .await;

    assert_answered(&answers, &server, &client, 1, 2).await;
}

#[tokio::test]
async fn the_span_of_a_coalesced_call_says_so() {
    let (captured, _guard) = capture_traces(tracing::Level::DEBUG);
    let server = MockServer::start().await;
    slow_stub(&server, "items", "the items", IN_FLIGHT).await;
    let client = coalescing(&server);

    let (first, second) = tokio::join!(client.get("items").send(), client.get("items").send());
    first.unwrap();
    second.unwrap();

    let text = captured.text();
    assert_eq!(text.matches("coalesced=true").count(), 1, "{text}");
    assert!(
        text.contains("joined an identical call in flight"),
        "{text}"
    );
}

#[tokio::test]
async fn coalesce_requests_is_a_configuration_key() {
    let server = MockServer::start().await;
    slow_stub(&server, "items", "the items", IN_FLIGHT).await;
    let mut config: ApiClientConfig = toml::from_str("coalesce_requests = true").unwrap();
    config.base_url = Some(server.uri());
    let client = ApiClient::from_config(&config).unwrap();

    let answers = join_all((0..2).map(|_| client.get("items").send())).await;

    assert_answered(&answers, &server, &client, 1, 1).await;
    assert_eq!(ApiClientConfig::default().coalesce_requests, None);
}

// ---------------------------------------------------------------- fallbacks

/// A builder for `server` with one attempt per call.
fn one_attempt(server: &MockServer) -> ApiClientBuilder {
    fast_builder(&server.uri()).no_retry()
}

/// A stub answering `status`, and a client whose fallback answers `body`.
async fn falling_back(status: u16, body: &'static str) -> (MockServer, ApiClient) {
    let server = answering(status, Duration::ZERO).await;
    let client = one_attempt(&server)
        .fallback(synthetic(body))
        .build()
        .unwrap();
    (server, client)
}

#[tokio::test]
async fn the_fallback_answers_a_503() {
    let server = answering(503, Duration::ZERO).await;
    let client = one_attempt(&server)
        .fallback(|err| {
            assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
            Some(ApiResponse::synthetic(StatusCode::OK, r#"["default"]"#))
        })
        .build()
        .unwrap();

    let resp = client.get("items").send().await.unwrap();

    assert!(resp.is_synthetic());
    assert_eq!((resp.status(), resp.attempts()), (StatusCode::OK, 0));
    assert_eq!(resp.url().path(), "/items");
    assert_eq!(resp.json::<Vec<String>>().unwrap(), ["default"]);
    let stats = client.stats();
    assert_eq!((stats.failed, stats.fallbacks, stats.attempts), (1, 1, 1));
}

#[tokio::test]
async fn the_fallback_answers_the_typed_one_liners() {
    let (_server, client) = falling_back(500, "[]").await;

    let items: Vec<u64> = client.get_json("items").await.unwrap();

    assert!(items.is_empty());
}

#[tokio::test]
async fn the_fallback_is_not_asked_about_a_404() {
    let server = answering(404, Duration::ZERO).await;
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&asked);
    let client = fast_builder(&server.uri())
        .fallback(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
            Some(ApiResponse::synthetic(StatusCode::OK, ""))
        })
        .build()
        .unwrap();

    let err = client.get("users/7").send().await.unwrap_err();

    assert_eq!(err.status(), Some(StatusCode::NOT_FOUND));
    assert_eq!(asked.load(Ordering::SeqCst), 0);
    assert_eq!(client.stats().fallbacks, 0);
}

#[tokio::test]
async fn the_fallback_answers_a_refused_connection_and_an_open_circuit() {
    let url = format!("http://127.0.0.1:{}/", closed_port().unwrap());
    let kinds = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&kinds);
    let client = fast_builder(&url)
        .no_retry()
        .circuit_breaker(CircuitBreakerConfig::default().consecutive_failures(1))
        .fallback(move |err| {
            seen.lock().unwrap().push(err.kind());
            Some(ApiResponse::synthetic(StatusCode::OK, "later"))
        })
        .build()
        .unwrap();

    let refused = client.get("items").send().await.unwrap();
    let rejected = client.get("items").send().await.unwrap();

    assert_eq!(refused.text().unwrap(), "later");
    assert_eq!(rejected.text().unwrap(), "later");
    assert_eq!(
        *kinds.lock().unwrap(),
        [ErrorKind::Retryable, ErrorKind::Rejected]
    );
}

#[tokio::test]
async fn a_fallback_that_declines_keeps_the_error() {
    let server = answering(503, Duration::ZERO).await;
    let client = one_attempt(&server)
        .fallback(|_err: &Error| -> Option<ApiResponse> { None })
        .build()
        .unwrap();

    let err = client.get("items").send().await.unwrap_err();

    assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(client.stats().fallbacks, 0);
}

#[tokio::test]
async fn fallback_on_answers_the_kinds_it_names_only() {
    let server = MockServer::start().await;
    Mock::given(path("/missing"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&server)
        .await;
    Mock::given(path("/down"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    let client = one_attempt(&server)
        .fallback_on([ErrorKind::Client], synthetic("placeholder"))
        .build()
        .unwrap();

    let missing = client.get("missing").send().await.unwrap();
    let down = client.get("down").send().await.unwrap_err();

    assert_eq!(missing.text().unwrap(), "placeholder");
    assert_eq!(down.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
}

#[tokio::test]
async fn a_calls_fallback_replaces_the_clients() {
    let (_server, client) = falling_back(503, "client's").await;

    let own = client.get("a").fallback(synthetic("call's")).send().await;
    let client_s = client.get("a").send().await;
    let none = client.get("a").no_fallback().send().await;
    let named = client
        .get("a")
        .fallback_on([ErrorKind::Client], synthetic("call's"))
        .send()
        .await;

    assert_eq!(own.unwrap().text().unwrap(), "call's");
    assert_eq!(client_s.unwrap().text().unwrap(), "client's");
    assert!(none.is_err());
    assert!(named.is_err(), "the call's fallback does not name 503s");
}

#[tokio::test]
async fn each_coalesced_caller_has_its_own_fallback() {
    let server = answering(503, IN_FLIGHT).await;
    let client = one_attempt(&server)
        .coalesce_requests(true)
        .build()
        .unwrap();

    let (plain, answered) = tokio::join!(
        client.get("items").send(),
        client.get("items").fallback(synthetic("default")).send(),
    );

    assert_eq!(
        plain.unwrap_err().status(),
        Some(StatusCode::SERVICE_UNAVAILABLE)
    );
    assert_eq!(answered.unwrap().text().unwrap(), "default");
    assert_eq!(received(&server).await, 1);
    let stats = client.stats();
    assert_eq!((stats.coalesced, stats.fallbacks), (1, 1));
}

#[tokio::test]
async fn the_span_says_a_fallback_served() {
    let (captured, _guard) = capture_traces(tracing::Level::DEBUG);
    let (_server, client) = falling_back(503, "default").await;

    client.get("items").send().await.unwrap();

    let text = captured.text();
    assert!(
        text.contains("a fallback answered the failed call"),
        "{text}"
    );
    assert!(text.contains(r#"served_by="fallback""#), "{text}");
}

#[cfg(feature = "metrics")]
#[tokio::test]
async fn coalesced_calls_and_fallbacks_are_counted_as_metrics() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let _local = metrics::set_default_local_recorder(&recorder);
    let server = answering(503, IN_FLIGHT).await;
    let client = one_attempt(&server)
        .coalesce_requests(true)
        .fallback(synthetic("default"))
        .build()
        .unwrap();

    let answers = join_all((0..3).map(|_| client.get("items").send())).await;

    assert!(answers.iter().all(Result::is_ok));
    let text = handle.render();
    let value = |series: &str| {
        text.lines()
            .find(|line| line.starts_with(series))
            .and_then(|line| line.rsplit(' ').next())
            .map(str::to_owned)
    };
    assert_eq!(
        value(r#"http_client_coalesced{http_request_method="GET"}"#).as_deref(),
        Some("2"),
        "{text}"
    );
    assert_eq!(
        value(r#"http_client_fallbacks{http_request_method="GET",outcome="retryable"}"#).as_deref(),
        Some("3"),
        "{text}"
    );
}
