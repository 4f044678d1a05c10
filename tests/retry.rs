//! Retry engine: what is retried, how long it waits, and what it costs the server.
// Helpers outside #[test] fns panic on a failed setup step, like the tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Sequence, capture_traces, fast_builder, received};
use resilient_http::{ApiClient, ErrorKind, RetryBudget, RetryPolicy, StatusCode};
use wiremock::matchers::{any, header, method};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// Fast retries, no breaker (so only the retry layer decides).
fn client(server: &MockServer) -> ApiClient {
    fast_builder(&server.uri())
        .no_circuit_breaker()
        .build()
        .unwrap()
}

async fn serve(server: &MockServer, seq: &Sequence) {
    Mock::given(any())
        .respond_with(seq.clone())
        .mount(server)
        .await;
}

#[tokio::test]
async fn retries_503_then_succeeds() {
    let server = MockServer::start().await;
    let seq = Sequence::statuses(&[503, 503, 200]);
    serve(&server, &seq).await;

    let resp = client(&server).get("x").send().await.unwrap();

    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.attempts(), 3);
    assert_eq!(received(&server).await, 3);
}

#[tokio::test]
async fn retries_every_retryable_status() {
    for code in [408, 429, 502, 503, 504] {
        let server = MockServer::start().await;
        serve(&server, &Sequence::statuses(&[code, 200])).await;

        let resp = client(&server).get("x").send().await.unwrap();

        assert_eq!(resp.attempts(), 2, "{code}");
    }
}

#[tokio::test]
async fn does_not_retry_500_by_default() {
    let server = MockServer::start().await;
    serve(&server, &Sequence::statuses(&[500, 200])).await;

    let err = client(&server).get("x").send().await.unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Server);
    assert_eq!(err.attempts(), 1);
    assert_eq!(received(&server).await, 1);
}

#[tokio::test]
async fn retries_500_when_server_errors_are_retryable() {
    let server = MockServer::start().await;
    serve(&server, &Sequence::statuses(&[500, 500, 200])).await;
    let client = fast_builder(&server.uri())
        .no_circuit_breaker()
        .retry(
            RetryPolicy::exponential()
                .initial_backoff(Duration::from_millis(1))
                .retry_server_errors(true),
        )
        .build()
        .unwrap();

    let resp = client.get("x").send().await.unwrap();

    assert_eq!(resp.attempts(), 3);
}

#[tokio::test]
async fn never_retries_client_errors() {
    for code in [400, 401, 403, 404, 409, 422] {
        let server = MockServer::start().await;
        serve(&server, &Sequence::statuses(&[code, 200])).await;

        let err = client(&server).get("x").send().await.unwrap_err();

        assert_eq!(err.kind(), ErrorKind::Client, "{code}");
        assert_eq!(err.attempts(), 1, "{code}");
        assert_eq!(received(&server).await, 1, "{code}");
    }
}

#[tokio::test]
async fn sends_a_post_once_on_503() {
    let server = MockServer::start().await;
    serve(&server, &Sequence::statuses(&[503, 200])).await;

    let err = client(&server)
        .post("payments")
        .json(&serde_json::json!({"amount": 7}))
        .send()
        .await
        .unwrap_err();

    assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(err.attempts(), 1);
    assert_eq!(received(&server).await, 1);
}

#[tokio::test]
async fn a_post_with_an_idempotency_key_header_is_retried_too() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(header("idempotency-key", "pay-8"))
        .respond_with(Sequence::statuses(&[503, 201]))
        .expect(2)
        .mount(&server)
        .await;

    let resp = client(&server)
        .post("payments")
        .header(resilient_http::IDEMPOTENCY_KEY, "pay-8")
        .send()
        .await
        .unwrap();

    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.attempts(), 2);
}

#[tokio::test]
async fn a_key_or_credentials_set_twice_are_sent_once() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201))
        .mount(&server)
        .await;

    client(&server)
        .post("payments")
        .idempotency_key("default-uuid")
        .idempotency_key("pay-9")
        .bearer_auth("t")
        .basic_auth("ada", Some("pw"))
        .send()
        .await
        .unwrap();

    let sent = &server.received_requests().await.unwrap()[0];
    let values = |name: &str| -> Vec<String> {
        sent.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(values("idempotency-key"), ["pay-9"]);
    assert_eq!(values("authorization"), ["Basic YWRhOnB3"]);
}

