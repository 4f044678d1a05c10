//! Client-side limits: a rate limit (governor, GCRA) and a concurrency bulkhead.
//!
//! Both wait inside the call's deadline. A rate-limit wait is known in advance,
//! so one that cannot fit fails at once; a concurrency wait ends at the deadline.
//! Permits are guards released on drop, so a cancelled call never leaks one.

use std::num::NonZeroU32;
use std::ops::Add;
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::adaptive::{Adaptive, AdaptiveSlot};
use crate::error::Error;
use crate::timeout::Deadline;

/// A client-side rate limit: at most `n` requests per second (or minute), with
/// bursts of up to `burst`, shared by all clones of the client.
///
/// Every attempt takes a permit, retries included: they are real requests to
/// the server. By default a call waits for its permit, but never past its
/// deadline: a wait that cannot fit fails at once with
/// [`ErrorKind::Rejected`](crate::ErrorKind::Rejected) and
/// [`Error::is_rate_limited`]. [`fail_fast`](Self::fail_fast) rejects instead of waiting.
///
/// # Examples
///
/// ```
/// use resilient_http::{ApiClient, RateLimit};
///
/// let client = ApiClient::builder()
///     .base_url("http://127.0.0.1:8080/")
///     .rate_limit(RateLimit::per_second(100).burst(20))
///     .build()?;
/// # Ok::<(), resilient_http::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct RateLimit {
    count: u32,
    period: Duration,
    burst: Option<u32>,
    wait: bool,
    #[cfg(feature = "redis")]
    shared: crate::shared_limit::SharedSettings,
}

impl RateLimit {
    /// At most `n` requests per second; bursts of `n` unless [`burst`](Self::burst) says otherwise.
    /// Zero is a `Config` error from [`build()`](crate::ApiClientBuilder::build).
    pub fn per_second(n: u32) -> Self {
        Self {
            count: n,
            period: Duration::from_secs(1),
            burst: None,
            wait: true,
            #[cfg(feature = "redis")]
            shared: crate::shared_limit::SharedSettings::default(),
        }
    }

    /// At most `n` requests per minute, spread evenly; bursts of `n` by default.
    pub fn per_minute(n: u32) -> Self {
        Self {
            period: Duration::from_secs(60),
            ..Self::per_second(n)
        }
    }

