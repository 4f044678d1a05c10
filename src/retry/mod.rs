//! Retry policy, retry budget, `Retry-After` parsing and the idempotency rules.
//!
//! Everything here is synchronous and I/O-free: the client's call loop asks
//! [`RetryPolicy::decide`] after each failed attempt and [`Budget::withdraw`]
//! before each retry, and sleeps what they say.

use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use reqwest::Method;
use reqwest::header::HeaderValue;

use crate::error::{Error, ErrorKind};

mod budget;
#[cfg(test)]
mod model;

#[cfg(any(test, feature = "bench-internals"))]
pub(crate) use budget::DEFAULT_RATIO;
pub use budget::RetryBudget;
pub(crate) use budget::{Budget, Withdrawal};

/// When and how often a failed call is tried again.
///
/// Only transient failures ([`ErrorKind::Retryable`]) are retried, plus
/// [`ErrorKind::Server`] with [`retry_server_errors(true)`](Self::retry_server_errors).
/// Safe and idempotent methods (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) are
/// retried; POST and PATCH only with an
/// [`idempotency_key`](crate::RequestBuilder::idempotency_key), with
/// [`idempotent(true)`](crate::RequestBuilder::idempotent), or when the failure
/// proves that the server did not process it (a connect failure, a local
/// refusal, an HTTP/2 stream refused or cut by a `GOAWAY` before it was
/// processed).
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
/// | `budget` | [`RetryBudget::default()`]: retries add at most half of the successful calls, plus 10 a second |
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
        let retry_after = err.retry_after().filter(|_| err.status().is_some());
        self.decide_after(err, attempt, idempotent, backoff, remaining, retry_after)
    }

    /// [`decide`](Self::decide) for a retry that goes to another endpoint
    /// than the one that answered: that server's `Retry-After` (which paused
    /// it, see `crate::pushback`) does not delay it; the backoff does.
    pub(crate) fn decide_elsewhere(
        &self,
        err: &Error,
        attempt: u32,
        idempotent: bool,
        backoff: Duration,
        remaining: Duration,
    ) -> Decision {
        self.decide_after(err, attempt, idempotent, backoff, remaining, None)
    }

    fn decide_after(
        &self,
        err: &Error,
        attempt: u32,
        idempotent: bool,
        backoff: Duration,
        remaining: Duration,
        retry_after: Option<Duration>,
    ) -> Decision {
        let kind_ok = match err.kind() {
            ErrorKind::Retryable => true,
            ErrorKind::Server => self.retry_server_errors,
            _ => false,
        };
        if !kind_ok {
            return Decision::Stop(Stop::NotRetryable);
        }
        if !idempotent && !err.is_unprocessed() {
            return Decision::Stop(Stop::NotIdempotent);
        }
        if attempt >= self.max_attempts {
            return Decision::Stop(Stop::Attempts);
        }
        let delay = match retry_after {
            Some(ra) => {
                if ra > self.max_retry_after {
                    return Decision::Stop(Stop::RetryAfterTooLong);
                }
                ra
            }
            None => backoff,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeout::TimeoutPhase;
    use proptest::prelude::*;
    use reqwest::StatusCode;
    use reqwest::header::HeaderMap;

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
