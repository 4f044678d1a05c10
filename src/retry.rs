//! Retry policy, retry budget, `Retry-After` parsing and the idempotency rules.
//!
//! Everything here is synchronous and I/O-free: the client's call loop asks
//! [`RetryPolicy::decide`] after each failed attempt and [`Budget::withdraw`]
//! before each retry, and sleeps what they say.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use reqwest::Method;
use reqwest::header::HeaderValue;
use tokio::time::Instant;

use crate::error::{Error, ErrorKind};

/// When and how often a failed call is tried again.
///
/// Only transient failures ([`ErrorKind::Retryable`]) are retried, plus
/// [`ErrorKind::Server`] with [`retry_server_errors(true)`](Self::retry_server_errors).
/// Safe and idempotent methods (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) are
/// retried; POST and PATCH only with an
/// [`idempotency_key`](crate::RequestBuilder::idempotency_key), with
/// [`idempotent(true)`](crate::RequestBuilder::idempotent), or when the failure
/// proves that nothing reached the server (a connect failure).
///
/// The delay before retry *n* is exponential (`initial_backoff * 2^(n-1)`, from
/// `backon`'s schedule), capped at `max_backoff`, and with jitter on it is drawn
/// uniformly from `[0, that]` ("full jitter"), so clients that failed together
/// do not retry together. A `Retry-After` on a retryable response replaces the
/// delay. A delay that would pass the call's deadline, or a `Retry-After` above
/// `max_retry_after`, ends the call at once with the last error.
///
/// | option | default |
/// |---|---|
/// | `max_attempts` (first included) | 3 |
/// | `initial_backoff` | 100 ms |
/// | `max_backoff` | 5 s |
/// | `jitter` | on |
/// | `max_retry_after` | 60 s |
/// | `retry_server_errors` | off |
/// | `budget` | [`RetryBudget::ratio(0.2)`](RetryBudget::ratio) |
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use resilient_http::{ApiClient, RetryBudget, RetryPolicy};
///
/// let client = ApiClient::builder()
///     .base_url("http://127.0.0.1:8080/api/")
///     .retry(
///         RetryPolicy::exponential()
///             .max_attempts(4)
///             .initial_backoff(Duration::from_millis(50))
///             .budget(RetryBudget::ratio(0.1)),
///     )
///     .build()?;
/// # Ok::<(), resilient_http::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct RetryPolicy {
    pub(crate) max_attempts: u32,
    pub(crate) initial_backoff: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) jitter: bool,
    pub(crate) max_retry_after: Duration,
    pub(crate) retry_server_errors: bool,
    pub(crate) budget: RetryBudget,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::exponential()
    }
}

