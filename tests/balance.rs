//! Several instances of one service: load balancing, outlier ejection,
//! retries to another instance, and endpoint discovery through a resolver.
// Helpers outside #[test] fns panic on a failed setup step, like the tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Sequence, capture_traces, fast_retry, received, until};
use resilient_http::{
    ApiClient, ApiClientBuilder, CircuitBreakerConfig, CircuitState, Endpoint, ErrorKind,
    LoadBalance, ResolveError, Resolver, RetryPolicy, StaticResolver, Url,
};
use tokio::time::Instant;
use wiremock::matchers::{any, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

// Long enough that a few dozen local calls finish well inside it on a loaded
// machine, short enough to wait out.
const OPEN_FOR: Duration = Duration::from_secs(1);

// ------------------------------------------------------------------ spread

#[tokio::test]
async fn round_robin_spreads_sequential_calls_exactly_evenly() {
    let (a, b, c) = (named("a").await, named("b").await, named("c").await);
    let client = builder()
        .endpoints([a.uri(), b.uri(), c.uri()])
        .load_balance(LoadBalance::RoundRobin)
        .build()
        .unwrap();

    let served = call_many(&client, 300).await;

    assert_eq!(&served[..6], ["a", "b", "c", "a", "b", "c"]);
    assert_eq!(tally(&served, &["a", "b", "c"]), [100, 100, 100]);
    assert_eq!(counts(&[&a, &b, &c]).await, [100, 100, 100]);
}

#[tokio::test]
async fn least_outstanding_spreads_sequential_calls_about_evenly() {
    let (a, b, c) = (named("a").await, named("b").await, named("c").await);
    // The default strategy.
    let client = builder()
        .endpoints([a.uri(), b.uri(), c.uri()])
        .build()
        .unwrap();

    let served = call_many(&client, 300).await;

    // Nothing is in flight between sequential calls, so every pick is a tie
    // and goes to the first of a uniformly random pair: each instance gets
    // Binomial(300, 1/3), mean 100, sd 8.2. P(any outside 55..=145) < 1e-7.
    for (name, n) in ["a", "b", "c"].iter().zip(tally(&served, &["a", "b", "c"])) {
        assert!((55..=145).contains(&n), "{name} got {n} of 300: {served:?}");
    }
    assert_eq!(counts(&[&a, &b, &c]).await.iter().sum::<usize>(), 300);
}

#[tokio::test]
async fn weighted_round_robin_follows_the_weights_exactly_and_smoothly() {
    let (heavy, light) = (named("heavy").await, named("light").await);
    let client = builder()
        .endpoints([
            Endpoint::new(heavy.uri()).weight(3),
            Endpoint::new(light.uri()).weight(1),
        ])
        .load_balance(LoadBalance::WeightedRoundRobin)
        .build()
        .unwrap();

    let served = call_many(&client, 400).await;

    // Smooth WRR interleaves: heavy heavy light heavy, repeated.
    assert_eq!(&served[..4], ["heavy", "heavy", "light", "heavy"]);
    assert!(
        served
            .windows(4)
            .all(|w| w.iter().filter(|s| *s == "heavy").count() == 3),
        "not smooth: {served:?}"
    );
    assert_eq!(tally(&served, &["heavy", "light"]), [300, 100]);
    assert_eq!(counts(&[&heavy, &light]).await, [300, 100]);
    let weights: Vec<u32> = client.endpoints().iter().map(|e| e.weight).collect();
    assert_eq!(weights, [3, 1]);
}

#[tokio::test]
async fn round_robin_ignores_weights() {
    let (heavy, light) = (named("heavy").await, named("light").await);
    let client = builder()
        .endpoints([
            Endpoint::new(heavy.uri()).weight(3),
            Endpoint::new(light.uri()).weight(1),
        ])
        .load_balance(LoadBalance::RoundRobin)
        .build()
        .unwrap();

    let served = call_many(&client, 40).await;

    assert_eq!(tally(&served, &["heavy", "light"]), [20, 20]);
}

#[tokio::test]
async fn least_outstanding_gives_a_heavier_endpoint_more_of_a_concurrent_load() {
    let heavy = delayed("heavy", Duration::from_millis(30)).await;
    let light = delayed("light", Duration::from_millis(30)).await;
    let client = builder()
        .endpoints([
            Endpoint::new(heavy.uri()).weight(3),
            Endpoint::new(light.uri()).weight(1),
        ])
        .build()
        .unwrap();

    let served = call_concurrently(&client, 8, 15).await;

    // Equal latency, so traffic follows the in-flight split, which P2C keeps
    // near 3:1 (6 of 8 on heavy); ignoring weights would give 1:1.
    let [h, l] = tally(&served, &["heavy", "light"]);
    assert_eq!(h + l, 120);
    assert!(h >= 80, "heavy got {h}, light {l}");
}

#[tokio::test]
async fn least_outstanding_sends_most_calls_to_the_faster_instance() {
    let slow = delayed("slow", Duration::from_millis(200)).await;
    let fast = named("fast").await;
    let client = builder()
        .endpoints([slow.uri(), fast.uri()])
        .load_balance(LoadBalance::LeastOutstanding)
        .build()
        .unwrap();

    let served = call_concurrently(&client, 16, 20).await;

    // With two instances P2C always compares both: a call goes to the slow
    // one only on a tie in flight, i.e. about half of each wave of callers
    // coming back from it at once (round robin would give it half of all).
    let [s, f] = tally(&served, &["slow", "fast"]);
    assert_eq!(s + f, 320);
    assert!(f >= 240, "fast got {f}, slow {s}");
}

// -------------------------------------------------------- outlier ejection

#[tokio::test]
async fn a_failing_instance_is_ejected_then_readmitted_after_it_recovers() {
    let bad = failing().await;
    let (g1, g2) = (named("g1").await, named("g2").await);
    let client = builder()
        .endpoints([bad.uri(), g1.uri(), g2.uri()])
        .load_balance(LoadBalance::RoundRobin)
        .no_retry()
        .circuit_breaker(breaker(2, OPEN_FOR))
        .build()
        .unwrap();

    // Round robin: bad takes calls 1 and 4, and opens after the second.
    for _ in 0..6 {
        let _ = client.get("x").send().await;
    }
    assert_eq!(received(&bad).await, 2);
    assert_eq!(
        states(&client),
        [
            CircuitState::Open,
            CircuitState::Closed,
            CircuitState::Closed
        ]
    );
    assert_eq!(client.circuit_state_of(&base(&bad)), CircuitState::Open);
    assert_eq!(client.circuit_state(), CircuitState::Closed, "others serve");

    // Ejected: the others serve every call, evenly.
    let served = call_many(&client, 30).await;
    assert_eq!(tally(&served, &["g1", "g2"]), [15, 15]);
    assert_eq!(received(&bad).await, 2, "no traffic while open");

    // It recovers; once the open duration is over it takes a probe and its share.
    bad.reset().await;
    serve(&bad, ResponseTemplate::new(200).set_body_string("bad")).await;
    // Until the breaker lets a probe through.
    until(|| states(&client)[0] == CircuitState::HalfOpen).await;
    let served = call_many(&client, 30).await;

    assert_eq!(tally(&served, &["bad", "g1", "g2"]), [10, 10, 10]);
    assert_eq!(received(&bad).await, 10);
    assert_eq!(states(&client)[0], CircuitState::Closed);
}

#[tokio::test]
async fn when_every_instance_is_open_calls_fail_at_once_without_io() {
    let (a, b) = (failing().await, failing().await);
    let client = builder()
        .endpoints([a.uri(), b.uri()])
        .load_balance(LoadBalance::RoundRobin)
        .no_retry()
        .circuit_breaker(breaker(2, Duration::from_secs(30)))
        .build()
        .unwrap();
    for _ in 0..4 {
        let err = client.get("x").send().await.unwrap_err();
        assert_eq!(err.status().map(|s| s.as_u16()), Some(503));
    }
    assert_eq!(client.circuit_state(), CircuitState::Open);
    // From here on no I/O is expected: a paused clock shows any wait exactly.
    tokio::time::pause();
    let started = Instant::now();

    let err = client.get("x").send().await.unwrap_err();

    assert_eq!(started.elapsed(), Duration::ZERO, "the call waited");
    assert_eq!(err.kind(), ErrorKind::Rejected);
    assert!(err.is_circuit_open());
    assert_eq!(err.attempts(), 0);
    let wait = err.retry_after().expect("time until a probe");
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_secs(30),
        "{wait:?}"
    );
    assert_eq!(counts(&[&a, &b]).await, [2, 2]);
}

