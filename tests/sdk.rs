//! Writing an SDK on the client: error bodies kept and decoded, form bodies,
//! per-call basic auth and retry policy, statuses that are answers, stats as
//! JSON, errors built for tests, the request signer, and clear messages.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use resilient_http::{
    ApiClient, ApiClientConfig, CircuitBreakerConfig, CircuitState, Error, ErrorKind, ErrorReason,
    HeaderValue, HookRequest, RequestSigner, RetryBudget, RetryPolicy, SignFuture, SignRequest,
    StatusCode, TimeoutPhase,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use wiremock::matchers::{body_string, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use common::{Sequence, client_for, fast_builder, received};

#[derive(Debug, Deserialize)]
struct Problem {
    #[serde(rename = "type")]
    kind: String,
    title: String,
    detail: String,
}

async fn answering(template: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(template)
        .mount(&server)
        .await;
    server
}

// ---------------------------------------------------------------- error bodies

#[tokio::test]
async fn a_5_kb_problem_json_409_decodes_into_a_domain_error() {
    let detail = "x".repeat(5 * 1024);
    let body = json!({ "type": "/errors/conflict", "title": "Order exists", "detail": detail });
    let server = answering(
        ResponseTemplate::new(409).set_body_raw(body.to_string(), "application/problem+json"),
    )
    .await;
    let client = client_for(&server);

    let err = client.post("orders").send().await.unwrap_err();

    assert_eq!(err.status(), Some(StatusCode::CONFLICT));
    let problem: Problem = err.body_json().unwrap();
    assert_eq!(problem.kind, "/errors/conflict");
    assert_eq!(problem.title, "Order exists");
    assert_eq!(problem.detail.len(), 5 * 1024);
    assert_eq!(err.body_text().map(str::len), Some(body.to_string().len()));
    assert!(!err.to_string().contains("Order exists"), "{err}");
}

#[tokio::test]
async fn error_bodies_are_kept_up_to_64_kib_by_default() {
    let server =
        answering(ResponseTemplate::new(400).set_body_string("a".repeat(100 * 1024))).await;
    let client = client_for(&server);

    let err = client.get("x").send().await.unwrap_err();

    assert_eq!(err.body_text().map(str::len), Some(64 * 1024));
    assert_eq!(
        err.body_bytes().map(resilient_http::Bytes::len),
        Some(64 * 1024)
    );
}

#[tokio::test]
async fn max_error_body_bytes_bounds_the_kept_body_from_the_builder_and_the_config() {
    let server = answering(ResponseTemplate::new(400).set_body_string("a".repeat(5000))).await;
    let built = fast_builder(&server.uri())
        .max_error_body_bytes(1000)
        .build()
        .unwrap();
    let config: ApiClientConfig = toml::from_str(&format!(
        "base_url = \"{}\"\nmax_error_body_bytes = 10",
        server.uri()
    ))
    .unwrap();
    let configured = ApiClient::from_config(&config).unwrap();

    let from_builder = built.get("x").send().await.unwrap_err();
    let from_config = configured.get("x").send().await.unwrap_err();

    assert_eq!(from_builder.body_text().map(str::len), Some(1000));
    assert_eq!(from_config.body_text().map(str::len), Some(10));
}

#[tokio::test]
async fn an_error_body_of_the_wrong_shape_is_a_decode_error_with_the_status_and_the_path() {
    let server = answering(
        ResponseTemplate::new(409)
            .set_body_string(r#"{"type":"t","title":"s3cr3t-value","detail":7}"#),
    )
    .await;
    let client = client_for(&server);
    let err = client.post("orders").send().await.unwrap_err();

    let decode = err.body_json::<Problem>().unwrap_err();

    assert_eq!(decode.kind(), ErrorKind::Decode);
    assert_eq!(decode.status(), Some(StatusCode::CONFLICT));
    let text = decode.to_string();
    assert!(text.contains("type error at `detail`"), "{text}");
    assert!(text.starts_with("POST http://127.0.0.1:"), "{text}");
    assert!(!text.contains("s3cr3t"), "{text}");
}

#[tokio::test]
async fn an_error_without_a_body_cannot_be_decoded() {
    let server = answering(ResponseTemplate::new(404)).await;
    let client = client_for(&server);
    let err = client.get("x").send().await.unwrap_err();

    let decode = err.body_json::<serde_json::Value>().unwrap_err();

    assert_eq!(err.body_text(), None);
    assert_eq!(decode.kind(), ErrorKind::Decode);
    assert_eq!(decode.status(), Some(StatusCode::NOT_FOUND));
}

#[tokio::test]
async fn a_2xx_body_of_the_wrong_shape_names_the_category_and_path_and_keeps_the_status() {
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Item {
        id: u64,
    }
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Page {
        items: Vec<Item>,
    }
    let server = answering(
        ResponseTemplate::new(200).set_body_string(r#"{"items":[{"id":1},{"id":"top-secret"}]}"#),
    )
    .await;
    let client = client_for(&server);

    let err = client.get_json::<Page>("items").await.unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Decode);
    assert_eq!(err.status(), Some(StatusCode::OK));
    let text = err.to_string();
    assert!(text.contains("type error at `items[1].id`"), "{text}");
    assert!(!text.contains("top-secret"), "{text}");
    assert!(
        std::error::Error::source(&err)
            .unwrap()
            .to_string()
            .contains("invalid type")
    );
}

// ---------------------------------------------------------------- form bodies

#[tokio::test]
async fn a_form_is_sent_urlencoded_and_replayed_on_a_retry() {
    let server = MockServer::start().await;
    let answers = Sequence::statuses(&[503, 200]);
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .and(body_string(
            "grant_type=client_credentials&scope=read+write",
        ))
        .respond_with(answers.clone())
        .expect(2)
        .mount(&server)
        .await;
    let client = client_for(&server);

    let resp = client
        .post("token")
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "read write"),
        ])
        .idempotent(true)
        .send()
        .await
        .unwrap();

    assert_eq!((resp.status(), resp.attempts()), (StatusCode::OK, 2));
}

