//! The cost of failing fast: a call against an open circuit breaker, and a
//! call refused by a rate limit, neither of which touches the network.
//!
//! `cargo bench --bench fast_fail`

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::hint::black_box;

use criterion::criterion_group;
use criterion::criterion_main;
use resilient_http::{ApiClient, CircuitBreakerConfig, CircuitState, RateLimit};

fn fast_fail(c: &mut criterion::Criterion) {
    let addr = common::start_server(503);
    let base = format!("http://{addr}/api/");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let breaker = ApiClient::builder()
        .base_url(&base)
        .no_retry()
        .circuit_breaker(CircuitBreakerConfig::default().consecutive_failures(1))
        .build()
        .unwrap();
    rt.block_on(async {
        let _ = breaker.get("x").send().await;
    });
    assert_eq!(breaker.circuit_state(), CircuitState::Open);

    let limited = ApiClient::builder()
        .base_url(&base)
        .rate_limit(RateLimit::per_minute(1).burst(1).fail_fast())
        .build()
        .unwrap();
    rt.block_on(async {
        let _ = limited.get("x").send().await;
    });

    let mut group = c.benchmark_group("fast_fail");
    group.bench_function("open_breaker", |b| {
        b.to_async(&rt).iter(|| async {
            let err = breaker.get("users/42").send().await.unwrap_err();
            assert!(err.is_circuit_open());
            black_box(err);
        });
    });
    group.bench_function("rate_limited", |b| {
        b.to_async(&rt).iter(|| async {
            let err = limited.get("users/42").send().await.unwrap_err();
            assert!(err.is_rate_limited());
            black_box(err);
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = fast_fail
}
criterion_main!(benches);
