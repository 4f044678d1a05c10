//! Limits: the rate limit and the concurrency bulkhead, inside the deadline.
// Helpers outside #[test] fns panic on a failed setup step, like the tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Sequence, capture_traces, fast_builder, read_request_head, received};
use resilient_http::{AdaptiveConcurrency, ApiClient, ErrorKind, RateLimit};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, ResponseTemplate};

/// A server that answers every request after `delay` and records the most
/// requests it ever had in flight at once.
struct InFlightServer {
    url: String,
    peak: Arc<AtomicUsize>,
    served: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for InFlightServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl InFlightServer {
    async fn start(delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let now = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let served = Arc::new(AtomicUsize::new(0));
        let (n, p, s) = (now.clone(), peak.clone(), served.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let (n, p, s) = (n.clone(), p.clone(), s.clone());
                tokio::spawn(async move {
                    // One request per connection: read the head, answer, close.
                    if !read_request_head(&mut sock).await {
                        return;
                    }
                    let inflight = n.fetch_add(1, Ordering::SeqCst) + 1;
                    p.fetch_max(inflight, Ordering::SeqCst);
                    tokio::time::sleep(delay).await;
                    n.fetch_sub(1, Ordering::SeqCst);
                    s.fetch_add(1, Ordering::SeqCst);
                    let _ = sock
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                });
            }
        });
        Self {
            url,
            peak,
            served,
            task,
        }
    }
}

