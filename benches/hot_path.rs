//! The per-call bookkeeping of each layer in isolation, and of all together,
//! with a count of heap allocations per call.
//!
//! `cargo bench --bench hot_path`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    missing_docs
)]

use std::alloc::System;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use resilient_http::__bench::{Breaker, Budget, Layers, Permits, classify_status, deadline};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

/// Counts allocations so the bench can show the bookkeeping makes none.
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn hot_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("hot_path");
    group.bench_function("classify_status", |b| {
        b.iter(|| classify_status(black_box(503)));
    });
    group.bench_function("deadline_arithmetic", |b| {
        b.iter(|| deadline(black_box(Duration::from_secs(30)), Duration::from_secs(10)));
    });
    let breaker = Breaker::default();
    group.bench_function("breaker_closed_admit_and_record", |b| {
        b.iter(|| black_box(breaker.success()));
    });
    let open = Breaker::open();
    group.bench_function("breaker_open_reject", |b| {
        b.iter(|| black_box(open.success()));
    });
    let budget = Budget::default();
    group.bench_function("budget_deposit_withdraw", |b| {
        b.iter(|| {
            budget.deposit();
            black_box(budget.withdraw())
        });
    });
    let permits = Permits::default();
    group.bench_function("rate_limit_permit", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(permits.rate().await) });
    });
    group.bench_function("concurrency_permit", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(permits.concurrency().await) });
    });
    group.bench_function("async_baseline", |b| {
        b.to_async(&rt).iter(|| async { black_box(1) });
    });
    let layers = Layers::default();
    group.bench_function("all_layers_one_call", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(layers.one_call().await) });
    });
    group.finish();

    // Heap allocations of the bookkeeping itself, per call.
    let calls = 10_000;
    let region = Region::new(GLOBAL);
    rt.block_on(async {
        for _ in 0..calls {
            assert!(layers.one_call().await);
        }
    });
    let allocs = region.change().allocations;
    println!("all_layers_one_call: {allocs} heap allocations in {calls} calls");
    // README and BENCHMARKS promise no heap allocation per call: hold the
    // bench to it (CI runs it with `-- --test`).
    assert_eq!(
        allocs, 0,
        "the layers' bookkeeping allocated {allocs} times in {calls} calls"
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = hot_path
}
criterion_main!(benches);