#[tokio::test]
async fn a_retry_goes_to_another_instance() {
    for strategy in [
        LoadBalance::RoundRobin,
        LoadBalance::WeightedRoundRobin,
        LoadBalance::LeastOutstanding,
    ] {
        let bad = failing().await;
        let good = named("good").await;
        // No breaker, so the failing instance stays in rotation; three
        // attempts allowed, so a retry back to it would show.
        let client = builder()
            .endpoints([bad.uri(), good.uri()])
            .load_balance(strategy)
            .retry(fast_retry(3))
            .no_circuit_breaker()
            .build()
            .unwrap();

        let mut retried = 0;
        for _ in 0..40 {
            let resp = client.get("x").send().await.unwrap();
            assert_eq!(resp.text().unwrap(), "good", "{strategy:?}");
            match resp.attempts() {
                1 => {}
                2 => retried += 1,
                n => panic!("{strategy:?}: {n} attempts"),
            }
        }

        // Every call ended on `good` once; `bad` saw only first attempts.
        assert_eq!(received(&good).await, 40, "{strategy:?}");
        assert_eq!(received(&bad).await, retried, "{strategy:?}");
        assert!(retried > 0, "{strategy:?}: bad never chosen first");
    }
}

#[tokio::test]
async fn an_attempt_that_times_out_is_retried_on_another_instance() {
    let stalled = delayed("stalled", Duration::from_secs(3)).await;
    let good = named("good").await;
    let client = builder()
        .endpoints([stalled.uri(), good.uri()])
        .load_balance(LoadBalance::RoundRobin)
        .attempt_timeout(Duration::from_millis(200))
        .retry(fast_retry(2))
        .build()
        .unwrap();

    let resp = client.get("x").send().await.unwrap();

    assert_eq!(resp.text().unwrap(), "good");
    assert_eq!(resp.attempts(), 2);
    assert!(
        resp.elapsed() < Duration::from_secs(2),
        "{:?}",
        resp.elapsed()
    );
}