#[tokio::test]
async fn retries_a_post_with_an_idempotency_key_sending_the_key_every_time() {
    let server = MockServer::start().await;
    let seq = Sequence::statuses(&[503, 503, 201]);
    Mock::given(method("POST"))
        .and(header("idempotency-key", "pay-7"))
        .respond_with(seq.clone())
        .expect(3)
        .mount(&server)
        .await;

    let resp = client(&server)
        .post("payments")
        .json(&serde_json::json!({"amount": 7}))
        .idempotency_key("pay-7")
        .send()
        .await
        .unwrap();

    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.attempts(), 3);
    let bodies: Vec<_> = server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.body)
        .collect();
    assert!(
        bodies.iter().all(|b| b == br#"{"amount":7}"#),
        "the body is replayed"
    );
}

#[tokio::test]
async fn retries_a_post_marked_idempotent() {
    let server = MockServer::start().await;
    serve(&server, &Sequence::statuses(&[503, 200])).await;

    let resp = client(&server)
        .post("x")
        .idempotent(true)
        .send()
        .await
        .unwrap();

    assert_eq!(resp.attempts(), 2);
}

#[tokio::test]
async fn retries_put_and_delete() {
    for method in [resilient_http::Method::PUT, resilient_http::Method::DELETE] {
        let server = MockServer::start().await;
        serve(&server, &Sequence::statuses(&[503, 204])).await;

        let resp = client(&server)
            .request(method.clone(), "x")
            .send()
            .await
            .unwrap();

        assert_eq!(resp.attempts(), 2, "{method}");
    }
}

#[tokio::test]
async fn a_delete_opted_out_of_idempotency_is_sent_once() {
    let server = MockServer::start().await;
    serve(&server, &Sequence::statuses(&[503, 204])).await;

    let err = client(&server)
        .delete("users/42")
        .idempotent(false)
        .send()
        .await
        .unwrap_err();

    assert_eq!(err.attempts(), 1);
    assert_eq!(received(&server).await, 1);
}

#[tokio::test]
async fn honors_retry_after_seconds() {
    let server = MockServer::start().await;
    let seq = Sequence::new([
        ResponseTemplate::new(503).insert_header("retry-after", "1"),
        ResponseTemplate::new(200),
    ]);
    serve(&server, &seq).await;
    let start = Instant::now();

    let resp = client(&server).get("x").send().await.unwrap();

    assert_eq!(resp.attempts(), 2);
    assert!(
        start.elapsed() >= Duration::from_millis(950),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn honors_retry_after_as_an_http_date() {
    let server = MockServer::start().await;
    let when = httpdate_in(Duration::from_secs(2));
    let seq = Sequence::new([
        ResponseTemplate::new(429).insert_header("retry-after", when.as_str()),
        ResponseTemplate::new(200),
    ]);
    serve(&server, &seq).await;
    let start = Instant::now();

    let resp = client(&server).get("x").send().await.unwrap();

    assert_eq!(resp.attempts(), 2);
    // HTTP dates have one-second resolution: 2 s ahead is at least 1 s away.
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
}

fn httpdate_in(d: Duration) -> String {
    httpdate::fmt_http_date(std::time::SystemTime::now() + d)
}

#[tokio::test]
async fn a_retry_after_above_the_cap_returns_at_once() {
    let server = MockServer::start().await;
    serve(
        &server,
        &Sequence::new([ResponseTemplate::new(503).insert_header("retry-after", "120")]),
    )
    .await;
    let start = Instant::now();

    let err = client(&server).get("x").send().await.unwrap_err();

    assert!(start.elapsed() < Duration::from_secs(1));
    assert_eq!(err.attempts(), 1);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(120)));
    assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
}

#[tokio::test]
async fn makes_exactly_max_attempts() {
    let server = MockServer::start().await;
    serve(&server, &Sequence::statuses(&[503])).await;
    let client = fast_builder(&server.uri())
        .no_circuit_breaker()
        .retry(
            RetryPolicy::exponential()
                .max_attempts(5)
                .initial_backoff(Duration::from_millis(1)),
        )
        .build()
        .unwrap();

    let err = client.get("x").send().await.unwrap_err();

    assert_eq!(err.attempts(), 5);
    assert_eq!(err.kind(), ErrorKind::Retryable);
    assert_eq!(received(&server).await, 5);
}

