//! Failure mixes against the peers: `ApiClient` beside reqwest-middleware +
//! reqwest-retry and reqwest 0.13's built-in retry, one after another against
//! the same in-process server on 127.0.0.1, in one run.
//!
//! ```sh
//! cargo bench --bench scenarios          # the full run (release), about two minutes
//! cargo test --bench scenarios           # a smoke run (a few dozen calls a scenario)
//! SCENARIOS_ONLY=outage,flaky-50 cargo bench --bench scenarios   # just these
//! ```
//!
//! # Subjects
//!
//! Each is configured as a user would, with 4 attempts at most (3 retries)
//! and the same backoff where the client has one: 100 ms doubling, capped at
//! 5 s, full jitter (our defaults).
//!
//! - `resilient-http`: `ApiClient` with its defaults (retry budget, circuit
//!   breaker, pushback) and `RetryPolicy::exponential().max_attempts(4)`.
//! - `resilient-http, no breaker`: the same with `no_circuit_breaker()`, to
//!   tell what the breaker does from what the retry budget does.
//! - `reqwest-retry`: reqwest-middleware 0.5 + reqwest-retry 0.9
//!   `RetryTransientMiddleware`, `ExponentialBackoff` with `retry_bounds(100 ms,
//!   5 s)` and 3 retries (its default jitter is full jitter too).
//! - `reqwest-builtin`: reqwest 0.13's `reqwest::retry::for_host("127.0.0.1")`
//!   with 3 retries per request, retrying 5xx, 408, 429 and transport errors,
//!   and its default retry budget (20% extra load). It has no backoff.
//!
//! - `resilient-http, cache (stale-if-error)` (`outage-cached` only, feature
//!   `cache`): `resilient-http` with
//!   `.cache(Cache::in_memory(10_000).stale_if_error(300 s))`.
//!
//! Every subject is built fresh for each scenario (new pool, budget, breaker).
//!
//! # Scenarios
//!
//! | scenario | server | load |
//! |---|---|---|
//! | `outage` | 503 to everything | closed loop |
//! | `flaky-10` .. `flaky-50` | 503 to a seeded share of hits (10, 20, 30, 50%): the same hits for every subject | closed loop |
//! | `brownout` | 10% of hits (seeded) answered after 500 ms | closed loop |
//! | `recovery` | 503 for 2 s, then healthy | open loop, 500 calls/s for 14 s |
//! | `pushback` | the first hit gets 429 `Retry-After: 1`, the rest 200 | closed loop |
//! | `overload` | at most 8 requests in service (10 ms each, 800/s); 503 at once beyond | open loop, 1,200 calls/s for 3 s |
//! | `slow-tail` | 2% of hits (seeded) answered after 200 ms, the rest after ~1 ms | closed loop, 4,000 calls |
//! | `outage-cached` | healthy for 2,000 reads (not measured), then 503 to everything; each read is of one of 1,000 keys, key `k` about as popular as `1 / (k + 1)` ([`Keys`]) | closed loop, 32 tasks for 5 s |
//!
//! | `overload-adaptive` | at most K = 16 requests in service (5 ms each), 16 more queued, 503 at once beyond 2K = 32 | 64 tasks in a closed loop for 20 s |
//!
//! `overload-adaptive` runs our client alone too: with
//! `AdaptiveConcurrency::default()` and with fixed `max_concurrency` limits
//! of 8, 16, 24, 32 (2K) and 64 (one slot per task: no limit in effect). The
//! goals: the adaptive limit's median over the last 5 s within [0.7K, 1.3K],
//! goodput (successful calls per second) at least 90% of the best fixed
//! limit's, p99 below the fixed limit of 2K's. (In a closed loop a fixed
//! limit of 2K never overflows the server's 2K places, and every limit that
//! keeps the server busy gives the same mean latency, tasks / goodput
//! (Little's law): only the limit of 64 shows what overflowing costs.)
//!
//! `outage-cached` runs our client alone, without and with a cache: its `ok %`
//! is the share of reads a stale entry answered during the outage.
//!
//! `slow-tail` runs our client alone, against itself: `resilient-http`
//! (no hedging) as the baseline and `resilient-http, hedged` with
//! `Hedging::percentile(0.95)` (one hedge at the endpoint's p95). The goal:
//! p99 at least 5x lower for at most 10% more requests at the server; the
//! run prints both ratios.
//!
//! Closed loop: 32 tasks make 1,000 calls (`outage`, `pushback`) or 2,000
//! calls between them, each task starting its next call when the last ends.
//! Open loop: calls start at a fixed rate whatever happens to earlier ones.
//!
//! # Columns
//!
//! - `ok %`: calls that ended with a 2xx response.
//! - `req/call`: requests the server received per call (retries included).
//! - `p50`, `p99`: latency per call, retries and waits included.
//! - `cpu/call`: CPU time of the whole process but the server's thread,
//!   per call (from `/proc/self/task/*/schedstat`; `-` where unreadable). It
//!   includes the load generator, and it is lower when the loop is busy
//!   (wake-ups are shared by many requests) than when most tasks sleep in a
//!   backoff: compare it within a scenario whose subjects keep alike busy
//!   (`brownout`), and see the `overhead` bench for the cost of a call.
//! - `note`: `recovery`: time from the server's recovery to the first 100 ms
//!   window of calls (by start time) of which 99% succeed; `pushback`:
//!   requests that reached the server within the second after the 429 (the
//!   429 itself not counted; requests already on their way count);
//!   `overload`: 503s the server answered. For our clients, the calls the
//!   circuit breaker refused without sending anything.
//!
//! The server runs on its own thread (`current_thread` runtime), the clients
//! on a multi-thread runtime with one worker: 2 busy threads for 2 cores.
//! The last line of stdout is one JSON object with every number.
//!
//! Under `cargo test` (no `--bench` argument; `.ci/run` runs every bench so)
//! the same code runs a smoke version, about 6 s: 32 calls a closed-loop
//! scenario, backoff 10 ms..500 ms, 100 ms answers in `brownout`, a 100 ms
//! outage and 200 ms after it in `recovery`, 200 ms of `overload`. Its
//! numbers only show that every scenario runs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    missing_docs
)]

