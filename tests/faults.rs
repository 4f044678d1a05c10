//! Misbehaving peers: every way a raw-TCP
//! server can fail ends the call with the documented kind, within the total
//! deadline, retried only when the failure is transient and the method may be
//! repeated, and the client serves normally afterwards.

// Test support: a failed setup step should panic with a message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::faults::{ANNOUNCED_LENGTH, FaultServer, Mode};
use resilient_http::{
    ApiClient, ApiClientBuilder, CircuitBreakerConfig, CircuitState, Error, ErrorKind, TimeoutPhase,
};
use serde::Deserialize;
use tokio::time::Instant;

/// The gap between reads that counts as a stall in these tests.
const READ: Duration = Duration::from_millis(150);
/// One attempt's limit, well above `READ`.
const ATTEMPT: Duration = Duration::from_secs(1);
/// The whole call's limit.
const TOTAL: Duration = Duration::from_secs(3);
/// Slack for scheduling on a busy machine when checking the total deadline.
const MARGIN: Duration = Duration::from_secs(1);
/// Attempts per call in these tests.
const MAX_ATTEMPTS: u32 = 3;
/// A response limit far below what `EndlessChunked` sends.
const MAX_BYTES: usize = 64 * 1024;
/// Redirects followed before giving up.
const MAX_REDIRECTS: usize = 3;

#[derive(Debug, Deserialize, PartialEq)]
struct Health {
    ok: bool,
}

/// Short read timeout, 3 attempts with 1-5 ms backoff, no breaker (it would
/// end retry loops early), small response and redirect limits.
fn builder(server: &FaultServer) -> ApiClientBuilder {
    common::fast_builder(&server.uri())
        .read_timeout(READ)
        .attempt_timeout(ATTEMPT)
        .total_timeout(TOTAL)
        .retry(
            resilient_http::RetryPolicy::exponential()
                .max_attempts(MAX_ATTEMPTS)
                .initial_backoff(Duration::from_millis(1))
                .max_backoff(Duration::from_millis(5))
                .jitter(false),
        )
        .max_response_bytes(MAX_BYTES)
        .max_redirects(MAX_REDIRECTS)
        .no_circuit_breaker()
}

fn client(server: &FaultServer) -> ApiClient {
    builder(server).build().expect("valid test client")
}

/// GETs `health` and returns the error, checking it came within the deadline.
async fn get_fails(client: &ApiClient) -> Error {
    let start = Instant::now();
    let result = client.get("health").send().await;
    let elapsed = start.elapsed();
    let err = result.expect_err("the fault must fail the call");
    assert!(
        elapsed < TOTAL + MARGIN,
        "the call took {elapsed:?}, past the total deadline of {TOTAL:?}: {err:?}"
    );
    err
}

/// POSTs without an idempotency key and returns the error.
async fn post_fails(client: &ApiClient) -> Error {
    let start = Instant::now();
    let result = client.post("orders").body("{\"item\":7}").send().await;
    let elapsed = start.elapsed();
    let err = result.expect_err("the fault must fail the call");
    assert!(elapsed < TOTAL + MARGIN, "took {elapsed:?}: {err:?}");
    err
}

/// Switches the server to `Healthy` and checks the same client gets a 200 JSON answer.
async fn assert_serves_normally(client: &ApiClient, server: &FaultServer) {
    server.set_mode(Mode::Healthy);
    let before = server.requests();
    let health: Health = client
        .get_json("health")
        .await
        .expect("a healthy server is served normally after a fault");
    assert_eq!(health, Health { ok: true });
    assert_eq!(server.requests(), before + 1);
}

#[tokio::test]
async fn a_server_that_accepts_but_never_reads_times_out_in_the_read_phase_and_is_retried() {
    let server = FaultServer::start(Mode::AcceptNeverRead).await;
    let client = client(&server);

    let start = Instant::now();
    let err = get_fails(&client).await;

    assert_eq!(err.kind(), ErrorKind::Retryable, "{err:?}");
    assert_eq!(err.timeout_phase(), Some(TimeoutPhase::Read), "{err:?}");
    assert!(!err.is_connect(), "the connection was accepted: {err:?}");
    assert_eq!(err.attempts(), MAX_ATTEMPTS);
    assert_eq!(server.connections(), MAX_ATTEMPTS as usize);
    assert_eq!(server.requests(), 0);
    assert!(start.elapsed() >= READ * MAX_ATTEMPTS);
    assert_serves_normally(&client, &server).await;
}