#[tokio::test]
async fn a_form_that_cannot_be_serialized_is_a_config_error_naming_the_form() {
    #[derive(Serialize)]
    struct Nested {
        inner: Vec<(u8, u8)>,
    }
    let server = answering(ResponseTemplate::new(200)).await;
    let client = client_for(&server);

    let err = client
        .post("token")
        .form(&Nested {
            inner: vec![(1, 2)],
        })
        .send()
        .await
        .unwrap_err();

    assert_eq!((err.kind(), err.attempts()), (ErrorKind::Config, 0));
    assert!(
        err.to_string().contains("form body cannot be serialized"),
        "{err}"
    );
    assert_eq!(received(&server).await, 0);
}

// ---------------------------------------------------------------- per-call basic auth

#[tokio::test]
async fn basic_auth_sends_the_credentials_and_never_prints_them() {
    let server = MockServer::start().await;
    Mock::given(header("authorization", "Basic YWRhOnMzY3IzdA=="))
        .respond_with(ResponseTemplate::new(403))
        .expect(1)
        .mount(&server)
        .await;
    let client = client_for(&server);

    let err = client
        .get("me")
        .basic_auth("ada", Some("s3cr3t"))
        .send()
        .await
        .unwrap_err();

    assert_eq!(err.status(), Some(StatusCode::FORBIDDEN));
    for text in [err.to_string(), format!("{err:?}")] {
        assert!(!text.contains("s3cr3t") && !text.contains("YWRh"), "{text}");
    }
}

#[tokio::test]
async fn basic_auth_without_a_password_sends_the_user_and_a_colon() {
    let server = MockServer::start().await;
    Mock::given(header("authorization", "Basic YWRhOg=="))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    let client = client_for(&server);

    client
        .get("me")
        .basic_auth("ada", None::<&str>)
        .send()
        .await
        .unwrap();
}

// ---------------------------------------------------------------- per-call retry policy

#[tokio::test]
async fn a_per_call_retry_policy_replaces_the_clients() {
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(Sequence::statuses(&[503, 503, 200]))
        .mount(&server)
        .await;
    let client = fast_builder(&server.uri()).no_retry().build().unwrap();

    let resp = client
        .get("x")
        .retry(
            RetryPolicy::exponential()
                .max_attempts(3)
                .initial_backoff(Duration::from_millis(1))
                .jitter(false),
        )
        .send()
        .await
        .unwrap();

    assert_eq!(resp.attempts(), 3);
}

#[tokio::test]
async fn a_per_call_no_retry_policy_makes_one_attempt() {
    let server = answering(ResponseTemplate::new(503)).await;
    let client = client_for(&server);

    let err = client
        .get("x")
        .retry(RetryPolicy::none())
        .send()
        .await
        .unwrap_err();

    assert_eq!(err.attempts(), 1);
    assert_eq!(received(&server).await, 1);
}