mod common;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use common::scenario::{Behavior, Counts, ScenarioServer};
use reqwest_middleware::ClientWithMiddleware;
use reqwest_retry::RetryTransientMiddleware;
use reqwest_retry::policies::ExponentialBackoff;
use resilient_http::{AdaptiveConcurrency, ApiClient, ClientStats, Hedging, RetryPolicy};
use serde_json::{Value, json};

/// Attempts per call at most, first included (3 retries), for every subject.
const MAX_ATTEMPTS: u32 = 4;
/// Backoff bounds for the subjects that have a backoff: our defaults.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));
/// The same, in the smoke run (only its speed matters there).
const SMOKE_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_millis(500));
/// The windows in which `recovery` judges the success rate.
const WINDOW: Duration = Duration::from_millis(100);
/// The share of a window's calls that must succeed for `recovery` to count.
const RECOVERED: f64 = 0.99;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    Ours,
    OursNoBreaker,
    Middleware,
    Builtin,
    /// Ours with `Hedging::percentile(0.95)` (the tail scenarios only).
    OursHedged,
    /// Ours with `AdaptiveConcurrency::default()`.
    OursAdaptive,
    /// Ours with `max_concurrency(n)`.
    OursFixed(usize),
    /// Ours with a response cache that answers from stale entries for 5
    /// minutes after a failure (`outage-cached` only).
    #[cfg(feature = "cache")]
    OursCached,
}

impl Peer {
    const ALL: [Self; 4] = [
        Self::Ours,
        Self::OursNoBreaker,
        Self::Middleware,
        Self::Builtin,
    ];

    fn name(self) -> String {
        match self {
            Self::Ours => "resilient-http".into(),
            Self::OursNoBreaker => "resilient-http, no breaker".into(),
            Self::Middleware => "reqwest-retry".into(),
            Self::Builtin => "reqwest-builtin".into(),
            Self::OursHedged => "resilient-http, hedged".into(),
            Self::OursAdaptive => "resilient-http, adaptive limit".into(),
            Self::OursFixed(n) => format!("resilient-http, max_concurrency({n})"),
            #[cfg(feature = "cache")]
            Self::OursCached => "resilient-http, cache (stale-if-error)".into(),
        }
    }
}