#[tokio::test]
async fn no_retry_makes_one_attempt() {
    let server = MockServer::start().await;
    serve(&server, &Sequence::statuses(&[503])).await;
    let client = fast_builder(&server.uri()).no_retry().build().unwrap();

    let err = client.get("x").send().await.unwrap_err();

    assert_eq!(err.attempts(), 1);
    assert_eq!(received(&server).await, 1);
}

#[tokio::test]
async fn the_total_deadline_bounds_the_whole_loop() {
    const TOTAL: Duration = Duration::from_secs(3);
    let server = MockServer::start().await;
    serve(&server, &Sequence::statuses(&[503])).await;
    let client = fast_builder(&server.uri())
        .no_circuit_breaker()
        .attempt_timeout(TOTAL)
        .total_timeout(TOTAL)
        .retry(
            RetryPolicy::exponential()
                .max_attempts(100)
                .initial_backoff(Duration::from_millis(100))
                .max_backoff(Duration::from_secs(10))
                .jitter(false)
                .budget(RetryBudget::unlimited()),
        )
        .build()
        .unwrap();
    let start = Instant::now();

    let err = client.get("x").send().await.unwrap_err();

    // 100 + 200 + 400 + 800 ms of backoff: the fifth attempt starts at
    // 1.5 s, 1.5 s before the deadline (a wide margin for a loaded
    // machine's slow attempts). The next backoff, 1600 ms, would end past
    // the deadline however fast the attempts were: no sixth attempt, and
    // the loop ends with the fifth answer instead of sleeping into it.
    assert!(
        start.elapsed() < TOTAL + Duration::from_millis(400),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(err.attempts(), 5);
    assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(received(&server).await, 5);
}

#[tokio::test]
async fn retries_a_post_whose_connection_was_refused() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let client = fast_builder(&format!("http://127.0.0.1:{port}/"))
        .no_circuit_breaker()
        .build()
        .unwrap();

    let err = client.post("payments").send().await.unwrap_err();

    assert!(err.is_connect());
    assert_eq!(err.kind(), ErrorKind::Retryable);
    assert_eq!(
        err.attempts(),
        3,
        "nothing reached the server: safe to resend"
    );
}

#[tokio::test]
async fn a_refused_budget_returns_the_last_real_error() {
    let server = MockServer::start().await;
    serve(&server, &Sequence::statuses(&[503])).await;
    let client = fast_builder(&server.uri())
        .no_circuit_breaker()
        .retry(
            RetryPolicy::exponential()
                .initial_backoff(Duration::from_millis(1))
                .budget(RetryBudget::ratio(0.2).min_per_second(0)),
        )
        .build()
        .unwrap();

    let err = client.get("x").send().await.unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Retryable);
    assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(err.attempts(), 1);
}

#[tokio::test]
async fn successes_earn_retries_for_later_failures() {
    let server = MockServer::start().await;
    // 10 successes earn 2 retries at ratio 0.2; then the server fails for good.
    let mut codes = vec![200; 10];
    codes.push(503);
    serve(&server, &Sequence::statuses(&codes)).await;
    let client = fast_builder(&server.uri())
        .no_circuit_breaker()
        .retry(
            RetryPolicy::exponential()
                .max_attempts(10)
                .initial_backoff(Duration::from_millis(1))
                .budget(RetryBudget::ratio(0.2).min_per_second(0)),
        )
        .build()
        .unwrap();
    for _ in 0..10 {
        client.get("x").send().await.unwrap();
    }

    let err = client.clone().get("x").send().await.unwrap_err();

    assert_eq!(
        err.attempts(),
        3,
        "the first attempt and the 2 earned retries"
    );
}