#[tokio::test]
async fn a_dead_instance_is_retried_around_and_ejected() {
    // Nothing listens on port 1: connections are refused.
    let dead = "http://127.0.0.1:1/";
    let good = named("good").await;
    let client = builder()
        .endpoints([dead.to_owned(), good.uri()])
        .load_balance(LoadBalance::RoundRobin)
        .retry(fast_retry(2))
        .circuit_breaker(breaker(2, Duration::from_secs(30)))
        .build()
        .unwrap();

    let served = call_many(&client, 10).await;

    assert_eq!(served, ["good"; 10]);
    assert_eq!(states(&client), [CircuitState::Open, CircuitState::Closed]);
    assert_eq!(received(&good).await, 10);
}

#[tokio::test]
async fn the_retry_loop_ends_with_the_real_error_once_every_instance_is_open() {
    let (a, b) = (failing().await, failing().await);
    let client = builder()
        .endpoints([a.uri(), b.uri()])
        .retry(fast_retry(5))
        .circuit_breaker(breaker(1, Duration::from_secs(30)))
        .build()
        .unwrap();

    let err = client.get("x").send().await.unwrap_err();

    // One attempt on each, each opening its breaker; then nothing is left.
    assert_eq!(err.attempts(), 2);
    assert_eq!(err.status().map(|s| s.as_u16()), Some(503));
    assert!(!err.is_circuit_open());
    assert_eq!(counts(&[&a, &b]).await, [1, 1]);
    assert_eq!(client.circuit_state(), CircuitState::Open);
}

#[tokio::test]
async fn with_one_instance_a_retry_goes_to_it_again() {
    let server = MockServer::start().await;
    let seq = Sequence::statuses(&[503, 200]);
    Mock::given(any())
        .respond_with(seq.clone())
        .mount(&server)
        .await;
    let client = builder()
        .endpoints([server.uri()])
        .retry(fast_retry(3))
        .build()
        .unwrap();

    let resp = client.get("x").send().await.unwrap();

    assert_eq!(resp.attempts(), 2);
    assert_eq!(seq.served(), 2);
}

// --------------------------------------------------------------- discovery

#[tokio::test]
async fn a_refresh_moves_traffic_to_the_new_endpoint_list() {
    let (a, b, c) = (named("a").await, named("b").await, named("c").await);
    let registry = Registry::new([a.uri()]);
    let client = builder()
        .resolver(registry.resolver())
        .load_balance(LoadBalance::RoundRobin)
        .build()
        .unwrap();
    assert_eq!(call_many(&client, 3).await, ["a", "a", "a"]);

    registry.set([b.uri(), c.uri()]);
    let n = client.refresh_endpoints().await.unwrap();

    assert_eq!(n, 2);
    assert_eq!(urls(&client), [base(&b), base(&c)]);
    let served = call_many(&client, 20).await;
    assert_eq!(tally(&served, &["b", "c"]), [10, 10]);
    assert_eq!(received(&a).await, 3);
}