/// One client under test, built fresh for every scenario.
enum Subject {
    Ours(ApiClient),
    Middleware(ClientWithMiddleware, String),
    Builtin(reqwest::Client, String),
}

impl Subject {
    fn new(peer: Peer, base: &str, backoff: (Duration, Duration)) -> Self {
        let url = format!("{base}x");
        match peer {
            Peer::Ours
            | Peer::OursNoBreaker
            | Peer::OursHedged
            | Peer::OursAdaptive
            | Peer::OursFixed(_) => Self::ours(peer, base, backoff),
            #[cfg(feature = "cache")]
            Peer::OursCached => Self::ours(peer, base, backoff),
            Peer::Middleware => {
                let policy = ExponentialBackoff::builder()
                    .retry_bounds(backoff.0, backoff.1)
                    .build_with_max_retries(MAX_ATTEMPTS - 1);
                let inner = reqwest_builder().build().expect("reqwest client");
                let client = reqwest_middleware::ClientBuilder::new(inner)
                    .with(RetryTransientMiddleware::new_with_policy(policy))
                    .build();
                Self::Middleware(client, url)
            }
            Peer::Builtin => {
                let policy = reqwest::retry::for_host("127.0.0.1")
                    .max_retries_per_request(MAX_ATTEMPTS - 1)
                    .classify_fn(|rr| match rr.status() {
                        Some(s) if s.is_server_error() || s == 408 || s == 429 => rr.retryable(),
                        None => rr.retryable(),
                        Some(_) => rr.success(),
                    });
                let client = reqwest_builder()
                    .retry(policy)
                    .build()
                    .expect("reqwest client");
                Self::Builtin(client, url)
            }
        }
    }

    /// Our client, as `peer` configures it.
    fn ours(peer: Peer, base: &str, backoff: (Duration, Duration)) -> Self {
        let builder = ApiClient::builder().base_url(base).retry(
            RetryPolicy::exponential()
                .max_attempts(MAX_ATTEMPTS)
                .initial_backoff(backoff.0)
                .max_backoff(backoff.1),
        );
        let builder = match peer {
            Peer::OursNoBreaker => builder.no_circuit_breaker(),
            Peer::OursHedged => builder.hedging(Hedging::percentile(0.95)),
            Peer::OursAdaptive => builder.adaptive_concurrency(AdaptiveConcurrency::default()),
            Peer::OursFixed(n) => builder.max_concurrency(n),
            #[cfg(feature = "cache")]
            Peer::OursCached => builder.cache(
                resilient_http::Cache::in_memory(10_000).stale_if_error(Duration::from_secs(300)),
            ),
            _ => builder,
        };
        Self::Ours(builder.build().expect("resilient-http client"))
    }

    /// One logical GET (of `x`, or of `x/<key>`: our client only); whether
    /// it ended with a 2xx (the body read to the end).
    async fn call(&self, key: Option<u64>) -> bool {
        let resp = match self {
            Self::Ours(client) => {
                let request = match key {
                    None => client.get("x"),
                    Some(key) => client.get(format!("x/{key}")),
                };
                return request.send().await.is_ok();
            }
            Self::Middleware(client, url) => client.get(url).send().await.ok(),
            Self::Builtin(client, url) => client.get(url).send().await.ok(),
        };
        match resp {
            Some(resp) if resp.status().is_success() => resp.bytes().await.is_ok(),
            _ => false,
        }
    }
}

/// Where the peers' reqwest clients start: the benches' raw reqwest builder
/// (a crypto provider where reqwest is built without its own) with no proxy,
/// so loopback traffic stays here.
fn reqwest_builder() -> reqwest::ClientBuilder {
    common::reqwest_builder().no_proxy()
}

/// One finished call: when it started (after the run's start), how long it
/// took, and whether it succeeded.
#[derive(Debug, Clone, Copy)]
struct Call {
    start: Duration,
    latency: Duration,
    ok: bool,
}