#[tokio::test]
async fn a_per_call_retry_policy_of_zero_attempts_is_a_config_error() {
    let server = answering(ResponseTemplate::new(200)).await;
    let client = client_for(&server);

    let err = client
        .get("x")
        .retry(RetryPolicy::exponential().max_attempts(0))
        .send()
        .await
        .unwrap_err();

    assert_eq!((err.kind(), err.attempts()), (ErrorKind::Config, 0));
    assert_eq!(received(&server).await, 0);
}

// ---------------------------------------------------------------- statuses that are answers

#[tokio::test]
async fn get_json_opt_is_none_on_404_and_the_value_on_200() {
    let server = MockServer::start().await;
    Mock::given(path("/users/1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "id": 1 })))
        .mount(&server)
        .await;
    Mock::given(path("/users/2"))
        .respond_with(ResponseTemplate::new(404).set_body_string("no such user"))
        .expect(1)
        .mount(&server)
        .await;
    let client = client_for(&server);

    let found: Option<serde_json::Value> = client.get_json_opt("users/1").await.unwrap();
    let missing: Option<serde_json::Value> = client.get_json_opt("users/2").await.unwrap();

    assert_eq!(found, Some(json!({ "id": 1 })));
    assert_eq!(missing, None);
}

#[tokio::test]
async fn get_json_opt_still_fails_on_other_errors() {
    let server = answering(ResponseTemplate::new(409)).await;
    let client = client_for(&server);

    let err = client
        .get_json_opt::<serde_json::Value>("users/1")
        .await
        .unwrap_err();

    assert_eq!(err.status(), Some(StatusCode::CONFLICT));
}

#[tokio::test]
async fn an_allowed_status_is_an_answer_not_retried_and_not_a_breaker_failure() {
    let server = answering(ResponseTemplate::new(503).set_body_string("maintenance")).await;
    let client = fast_builder(&server.uri())
        .circuit_breaker(CircuitBreakerConfig::default().consecutive_failures(1))
        .build()
        .unwrap();

    let resp = client
        .get("x")
        .allow_status(StatusCode::SERVICE_UNAVAILABLE)
        .send()
        .await
        .unwrap();

    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.text().unwrap(), "maintenance");
    assert_eq!(resp.attempts(), 1);
    assert_eq!(received(&server).await, 1);
    assert_eq!(client.circuit_state(), CircuitState::Closed);
}

#[tokio::test]
async fn allow_status_leaves_other_statuses_errors() {
    let server = answering(ResponseTemplate::new(409)).await;
    let client = client_for(&server);

    let err = client
        .get("x")
        .allow_status(StatusCode::NOT_FOUND)
        .allow_status(StatusCode::GONE)
        .send()
        .await
        .unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Client);
}

// ---------------------------------------------------------------- stats as JSON

#[tokio::test]
async fn client_stats_serialize_to_json_with_their_field_names() {
    let server = answering(ResponseTemplate::new(200)).await;
    let client = client_for(&server);
    client.get("x").send().await.unwrap();

    let stats = serde_json::to_value(client.stats()).unwrap();

    assert_eq!(stats["calls"], 1);
    assert_eq!(stats["succeeded"], 1);
    assert_eq!(stats["attempts"], 1);
    assert_eq!(stats["rejected_circuit_open"], 0);
}

// ---------------------------------------------------------------- errors built for tests

#[tokio::test]
async fn an_error_built_for_a_test_behaves_like_the_clients() {
    let server = answering(
        ResponseTemplate::new(409)
            .set_body_json(json!({ "type": "t", "title": "Order exists", "detail": "d" })),
    )
    .await;
    let real = client_for(&server).post("orders").send().await.unwrap_err();

    let built = Error::builder(ErrorReason::Status)
        .status(StatusCode::CONFLICT)
        .json_body(&json!({ "type": "t", "title": "Order exists", "detail": "d" }))
        .build();

    for err in [&real, &built] {
        assert_eq!(err.kind(), ErrorKind::Client);
        assert_eq!(err.reason(), ErrorReason::Status);
        assert_eq!(err.status(), Some(StatusCode::CONFLICT));
        assert_eq!(err.body_json::<Problem>().unwrap().title, "Order exists");
    }
}