#[tokio::test]
async fn a_server_that_reads_but_never_answers_times_out_in_the_read_phase_and_is_retried() {
    let server = FaultServer::start(Mode::ReadNeverAnswer).await;
    let client = client(&server);

    let err = get_fails(&client).await;

    assert_eq!(err.kind(), ErrorKind::Retryable, "{err:?}");
    assert_eq!(err.timeout_phase(), Some(TimeoutPhase::Read), "{err:?}");
    assert_eq!(err.attempts(), MAX_ATTEMPTS);
    assert_eq!(server.requests(), MAX_ATTEMPTS as usize);
    assert_eq!(server.connections(), MAX_ATTEMPTS as usize);
    assert_serves_normally(&client, &server).await;
}

#[tokio::test]
async fn a_silent_server_is_cut_by_the_attempt_timeout_when_it_binds_first() {
    let server = FaultServer::start(Mode::ReadNeverAnswer).await;
    let client = builder(&server)
        .read_timeout(Duration::from_secs(10))
        .attempt_timeout(Duration::from_millis(200))
        .build()
        .unwrap();

    let err = get_fails(&client).await;

    assert_eq!(err.kind(), ErrorKind::Retryable, "{err:?}");
    assert_eq!(err.timeout_phase(), Some(TimeoutPhase::Attempt), "{err:?}");
    assert_eq!(err.attempts(), MAX_ATTEMPTS);
    assert_eq!(server.requests(), MAX_ATTEMPTS as usize);
    assert_serves_normally(&client, &server).await;
}

#[tokio::test]
async fn a_silent_server_is_cut_by_the_total_timeout_when_it_binds_first() {
    let server = FaultServer::start(Mode::AcceptNeverRead).await;
    let total = Duration::from_millis(300);
    let client = builder(&server)
        .read_timeout(Duration::from_secs(10))
        .attempt_timeout(Duration::from_secs(10))
        .total_timeout(total)
        .build()
        .unwrap();

    let start = Instant::now();
    let err = client.get("health").send().await.unwrap_err();
    let elapsed = start.elapsed();

    assert_eq!(err.kind(), ErrorKind::Retryable, "{err:?}");
    assert_eq!(err.timeout_phase(), Some(TimeoutPhase::Total), "{err:?}");
    assert_eq!(err.attempts(), 1, "no time is left for another attempt");
    assert_eq!(server.connections(), 1);
    assert!(elapsed >= total, "{elapsed:?}");
    assert!(elapsed < total + MARGIN, "{elapsed:?}");
    assert_serves_normally(&client, &server).await;
}

#[tokio::test]
async fn a_connection_closed_right_after_accept_is_retryable_and_retried() {
    let server = FaultServer::start(Mode::CloseAfterAccept).await;
    let client = client(&server);

    let err = get_fails(&client).await;

    assert_eq!(err.kind(), ErrorKind::Retryable, "{err:?}");
    assert!(!err.is_timeout(), "{err:?}");
    assert!(!err.is_connect(), "the connection was accepted: {err:?}");
    assert_eq!(err.attempts(), MAX_ATTEMPTS);
    assert_eq!(server.connections(), MAX_ATTEMPTS as usize);
    assert_serves_normally(&client, &server).await;
}

#[tokio::test]
async fn a_reset_in_the_middle_of_the_headers_is_retryable_and_retried() {
    let server = FaultServer::start(Mode::ResetMidHeaders).await;
    let client = client(&server);

    let err = get_fails(&client).await;

    assert_eq!(err.kind(), ErrorKind::Retryable, "{err:?}");
    assert!(!err.is_timeout(), "{err:?}");
    assert!(!err.is_connect(), "{err:?}");
    assert_eq!(err.attempts(), MAX_ATTEMPTS);
    assert_eq!(server.requests(), MAX_ATTEMPTS as usize);
    assert_serves_normally(&client, &server).await;
}