/// How calls are offered.
#[derive(Debug, Clone, Copy)]
enum Load {
    /// `tasks` tasks make `calls` calls between them, one after another.
    Closed { calls: usize, tasks: usize },
    /// A call starts every `1 / rate` seconds for `length`.
    Open { rate: f64, length: Duration },
    /// `tasks` tasks make calls one after another for `length`.
    ClosedFor { tasks: usize, length: Duration },
    /// `warm_up` calls by 32 tasks against a healthy server (not measured),
    /// then `tasks` tasks make calls for `length`; each call reads one of
    /// `keys` keys ([`Keys`]).
    Reads {
        keys: u64,
        warm_up: usize,
        tasks: usize,
        length: Duration,
    },
}

/// Which key each call reads: call `n` (counted over the warm-up and the
/// run) reads key `floor(keys^u) - 1` for `u` uniform in `[0, 1)` from a
/// seeded hash of `n`, so key `k` is read about as often as `1 / (k + 1)`
/// (a Zipf-like popularity) and every subject reads the same keys in order.
#[derive(Debug, Clone)]
struct Keys {
    count: u64,
    next: Arc<std::sync::atomic::AtomicU64>,
}

impl Keys {
    const SEED: u64 = 0x5EED_CAC4;

    fn new(count: u64) -> Self {
        Self {
            count,
            next: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        }
    }

    fn next_key(&self) -> u64 {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let unit =
            (common::scenario::splitmix64(Self::SEED ^ n) >> 11) as f64 / (1u64 << 53) as f64;
        ((self.count as f64).powf(unit) as u64).clamp(1, self.count) - 1
    }
}

async fn closed_for(
    subject: Arc<Subject>,
    tasks: usize,
    length: Duration,
    t0: Instant,
    keys: Option<&Keys>,
) -> Vec<Call> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let (subject, keys) = (Arc::clone(&subject), keys.cloned());
        set.spawn(async move {
            let mut done = Vec::new();
            while t0.elapsed() < length {
                let started = Instant::now();
                let ok = subject.call(keys.as_ref().map(Keys::next_key)).await;
                done.push(Call {
                    start: started - t0,
                    latency: started.elapsed(),
                    ok,
                });
            }
            done
        });
    }
    let mut all = Vec::new();
    while let Some(done) = set.join_next().await {
        all.extend(done.expect("call task"));
    }
    all
}

/// Samples `client.concurrency_limit()` every 10 ms until `stop`; returns
/// (time after `t0`, limit) pairs.
async fn sample_limit(
    client: ApiClient,
    t0: Instant,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<(Duration, usize)> {
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        tick.tick().await;
        if let Some(limit) = client.concurrency_limit() {
            samples.push((t0.elapsed(), limit));
        }
    }
    samples
}

async fn closed_loop(
    subject: Arc<Subject>,
    calls: usize,
    tasks: usize,
    t0: Instant,
    keys: Option<&Keys>,
) -> Vec<Call> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let (subject, next, keys) = (Arc::clone(&subject), Arc::clone(&next), keys.cloned());
        set.spawn(async move {
            let mut done = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < calls {
                let started = Instant::now();
                let ok = subject.call(keys.as_ref().map(Keys::next_key)).await;
                done.push(Call {
                    start: started - t0,
                    latency: started.elapsed(),
                    ok,
                });
            }
            done
        });
    }
    let mut all = Vec::with_capacity(calls);
    while let Some(done) = set.join_next().await {
        all.extend(done.expect("call task"));
    }
    all
}

async fn open_loop(subject: Arc<Subject>, rate: f64, length: Duration, t0: Instant) -> Vec<Call> {
    let done = Arc::new(Mutex::new(Vec::new()));
    let mut set = tokio::task::JoinSet::new();
    let mut spawned = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let now = t0.elapsed();
        if now >= length {
            break;
        }
        let due = (now.as_secs_f64() * rate) as u64;
        while spawned < due {
            spawned += 1;
            let (subject, done) = (Arc::clone(&subject), Arc::clone(&done));
            set.spawn(async move {
                let started = Instant::now();
                let ok = subject.call(None).await;
                let call = Call {
                    start: started - t0,
                    latency: started.elapsed(),
                    ok,
                };
                done.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(call);
            });
        }
        while set.try_join_next().is_some() {}
    }
    while set.join_next().await.is_some() {}
    std::mem::take(&mut *done.lock().unwrap_or_else(PoisonError::into_inner))
}