impl RetryPolicy {
    /// Exponential backoff with full jitter and the defaults in the table above.
    pub fn exponential() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            jitter: true,
            max_retry_after: Duration::from_secs(60),
            retry_server_errors: false,
            budget: RetryBudget::default(),
        }
    }

    /// No retries: every call makes exactly one attempt.
    pub fn none() -> Self {
        Self::exponential().max_attempts(1)
    }

    /// Attempts in all, the first included (default 3). Zero is a `Config`
    /// error from [`build()`](crate::ApiClientBuilder::build).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// The delay before the first retry (default 100 ms); doubles each retry.
    pub fn initial_backoff(mut self, delay: Duration) -> Self {
        self.initial_backoff = delay;
        self
    }

    /// The cap on the delay between attempts (default 5 s).
    pub fn max_backoff(mut self, delay: Duration) -> Self {
        self.max_backoff = delay;
        self
    }

    /// Full jitter: draw each delay uniformly from `[0, backoff]` (default on).
    pub fn jitter(mut self, on: bool) -> Self {
        self.jitter = on;
        self
    }

    /// The longest `Retry-After` the client waits for (default 60 s); a longer
    /// one ends the call at once, and [`Error::retry_after`] carries it.
    pub fn max_retry_after(mut self, limit: Duration) -> Self {
        self.max_retry_after = limit;
        self
    }

    /// Also retry [`ErrorKind::Server`] outcomes such as 500 (default off: a
    /// 500 usually means a bug that another attempt does not fix).
    pub fn retry_server_errors(mut self, on: bool) -> Self {
        self.retry_server_errors = on;
        self
    }

    /// The retry budget shared by all clones of the client.
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = budget;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.max_attempts == 0 {
            return Err(Error::config("retry: max_attempts must be at least 1"));
        }
        self.budget.validate()
    }

    /// The (capped, un-jittered) exponential schedule, from `backon`.
    pub(crate) fn schedule(&self) -> ExponentialBackoff {
        ExponentialBuilder::new()
            .with_min_delay(self.initial_backoff.min(self.max_backoff))
            .with_max_delay(self.max_backoff)
            .with_factor(2.0)
            .without_max_times()
            .build()
    }

    /// Applies the cap and, when on, full jitter to a scheduled delay.
    pub(crate) fn jittered(&self, scheduled: Duration) -> Duration {
        let capped = scheduled.min(self.max_backoff);
        if self.jitter {
            capped.mul_f64(fastrand::f64())
        } else {
            capped
        }
    }

    /// Decides what follows a failed attempt.
    ///
    /// `attempt` is the number of attempts made so far, `backoff` the delay the
    /// schedule proposes, `remaining` the time left before the call's deadline.
    pub(crate) fn decide(
        &self,
        err: &Error,
        attempt: u32,
        idempotent: bool,
        backoff: Duration,
        remaining: Duration,
    ) -> Decision {
        let kind_ok = match err.kind() {
            ErrorKind::Retryable => true,
            ErrorKind::Server => self.retry_server_errors,
            _ => false,
        };
        if !kind_ok {
            return Decision::Stop(Stop::NotRetryable);
        }
        if !idempotent && !err.nothing_sent() {
            return Decision::Stop(Stop::NotIdempotent);
        }
        if attempt >= self.max_attempts {
            return Decision::Stop(Stop::Attempts);
        }
        let delay = match err.retry_after() {
            Some(ra) if err.status().is_some() => {
                if ra > self.max_retry_after {
                    return Decision::Stop(Stop::RetryAfterTooLong);
                }
                ra
            }
            _ => backoff,
        };
        if delay >= remaining {
            return Decision::Stop(Stop::Deadline);
        }
        Decision::Retry(delay)
    }
}

/// What [`RetryPolicy::decide`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Sleep this long, then try again.
    Retry(Duration),
    /// Return the last error.
    Stop(Stop),
}

/// Why the retry loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    NotRetryable,
    NotIdempotent,
    Attempts,
    RetryAfterTooLong,
    Deadline,
}

impl Stop {
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::NotRetryable => "not retryable",
            Self::NotIdempotent => "method not idempotent",
            Self::Attempts => "max attempts reached",
            Self::RetryAfterTooLong => "retry-after above max_retry_after",
            Self::Deadline => "delay would pass the deadline",
        }
    }
}

/// Whether RFC 9110 lets `method` be repeated: the safe methods and PUT, DELETE.
pub(crate) fn is_idempotent_method(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Parses a `Retry-After` value: delta-seconds or an HTTP-date (RFC 9110 §10.2.3).
/// A date in the past means "now". Anything else is ignored (`None`).
pub(crate) fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // Digits only: overflow means "longer than anyone waits".
        return Some(Duration::from_secs(text.parse::<u64>().unwrap_or(u64::MAX)));
    }
    let when = httpdate::parse_http_date(text).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// How many retries the client may add on top of its calls.
