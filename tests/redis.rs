//! The shared rate limit against a real Redis: each test starts
//! `redis-server` on a free 127.0.0.1 port with a temporary directory, and
//! kills, restarts, stops (SIGSTOP) and resumes (SIGCONT) it. Skipped with a
//! notice when no `redis-server` binary is found, unless
//! `RESILIENT_HTTP_REQUIRE_REDIS=1` (set by `.ci/run`) makes that a failure.
#![cfg(feature = "redis")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use resilient_http::{
    ApiClient, ApiClientConfig, ErrorKind, HookRequest, RateLimit, RedisLimiter, StoreFallback,
    TimeoutPhase,
};
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, ResponseTemplate};

use common::{find_binary, free_port};

/// Whether a test holds the [`Turn`].
static TURN_TAKEN: Mutex<bool> = Mutex::new(false);
static TURN_FREED: Condvar = Condvar::new();

/// One Redis test at a time in this binary: the load test's four busy
/// threads (and the fallback test's unlimited phase) would otherwise delay
/// the replies the timing-sensitive tests measure, on a 2-core machine.
/// Every [`Redis`] holds it for its whole life; not a `MutexGuard`, so that
/// it can be held across `.await` and by a `Send` value.
struct Turn;

impl Turn {
    fn take() -> Self {
        let mut taken = TURN_TAKEN.lock().unwrap_or_else(PoisonError::into_inner);
        // Bounded by the other tests, each of which ends (a panicking one
        // too: its `Redis` is dropped while unwinding).
        while *taken {
            taken = TURN_FREED
                .wait(taken)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *taken = true;
        Self
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        *TURN_TAKEN.lock().unwrap_or_else(PoisonError::into_inner) = false;
        TURN_FREED.notify_one();
    }
}

/// A Redis server on 127.0.0.1, killed and its directory removed on drop.
struct Redis {
    binary: PathBuf,
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    /// Given back once `drop` has killed the server.
    _turn: Turn,
}

impl Redis {
    /// Starts `redis-server` and waits until it answers, or returns `None`
    /// (with a notice) when there is no binary.
    fn start() -> Option<Self> {
        let Some(binary) = find_binary("redis-server") else {
            assert!(
                std::env::var("RESILIENT_HTTP_REQUIRE_REDIS").as_deref() != Ok("1"),
                "no redis-server binary found, and RESILIENT_HTTP_REQUIRE_REDIS=1"
            );
            eprintln!("NOTICE: skipping the Redis test: no `redis-server` binary on PATH");
            return None;
        };
        let turn = Turn::take();
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "resilient-http-redis-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Self {
            binary,
            child: None,
            port,
            dir,
            _turn: turn,
        };
        redis.launch();
        Some(redis)
    }

    /// Starts the server (again) on the same port, and waits until it answers.
    fn launch(&mut self) {
        let child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let pong = self
                .connection()
                .and_then(|mut con| redis::cmd("PING").query::<String>(&mut con));
            if pong.is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn connection(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url())?.get_connection_with_timeout(Duration::from_secs(1))
    }

    /// The Redis server's clock, in microseconds since the epoch.
    fn time_us(&self) -> u64 {
        let (secs, micros): (u64, u64) = redis::cmd("TIME")
            .query(&mut self.connection().unwrap())
            .unwrap();
        secs * 1_000_000 + micros
    }

    /// The limiter's state for `key`: the theoretical arrival time (µs).
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    fn tat(&self, key: &str) -> Option<u64> {
        redis::cmd("GET")
            .arg(format!("resilient-http:rate:{key}"))
            .query::<Option<String>>(&mut self.connection().unwrap())
            .unwrap()
            .map(|v| v.parse::<f64>().unwrap() as u64)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {pid}");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too.
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn system_us() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros(),
    )
    .unwrap()
}

async fn stub() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    server
}

// ---------------------------------------------------------------- one quota, four clients

