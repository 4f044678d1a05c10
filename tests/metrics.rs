//! Numbers for a dashboard: `ApiClient::stats()` counters (always on), and,
//! with the `metrics` feature, the same events through the `metrics` facade,
//! read back with a capturing recorder installed on the test's thread.

// Test support: a failed setup step should panic with a message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Sequence, fast_builder, received};
use resilient_http::{
    ApiClient, CircuitBreakerConfig, CircuitState, ClientStats, ErrorKind, RateLimit,
};
use wiremock::matchers::{any, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// How long a test waits for something that should happen at once.
const PROMPT: Duration = Duration::from_secs(2);

/// A server answering `status` to everything, after `delay`.
async fn answering(status: u16, delay: Duration) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(status).set_delay(delay))
        .mount(&server)
        .await;
    server
}

/// Waits (bounded) until `server` has received `n` requests.
async fn until_received(server: &MockServer, n: usize) {
    let polled = tokio::time::timeout(PROMPT, async {
        while received(server).await < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(polled.is_ok(), "the server got {n} request(s) in time");
}

// ------------------------------------------------------------------ stats

#[tokio::test]
async fn stats_count_a_mix_of_calls() {
    let server = MockServer::start().await;
    Mock::given(path("/ok"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    Mock::given(path("/flaky"))
        .respond_with(Sequence::statuses(&[503, 200]))
        .mount(&server)
        .await;
    Mock::given(path("/missing"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&server)
        .await;
    let down = answering(500, Duration::ZERO).await;
    let client = fast_builder(&server.uri())
        .circuit_breaker(
            CircuitBreakerConfig::default()
                .consecutive_failures(2)
                .open_duration(Duration::from_secs(60)),
        )
        .build()
        .unwrap();
    let down_url = format!("{}/x", down.uri());

    client.get("ok").send().await.unwrap();
    assert_eq!(client.get("flaky").send().await.unwrap().attempts(), 2);
    let missing = client.get("missing").send().await.unwrap_err();
    // Two 500s (not retried by default) open the other origin's breaker...
    for _ in 0..2 {
        let err = client.get(&down_url).send().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Server);
    }
    assert_eq!(
        client.circuit_state_of(&down_url.parse().unwrap()),
        CircuitState::Open
    );
    // ...which then refuses a call without sending it.
    let refused = client.get(&down_url).send().await.unwrap_err();

    assert_eq!(missing.kind(), ErrorKind::Client);
    assert!(refused.is_circuit_open());
    let mut expected = ClientStats::default();
    expected.calls = 6;
    expected.succeeded = 2;
    expected.failed = 4;
    expected.attempts = 6;
    expected.retries = 1;
    expected.rejected_circuit_open = 1;
    assert_eq!(client.stats(), expected);
    assert_eq!(received(&server).await + received(&down).await, 6);
}

#[tokio::test]
async fn stats_count_calls_refused_by_the_limits() {
    let quick = answering(200, Duration::ZERO).await;
    let server = answering(200, Duration::from_millis(300)).await;
    let rate = fast_builder(&quick.uri())
        .rate_limit(RateLimit::per_minute(1).fail_fast())
        .build()
        .unwrap();
    let bulkhead = fast_builder(&server.uri())
        .max_concurrency(1)
        .build()
        .unwrap();

    rate.get("x").send().await.unwrap();
    let limited = rate.get("x").send().await.unwrap_err();
    let holder = tokio::spawn(bulkhead.get("x").send());
    until_received(&server, 1).await;
    let crowded = bulkhead
        .get("x")
        .timeout(Duration::from_millis(50))
        .send()
        .await
        .unwrap_err();
    holder.await.unwrap().unwrap();

    assert!(limited.is_rate_limited(), "{limited:?}");
    assert!(crowded.is_concurrency_limited(), "{crowded:?}");
    let (rate, bulkhead) = (rate.stats(), bulkhead.stats());
    assert_eq!(
        (
            rate.calls,
            rate.failed,
            rate.attempts,
            rate.rejected_rate_limited
        ),
        (2, 1, 1, 1)
    );
    assert_eq!(
        (rate.rejected_concurrency, rate.rejected_circuit_open),
        (0, 0)
    );
    assert_eq!(
        (
            bulkhead.calls,
            bulkhead.failed,
            bulkhead.attempts,
            bulkhead.rejected_concurrency
        ),
        (2, 1, 1, 1)
    );
    assert_eq!((bulkhead.rejected_rate_limited, bulkhead.in_flight), (0, 0));
}

#[tokio::test]
async fn in_flight_counts_a_call_until_it_ends() {
    let server = answering(200, Duration::from_millis(300)).await;
    let client = fast_builder(&server.uri()).build().unwrap();

    let call = tokio::spawn(client.get("x").send());
    until_received(&server, 1).await;
    let during = client.stats();
    call.await.unwrap().unwrap();
    let after = client.stats();

    assert_eq!((during.in_flight, during.calls, during.attempts), (1, 0, 1));
    assert_eq!(
        (
            after.in_flight,
            after.calls,
            after.succeeded,
            after.cancelled
        ),
        (0, 1, 1, 0)
    );
}

#[tokio::test]
async fn a_call_dropped_mid_flight_is_counted_as_cancelled() {
    // Answers long after the test is over: the call is dropped first.
    let server = answering(200, Duration::from_secs(30)).await;
    let client = fast_builder(&server.uri()).build().unwrap();

    let call = tokio::spawn(client.get("x").send());
    until_received(&server, 1).await;
    assert_eq!(client.stats().in_flight, 1);
    call.abort();
    let ended = call.await.unwrap_err();

    assert!(ended.is_cancelled());
    let stats = client.stats();
    assert_eq!(
        (stats.cancelled, stats.in_flight, stats.calls, stats.failed),
        (1, 0, 0, 0)
    );
    assert_eq!(stats.attempts, 1);
}

#[tokio::test]
async fn stats_are_shared_by_clones() {
    let server = answering(200, Duration::ZERO).await;
    let client = fast_builder(&server.uri()).build().unwrap();
    let clone = client.clone();

    clone.get("x").send().await.unwrap();

    assert_eq!(client.stats(), clone.stats());
    assert_eq!((client.stats().calls, client.stats().succeeded), (1, 1));
}

#[tokio::test]
async fn a_new_client_has_all_counters_at_zero() {
    let client = ApiClient::new("http://127.0.0.1:1/").unwrap();

    assert_eq!(client.stats(), ClientStats::default());
}

// ---------------------------------------------------------- metrics facade

#[cfg(feature = "metrics")]
mod facade {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use metrics::{
        Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata,
        Recorder, SharedString, Unit,
    };
    use resilient_http::{CircuitBreakerConfig, ErrorKind, RateLimit, Token};
    use wiremock::MockServer;

    use super::{answering, until_received};
    use crate::common::{Sequence, fast_builder};

    /// A metric's name and its labels, sorted.
    type Series = (String, Vec<(String, String)>);

    #[derive(Default)]
    struct CounterCell(AtomicU64);

    impl CounterFn for CounterCell {
        fn increment(&self, value: u64) {
            self.0.fetch_add(value, Ordering::SeqCst);
        }

        fn absolute(&self, value: u64) {
            self.0.fetch_max(value, Ordering::SeqCst);
        }
    }

    /// A gauge's current value and the highest it reached.
    #[derive(Default)]
    struct GaugeCell(Mutex<(f64, f64)>);

    impl GaugeCell {
        fn update(&self, f: impl FnOnce(f64) -> f64) {
            let mut cell = self.0.lock().unwrap();
            cell.0 = f(cell.0);
            cell.1 = cell.1.max(cell.0);
        }
    }

    impl GaugeFn for GaugeCell {
        fn increment(&self, value: f64) {
            self.update(|v| v + value);
        }

        fn decrement(&self, value: f64) {
            self.update(|v| v - value);
        }

        fn set(&self, value: f64) {
            self.update(|_| value);
        }
    }

    #[derive(Default)]
    struct HistogramCell(Mutex<Vec<f64>>);

    impl HistogramFn for HistogramCell {
        fn record(&self, value: f64) {
            self.0.lock().unwrap().push(value);
        }
    }

    /// Keeps every counter, gauge and histogram by name and labels.
    #[derive(Default)]
    struct Capture {
        counters: Mutex<BTreeMap<Series, Arc<CounterCell>>>,
        gauges: Mutex<BTreeMap<Series, Arc<GaugeCell>>>,
        histograms: Mutex<BTreeMap<Series, Arc<HistogramCell>>>,
    }

    fn series_of(key: &Key) -> Series {
        let mut labels: Vec<(String, String)> = key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        labels.sort();
        (key.name().to_owned(), labels)
    }

    fn series(name: &str, labels: &[(&str, &str)]) -> Series {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        labels.sort();
        (name.to_owned(), labels)
    }

    fn cell<T: Default>(map: &Mutex<BTreeMap<Series, Arc<T>>>, key: &Key) -> Arc<T> {
        Arc::clone(map.lock().unwrap().entry(series_of(key)).or_default())
    }

    impl Recorder for Capture {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            Counter::from_arc(cell(&self.counters, key))
        }

        fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::from_arc(cell(&self.gauges, key))
        }

        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::from_arc(cell(&self.histograms, key))
        }
    }

    impl Capture {
        /// The counter with exactly these labels, if it was registered.
        fn counter(&self, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
            let map = self.counters.lock().unwrap();
            map.get(&series(name, labels))
                .map(|c| c.0.load(Ordering::SeqCst))
        }

        /// The gauge's (current, highest) value, if it was registered.
        fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<(f64, f64)> {
            let map = self.gauges.lock().unwrap();
            map.get(&series(name, labels)).map(|g| *g.0.lock().unwrap())
        }

        /// The values recorded in the histogram with exactly these labels.
        fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
            let map = self.histograms.lock().unwrap();
            map.get(&series(name, labels))
                .map(|h| h.0.lock().unwrap().clone())
                .unwrap_or_default()
        }

        /// Every label set a counter or histogram was registered with.
        fn label_sets(&self, name: &str) -> Vec<Vec<(String, String)>> {
            let counters = self.counters.lock().unwrap();
            let histograms = self.histograms.lock().unwrap();
            let mut sets: Vec<_> = counters
                .keys()
                .chain(histograms.keys())
                .filter(|(n, _)| n == name)
                .map(|(_, l)| l.clone())
                .collect();
            sets.dedup();
            sets
        }
    }

    const DURATION: &str = "http.client.request.duration";
    const REQUESTS: &str = "http.client.requests";

    /// The labels of a call's duration and count.
    fn call_labels<'a>(
        method: &'a str,
        class: &'a str,
        outcome: &'a str,
    ) -> [(&'a str, &'a str); 4] {
        [
            ("http.request.method", method),
            ("http.response.status_class", class),
            ("outcome", outcome),
            ("server.address", "127.0.0.1"),
        ]
    }

    #[tokio::test]
    async fn a_successful_call_records_its_duration_count_attempt_and_active_gauge() {
        let recorder = Capture::default();
        let _local = metrics::set_default_local_recorder(&recorder);
        let server = answering(200, Duration::ZERO).await;
        let client = fast_builder(&server.uri()).build().unwrap();

        client.get("x").send().await.unwrap();

        let ok = call_labels("GET", "2xx", "ok");
        let durations = recorder.histogram(DURATION, &ok);
        assert_eq!(durations.len(), 1, "{durations:?}");
        assert!(durations[0] > 0.0 && durations[0] < 5.0, "{durations:?}");
        assert_eq!(recorder.counter(REQUESTS, &ok), Some(1));
        assert_eq!(recorder.label_sets(DURATION).len(), 1);
        let get = [("http.request.method", "GET")];
        assert_eq!(recorder.counter("http.client.attempts", &get), Some(1));
        assert_eq!(recorder.label_sets("http.client.retries").len(), 0);
        assert_eq!(
            recorder.gauge("http.client.active_requests", &get),
            Some((0.0, 1.0)),
            "(now, highest)"
        );
    }

    #[cfg(feature = "cache")]
    #[tokio::test]
    async fn the_cache_counts_what_answered_each_call() {
        let recorder = Capture::default();
        let _local = metrics::set_default_local_recorder(&recorder);
        let server = MockServer::start().await;
        wiremock::Mock::given(wiremock::matchers::any())
            .respond_with(
                wiremock::ResponseTemplate::new(200).insert_header("cache-control", "max-age=60"),
            )
            .mount(&server)
            .await;
        let client = fast_builder(&server.uri())
            .cache(resilient_http::Cache::in_memory(10))
            .build()
            .unwrap();

        for _ in 0..3 {
            client.get("x").send().await.unwrap();
        }

        let cache = "http.client.cache.requests";
        assert_eq!(recorder.counter(cache, &[("result", "miss")]), Some(1));
        assert_eq!(recorder.counter(cache, &[("result", "hit")]), Some(2));
        // A call the cache answered is a call like any other.
        let ok = call_labels("GET", "2xx", "ok");
        assert_eq!(recorder.counter(REQUESTS, &ok), Some(3));
        let get = [("http.request.method", "GET")];
        assert_eq!(recorder.counter("http.client.attempts", &get), Some(1));
    }

    #[tokio::test]
    async fn a_503_retried_to_success_counts_two_attempts_one_retry_and_one_call() {
        let recorder = Capture::default();
        let _local = metrics::set_default_local_recorder(&recorder);
        let server = MockServer::start().await;
        wiremock::Mock::given(wiremock::matchers::any())
            .respond_with(Sequence::statuses(&[503, 200]))
            .mount(&server)
            .await;
        let client = fast_builder(&server.uri()).build().unwrap();

        client.get("x").send().await.unwrap();

        let ok = call_labels("GET", "2xx", "ok");
        assert_eq!(recorder.histogram(DURATION, &ok).len(), 1);
        assert_eq!(recorder.counter(REQUESTS, &ok), Some(1));
        assert_eq!(recorder.label_sets(REQUESTS).len(), 1);
        let get = [("http.request.method", "GET")];
        assert_eq!(recorder.counter("http.client.attempts", &get), Some(2));
        assert_eq!(
            recorder.counter(
                "http.client.retries",
                &[("http.request.method", "GET"), ("reason", "503")]
            ),
            Some(1)
        );
        assert_eq!(recorder.label_sets("http.client.retries").len(), 1);
    }

    #[tokio::test]
    async fn failed_calls_are_labelled_with_their_status_class_and_outcome() {
        let recorder = Capture::default();
        let _local = metrics::set_default_local_recorder(&recorder);
        for (status, method, class, outcome) in [
            (500, "GET", "5xx", "server"),
            (503, "GET", "5xx", "retryable"),
            (404, "POST", "4xx", "client"),
        ] {
            let server = answering(status, Duration::ZERO).await;
            let client = fast_builder(&server.uri())
                .no_retry()
                .no_circuit_breaker()
                .build()
                .unwrap();

            let call = match method {
                "GET" => client.get("x"),
                _ => client.post("x"),
            };
            let err = call.send().await.unwrap_err();

            assert_eq!(err.kind().as_str(), outcome, "{status}");
            let labels = call_labels(method, class, outcome);
            assert_eq!(recorder.histogram(DURATION, &labels).len(), 1, "{status}");
            assert_eq!(recorder.counter(REQUESTS, &labels), Some(1), "{status}");
        }
        assert_eq!(recorder.label_sets(REQUESTS).len(), 3);
    }

    #[tokio::test]
    async fn an_opened_breaker_sets_the_state_gauge_and_its_refusals_are_counted() {
        let recorder = Capture::default();
        let _local = metrics::set_default_local_recorder(&recorder);
        let server = answering(503, Duration::ZERO).await;
        let client = fast_builder(&server.uri())
            .no_retry()
            .circuit_breaker(
                CircuitBreakerConfig::default()
                    .consecutive_failures(2)
                    .open_duration(Duration::from_secs(60)),
            )
            .build()
            .unwrap();
        let endpoint = server.uri();
        let by_endpoint = [("endpoint", endpoint.as_str())];

        for _ in 0..2 {
            client.get("x").send().await.unwrap_err();
        }
        assert_eq!(
            recorder.gauge("http.client.circuit_breaker.state", &by_endpoint),
            Some((2.0, 2.0))
        );
        assert_eq!(
            recorder.counter(
                "http.client.circuit_breaker.transitions",
                &[("endpoint", endpoint.as_str()), ("to", "open")]
            ),
            Some(1)
        );
        assert_eq!(
            recorder.counter("http.client.limit.rejections", &[("limit", "circuit_open")]),
            None,
            "nothing refused yet"
        );

        let err = client.get("x").send().await.unwrap_err();

        assert!(err.is_circuit_open());
        assert_eq!(
            recorder.counter("http.client.limit.rejections", &[("limit", "circuit_open")]),
            Some(1)
        );
        let refused = call_labels("GET", "none", "rejected");
        assert_eq!(recorder.counter(REQUESTS, &refused), Some(1));
        assert_eq!(
            recorder.counter("http.client.attempts", &[("http.request.method", "GET")]),
            Some(2),
            "the refused call sent nothing"
        );
    }

    #[tokio::test]
    async fn a_rate_limit_wait_and_a_rate_limit_refusal_are_recorded() {
        let recorder = Capture::default();
        let _local = metrics::set_default_local_recorder(&recorder);
        let server = answering(200, Duration::ZERO).await;
        let waiting = fast_builder(&server.uri())
            .rate_limit(RateLimit::per_second(2).burst(1))
            .build()
            .unwrap();
        let refusing = fast_builder(&server.uri())
            .rate_limit(RateLimit::per_minute(1).fail_fast())
            .build()
            .unwrap();

        // The second call waits for the next permit: 500 ms less the first
        // call (plus the timer's rounding).
        waiting.get("x").send().await.unwrap();
        waiting.get("x").send().await.unwrap();
        refusing.get("x").send().await.unwrap();
        let err = refusing.get("x").send().await.unwrap_err();

        assert!(err.is_rate_limited());
        let waits = recorder.histogram("http.client.limit.wait.duration", &[("limit", "rate")]);
        // Permits had at once may also show up as near-0 s samples: see
        // `a_rate_permit_had_at_once_records_no_wait`.
        let real: Vec<f64> = waits.iter().copied().filter(|w| *w > 0.1).collect();
        assert_eq!(real.len(), 1, "one call waited: {waits:?}");
        assert!(real[0] < 0.75, "{waits:?}");
        assert_eq!(
            recorder.counter("http.client.limit.rejections", &[("limit", "rate")]),
            Some(1)
        );
        assert_eq!(
            recorder.counter(REQUESTS, &call_labels("GET", "none", "rejected")),
            Some(1)
        );
    }

    #[tokio::test]
    async fn a_rate_permit_had_at_once_records_no_wait() {
        let recorder = Capture::default();
        let _local = metrics::set_default_local_recorder(&recorder);
        let server = answering(200, Duration::ZERO).await;
        let client = fast_builder(&server.uri())
            .rate_limit(RateLimit::per_second(1000))
            .build()
            .unwrap();

        for _ in 0..3 {
            client.get("x").send().await.unwrap();
        }

        let waits = recorder.histogram("http.client.limit.wait.duration", &[("limit", "rate")]);
        assert_eq!(waits, [0.0; 0], "no call waited");
    }

    #[tokio::test]
    async fn a_concurrency_wait_is_recorded_and_active_requests_counts_calls_in_flight() {
        let recorder = Capture::default();
        let _local = metrics::set_default_local_recorder(&recorder);
        let server = answering(200, Duration::from_millis(200)).await;
        let client = fast_builder(&server.uri())
            .max_concurrency(1)
            .build()
            .unwrap();
        let get = [("http.request.method", "GET")];

        let first = tokio::spawn(client.get("x").send());
        until_received(&server, 1).await;
        assert_eq!(
            recorder.gauge("http.client.active_requests", &get),
            Some((1.0, 1.0))
        );
        client.get("x").send().await.unwrap();
        first.await.unwrap().unwrap();

        let waits = recorder.histogram(
            "http.client.limit.wait.duration",
            &[("limit", "concurrency")],
        );
        assert_eq!(waits.len(), 1, "{waits:?}");
        assert!(waits[0] > 0.0 && waits[0] < 2.0, "{waits:?}");
        assert_eq!(
            recorder.gauge("http.client.active_requests", &get),
            Some((0.0, 2.0)),
            "the waiting call counts as active"
        );
    }

    #[tokio::test]
    async fn a_cancelled_call_leaves_no_active_request_and_records_no_duration() {
        let recorder = Capture::default();
        let _local = metrics::set_default_local_recorder(&recorder);
        let server = answering(200, Duration::from_secs(30)).await;
        let client = fast_builder(&server.uri()).build().unwrap();
        let get = [("http.request.method", "GET")];

        let call = tokio::spawn(client.get("x").send());
        until_received(&server, 1).await;
        call.abort();
        assert!(call.await.unwrap_err().is_cancelled());

        assert_eq!(
            recorder.gauge("http.client.active_requests", &get),
            Some((0.0, 1.0))
        );
        assert_eq!(recorder.label_sets(DURATION).len(), 0);
        assert_eq!(recorder.label_sets(REQUESTS).len(), 0);
        assert_eq!(recorder.counter("http.client.attempts", &get), Some(1));
    }

    #[tokio::test]
    async fn token_fetches_are_counted_by_result() {
        let recorder = Capture::default();
        let _local = metrics::set_default_local_recorder(&recorder);
        let server = answering(200, Duration::ZERO).await;
        let asked = Arc::new(AtomicU64::new(0));
        let client = fast_builder(&server.uri())
            .token_provider(move || {
                let n = asked.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        Err("vault sealed".into())
                    } else {
                        Ok(Token::new("t"))
                    }
                }
            })
            .build()
            .unwrap();

        let err = client.get("x").send().await.unwrap_err();
        client.get("x").send().await.unwrap();
        client.get("x").send().await.unwrap();

        assert_eq!(err.kind(), ErrorKind::Rejected);
        let by_result =
            |result| recorder.counter("http.client.token.fetches", &[("result", result)]);
        assert_eq!((by_result("error"), by_result("ok")), (Some(1), Some(1)));
        assert_eq!(client.stats().token_fetches, 2);
    }

    /// A shared rate limit whose Redis refuses connections: one failed
    /// connection, then every call decided by the fallback.
    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn a_shared_limit_without_redis_counts_fallbacks_and_store_errors() {
        let recorder = Capture::default();
        let _local = metrics::set_default_local_recorder(&recorder);
        let server = answering(200, Duration::ZERO).await;
        let port = crate::common::closed_port().unwrap();
        let client = fast_builder(&server.uri())
            .rate_limit(
                RateLimit::per_second(100)
                    .shared(resilient_http::RedisLimiter::new(
                        format!("redis://127.0.0.1:{port}/"),
                        "k",
                    ))
                    .on_store_error(resilient_http::StoreFallback::Allow),
            )
            .build()
            .unwrap();
        for _ in 0..5 {
            client.get("x").send().await.unwrap();
        }
        let fallbacks = recorder.counter(
            "http.client.rate_limit.shared.fallbacks",
            &[("policy", "allow")],
        );
        let errors = recorder.counter(
            "http.client.rate_limit.shared.store_errors",
            &[("error", "connection")],
        );
        assert_eq!((fallbacks, errors), (Some(5), Some(1)));
        let stats = client.stats();
        assert_eq!(
            (
                stats.shared_fallbacks,
                stats.shared_store_errors,
                stats.shared_permits
            ),
            (5, 1, 0)
        );
    }

    #[tokio::test]
    async fn the_server_address_label_is_bounded() {
        let recorder = Capture::default();
        let _local = metrics::set_default_local_recorder(&recorder);
        // No base URL: a client calling whatever hosts it is given (each
        // refuses the connection at once).
        let client = resilient_http::ApiClient::builder()
            .no_retry()
            .no_circuit_breaker()
            .build()
            .unwrap();
        for i in 1..=100u8 {
            let url = format!("http://127.0.0.{i}:1/x");
            client.get(&url).send().await.unwrap_err();
        }

        let mut servers: Vec<String> = recorder
            .label_sets(REQUESTS)
            .into_iter()
            .flat_map(|set| set.into_iter().filter(|(k, _)| k == "server.address"))
            .map(|(_, v)| v)
            .collect();
        servers.sort();
        servers.dedup();
        assert_eq!(servers.len(), 65, "64 hosts and _OTHER: {servers:?}");
        assert!(servers.iter().any(|s| s == "_OTHER"));
    }
}
