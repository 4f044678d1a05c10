//! The shared rate limit (feature `redis`): one quota for every replica of a
//! service, kept in Redis as GCRA state under one key.
//!
//! Each permit is one round trip: a Lua script reads the Redis server's clock
//! (`TIME`), takes the permit (or reserves the next one when the caller can
//! wait for it) and sets the key to expire by itself once it holds nothing.
//! So the replicas' clocks do not matter, and an idle key costs nothing.
//!
//! Redis is a dependency like any other: each call to it has a small time
//! budget, and a breaker skips it after failures (a dead Redis costs no time
//! per call) and probes it again after a while. While it is skipped or
//! failing, the [`StoreFallback`] decides.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use governor::Quota;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::Error;
use crate::limit::{LocalLimiter, RateLimit};
use crate::redact;
use crate::stats::{ClientStats, Stats};
use crate::timeout::{Deadline, TimeoutPhase};

/// The default time budget of one call to Redis.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(5);
/// The default limit on connecting to Redis (done in the background).
pub const DEFAULT_REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The default time Redis is skipped after it failed, before a probe.
pub const DEFAULT_REDIS_OPEN_DURATION: Duration = Duration::from_secs(1);
/// Failed calls in a row (timeouts or errors) after which Redis is skipped.
/// A failed connection attempt skips it at once.
const FAILURES_TO_OPEN: u32 = 3;
/// The prefix of the Redis key: `resilient-http:rate:<key>`.
const KEY_PREFIX: &str = "resilient-http:rate:";

/// GCRA over the Redis server's clock, in microseconds.
///
/// `KEYS[1]`: the key. `ARGV`: the emission interval (µs per permit), the
/// burst, the permits wanted (a lease), the longest wait the caller accepts
/// for one permit (µs; 0 when it does not wait). The key holds the
/// theoretical arrival time (TAT) and expires when the TAT is reached: a
/// missing key is a full burst.
///
/// Returns `{granted, wait_us}`: `granted` permits taken now (`wait_us` 0);
/// or one permit reserved `wait_us` from now (`granted` 1), when that fits the
/// caller's wait; or `{0, wait_us}`: nothing taken, a permit is free in
/// `wait_us`.
const SCRIPT: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = interval * tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local max_wait = tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or 0) or 0
if tat < now then tat = now end
local free = math.floor((now + tolerance - tat) / interval)
local granted = 0
local wait = 0
if free >= 1 then
  granted = math.min(free, want)
else
  wait = tat + interval - tolerance - now
  if wait > max_wait then return {0, wait} end
  granted = 1
end
tat = tat + granted * interval
redis.call('SET', KEYS[1], tat, 'PX', math.floor((tat - now) / 1000) + 1)
return {granted, wait}
";

/// What a shared rate limit does when its store (Redis) is slow or down:
/// set with [`RateLimit::on_store_error`].
///
/// A call to Redis that fails or takes longer than its time budget
/// ([`RedisLimiter::timeout`]) is decided by the fallback, and so is every
/// call while Redis is skipped after failures.
///
/// In configuration files: `"allow"`, `"reject"`, or `{ local = 0.1 }`.
///
/// # Examples
///
/// ```
/// use resilient_http::{RateLimit, RedisLimiter, StoreFallback};
///
/// // Each replica keeps a tenth of the quota on its own while Redis is away.
/// let limit = RateLimit::per_second(1000)
///     .burst(50)
///     .shared(RedisLimiter::new("redis://127.0.0.1:6379", "partner-x"))
///     .on_store_error(StoreFallback::Local(0.1));
/// assert_eq!(StoreFallback::default(), StoreFallback::Local(0.1));
/// ```
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StoreFallback {
    /// A local rate limit at this share of the quota (and of the burst, at
    /// least 1 each), `0.0 < share <= 1.0`: with `n` replicas, `1.0 / n`
    /// keeps the fleet within the quota. The default, with 0.1.
    Local(f64),
    /// Every call goes: no limit while the store is away.
    Allow,
    /// Every call is refused at once: [`ErrorKind::Rejected`](crate::ErrorKind::Rejected)
    /// and [`Error::is_rate_limited`], nothing sent.
    Reject,
}

impl Default for StoreFallback {
    fn default() -> Self {
        Self::Local(0.1)
    }
}