/// Four clients, each on its own runtime thread, share 200/s with a burst of
/// 20. All try as fast as they can; over 3 s of the Redis server's clock
/// from the first permit, 20 + 200 × 3 = 620 are admitted in all.
#[test]
fn four_clients_on_four_runtimes_share_one_quota() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = server_rt.block_on(stub());
    // The Redis clock from this process's: they are the same machine's wall
    // clock, but measured rather than assumed.
    let offset = i128::from(redis.time_us()) - i128::from(system_us());
    let redis_now = move || u64::try_from(i128::from(system_us()) + offset).unwrap();
    let stop_at = redis_now() + 4_000_000;

    let admitted: Arc<Mutex<Vec<u64>>> = Arc::default();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (url, uri, admitted) = (redis.url(), server.uri(), Arc::clone(&admitted));
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let hook_times = Arc::clone(&admitted);
                    let client = ApiClient::builder()
                        .base_url(uri)
                        .no_retry()
                        .rate_limit(
                            RateLimit::per_second(200).burst(20).shared(
                                // A generous budget: this test is about the
                                // quota, not about a loaded machine's delays.
                                RedisLimiter::new(url, "four-clients")
                                    .timeout(Duration::from_millis(200)),
                            ),
                        )
                        .request_hook(move |_: &mut HookRequest<'_>| {
                            hook_times.lock().unwrap().push(redis_now());
                        })
                        .build()
                        .unwrap();
                    let mut tasks = tokio::task::JoinSet::new();
                    for _ in 0..8 {
                        let client = client.clone();
                        tasks.spawn(async move {
                            while redis_now() < stop_at {
                                let _ =
                                    client.get("x").timeout(Duration::from_secs(1)).send().await;
                            }
                        });
                    }
                    while tasks.join_next().await.is_some() {}
                    client.stats()
                })
            })
        })
        .collect();
    let stats: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();

    let times = admitted.lock().unwrap().clone();
    let first = *times.iter().min().unwrap();
    let in_window = times.iter().filter(|&&t| t < first + 3_000_000).count();
    eprintln!("admitted in 3 s of Redis time: {in_window}; stats: {stats:?}");
    assert!(
        (589..=651).contains(&in_window),
        "{in_window} admitted, not 620 ± 5%"
    );
    for s in &stats {
        assert_eq!(s.shared_fallbacks, 0, "{s:?}");
        assert!(s.shared_permits > 0, "{s:?}");
    }
    let permits: u64 = stats.iter().map(|s| s.shared_permits).sum();
    assert_eq!(
        permits,
        u64::try_from(times.len()).unwrap(),
        "each admitted call took a shared permit"
    );
    drop(server_rt);
}

// ---------------------------------------------------------------- Redis killed mid-run

/// What one client saw during a phase.
#[derive(Debug, Default)]
struct Phase {
    ok: u64,
    rate_limited: u64,
    /// Calls that ended at their deadline (`TimeoutPhase::Total`).
    timed_out: u64,
}

/// `tasks` loops of calls for `run`, each call under `deadline`; asserts no
/// call took longer than its deadline (plus scheduling slack).
async fn run_phase(client: &ApiClient, tasks: usize, run: Duration, deadline: Duration) -> Phase {
    let ok = Arc::new(AtomicU64::new(0));
    let limited = Arc::new(AtomicU64::new(0));
    let timed_out = Arc::new(AtomicU64::new(0));
    let end = tokio::time::Instant::now() + run;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let (client, ok, limited, timed_out) = (
            client.clone(),
            Arc::clone(&ok),
            Arc::clone(&limited),
            Arc::clone(&timed_out),
        );
        set.spawn(async move {
            while tokio::time::Instant::now() < end {
                let start = tokio::time::Instant::now();
                let result = client.get("x").timeout(deadline).send().await;
                let took = start.elapsed();
                // Generous slack for a loaded machine: a call that ignored
                // its deadline would take far longer.
                assert!(
                    took < deadline + Duration::from_secs(1),
                    "a call took {took:?}, its deadline is {deadline:?}"
                );
                match result {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) if e.is_rate_limited() => {
                        assert_eq!(e.kind(), ErrorKind::Rejected);
                        // A refusal at once: pause like a caller would.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        limited.fetch_add(1, Ordering::Relaxed)
                    }
                    // A permit waited for until just before the deadline
                    // can leave the attempt too little time on a loaded
                    // machine: the call ends at its deadline, as it must.
                    Err(e) if e.timeout_phase() == Some(TimeoutPhase::Total) => {
                        timed_out.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => panic!("unexpected error: {e}"),
                };
            }
        });
    }
    while let Some(joined) = set.join_next().await {
        joined.unwrap();
    }
    Phase {
        ok: ok.load(Ordering::Relaxed),
        rate_limited: limited.load(Ordering::Relaxed),
        timed_out: timed_out.load(Ordering::Relaxed),
    }
}