/// Runs `calls` GETs over `tasks` concurrent tasks sharing one client.
async fn run_calls(client: &ApiClient, calls: usize, tasks: usize) -> usize {
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let client = client.clone();
        let n = calls / tasks + usize::from(t < calls % tasks);
        set.spawn(async move {
            let mut ok = 0;
            for _ in 0..n {
                ok += usize::from(client.get("x").send().await.is_ok());
            }
            ok
        });
    }
    let mut ok = 0;
    while let Some(n) = set.join_next().await {
        ok += n.unwrap();
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_costs_at_most_1_1_requests_per_call_with_the_default_budget() {
    let server = MockServer::start().await;
    serve(&server, &Sequence::statuses(&[503])).await;
    let client = fast_builder(&server.uri())
        .no_circuit_breaker()
        .retry(
            RetryPolicy::exponential()
                .initial_backoff(Duration::from_millis(1))
                .max_backoff(Duration::from_millis(1)),
        )
        .build()
        .unwrap();
    let calls = 2000;

    let ok = run_calls(&client, calls, 8).await;

    let requests = received(&server).await;
    assert_eq!(ok, 0);
    assert!(requests >= calls, "every call made its first attempt");
    assert!(
        requests * 10 <= calls * 11,
        "{requests} requests for {calls} calls"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlimited_budget_retries_every_failed_call() {
    let server = MockServer::start().await;
    serve(&server, &Sequence::statuses(&[503])).await;
    let client = fast_builder(&server.uri())
        .no_circuit_breaker()
        .retry(
            RetryPolicy::exponential()
                .initial_backoff(Duration::from_millis(1))
                .max_backoff(Duration::from_millis(1))
                .budget(RetryBudget::unlimited()),
        )
        .build()
        .unwrap();
    let calls = 300;

    run_calls(&client, calls, 4).await;

    assert_eq!(received(&server).await, calls * 3);
}

#[tokio::test]
async fn each_retry_is_traced_and_the_span_counts_resends() {
    let (logs, guard) = capture_traces(tracing::Level::DEBUG);
    let server = MockServer::start().await;
    serve(&server, &Sequence::statuses(&[503, 200])).await;
    let client = client(&server);

    client.get("x").send().await.unwrap();
    drop(guard);

    let text = logs.text();
    let retry = text
        .lines()
        .find(|l| l.contains("retrying"))
        .unwrap_or_else(|| panic!("no retry event in:\n{text}"));
    assert!(retry.contains("attempt=1"), "{retry}");
    assert!(retry.contains("delay_ms="), "{retry}");
    assert!(retry.contains("reason=\"503\""), "{retry}");
    let done = text
        .lines()
        .find(|l| l.contains("attempt succeeded"))
        .unwrap_or_else(|| panic!("no success event in:\n{text}"));
    for field in [
        "http.client.request",
        "http.request.method=GET",
        "url.full=",
        "server.address=\"127.0.0.1\"",
        "server.port=",
        "http.response.status_code=200",
        "http.request.resend_count=1",
    ] {
        assert!(done.contains(field), "{field} missing in {done}");
    }
}

/// A signer that fails the second time it signs, and only then.
struct FailsSecond(std::sync::atomic::AtomicUsize);

impl resilient_http::RequestSigner for FailsSecond {
    fn sign<'a>(
        &'a self,
        _req: &'a mut resilient_http::SignRequest<'_>,
    ) -> resilient_http::SignFuture<'a> {
        let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        Box::pin(async move {
            if n == 2 {
                Err("the key store is sealed".into())
            } else {
                Ok(())
            }
        })
    }
}

#[tokio::test]
async fn a_retry_that_is_never_sent_gives_its_budget_back() {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    // One retry in the budget's window.
    let policy = RetryPolicy::exponential()
        .max_attempts(2)
        .initial_backoff(Duration::from_millis(1))
        .max_backoff(Duration::from_millis(1))
        .jitter(false)
        .budget(
            RetryBudget::ratio(0.0)
                .min_per_second(1)
                .window(Duration::from_secs(1)),
        );
    let client = fast_builder(&server.uri())
        .retry(policy)
        .signer(FailsSecond(std::sync::atomic::AtomicUsize::new(0)))
        .build()
        .unwrap();

    // Its retry takes the budget, then its signer fails: nothing is sent.
    let first = client.get("x").send().await.unwrap_err();
    let second = client.get("x").send().await.unwrap_err();

    assert_eq!(first.kind(), ErrorKind::Rejected, "{first:?}");
    assert_eq!(first.attempts(), 1);
    assert_eq!(second.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(second.attempts(), 2, "the budget had its retry back");
    assert_eq!(received(&server).await, 3);
}
