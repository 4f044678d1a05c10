//! Throughput of raw reqwest, reqwest with the timeouts a resilient client
//! sets, and `ApiClient` (defaults, every layer on, and balanced over three
//! endpoints), at concurrency 1 and 32, against the same in-process server, on
//! a current-thread runtime and on a multi-thread one (one worker, as a
//! service's runtime runs on a busy 2-core machine; the server has its own
//! thread). The three endpoints are three listeners of that one server, so
//! the balanced client costs the server what the others do.
//!
//! `cargo bench --bench overhead`; one runtime only:
//! `cargo bench --bench overhead -- multi_thread`

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Throughput, criterion_group, criterion_main};
use resilient_http::{ApiClient, RateLimit};
use tokio::runtime::Runtime;

/// The runtimes measured: named, built.
fn runtimes() -> [(&'static str, Runtime); 2] {
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    [("current_thread", current), ("multi_thread", multi)]
}

#[derive(Clone)]
enum Subject {
    Raw(reqwest::Client, String),
    Api(ApiClient),
}

impl Subject {
    async fn call(&self) {
        match self {
            Self::Raw(client, url) => {
                let resp = client.get(url).send().await.unwrap();
                assert!(resp.status().is_success());
                black_box(resp.bytes().await.unwrap());
            }
            Self::Api(client) => {
                black_box(client.get("users/42").send().await.unwrap());
            }
        }
    }
}

/// `bases[0]` is the one base URL; all of them are the balanced client's
/// endpoints.
fn subjects(bases: &[String]) -> Vec<(&'static str, Subject)> {
    let base = &bases[0];
    // The same wire traffic for all: raw reqwest sends the User-Agent our
    // client sends by default, so the comparison measures the layers only.
    let raw = common::reqwest_builder()
        .user_agent(concat!("resilient-http/", env!("CARGO_PKG_VERSION")))
        .tcp_nodelay(true)
        .build()
        .unwrap();
    // What the timers alone cost: the timeouts our defaults set, given to
    // reqwest (its total `timeout` is a timer per request, like ours).
    let timeouts = common::reqwest_builder()
        .user_agent(concat!("resilient-http/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(2))
        .read_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .build()
        .unwrap();
    let defaults = ApiClient::builder().base_url(base).build().unwrap();
    let every_layer = ApiClient::builder()
        .base_url(base)
        .rate_limit(RateLimit::per_second(1_000_000).burst(1_000_000))
        .max_concurrency(1024)
        .build()
        .unwrap();
    // Defaults but three endpoints (least outstanding, power of two choices):
    // what choosing an endpoint per attempt and its per-endpoint breaker cost.
    let balanced = ApiClient::builder().endpoints(bases).build().unwrap();
    vec![
        ("raw_reqwest", Subject::Raw(raw, format!("{base}users/42"))),
        (
            "reqwest_timeouts",
            Subject::Raw(timeouts, format!("{base}users/42")),
        ),
        ("api_defaults", Subject::Api(defaults)),
        ("api_all_layers", Subject::Api(every_layer)),
        ("api_balanced_3", Subject::Api(balanced)),
    ]
}

fn overhead(c: &mut criterion::Criterion) {
    let bases: Vec<String> = common::start_listeners(200, 3)
        .into_iter()
        .map(|addr| format!("http://{addr}/api/"))
        .collect();
    for (runtime, rt) in runtimes() {
        for concurrency in [1usize, 32] {
            let mut group = c.benchmark_group(format!("overhead/{runtime}/c{concurrency}"));
            group.throughput(Throughput::Elements(concurrency as u64));
            // Fresh clients per runtime: a pool's connections belong to the
            // runtime that opened them.
            for (name, subject) in rt.block_on(async { subjects(&bases) }) {
                // Warm the pool so every subject starts with open connections.
                rt.block_on(async {
                    for _ in 0..concurrency {
                        subject.call().await;
                    }
                });
                group.bench_function(BenchmarkId::from_parameter(name), |b| {
                    b.to_async(&rt).iter(|| {
                        let subject = subject.clone();
                        async move {
                            if concurrency == 1 {
                                subject.call().await;
                            } else {
                                let mut set = tokio::task::JoinSet::new();
                                for _ in 0..concurrency {
                                    let s = subject.clone();
                                    set.spawn(async move { s.call().await });
                                }
                                while let Some(r) = set.join_next().await {
                                    r.unwrap();
                                }
                            }
                        }
                    });
                });
            }
            group.finish();
        }
    }
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = overhead
}
criterion_main!(benches);
