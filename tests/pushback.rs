//! Server pushback: a 429 or 503 with `Retry-After` pauses its endpoint for
//! every call of the client and its clones; during the pause nothing is sent
//! there: calls go to another endpoint, wait within their deadline, or fail at
//! once with `is_server_pushback()`.
//!
//! Pauses of 30 s tell "paused" from "not paused" without timing: a call with
//! a 2 s deadline fails at once under one and succeeds without one. The tests
//! that wait out a real pause use `Retry-After: 2` and generous margins.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Sequence, fast_builder, received};
use resilient_http::{ApiClient, ErrorKind, ErrorReason, LoadBalance, RetryPolicy};
use tokio::time::Instant;
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, ResponseTemplate};

fn pushback(status: u16, seconds: u64) -> ResponseTemplate {
    ResponseTemplate::new(status).insert_header("retry-after", seconds.to_string().as_str())
}

/// A server answering `first`, then 200 to every later request.
async fn server_answering_first(first: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(Sequence::new([first, ResponseTemplate::new(200)]))
        .mount(&server)
        .await;
    server
}

/// A client that does not retry, so the call that gets the pushback ends at once.
fn no_retry_client(server: &MockServer) -> ApiClient {
    fast_builder(&server.uri()).no_retry().build().unwrap()
}

#[tokio::test]
async fn a_429_with_retry_after_pauses_the_endpoint_for_the_next_call() {
    // 2 s: the sample at 400 ms stays inside the pause on a slow machine.
    let server = server_answering_first(pushback(429, 2)).await;
    let client = no_retry_client(&server);
    let first = client.get("a").send().await.unwrap_err();
    assert_eq!(first.status().map(|s| s.as_u16()), Some(429));
    let started = Instant::now();

    let next = tokio::spawn({
        let client = client.clone();
        async move { client.get("b").send().await }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let during_pause = received(&server).await;
    let resp = next.await.unwrap().unwrap();

    assert_eq!(
        during_pause, 1,
        "nothing is sent while the endpoint is paused"
    );
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.attempts(), 1);
    assert!(
        started.elapsed() >= Duration::from_millis(1800),
        "the next call waited for the pause: {:?}",
        started.elapsed()
    );
    assert_eq!(received(&server).await, 2);
    let stats = client.stats();
    assert_eq!(
        (stats.pushback_pauses, stats.rejected_server_pushback),
        (1, 0)
    );
}

#[tokio::test]
async fn a_503_with_retry_after_pauses_concurrent_calls_too() {
    let server = server_answering_first(pushback(503, 2)).await;
    let client = no_retry_client(&server);
    client.get("a").send().await.unwrap_err();

    let calls: Vec<_> = (0..4)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.get("b").send().await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let during_pause = received(&server).await;
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap().status().as_u16(), 200);
    }

    assert_eq!(during_pause, 1);
    assert_eq!(received(&server).await, 5);
}