#[tokio::test]
async fn the_background_refresh_applies_a_new_list() {
    let (a, b) = (named("a").await, named("b").await);
    let registry = Registry::new([a.uri()]);
    let client = builder()
        .resolver(registry.resolver())
        .resolver_refresh(Duration::from_millis(50))
        .build()
        .unwrap();
    // The first call starts the background refresh.
    assert_eq!(call_many(&client, 1).await, ["a"]);

    registry.set([b.uri()]);
    // Until the new list applies.
    until(|| urls(&client) == [base(&b)]).await;

    assert_eq!(call_many(&client, 5).await, ["b"; 5]);
    assert_eq!(received(&a).await, 1);
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_last_list() {
    let (a, b) = (named("a").await, named("b").await);
    let registry = Registry::new([a.uri(), b.uri()]);
    let client = builder()
        .resolver(registry.resolver())
        .load_balance(LoadBalance::RoundRobin)
        .build()
        .unwrap();
    assert_eq!(client.refresh_endpoints().await.unwrap(), 2);

    registry.fail();
    let err = client.refresh_endpoints().await.unwrap_err();

    assert_eq!(err.kind(), ErrorKind::Rejected);
    assert_eq!(urls(&client), [base(&a), base(&b)]);
    let served = call_many(&client, 10).await;
    assert_eq!(tally(&served, &["a", "b"]), [5, 5]);
}

#[tokio::test]
async fn a_resolver_answer_without_a_usable_endpoint_keeps_the_last_list() {
    let a = named("a").await;
    let registry = Registry::new([a.uri()]);
    let client = builder().resolver(registry.resolver()).build().unwrap();
    assert_eq!(client.refresh_endpoints().await.unwrap(), 1);

    registry.set(Vec::<Endpoint>::new());
    let empty = client.refresh_endpoints().await.unwrap_err();
    registry.set([Endpoint::new("not a url"), Endpoint::new(a.uri()).weight(0)]);
    let unusable = client.refresh_endpoints().await.unwrap_err();

    assert_eq!(empty.kind(), ErrorKind::Rejected);
    assert_eq!(unusable.kind(), ErrorKind::Rejected);
    assert_eq!(urls(&client), [base(&a)]);
    assert_eq!(call_many(&client, 2).await, ["a", "a"]);
}

#[tokio::test]
async fn a_resolver_answer_skips_only_its_invalid_endpoints() {
    let (a, b) = (named("a").await, named("b").await);
    let registry = Registry::new([a.uri()]);
    let client = builder().resolver(registry.resolver()).build().unwrap();

    registry.set([
        Endpoint::new("ftp://files.test/"),
        Endpoint::new(a.uri()).weight(0),
        Endpoint::new(b.uri()).weight(2),
    ]);
    let n = client.refresh_endpoints().await.unwrap();

    assert_eq!(n, 1);
    let eps = client.endpoints();
    assert_eq!(eps.len(), 1);
    assert_eq!((eps[0].url.clone(), eps[0].weight), (base(&b), 2));
    assert_eq!(call_many(&client, 2).await, ["b", "b"]);
}

#[tokio::test]
async fn an_endpoint_that_stays_keeps_its_breaker_and_a_removed_one_loses_it() {
    let bad = failing().await;
    let good = named("good").await;
    let registry = Registry::new([bad.uri(), good.uri()]);
    let client = builder()
        .resolver(registry.resolver())
        .load_balance(LoadBalance::RoundRobin)
        .no_retry()
        .circuit_breaker(breaker(2, Duration::from_secs(30)))
        .build()
        .unwrap();
    for _ in 0..4 {
        let _ = client.get("x").send().await;
    }
    assert_eq!(states(&client), [CircuitState::Open, CircuitState::Closed]);

    // Same list: the breaker survives the refresh.
    assert_eq!(client.refresh_endpoints().await.unwrap(), 2);
    assert_eq!(states(&client), [CircuitState::Open, CircuitState::Closed]);

    // Removed, then added back: a fresh, closed breaker.
    registry.set([good.uri()]);
    assert_eq!(client.refresh_endpoints().await.unwrap(), 1);
    registry.set([bad.uri(), good.uri()]);
    assert_eq!(client.refresh_endpoints().await.unwrap(), 2);

    assert_eq!(
        states(&client),
        [CircuitState::Closed, CircuitState::Closed]
    );
    let before = received(&bad).await;
    for _ in 0..4 {
        let _ = client.get("x").send().await;
    }
    assert_eq!(received(&bad).await, before + 2, "back in rotation");
}

#[tokio::test]
async fn the_first_call_waits_for_the_first_resolution() {
    let a = named("a").await;
    let uri = a.uri();
    let asked = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&asked);
    let client = builder()
        .resolver(move || {
            count.fetch_add(1, Ordering::SeqCst);
            let list = vec![Endpoint::new(uri.clone())];
            async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok::<_, ResolveError>(list)
            }
        })
        .build()
        .unwrap();
    assert!(client.endpoints().is_empty(), "not resolved before use");

    let started = Instant::now();
    let resp = client.get("x").send().await.unwrap();

    assert!(started.elapsed() >= Duration::from_millis(100));
    assert_eq!(resp.text().unwrap(), "a");
    assert_eq!(resp.attempts(), 1);
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    assert_eq!(urls(&client), [base(&a)]);
}

#[tokio::test]
async fn a_call_waits_for_the_first_resolution_only_within_its_deadline() {
    let a = named("a").await;
    let uri = a.uri();
    let client = builder()
        .resolver(move || {
            let list = vec![Endpoint::new(uri.clone())];
            async move {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok::<_, ResolveError>(list)
            }
        })
        .build()
        .unwrap();

    let started = Instant::now();
    let err = client
        .get("x")
        .timeout(Duration::from_millis(200))
        .send()
        .await
        .unwrap_err();

    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(190), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    assert_eq!(err.kind(), ErrorKind::Rejected);
    assert_eq!(err.attempts(), 0);
    assert_eq!(received(&a).await, 0);
}

