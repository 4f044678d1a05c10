//! The seeded, countable outcomes of the failure-mix scenarios
//! (`benches/scenarios.rs`), with the client's defaults and 4 attempts, as the
//! bench runs it: counts of calls and requests, never timings. The server is
//! `common::scenario`, on 127.0.0.1; its failures are picked by hit number
//! from a fixed seed, so the calls below meet the same pattern every run.
//! Backoff is shortened to 1..5 ms so the suite stays fast; nothing here
//! depends on it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::scenario::{Behavior, Hold, ScenarioServer};
use common::{fast_builder, until};
use resilient_http::{ApiClient, ApiClientBuilder, CircuitState, RetryPolicy};

/// Our defaults with 4 attempts, as the bench configures it, but backoff
/// 1..5 ms (jitter on, default budget and breaker).
fn four_attempts(uri: &str) -> ApiClientBuilder {
    fast_builder(uri).retry(
        RetryPolicy::exponential()
            .max_attempts(4)
            .initial_backoff(Duration::from_millis(1))
            .max_backoff(Duration::from_millis(5)),
    )
}

#[tokio::test]
async fn flaky_20_percent_with_4_attempts_heals_at_least_99_percent_of_calls() {
    let server = ScenarioServer::start(Behavior::Flaky {
        fail: 0.2,
        seed: 0x5EED_0020,
    })
    .await;
    let client = four_attempts(server.uri()).build().unwrap();
    let calls = 500u64;

    let mut ok = 0u64;
    for _ in 0..calls {
        ok += u64::from(client.get("x").send().await.is_ok());
    }

    // A call fails only when 4 hits in a row do: 0.2^4 = 0.16% of calls.
    // Without retries, 20% would fail.
    let hits = server.counts().hits;
    assert!(ok * 100 >= calls * 99, "{ok} of {calls} calls succeeded");
    // 1 + 0.2 + 0.04 + 0.008 = 1.248 requests a call on average.
    assert!(
        (calls * 12 / 10..=calls * 13 / 10).contains(&hits),
        "{hits} requests for {calls} calls"
    );
    let stats = client.stats();
    assert_eq!(stats.attempts, hits, "every attempt reached the server");
    assert_eq!(stats.retries, hits - calls);
    assert_eq!(stats.succeeded, ok);
    assert_eq!(client.circuit_state(), CircuitState::Closed);
}

#[tokio::test]
async fn an_outage_with_defaults_costs_at_most_30_requests_then_the_breaker_refuses() {
    let server = ScenarioServer::start(Behavior::Outage).await;
    let client = four_attempts(server.uri()).build().unwrap();
    let calls = 200u64;

    let mut refused = 0u64;
    for _ in 0..calls {
        let err = client.get("x").send().await.unwrap_err();
        if err.is_circuit_open() {
            assert_eq!(err.attempts(), 0, "a refused call sends nothing");
            refused += 1;
        } else {
            assert_eq!(err.status().map(|s| s.as_u16()), Some(503));
        }
    }

    // The default breaker opens at 30 failed attempts in a row, or at 20
    // lasting 1 s; the open duration (10 s) outlasts the test.
    let hits = server.counts().hits;
    assert!(
        (20..=30).contains(&hits),
        "{hits} requests reached the server"
    );
    assert!(
        hits * 100 <= calls * 15,
        "{hits} requests for {calls} calls: at most 0.15 a call"
    );
    assert_eq!(client.circuit_state(), CircuitState::Open);
    let stats = client.stats();
    assert_eq!(stats.rejected_circuit_open, refused);
    assert!(refused >= calls - 10, "{refused} calls refused");
    assert_eq!(stats.failed, calls);
}

/// `outage-cached`: reads that a cache saw before the outage are answered
/// from stale entries; the others fail as without a cache.
#[cfg(feature = "cache")]
#[tokio::test]
async fn an_outage_with_a_cache_answers_the_reads_it_saw_before_and_fails_the_others() {
    let server = ScenarioServer::start(Behavior::OutageAfter { healthy: 10 }).await;
    let client = four_attempts(server.uri())
        .cache(resilient_http::Cache::in_memory(100).stale_if_error(Duration::from_secs(300)))
        .build()
        .unwrap();
    for key in 0..10 {
        client.get(format!("x/{key}")).send().await.unwrap();
    }

    let mut stale = 0u64;
    for round in 0..5 {
        for key in 0..20 {
            match client.get(format!("x/{key}")).send().await {
                Ok(resp) => {
                    assert!(resp.is_stale());
                    assert!(key < 10, "round {round}: key {key} was never read");
                    stale += 1;
                }
                Err(err) => assert!(err.status().is_some() || err.is_circuit_open()),
            }
        }
    }

    // Every read of a key seen before the outage, and no other.
    assert_eq!(stale, 5 * 10);
    let stats = client.stats();
    assert_eq!(stats.cache_stale, stale);
    assert_eq!(stats.failed, 5 * 10);
    // The breaker still bounds what the outage costs the server.
    assert!(server.counts().hits <= 10 + 30, "{:?}", server.counts());
}