/// The time from `healthy` (after the run's start) to the start of the first
/// [`WINDOW`] of calls, by start time, of which [`RECOVERED`] succeeded.
fn recovery_time(calls: &[Call], healthy: Duration) -> Option<Duration> {
    let first = (healthy.as_nanos() / WINDOW.as_nanos()) as usize;
    let last = calls
        .iter()
        .map(|c| (c.start.as_nanos() / WINDOW.as_nanos()) as usize)
        .max()?;
    let mut windows = vec![(0usize, 0usize); last + 1];
    for c in calls {
        let w = &mut windows[(c.start.as_nanos() / WINDOW.as_nanos()) as usize];
        w.0 += 1;
        w.1 += usize::from(c.ok);
    }
    (first..=last)
        .find(|&w| windows[w].0 > 0 && windows[w].1 as f64 >= RECOVERED * windows[w].0 as f64)
        .map(|w| WINDOW * (w - first) as u32)
}

#[derive(Debug, Clone, Copy)]
struct Scenario {
    name: &'static str,
    behavior: Behavior,
    load: Load,
    /// The `recovery` scenario's outage length.
    healthy_after: Option<Duration>,
    /// The subjects that run it.
    peers: &'static [Peer],
}

/// What the table and the JSON line show for one subject in one scenario.
#[derive(Debug)]
struct Row {
    scenario: &'static str,
    peer: Peer,
    calls: usize,
    ok_pct: f64,
    requests_per_call: f64,
    p50: Duration,
    p99: Duration,
    cpu_per_call: Option<Duration>,
    wall: Duration,
    counts: Counts,
    /// Our clients' own counters.
    stats: Option<ClientStats>,
    /// `recovery` only: the time to recover, `None` when the run ended first.
    recovery: Recovery,
    /// Successful calls per second of the run.
    goodput: f64,
    /// The median concurrency limit over the last 5 s (or last quarter) of
    /// the run, where the client has a limit.
    limit_median: Option<usize>,
}

/// The outcome of the `recovery` scenario's measure.
#[derive(Debug, Clone, Copy)]
enum Recovery {
    /// Not the `recovery` scenario.
    NotMeasured,
    /// The first window of calls that succeeded again started this long
    /// after the server recovered.
    After(Duration),
    /// No such window before the run ended.
    NotInTheRun,
}

impl Row {
    fn note(&self) -> String {
        let mut notes = Vec::new();
        match self.scenario {
            "recovery" => notes.push(match self.recovery {
                Recovery::After(t) => format!("recovered after {} ms", t.as_millis()),
                Recovery::NotMeasured | Recovery::NotInTheRun => "not recovered in the run".into(),
            }),
            "pushback" => notes.push(format!(
                "requests inside the pause: {}",
                self.counts.during_pause
            )),
            "overload" => notes.push(format!("503s: {}", self.counts.failed)),
            "overload-adaptive" => {
                notes.push(format!("goodput {:.0}/s", self.goodput));
                notes.push(format!("503s: {}", self.counts.failed));
                if let Some(limit) = self.limit_median {
                    notes.push(format!("limit median (last 5 s) {limit}"));
                }
            }
            _ => {}
        }
        if let Some(refused) = self.stats.map(|s| s.rejected_circuit_open)
            && refused > 0
        {
            notes.push(format!("breaker refused {refused} calls"));
        }
        if let Some(stats) = self.stats
            && stats.cache_stale > 0
        {
            notes.push(format!("stale answers: {}", stats.cache_stale));
        }
        if let Some(stats) = self.stats
            && stats.hedges > 0
        {
            notes.push(format!(
                "hedges: {} sent, {} won",
                stats.hedges, stats.hedges_won
            ));
        }
        notes.join("; ")
    }