#[tokio::test]
async fn a_failed_first_resolution_fails_calls_at_once() {
    let registry = Registry::default();
    registry.fail();
    let client = builder().resolver(registry.resolver()).build().unwrap();

    let started = Instant::now();
    let err = client.get("x").send().await.unwrap_err();

    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(err.kind(), ErrorKind::Rejected);
    assert!(!err.is_circuit_open());
    assert_eq!(err.attempts(), 0);
    assert!(client.endpoints().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_refresh_that_times_out_keeps_the_last_list() {
    let registry = Registry::new(["http://127.0.0.1:1/"]);
    // The resolver's time limit is the refresh interval, at least 1 s.
    let client = builder()
        .resolver(registry.resolver())
        .resolver_refresh(Duration::from_millis(50))
        .build()
        .unwrap();
    assert_eq!(client.refresh_endpoints().await.unwrap(), 1);

    registry.hang();
    let started = Instant::now();
    let err = client.refresh_endpoints().await.unwrap_err();

    assert_eq!(started.elapsed(), Duration::from_secs(1));
    assert_eq!(err.kind(), ErrorKind::Rejected);
    assert_eq!(urls(&client), [Url::parse("http://127.0.0.1:1/").unwrap()]);
}

#[tokio::test(start_paused = true)]
async fn a_failed_background_refresh_is_retried_sooner_than_the_interval() {
    let registry = Registry::default();
    let client = builder()
        .resolver(registry.resolver())
        .resolver_refresh(Duration::from_secs(60))
        .build()
        .unwrap();
    // The first call starts the background refresh, whose first answer fails.
    assert!(client.get("x").send().await.is_err());
    let started = Instant::now();

    registry.set(["http://127.0.0.1:1/"]);
    // Until the retried resolution.
    until(|| client.endpoints().len() == 1).await;

    assert!(
        started.elapsed() <= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(registry.asked(), 2);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_client_stops_the_background_refresh() {
    let registry = Registry::new(["http://127.0.0.1:1/"]);
    let client = builder()
        .resolver(registry.resolver())
        .resolver_refresh(Duration::from_secs(1))
        .build()
        .unwrap();
    // Starts the background refresh (the endpoint refuses; no matter).
    let _ = client
        .get("x")
        .timeout(Duration::from_millis(100))
        .send()
        .await;
    tokio::time::sleep(Duration::from_millis(5500)).await;
    let running = registry.asked();
    assert!(running >= 5, "refreshed {running} times in 5.5 s");

    drop(client);
    tokio::time::sleep(Duration::from_secs(10)).await;

    assert_eq!(registry.asked(), running);
}

#[tokio::test]
async fn given_endpoints_serve_until_the_resolver_first_answers() {
    let (a, b) = (named("a").await, named("b").await);
    let registry = Registry::new([b.uri()]);
    let client = builder()
        .endpoints([a.uri()])
        .resolver(registry.resolver())
        .build()
        .unwrap();

    assert_eq!(urls(&client), [base(&a)]);
    assert_eq!(client.refresh_endpoints().await.unwrap(), 1);

    assert_eq!(urls(&client), [base(&b)]);
    assert_eq!(call_many(&client, 2).await, ["b", "b"]);
}

#[tokio::test]
async fn a_static_resolver_serves_its_list() {
    let (a, b) = (named("a").await, named("b").await);
    let client = builder()
        .resolver(StaticResolver::new([
            Endpoint::new(a.uri()),
            Endpoint::new(b.uri()).weight(2),
        ]))
        .load_balance(LoadBalance::WeightedRoundRobin)
        .build()
        .unwrap();

    let served = call_many(&client, 9).await;

    assert_eq!(tally(&served, &["a", "b"]), [3, 6]);
    assert_eq!(client.refresh_endpoints().await.unwrap(), 2);
}

#[tokio::test]
async fn in_flight_counts_an_attempt_until_it_ends_or_is_cancelled() {
    let slow = delayed("slow", Duration::from_secs(10)).await;
    let client = builder()
        .endpoints([slow.uri()])
        .total_timeout(Duration::from_secs(20))
        .attempt_timeout(Duration::from_secs(20))
        .read_timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let in_flight = |c: &ApiClient| c.endpoints()[0].in_flight;
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.get("x").send().await }
    });
    // Until the attempt starts.
    until(|| in_flight(&client) == 1).await;

    call.abort();

    assert!(call.await.unwrap_err().is_cancelled());
    assert_eq!(in_flight(&client), 0);
}

// ------------------------------------------------------------------- URLs

#[tokio::test]
async fn paths_and_query_join_onto_each_endpoint_base() {
    let (one, two) = (MockServer::start().await, MockServer::start().await);
    for (server, prefix) in [(&one, "/a"), (&two, "/b")] {
        Mock::given(path(format!("{prefix}/users/1")))
            .and(query_param("q", "x y"))
            .respond_with(ResponseTemplate::new(200))
            .mount(server)
            .await;
    }
    let client = builder()
        // With and without the trailing slash.
        .endpoints([format!("{}/a/", one.uri()), format!("{}/b", two.uri())])
        .load_balance(LoadBalance::RoundRobin)
        .build()
        .unwrap();

    let first = client
        .get("users/1")
        .query(&[("q", "x y")])
        .send()
        .await
        .unwrap();
    let second = client
        .get("users/1")
        .query(&[("q", "x y")])
        .send()
        .await
        .unwrap();

    assert_eq!(
        first.url().as_str(),
        format!("{}/a/users/1?q=x+y", one.uri())
    );
    assert_eq!(
        second.url().as_str(),
        format!("{}/b/users/1?q=x+y", two.uri())
    );
    assert_eq!(counts(&[&one, &two]).await, [1, 1]);
}

#[tokio::test]
async fn a_retry_joins_the_path_and_query_onto_the_next_endpoint() {
    let (one, two) = (MockServer::start().await, MockServer::start().await);
    serve(&one, ResponseTemplate::new(503)).await;
    Mock::given(path("/b/users/1"))
        .and(query_param("q", "1"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&two)
        .await;
    let client = builder()
        .endpoints([format!("{}/a/", one.uri()), format!("{}/b/", two.uri())])
        .load_balance(LoadBalance::RoundRobin)
        .retry(fast_retry(2))
        .build()
        .unwrap();

    let resp = client
        .get("users/1")
        .query(&[("q", "1")])
        .send()
        .await
        .unwrap();

    assert_eq!(resp.attempts(), 2);
    assert_eq!(resp.url().as_str(), format!("{}/b/users/1?q=1", two.uri()));
    let sent = one.received_requests().await.unwrap();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].url.path(), "/a/users/1");
    assert_eq!(sent[0].url.query(), Some("q=1"));
}