#[tokio::test]
async fn a_body_shorter_than_its_content_length_is_retryable_and_retried() {
    let server = FaultServer::start(Mode::ShortBody).await;
    let client = client(&server);

    let err = get_fails(&client).await;

    assert_eq!(err.kind(), ErrorKind::Retryable, "{err:?}");
    assert!(!err.is_timeout(), "{err:?}");
    assert_eq!(err.status(), None, "a broken 200 is not an error status");
    assert_eq!(err.attempts(), MAX_ATTEMPTS);
    assert_eq!(server.requests(), MAX_ATTEMPTS as usize);
    assert_serves_normally(&client, &server).await;
}

#[tokio::test]
async fn a_body_that_stalls_between_bytes_times_out_in_the_read_phase_and_is_retried() {
    let server = FaultServer::start(Mode::Drip { interval: READ * 3 }).await;
    let client = client(&server);

    let err = get_fails(&client).await;

    assert_eq!(err.kind(), ErrorKind::Retryable, "{err:?}");
    assert_eq!(err.timeout_phase(), Some(TimeoutPhase::Read), "{err:?}");
    assert_eq!(err.attempts(), MAX_ATTEMPTS);
    assert_eq!(server.requests(), MAX_ATTEMPTS as usize);
    assert_serves_normally(&client, &server).await;
}

#[tokio::test]
async fn a_body_that_trickles_within_the_read_timeout_is_cut_by_the_attempt_timeout() {
    // 100 bytes at one per 30 ms take 3 s; each gap is well under the read timeout.
    let interval = Duration::from_millis(30);
    let server = FaultServer::start(Mode::Drip { interval }).await;
    let attempt = Duration::from_millis(300);
    let client = builder(&server)
        .read_timeout(Duration::from_secs(2))
        .attempt_timeout(attempt)
        .build()
        .unwrap();
    assert!(interval * u32::try_from(ANNOUNCED_LENGTH).unwrap() > attempt * 2);

    let err = get_fails(&client).await;

    assert_eq!(err.kind(), ErrorKind::Retryable, "{err:?}");
    assert_eq!(err.timeout_phase(), Some(TimeoutPhase::Attempt), "{err:?}");
    assert_eq!(err.attempts(), MAX_ATTEMPTS);
    assert_serves_normally(&client, &server).await;
}

#[tokio::test]
async fn bytes_that_are_not_http_are_a_server_error_and_not_retried() {
    let server = FaultServer::start(Mode::Garbage).await;
    let client = client(&server);

    let err = get_fails(&client).await;

    assert_eq!(err.kind(), ErrorKind::Server, "{err:?}");
    assert!(!err.is_retryable(), "{err:?}");
    assert!(!err.is_timeout(), "{err:?}");
    assert_eq!(err.status(), None);
    assert_eq!(err.attempts(), 1);
    assert_eq!(server.requests(), 1);
    assert_serves_normally(&client, &server).await;
}

#[tokio::test]
async fn a_header_block_larger_than_the_transport_accepts_is_a_server_error_and_not_retried() {
    let server = FaultServer::start(Mode::HugeHeaders).await;
    let client = client(&server);

    let err = get_fails(&client).await;

    assert_eq!(err.kind(), ErrorKind::Server, "{err:?}");
    assert!(!err.is_timeout(), "{err:?}");
    assert_eq!(err.attempts(), 1);
    assert_eq!(server.requests(), 1);
    assert_serves_normally(&client, &server).await;
}

#[tokio::test]
async fn an_endless_chunked_body_is_a_decode_error_past_max_response_bytes() {
    let server = FaultServer::start(Mode::EndlessChunked).await;
    let client = client(&server);

    let err = get_fails(&client).await;

    assert_eq!(err.kind(), ErrorKind::Decode, "{err:?}");
    assert!(
        !err.is_timeout(),
        "the size limit, not a timer, ends it: {err:?}"
    );
    assert_eq!(err.attempts(), 1);
    assert_eq!(server.requests(), 1);
    // The client hung up instead of reading the rest.
    server.wait_for_open_connections_at_most(0).await;
    assert_serves_normally(&client, &server).await;
}

#[tokio::test]
async fn a_redirect_loop_is_a_client_error_and_not_retried() {
    let server = FaultServer::start(Mode::RedirectLoop).await;
    let client = client(&server);

    let err = get_fails(&client).await;

    assert_eq!(err.kind(), ErrorKind::Client, "{err:?}");
    assert!(!err.is_retryable(), "{err:?}");
    assert_eq!(err.attempts(), 1);
    // The first request and MAX_REDIRECTS followed redirects, then it gives up.
    assert_eq!(server.requests(), MAX_REDIRECTS + 1);
    assert_serves_normally(&client, &server).await;
}