#[test]
fn errors_built_for_tests_follow_the_classification_table() {
    let timeout = Error::builder(ErrorReason::Timeout)
        .timeout_phase(TimeoutPhase::Read)
        .attempts(3)
        .build();
    assert!(timeout.is_retryable() && timeout.is_timeout());
    assert_eq!(
        (timeout.timeout_phase(), timeout.attempts()),
        (Some(TimeoutPhase::Read), 3)
    );

    let connect = Error::builder(ErrorReason::Connect).build();
    assert!(connect.is_connect() && connect.is_retryable());

    let open = Error::builder(ErrorReason::CircuitOpen)
        .retry_after(Duration::from_secs(4))
        .build();
    assert!(open.is_circuit_open());
    assert_eq!(
        (open.kind(), open.retry_after()),
        (ErrorKind::Rejected, Some(Duration::from_secs(4)))
    );

    let busy = Error::builder(ErrorReason::Status)
        .status(StatusCode::TOO_MANY_REQUESTS)
        .header("retry-after", "2")
        .build();
    assert!(busy.is_retryable());
    assert_eq!(busy.retry_after(), Some(Duration::from_secs(2)));
    assert_eq!(
        busy.headers()
            .and_then(|h| h.get("retry-after"))
            .map(HeaderValue::as_bytes),
        Some(&b"2"[..])
    );

    let decode = Error::builder(ErrorReason::Decode)
        .status(StatusCode::OK)
        .build();
    assert_eq!(
        (decode.kind(), decode.status()),
        (ErrorKind::Decode, Some(StatusCode::OK))
    );

    let server_error = Error::builder(ErrorReason::Status).build();
    assert_eq!(
        (server_error.kind(), server_error.status()),
        (ErrorKind::Server, Some(StatusCode::INTERNAL_SERVER_ERROR))
    );
}

// ---------------------------------------------------------------- the request signer

/// Signs `method path body-length tenant` and records each attempt it saw.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// Attempt number, tenant header seen, Authorization seen, body.
type Seen = (u32, bool, bool, Vec<u8>);

impl RequestSigner for Recorder {
    fn sign<'a>(&'a self, req: &'a mut SignRequest<'_>) -> SignFuture<'a> {
        Box::pin(async move {
            tokio::task::yield_now().await;
            let tenant = req.headers().get("x-tenant").cloned();
            let seen = (
                req.attempt(),
                tenant.is_some(),
                req.headers().contains_key("authorization"),
                req.body().unwrap_or_default().to_vec(),
            );
            self.seen.lock().map_err(|_| "poisoned")?.push(seen);
            let text = format!(
                "{} {} {}",
                req.method(),
                req.url().path(),
                req.body().map_or(0, <[u8]>::len)
            );
            req.set_header("x-signature".parse()?, HeaderValue::from_str(&text)?);
            Ok(())
        })
    }
}

#[tokio::test]
async fn the_signer_runs_per_attempt_after_the_hooks_and_sees_every_header_and_the_body() {
    let server = MockServer::start().await;
    Mock::given(header("x-signature", "PUT /orders/7 9"))
        .respond_with(Sequence::statuses(&[503, 200]))
        .expect(2)
        .mount(&server)
        .await;
    let recorder = Recorder::default();
    let client = fast_builder(&server.uri())
        .bearer_auth("t0k")
        .request_hook(|req: &mut HookRequest<'_>| {
            req.set_header(
                "x-tenant".parse().unwrap(),
                HeaderValue::from_static("acme"),
            );
        })
        .signer(recorder.clone())
        .build()
        .unwrap();

    let resp = client
        .put("orders/7")
        .body(r#"{"sku":7}"#)
        .send()
        .await
        .unwrap();

    assert_eq!(resp.attempts(), 2);
    let seen = recorder.seen.lock().unwrap().clone();
    let body = br#"{"sku":7}"#.to_vec();
    assert_eq!(
        seen,
        vec![(1, true, true, body.clone()), (2, true, true, body)]
    );
}

#[tokio::test]
async fn a_function_can_be_a_signer() {
    fn sign<'a>(req: &'a mut SignRequest<'_>) -> SignFuture<'a> {
        Box::pin(async move {
            req.set_header("x-signature".parse()?, HeaderValue::from_static("ok"));
            Ok(())
        })
    }
    let server = MockServer::start().await;
    Mock::given(header("x-signature", "ok"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    let client = fast_builder(&server.uri()).signer(sign).build().unwrap();

    client.get("x").send().await.unwrap();
}

#[tokio::test]
async fn a_failing_signer_rejects_the_call_and_sends_nothing() {
    struct Broken;
    impl RequestSigner for Broken {
        fn sign<'a>(&'a self, _req: &'a mut SignRequest<'_>) -> SignFuture<'a> {
            Box::pin(async { Err("signing key unavailable".into()) })
        }
    }
    let server = answering(ResponseTemplate::new(200)).await;
    let client = fast_builder(&server.uri()).signer(Broken).build().unwrap();

    let err = client.get("x").send().await.unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Rejected);
    assert_eq!(err.reason(), ErrorReason::Signer);
    assert_eq!(err.attempts(), 0);
    assert!(!err.is_retryable());
    let text = err.to_string();
    assert!(text.contains("could not sign the request"), "{text}");
    assert!(text.contains("signing key unavailable"), "{text}");
    assert_eq!(received(&server).await, 0);
}