#[tokio::test]
async fn an_absolute_url_bypasses_the_balancer() {
    let (a, other) = (named("a").await, named("other").await);
    let client = builder().endpoints([a.uri()]).build().unwrap();

    let resp = client
        .get(format!("{}/direct", other.uri()))
        .send()
        .await
        .unwrap();

    assert_eq!(resp.text().unwrap(), "other");
    assert_eq!(received(&a).await, 0);
}

// ------------------------------------------------------------------ config

#[test]
fn a_base_url_with_endpoints_or_a_resolver_is_a_config_error() {
    let with_endpoints = builder()
        .base_url("http://127.0.0.1:1/")
        .endpoints(["http://127.0.0.1:2/"]);
    let with_resolver = builder()
        .base_url("http://127.0.0.1:1/")
        .resolver(StaticResolver::new(["http://127.0.0.1:2/"]));

    assert_eq!(build_error(with_endpoints), ErrorKind::Config);
    assert_eq!(build_error(with_resolver), ErrorKind::Config);
}

#[test]
fn a_zero_resolver_refresh_is_a_config_error() {
    let zero = builder()
        .resolver(StaticResolver::new(["http://127.0.0.1:1/"]))
        .resolver_refresh(Duration::ZERO);

    assert_eq!(build_error(zero), ErrorKind::Config);
}

#[test]
fn an_invalid_endpoint_is_a_config_error() {
    let cases = [
        Endpoint::new("http://127.0.0.1:1/").weight(0),
        Endpoint::new("not a url"),
        Endpoint::new("ftp://127.0.0.1/"),
        Endpoint::new("mailto:ops@example.com"),
    ];
    for ep in cases {
        let desc = format!("{ep:?}");
        let kind = build_error(builder().endpoints(["http://127.0.0.1:2/"]).endpoints([ep]));
        assert_eq!(kind, ErrorKind::Config, "{desc}");
    }
}

#[test]
fn endpoint_credentials_are_redacted_in_reports_and_debug() {
    let ep = Endpoint::new("http://user:hunter2@127.0.0.1:1/");
    let client = builder().endpoints([ep.clone()]).build().unwrap();

    let reported = client.endpoints()[0].url.to_string();

    assert!(!reported.contains("hunter2"), "{reported}");
    assert!(reported.contains("127.0.0.1:1"), "{reported}");
    assert!(!format!("{ep:?}").contains("hunter2"), "{ep:?}");
    assert!(!format!("{client:?}").contains("hunter2"), "{client:?}");
}

#[test]
fn endpoints_are_reported_with_a_trailing_slash_weight_and_no_load() {
    let client = builder()
        .endpoints(["http://127.0.0.1:1/api"])
        .endpoints([Endpoint::new(Url::parse("http://127.0.0.1:2/").unwrap()).weight(4)])
        .build()
        .unwrap();

    let eps = client.endpoints();

    let seen: Vec<_> = eps
        .iter()
        .map(|e| (e.url.as_str(), e.weight, e.state, e.in_flight))
        .collect();
    assert_eq!(
        seen,
        [
            ("http://127.0.0.1:1/api/", 1, CircuitState::Closed, 0),
            ("http://127.0.0.1:2/", 4, CircuitState::Closed, 0),
        ]
    );
}

// ----------------------------------------------------------------- tracing