#[tokio::test]
async fn a_2xx_body_that_is_not_json_is_a_decode_error_from_get_json() {
    let server = FaultServer::start(Mode::BadJson).await;
    let client = client(&server);

    let start = Instant::now();
    let err = client.get_json::<Health>("health").await.unwrap_err();

    assert!(start.elapsed() < TOTAL + MARGIN);
    assert_eq!(err.kind(), ErrorKind::Decode, "{err:?}");
    assert_eq!(err.attempts(), 1);
    assert_eq!(server.requests(), 1);
    assert_serves_normally(&client, &server).await;
}

#[tokio::test]
async fn a_post_without_an_idempotency_key_is_not_retried_after_a_reset() {
    let server = FaultServer::start(Mode::ResetMidHeaders).await;
    let client = client(&server);

    let err = post_fails(&client).await;

    assert_eq!(err.kind(), ErrorKind::Retryable, "{err:?}");
    assert_eq!(err.attempts(), 1, "the request may have been processed");
    assert_eq!(server.requests(), 1);
    assert_serves_normally(&client, &server).await;
}

#[tokio::test]
async fn a_post_without_an_idempotency_key_is_not_retried_after_the_connection_closes() {
    let server = FaultServer::start(Mode::CloseAfterAccept).await;
    let client = client(&server);

    let err = post_fails(&client).await;

    assert_eq!(err.kind(), ErrorKind::Retryable, "{err:?}");
    assert!(!err.is_connect(), "{err:?}");
    assert_eq!(err.attempts(), 1, "the request may have been written");
    assert_eq!(server.connections(), 1);
    assert_serves_normally(&client, &server).await;
}

#[tokio::test]
async fn a_post_without_an_idempotency_key_is_not_retried_after_a_short_body() {
    let server = FaultServer::start(Mode::ShortBody).await;
    let client = client(&server);

    let err = post_fails(&client).await;

    assert_eq!(err.kind(), ErrorKind::Retryable, "{err:?}");
    assert_eq!(err.attempts(), 1);
    assert_eq!(server.requests(), 1);
    assert_serves_normally(&client, &server).await;
}

#[tokio::test]
async fn a_post_without_an_idempotency_key_is_not_retried_after_a_read_timeout() {
    let server = FaultServer::start(Mode::ReadNeverAnswer).await;
    let client = client(&server);

    let err = post_fails(&client).await;

    assert_eq!(err.kind(), ErrorKind::Retryable, "{err:?}");
    assert_eq!(err.timeout_phase(), Some(TimeoutPhase::Read), "{err:?}");
    assert_eq!(err.attempts(), 1);
    assert_eq!(server.requests(), 1);
    assert_serves_normally(&client, &server).await;
}

#[tokio::test]
async fn a_post_with_an_idempotency_key_is_retried_after_a_reset() {
    let server = FaultServer::start(Mode::ResetMidHeaders).await;
    let client = client(&server);

    let err = client
        .post("orders")
        .body("{\"item\":7}")
        .idempotency_key("order-7")
        .send()
        .await
        .unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Retryable, "{err:?}");
    assert_eq!(err.attempts(), MAX_ATTEMPTS);
    assert_eq!(server.requests(), MAX_ATTEMPTS as usize);
    assert_serves_normally(&client, &server).await;
}

#[tokio::test]
async fn every_fault_ends_with_its_documented_kind_and_the_same_client_then_serves_normally() {
    let server = FaultServer::start(Mode::Healthy).await;
    let client = builder(&server)
        .retry(resilient_http::RetryPolicy::none())
        .build()
        .unwrap();
    let expected = |mode: Mode| match mode {
        Mode::AcceptNeverRead | Mode::ReadNeverAnswer | Mode::Drip { .. } => {
            (ErrorKind::Retryable, Some(TimeoutPhase::Read))
        }
        Mode::CloseAfterAccept | Mode::ResetMidHeaders | Mode::ShortBody => {
            (ErrorKind::Retryable, None)
        }
        Mode::Garbage | Mode::HugeHeaders => (ErrorKind::Server, None),
        Mode::EndlessChunked | Mode::BadJson => (ErrorKind::Decode, None),
        Mode::RedirectLoop => (ErrorKind::Client, None),
        Mode::Healthy | Mode::Gated => unreachable!("not a fault"),
    };

    for mode in Mode::faults(READ * 3) {
        server.set_mode(mode);
        let start = Instant::now();
        let err = client.get_json::<Health>("health").await.unwrap_err();
        assert!(start.elapsed() < TOTAL + MARGIN, "{mode:?}");
        assert_eq!(
            (err.kind(), err.timeout_phase()),
            expected(mode),
            "{mode:?}: {err:?}"
        );
        assert_eq!(err.attempts(), 1, "{mode:?}");
        assert_serves_normally(&client, &server).await;
    }
}