impl PartialEq for StoreFallback {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Local(a), Self::Local(b)) => a.to_bits() == b.to_bits(),
            (Self::Allow, Self::Allow) | (Self::Reject, Self::Reject) => true,
            _ => false,
        }
    }
}

impl Eq for StoreFallback {}

impl StoreFallback {
    fn label(self) -> &'static str {
        match self {
            Self::Local(_) => "local",
            Self::Allow => "allow",
            Self::Reject => "reject",
        }
    }
}

/// Where a shared rate limit keeps its state: a Redis server and a key
/// naming the quota (every replica that uses the same key and the same
/// quota shares it). Given to [`RateLimit::shared`].
///
/// The key in Redis is `resilient-http:rate:<key>`; it expires by itself
/// once the quota is full again. All replicas must give the same rate and
/// burst for one key: each permit is computed with the caller's.
///
/// The URL is `redis://[user:password@]host[:port][/db]` (`redis+unix://`
/// for a socket). Its password is never shown by `Debug` nor logged.
///
/// # Examples
///
/// ```no_run
/// # async fn run() -> resilient_http::Result<()> {
/// use std::time::Duration;
/// use resilient_http::{ApiClient, RateLimit, RedisLimiter, StoreFallback};
///
/// let client = ApiClient::builder()
///     .base_url("https://partner-x.example/api/")
///     .rate_limit(
///         RateLimit::per_second(1000)
///             .burst(50)
///             .shared(
///                 RedisLimiter::new("redis://:secret@127.0.0.1:6379", "partner-x")
///                     .timeout(Duration::from_millis(5))
///                     .lease(10),
///             )
///             .on_store_error(StoreFallback::Local(0.1)),
///     )
///     .build()?;
/// client.get("orders").send().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, PartialEq, Eq)]
#[must_use]
pub struct RedisLimiter {
    url: String,
    key: String,
    timeout: Duration,
    connect_timeout: Duration,
    open_duration: Duration,
    lease: u32,
}

impl fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("url", &redact::raw_url(&self.url))
            .field("key", &self.key)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("open_duration", &self.open_duration)
            .field("lease", &self.lease)
            .finish()
    }
}