#[tokio::test]
async fn the_span_names_the_instance_each_attempt_went_to() {
    let (logs, guard) = capture_traces(tracing::Level::DEBUG);
    let (a, b) = (failing().await, named("b").await);
    let client = builder()
        .endpoints([a.uri(), b.uri()])
        .load_balance(LoadBalance::RoundRobin)
        .retry(fast_retry(2))
        .no_circuit_breaker()
        .build()
        .unwrap();

    // Round robin: the first call goes to `a` and is retried on `b`; the
    // second goes straight to `b`.
    assert_eq!(client.get("x").send().await.unwrap().attempts(), 2);
    assert_eq!(client.get("x").send().await.unwrap().attempts(), 1);
    drop(guard);

    let text = logs.text();
    let (pa, pb) = (port(&a), port(&b));
    let failed: Vec<_> = text
        .lines()
        .filter(|l| l.contains("attempt failed"))
        .collect();
    let succeeded: Vec<_> = text
        .lines()
        .filter(|l| l.contains("attempt succeeded"))
        .collect();
    assert_eq!(failed.len(), 1, "{text}");
    assert_eq!(succeeded.len(), 2, "{text}");
    for line in failed.iter().chain(&succeeded) {
        assert!(line.contains("http.client.request"), "{line}");
        assert!(line.contains("server.address=\"127.0.0.1\""), "{line}");
    }
    // The span's latest value is the instance of the attempt in progress.
    assert_eq!(ports(failed[0]), [pa], "{}", failed[0]);
    assert!(
        failed[0].contains(&format!("url.full=http://127.0.0.1:{pa}/x")),
        "{}",
        failed[0]
    );
    assert_eq!(last_port(succeeded[0]), Some(pb), "{}", succeeded[0]);
    assert_eq!(ports(succeeded[1]), [pb], "{}", succeeded[1]);
}

// ------------------------------------------- weights, one breaker per origin, placeholder URLs

#[tokio::test]
async fn least_outstanding_respects_weights_for_sequential_calls() {
    let (heavy, light) = (named("heavy").await, named("light").await);
    let client = builder()
        .endpoints([
            Endpoint::new(heavy.uri()).weight(3),
            Endpoint::new(light.uri()).weight(1),
        ])
        .build()
        .unwrap();

    let served = call_many(&client, 400).await;

    // Endpoint::weight: "its share of the traffic relative to the others".
    // A 3:1 split gives heavy Binomial(400, 3/4): mean 300, sd 8.7, so
    // P(< 250) < 1e-8; a 1:1 split gives mean 200.
    let [h, l] = tally(&served, &["heavy", "light"]);
    assert!(h >= 250, "heavy got {h}, light {l}");
}

#[tokio::test]
async fn an_absolute_url_on_an_endpoint_uses_that_endpoints_breaker() {
    let a = failing().await;
    let client = builder()
        .endpoints([a.uri()])
        .no_retry()
        .circuit_breaker(breaker(2, Duration::from_secs(30)))
        .build()
        .unwrap();
    let url = Url::parse(&format!("{}/x", a.uri())).unwrap();
    for _ in 0..2 {
        let _ = client.get(url.as_str()).send().await;
    }

    let err = client.get(url.as_str()).send().await.unwrap_err();

    assert!(err.is_circuit_open(), "an open breaker rejected it");
    assert_eq!(client.circuit_state_of(&url), CircuitState::Open);
    assert_eq!(states(&client), [CircuitState::Open]);
}

#[tokio::test]
async fn a_call_rejected_before_choosing_an_endpoint_does_not_name_a_placeholder_host() {
    let a = failing().await;
    let all_open = builder()
        .endpoints([a.uri()])
        .no_retry()
        .circuit_breaker(breaker(1, Duration::from_secs(30)))
        .build()
        .unwrap();
    let _ = all_open.get("x").send().await;
    let no_endpoints = builder()
        .resolver(Registry::default().resolver())
        .build()
        .unwrap();

    let errors = [
        all_open.get("x").send().await.unwrap_err(),
        no_endpoints.get("x").send().await.unwrap_err(),
    ];

    for err in errors {
        assert_eq!(err.kind(), ErrorKind::Rejected);
        let host = err.url().and_then(|u| u.host_str().map(str::to_owned));
        assert_ne!(host.as_deref(), Some("endpoint.invalid"), "{err}");
        assert!(!err.to_string().contains("endpoint.invalid"), "{err}");
    }
}

// ----------------------------------------------------------------- helpers

/// Fast settings like `common::fast_builder`, without a base URL.
fn builder() -> ApiClientBuilder {
    ApiClient::builder()
        .connect_timeout(Duration::from_secs(1))
        .read_timeout(Duration::from_secs(2))
        .attempt_timeout(Duration::from_secs(2))
        .total_timeout(Duration::from_secs(5))
        .retry(
            RetryPolicy::exponential()
                .initial_backoff(Duration::from_millis(1))
                .max_backoff(Duration::from_millis(5))
                .jitter(false),
        )
}