///
/// Retrying a failing service multiplies its load exactly when it can least
/// bear it; a fixed `max_attempts` cannot prevent that, since every call still
/// retries. A budget bounds retries as a share of recent successful calls,
/// the way tower's `TpsBudget` and gRPC's retry throttling do: each call that
/// succeeds deposits `ratio` of a retry, each retry withdraws one, and deposits
/// expire after a 10 s window. A small floor (`min_per_second`, default 10 per
/// second over the window) lets a quiet client retry at all. In a full outage
/// only the floor is spent, so retries add almost nothing to the load.
///
/// The budget is shared by all clones of a client.
///
/// | option | default |
/// |---|---|
/// | `ratio` | 0.2 (retries add at most 20% to the calls that succeed) |
/// | `min_per_second` | 10 |
/// | window | 10 s |
///
/// # Examples
///
/// ```
/// use resilient_http::{RetryBudget, RetryPolicy};
///
/// let careful = RetryPolicy::exponential().budget(RetryBudget::ratio(0.1).min_per_second(2));
/// let unbounded = RetryPolicy::exponential().budget(RetryBudget::unlimited());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[must_use]
pub struct RetryBudget {
    /// `None` for unlimited.
    pub(crate) ratio: Option<f64>,
    pub(crate) min_per_second: u32,
    pub(crate) window: Duration,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self::ratio(0.2)
    }
}

impl RetryBudget {
    /// Retries may add at most `ratio` (0.0 to 1.0) of the successful calls of
    /// the last 10 s, plus the floor. A ratio outside `0.0..=1.0` is a `Config`
    /// error from [`build()`](crate::ApiClientBuilder::build).
    pub fn ratio(ratio: f64) -> Self {
        Self {
            ratio: Some(ratio),
            min_per_second: 10,
            window: Duration::from_secs(10),
        }
    }

    /// No budget: every retry the policy allows is made. Use only when the
    /// server side can take the amplification.
    pub fn unlimited() -> Self {
        Self {
            ratio: None,
            min_per_second: 10,
            window: Duration::from_secs(10),
        }
    }

    /// The floor: retries per second allowed even with no successful call (default 10).
    pub fn min_per_second(mut self, retries: u32) -> Self {
        self.min_per_second = retries;
        self
    }

    /// How long deposits and withdrawals count (default 10 s; 1 s to 60 s).
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if let Some(ratio) = self.ratio
            && !(0.0..=1.0).contains(&ratio)
        {
            return Err(Error::config(
                "retry budget: ratio must be within 0.0..=1.0",
            ));
        }
        if self.window < Duration::from_secs(1) || self.window > Duration::from_secs(60) {
            return Err(Error::config(
                "retry budget: window must be within 1 s..=60 s",
            ));
        }
        Ok(())
    }

    /// The shared runtime state, or `None` when unlimited.
    pub(crate) fn start(&self) -> Option<Budget> {
        self.ratio
            .map(|ratio| Budget::new(ratio, self.min_per_second, self.window, Instant::now()))
    }
}

const SLOTS: usize = 10;
/// Fixed-point scale: one retry costs this many units.
const UNIT: i64 = 1000;

/// The runtime retry budget: a ring of per-slot token counts over the window.
#[derive(Debug)]
pub(crate) struct Budget {
    start: Instant,
    slot_nanos: u64,
    generation: AtomicU64,
    slots: [AtomicI64; SLOTS],
    rotate: Mutex<()>,
    reserve: i64,
    deposit: i64,
}

impl Budget {
    pub(crate) fn new(ratio: f64, min_per_second: u32, window: Duration, now: Instant) -> Self {
        let window_secs = i64::try_from(window.as_secs()).unwrap_or(60).max(1);
        // ratio is validated to 0.0..=1.0, so this is 0..=UNIT.
        #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
        let deposit = (ratio.clamp(0.0, 1.0) * UNIT as f64).round() as i64;
        let slot_nanos = u64::try_from(window.as_nanos() / SLOTS as u128)
            .unwrap_or(u64::MAX)
            .max(1);
        Self {
            start: now,
            slot_nanos,
            generation: AtomicU64::new(0),
            slots: Default::default(),
            rotate: Mutex::new(()),
            reserve: i64::from(min_per_second)
                .saturating_mul(window_secs)
                .saturating_mul(UNIT),
            deposit,
        }
    }