#[tokio::test]
async fn a_burst_during_pushback_sends_nothing_until_the_retry_after() {
    let server = ScenarioServer::start(Behavior::Pushback {
        retry_after: Duration::from_secs(1),
        // Hits this close to the pause's end are not counted: no timer fires
        // early, but the margin keeps the count free of clock rounding.
        margin: Duration::from_millis(50),
    })
    .await;
    let client = four_attempts(server.uri()).build().unwrap();
    let burst = 20;

    // The first call meets the 429; once its pause is known, a burst starts.
    let first = tokio::spawn({
        let client = client.clone();
        async move { client.get("x").send().await }
    });
    until(|| client.stats().pushback_pauses == 1).await;
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..burst {
        let client = client.clone();
        calls.spawn(async move { client.get("x").send().await });
    }

    let first = first.await.unwrap().unwrap();
    assert_eq!(
        first.attempts(),
        2,
        "the 429, then one retry after the pause"
    );
    while let Some(call) = calls.join_next().await {
        let resp = call.unwrap().unwrap();
        assert_eq!(resp.attempts(), 1, "a burst call waits, it does not fail");
    }
    let counts = server.counts();
    assert_eq!(counts.during_pause, 0, "nothing was sent inside the pause");
    assert_eq!((counts.hits, counts.failed), (burst + 2, 1), "{counts:?}");
    let stats = client.stats();
    assert_eq!(
        (stats.pushback_pauses, stats.rejected_server_pushback),
        (1, 0)
    );
    assert_eq!(stats.succeeded, burst + 1);
}

/// Starts `n` calls at once; returns them and a count of those finished.
fn burst(
    client: &ApiClient,
    n: usize,
) -> (
    Vec<tokio::task::JoinHandle<Result<u32, u32>>>,
    Arc<AtomicUsize>,
) {
    let finished = Arc::new(AtomicUsize::new(0));
    let calls = (0..n)
        .map(|_| {
            let (client, finished) = (client.clone(), Arc::clone(&finished));
            tokio::spawn(async move {
                let outcome = match client.get("x").send().await {
                    Ok(resp) => Ok(resp.attempts()),
                    Err(err) => {
                        assert_eq!(err.status().map(|s| s.as_u16()), Some(503), "{err}");
                        Err(err.attempts())
                    }
                };
                finished.fetch_add(1, Ordering::SeqCst);
                outcome
            })
        })
        .collect();
    (calls, finished)
}

#[tokio::test]
async fn overload_each_call_beyond_capacity_makes_its_4_attempts_and_fails_with_503() {
    // 4 slots held until the gate opens: the other 6 calls find the server
    // full on every attempt. 6 × 4 = 24 failures stay under the breaker's 30.
    let server = ScenarioServer::start(Behavior::Overload {
        capacity: 4,
        hold: Hold::Gate,
    })
    .await;
    let client = four_attempts(server.uri()).build().unwrap();

    let (calls, finished) = burst(&client, 10);
    until(|| finished.load(Ordering::SeqCst) == 6).await;
    server.open_gate();
    let mut attempts_ok = Vec::new();
    let mut attempts_failed = Vec::new();
    for call in calls {
        match call.await.unwrap() {
            Ok(a) => attempts_ok.push(a),
            Err(a) => attempts_failed.push(a),
        }
    }

    assert_eq!(attempts_ok, [1; 4]);
    assert_eq!(attempts_failed, [4; 6]);
    let counts = server.counts();
    assert_eq!(
        (
            counts.hits,
            counts.ok,
            counts.failed,
            counts.peak_in_service
        ),
        (28, 4, 24, 4)
    );
    let stats = client.stats();
    assert_eq!((stats.attempts, stats.retries), (28, 18));
    assert_eq!(client.circuit_state(), CircuitState::Closed);
}

#[tokio::test]
async fn overload_max_concurrency_keeps_a_burst_within_the_servers_capacity() {
    let server = ScenarioServer::start(Behavior::Overload {
        capacity: 4,
        hold: Hold::For(Duration::from_millis(5)),
    })
    .await;
    let client = four_attempts(server.uri())
        .max_concurrency(4)
        .build()
        .unwrap();

    let (calls, _) = burst(&client, 40);
    for call in calls {
        assert_eq!(call.await.unwrap(), Ok(1), "one attempt, no 503");
    }

    let counts = server.counts();
    assert_eq!((counts.hits, counts.ok, counts.failed), (40, 40, 0));
}
