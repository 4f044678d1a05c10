//! Every outcome lands in the kind the table on `ErrorKind` gives it: statuses, transport
//! failures, and invalid configuration; and `attempts()` counts what was tried.

mod common;

use resilient_http::{
    ApiClient, ApiClientBuilder, CircuitBreakerConfig, Error, ErrorKind, ErrorReason, RateLimit,
    RetryBudget, RetryPolicy, StatusCode,
};
use wiremock::matchers::path;
use wiremock::{Mock, MockServer, ResponseTemplate};

use common::{Sequence, client_for, closed_port, fast_builder, received};

/// A one-attempt client without a breaker, so a table of failures can share it.
fn plain_client(server: &MockServer) -> resilient_http::Result<ApiClient> {
    fast_builder(&server.uri())
        .no_retry()
        .no_circuit_breaker()
        .build()
}

/// A server answering `/status/{code}` with that status for every code given.
async fn status_server(codes: &[u16]) -> MockServer {
    let server = MockServer::start().await;
    for &code in codes {
        Mock::given(path(format!("/status/{code}")))
            .respond_with(ResponseTemplate::new(code).set_body_string(format!("answer {code}")))
            .expect(1)
            .mount(&server)
            .await;
    }
    server
}

/// Sends one GET per code and checks each error's kind, status and body.
async fn assert_statuses_are(codes: &[u16], kind: ErrorKind) {
    let server = status_server(codes).await;
    let Ok(client) = plain_client(&server) else {
        panic!("the test client is valid");
    };
    for &code in codes {
        let Err(err) = client.get(format!("status/{code}")).send().await else {
            panic!("{code} is not a success");
        };

        assert_eq!(err.kind(), kind, "{code}");
        assert_eq!(err.is_retryable(), kind == ErrorKind::Retryable, "{code}");
        assert_eq!(err.status(), StatusCode::from_u16(code).ok(), "{code}");
        assert_eq!(err.body_text(), Some(format!("answer {code}").as_str()));
        assert!(!err.is_timeout(), "{code}");
        assert!(!err.is_connect(), "{code}");
        assert_eq!(err.attempts(), 1, "{code}");
    }
}

/// A port on 127.0.0.1 nothing listens on: bound, read, released.

// -------------------------------------------------------------------- statuses

#[tokio::test]
async fn transient_statuses_are_retryable() {
    assert_statuses_are(&[408, 429, 502, 503, 504], ErrorKind::Retryable).await;
}

#[tokio::test]
async fn other_5xx_statuses_are_server_errors() {
    assert_statuses_are(&[500, 501, 505], ErrorKind::Server).await;
}

#[tokio::test]
async fn other_4xx_statuses_are_client_errors() {
    assert_statuses_are(&[400, 401, 403, 404, 409, 422], ErrorKind::Client).await;
}

#[tokio::test]
async fn not_modified_is_a_client_error() {
    let server = MockServer::start().await;
    Mock::given(path("/cached"))
        .respond_with(ResponseTemplate::new(304))
        .expect(1)
        .mount(&server)
        .await;
    let client = plain_client(&server).unwrap();

    let err = client.get("cached").send().await.unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Client);
    assert_eq!(err.status(), Some(StatusCode::NOT_MODIFIED));
}

#[tokio::test]
async fn redirect_not_followed_with_max_redirects_zero_is_a_client_error() {
    let server = MockServer::start().await;
    Mock::given(path("/old"))
        .respond_with(ResponseTemplate::new(302).insert_header("location", "/new"))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(path("/new"))
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&server)
        .await;
    let client = fast_builder(&server.uri())
        .max_redirects(0)
        .build()
        .unwrap();

    let err = client.get("old").send().await.unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Client);
    assert!(!err.is_retryable());
    assert_eq!(err.attempts(), 1);
    assert_eq!(
        err.status(),
        Some(StatusCode::FOUND),
        "the 3xx itself is returned"
    );
    let location = err.headers().and_then(|h| h.get("location"));
    assert_eq!(location.map(|v| v.to_str().unwrap()), Some("/new"));
}