    fn json(&self) -> Value {
        let ms = |d: Duration| (d.as_secs_f64() * 1e5).round() / 100.0;
        json!({
            "scenario": self.scenario,
            "client": self.peer.name(),
            "calls": self.calls,
            "ok_pct": (self.ok_pct * 100.0).round() / 100.0,
            "server_requests_per_call": (self.requests_per_call * 1000.0).round() / 1000.0,
            "p50_ms": ms(self.p50),
            "p99_ms": ms(self.p99),
            "cpu_us_per_call": self.cpu_per_call.map(|d| (d.as_secs_f64() * 1e7).round() / 10.0),
            "wall_ms": ms(self.wall),
            "server_requests": self.counts.hits,
            "server_non_2xx": self.counts.failed,
            "requests_during_pause": self.counts.during_pause,
            "recovery_ms": match self.recovery {
                Recovery::After(t) => json!(t.as_millis()),
                Recovery::NotInTheRun => json!("not recovered"),
                Recovery::NotMeasured => Value::Null,
            },
            "breaker_refused": self.stats.map(|s| s.rejected_circuit_open),
            "goodput_per_s": self.goodput.round(),
            "limit_median": self.limit_median,
            "hedges": self.stats.map(|s| s.hedges),
            "hedges_won": self.stats.map(|s| s.hedges_won),
            "pushback_pauses": self.stats.map(|s| s.pushback_pauses),
            "cache_stale": self.stats.map(|s| s.cache_stale),
        })
    }
}

/// The nearest-rank percentile `p` (0..=100) of sorted latencies.
fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted[rank - 1]
}

