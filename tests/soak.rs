//! Soak: thousands of calls from many tasks, every layer on, against a local
//! server that mixes successes, 503s, resets and stalls. Every call ends in
//! time with an expected kind, the client recovers once the server does, no
//! concurrency permit leaks, and the live heap does not grow across rounds.
//!
//! One test in this binary on purpose: the heap is measured with a global
//! allocator, and a second test running alongside would blur the numbers.

// Helpers outside #[test] fns panic on a failed setup step, like the tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::System;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use resilient_http::{
    ApiClient, CircuitBreakerConfig, CircuitState, Error, ErrorKind, RateLimit, RetryPolicy,
    TimeoutPhase,
};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, MissedTickBehavior};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Tasks calling at once.
const TASKS: usize = 32;
/// Calls each task makes per round.
const CALLS_PER_TASK: usize = 32;
/// Rounds of the soak; the heap after round 2 is the baseline.
const ROUNDS: usize = 5;
/// The round whose heap is the baseline (pools and caches are warm by then).
const BASELINE_ROUND: usize = 2;
/// The gap between two calls of one task (so a round lasts about 32 * 85 ms).
const PACE: Duration = Duration::from_millis(85);
/// The client's bulkhead.
const MAX_CONCURRENCY: usize = 16;
/// Attempts per call, the first included.
const MAX_ATTEMPTS: u32 = 3;
const CONNECT: Duration = Duration::from_millis(200);
const READ: Duration = Duration::from_millis(150);
const ATTEMPT: Duration = Duration::from_millis(200);
const TOTAL: Duration = Duration::from_secs(1);
/// Every `SHORT_EVERY`th call of a task sets its own, shorter deadline, which
/// binds before the read and attempt timeouts when the server stalls.
const SHORT_TOTAL: Duration = Duration::from_millis(120);
const SHORT_EVERY: usize = 8;
/// Short, so the breaker opens and recovers several times a round.
const OPEN: Duration = Duration::from_millis(100);
/// Slack for scheduling on a busy 2-core machine when checking the deadline.
/// A call that ignored its deadline would hang far longer.
const MARGIN: Duration = Duration::from_secs(1);
/// The live heap may grow this much from the baseline round to the last.
const HEAP_SLACK: usize = 2 * 1024 * 1024;

/// The server closes a keep-alive connection idle this long.
const SERVER_IDLE: Duration = Duration::from_millis(200);
/// How long the server waits for the first request on a new connection.
const FIRST_REQUEST: Duration = Duration::from_secs(1);
/// A stalled answer gives up after this long even if the client stays.
const STALL_CAP: Duration = Duration::from_secs(3);
/// Every `OUTAGE_EVERY` requests, `OUTAGE_LEN` 503s in a row trip the breaker.
const OUTAGE_EVERY: usize = 500;
const OUTAGE_LEN: usize = 6;
/// How long the server helpers wait for a condition before failing the test.
const WAIT_LIMIT: Duration = Duration::from_secs(5);
/// A known pause after the server closed every connection, so the client's
/// connection tasks see the FIN and finish (there is nothing to await on).
const SETTLE: Duration = Duration::from_millis(50);

const HEALTHY_BODY: &str = r#"{"ok":true}"#;

// ---------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------

/// How the server answers one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    /// `200` with [`HEALTHY_BODY`], connection kept alive.
    Ok,
    /// `503`, connection kept alive; half of them say `Retry-After: 0`.
    Unavailable { retry_after: bool },
    /// Part of a response head, then a TCP reset.
    Reset,
    /// Read the request, never answer (until the client leaves).
    Stall,
}

/// The behaviour of the `n`th request of the mixed mode: about 70% 200, 15%
/// 503, 10% reset, 5% stall, spread out (`7n mod 20` visits every residue),
/// plus a short burst of 503s every `OUTAGE_EVERY` requests.
fn behaviour(n: usize) -> Behaviour {
    if n % OUTAGE_EVERY < OUTAGE_LEN {
        return Behaviour::Unavailable { retry_after: false };
    }
    match (n * 7) % 20 {
        0..=13 => Behaviour::Ok,
        14..=16 => Behaviour::Unavailable {
            retry_after: n.is_multiple_of(2),
        },
        17 | 18 => Behaviour::Reset,
        _ => Behaviour::Stall,
    }
}

const MODE_MIXED: u8 = 0;
const MODE_HEALTHY: u8 = 1;
const MODE_BARRIER: u8 = 2;