async fn run_concurrently(client: &ApiClient, calls: usize) -> Vec<resilient_http::Result<u32>> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..calls {
        let client = client.clone();
        set.spawn(async move { client.get("x").send().await.map(|r| r.attempts()) });
    }
    let mut results = Vec::new();
    while let Some(r) = set.join_next().await {
        results.push(r.unwrap());
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_has_more_than_max_concurrency_requests_in_flight() {
    let server = InFlightServer::start(Duration::from_millis(30)).await;
    let client = fast_builder(&server.url)
        .max_concurrency(3)
        .build()
        .unwrap();

    let results = run_concurrently(&client, 24).await;

    assert!(results.iter().all(Result::is_ok));
    assert_eq!(server.served.load(Ordering::SeqCst), 24);
    let peak = server.peak.load(Ordering::SeqCst);
    assert!(peak <= 3, "peak in flight {peak}");
    assert!(peak >= 2, "calls did run concurrently (peak {peak})");
}

#[tokio::test]
async fn the_rate_limit_spaces_calls() {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let client = fast_builder(&server.uri())
        .rate_limit(RateLimit::per_second(20).burst(1))
        .build()
        .unwrap();
    let start = Instant::now();

    for _ in 0..6 {
        client.get("x").send().await.unwrap();
    }

    // One permit at once, then one per 50 ms: at least 250 ms for 6 calls.
    assert!(
        start.elapsed() >= Duration::from_millis(230),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn the_burst_passes_at_once() {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let client = fast_builder(&server.uri())
        .rate_limit(RateLimit::per_minute(1).burst(5).fail_fast())
        .build()
        .unwrap();

    for _ in 0..5 {
        client.get("x").send().await.unwrap();
    }
    let err = client.get("x").send().await.unwrap_err();

    assert!(err.is_rate_limited());
    assert_eq!(received(&server).await, 5);
}

#[tokio::test]
async fn fail_fast_rejects_at_once_with_when_to_retry() {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let client = fast_builder(&server.uri())
        .rate_limit(RateLimit::per_second(1).burst(1).fail_fast())
        .build()
        .unwrap();
    client.get("x").send().await.unwrap();
    // From here on no I/O is expected: a paused clock shows any wait exactly.
    tokio::time::pause();
    let start = tokio::time::Instant::now();

    let err = client.get("x").send().await.unwrap_err();

    assert_eq!(start.elapsed(), Duration::ZERO, "fail_fast never waits");
    assert_eq!(err.kind(), ErrorKind::Rejected);
    assert!(err.is_rate_limited());
    assert!(!err.is_circuit_open() && !err.is_concurrency_limited());
    assert_eq!(err.attempts(), 0);
    let wait = err.retry_after().unwrap();
    assert!(
        wait > Duration::from_millis(500) && wait <= Duration::from_secs(1),
        "{wait:?}"
    );
    assert_eq!(received(&server).await, 1);
}

#[tokio::test]
async fn a_rate_limit_wait_longer_than_the_deadline_fails_at_once() {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let client = fast_builder(&server.uri())
        .rate_limit(RateLimit::per_minute(1).burst(1))
        .total_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    client.get("x").send().await.unwrap();
    // From here on no I/O is expected: a paused clock shows any wait exactly.
    tokio::time::pause();
    let start = tokio::time::Instant::now();

    let err = client.get("x").send().await.unwrap_err();

    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "failed at once, not at the deadline"
    );
    assert!(err.is_rate_limited());
    assert_eq!(err.kind(), ErrorKind::Rejected);
}

#[tokio::test]
async fn a_concurrency_wait_ends_at_the_deadline() {
    // The first call holds the only permit for 1.5 s (under the 2 s attempt
    // timeout), far past the second call's 200 ms deadline.
    let server = InFlightServer::start(Duration::from_millis(1500)).await;
    let client = fast_builder(&server.url)
        .max_concurrency(1)
        .build()
        .unwrap();
    let slow = tokio::spawn({
        let client = client.clone();
        async move { client.get("x").send().await }
    });
    // Let the first call take the permit: wait until the server sees it.
    let waited = Instant::now();
    while server.peak.load(Ordering::SeqCst) == 0 {
        assert!(
            waited.elapsed() < Duration::from_secs(2),
            "first call never arrived"
        );
        tokio::task::yield_now().await;
    }
    let start = Instant::now();

    let err = client
        .get("x")
        .timeout(Duration::from_millis(200))
        .send()
        .await
        .unwrap_err();

    let elapsed = start.elapsed();
    assert!(err.is_concurrency_limited());
    assert_eq!(err.kind(), ErrorKind::Rejected);
    assert_eq!(err.attempts(), 0);
    assert!(elapsed >= Duration::from_millis(180), "{elapsed:?}");
    // It gave up at its deadline, not when the permit came free.
    assert!(!slow.is_finished(), "the first call still holds the permit");
    slow.await.unwrap().unwrap();
    client.get("x").send().await.unwrap();
}

#[tokio::test]
async fn retries_take_rate_limit_permits_too() {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(Sequence::statuses(&[503, 503, 200]))
        .mount(&server)
        .await;
    let client = fast_builder(&server.uri())
        .no_circuit_breaker()
        .rate_limit(RateLimit::per_second(10).burst(1))
        .build()
        .unwrap();
    let start = Instant::now();

    let resp = client.get("x").send().await.unwrap();

    assert_eq!(resp.attempts(), 3);
    // Three attempts, one permit per 100 ms: at least 200 ms.
    assert!(
        start.elapsed() >= Duration::from_millis(180),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn limits_are_shared_by_clones() {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let client = fast_builder(&server.uri())
        .rate_limit(RateLimit::per_minute(1).burst(1).fail_fast())
        .build()
        .unwrap();
    client.clone().get("x").send().await.unwrap();

    let err = client.clone().get("x").send().await.unwrap_err();

    assert!(err.is_rate_limited());
}

#[tokio::test]
async fn waits_for_limits_are_traced_with_their_duration() {
    let (logs, _guard) = capture_traces(tracing::Level::DEBUG);
    let server = InFlightServer::start(Duration::from_millis(1)).await;
    let client = fast_builder(&server.url)
        .rate_limit(RateLimit::per_second(10).burst(1))
        .build()
        .unwrap();

    client.get("x").send().await.unwrap();
    client.get("x").send().await.unwrap();

    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("waited for a permit"))
        .unwrap_or_else(|| panic!("no limit event in:\n{text}"));
    assert!(line.contains(r#"limit="rate""#), "{line}");
    assert!(line.contains("wait_ms="), "{line}");
    assert!(
        line.contains("limit.wait_ms="),
        "the span records it: {line}"
    );
}

#[tokio::test]
async fn a_streamed_response_holds_its_concurrency_permit_until_dropped() {
    let server = InFlightServer::start(Duration::from_millis(1)).await;
    let client = fast_builder(&server.url)
        .max_concurrency(1)
        .build()
        .unwrap();
    let stream = client.get("x").send_stream().await.unwrap();

    let err = client
        .get("x")
        .timeout(Duration::from_millis(150))
        .send()
        .await
        .unwrap_err();
    drop(stream);
    let after = client.get("x").send().await;

    assert!(err.is_concurrency_limited());
    assert!(after.is_ok());
}

#[tokio::test]
async fn a_streamed_response_read_to_its_end_gives_its_permit_back() {
    let server = InFlightServer::start(Duration::from_millis(1)).await;
    let client = fast_builder(&server.url)
        .max_concurrency(1)
        .build()
        .unwrap();
    let mut stream = client.get("x").send_stream().await.unwrap();
    while stream.chunk().await.unwrap().is_some() {}

    let next = client
        .get("x")
        .timeout(Duration::from_millis(500))
        .send()
        .await;

    assert!(next.is_ok(), "{next:?}");
    drop(stream);
}

// ---------------------------------------------------------------- the adaptive limit
//
// On a paused clock, against a server in the test's runtime: its delays are
// on the same clock.

/// A keep-alive server on 127.0.0.1: `/busy` gets 503 at once, `/slow` 200
/// after 1 s, `/hang` 200 after a minute, anything else 200 after 10 ms.
async fn capacity_server() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        // Bounded: a test opens at most a few hundred connections.
        for _ in 0..1000 {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                while let Some(head) = common::read_head(&mut sock).await {
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let (delay, status) = match path.as_str() {
                        "/busy" => (0, 503),
                        "/slow" => (1_000, 200),
                        "/hang" => (60_000, 200),
                        _ => (10, 200),
                    };
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\n\r\nok");
                    if sock.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, task)
}

fn adaptive_client(url: &str, limit: AdaptiveConcurrency) -> ApiClient {
    ApiClient::builder()
        .base_url(url)
        .no_retry()
        .no_circuit_breaker()
        .total_timeout(Duration::from_secs(30))
        .adaptive_concurrency(limit)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_adaptive_limit_falls_on_503s_and_rises_while_answers_stay_fast() {
    let (url, server) = capacity_server().await;
    let client = adaptive_client(
        &url,
        AdaptiveConcurrency::default()
            .initial(20)
            .floor(4)
            .ceiling(64),
    );
    assert_eq!(client.concurrency_limit(), Some(20));

    // Each 503 cuts the limit by a tenth, down to the floor.
    client.get("busy").send().await.unwrap_err();
    assert_eq!(client.concurrency_limit(), Some(18));
    for _ in 0..30 {
        client.get("busy").send().await.unwrap_err();
    }
    assert_eq!(client.concurrency_limit(), Some(4));

    // Twice the limit at once, answered as fast as ever: the limit grows.
    for _ in 0..20 {
        let limit = client.concurrency_limit().unwrap();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..2 * limit {
            let client = client.clone();
            set.spawn(async move { client.get("ok").send().await.is_ok() });
        }
        while let Some(ok) = set.join_next().await {
            assert!(ok.unwrap());
        }
    }
    let grown = client.concurrency_limit().unwrap();
    assert!(grown >= 8, "{grown}");
    assert!(grown <= 64);
    server.abort();
}

#[tokio::test(start_paused = true)]
async fn a_callers_own_short_deadline_does_not_cut_the_adaptive_limit_but_a_hang_does() {
    let (url, server) = capacity_server().await;
    let client = adaptive_client(&url, AdaptiveConcurrency::default().initial(20));
    // The usual answer time: 1 s.
    for _ in 0..10 {
        client.get("slow").send().await.unwrap();
    }
    assert_eq!(client.concurrency_limit(), Some(20));

    // Callers that give up after 500 ms, sooner than the usual answer.
    for _ in 0..10 {
        let err = client
            .get("slow")
            .timeout(Duration::from_millis(500))
            .send()
            .await
            .unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
    }
    assert_eq!(client.concurrency_limit(), Some(20), "no drop");

    // A hang: 5 s deadlines, five times the usual answer, run out.
    let err = client
        .get("hang")
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(client.concurrency_limit(), Some(18), "a drop");
    server.abort();
}

#[tokio::test(start_paused = true)]
async fn calls_above_the_adaptive_limit_wait_within_their_deadline() {
    let (url, server) = capacity_server().await;
    let client = adaptive_client(&url, AdaptiveConcurrency::default().initial(1).ceiling(1));
    let holder = {
        let client = client.clone();
        tokio::spawn(async move { client.get("slow").send().await.map(|r| r.status()) })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;

    let err = client
        .get("x")
        .timeout(Duration::from_millis(200))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Rejected);
    assert!(err.is_concurrency_limited());
    assert_eq!(err.attempts(), 0);

    // A call with time to wait gets the slot when the first call ends.
    let started = tokio::time::Instant::now();
    client.get("x").send().await.unwrap();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(600), "{waited:?}");
    assert!(holder.await.unwrap().is_ok());
    assert_eq!(client.stats().rejected_concurrency, 1);
    server.abort();
}

#[tokio::test(start_paused = true)]
async fn an_open_stream_gives_its_adaptive_slot_back_at_its_headers() {
    let (url, server) = capacity_server().await;
    let client = adaptive_client(&url, AdaptiveConcurrency::default().initial(1).ceiling(1));
    // Open, its body unread: with the limit at one, it would hold the only
    // slot for as long as it is kept.
    let stream = client.get("x").send_stream().await.unwrap();

    let answered = client.get("x").timeout(Duration::from_secs(1)).send().await;

    assert!(answered.is_ok(), "{answered:?}");
    drop(stream);
    server.abort();
}

#[test]
fn the_adaptive_limit_is_validated_and_exclusive_of_the_fixed_one() {
    let base = || ApiClient::builder().base_url("http://127.0.0.1:9/");
    for bad in [
        base().adaptive_concurrency(AdaptiveConcurrency::default().floor(0)),
        base().adaptive_concurrency(AdaptiveConcurrency::default().floor(9).ceiling(8)),
        base()
            .max_concurrency(8)
            .adaptive_concurrency(AdaptiveConcurrency::default()),
    ] {
        assert_eq!(bad.build().unwrap_err().kind(), ErrorKind::Config);
    }
    let initial_clamped = base()
        .adaptive_concurrency(AdaptiveConcurrency::default().initial(500).ceiling(100))
        .build()
        .unwrap();
    assert_eq!(initial_clamped.concurrency_limit(), Some(100));
    assert_eq!(base().build().unwrap().concurrency_limit(), None);
    assert_eq!(
        base()
            .max_concurrency(8)
            .build()
            .unwrap()
            .concurrency_limit(),
        Some(8)
    );
}

#[test]
fn a_max_concurrency_beyond_what_a_semaphore_holds_is_a_config_error() {
    for n in [usize::MAX, usize::MAX >> 2] {
        let err = ApiClient::builder()
            .base_url("http://127.0.0.1:1/")
            .max_concurrency(n)
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), resilient_http::ErrorKind::Config, "{n}");
        assert!(err.to_string().contains("max_concurrency"), "{err}");
    }
}

#[test]
fn a_burst_too_large_for_the_rate_is_a_config_error() {
    for burst in [400_000_000, u32::MAX] {
        let err = ApiClient::builder()
            .base_url("http://127.0.0.1:1/")
            .rate_limit(RateLimit::per_minute(1).burst(burst))
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{burst}");
        assert!(err.to_string().contains("burst"), "{err}");
    }
    // A large burst for a fast rate is fine.
    ApiClient::builder()
        .base_url("http://127.0.0.1:1/")
        .rate_limit(RateLimit::per_second(1_000).burst(1_000_000))
        .build()
        .unwrap();
}