#[tokio::test]
async fn redirect_within_the_limit_is_followed() {
    let server = MockServer::start().await;
    Mock::given(path("/old"))
        .respond_with(ResponseTemplate::new(302).insert_header("location", "/new"))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(path("/new"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    let client = client_for(&server);

    let resp = client.get("old").send().await.unwrap();

    assert_eq!(resp.url().path(), "/new");
}

#[tokio::test]
async fn redirect_loop_is_a_client_error() {
    let server = MockServer::start().await;
    Mock::given(path("/loop"))
        .respond_with(ResponseTemplate::new(302).insert_header("location", "/loop"))
        .mount(&server)
        .await;
    let client = fast_builder(&server.uri())
        .max_redirects(3)
        .build()
        .unwrap();

    let err = client.get("loop").send().await.unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Client);
    assert!(!err.is_retryable());
    assert_eq!(received(&server).await, 4);
}

// ------------------------------------------------------------------- transport

#[tokio::test]
async fn connection_refused_is_a_retryable_connect_error() {
    let uri = format!("http://127.0.0.1:{}/", closed_port().unwrap());
    let client = fast_builder(&uri).no_retry().build().unwrap();

    let err = client.get("x").send().await.unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Retryable);
    assert!(err.is_retryable());
    assert!(err.is_connect());
    assert!(!err.is_timeout());
    assert_eq!(err.status(), None);
    assert_eq!(err.attempts(), 1);
}

#[tokio::test]
async fn connection_refused_error_keeps_the_io_error_in_its_source_chain() {
    let uri = format!("http://127.0.0.1:{}/", closed_port().unwrap());
    let client = fast_builder(&uri).no_retry().build().unwrap();

    let err = client.get("x").send().await.unwrap_err();

    let mut cause = std::error::Error::source(&err);
    assert!(cause.is_some(), "a transport error has a source");
    let mut refused = false;
    for _ in 0..16 {
        let Some(e) = cause else { break };
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            refused |= io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        cause = e.source();
    }
    assert!(refused, "{err:?}");
}

#[tokio::test]
async fn a_post_to_a_refused_port_is_retried_because_nothing_was_sent() {
    let uri = format!("http://127.0.0.1:{}/", closed_port().unwrap());
    let client = fast_builder(&uri).build().unwrap();

    let err = client.post("orders").body("{}").send().await.unwrap_err();

    assert!(err.is_connect());
    assert_eq!(err.attempts(), 3);
}

const _: () = {
    const fn assert_error<E: std::error::Error + Send + Sync + 'static>() {}
    assert_error::<Error>();
};

// ---------------------------------------------------------------------- config

#[test]
fn invalid_base_urls_are_config_errors_from_build() {
    for base in ["not a url", "http://", "127.0.0.1:8080", ""] {
        let err = ApiClient::builder().base_url(base).build().unwrap_err();

        assert_eq!(err.kind(), ErrorKind::Config, "{base:?}");
        assert_eq!(err.attempts(), 0, "{base:?}");
    }
}

#[test]
fn non_http_base_urls_are_config_errors_from_build() {
    for base in ["ftp://127.0.0.1/", "file:///tmp/", "ws://127.0.0.1:1/"] {
        let err = ApiClient::builder().base_url(base).build().unwrap_err();

        assert_eq!(err.kind(), ErrorKind::Config, "{base:?}");
    }
}

#[test]
fn a_query_or_fragment_in_a_base_url_or_endpoint_is_a_config_error_from_build() {
    for base in ["http://127.0.0.1:1/v1/?k=1", "http://127.0.0.1:1/v1/#frag"] {
        let err = ApiClient::builder().base_url(base).build().unwrap_err();

        assert_eq!(err.kind(), ErrorKind::Config, "{base:?}");
    }
    for endpoint in ["http://127.0.0.1:1/v1/#frag", "http://127.0.0.1:1/v1/?k=1"] {
        let err = ApiClient::builder()
            .endpoints(["http://127.0.0.1:2/v1/", endpoint])
            .build()
            .unwrap_err();

        assert_eq!(err.kind(), ErrorKind::Config, "{endpoint:?}");
    }
}

#[tokio::test]
async fn non_http_request_url_is_a_config_error_from_send() {
    let server = MockServer::start().await;
    let client = client_for(&server);

    let err = client.get("ftp://127.0.0.1/file").send().await.unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Config);
    assert_eq!(err.attempts(), 0);
    assert_eq!(received(&server).await, 0);
}

#[test]
fn invalid_default_header_name_is_a_config_error_from_build() {
    let err = ApiClient::builder()
        .base_url("http://127.0.0.1:1/")
        .default_header("bad header", "v")
        .build()
        .unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Config);
    assert_eq!(err.attempts(), 0);
}

#[test]
fn invalid_default_header_value_is_a_config_error_from_build() {
    let err = ApiClient::builder()
        .base_url("http://127.0.0.1:1/")
        .default_header("x-tenant", "line\nbreak")
        .build()
        .unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Config);
}

#[tokio::test]
async fn invalid_request_header_name_is_a_config_error_from_send() {
    let server = MockServer::start().await;
    let client = client_for(&server);

    let err = client
        .get("x")
        .header("bad header", "v")
        .send()
        .await
        .unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Config);
    assert_eq!(err.attempts(), 0);
    assert_eq!(received(&server).await, 0);
}