#[tokio::test]
async fn a_broken_peer_counts_against_the_breaker_but_an_unusable_body_does_not() {
    let breaker = || {
        CircuitBreakerConfig::default()
            .consecutive_failures(1)
            .no_failure_rate()
            .open_duration(Duration::from_secs(30))
    };
    let cases = [
        (Mode::Garbage, CircuitState::Open),
        (Mode::ShortBody, CircuitState::Open),
        (Mode::CloseAfterAccept, CircuitState::Open),
        (Mode::BadJson, CircuitState::Closed),
        (Mode::EndlessChunked, CircuitState::Closed),
        (Mode::RedirectLoop, CircuitState::Closed),
    ];
    for (mode, state) in cases {
        let server = FaultServer::start(mode).await;
        let client = builder(&server)
            .no_retry()
            .circuit_breaker(breaker())
            .build()
            .unwrap();

        client.get_json::<Health>("health").await.unwrap_err();

        assert_eq!(client.circuit_state(), state, "{mode:?}");
    }
}

// ---------------------------------------------------------------- send_stream

/// Reads `stream` to its end or its first error (bounded), returning the
/// bytes read and the error.
async fn read_to_error(stream: &mut resilient_http::ApiStream) -> (usize, Option<Error>) {
    let mut read = 0;
    for _ in 0..10_000 {
        match stream.chunk().await {
            Ok(Some(bytes)) => read += bytes.len(),
            Ok(None) => return (read, None),
            Err(err) => return (read, Some(err)),
        }
    }
    panic!("the stream never ended");
}

#[tokio::test]
async fn a_streamed_body_cut_short_is_reported_to_the_reader_and_not_retried() {
    let server = FaultServer::start(Mode::ShortBody).await;
    let client = client(&server);

    let mut stream = client.get("short").send_stream().await.unwrap();
    let (read, err) = read_to_error(&mut stream).await;

    let err = err.expect("a body short of its Content-Length is an error");
    assert!(read < ANNOUNCED_LENGTH, "read {read} bytes");
    assert_eq!(err.kind(), ErrorKind::Retryable, "{err:?}");
    assert_eq!(err.attempts(), 1, "{err:?}");
    assert!(err.url().is_some_and(|u| u.path() == "/short"), "{err:?}");
    // Nothing is retried once the headers are in: one request reached the server.
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn a_streamed_body_that_stalls_ends_in_a_read_timeout() {
    let server = FaultServer::start(Mode::Drip { interval: READ * 4 }).await;
    let client = client(&server);

    let mut stream = client.get("drip").send_stream().await.unwrap();
    let (read, err) = read_to_error(&mut stream).await;

    let err = err.expect("a stall longer than read_timeout is an error");
    assert!(read < ANNOUNCED_LENGTH, "read {read} bytes");
    assert_eq!(err.kind(), ErrorKind::Retryable, "{err:?}");
    assert_eq!(err.timeout_phase(), Some(TimeoutPhase::Read), "{err:?}");
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn send_stream_retries_failures_before_the_headers_and_reports_the_last() {
    let server = FaultServer::start(Mode::ResetMidHeaders).await;
    let client = client(&server);

    let err = client.get("reset").send_stream().await.unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Retryable, "{err:?}");
    assert_eq!(err.attempts(), MAX_ATTEMPTS, "{err:?}");
    assert_eq!(server.requests(), MAX_ATTEMPTS as usize);
    let stats = client.stats();
    assert_eq!((stats.succeeded, stats.failed), (0, 1), "{stats:?}");
}