/// Opens after `failures` in a row, for `open`.
fn breaker(failures: u32, open: Duration) -> CircuitBreakerConfig {
    CircuitBreakerConfig::default()
        .consecutive_failures(failures)
        .no_failure_rate()
        .open_duration(open)
}

/// The kind of the error `build()` fails with.
fn build_error(b: ApiClientBuilder) -> ErrorKind {
    b.build().expect_err("build() should fail").kind()
}

async fn serve(server: &MockServer, template: ResponseTemplate) {
    Mock::given(any())
        .respond_with(template)
        .mount(server)
        .await;
}

/// An instance answering 200 with its name as the body.
async fn named(name: &str) -> MockServer {
    delayed(name, Duration::ZERO).await
}

/// An instance answering 200 with its name, after `delay`.
async fn delayed(name: &str, delay: Duration) -> MockServer {
    let server = MockServer::start().await;
    let template = ResponseTemplate::new(200)
        .set_body_string(name)
        .set_delay(delay);
    serve(&server, template).await;
    server
}

/// An instance answering 503.
async fn failing() -> MockServer {
    let server = MockServer::start().await;
    serve(&server, ResponseTemplate::new(503)).await;
    server
}

/// `n` sequential calls, each succeeding; the names of the instances that served them.
async fn call_many(client: &ApiClient, n: usize) -> Vec<String> {
    let mut served = Vec::with_capacity(n);
    for _ in 0..n {
        served.push(client.get("x").send().await.unwrap().text().unwrap());
    }
    served
}

/// `tasks` concurrent callers making `each` sequential calls; the names of
/// the instances that served them.
async fn call_concurrently(client: &ApiClient, tasks: usize, each: usize) -> Vec<String> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let client = client.clone();
        set.spawn(async move { call_many(&client, each).await });
    }
    let mut served = Vec::new();
    while let Some(names) = set.join_next().await {
        served.extend(names.unwrap());
    }
    served
}

/// How many of `served` each name has, in the order of `names`; every entry
/// must be one of them.
fn tally<const N: usize>(served: &[String], names: &[&str; N]) -> [usize; N] {
    let mut counts = [0; N];
    for s in served {
        let i = names
            .iter()
            .position(|n| n == s)
            .unwrap_or_else(|| panic!("unexpected instance {s:?}"));
        counts[i] += 1;
    }
    counts
}

/// Requests each server received.
async fn counts(servers: &[&MockServer]) -> Vec<usize> {
    let mut counts = Vec::new();
    for s in servers {
        counts.push(received(s).await);
    }
    counts
}

/// The URL an endpoint for `server` is reported with.
fn base(server: &MockServer) -> Url {
    Url::parse(&format!("{}/", server.uri())).unwrap()
}

fn port(server: &MockServer) -> u16 {
    server.address().port()
}

fn urls(client: &ApiClient) -> Vec<Url> {
    client.endpoints().into_iter().map(|e| e.url).collect()
}

fn states(client: &ApiClient) -> Vec<CircuitState> {
    client.endpoints().into_iter().map(|e| e.state).collect()
}

/// Every `server.port` value in a trace line, in order (a span field
/// recorded again is appended by the fmt layer).
fn ports(line: &str) -> Vec<u16> {
    line.split("server.port=")
        .skip(1)
        .map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().unwrap()
        })
        .collect()
}

fn last_port(line: &str) -> Option<u16> {
    ports(line).last().copied()
}

/// A service registry the tests change: its answer, and how often it was asked.
#[derive(Clone, Default)]
struct Registry {
    answer: Arc<Mutex<Answer>>,
    asked: Arc<AtomicUsize>,
}

#[derive(Clone, Default)]
enum Answer {
    List(Vec<Endpoint>),
    #[default]
    Fail,
    Hang,
}

impl Registry {
    fn new<E: Into<Endpoint>>(list: impl IntoIterator<Item = E>) -> Self {
        let registry = Self::default();
        registry.set(list);
        registry
    }

    fn set<E: Into<Endpoint>>(&self, list: impl IntoIterator<Item = E>) {
        *self.answer.lock().unwrap() = Answer::List(list.into_iter().map(Into::into).collect());
    }

    /// From now on, resolving fails.
    fn fail(&self) {
        *self.answer.lock().unwrap() = Answer::Fail;
    }

    /// From now on, resolving never answers.
    fn hang(&self) {
        *self.answer.lock().unwrap() = Answer::Hang;
    }

    fn asked(&self) -> usize {
        self.asked.load(Ordering::SeqCst)
    }

    /// A closure resolver reading the registry.
    fn resolver(&self) -> impl Resolver {
        let registry = self.clone();
        move || {
            registry.asked.fetch_add(1, Ordering::SeqCst);
            let answer = registry.answer.lock().unwrap().clone();
            async move {
                match answer {
                    Answer::List(list) => Ok(list),
                    Answer::Fail => Err(ResolveError::from("registry unavailable")),
                    Answer::Hang => std::future::pending().await,
                }
            }
        }
    }
}