    /// Credits one successful call.
    pub(crate) fn deposit(&self, now: Instant) {
        let slot = self.current(now);
        self.slots[slot].fetch_add(self.deposit, Ordering::Relaxed);
    }

    /// Takes one retry from the budget; `false` when there is none left.
    pub(crate) fn withdraw(&self, now: Instant) -> bool {
        let slot = self.current(now);
        // Take first, then check: concurrent withdrawals cannot all spend the
        // same last token.
        self.slots[slot].fetch_sub(UNIT, Ordering::AcqRel);
        if self.balance_units() >= 0 {
            true
        } else {
            self.slots[slot].fetch_add(UNIT, Ordering::AcqRel);
            false
        }
    }

    /// Takes one retry, returned to the budget if the guard is dropped before
    /// [`Withdrawal::spend`] (a call cancelled during its backoff).
    pub(crate) fn try_withdraw(&self, now: Instant) -> Option<Withdrawal<'_>> {
        // Not `then_some`: building a guard that is then dropped would refund.
        if self.withdraw(now) {
            Some(Withdrawal {
                budget: self,
                spent: false,
            })
        } else {
            None
        }
    }

    fn refund(&self, now: Instant) {
        let slot = self.current(now);
        self.slots[slot].fetch_add(UNIT, Ordering::Relaxed);
    }

    /// Retries that could be made now (whole units).
    #[cfg(test)]
    pub(crate) fn balance(&self, now: Instant) -> i64 {
        self.current(now);
        self.balance_units() / UNIT
    }

    fn balance_units(&self) -> i64 {
        self.slots
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .fold(self.reserve, i64::saturating_add)
    }

    /// Expires old slots and returns the index of the current one.
    fn current(&self, now: Instant) -> usize {
        let elapsed = now.saturating_duration_since(self.start).as_nanos();
        let generation = u64::try_from(elapsed / u128::from(self.slot_nanos)).unwrap_or(u64::MAX);
        let seen = self.generation.load(Ordering::Acquire);
        if generation > seen {
            // A poisoned lock only means another thread panicked mid-rotation;
            // the counters are atomics and stay usable.
            let _guard = self
                .rotate
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let seen = self.generation.load(Ordering::Acquire);
            if generation > seen {
                let steps = (generation - seen).min(SLOTS as u64);
                for g in (generation + 1 - steps)..=generation {
                    self.slots[slot_index(g)].store(0, Ordering::Relaxed);
                }
                self.generation.store(generation, Ordering::Release);
            }
        }
        slot_index(generation.max(seen))
    }
}

/// One retry taken from a [`Budget`]; given back on drop unless spent.
#[derive(Debug)]
pub(crate) struct Withdrawal<'a> {
    budget: &'a Budget,
    spent: bool,
}

impl Withdrawal<'_> {
    /// The retry is being made: keep it withdrawn.
    pub(crate) fn spend(mut self) {
        self.spent = true;
    }
}

impl Drop for Withdrawal<'_> {
    fn drop(&mut self) {
        if !self.spent {
            self.budget.refund(Instant::now());
        }
    }
}