impl RedisLimiter {
    /// The Redis server at `url`, and the quota's name `key`. Checked when
    /// the client is built: an invalid URL or an empty key is a
    /// [`Config`](crate::ErrorKind::Config) error then.
    pub fn new(url: impl Into<String>, key: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            key: key.into(),
            timeout: DEFAULT_REDIS_TIMEOUT,
            connect_timeout: DEFAULT_REDIS_CONNECT_TIMEOUT,
            open_duration: DEFAULT_REDIS_OPEN_DURATION,
            lease: 1,
        }
    }

    /// The time budget of one call to Redis (default 5 ms, and never past
    /// the call's deadline). A call that takes longer is decided by the
    /// [`StoreFallback`]; three in a row skip Redis for
    /// [`open_duration`](Self::open_duration). A call whose deadline leaves
    /// less than this budget and runs out while Redis answers ends with
    /// [`TimeoutPhase::Total`](crate::TimeoutPhase::Total) instead: not a
    /// Redis failure, no fallback.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use resilient_http::RedisLimiter;
    /// let redis = RedisLimiter::new("redis://10.0.0.5:6379", "partner-x")
    ///     .timeout(Duration::from_millis(20)); // Redis across a WAN link
    /// ```
    pub fn timeout(mut self, budget: Duration) -> Self {
        self.timeout = budget;
        self
    }

    /// The limit on connecting to Redis (default 1 s). Connections are made
    /// in the background: only the first calls of a client wait for the
    /// first one (within their deadline); later calls use the fallback
    /// while a reconnection is under way. A connection cut short by its
    /// runtime shutting down (a client used across `#[tokio::test]`s) is
    /// made again by the next call.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use resilient_http::RedisLimiter;
    /// let redis = RedisLimiter::new("redis://127.0.0.1:6379", "partner-x")
    ///     .connect_timeout(Duration::from_millis(200));
    /// ```
    pub fn connect_timeout(mut self, limit: Duration) -> Self {
        self.connect_timeout = limit;
        self
    }

    /// How long Redis is skipped after it failed (default 1 s): calls go
    /// straight to the fallback, at no cost, then one call probes Redis (or
    /// a new connection is tried). A success ends the skipping.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use resilient_http::RedisLimiter;
    /// let redis = RedisLimiter::new("redis://127.0.0.1:6379", "partner-x")
    ///     .open_duration(Duration::from_millis(250));
    /// ```
    pub fn open_duration(mut self, skip_for: Duration) -> Self {
        self.open_duration = skip_for;
        self
    }

    /// Takes up to `permits` per round trip and hands them out locally
    /// (default 1: no leasing), for high rates where a round trip per call
    /// costs too much. At most the burst; 0 or more than the burst is a
    /// [`Config`](crate::ErrorKind::Config) error from `build()`.
    ///
    /// Leased permits are taken from the shared quota when leased, so the
    /// fleet never takes more than the quota from Redis. What leasing
    /// loosens is *when* they are used: a permit leased at one moment may be
    /// used up to `permits` emission intervals later (then it expires,
    /// unused). So over any window the fleet sends at most the quota's
    /// `rate × window + burst`, plus `permits − 1` per client; and a permit
    /// leased but not used is lost.
    ///
    /// ```
    /// # use resilient_http::{RateLimit, RedisLimiter};
    /// // 5,000/s across the fleet, one round trip per 20 permits.
    /// let limit = RateLimit::per_second(5000)
    ///     .burst(100)
    ///     .shared(RedisLimiter::new("redis://127.0.0.1:6379", "search").lease(20));
    /// ```
    pub fn lease(mut self, permits: u32) -> Self {
        self.lease = permits;
        self
    }

    /// The quota's name, as given to [`new`](Self::new).
    ///
    /// ```
    /// # use resilient_http::RedisLimiter;
    /// assert_eq!(RedisLimiter::new("redis://127.0.0.1/", "partner-x").key(), "partner-x");
    /// ```
    #[must_use]
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// A shared rate limit's settings, kept by [`RateLimit`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct SharedSettings {
    pub(crate) store: Option<RedisLimiter>,
    pub(crate) fallback: StoreFallback,
}

/// The breaker on the Redis connection.
#[derive(Debug, Default)]
struct Health {
    /// Failed calls in a row.
    failures: u32,
    /// Skipping Redis until then; after it, one probe.
    open_until: Option<Instant>,
    /// A probe is under way.
    probing: bool,
}

/// What the breaker lets a call do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    /// Use Redis.
    Closed,
    /// Use Redis as the probe.
    Probe,
    /// Skip Redis until the time given.
    Open(Instant),
}

impl Health {
    fn gate(&mut self, now: Instant) -> Gate {
        match self.open_until {
            None => Gate::Closed,
            Some(until) if now < until => Gate::Open(until),
            Some(until) if self.probing => Gate::Open(until),
            Some(_) => {
                self.probing = true;
                Gate::Probe
            }
        }
    }

    /// Records a success; whether Redis was skipped or failing before.
    fn success(&mut self) -> bool {
        let was_unwell = self.open_until.is_some() || self.failures > 0;
        *self = Self::default();
        was_unwell
    }

    /// Records a failure; `decisive` (a failed connection) skips Redis at
    /// once. Returns whether it started skipping Redis.
    fn failure(&mut self, now: Instant, open_for: Duration, decisive: bool) -> bool {
        self.failures = self.failures.saturating_add(1);
        let was_open = self.open_until.is_some();
        if decisive || self.probing || was_open || self.failures >= FAILURES_TO_OPEN {
            self.open_until = Some(later(now, open_for));
            self.probing = false;
            return !was_open;
        }
        false
    }
}

/// The connection to Redis.
enum Conn {
    /// None, and none being made.
    Idle,
    /// Being made in the background.
    Connecting,
    Ready(redis::aio::MultiplexedConnection),
}

/// Permits leased from Redis, handed out locally until they expire.
#[derive(Debug)]
struct Lease {
    left: u32,
    expires: Instant,
}

/// Counters of the shared limit, read into [`ClientStats`].
#[derive(Debug, Default)]
struct Counts {
    permits: AtomicU64,
    waits: AtomicU64,
    fallbacks: AtomicU64,
    store_errors: AtomicU64,
}