async fn run(
    server: &ScenarioServer,
    scenario: &Scenario,
    peer: Peer,
    backoff: (Duration, Duration),
) -> Row {
    let subject = Arc::new(Subject::new(peer, &server.base(), backoff));
    let keys = match scenario.load {
        Load::Reads { keys, warm_up, .. } => {
            let keys = Keys::new(keys);
            server.set(Behavior::Healthy);
            closed_loop(
                Arc::clone(&subject),
                warm_up,
                32,
                Instant::now(),
                Some(&keys),
            )
            .await;
            Some(keys)
        }
        _ => None,
    };
    let cpu0 = server.client_cpu();
    let t0 = Instant::now();
    server.set(match (scenario.behavior, scenario.healthy_after) {
        (Behavior::Recovery { .. }, Some(outage)) => Behavior::Recovery {
            healthy_at: t0 + outage,
        },
        (behavior, _) => behavior,
    });
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let limit_task = match &*subject {
        Subject::Ours(client) => Some(tokio::spawn(sample_limit(
            client.clone(),
            t0,
            Arc::clone(&stop),
        ))),
        _ => None,
    };
    let calls = match scenario.load {
        Load::Closed { calls, tasks } => {
            closed_loop(Arc::clone(&subject), calls, tasks, t0, None).await
        }
        Load::Open { rate, length } => open_loop(Arc::clone(&subject), rate, length, t0).await,
        Load::ClosedFor { tasks, length } => {
            closed_for(Arc::clone(&subject), tasks, length, t0, None).await
        }
        Load::Reads { tasks, length, .. } => {
            closed_for(Arc::clone(&subject), tasks, length, t0, keys.as_ref()).await
        }
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let samples = match limit_task {
        Some(task) => task.await.unwrap_or_default(),
        None => Vec::new(),
    };
    let stats = match &*subject {
        Subject::Ours(client) => Some(client.stats()),
        _ => None,
    };
    let wall = t0.elapsed();
    let counts = server.counts();
    let cpu = server
        .client_cpu()
        .zip(cpu0)
        .map(|(after, before)| after.saturating_sub(before));
    let n = calls.len().max(1);
    let ok = calls.iter().filter(|c| c.ok).count();
    let mut latencies: Vec<_> = calls.iter().map(|c| c.latency).collect();
    latencies.sort_unstable();
    // The last 5 s, or the last quarter of a shorter run.
    let tail_from = wall.saturating_sub(Duration::from_secs(5).min(wall / 4));
    let mut tail: Vec<usize> = samples
        .iter()
        .filter(|(t, _)| *t >= tail_from)
        .map(|(_, l)| *l)
        .collect();
    tail.sort_unstable();
    Row {
        scenario: scenario.name,
        peer,
        calls: calls.len(),
        ok_pct: 100.0 * ok as f64 / n as f64,
        requests_per_call: counts.hits as f64 / n as f64,
        p50: percentile(&latencies, 50),
        p99: percentile(&latencies, 99),
        cpu_per_call: cpu.map(|c| c / n as u32),
        wall,
        counts,
        stats,
        goodput: ok as f64 / wall.as_secs_f64().max(1e-9),
        limit_median: tail.get(tail.len() / 2).copied(),
        recovery: match scenario.healthy_after {
            None => Recovery::NotMeasured,
            Some(healthy) => {
                recovery_time(&calls, healthy).map_or(Recovery::NotInTheRun, Recovery::After)
            }
        },
    }
}

#[allow(clippy::too_many_lines)]
fn scenarios(full: bool) -> Vec<Scenario> {
    let closed = |calls: usize| Load::Closed {
        calls: if full { calls } else { 32 },
        tasks: if full { 32 } else { 16 },
    };
    let flaky = |name, fail, seed| Scenario {
        name,
        behavior: Behavior::Flaky { fail, seed },
        load: closed(2000),
        healthy_after: None,
        peers: &Peer::ALL,
    };
    let (outage, after) = if full {
        (Duration::from_secs(2), Duration::from_secs(12))
    } else {
        (Duration::from_millis(100), Duration::from_millis(200))
    };
    vec![
        Scenario {
            name: "outage",
            behavior: Behavior::Outage,
            load: closed(1000),
            healthy_after: None,
            peers: &Peer::ALL,
        },
        flaky("flaky-10", 0.1, 0x5EED_0010),
        flaky("flaky-20", 0.2, 0x5EED_0020),
        flaky("flaky-30", 0.3, 0x5EED_0030),
        flaky("flaky-50", 0.5, 0x5EED_0050),
        Scenario {
            name: "brownout",
            behavior: Behavior::Brownout {
                slow: 0.1,
                delay: Duration::from_millis(if full { 500 } else { 100 }),
                seed: 0x5EED_B0B0,
            },
            load: closed(2000),
            healthy_after: None,
            peers: &Peer::ALL,
        },
        Scenario {
            name: "recovery",
            // `healthy_at` is set when the run starts: `healthy_after` later.
            behavior: Behavior::Recovery {
                healthy_at: Instant::now(),
            },
            load: Load::Open {
                rate: if full { 500.0 } else { 200.0 },
                length: outage + after,
            },
            healthy_after: Some(outage),
            peers: &Peer::ALL,
        },
        Scenario {
            name: "pushback",
            behavior: Behavior::Pushback {
                retry_after: Duration::from_secs(1),
            },
            load: closed(1000),
            healthy_after: None,
            peers: &Peer::ALL,
        },
        Scenario {
            name: "overload",
            behavior: Behavior::Overload {
                capacity: 8,
                service: Duration::from_millis(10),
            },
            load: Load::Open {
                rate: 1200.0,
                length: if full {
                    Duration::from_secs(3)
                } else {
                    Duration::from_millis(200)
                },
            },
            healthy_after: None,
            peers: &Peer::ALL,
        },
        Scenario {
            name: "overload-adaptive",
            behavior: Behavior::Queue {
                capacity: 16,
                queue: 16,
                service: Duration::from_millis(5),
            },
            load: Load::ClosedFor {
                tasks: 64,
                length: if full {
                    Duration::from_secs(20)
                } else {
                    Duration::from_millis(300)
                },
            },
            healthy_after: None,
            peers: &[
                Peer::OursAdaptive,
                Peer::OursFixed(8),
                Peer::OursFixed(16),
                Peer::OursFixed(24),
                Peer::OursFixed(32),
                Peer::OursFixed(64),
            ],
        },
        Scenario {
            name: "outage-cached",
            behavior: Behavior::Outage,
            load: Load::Reads {
                keys: 1_000,
                warm_up: if full { 2_000 } else { 200 },
                tasks: 32,
                length: if full {
                    Duration::from_secs(5)
                } else {
                    Duration::from_millis(200)
                },
            },
            healthy_after: None,
            peers: &[
                Peer::Ours,
                #[cfg(feature = "cache")]
                Peer::OursCached,
            ],
        },
        Scenario {
            name: "slow-tail",
            behavior: Behavior::Tail {
                slow: 0.02,
                base: Duration::from_millis(1),
                delay: Duration::from_millis(200),
                seed: 0x5EED_7A11,
            },
            load: closed(4000),
            healthy_after: None,
            peers: &[Peer::Ours, Peer::OursHedged],
        },
    ]
}

fn print_table(rows: &[Row]) {
    println!(
        "| scenario | client | calls | ok % | req/call | p50 ms | p99 ms | cpu µs/call | note |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---|");
    for r in rows {
        let cpu = r.cpu_per_call.map_or_else(
            || "-".to_owned(),
            |d| format!("{:.1}", d.as_secs_f64() * 1e6),
        );
        println!(
            "| {} | {} | {} | {:.2} | {:.3} | {:.2} | {:.2} | {} | {} |",
            r.scenario,
            r.peer.name(),
            r.calls,
            r.ok_pct,
            r.requests_per_call,
            r.p50.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() * 1e3,
            cpu,
            r.note()
        );
    }
}

/// The tail scenarios' goals, from their rows: hedged against the baseline.
fn print_tail_checks(rows: &[Row]) {
    let row = |scenario: &str, peer: Peer| {
        rows.iter()
            .find(|r| r.scenario == scenario && r.peer == peer)
    };
    if let Some(adaptive) = row("overload-adaptive", Peer::OursAdaptive) {
        let fixed: Vec<&Row> = rows
            .iter()
            .filter(|r| r.scenario == "overload-adaptive" && matches!(r.peer, Peer::OursFixed(_)))
            .collect();
        let best = fixed
            .iter()
            .max_by(|a, b| a.goodput.total_cmp(&b.goodput))
            .map_or(0.0, |r| r.goodput);
        let two_k = fixed.iter().find(|r| r.peer == Peer::OursFixed(32));
        println!(
            "overload-adaptive: limit median {:?} (goal 11..=20), goodput {:.0}/s = {:.1}% of the best fixed limit's {:.0}/s (goal >= 90%), p99 {:.2} ms vs {:.2} ms at max_concurrency(32) (goal: below)",
            adaptive.limit_median,
            adaptive.goodput,
            100.0 * adaptive.goodput / best.max(1e-9),
            best,
            adaptive.p99.as_secs_f64() * 1e3,
            two_k.map_or(0.0, |r| r.p99.as_secs_f64() * 1e3),
        );
    }
    if let (Some(base), Some(hedged)) = (
        row("slow-tail", Peer::Ours),
        row("slow-tail", Peer::OursHedged),
    ) {
        let p99 = base.p99.as_secs_f64() / hedged.p99.as_secs_f64().max(1e-9);
        let extra = hedged.requests_per_call / base.requests_per_call.max(1e-9) - 1.0;
        println!(
            "slow-tail: p99 {:.2} ms -> {:.2} ms ({p99:.1}x lower; goal >= 5x), server requests {:+.1}% (goal <= +10%)",
            base.p99.as_secs_f64() * 1e3,
            hedged.p99.as_secs_f64() * 1e3,
            extra * 100.0
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --bench scenarios` does not.
    // SCENARIOS_ONLY=outage,flaky-20 runs just those scenarios.
    let full = std::env::args().any(|a| a == "--bench");
    let server = ScenarioServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("client runtime");
    let backoff = if full { BACKOFF } else { SMOKE_BACKOFF };
    let mut rows = Vec::new();
    let only = std::env::var("SCENARIOS_ONLY").ok();
    for scenario in scenarios(full) {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|n| n == scenario.name))
        {
            continue;
        }
        for &peer in scenario.peers {
            let row = rt.block_on(run(&server, &scenario, peer, backoff));
            eprintln!(
                "{} / {}: {:.2}% ok, {:.3} req/call, {:.1} s",
                row.scenario,
                row.peer.name(),
                row.ok_pct,
                row.requests_per_call,
                row.wall.as_secs_f64()
            );
            rows.push(row);
        }
    }
    print_table(&rows);
    print_tail_checks(&rows);
    let line = json!({
        "bench": "scenarios",
        "mode": if full { "bench" } else { "smoke" },
        "max_attempts": MAX_ATTEMPTS,
        "backoff_ms": [backoff.0.as_millis(), backoff.1.as_millis()],
        "nproc": std::thread::available_parallelism().map_or(0, usize::from),
        "rows": rows.iter().map(Row::json).collect::<Vec<_>>(),
    });
    println!("{line}");
}