#[tokio::test]
async fn a_call_whose_deadline_is_shorter_than_the_pause_fails_at_once_with_nothing_sent() {
    let server = server_answering_first(pushback(429, 30)).await;
    let client = no_retry_client(&server);
    client.get("a").send().await.unwrap_err();
    let started = Instant::now();

    let err = client
        .get("b")
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .unwrap_err();

    assert!(err.is_server_pushback(), "{err}");
    assert_eq!(err.kind(), ErrorKind::Rejected);
    assert_eq!(err.reason(), ErrorReason::ServerPushback);
    assert_eq!(err.attempts(), 0);
    assert!(err.is_unprocessed());
    assert!(!err.is_circuit_open());
    let left = err.retry_after().unwrap();
    assert!(
        left > Duration::from_secs(20) && left <= Duration::from_secs(30),
        "retry_after is the time left in the pause: {left:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(1), "failed at once");
    assert_eq!(received(&server).await, 1, "nothing was sent");
    let stats = client.stats();
    assert_eq!(
        (stats.pushback_pauses, stats.rejected_server_pushback),
        (1, 1)
    );
}

#[tokio::test]
async fn the_pause_is_capped_at_max_retry_after() {
    let server = server_answering_first(pushback(429, 30)).await;
    let client = fast_builder(&server.uri())
        .retry(RetryPolicy::exponential().max_retry_after(Duration::from_secs(1)))
        .build()
        .unwrap();
    // Retry-After 30 s is above the cap: this call gives up at once...
    let first = client.get("a").send().await.unwrap_err();
    assert_eq!(first.attempts(), 1);

    // ...and the endpoint is paused for 1 s, not 30: a call that cannot wait
    // 1 s is refused, one that can waits and succeeds.
    let short = client
        .get("b")
        .timeout(Duration::from_millis(300))
        .send()
        .await
        .unwrap_err();
    assert!(short.is_server_pushback());
    assert!(short.retry_after().unwrap() <= Duration::from_secs(1));
    let resp = client
        .get("c")
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();

    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(received(&server).await, 2);
}

#[tokio::test]
async fn clones_share_the_pause() {
    let server = server_answering_first(pushback(503, 30)).await;
    let client = no_retry_client(&server);
    let clone = client.clone();
    client.get("a").send().await.unwrap_err();

    let err = clone
        .get("b")
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .unwrap_err();

    assert!(err.is_server_pushback());
    assert_eq!(received(&server).await, 1);
}

#[tokio::test]
async fn an_error_without_retry_after_or_another_status_pauses_nothing() {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(Sequence::new([
            ResponseTemplate::new(429),
            ResponseTemplate::new(503),
            pushback(500, 30),
            pushback(502, 30),
            ResponseTemplate::new(200),
        ]))
        .mount(&server)
        .await;
    let client = no_retry_client(&server);
    for _ in 0..4 {
        let err = client
            .get("x")
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .unwrap_err();
        assert!(!err.is_server_pushback(), "{err}");
    }

    let resp = client
        .get("x")
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .unwrap();

    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(received(&server).await, 5);
    assert_eq!(client.stats().pushback_pauses, 0);
}

#[tokio::test]
async fn the_call_that_got_the_retry_after_is_not_delayed_twice() {
    let server = server_answering_first(pushback(429, 2)).await;
    let client = fast_builder(&server.uri()).build().unwrap();
    let started = Instant::now();

    let resp = client
        .get("x")
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();

    let took = started.elapsed();
    assert_eq!(resp.attempts(), 2);
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_millis(3500),
        "one Retry-After of 2 s, not two: {took:?}"
    );
    assert_eq!(received(&server).await, 2);
}

#[tokio::test]
async fn with_two_endpoints_calls_go_to_the_other_during_the_pause() {
    let paused = MockServer::start().await;
    Mock::given(any())
        .respond_with(pushback(429, 30))
        .mount(&paused)
        .await;
    let healthy = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200))
        .mount(&healthy)
        .await;
    let client = ApiClient::builder()
        .endpoints([paused.uri(), healthy.uri()])
        .load_balance(LoadBalance::RoundRobin)
        .total_timeout(Duration::from_secs(5))
        .no_retry()
        .build()
        .unwrap();

    let mut failed = 0;
    for _ in 0..10 {
        if client.get("x").send().await.is_err() {
            failed += 1;
        }
    }

    assert_eq!(failed, 1, "only the call that got the 429 failed");
    assert_eq!(
        received(&paused).await,
        1,
        "nothing more sent to the paused one"
    );
    assert_eq!(received(&healthy).await, 9);
    assert_eq!(client.stats().pushback_pauses, 1);
}

#[tokio::test]
async fn when_every_endpoint_is_paused_a_short_call_is_refused_with_pushback() {
    let (a, b) = (MockServer::start().await, MockServer::start().await);
    for server in [&a, &b] {
        Mock::given(any())
            .respond_with(pushback(503, 30))
            .mount(server)
            .await;
    }
    let client = ApiClient::builder()
        .endpoints([a.uri(), b.uri()])
        .load_balance(LoadBalance::RoundRobin)
        .no_retry()
        .no_circuit_breaker()
        .build()
        .unwrap();
    client.get("x").send().await.unwrap_err();
    client.get("x").send().await.unwrap_err();

    let err = client
        .get("x")
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .unwrap_err();

    assert!(err.is_server_pushback(), "{err}");
    assert_eq!(err.attempts(), 0);
    assert_eq!((received(&a).await, received(&b).await), (1, 1));
}