/// The runtime half of a shared rate limit, shared by a client's clones.
#[derive(Clone)]
pub(crate) struct SharedLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    script: redis::Script,
    /// The full key, `resilient-http:rate:<key>`.
    key: String,
    /// The emission interval, in microseconds (at least 1).
    interval_us: u64,
    burst: u32,
    lease: u32,
    timeout: Duration,
    connect_timeout: Duration,
    open_duration: Duration,
    fallback: StoreFallback,
    local: Option<LocalLimiter>,
    conn: Mutex<Conn>,
    /// Bumped when a connection attempt ends, for the calls that wait for
    /// the first connection.
    connected: watch::Sender<u64>,
    health: Mutex<Health>,
    leased: Mutex<Lease>,
    counts: Counts,
}

impl fmt::Debug for SharedLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        f.debug_struct("SharedLimiter")
            .field("key", &inner.key)
            .field("interval_us", &inner.interval_us)
            .field("burst", &inner.burst)
            .field("lease", &inner.lease)
            .field("timeout", &inner.timeout)
            .field("fallback", &inner.fallback)
            .finish_non_exhaustive()
    }
}

/// `now + d`, saturating at about a century (no overflow panic for a
/// huge duration given by the user).
fn later(now: Instant, d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    now.checked_add(d.min(FAR)).unwrap_or(now)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Ends a probe that was dropped before it was recorded. Harmless after
/// the probe's outcome was recorded (that cleared `probing`, or a new
/// probe holds it and another is allowed at worst).
struct ProbeGuard<'a>(&'a Mutex<Health>);

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        lock(self.0).probing = false;
    }
}

/// Held by the task making the connection: if the task is dropped before it
/// recorded its outcome (`done`), puts `Connecting` back to `Idle` and wakes
/// the calls waiting for the connection, so the next call connects again.
/// Nothing is counted as a store error: the task was cancelled, Redis did not
/// fail.
struct ConnectGuard {
    limiter: SharedLimiter,
    done: bool,
}

impl ConnectGuard {
    /// The task recorded its outcome: nothing left to undo.
    fn disarm(&mut self) {
        self.done = true;
    }
}

impl Drop for ConnectGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let inner = &*self.limiter.inner;
        {
            let mut conn = lock(&inner.conn);
            if matches!(&*conn, Conn::Connecting) {
                *conn = Conn::Idle;
            }
        }
        inner.connected.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Which way a call to Redis failed, as logs and metrics name it.
#[derive(Debug, Clone, Copy)]
enum StoreError {
    /// Longer than the time budget.
    Timeout,
    /// The connection failed or was lost.
    Connection,
    /// Redis answered with an error (or an unexpected reply).
    Response,
}

impl StoreError {
    fn label(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Connection => "connection",
            Self::Response => "response",
        }
    }
}

/// Why a [`StoreFallback::Reject`] refused a call (the error's `source()`).
#[derive(Debug, thiserror::Error)]
#[error("the shared rate limit's store (Redis) is unavailable")]
struct StoreUnavailable;