#[tokio::test]
async fn invalid_request_header_value_is_a_config_error_from_send() {
    let server = MockServer::start().await;
    let client = client_for(&server);

    let err = client
        .get("x")
        .header("x-tenant", "line\nbreak")
        .send()
        .await
        .unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Config);
    assert_eq!(err.attempts(), 0);
    assert_eq!(received(&server).await, 0);
}

#[test]
fn invalid_options_are_config_errors_from_build() {
    let base = || ApiClient::builder().base_url("http://127.0.0.1:1/");
    let cases: Vec<(&str, ApiClientBuilder)> = vec![
        (
            "max_attempts(0)",
            base().retry(RetryPolicy::exponential().max_attempts(0)),
        ),
        ("max_concurrency(0)", base().max_concurrency(0)),
        (
            "budget ratio 1.5",
            base().retry(RetryPolicy::exponential().budget(RetryBudget::ratio(1.5))),
        ),
        (
            "budget ratio -0.1",
            base().retry(RetryPolicy::exponential().budget(RetryBudget::ratio(-0.1))),
        ),
        (
            "failure rate threshold 2.0",
            base().circuit_breaker(CircuitBreakerConfig::default().failure_rate(2.0, 20, 10)),
        ),
        (
            "min_calls > window",
            base().circuit_breaker(CircuitBreakerConfig::default().failure_rate(0.5, 10, 11)),
        ),
        (
            "zero window",
            base().circuit_breaker(CircuitBreakerConfig::default().failure_rate(0.5, 0, 0)),
        ),
        (
            "rate 0 per second",
            base().rate_limit(RateLimit::per_second(0)),
        ),
    ];

    for (name, builder) in cases {
        let err = builder.build().unwrap_err();

        assert_eq!(err.kind(), ErrorKind::Config, "{name}");
        assert!(!err.is_retryable(), "{name}");
        assert_eq!(err.attempts(), 0, "{name}");
    }
}

#[test]
fn boundary_options_are_accepted() {
    let client = ApiClient::builder()
        .base_url("http://127.0.0.1:1/")
        .retry(
            RetryPolicy::exponential()
                .max_attempts(1)
                .budget(RetryBudget::ratio(1.0)),
        )
        .circuit_breaker(CircuitBreakerConfig::default().failure_rate(1.0, 10, 10))
        .max_concurrency(1)
        .rate_limit(RateLimit::per_second(1))
        .build();

    assert!(client.is_ok(), "{client:?}");
}

// -------------------------------------------------------------------- attempts

#[tokio::test]
async fn single_failing_attempt_without_retry_reports_one_attempt() {
    let server = MockServer::start().await;
    let replies = Sequence::statuses(&[503]);
    Mock::given(path("/busy"))
        .respond_with(replies.clone())
        .mount(&server)
        .await;
    let client = fast_builder(&server.uri()).no_retry().build().unwrap();

    let err = client.get("busy").send().await.unwrap_err();

    assert_eq!(err.attempts(), 1);
    assert_eq!(replies.served(), 1);
}

#[tokio::test]
async fn retried_call_reports_every_attempt_it_made() {
    let server = MockServer::start().await;
    let replies = Sequence::statuses(&[503]);
    Mock::given(path("/busy"))
        .respond_with(replies.clone())
        .mount(&server)
        .await;
    let client = client_for(&server);

    let err = client.get("busy").send().await.unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Retryable);
    assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(err.attempts(), 3);
    assert_eq!(replies.served(), 3);
}

#[tokio::test]
async fn server_error_is_not_retried_by_default() {
    let server = MockServer::start().await;
    let replies = Sequence::statuses(&[500]);
    Mock::given(path("/broken"))
        .respond_with(replies.clone())
        .mount(&server)
        .await;
    let client = client_for(&server);

    let err = client.get("broken").send().await.unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Server);
    assert_eq!(err.attempts(), 1);
    assert_eq!(replies.served(), 1);
}

#[tokio::test]
async fn a_name_that_does_not_resolve_is_a_retryable_connect_failure() {
    // The name is pinned to no address: resolution fails on this machine,
    // and nothing is asked of any DNS server.
    let client = ApiClient::builder()
        .base_url("http://nowhere.test:8080/")
        .resolve("nowhere.test", [])
        .retry(common::fast_retry(2))
        .no_circuit_breaker()
        .build()
        .unwrap();

    let err = client.get("x").send().await.unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Retryable);
    assert_eq!(err.reason(), ErrorReason::Connect);
    assert!(err.is_connect() && err.is_unprocessed());
    assert_eq!(err.attempts(), 2, "a DNS failure is retried");
}
