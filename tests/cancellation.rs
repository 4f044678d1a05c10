//! Cancellation: dropping a call's future at any await point (waiting for a
//! concurrency permit, a rate-limit permit, mid-attempt, mid-backoff, as a
//! half-open probe) takes nothing away for good, and the client then serves
//! normally (admission returns guards released in `Drop`).

// Test support: a failed setup step should panic with a message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::future::Future;
use std::time::Duration;

use common::capture_traces;
use common::faults::{FaultServer, Mode};
use resilient_http::{
    ApiClient, ApiClientBuilder, ApiResponse, CircuitBreakerConfig, CircuitState, Error, ErrorKind,
    RateLimit, RetryBudget, RetryPolicy,
};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use wiremock::matchers::{any, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// Long enough that nothing in these tests runs into the total deadline.
const TOTAL: Duration = Duration::from_secs(5);
/// How long a call that is expected to be stuck is given before it is dropped.
const STUCK: Duration = Duration::from_millis(150);
/// The deadline of a call that must be served at once; a leaked permit or
/// probe slot makes it fail instead.
const PROMPT: Duration = Duration::from_secs(2);

fn builder(server: &FaultServer) -> ApiClientBuilder {
    common::fast_builder(&server.uri())
        .read_timeout(TOTAL)
        .attempt_timeout(TOTAL)
        .total_timeout(TOTAL)
}

/// Starts a GET of `path` on its own task.
fn spawn_get(client: &ApiClient, path: &'static str) -> JoinHandle<Result<ApiResponse, Error>> {
    let client = client.clone();
    tokio::spawn(async move { client.get(path).send().await })
}

/// Polls `call` for `STUCK` and drops it, asserting it had not finished.
async fn drop_while_stuck<T: std::fmt::Debug>(call: impl Future<Output = T>) {
    if let Ok(done) = tokio::time::timeout(STUCK, call).await {
        panic!("the call was expected to be waiting, but it finished: {done:?}");
    }
}

/// A GET that must succeed within `PROMPT`.
async fn get_promptly(client: &ApiClient, path: &str) -> ApiResponse {
    let resp = client
        .get(path)
        .timeout(PROMPT)
        .send()
        .await
        .expect("the client serves normally after a dropped call");
    assert!(resp.status().is_success());
    resp
}

/// Waits (bounded) until the base endpoint's breaker reports `state`.
async fn wait_for_circuit(client: &ApiClient, state: CircuitState) {
    for _ in 0..400 {
        if client.circuit_state() == state {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!(
        "the breaker never became {state:?} (is {:?})",
        client.circuit_state()
    );
}

/// A client whose breaker opens on the first failure and half-opens 50 ms later.
fn tripping_client(server: &FaultServer) -> ApiClient {
    builder(server)
        .no_retry()
        .circuit_breaker(
            CircuitBreakerConfig::default()
                .consecutive_failures(1)
                .no_failure_rate()
                .open_duration(Duration::from_millis(50)),
        )
        .build()
        .unwrap()
}

/// Opens the breaker with one failed call, then waits until it is half-open.
async fn trip_and_half_open(client: &ApiClient, server: &FaultServer) {
    server.set_mode(Mode::CloseAfterAccept);
    let err = client.get("trip").send().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Retryable, "{err:?}");
    // Open (or, 50 ms on, half-open already on a slow machine): not closed.
    assert_ne!(client.circuit_state(), CircuitState::Closed);
    wait_for_circuit(client, CircuitState::HalfOpen).await;
}

#[tokio::test]
async fn dropping_a_call_waiting_for_a_concurrency_permit_takes_nothing() {
    let server = FaultServer::start(Mode::Gated).await;
    let client = builder(&server).max_concurrency(1).build().unwrap();
    let first = spawn_get(&client, "first");
    server.wait_for_requests(1).await;

    drop_while_stuck(client.get("second").send()).await;

    assert_eq!(
        server.requests(),
        1,
        "the second call never reached the server"
    );
    server.release(1);
    first
        .await
        .unwrap()
        .expect("the call holding the permit completes");
    server.set_mode(Mode::Healthy);
    let third = get_promptly(&client, "third").await;
    assert_eq!(third.attempts(), 1);
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn dropped_concurrency_waiters_leave_every_permit_for_later_calls() {
    const MAX: usize = 3;
    let server = FaultServer::start(Mode::Gated).await;
    let client = builder(&server).max_concurrency(MAX).build().unwrap();
    let held: Vec<_> = (0..MAX).map(|_| spawn_get(&client, "held")).collect();
    server.wait_for_requests(MAX).await;

    for _ in 0..5 {
        drop_while_stuck(client.get("waiter").send()).await;
    }
    server.release(MAX);
    for call in held {
        call.await.unwrap().unwrap();
    }

    // All MAX permits are back: MAX calls are in flight at once...
    let again: Vec<_> = (0..MAX).map(|_| spawn_get(&client, "again")).collect();
    server.wait_for_requests(2 * MAX).await;
    // ...and the limit still holds for one more.
    drop_while_stuck(client.get("one-too-many").send()).await;
    assert_eq!(server.requests(), 2 * MAX);
    server.release(MAX);
    for call in again {
        call.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn dropping_a_call_waiting_for_a_rate_limit_permit_takes_no_permit() {
    let server = FaultServer::start(Mode::Healthy).await;
    let client = builder(&server)
        .no_circuit_breaker()
        .rate_limit(RateLimit::per_second(1).burst(1))
        .build()
        .unwrap();
    let start = Instant::now();
    get_promptly(&client, "first").await;

    drop_while_stuck(client.get("second").send()).await;

    assert_eq!(server.requests(), 1, "the dropped call was never sent");
    // The next permit frees up 1 s after the first call; had the dropped call
    // taken it, the next free one would be 2 s after. A call whose deadline
    // cannot fit the wait is refused at once and says how long it was.
    let refused = client
        .get("probe")
        .timeout(Duration::from_millis(1))
        .send()
        .await
        .unwrap_err();
    assert!(refused.is_rate_limited(), "{refused:?}");
    let wait = refused.retry_after().unwrap();
    assert!(
        wait <= Duration::from_secs(1),
        "the next permit is {wait:?} away: the dropped call kept one"
    );
    get_promptly(&client, "third").await;
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn dropping_a_call_mid_attempt_gives_its_permit_back_and_closes_its_connection() {
    let server = FaultServer::start(Mode::ReadNeverAnswer).await;
    let client = builder(&server).max_concurrency(1).build().unwrap();
    let mut call = Box::pin(client.get("hangs").send());

    tokio::select! {
        done = &mut call => panic!("the server never answers, yet: {done:?}"),
        () = server.wait_for_requests(1) => {}
    }
    assert_eq!(server.open_connections(), 1);
    drop(call);

    server.wait_for_open_connections_at_most(0).await;
    server.set_mode(Mode::Healthy);
    let resp = get_promptly(&client, "after").await;
    assert_eq!(resp.attempts(), 1);
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn a_call_dropped_mid_attempt_is_not_counted_as_a_breaker_failure() {
    let server = FaultServer::start(Mode::ReadNeverAnswer).await;
    let client = builder(&server)
        .circuit_breaker(
            CircuitBreakerConfig::default()
                .consecutive_failures(1)
                .no_failure_rate()
                .open_duration(Duration::from_secs(30)),
        )
        .build()
        .unwrap();
    let mut call = Box::pin(client.get("hangs").send());

    tokio::select! {
        done = &mut call => panic!("the server never answers, yet: {done:?}"),
        () = server.wait_for_requests(1) => {}
    }
    drop(call);

    assert_eq!(client.circuit_state(), CircuitState::Closed);
    server.set_mode(Mode::Healthy);
    get_promptly(&client, "after").await;
}

#[tokio::test]
async fn dropping_a_call_during_its_backoff_leaves_permits_and_budget_usable() {
    let (captured, guard) = capture_traces(tracing::Level::DEBUG);
    let server = MockServer::start().await;
    Mock::given(path("/warm"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    // A 502: its Retry-After sets this call's backoff without pausing the
    // endpoint for other calls, as a 429 or 503 would (server pushback).
    Mock::given(path("/busy"))
        .respond_with(ResponseTemplate::new(502).insert_header("retry-after", "1"))
        .expect(1)
        .mount(&server)
        .await;
    // A budget with no floor: the one success below deposits exactly one
    // retry, so a retry made later proves the dropped call gave its back.
    let client = common::fast_builder(&server.uri())
        .max_concurrency(1)
        .retry(
            RetryPolicy::exponential()
                .initial_backoff(Duration::from_millis(1))
                .jitter(false)
                .budget(RetryBudget::ratio(1.0).min_per_second(0)),
        )
        .build()
        .unwrap();
    client.get("warm").send().await.unwrap();

    // The 502 comes back at once; the call withdraws the retry and sleeps its
    // 1 s Retry-After. It is dropped once it says it is retrying.
    let mut busy = Box::pin(client.get("busy").send());
    for _ in 0..1000 {
        tokio::select! {
            done = &mut busy => panic!("the call should be in its backoff: {done:?}"),
            () = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
        if captured.text().contains("retrying") {
            break;
        }
    }
    assert!(captured.text().contains("retrying"), "{}", captured.text());
    drop(busy);
    drop(guard);

    assert_eq!(
        common::received(&server).await,
        2,
        "dropped before its retry"
    );
    let sequence = common::Sequence::new([
        ResponseTemplate::new(503),
        ResponseTemplate::new(200).set_body_string("ok"),
    ]);
    Mock::given(path("/again"))
        .respond_with(sequence.clone())
        .mount(&server)
        .await;
    let start = Instant::now();
    let resp = client
        .get("again")
        .timeout(PROMPT)
        .send()
        .await
        .expect("the permit is free and the budget has its retry back");
    assert_eq!(resp.attempts(), 2);
    assert_eq!(sequence.served(), 2);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "no wait behind the dropped call"
    );
    assert_eq!(resp.text().unwrap(), "ok");
}

#[tokio::test]
async fn a_budget_without_a_floor_refuses_a_retry_it_has_no_token_for() {
    let server = MockServer::start().await;
    let sequence = common::Sequence::statuses(&[503, 200]);
    Mock::given(any())
        .respond_with(sequence.clone())
        .mount(&server)
        .await;
    let client = common::fast_builder(&server.uri())
        .retry(
            RetryPolicy::exponential()
                .initial_backoff(Duration::from_millis(1))
                .budget(RetryBudget::ratio(1.0).min_per_second(0)),
        )
        .build()
        .unwrap();

    let err = client.get("x").send().await.unwrap_err();

    // The control for the test above: without the refunded token, no retry.
    assert_eq!(err.attempts(), 1, "{err}");
    assert_eq!(sequence.served(), 1);
}

#[tokio::test]
async fn dropping_a_half_open_probe_lets_the_next_call_probe() {
    let server = FaultServer::start(Mode::Healthy).await;
    let client = tripping_client(&server);
    trip_and_half_open(&client, &server).await;
    server.set_mode(Mode::ReadNeverAnswer);
    let before = server.requests();
    let mut probe = Box::pin(client.get("probe").send());

    tokio::select! {
        done = &mut probe => panic!("the server never answers, yet: {done:?}"),
        () = server.wait_for_requests(before + 1) => {}
    }
    // The probe holds the only slot: another call is refused meanwhile.
    let refused = client.get("refused").send().await.unwrap_err();
    assert!(refused.is_circuit_open(), "{refused:?}");
    assert_eq!(refused.attempts(), 0);
    drop(probe);

    assert_eq!(client.circuit_state(), CircuitState::HalfOpen);
    server.set_mode(Mode::Healthy);
    let resp = get_promptly(&client, "next").await;
    assert_eq!(resp.attempts(), 1);
    assert_eq!(client.circuit_state(), CircuitState::Closed);
}

#[tokio::test]
async fn dropping_a_probe_waiting_for_a_rate_limit_permit_gives_its_slot_back() {
    let server = FaultServer::start(Mode::Healthy).await;
    let client = builder(&server)
        .no_retry()
        .rate_limit(RateLimit::per_second(1).burst(1))
        .circuit_breaker(
            CircuitBreakerConfig::default()
                .consecutive_failures(1)
                .no_failure_rate()
                .open_duration(Duration::from_millis(50)),
        )
        .build()
        .unwrap();
    // The tripping call takes the only rate-limit permit of this second.
    trip_and_half_open(&client, &server).await;
    let requests = server.requests();
    server.set_mode(Mode::Healthy);

    // It waits for the next rate-limit permit (client.rs asks the breaker first,
    // so it holds the probe slot meanwhile) and is dropped while waiting.
    drop_while_stuck(client.get("probe").send()).await;

    assert_eq!(
        server.requests(),
        requests,
        "the dropped probe was never sent"
    );
    assert_eq!(client.circuit_state(), CircuitState::HalfOpen);
    let resp = get_promptly(&client, "next").await;
    assert_eq!(resp.attempts(), 1);
    assert_eq!(client.circuit_state(), CircuitState::Closed);
}