#[derive(Debug)]
struct Shared {
    mode: AtomicU8,
    /// Requests read in the mixed mode (the behaviour counter).
    mixed: AtomicUsize,
    /// Requests read in any mode.
    requests: AtomicUsize,
    /// Connections open now.
    open: AtomicUsize,
    /// Requests held at the barrier now, and the most ever held at once.
    waiting: AtomicUsize,
    peak_waiting: AtomicUsize,
    /// The barrier opens when this many requests are held at once.
    barrier: AtomicUsize,
    gate: Semaphore,
    changed: Notify,
}

/// Counts a connection as open until dropped (also when aborted).
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

/// A keep-alive HTTP/1.1 server on 127.0.0.1 that picks each request's
/// behaviour from a counter; dropping it aborts every connection.
struct SoakServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for SoakServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SoakServer {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            mode: AtomicU8::new(MODE_MIXED),
            mixed: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            peak_waiting: AtomicUsize::new(0),
            barrier: AtomicUsize::new(usize::MAX),
            gate: Semaphore::new(0),
            changed: Notify::new(),
        });
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Self { addr, shared, task }
    }

    fn uri(&self) -> String {
        format!("http://{}/", self.addr)
    }

    fn set_healthy(&self) {
        self.shared.mode.store(MODE_HEALTHY, Ordering::SeqCst);
    }

    /// Holds every request until `n` are held at once, then answers them all.
    fn set_barrier(&self, n: usize) {
        self.shared.barrier.store(n, Ordering::SeqCst);
        self.shared.mode.store(MODE_BARRIER, Ordering::SeqCst);
    }

    fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    fn peak_waiting(&self) -> usize {
        self.shared.peak_waiting.load(Ordering::SeqCst)
    }

    /// Waits until no connection is open (idle keep-alive connections are
    /// closed by the server after `SERVER_IDLE`); panics after `WAIT_LIMIT`.
    async fn wait_for_no_open_connections(&self) {
        let waiting = async {
            loop {
                let changed = self.shared.changed.notified();
                tokio::pin!(changed);
                // Register before checking, so a change in between is not lost.
                changed.as_mut().enable();
                if self.shared.open.load(Ordering::SeqCst) == 0 {
                    return;
                }
                changed.await;
            }
        };
        let open = tokio::time::timeout(WAIT_LIMIT, waiting).await;
        assert!(
            open.is_ok(),
            "soak server: {} connections still open after {WAIT_LIMIT:?}",
            self.shared.open.load(Ordering::SeqCst)
        );
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // Out of descriptors or similar: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                shared.open.fetch_add(1, Ordering::SeqCst);
                let guard = OpenGuard(Arc::clone(&shared));
                connections.spawn(async move {
                    // Errors only mean the client went away; nothing to report.
                    let _ = serve_connection(stream, &guard.0).await;
                    drop(guard);
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Serves requests on one connection until the client leaves, the connection
/// idles for `SERVER_IDLE`, or a behaviour ends it.
async fn serve_connection(mut stream: TcpStream, shared: &Shared) -> io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut idle_limit = FIRST_REQUEST;
    loop {
        match tokio::time::timeout(idle_limit, read_head(&mut stream, &mut buf)).await {
            Ok(Ok(true)) => {}
            // Idle too long, closed by the client, or broken.
            _ => return Ok(()),
        }
        idle_limit = SERVER_IDLE;
        shared.requests.fetch_add(1, Ordering::SeqCst);
        match shared.mode.load(Ordering::SeqCst) {
            MODE_HEALTHY => write_ok(&mut stream).await?,
            MODE_BARRIER => {
                if !barrier(&mut stream, shared).await {
                    return Ok(());
                }
                write_ok(&mut stream).await?;
            }
            _ => {
                let n = shared.mixed.fetch_add(1, Ordering::SeqCst);
                match behaviour(n) {
                    Behaviour::Ok => write_ok(&mut stream).await?,
                    Behaviour::Unavailable { retry_after } => {
                        let extra = if retry_after {
                            "Retry-After: 0\r\n"
                        } else {
                            ""
                        };
                        let answer = format!(
                            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n{extra}\r\nbusy"
                        );
                        stream.write_all(answer.as_bytes()).await?;
                    }
                    Behaviour::Reset => {
                        stream
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: applica")
                            .await?;
                        stream.flush().await?;
                        stream.set_zero_linger()?;
                        return Ok(());
                    }
                    Behaviour::Stall => {
                        // Bounded: the client's read timeout ends it long before.
                        let _ = tokio::time::timeout(STALL_CAP, drain_until_eof(&mut stream)).await;
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// Holds a request at the barrier; `false` if the client left meanwhile.
async fn barrier(stream: &mut TcpStream, shared: &Shared) -> bool {
    let now = shared.waiting.fetch_add(1, Ordering::SeqCst) + 1;
    shared.peak_waiting.fetch_max(now, Ordering::SeqCst);
    let size = shared.barrier.load(Ordering::SeqCst);
    if now == size {
        shared.gate.add_permits(size);
    }
    let passed = tokio::select! {
        permit = shared.gate.acquire() => {
            permit.map(tokio::sync::SemaphorePermit::forget).is_ok()
        }
        _ = drain_until_eof(stream) => false,
    };
    shared.waiting.fetch_sub(1, Ordering::SeqCst);
    passed
}

/// Reads one request head (GETs only, so no body) into `buf`, consuming it;
/// `false` when the client closed first.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<bool> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..pos + 4);
            return Ok(true);
        }
        if buf.len() > 64 * 1024 {
            return Err(io::Error::other("request head too large"));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(false);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn drain_until_eof(stream: &mut TcpStream) -> io::Result<()> {
    let mut buf = [0u8; 1024];
    while stream.read(&mut buf).await? > 0 {}
    Ok(())
}

async fn write_ok(stream: &mut TcpStream) -> io::Result<()> {
    let answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{HEALTHY_BODY}",
        HEALTHY_BODY.len()
    );
    stream.write_all(answer.as_bytes()).await
}

// ---------------------------------------------------------------------------
// The client and the tally of one round
// ---------------------------------------------------------------------------

/// Breaker transitions seen by `on_state_change`.
#[derive(Debug, Default)]
struct Transitions {
    opened: AtomicUsize,
    closed: AtomicUsize,
}

/// Every layer on: fast retries, a breaker that cycles, a rate limit that
/// rarely bites, a bulkhead and short timeouts.
fn soak_client(uri: &str, transitions: &Arc<Transitions>) -> ApiClient {
    let seen = Arc::clone(transitions);
    ApiClient::builder()
        .base_url(uri)
        .connect_timeout(CONNECT)
        .read_timeout(READ)
        .attempt_timeout(ATTEMPT)
        .total_timeout(TOTAL)
        .retry(
            RetryPolicy::exponential()
                .max_attempts(MAX_ATTEMPTS)
                .initial_backoff(Duration::from_millis(2))
                .max_backoff(Duration::from_millis(20))
                .max_retry_after(Duration::from_millis(50)),
        )
        .circuit_breaker(
            CircuitBreakerConfig::default()
                .consecutive_failures(5)
                .failure_rate(0.5, 20, 10)
                .open_duration(OPEN)
                .on_state_change(move |change| match change.to {
                    CircuitState::Open => {
                        seen.opened.fetch_add(1, Ordering::SeqCst);
                    }
                    CircuitState::Closed => {
                        seen.closed.fetch_add(1, Ordering::SeqCst);
                    }
                    CircuitState::HalfOpen => {}
                }),
        )
        .rate_limit(RateLimit::per_second(2_000).burst(200))
        .max_concurrency(MAX_CONCURRENCY)
        .build()
        .unwrap()
}

/// What one round (or one task of it) saw.
#[derive(Debug, Default)]
struct Tally {
    issued: usize,
    ok: usize,
    retryable: usize,
    server: usize,
    rejected: usize,
    circuit_open: usize,
    concurrency_limited: usize,
    rate_limited: usize,
    timeouts: usize,
    /// Timeouts whose binding limit was the call's deadline.
    total_timeouts: usize,
    /// Calls that broke a rule: a kind that must not appear, a rejection
    /// without a reason, too many attempts, a wrong body.
    unexpected: Vec<String>,
    /// Calls that ran past their deadline plus `MARGIN`.
    late: Vec<Duration>,
    latencies: Vec<Duration>,
}

impl Tally {
    fn errors(&self) -> usize {
        self.retryable + self.server + self.rejected
    }

    fn record(
        &mut self,
        deadline: Duration,
        elapsed: Duration,
        result: Result<resilient_http::ApiResponse, Error>,
    ) {
        self.latencies.push(elapsed);
        if elapsed > deadline + MARGIN {
            self.late.push(elapsed);
        }
        match result {
            Ok(resp) => {
                self.ok += 1;
                if resp.attempts() > MAX_ATTEMPTS
                    || resp.bytes().as_ref() != HEALTHY_BODY.as_bytes()
                {
                    self.unexpected.push(format!(
                        "ok after {} attempts with body {:?}",
                        resp.attempts(),
                        resp.bytes()
                    ));
                }
            }
            Err(err) => self.record_error(&err),
        }
    }

    fn record_error(&mut self, err: &Error) {
        if err.is_timeout() {
            self.timeouts += 1;
        }
        if err.timeout_phase() == Some(TimeoutPhase::Total) {
            self.total_timeouts += 1;
        }
        if err.attempts() > MAX_ATTEMPTS {
            self.unexpected.push(format!("too many attempts: {err}"));
        }
        match err.kind() {
            ErrorKind::Retryable => self.retryable += 1,
            ErrorKind::Server => self.server += 1,
            ErrorKind::Rejected => {
                self.rejected += 1;
                // Refused locally, before anything was sent.
                if err.attempts() != 0 {
                    self.unexpected
                        .push(format!("rejected after an attempt: {err:?}"));
                }
                if err.is_circuit_open() && err.retry_after().is_some_and(|d| d > OPEN) {
                    self.unexpected
                        .push(format!("next probe later than open_duration: {err:?}"));
                }
                if err.is_circuit_open() {
                    self.circuit_open += 1;
                } else if err.is_concurrency_limited() {
                    self.concurrency_limited += 1;
                } else if err.is_rate_limited() {
                    self.rate_limited += 1;
                } else {
                    self.unexpected
                        .push(format!("rejected without a reason: {err:?}"));
                }
            }
            other => self
                .unexpected
                .push(format!("unexpected kind {other}: {err:?}")),
        }
    }

    fn merge(&mut self, other: Self) {
        self.issued += other.issued;
        self.ok += other.ok;
        self.retryable += other.retryable;
        self.server += other.server;
        self.rejected += other.rejected;
        self.circuit_open += other.circuit_open;
        self.concurrency_limited += other.concurrency_limited;
        self.rate_limited += other.rate_limited;
        self.timeouts += other.timeouts;
        self.total_timeouts += other.total_timeouts;
        self.unexpected.extend(other.unexpected);
        self.late.extend(other.late);
        self.latencies.extend(other.latencies);
    }

    /// The 99th percentile and the maximum latency.
    fn p99_and_max(&mut self) -> (Duration, Duration) {
        self.latencies.sort_unstable();
        let Some(&max) = self.latencies.last() else {
            return (Duration::ZERO, Duration::ZERO);
        };
        let index = (self.latencies.len() * 99 / 100).min(self.latencies.len() - 1);
        (self.latencies[index], max)
    }
}

/// One task's share of a round: `CALLS_PER_TASK` calls, one per `PACE`,
/// starting at `offset` so the tasks do not all fire together; every
/// `SHORT_EVERY`th call has the deadline `SHORT_TOTAL`.
async fn run_task(client: ApiClient, offset: Duration) -> Tally {
    let mut tally = Tally {
        latencies: Vec::with_capacity(CALLS_PER_TASK),
        ..Tally::default()
    };
    let mut tick = tokio::time::interval_at(Instant::now() + offset, PACE);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    for n in 0..CALLS_PER_TASK {
        tick.tick().await;
        tally.issued += 1;
        let mut request = client.get("soak");
        let deadline = if n % SHORT_EVERY == SHORT_EVERY - 1 {
            request = request.timeout(SHORT_TOTAL);
            SHORT_TOTAL
        } else {
            TOTAL
        };
        let start = Instant::now();
        let result = request.send().await;
        tally.record(deadline, start.elapsed(), result);
    }
    tally
}

/// Runs one round from `TASKS` tasks and adds up what they saw.
async fn run_round(client: &ApiClient) -> Tally {
    let mut tasks = JoinSet::new();
    for k in 0..TASKS {
        let offset = PACE * u32::try_from(k).unwrap() / u32::try_from(TASKS).unwrap();
        tasks.spawn(run_task(client.clone(), offset));
    }
    let mut round = Tally::default();
    while let Some(task) = tasks.join_next().await {
        round.merge(task.expect("a soak task panicked"));
    }
    round
}

/// Live heap bytes of the whole process (allocated minus freed).
fn live_heap() -> usize {
    let stats = GLOBAL.stats();
    stats
        .bytes_allocated
        .saturating_sub(stats.bytes_deallocated)
}

fn kib(bytes: usize) -> usize {
    bytes / 1024
}

/// The rules every round keeps; panics with the first one broken.
fn check_round(round: usize, tally: &Tally) {
    assert_eq!(tally.issued, TASKS * CALLS_PER_TASK, "round {round}");
    assert_eq!(
        tally.ok + tally.errors(),
        tally.issued,
        "round {round}: every call ends Ok or with a classified error"
    );
    assert!(
        tally.unexpected.is_empty(),
        "round {round}: {} calls broke a rule, first ones: {:#?}",
        tally.unexpected.len(),
        &tally.unexpected[..tally.unexpected.len().min(5)]
    );
    assert!(
        tally.late.is_empty(),
        "round {round}: {} calls ran past their deadline + {MARGIN:?}: {:?}",
        tally.late.len(),
        &tally.late[..tally.late.len().min(5)]
    );
    assert!(
        tally.ok > tally.issued / 2,
        "round {round}: most calls succeed ({} of {})",
        tally.ok,
        tally.issued
    );
}

/// Runs the rounds, checking each, and returns the live heap after each.
async fn soak(client: &ApiClient, server: &SoakServer, transitions: &Transitions) -> Vec<usize> {
    let mut heap = Vec::with_capacity(ROUNDS);
    for round in 1..=ROUNDS {
        let started = Instant::now();
        let mut tally = run_round(client).await;
        let took = started.elapsed();
        let (p99, max) = tally.p99_and_max();
        let summary = format!(
            "soak round {round}/{ROUNDS}: {} calls in {:.1}s, ok {}, retryable {} ({} timeouts, {} total), \
             server {}, rejected {} (circuit {}, concurrency {}, rate {}), p99 {}ms, max {}ms, \
             breaker opened {} closed {} so far, server requests {}",
            tally.issued,
            took.as_secs_f64(),
            tally.ok,
            tally.retryable,
            tally.timeouts,
            tally.total_timeouts,
            tally.server,
            tally.rejected,
            tally.circuit_open,
            tally.concurrency_limited,
            tally.rate_limited,
            p99.as_millis(),
            max.as_millis(),
            transitions.opened.load(Ordering::SeqCst),
            transitions.closed.load(Ordering::SeqCst),
            server.requests(),
        );

        // Settle: drop what the round collected, let idle keep-alive
        // connections close, then measure.
        tally.latencies = Vec::new();
        server.wait_for_no_open_connections().await;
        tokio::time::sleep(SETTLE).await;
        let live = live_heap();
        heap.push(live);
        eprintln!("{summary}, live heap {} KiB", kib(live));
        check_round(round, &tally);
    }
    heap
}

/// `MAX_CONCURRENCY` calls are in flight at once: the server answers none of
/// them until all of them are there, so a leaked permit would stall them all.
async fn assert_every_permit_is_free(client: &ApiClient, server: &SoakServer) {
    server.set_barrier(MAX_CONCURRENCY);
    let mut gated = JoinSet::new();
    for _ in 0..MAX_CONCURRENCY {
        let client = client.clone();
        gated.spawn(async move { client.get("gated").send().await });
    }
    while let Some(result) = gated.join_next().await {
        let result = result.unwrap();
        assert!(
            result.is_ok(),
            "a gated call failed ({} of {MAX_CONCURRENCY} were in flight at most): {result:?}",
            server.peak_waiting()
        );
    }
    assert_eq!(server.peak_waiting(), MAX_CONCURRENCY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_fault_soak_ends_every_call_in_time_and_leaves_the_client_healthy_and_lean() {
    let server = SoakServer::start().await;
    let transitions = Arc::new(Transitions::default());
    let client = soak_client(&server.uri(), &transitions);
    let started = Instant::now();

    let heap = soak(&client, &server, &transitions).await;

    assert!(
        transitions.opened.load(Ordering::SeqCst) >= 1,
        "the outage bursts open the breaker"
    );
    let baseline = heap[BASELINE_ROUND - 1];
    let last = heap[ROUNDS - 1];
    let growth = last.saturating_sub(baseline);
    eprintln!(
        "soak: {} calls in {:.1}s, live heap after round {BASELINE_ROUND} {} KiB, after round \
         {ROUNDS} {} KiB (growth {} KiB)",
        ROUNDS * TASKS * CALLS_PER_TASK,
        started.elapsed().as_secs_f64(),
        kib(baseline),
        kib(last),
        kib(growth)
    );
    assert!(
        growth < HEAP_SLACK,
        "live heap grew {} KiB from round {BASELINE_ROUND} to round {ROUNDS} (per round: {:?} KiB)",
        kib(growth),
        heap.iter().map(|&b| kib(b)).collect::<Vec<_>>()
    );

    // Recovery: the server is healthy again; after the open duration the
    // breaker lets a probe through and closes.
    server.set_healthy();
    tokio::time::sleep(OPEN + Duration::from_millis(20)).await;
    for i in 0..3 {
        let resp = client.get("after").send().await;
        assert!(resp.is_ok(), "call {i} after recovery: {resp:?}");
    }
    assert_eq!(client.circuit_state(), CircuitState::Closed);

    assert_every_permit_is_free(&client, &server).await;
}