// ---------------------------------------------------------------- clear messages

#[tokio::test]
async fn a_query_that_cannot_be_serialized_says_so_with_the_method_and_redacted_url() {
    #[derive(Serialize)]
    struct Filter {
        ids: Vec<u32>,
    }
    let server = answering(ResponseTemplate::new(200)).await;
    let base = server.uri().replace("http://", "http://user:pa55word@");
    let client = fast_builder(&format!("{base}/v1/")).build().unwrap();

    let err = client
        .get("orders")
        .query(&Filter { ids: vec![1, 2] })
        .send()
        .await
        .unwrap_err();

    assert_eq!((err.kind(), err.attempts()), (ErrorKind::Config, 0));
    let text = err.to_string();
    assert!(text.starts_with("GET http://"), "{text}");
    assert!(text.contains("/v1/orders: "), "{text}");
    assert!(text.contains("query cannot be serialized: "), "{text}");
    assert!(
        !text.contains("pa55word") && !text.contains("builder error"),
        "{text}"
    );
    assert_eq!(received(&server).await, 0);
}

#[tokio::test]
async fn retries_cut_by_the_breaker_say_so() {
    let server = answering(ResponseTemplate::new(503)).await;
    let client = fast_builder(&server.uri())
        .circuit_breaker(CircuitBreakerConfig::default().consecutive_failures(1))
        .build()
        .unwrap();

    let err = client.get("x").send().await.unwrap_err();

    assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(err.attempts(), 1);
    let text = err.to_string();
    assert!(
        text.contains("3 attempts allowed, 1 made: circuit opened"),
        "{text}"
    );
}

#[tokio::test]
async fn retries_cut_by_the_budget_say_so() {
    let server = answering(ResponseTemplate::new(503)).await;
    let client = fast_builder(&server.uri())
        .no_circuit_breaker()
        .retry(
            RetryPolicy::exponential()
                .initial_backoff(Duration::from_millis(1))
                .jitter(false)
                .budget(RetryBudget::ratio(0.0).min_per_second(0)),
        )
        .build()
        .unwrap();

    let err = client.get("x").send().await.unwrap_err();

    assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(err.attempts(), 1);
    let text = err.to_string();
    assert!(
        text.contains("3 attempts allowed, 1 made: retry budget exhausted"),
        "{text}"
    );
}

#[tokio::test]
async fn retries_ended_by_the_policy_claim_no_cut() {
    let server = answering(ResponseTemplate::new(503)).await;
    let client = fast_builder(&server.uri())
        .no_circuit_breaker()
        .build()
        .unwrap();

    let err = client.get("x").send().await.unwrap_err();

    assert_eq!(err.attempts(), 3);
    assert!(!err.to_string().contains("allowed"), "{err}");
}

#[tokio::test]
async fn query_pairs_are_appended_to_the_paths_own_query_in_order() {
    let server = MockServer::start().await;
    Mock::given(path("/orders"))
        .and(wiremock::matchers::query_param("a", "1"))
        .and(wiremock::matchers::query_param("b", "2"))
        .and(wiremock::matchers::query_param("c", "x y"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    let client = client_for(&server);

    let resp = client
        .get("orders?a=1")
        .query(&[("b", "2")])
        .query(&[("c", "x y")])
        .send()
        .await
        .unwrap();

    assert_eq!(resp.url().query(), Some("a=1&b=2&c=x+y"));
}

#[tokio::test(start_paused = true)]
async fn a_signer_still_running_at_the_deadline_ends_the_call_with_a_total_timeout() {
    struct Stuck;
    impl RequestSigner for Stuck {
        fn sign<'a>(&'a self, _req: &'a mut SignRequest<'_>) -> SignFuture<'a> {
            Box::pin(async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(())
            })
        }
    }
    let client = ApiClient::builder()
        .base_url("http://127.0.0.1:9/")
        .total_timeout(Duration::from_secs(1))
        .signer(Stuck)
        .build()
        .unwrap();

    let err = client.get("x").send().await.unwrap_err();

    assert_eq!(err.timeout_phase(), Some(TimeoutPhase::Total));
    assert_eq!(err.attempts(), 0);
}