    /// How many requests may go at once after a quiet period (at least 1).
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = Some(burst);
        self
    }

    /// Reject at once instead of waiting when no permit is free.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn run() -> resilient_http::Result<()> {
    /// # let server = wiremock::MockServer::start().await;
    /// # wiremock::Mock::given(wiremock::matchers::any())
    /// #     .respond_with(wiremock::ResponseTemplate::new(200))
    /// #     .mount(&server).await;
    /// use resilient_http::{ApiClient, RateLimit};
    ///
    /// let client = ApiClient::builder()
    ///     .base_url(server.uri())
    ///     .rate_limit(RateLimit::per_minute(1).fail_fast())
    ///     .build()?;
    /// client.get("quota").send().await?;
    /// let err = client.get("quota").send().await.unwrap_err();
    /// assert!(err.is_rate_limited());
    /// assert!(err.retry_after().is_some()); // when a permit frees up
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub fn fail_fast(mut self) -> Self {
        self.wait = false;
        self
    }

    /// One quota for every replica of a service, kept in Redis (feature
    /// `redis`): the rate and burst given here hold for all the clients, in
    /// every process, that share `store`'s key.
    ///
    /// Each permit costs one round trip to Redis (fewer with
    /// [`RedisLimiter::lease`](crate::RedisLimiter::lease)), within a small time budget
    /// ([`RedisLimiter::timeout`](crate::RedisLimiter::timeout)). Waiting works as for a local limit: a
    /// call waits for its permit within its deadline (Redis reserves it, so
    /// waiting callers are served in turn), or is refused at once with
    /// [`Error::is_rate_limited`] when the wait cannot fit, or with
    /// [`fail_fast`](Self::fail_fast). When Redis is slow or down,
    /// [`on_store_error`](Self::on_store_error) decides.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> resilient_http::Result<()> {
    /// use resilient_http::{ApiClient, RateLimit, RedisLimiter, StoreFallback};
    ///
    /// let client = ApiClient::builder()
    ///     .base_url("https://partner-x.example/api/")
    ///     .rate_limit(
    ///         RateLimit::per_second(1000)
    ///             .burst(50)
    ///             .shared(RedisLimiter::new("redis://127.0.0.1:6379", "partner-x"))
    ///             .on_store_error(StoreFallback::Local(0.1)),
    ///     )
    ///     .build()?;
    /// let resp = client.get("orders").send().await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "redis")]
    pub fn shared(mut self, store: crate::RedisLimiter) -> Self {
        self.shared.store = Some(store);
        self
    }

    /// What a [`shared`](Self::shared) limit does while Redis is slow or down
    /// (default [`StoreFallback::Local(0.1)`](crate::StoreFallback::Local)).
    /// Without `shared`, it has no effect.
    ///
    /// # Examples
    ///
    /// ```
    /// use resilient_http::{RateLimit, RedisLimiter, StoreFallback};
    ///
    /// // Better refused than over the partner's quota.
    /// let limit = RateLimit::per_second(100)
    ///     .shared(RedisLimiter::new("redis://127.0.0.1:6379", "partner-x"))
    ///     .on_store_error(StoreFallback::Reject);
    /// ```
    #[cfg(feature = "redis")]
    pub fn on_store_error(mut self, fallback: crate::StoreFallback) -> Self {
        self.shared.fallback = fallback;
        self
    }

    /// The shared limit's settings, when there is a store.
    #[cfg(feature = "redis")]
    pub(crate) fn shared_settings(&self) -> Option<(&crate::RedisLimiter, crate::StoreFallback)> {
        self.shared
            .store
            .as_ref()
            .map(|store| (store, self.shared.fallback))
    }

    /// Whether a call waits for a permit (the default) or is rejected at once.
    pub(crate) fn waits(&self) -> bool {
        self.wait
    }

    /// The checked count, period and burst.
    pub(crate) fn parts(&self) -> Result<(u32, Duration, u32), Error> {
        let count = NonZeroU32::new(self.count)
            .ok_or_else(|| Error::config("rate limit: the rate must be at least 1"))?;
        let burst = match self.burst {
            None => count,
            Some(b) => NonZeroU32::new(b)
                .ok_or_else(|| Error::config("rate limit: burst must be at least 1"))?,
        };
        Ok((count.get(), self.period, burst.get()))
    }

    pub(crate) fn validate(&self) -> Result<Quota, Error> {
        let (count, period, burst) = self.parts()?;
        let interval = period / count;
        // The limiter holds `interval × (burst − 1)` in nanoseconds as a u64.
        let span = u64::try_from(interval.as_nanos())
            .ok()
            .and_then(|ns| ns.checked_mul(u64::from(burst - 1)));
        if span.is_none() {
            return Err(Error::config(
                "rate limit: the burst is too large for the rate",
            ));
        }
        let quota = Quota::with_period(interval)
            .ok_or_else(|| Error::config("rate limit: the rate is too high"))?;
        // Non-zero: checked by `parts`.
        Ok(NonZeroU32::new(burst).map_or(quota, |b| quota.allow_burst(b)))
    }
}

/// governor's clock, driven by tokio time so paused-clock tests work.
#[derive(Debug, Clone, Copy)]
struct TokioClock {
    origin: Instant,
}

/// Nanoseconds since the limiter's origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Tick(u64);

impl Add<Nanos> for Tick {
    type Output = Self;
    fn add(self, other: Nanos) -> Self {
        Self(self.0.saturating_add(other.as_u64()))
    }
}

impl Reference for Tick {
    fn duration_since(&self, earlier: Self) -> Nanos {
        Nanos::from(self.0.saturating_sub(earlier.0))
    }
    fn saturating_sub(&self, duration: Nanos) -> Self {
        Self(self.0.saturating_sub(duration.as_u64()))
    }
}