impl SharedLimiter {
    /// Checks the settings and prepares the limiter (no I/O: the connection
    /// is made by the first call).
    pub(crate) fn new(
        limit: &RateLimit,
        store: &RedisLimiter,
        fallback: StoreFallback,
    ) -> Result<Self, Error> {
        let (count, period, burst) = limit.parts()?;
        let client = redis::Client::open(store.url.as_str())
            .map_err(|_| Error::config("rate_limit.shared: invalid Redis URL"))?;
        if store.key.is_empty() {
            return Err(Error::config(
                "rate_limit.shared: the key must not be empty",
            ));
        }
        for (name, value) in [
            ("timeout", store.timeout),
            ("connect_timeout", store.connect_timeout),
            ("open_duration", store.open_duration),
        ] {
            if value.is_zero() {
                return Err(Error::config(format!(
                    "rate_limit.shared: {name} must be greater than zero"
                )));
            }
        }
        if store.lease == 0 || store.lease > burst {
            return Err(Error::config(
                "rate_limit.shared: lease must be at least 1 and at most the burst",
            ));
        }
        let interval_us = u64::try_from(period.as_micros() / u128::from(count)).unwrap_or(u64::MAX);
        if interval_us == 0 {
            return Err(Error::config(
                "rate_limit.shared: at most 1,000,000 permits per second",
            ));
        }
        let local = match fallback {
            StoreFallback::Local(share) => {
                if !(share > 0.0 && share <= 1.0) {
                    return Err(Error::config(
                        "rate_limit.on_store_error: the local share must be in (0.0, 1.0]",
                    ));
                }
                let scaled = |n: u32| {
                    // In (0, n]: the cast cannot overflow.
                    #[allow(
                        clippy::cast_possible_truncation,
                        clippy::cast_sign_loss,
                        clippy::cast_precision_loss
                    )]
                    let v = (f64::from(n) * share).round() as u32;
                    v.max(1)
                };
                let quota = Quota::with_period(period / scaled(count))
                    .ok_or_else(|| Error::config("rate limit: the rate is too high"))?;
                let burst = std::num::NonZeroU32::new(scaled(burst))
                    .ok_or_else(|| Error::config("rate limit: burst must be at least 1"))?;
                Some(LocalLimiter::new(quota.allow_burst(burst)))
            }
            StoreFallback::Allow | StoreFallback::Reject => None,
        };
        let (connected, _) = watch::channel(0);
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                script: redis::Script::new(SCRIPT),
                key: format!("{KEY_PREFIX}{}", store.key),
                interval_us,
                burst,
                lease: store.lease,
                timeout: store.timeout,
                connect_timeout: store.connect_timeout,
                open_duration: store.open_duration,
                fallback,
                local,
                conn: Mutex::new(Conn::Idle),
                connected,
                health: Mutex::new(Health::default()),
                leased: Mutex::new(Lease {
                    left: 0,
                    expires: Instant::now(),
                }),
                counts: Counts::default(),
            }),
        })
    }

    /// Adds the shared limit's counters to `stats`.
    pub(crate) fn add_stats(&self, stats: &mut ClientStats) {
        let c = &self.inner.counts;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        stats.shared_permits = load(&c.permits);
        stats.shared_waits = load(&c.waits);
        stats.shared_fallbacks = load(&c.fallbacks);
        stats.shared_store_errors = load(&c.store_errors);
    }

    /// Takes a permit from the shared quota, waiting for it only when
    /// `wait` and the wait fits the deadline. Returns the time waited.
    pub(crate) async fn acquire(&self, deadline: &Deadline, wait: bool) -> Result<Duration, Error> {
        let inner = &*self.inner;
        if self.take_leased() {
            inner.permit("lease");
            return Ok(Duration::ZERO);
        }
        let now = Instant::now();
        let gate = lock(&inner.health).gate(now);
        if let Gate::Open(until) = gate {
            return self.fallback(deadline, wait, Some(until)).await;
        }
        // A probe dropped midway (the caller gave up) must not leave Redis
        // skipped for good: the guard lets the next call probe.
        let _probe = if gate == Gate::Probe {
            Some(ProbeGuard(&inner.health))
        } else {
            None
        };
        let Some(mut conn) = self.connection(deadline, gate).await else {
            return self.fallback(deadline, wait, None).await;
        };
        let left = deadline.remaining();
        let budget = inner.timeout.min(left);
        // A budget cut short by the caller's deadline says nothing of Redis.
        let deadline_bound = left < inner.timeout;
        // The longest wait for a reserved permit: what is left once this
        // round trip's budget is spent, so the wait ends before the deadline.
        let max_wait_us = if wait {
            let left = deadline.remaining().saturating_sub(inner.timeout);
            u64::try_from(left.as_micros())
                .unwrap_or(u64::MAX)
                .saturating_sub(1)
        } else {
            0
        };
        let mut invocation = inner.script.key(inner.key.as_str());
        invocation
            .arg(inner.interval_us)
            .arg(inner.burst)
            .arg(inner.lease)
            .arg(max_wait_us);
        let reply =
            tokio::time::timeout(budget, invocation.invoke_async::<Vec<i64>>(&mut conn)).await;
        let (granted, wait_us) = match reply {
            Ok(Ok(reply)) if reply.len() == 2 => (reply[0], reply[1]),
            Ok(Ok(_)) => return self.failed(StoreError::Response, deadline, wait).await,
            // Redis answered with an error: the connection is fine.
            Ok(Err(e))
                if matches!(
                    e.kind(),
                    redis::ErrorKind::Server(_)
                        | redis::ErrorKind::Extension
                        | redis::ErrorKind::UnexpectedReturnType
                ) =>
            {
                return self.failed(StoreError::Response, deadline, wait).await;
            }
            // Anything else (lost, refused, a driver that stopped): the next
            // call makes a new connection.
            Ok(Err(_)) => {
                self.drop_connection();
                return self.failed(StoreError::Connection, deadline, wait).await;
            }
            // The caller's deadline ran out, not Redis's time: the call's
            // timeout, and no store error (which could make every call use
            // the fallback). The connection stays.
            Err(_elapsed) if deadline_bound => return Err(Error::timeout(TimeoutPhase::Total)),
            Err(_elapsed) => return self.failed(StoreError::Timeout, deadline, wait).await,
        };
        if lock(&inner.health).success() {
            tracing::info!(
                target: "resilient_http::rate_limit",
                key = %inner.key,
                "shared rate limit: Redis answers again"
            );
        }
        let wait_for = Duration::from_micros(u64::try_from(wait_us).unwrap_or(0));
        if granted <= 0 {
            return Err(Error::rate_limited(wait_for));
        }
        if granted > 1 {
            self.add_leased(u32::try_from(granted - 1).unwrap_or(0));
        }
        inner.permit("store");
        if wait_for.is_zero() {
            return Ok(Duration::ZERO);
        }
        inner.counts.waits.fetch_add(1, Ordering::Relaxed);
        let start = Instant::now();
        tokio::time::sleep(wait_for).await;
        Ok(start.elapsed())
    }

    fn take_leased(&self) -> bool {
        if self.inner.lease <= 1 {
            return false;
        }
        let mut lease = lock(&self.inner.leased);
        if lease.left > 0 && Instant::now() < lease.expires {
            lease.left -= 1;
            return true;
        }
        false
    }

    /// Keeps `extra` leased permits for `extra` emission intervals.
    fn add_leased(&self, extra: u32) {
        let life = Duration::from_micros(self.inner.interval_us.saturating_mul(u64::from(extra)));
        let now = Instant::now();
        let mut lease = lock(&self.inner.leased);
        if now >= lease.expires {
            lease.left = 0;
        }
        lease.left = lease.left.saturating_add(extra);
        lease.expires = lease.expires.max(later(now, life));
    }

    /// The connection to use, or `None` (use the fallback). With none, one
    /// is made in the background; only while Redis has never failed (the
    /// first calls) is it waited for, within the connect limit and the
    /// deadline.
    async fn connection(
        &self,
        deadline: &Deadline,
        gate: Gate,
    ) -> Option<redis::aio::MultiplexedConnection> {
        let inner = &*self.inner;
        let mut changes = inner.connected.subscribe();
        let connect = {
            let mut conn = lock(&inner.conn);
            match &*conn {
                Conn::Ready(c) => return Some(c.clone()),
                Conn::Connecting => false,
                Conn::Idle => {
                    *conn = Conn::Connecting;
                    true
                }
            }
        };
        // Spawned with the lock released: a runtime shutting down drops the
        // task at once, and its guard takes the lock.
        if connect {
            self.spawn_connect();
        }
        // Wait only for the first connection; a probe or a reconnection
        // after failures happens in the background.
        let healthy = gate == Gate::Closed && lock(&inner.health).failures == 0;
        if !healthy {
            return None;
        }
        let limit = inner.connect_timeout.min(deadline.remaining());
        let ready = tokio::time::timeout(limit, async {
            loop {
                if let Conn::Ready(c) = &*lock(&inner.conn) {
                    return Some(c.clone());
                }
                if !matches!(&*lock(&inner.conn), Conn::Connecting) {
                    return None;
                }
                if changes.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await;
        ready.ok().flatten()
    }

    fn spawn_connect(&self) {
        // Moved into the task before it first runs, so that a task dropped
        // unfinished (even never polled: its runtime shut down) lets the next
        // call connect again instead of waiting on `Connecting` for good.
        let mut guard = ConnectGuard {
            limiter: self.clone(),
            done: false,
        };
        tokio::spawn(async move {
            let inner = &*guard.limiter.inner;
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(inner.connect_timeout))
                .set_response_timeout(None);
            let made = tokio::time::timeout(
                inner.connect_timeout,
                inner
                    .client
                    .get_multiplexed_async_connection_with_config(&config),
            )
            .await;
            if let Ok(Ok(c)) = made {
                *lock(&inner.conn) = Conn::Ready(c);
                // Redis is back: stop skipping it.
                if lock(&inner.health).success() {
                    tracing::info!(
                        target: "resilient_http::rate_limit",
                        key = %inner.key,
                        "shared rate limit: connected to Redis again"
                    );
                }
            } else {
                *lock(&inner.conn) = Conn::Idle;
                inner.store_error(StoreError::Connection);
                let opened = lock(&inner.health).failure(Instant::now(), inner.open_duration, true);
                if opened {
                    inner.warn_open(StoreError::Connection);
                }
            }
            inner.connected.send_modify(|n| *n = n.wrapping_add(1));
            guard.disarm();
        });
    }

    fn drop_connection(&self) {
        let mut conn = lock(&self.inner.conn);
        if matches!(&*conn, Conn::Ready(_)) {
            *conn = Conn::Idle;
        }
    }

    /// A call to Redis failed: recorded, then the fallback decides.
    async fn failed(
        &self,
        why: StoreError,
        deadline: &Deadline,
        wait: bool,
    ) -> Result<Duration, Error> {
        let inner = &*self.inner;
        inner.store_error(why);
        let opened = lock(&inner.health).failure(Instant::now(), inner.open_duration, false);
        if opened {
            // A connection that keeps failing may be half dead (a silent
            // network path): the probe makes a new one.
            self.drop_connection();
            inner.warn_open(why);
        }
        self.fallback(deadline, wait, None).await
    }

    /// Decides a call without Redis. `until`: when Redis is probed again.
    async fn fallback(
        &self,
        deadline: &Deadline,
        wait: bool,
        until: Option<Instant>,
    ) -> Result<Duration, Error> {
        let inner = &*self.inner;
        inner.counts.fallbacks.fetch_add(1, Ordering::Relaxed);
        Stats::shared_fallback(inner.fallback.label());
        match (&inner.fallback, &inner.local) {
            (StoreFallback::Allow, _) => Ok(Duration::ZERO),
            (StoreFallback::Local(_), Some(local)) => local.acquire(deadline, wait).await,
            _ => {
                let retry_after = until.map_or(inner.open_duration, |u| {
                    u.saturating_duration_since(Instant::now())
                });
                Err(Error::rate_limited(retry_after).with_source(StoreUnavailable))
            }
        }
    }
}

impl Inner {
    fn permit(&self, source: &'static str) {
        self.counts.permits.fetch_add(1, Ordering::Relaxed);
        Stats::shared_permit(source);
    }

    fn store_error(&self, why: StoreError) {
        self.counts.store_errors.fetch_add(1, Ordering::Relaxed);
        Stats::shared_store_error(why.label());
    }

    fn warn_open(&self, why: StoreError) {
        tracing::warn!(
            target: "resilient_http::rate_limit",
            key = %self.key,
            error = why.label(),
            fallback = self.fallback.label(),
            skip_ms = u64::try_from(self.open_duration.as_millis()).unwrap_or(u64::MAX),
            "shared rate limit: Redis is failing; using the fallback"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_skips_redis_after_failures_then_probes_once() {
        let mut h = Health::default();
        let t0 = Instant::now();
        let open = Duration::from_secs(1);
        assert_eq!(h.gate(t0), Gate::Closed);
        assert!(!h.failure(t0, open, false));
        assert!(!h.failure(t0, open, false));
        assert!(h.failure(t0, open, false));
        assert_eq!(h.gate(t0), Gate::Open(t0 + open));
        let later = t0 + open;
        assert_eq!(h.gate(later), Gate::Probe);
        // One probe at a time.
        assert_eq!(h.gate(later), Gate::Open(t0 + open));
        // A failed probe skips Redis again.
        assert!(!h.failure(later, open, false));
        assert_eq!(h.gate(later), Gate::Open(later + open));
        assert_eq!(h.gate(later + open), Gate::Probe);
        assert!(h.success());
        assert_eq!(h.gate(later + open), Gate::Closed);
        assert!(!h.success());
    }

    #[test]
    fn a_failed_connection_skips_redis_at_once() {
        let mut h = Health::default();
        let t0 = Instant::now();
        assert!(h.failure(t0, Duration::from_secs(1), true));
        assert!(matches!(h.gate(t0), Gate::Open(_)));
    }

    #[test]
    fn invalid_shared_settings_are_config_errors() {
        let limit = RateLimit::per_second(100).burst(10);
        let ok = RedisLimiter::new("redis://127.0.0.1:6379", "k");
        let fallback = StoreFallback::default();
        assert!(SharedLimiter::new(&limit, &ok, fallback).is_ok());
        for bad in [
            RedisLimiter::new("not a url", "k"),
            RedisLimiter::new("redis://127.0.0.1:6379", ""),
            ok.clone().lease(0),
            ok.clone().lease(11),
            ok.clone().timeout(Duration::ZERO),
        ] {
            let err = SharedLimiter::new(&limit, &bad, fallback).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::Config, "{bad:?}");
        }
        for share in [0.0, -1.0, 1.5, f64::NAN] {
            assert!(SharedLimiter::new(&limit, &ok, StoreFallback::Local(share)).is_err());
        }
        let too_fast = RateLimit::per_second(2_000_000);
        assert!(SharedLimiter::new(&too_fast, &ok, fallback).is_err());
    }

    #[test]
    fn a_connection_task_dropped_unfinished_lets_the_next_call_connect() {
        // Nothing listens on the port: a connection fails at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let store = RedisLimiter::new(format!("redis://127.0.0.1:{port}/"), "k")
            .connect_timeout(Duration::from_secs(10));
        let limit = RateLimit::per_second(100);
        let limiter = SharedLimiter::new(&limit, &store, StoreFallback::Allow).unwrap();
        let deadline = Deadline::after(Duration::from_secs(30));
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        {
            // A call on a first runtime starts the connection; the runtime
            // shuts down before the connecting task ever runs (as a client
            // used by two #[tokio::test]s sees).
            let first = runtime();
            let _entered = first.enter();
            let mut call = std::pin::pin!(limiter.connection(&deadline, Gate::Closed));
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            assert!(call.as_mut().poll(&mut cx).is_pending());
            assert!(matches!(*lock(&limiter.inner.conn), Conn::Connecting));
        }
        assert!(matches!(*lock(&limiter.inner.conn), Conn::Idle));
        assert_eq!(lock(&limiter.inner.health).failures, 0, "not a store error");

        // The next call, on another runtime, connects again (and fails).
        let second = runtime();
        let got = second.block_on(limiter.connection(&deadline, Gate::Closed));
        assert!(got.is_none());
        assert!(matches!(*lock(&limiter.inner.conn), Conn::Idle));
        assert_eq!(lock(&limiter.inner.health).failures, 1, "Redis was tried");
    }

    #[test]
    fn a_call_on_a_runtime_shut_down_neither_hangs_nor_waits_for_good() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let store = RedisLimiter::new(format!("redis://127.0.0.1:{port}/"), "k");
        let limit = RateLimit::per_second(100);
        let limiter = SharedLimiter::new(&limit, &store, StoreFallback::Allow).unwrap();
        // A runtime that has shut down drops a task spawned on it at once,
        // on the spawning thread.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let handle = runtime.handle().clone();
        drop(runtime);
        let (done, finished) = std::sync::mpsc::channel();
        let call = limiter.clone();
        std::thread::spawn(move || {
            let _entered = handle.enter();
            let deadline = Deadline::after(Duration::from_secs(30));
            let mut connecting = std::pin::pin!(call.connection(&deadline, Gate::Closed));
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            let _ = connecting.as_mut().poll(&mut cx);
            let _ = done.send(());
        });
        finished
            .recv_timeout(Duration::from_secs(20))
            .expect("the call deadlocked on its own connection lock");
        // The dropped task left no `Connecting` behind to wait on.
        assert!(matches!(*lock(&limiter.inner.conn), Conn::Idle));
    }

    #[test]
    fn debug_hides_the_redis_password() {
        let r = RedisLimiter::new("redis://user:hunter2@127.0.0.1:6379/0", "k");
        let shown = format!("{r:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("127.0.0.1"), "{shown}");
    }
}