/// The store time limit of [`policy_client`]s: while Redis is up the phases
/// assert that no call fell back, so a reply delayed by a loaded machine
/// must not count as a Redis failure. With Redis killed, a call fails at
/// once (connection refused, or the lost connection), not at this limit.
const POLICY_STORE_TIMEOUT: Duration = Duration::from_secs(1);
/// The deadline of each call while Redis is up: the store limit plus the
/// 200 ms a call may wait for a permit Redis reserves for it (the wait is
/// what the deadline leaves after the store limit).
const POLICY_UP_DEADLINE: Duration = Duration::from_millis(1200);

fn policy_client(
    server: &MockServer,
    redis: &Redis,
    key: &str,
    fallback: StoreFallback,
) -> ApiClient {
    ApiClient::builder()
        .base_url(server.uri())
        .no_retry()
        .no_circuit_breaker()
        .rate_limit(
            RateLimit::per_second(50)
                .burst(5)
                .shared(
                    RedisLimiter::new(redis.url(), key)
                        .timeout(POLICY_STORE_TIMEOUT)
                        .open_duration(Duration::from_millis(200)),
                )
                .on_store_error(fallback),
        )
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fallback_policy_does_what_it_says_while_redis_is_down_and_redis_comes_back() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let server = stub().await;
    let local = policy_client(&server, &redis, "local", StoreFallback::Local(0.5));
    let allow = policy_client(&server, &redis, "allow", StoreFallback::Allow);
    let reject = policy_client(&server, &redis, "reject", StoreFallback::Reject);
    let clients = [("local", &local), ("allow", &allow), ("reject", &reject)];
    let run = Duration::from_secs(1);
    // While Redis is up: see POLICY_UP_DEADLINE. While it is down: the
    // deadline bounds the waits of the local fallback (25/s).
    let (up_deadline, down_deadline) = (POLICY_UP_DEADLINE, Duration::from_millis(300));

    // Redis up: 50/s + 5 each, from Redis, for every policy (and up to
    // 200 ms of permits reserved by calls started before the end).
    for (name, client) in clients {
        let seen = run_phase(client, 4, run, up_deadline).await;
        let stats = client.stats();
        assert!((30..=70).contains(&seen.ok), "{name}: {seen:?}");
        assert_eq!(stats.shared_fallbacks, 0, "{name}: {stats:?}");
        // Every call that was sent took a permit from Redis.
        assert_eq!(
            stats.shared_permits,
            seen.ok + seen.timed_out,
            "{name}: {stats:?}"
        );
    }

    // Redis killed: each policy decides, no call waits past its deadline.
    redis.kill();
    let down: Vec<Phase> = futures_util::future::join_all(
        clients.map(|(_, client)| run_phase(client, 4, run, down_deadline)),
    )
    .await;
    let [local_down, allow_down, reject_down] = <[Phase; 3]>::try_from(down).unwrap();
    // Local(0.5): 25/s with a burst of 3 (2.5 rounded), in this process.
    assert!((10..=40).contains(&local_down.ok), "local: {local_down:?}");
    // Allow: no limit; far more than the quota's 55 in a second.
    assert!(allow_down.ok > 100, "allow: {allow_down:?}");
    assert_eq!(allow_down.rate_limited, 0, "allow: {allow_down:?}");
    // Reject: nothing goes.
    assert_eq!(reject_down.ok, 0, "reject: {reject_down:?}");
    assert!(reject_down.rate_limited > 0, "reject: {reject_down:?}");
    for (name, client) in clients {
        let stats = client.stats();
        assert!(stats.shared_fallbacks > 0, "{name}: {stats:?}");
        assert!(stats.shared_store_errors > 0, "{name}: {stats:?}");
        // The breaker skips Redis: a failed call or two, then one failed
        // connection attempt per 200 ms, not one per call.
        assert!(stats.shared_store_errors <= 12, "{name}: {stats:?}");
    }
    let err = reject.get("x").send().await.unwrap_err();
    assert!(err.is_rate_limited(), "{err}");
    assert!(err.retry_after().is_some(), "{err}");

    // Redis back on the same port: each client finds it by itself, and the
    // shared limit is in force again.
    redis.launch();
    for (name, client) in clients {
        let before = client.stats().shared_permits;
        let deadline_back = tokio::time::Instant::now() + Duration::from_secs(10);
        while client.stats().shared_permits == before {
            assert!(
                tokio::time::Instant::now() < deadline_back,
                "{name}: the shared limit did not come back"
            );
            let _ = client.get("x").timeout(up_deadline).send().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for (name, client) in clients {
        let before = client.stats();
        let seen = run_phase(client, 4, run, up_deadline).await;
        let after = client.stats();
        assert!((30..=70).contains(&seen.ok), "{name}: {seen:?}");
        assert_eq!(
            after.shared_fallbacks, before.shared_fallbacks,
            "{name}: {after:?}"
        );
        assert_eq!(
            after.shared_permits - before.shared_permits,
            seen.ok + seen.timed_out,
            "{name}: {after:?}"
        );
        assert!(redis.tat(name).is_some(), "{name}: no state in Redis");
    }
}

// ---------------------------------------------------------------- a slow Redis

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_stops_answering_triggers_the_fallback_within_the_budget() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let server = stub().await;
    let budget = Duration::from_millis(30);
    let client = ApiClient::builder()
        .base_url(server.uri())
        .no_retry()
        .rate_limit(
            RateLimit::per_second(1000)
                .shared(
                    RedisLimiter::new(redis.url(), "slow")
                        .timeout(budget)
                        .open_duration(Duration::from_millis(300)),
                )
                .on_store_error(StoreFallback::Allow),
        )
        .build()
        .unwrap();
    // Healthy: a permit from Redis, which also leaves no failure counted and
    // Redis not skipped. On a loaded machine a reply may take longer than the
    // 30 ms budget: that call falls back (allowed) and counts a store error,
    // so the next one tries again, until Redis answered one in time.
    let give_up = Instant::now() + Duration::from_secs(10);
    loop {
        let permits = client.stats().shared_permits;
        client.get("x").send().await.unwrap();
        if client.stats().shared_permits > permits {
            break;
        }
        assert!(
            Instant::now() < give_up,
            "Redis never answered within {budget:?}: {:?}",
            client.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // What follows counts from here.
    let healthy = client.stats();

    redis.signal("-STOP");
    let mut slow = 0;
    for _ in 0..20 {
        let errors = client.stats().shared_store_errors;
        let start = tokio::time::Instant::now();
        client.get("x").send().await.unwrap();
        let took = start.elapsed();
        // The budget, plus the call itself and (generous) scheduling slack:
        // nothing waits for the stopped Redis beyond its budget.
        assert!(took < budget + Duration::from_secs(1), "{took:?}");
        // A call that asked Redis and timed out.
        if client.stats().shared_store_errors > errors {
            slow += 1;
        }
    }
    let stats = client.stats();
    assert_eq!(
        stats.shared_fallbacks - healthy.shared_fallbacks,
        20,
        "{stats:?}"
    );
    assert_eq!(stats.shared_permits, healthy.shared_permits, "{stats:?}");
    // Three calls in a row spend the budget, then Redis is skipped.
    assert!((3..=6).contains(&slow), "{slow} calls waited for Redis");
    // Each slow call failed; a background reconnection may have failed too.
    let errors = stats.shared_store_errors - healthy.shared_store_errors;
    assert!((slow..=slow + 1).contains(&errors), "{stats:?}");

    redis.signal("-CONT");
    let back = tokio::time::Instant::now() + Duration::from_secs(10);
    while client.stats().shared_permits == healthy.shared_permits {
        assert!(tokio::time::Instant::now() < back, "Redis not used again");
        client.get("x").send().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_deadline_shorter_than_the_budget_is_not_a_redis_failure() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let server = stub().await;
    let client = ApiClient::builder()
        .base_url(server.uri())
        .no_retry()
        .rate_limit(
            RateLimit::per_second(1000)
                .shared(RedisLimiter::new(redis.url(), "short").timeout(Duration::from_secs(5)))
                .on_store_error(StoreFallback::Reject),
        )
        .build()
        .unwrap();
    client.get("x").send().await.unwrap();
    assert_eq!(client.stats().shared_permits, 1);

    // Redis stops answering; each caller's 50 ms run out long before the
    // 5 s budget: the call times out, and Redis is not held to blame.
    redis.signal("-STOP");
    for _ in 0..5 {
        let err = client
            .get("x")
            .timeout(Duration::from_millis(50))
            .send()
            .await
            .unwrap_err();
        assert_eq!(err.timeout_phase(), Some(TimeoutPhase::Total), "{err}");
    }
    let stats = client.stats();
    assert_eq!(stats.shared_store_errors, 0, "{stats:?}");
    assert_eq!(stats.shared_fallbacks, 0, "{stats:?}");

    // Redis answers again: calls still go through it, not the fallback.
    redis.signal("-CONT");
    client.get("x").send().await.unwrap();
    let stats = client.stats();
    assert_eq!(stats.shared_permits, 2, "{stats:?}");
    assert_eq!(stats.shared_fallbacks, 0, "{stats:?}");
}

// ---------------------------------------------------------------- leasing and the first connection

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_takes_several_permits_per_round_trip() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let server = stub().await;
    // One permit a second: the lease of 4 lives 3 s and the quota refills
    // one permit a second, wide margins for the calls' real time. The store
    // limit is generous too: a reply slower than the default 5 ms on a
    // loaded machine would use the fallback, and this test is about leases.
    let client = ApiClient::builder()
        .base_url(server.uri())
        .no_retry()
        .rate_limit(
            RateLimit::per_second(1).burst(10).fail_fast().shared(
                RedisLimiter::new(redis.url(), "lease")
                    .lease(4)
                    .timeout(Duration::from_secs(2)),
            ),
        )
        .build()
        .unwrap();
    client.get("x").send().await.unwrap();
    // Four permits taken (4 s of quota) for one call; two would be 2 s at
    // most (the time since the call only lowers it).
    let tat = redis.tat("lease").unwrap();
    let ahead = tat.saturating_sub(redis.time_us());
    assert!((2_000_001..=4_000_000).contains(&ahead), "{ahead} µs");
    // The next three calls use the lease: Redis is not asked, its state
    // is as the first call left it.
    for _ in 0..3 {
        client.get("x").send().await.unwrap();
    }
    assert_eq!(redis.tat("lease"), Some(tat), "Redis was asked again");
    assert_eq!(client.stats().shared_fallbacks, 0);
    // 10 at once in all: four leases of 4 would be 16; Redis grants what is
    // left (an 11th only if the calls took over a second).
    let mut ok = 4;
    while client.get("x").send().await.is_ok() {
        ok += 1;
        assert!(ok <= 12, "more than the burst");
    }
    assert!((10..=11).contains(&ok), "{ok}");
    assert_eq!(client.stats().shared_fallbacks, 0);
    assert_eq!(client.stats().shared_permits, ok);
}

// ---------------------------------------------------------------- configuration

/// Every key of `rate_limit.shared` reaches the client (tests/config.rs
/// lists this test for them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_limit_from_the_config_reaches_redis() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let server = stub().await;
    let config: ApiClientConfig = toml::from_str(&format!(
        r#"
        base_url = "{}"
        retry = false
        [rate_limit]
        per_second = 10
        burst = 4
        fail_fast = true
        shared = {{ url = "{}", key = "from-config", timeout = "300ms", connect_timeout = "1s", open_duration = "1h", lease = 2, on_store_error = {{ local = 0.5 }} }}
        "#,
        server.uri(),
        redis.url()
    ))
    .unwrap();
    let client = ApiClient::from_config(&config).unwrap();
    // url, key and lease: one call takes two permits (200 ms) under the key.
    client.get("x").send().await.unwrap();
    let ahead = redis
        .tat("from-config")
        .unwrap()
        .saturating_sub(redis.time_us());
    assert!((100_000..=200_000).contains(&ahead), "{ahead} µs");

    // timeout: a stopped Redis is waited for 300 ms (not the default 5 ms).
    redis.signal("-STOP");
    let start = Instant::now();
    let _ = client.get("x").send().await;
    let _ = client.get("x").send().await; // the lease's second permit was used first
    assert!(
        start.elapsed() >= Duration::from_millis(290),
        "{:?}",
        start.elapsed()
    );
    for _ in 0..3 {
        let _ = client.get("x").send().await;
    }
    // open_duration = 1h: after three failures Redis is skipped, even once
    // it answers again.
    redis.signal("-CONT");
    // on_store_error = { local = 0.5 }: half of per_second = 10 and of
    // burst = 4, a local limit of 5/s (a permit every 200 ms) with a burst
    // of 2. The calls above took some of it: 2 × 200 ms refill it whole, and
    // a longer wait leaves it full, so the margin costs no precision.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before = client.stats();
    let start = tokio::time::Instant::now();
    let mut admitted = Vec::new();
    for _ in 0..10 {
        admitted.push(client.get("x").send().await.is_ok());
    }
    let took = start.elapsed();
    let after = client.stats();
    assert_eq!(after.shared_permits, before.shared_permits, "{after:?}");
    assert_eq!(after.shared_fallbacks - before.shared_fallbacks, 10);
    // The full burst of 2 goes at once; then (fail_fast) a call goes only if
    // a permit came back meanwhile: one per 200 ms that the calls took. The
    // key dropped would fail this: the default Local(0.1) is 1/s with a
    // burst of 1 (the second call refused), Reject admits none, Allow all.
    let ok = u128::try_from(admitted.iter().filter(|&&a| a).count()).unwrap();
    assert!(
        admitted[0] && admitted[1],
        "the local fallback's burst of 2 was not there: {admitted:?}"
    );
    assert!(
        ok <= 2 + took.as_millis() / 200,
        "the local fallback admitted {ok} in {took:?}, more than its 5/s with a burst of 2: {admitted:?}"
    );

    // connect_timeout: a server that accepts and never answers; the first
    // call waits for the first connection that long, then falls back.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("redis://{}/", silent.local_addr().unwrap());
    let config: ApiClientConfig = toml::from_str(&format!(
        r#"
        base_url = "{}"
        rate_limit = {{ per_second = 10, shared = {{ url = "{silent_url}", key = "k", connect_timeout = "300ms", on_store_error = "allow" }} }}
        "#,
        server.uri(),
    ))
    .unwrap();
    let client = ApiClient::from_config(&config).unwrap();
    let start = Instant::now();
    client.get("x").send().await.unwrap();
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(900),
        "{took:?}"
    );
    assert_eq!(client.stats().shared_fallbacks, 1);
    drop(silent);
}

#[test]
fn the_shared_section_hides_the_redis_password() {
    let config: ApiClientConfig = toml::from_str(
        r#"rate_limit = { per_second = 1, shared = { url = "redis://:hunter2@h:6379/", key = "k" } }"#,
    )
    .unwrap();
    let shown = format!("{config:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    let limit = RateLimit::per_second(1).shared(RedisLimiter::new("redis://u:hunter2@h/", "k"));
    assert!(!format!("{limit:?}").contains("hunter2"));
    let built = ApiClient::builder()
        .base_url("http://127.0.0.1:9/")
        .rate_limit(limit);
    assert!(!format!("{built:?}").contains("hunter2"));
}

#[test]
fn invalid_shared_settings_are_config_errors_from_build() {
    for limit in [
        RateLimit::per_second(10).shared(RedisLimiter::new("http://not-redis/", "k")),
        RateLimit::per_second(10).shared(RedisLimiter::new("redis://127.0.0.1/", "")),
        RateLimit::per_second(10)
            .burst(2)
            .shared(RedisLimiter::new("redis://127.0.0.1/", "k").lease(3)),
        RateLimit::per_second(10)
            .shared(RedisLimiter::new("redis://127.0.0.1/", "k"))
            .on_store_error(StoreFallback::Local(0.0)),
    ] {
        let err = ApiClient::builder()
            .base_url("http://127.0.0.1:9/")
            .rate_limit(limit.clone())
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{limit:?}: {err}");
    }
}

/// The README's Defaults row for the shared rate limit is the code's.
#[test]
fn the_readme_shared_limit_defaults_are_the_codes() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let row = readme
        .lines()
        .find(|l| l.starts_with("| shared rate limit"))
        .expect("a Defaults row for the shared rate limit");
    let ms_before = |marker: &str| -> Duration {
        let at = row
            .find(marker)
            .unwrap_or_else(|| panic!("{marker:?} in {row}"));
        let digits: String = row[..at]
            .chars()
            .rev()
            .take_while(char::is_ascii_digit)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        Duration::from_millis(digits.parse().unwrap())
    };
    assert_eq!(
        ms_before(" ms; connecting"),
        resilient_http::DEFAULT_REDIS_TIMEOUT
    );
    assert_eq!(
        ms_before(" ms (in the background)"),
        resilient_http::DEFAULT_REDIS_CONNECT_TIMEOUT
    );
    assert_eq!(
        ms_before(" ms after 3 failed"),
        resilient_http::DEFAULT_REDIS_OPEN_DURATION
    );
    assert!(row.contains(&format!("`StoreFallback::{:?}`", StoreFallback::default())));
    let shown = format!("{:?}", RedisLimiter::new("redis://h/", "k"));
    assert!(shown.contains("lease: 1"), "{shown}");
}