fn slot_index(generation: u64) -> usize {
    // SLOTS is 10, so the remainder always fits.
    usize::try_from(generation % SLOTS as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeout::TimeoutPhase;
    use proptest::prelude::*;
    use reqwest::StatusCode;
    use reqwest::header::HeaderMap;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn budget_with_no_success_spends_only_the_floor() {
        let t0 = Instant::now();
        let b = Budget::new(0.2, 10, Duration::from_secs(10), t0);
        let granted = (0..1000).filter(|_| b.withdraw(at(t0, 500))).count();
        assert_eq!(granted, 100, "10 per second over a 10 s window");
        // The spent floor comes back once the withdrawals leave the window.
        assert!(!b.withdraw(at(t0, 9_000)));
        assert!(b.withdraw(at(t0, 10_600)));
    }

    #[test]
    fn budget_deposits_a_fifth_of_a_retry_per_success() {
        let t0 = Instant::now();
        let b = Budget::new(0.2, 0, Duration::from_secs(10), t0);
        assert!(!b.withdraw(t0), "no floor, no successes");
        for _ in 0..10 {
            b.deposit(t0);
        }
        assert_eq!(b.balance(t0), 2);
        assert!(b.withdraw(t0));
        assert!(b.withdraw(t0));
        assert!(!b.withdraw(t0));
    }

    #[test]
    fn budget_deposits_expire_after_the_window() {
        let t0 = Instant::now();
        let b = Budget::new(1.0, 0, Duration::from_secs(10), t0);
        for _ in 0..5 {
            b.deposit(t0);
        }
        assert_eq!(b.balance(at(t0, 9_500)), 5);
        assert_eq!(b.balance(at(t0, 10_500)), 0);
        // A long quiet gap clears every slot.
        b.deposit(at(t0, 10_500));
        assert_eq!(b.balance(at(t0, 500_000)), 0);
    }

    #[test]
    fn an_unspent_withdrawal_is_given_back() {
        let t0 = Instant::now();
        let b = Budget::new(0.2, 1, Duration::from_secs(1), t0);
        let w = b.try_withdraw(t0).unwrap();
        assert!(b.try_withdraw(t0).is_none(), "the only retry is taken");
        drop(w);
        let w = b.try_withdraw(t0).unwrap();
        w.spend();
        assert!(b.try_withdraw(t0).is_none(), "a spent retry stays spent");
    }

    #[test]
    fn budget_ratio_is_validated() {
        assert!(RetryBudget::ratio(1.5).validate().is_err());
        assert!(RetryBudget::ratio(-0.1).validate().is_err());
        assert!(RetryBudget::ratio(f64::NAN).validate().is_err());
        assert!(RetryBudget::ratio(0.0).validate().is_ok());
        assert!(RetryBudget::ratio(1.0).validate().is_ok());
        assert!(RetryBudget::unlimited().start().is_none());
    }

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let v = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(
            parse_retry_after(&v("7"), now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(parse_retry_after(&v(" 0 "), now), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&v(&later), now),
            Some(Duration::from_secs(30))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&v(&past), now), Some(Duration::ZERO));
        for bad in ["-1", "1.5", "soon", "", "Mon, 99 Foo 2024"] {
            assert_eq!(parse_retry_after(&v(bad), now), None, "{bad}");
        }
        assert_eq!(
            parse_retry_after(&v("99999999999999999999999"), now),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn methods_follow_rfc_9110() {
        for m in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::TRACE,
            Method::PUT,
            Method::DELETE,
        ] {
            assert!(is_idempotent_method(&m), "{m}");
        }
        for m in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert!(!is_idempotent_method(&m), "{m}");
        }
    }

    #[test]
    fn schedule_doubles_up_to_the_cap() {
        let p = RetryPolicy::exponential()
            .initial_backoff(Duration::from_millis(100))
            .max_backoff(Duration::from_millis(500))
            .jitter(false);
        let delays: Vec<_> = p.schedule().take(5).map(|d| p.jittered(d)).collect();
        let ms: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [100, 200, 400, 500, 500]);
    }

    #[test]
    fn jitter_spreads_delays() {
        let p = RetryPolicy::exponential();
        let delays: std::collections::HashSet<_> = (0..50)
            .map(|_| p.jittered(Duration::from_millis(100)))
            .collect();
        assert!(delays.len() > 10, "jitter must not give a fixed delay");
    }

    fn unavailable(retry_after: Option<Duration>) -> Error {
        Error::from_status(
            StatusCode::SERVICE_UNAVAILABLE,
            HeaderMap::new(),
            b"",
            retry_after,
        )
    }

    #[test]
    fn decide_follows_the_rules() {
        let p = RetryPolicy::exponential();
        let ms = Duration::from_millis;
        let left = Duration::from_secs(30);
        assert_eq!(
            p.decide(&unavailable(None), 1, true, ms(80), left),
            Decision::Retry(ms(80))
        );
        assert_eq!(
            p.decide(&unavailable(None), 3, true, ms(80), left),
            Decision::Stop(Stop::Attempts)
        );
        assert_eq!(
            p.decide(&unavailable(None), 1, false, ms(80), left),
            Decision::Stop(Stop::NotIdempotent)
        );
        assert_eq!(
            p.decide(&unavailable(Some(ms(1500))), 1, true, ms(80), left),
            Decision::Retry(ms(1500))
        );
        assert_eq!(
            p.decide(
                &unavailable(Some(Duration::from_secs(61))),
                1,
                true,
                ms(80),
                left
            ),
            Decision::Stop(Stop::RetryAfterTooLong)
        );
        assert_eq!(
            p.decide(&unavailable(None), 1, true, ms(80), ms(80)),
            Decision::Stop(Stop::Deadline)
        );
        let server = Error::from_status(
            StatusCode::INTERNAL_SERVER_ERROR,
            HeaderMap::new(),
            b"",
            None,
        );
        assert_eq!(
            p.decide(&server, 1, true, ms(1), left),
            Decision::Stop(Stop::NotRetryable)
        );
        let p2 = RetryPolicy::exponential().retry_server_errors(true);
        assert_eq!(
            p2.decide(&server, 1, true, ms(1), left),
            Decision::Retry(ms(1))
        );
        // A connect failure proves nothing was sent: even a POST may retry.
        let connect = Error::timeout(TimeoutPhase::Connect);
        assert_eq!(
            p.decide(&connect, 1, false, ms(5), left),
            Decision::Retry(ms(5))
        );
        let read = Error::timeout(TimeoutPhase::Read);
        assert_eq!(
            p.decide(&read, 1, false, ms(5), left),
            Decision::Stop(Stop::NotIdempotent)
        );
    }

    proptest! {
        #[test]
        fn delays_stay_within_zero_and_the_cap(
            initial_ms in 0u64..10_000,
            max_ms in 0u64..60_000,
            jitter in any::<bool>(),
            retries in 1usize..64,
        ) {
            let p = RetryPolicy::exponential()
                .initial_backoff(Duration::from_millis(initial_ms))
                .max_backoff(Duration::from_millis(max_ms))
                .jitter(jitter);
            for d in p.schedule().take(retries) {
                let d = p.jittered(d);
                prop_assert!(d <= Duration::from_millis(max_ms));
            }
        }

        #[test]
        fn sleeps_never_pass_the_deadline(
            total_ms in 0u64..20_000,
            initial_ms in 0u64..5_000,
            retry_after_s in proptest::option::of(0u64..120),
            attempts in 1u32..20,
        ) {
            let p = RetryPolicy::exponential()
                .max_attempts(attempts)
                .initial_backoff(Duration::from_millis(initial_ms));
            let mut left = Duration::from_millis(total_ms);
            let mut schedule = p.schedule();
            let mut slept = Duration::ZERO;
            let err = unavailable(retry_after_s.map(Duration::from_secs));
            let mut attempt = 1;
            while let Decision::Retry(d) =
                p.decide(&err, attempt, true, p.jittered(schedule.next().unwrap_or_default()), left)
            {
                prop_assert!(d < left);
                slept += d;
                left -= d;
                attempt += 1;
            }
            prop_assert!(slept <= Duration::from_millis(total_ms));
            prop_assert!(attempt <= attempts);
        }
    }
}