impl Clock for TokioClock {
    type Instant = Tick;
    fn now(&self) -> Tick {
        let nanos = Instant::now()
            .saturating_duration_since(self.origin)
            .as_nanos();
        Tick(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Tick>>;

/// A rate limit in this process: governor's GCRA on tokio time.
#[derive(Debug)]
pub(crate) struct LocalLimiter {
    limiter: Limiter,
    clock: TokioClock,
}

impl LocalLimiter {
    pub(crate) fn new(quota: Quota) -> Self {
        let clock = TokioClock {
            origin: Instant::now(),
        };
        Self {
            limiter: RateLimiter::direct_with_clock(quota, clock),
            clock,
        }
    }

    /// Takes a permit, waiting (when `wait`) only if the wait fits the
    /// deadline. Returns the time waited: zero, not the time `check()` took,
    /// for a permit had at once.
    pub(crate) async fn acquire(&self, deadline: &Deadline, wait: bool) -> Result<Duration, Error> {
        let mut start = None;
        loop {
            match self.limiter.check() {
                Ok(()) => return Ok(start.map_or(Duration::ZERO, |s: Instant| s.elapsed())),
                Err(not_until) => {
                    let needed = not_until.wait_time_from(self.clock.now());
                    if !wait || !deadline.fits(needed) {
                        return Err(Error::rate_limited(needed));
                    }
                    start.get_or_insert_with(Instant::now);
                    tokio::time::sleep(needed).await;
                }
            }
        }
    }
}

/// Which rate limit a client has.
#[derive(Debug)]
enum Rate {
    Local(LocalLimiter),
    /// Kept in Redis, shared by every replica (feature `redis`).
    #[cfg(feature = "redis")]
    Shared(crate::shared_limit::SharedLimiter),
}

/// The runtime limits of one client, shared by its clones.
#[derive(Debug)]
pub(crate) struct Limits {
    rate: Option<(Rate, bool)>,
    concurrency: Option<Arc<Semaphore>>,
    /// The fixed concurrency limit, if any.
    max_fixed: Option<usize>,
    /// The adaptive concurrency limit, instead of `concurrency`.
    adaptive: Option<Arc<Adaptive>>,
}

/// A call's concurrency slot, fixed or adaptive, given back on drop. Owned,
/// so a streamed response can hold it until its body is read.
#[derive(Debug)]
pub(crate) enum Slot {
    Fixed(#[allow(dead_code)] OwnedSemaphorePermit),
    Adaptive(#[allow(dead_code)] AdaptiveSlot),
}

impl Limits {
    pub(crate) fn new(rate: Option<(Quota, bool)>, max_concurrency: Option<usize>) -> Self {
        Self {
            rate: rate.map(|(quota, wait)| (Rate::Local(LocalLimiter::new(quota)), wait)),
            concurrency: max_concurrency.map(|n| Arc::new(Semaphore::new(n))),
            max_fixed: max_concurrency,
            adaptive: None,
        }
    }

    /// The limits of a client built with `rate` (checked) and `max_concurrency`.
    pub(crate) fn from_settings(
        rate: Option<&RateLimit>,
        max_concurrency: Option<usize>,
    ) -> Result<Self, Error> {
        let Some(limit) = rate else {
            return Ok(Self::new(None, max_concurrency));
        };
        let quota = limit.validate()?;
        #[cfg(feature = "redis")]
        if let Some((store, fallback)) = limit.shared_settings() {
            let shared = crate::shared_limit::SharedLimiter::new(limit, store, fallback)?;
            let mut limits = Self::new(None, max_concurrency);
            limits.rate = Some((Rate::Shared(shared), limit.waits()));
            return Ok(limits);
        }
        Ok(Self::new(Some((quota, limit.waits())), max_concurrency))
    }

    /// Adds the shared rate limit's counters to `stats`.
    #[cfg_attr(not(feature = "redis"), allow(clippy::unused_self))]
    pub(crate) fn add_stats(&self, stats: &mut crate::stats::ClientStats) {
        #[cfg(feature = "redis")]
        if let Some((Rate::Shared(shared), _)) = &self.rate {
            shared.add_stats(stats);
        }
        #[cfg(not(feature = "redis"))]
        let _ = stats;
    }

    /// The same limits with an adaptive concurrency limit instead of a fixed one.
    pub(crate) fn with_adaptive(mut self, adaptive: Option<Adaptive>) -> Self {
        if let Some(a) = adaptive {
            self.concurrency = None;
            self.max_fixed = None;
            self.adaptive = Some(Arc::new(a));
        }
        self
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rate.is_none() && self.concurrency.is_none() && self.adaptive.is_none()
    }

    /// The adaptive limiter, if the client has one.
    pub(crate) fn adaptive(&self) -> Option<&Adaptive> {
        self.adaptive.as_deref()
    }

    /// The concurrency limit now: fixed, adaptive, or `None` (unlimited).
    pub(crate) fn concurrency_limit(&self) -> Option<usize> {
        match (&self.adaptive, &self.concurrency) {
            (Some(a), _) => Some(a.limit()),
            (None, _) => self.max_fixed,
        }
    }

    /// Takes a concurrency permit, waiting at most until the deadline. Returns
    /// the permit (none when there is no limit) and the time waited. The permit
    /// is owned, so a streamed response can hold it until its body is read.
    pub(crate) async fn concurrency(
        &self,
        deadline: &Deadline,
    ) -> Result<(Option<Slot>, Duration), Error> {
        if let Some(adaptive) = &self.adaptive {
            let (slot, waited) = adaptive.acquire(deadline).await?;
            return Ok((Some(Slot::Adaptive(slot)), waited));
        }
        let Some(sem) = &self.concurrency else {
            return Ok((None, Duration::ZERO));
        };
        if let Ok(permit) = Arc::clone(sem).try_acquire_owned() {
            return Ok((Some(Slot::Fixed(permit)), Duration::ZERO));
        }
        let start = Instant::now();
        match tokio::time::timeout_at(deadline.end(), Arc::clone(sem).acquire_owned()).await {
            Ok(Ok(permit)) => Ok((Some(Slot::Fixed(permit)), start.elapsed())),
            // Timed out, or the semaphore was closed (never: we do not close it).
            _ => Err(Error::concurrency_limited()),
        }
    }

    /// Takes a rate-limit permit, waiting only if the wait fits the deadline.
    /// Returns the time waited: zero, not the time `check()` took, for a
    /// permit had at once.
    pub(crate) async fn rate(&self, deadline: &Deadline) -> Result<Duration, Error> {
        match &self.rate {
            None => Ok(Duration::ZERO),
            Some((Rate::Local(local), wait)) => local.acquire(deadline, *wait).await,
            // Boxed: the shared path's future (a Redis round trip) is large,
            // and would otherwise grow every call's pipeline future.
            #[cfg(feature = "redis")]
            Some((Rate::Shared(shared), wait)) => Box::pin(shared.acquire(deadline, *wait)).await,
        }
    }

    /// Takes a rate-limit permit if one is free now, without waiting (a
    /// hedge's: no free permit, no hedge). A shared limit cannot say so
    /// without a round trip to its store: it sends no hedge.
    pub(crate) fn try_rate(&self) -> bool {
        match &self.rate {
            None => true,
            Some((Rate::Local(local), _)) => local.limiter.check().is_ok(),
            #[cfg(feature = "redis")]
            Some((Rate::Shared(_), _)) => false,
        }
    }

    /// Free concurrency permits (for tests and `Debug`).
    #[cfg(test)]
    pub(crate) fn available(&self) -> Option<usize> {
        self.concurrency
            .as_deref()
            .map(Semaphore::available_permits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_rates_are_config_errors() {
        assert!(RateLimit::per_second(0).validate().is_err());
        assert!(RateLimit::per_second(10).burst(0).validate().is_err());
        assert!(RateLimit::per_minute(1).validate().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_spaces_permits_on_tokio_time() {
        let limits = Limits::new(
            Some((RateLimit::per_second(10).burst(2).validate().unwrap(), true)),
            None,
        );
        let deadline = Deadline::after(Duration::from_secs(10));
        let start = Instant::now();
        for _ in 0..6 {
            limits.rate(&deadline).await.unwrap();
        }
        // 2 at once, then one per 100 ms.
        assert_eq!(start.elapsed(), Duration::from_millis(400));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_that_cannot_fit_fails_at_once() {
        let limits = Limits::new(
            Some((RateLimit::per_second(1).burst(1).validate().unwrap(), true)),
            None,
        );
        let deadline = Deadline::after(Duration::from_millis(500));
        limits.rate(&deadline).await.unwrap();
        let start = Instant::now();
        let err = limits.rate(&deadline).await.unwrap_err();
        assert!(err.is_rate_limited());
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn fail_fast_rejects_without_waiting() {
        let limits = Limits::new(
            Some((
                RateLimit::per_second(1).fail_fast().validate().unwrap(),
                false,
            )),
            None,
        );
        let deadline = Deadline::after(Duration::from_secs(30));
        limits.rate(&deadline).await.unwrap();
        assert!(limits.rate(&deadline).await.unwrap_err().is_rate_limited());
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_waits_until_the_deadline_then_rejects() {
        let limits = Limits::new(None, Some(1));
        let deadline = Deadline::after(Duration::from_secs(1));
        let held = limits.concurrency(&deadline).await.unwrap();
        assert_eq!(limits.available(), Some(0));
        let err = limits.concurrency(&deadline).await.unwrap_err();
        assert!(err.is_concurrency_limited());
        drop(held);
        assert_eq!(limits.available(), Some(1));
    }
}