#[tokio::test]
async fn pushback_works_without_a_circuit_breaker() {
    let server = server_answering_first(pushback(429, 30)).await;
    let client = fast_builder(&server.uri())
        .no_retry()
        .no_circuit_breaker()
        .build()
        .unwrap();
    client.get("a").send().await.unwrap_err();

    let err = client
        .get("b")
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .unwrap_err();

    assert!(err.is_server_pushback());
    assert_eq!(received(&server).await, 1);
}

#[tokio::test]
async fn an_absolute_url_on_another_origin_is_not_paused() {
    let paused = server_answering_first(pushback(429, 30)).await;
    let other = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200))
        .mount(&other)
        .await;
    let client = no_retry_client(&paused);
    client.get("a").send().await.unwrap_err();

    let resp = client
        .get(format!("{}/x", other.uri()))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .unwrap();

    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(received(&paused).await, 1);
}

#[tokio::test]
async fn the_call_that_got_the_pushback_retries_on_another_endpoint_without_waiting() {
    let paused = MockServer::start().await;
    Mock::given(any())
        .respond_with(pushback(429, 30))
        .mount(&paused)
        .await;
    let healthy = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200))
        .mount(&healthy)
        .await;
    let client = ApiClient::builder()
        .endpoints([paused.uri(), healthy.uri()])
        .load_balance(LoadBalance::RoundRobin)
        .total_timeout(Duration::from_secs(5))
        .retry(
            RetryPolicy::exponential()
                .initial_backoff(Duration::from_millis(1))
                .jitter(false),
        )
        .build()
        .unwrap();

    let mut attempts = Vec::new();
    for _ in 0..4 {
        attempts.push(client.get("x").send().await.unwrap().attempts());
    }

    assert_eq!(
        attempts.iter().filter(|&&a| a == 2).count(),
        1,
        "one call met the 429 and retried elsewhere at once: {attempts:?}"
    );
    assert_eq!(received(&paused).await, 1);
    assert_eq!(received(&healthy).await, 4);
}

/// With the `metrics` feature: pauses and pushback rejections reach the
/// facade, read back with a counter-capturing recorder on the test's thread.
#[cfg(feature = "metrics")]
mod metrics_facade {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use metrics::{
        Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
    };

    use super::{no_retry_client, pushback, server_answering_first};

    /// A counter's name and its labels, sorted.
    type Series = (String, Vec<(String, String)>);

    #[derive(Default)]
    struct Cell(AtomicU64);

    impl CounterFn for Cell {
        fn increment(&self, value: u64) {
            self.0.fetch_add(value, Ordering::SeqCst);
        }
        fn absolute(&self, value: u64) {
            self.0.store(value, Ordering::SeqCst);
        }
    }

    #[derive(Default)]
    struct Counters(Mutex<BTreeMap<Series, Arc<Cell>>>);

    fn series(name: &str, labels: impl Iterator<Item = (String, String)>) -> Series {
        let mut labels: Vec<_> = labels.collect();
        labels.sort();
        (name.to_owned(), labels)
    }

    impl Recorder for Counters {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            let labels = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()));
            let cell = Arc::clone(
                self.0
                    .lock()
                    .unwrap()
                    .entry(series(key.name(), labels))
                    .or_default(),
            );
            Counter::from_arc(cell)
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    impl Counters {
        fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
            let labels = labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
            let map = self.0.lock().unwrap();
            map.get(&series(name, labels))
                .map(|c| c.0.load(Ordering::SeqCst))
        }
    }

    #[tokio::test]
    async fn pauses_and_pushback_rejections_are_counted_in_metrics() {
        let recorder = Counters::default();
        let _local = metrics::set_default_local_recorder(&recorder);
        let server = server_answering_first(pushback(429, 30)).await;
        let endpoint = format!("http://{}", server.address());
        let client = no_retry_client(&server);
        client.get("a").send().await.unwrap_err();

        let err = client
            .get("b")
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .unwrap_err();

        assert!(err.is_server_pushback());
        assert_eq!(
            recorder.get(
                "http.client.pushback.pauses",
                &[("endpoint", endpoint.as_str())]
            ),
            Some(1)
        );
        assert_eq!(
            recorder.get(
                "http.client.limit.rejections",
                &[("limit", "server_pushback")]
            ),
            Some(1)
        );
    }
}
