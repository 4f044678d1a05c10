//! The sections of an `ApiClientConfig`: retry, retry budget, circuit breaker,
//! failure rate and rate limit, and how a section that can be switched off is
//! read from (and written as) a bare `true`/`false`.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::adaptive::AdaptiveConcurrency;
use crate::breaker::{CircuitBreakerConfig, DEFAULT_RATE, DEFAULT_RATE_WINDOW, Sustained};
use crate::error::Error;
use crate::hedge::Hedging;
use crate::limit::RateLimit;
use crate::retry::{RetryBudget, RetryPolicy};

#[cfg(doc)]
use super::ApiClientConfig;

/// The `retry` section of an [`ApiClientConfig`]: a [`RetryPolicy`] as data.
///
/// Absent keys keep [`RetryPolicy::exponential()`]'s defaults. `retry = false`
/// (or `enabled = false`) means one attempt per call; the other keys are then
/// ignored.
///
/// ```toml
/// [retry]
/// max_attempts = 4
/// initial_backoff = "50ms"
/// max_backoff = "2s"
/// retry_server_errors = true
/// budget = { ratio = 0.1, min_per_second = 5, window = "20s" }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RetrySection {
    /// `false` turns retries off (default `true`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Attempts in all, the first included (default 3; 0 is an error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// The delay before the first retry (default `"100ms"`); doubles each retry.
    #[serde(
        with = "super::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub initial_backoff: Option<Duration>,
    /// The cap on the delay between attempts (default `"5s"`).
    #[serde(
        with = "super::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_backoff: Option<Duration>,
    /// Full jitter on each delay (default `true`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jitter: Option<bool>,
    /// The longest `Retry-After` waited for (default `"60s"`).
    #[serde(
        with = "super::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_retry_after: Option<Duration>,
    /// Also retry 500, 501... (default `false`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_server_errors: Option<bool>,
    /// The retry budget (default [`RetryBudget::default()`], ratio 0.5);
    /// `false` for none, like [`RetryBudget::unlimited()`].
    #[serde(with = "switch", skip_serializing_if = "Option::is_none")]
    pub budget: Option<RetryBudgetSection>,
}

/// The `retry.budget` section of an [`ApiClientConfig`]: a [`RetryBudget`] as data.
///
/// `budget = false` (or `enabled = false`) is [`RetryBudget::unlimited()`]; the
/// other keys are then ignored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RetryBudgetSection {
    /// `false` removes the budget: every retry the policy allows is made (default `true`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Retries as a share of recent successful calls, `0.0..=1.0` (default 0.5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// Retries per second allowed with no successful call (default 10).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_per_second: Option<u32>,
    /// How long deposits and withdrawals count, `"1s"` to `"60s"` (default `"10s"`).
    #[serde(
        with = "super::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub window: Option<Duration>,
}

/// The `circuit_breaker` section of an [`ApiClientConfig`]: a
/// [`CircuitBreakerConfig`] as data.
///
/// Absent keys keep [`CircuitBreakerConfig::default()`]'s values.
/// `circuit_breaker = false` (or `enabled = false`) means no breaker; the other
/// keys are then ignored. The `on_state_change` callback is code, not data: see
/// [`ApiClientConfig::circuit_breaker_config`].
///
/// ```toml
/// [circuit_breaker]
/// consecutive_failures = 3
/// open_duration = "30s"
/// failure_rate = { threshold = 0.25, window = 40, min_calls = 20 }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct CircuitBreakerSection {
    /// `false` turns the breaker off (default `true`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Open after this many failed attempts in a row, however fast (default
    /// 30; 0 turns this rule off). See [`CircuitBreakerConfig::consecutive_failures`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    /// Open after this many failed attempts in a row once they have lasted
    /// `sustained_for` (default 20; 0 turns this rule off). See
    /// [`CircuitBreakerConfig::sustained_failures`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sustained_failures: Option<u32>,
    /// How long a sustained run must last (default `"1s"`).
    #[serde(
        with = "super::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub sustained_for: Option<Duration>,
    /// The failure-rate trip (default `threshold = 0.5, time_window = "30s",
    /// min_calls = 300`); `false` to trip on failures in a row only.
    #[serde(with = "switch", skip_serializing_if = "Option::is_none")]
    pub failure_rate: Option<FailureRateSection>,
    /// How long the breaker stays open before a probe (default `"10s"`).
    #[serde(
        with = "super::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub open_duration: Option<Duration>,
    /// Probes admitted at a time while half-open (default 1; 0 is an error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub half_open_max_calls: Option<u32>,
}

/// The `circuit_breaker.failure_rate` section of an [`ApiClientConfig`]; see
/// [`CircuitBreakerConfig::failure_rate`].
///
/// Absent keys keep the defaults; `failure_rate = false` (or
/// `enabled = false`) turns the failure-rate trip off.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct FailureRateSection {
    /// `false` turns the failure-rate trip off (default `true`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// The share of failed attempts that opens the breaker, `0.0..=1.0` (default 0.5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// Count the last this many attempts instead of a time window, as
    /// [`CircuitBreakerConfig::failure_rate`] does (0 is an error; not with
    /// `time_window`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<u32>,
    /// The time window, as [`CircuitBreakerConfig::failure_rate_over`] takes
    /// it (default `"30s"`; `"1s"` to `"10m"`; not with `window`).
    #[serde(
        with = "super::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub time_window: Option<Duration>,
    /// Attempts counted before the rate counts (default 300 for the time
    /// window, 10 with `window`, and at most `window`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_calls: Option<u32>,
}

/// The `rate_limit` section of an [`ApiClientConfig`]: a [`RateLimit`] as data.
///
/// Exactly one of `per_second` and `per_minute` is required; neither or both
/// is an [`ErrorKind::Config`](crate::ErrorKind::Config) error when the client
/// is built.
///
/// ```toml
/// [rate_limit]
/// per_second = 100
/// burst = 20
/// fail_fast = true
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RateLimitSection {
    /// At most this many requests per second (0 is an error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_second: Option<u32>,
    /// At most this many requests per minute, spread evenly (0 is an error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_minute: Option<u32>,
    /// Requests that may go at once after a quiet period (default: the rate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Reject at once instead of waiting for a permit (default `false`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fail_fast: Option<bool>,
    /// One quota for every replica, kept in Redis (feature `redis`; default
    /// none: a limit per client): `{ url = "redis://127.0.0.1:6379", key =
    /// "partner-x" }`, see [`SharedRateLimitSection`].
    #[cfg(feature = "redis")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared: Option<SharedRateLimitSection>,
}

/// The `rate_limit.shared` section of an [`ApiClientConfig`] (feature
/// `redis`): a [`RedisLimiter`](crate::RedisLimiter) and its
/// [`StoreFallback`](crate::StoreFallback) as data.
///
/// `url` and `key` are required. `Debug` never shows the URL's password.
///
/// ```toml
/// [rate_limit]
/// per_second = 1000
/// burst = 50
/// shared = { url = "redis://127.0.0.1:6379", key = "partner-x", timeout = "5ms", lease = 10, on_store_error = { local = 0.1 } }
/// ```
#[cfg(feature = "redis")]
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct SharedRateLimitSection {
    /// The Redis server, `redis://[user:password@]host[:port][/db]`.
    pub url: String,
    /// The quota's name, shared by every replica that uses it.
    pub key: String,
    /// The time budget of one call to Redis (default `"5ms"`).
    #[serde(
        default,
        with = "super::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// The limit on connecting to Redis (default `"1s"`).
    #[serde(
        default,
        with = "super::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub connect_timeout: Option<Duration>,
    /// How long Redis is skipped after it failed (default `"1s"`).
    #[serde(
        default,
        with = "super::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub open_duration: Option<Duration>,
    /// Permits taken per round trip (default 1; at most the burst).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<u32>,
    /// `"allow"`, `"reject"`, or `{ local = 0.1 }` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_store_error: Option<crate::StoreFallback>,
}

#[cfg(feature = "redis")]
impl fmt::Debug for SharedRateLimitSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedRateLimitSection")
            .field("url", &crate::redact::raw_url(&self.url))
            .field("key", &self.key)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("open_duration", &self.open_duration)
            .field("lease", &self.lease)
            .field("on_store_error", &self.on_store_error)
            .finish()
    }
}

#[cfg(feature = "redis")]
impl SharedRateLimitSection {
    fn apply(&self, limit: RateLimit) -> RateLimit {
        let mut store = crate::RedisLimiter::new(&self.url, &self.key);
        if let Some(d) = self.timeout {
            store = store.timeout(d);
        }
        if let Some(d) = self.connect_timeout {
            store = store.connect_timeout(d);
        }
        if let Some(d) = self.open_duration {
            store = store.open_duration(d);
        }
        if let Some(n) = self.lease {
            store = store.lease(n);
        }
        let limit = limit.shared(store);
        match self.on_store_error {
            Some(fallback) => limit.on_store_error(fallback),
            None => limit,
        }
    }
}

/// The `hedging` section of an [`ApiClientConfig`]: a
/// [`Hedging`](crate::Hedging) policy as data.
///
/// Exactly one of `percentile` and `delay` is required; neither or both is an
/// [`ErrorKind::Config`](crate::ErrorKind::Config) error when the client is
/// built.
///
/// ```toml
/// [hedging]
/// percentile = 0.95     # or: delay = "20ms"
/// max_hedges = 1
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct HedgingSection {
    /// Hedge after this quantile (`0.0..1.0`, exclusive) of the endpoint's
    /// recent latencies; [`Hedging::percentile`](crate::Hedging::percentile).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percentile: Option<f64>,
    /// Hedge after this fixed delay; [`Hedging::fixed`](crate::Hedging::fixed).
    #[serde(
        with = "super::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub delay: Option<Duration>,
    /// The most hedges an attempt may have (default 1; 1 to 10).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_hedges: Option<u32>,
}

/// The `adaptive_concurrency` section of an [`ApiClientConfig`]: an
/// [`AdaptiveConcurrency`] limit as data; every key optional.
///
/// ```toml
/// [adaptive_concurrency]
/// initial = 20
/// floor = 4
/// ceiling = 256
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct AdaptiveConcurrencySection {
    /// The limit to start from (default 20).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial: Option<usize>,
    /// The lowest the limit goes (default 1; 0 is an error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floor: Option<usize>,
    /// The highest the limit goes (default 1,000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ceiling: Option<usize>,
}

impl AdaptiveConcurrencySection {
    pub(super) fn limit(&self) -> AdaptiveConcurrency {
        let mut limit = AdaptiveConcurrency::default();
        if let Some(n) = self.initial {
            limit = limit.initial(n);
        }
        if let Some(n) = self.floor {
            limit = limit.floor(n);
        }
        if let Some(n) = self.ceiling {
            limit = limit.ceiling(n);
        }
        limit
    }
}

impl HedgingSection {
    pub(super) fn hedging(&self) -> Result<Hedging, Error> {
        let mut hedging = match (self.percentile, self.delay) {
            (Some(q), None) => Hedging::percentile(q),
            (None, Some(d)) => Hedging::fixed(d),
            (Some(_), Some(_)) => {
                return Err(Error::config("hedging: set percentile or delay, not both"));
            }
            (None, None) => {
                return Err(Error::config("hedging: percentile or delay is required"));
            }
        };
        if let Some(n) = self.max_hedges {
            hedging = hedging.max_hedges(n);
        }
        Ok(hedging)
    }
}

impl RetrySection {
    pub(super) fn policy(&self) -> RetryPolicy {
        if self.enabled == Some(false) {
            return RetryPolicy::none();
        }
        let mut p = RetryPolicy::exponential();
        if let Some(n) = self.max_attempts {
            p = p.max_attempts(n);
        }
        if let Some(d) = self.initial_backoff {
            p = p.initial_backoff(d);
        }
        if let Some(d) = self.max_backoff {
            p = p.max_backoff(d);
        }
        if let Some(on) = self.jitter {
            p = p.jitter(on);
        }
        if let Some(d) = self.max_retry_after {
            p = p.max_retry_after(d);
        }
        if let Some(on) = self.retry_server_errors {
            p = p.retry_server_errors(on);
        }
        if let Some(budget) = &self.budget {
            p = p.budget(budget.budget());
        }
        p
    }
}

impl RetryBudgetSection {
    pub(super) fn budget(&self) -> RetryBudget {
        if self.enabled == Some(false) {
            return RetryBudget::unlimited();
        }
        let mut b = self
            .ratio
            .map_or_else(RetryBudget::default, RetryBudget::ratio);
        if let Some(n) = self.min_per_second {
            b = b.min_per_second(n);
        }
        if let Some(w) = self.window {
            b = b.window(w);
        }
        b
    }
}

impl CircuitBreakerSection {
    pub(super) fn config(&self) -> Option<CircuitBreakerConfig> {
        if self.enabled == Some(false) {
            return None;
        }
        let mut c = CircuitBreakerConfig::default();
        if let Some(n) = self.consecutive_failures {
            c = c.consecutive_failures(n);
        }
        if self.sustained_failures.is_some() || self.sustained_for.is_some() {
            let Sustained { failures, span } = c.sustained;
            c = c.sustained_failures(
                self.sustained_failures.unwrap_or(failures),
                self.sustained_for.unwrap_or(span),
            );
        }
        match &self.failure_rate {
            None => {}
            Some(rate) if rate.enabled == Some(false) => c = c.no_failure_rate(),
            Some(rate) => c = rate.apply(c),
        }
        if let Some(d) = self.open_duration {
            c = c.open_duration(d);
        }
        if let Some(n) = self.half_open_max_calls {
            c = c.half_open_max_calls(n);
        }
        Some(c)
    }
}

impl FailureRateSection {
    /// Applies the section over `c`'s defaults: by attempts when `window` is
    /// given, by time otherwise.
    fn apply(&self, mut c: CircuitBreakerConfig) -> CircuitBreakerConfig {
        let threshold = self.threshold.unwrap_or(DEFAULT_RATE.threshold);
        match (self.window, self.time_window) {
            (Some(_), Some(_)) => {
                c.invalid = Some(
                    "circuit_breaker.failure_rate: set window (attempts) or time_window, not both",
                );
                c
            }
            (Some(window), None) => {
                c.failure_rate(threshold, window, self.min_calls.unwrap_or(CALLS_MIN_CALLS))
            }
            (None, time_window) => c.failure_rate_over(
                threshold,
                time_window.unwrap_or(DEFAULT_RATE_WINDOW),
                self.min_calls.unwrap_or(DEFAULT_RATE.min_calls),
            ),
        }
    }
}

/// `min_calls` when a `window` of attempts is given without it.
const CALLS_MIN_CALLS: u32 = 10;

impl RateLimitSection {
    pub(super) fn rate_limit(&self) -> Result<RateLimit, Error> {
        let mut limit = match (self.per_second, self.per_minute) {
            (Some(n), None) => RateLimit::per_second(n),
            (None, Some(n)) => RateLimit::per_minute(n),
            (Some(_), Some(_)) => {
                return Err(Error::config(
                    "rate_limit: set per_second or per_minute, not both",
                ));
            }
            (None, None) => {
                return Err(Error::config(
                    "rate_limit: per_second or per_minute is required",
                ));
            }
        };
        if let Some(burst) = self.burst {
            limit = limit.burst(burst);
        }
        if self.fail_fast == Some(true) {
            limit = limit.fail_fast();
        }
        #[cfg(feature = "redis")]
        if let Some(shared) = &self.shared {
            limit = shared.apply(limit);
        }
        Ok(limit)
    }
}

/// A section that can be written as a bare `true`/`false` instead of a table.
pub(crate) trait Switch: Sized {
    /// The section written as a bare boolean.
    fn from_flag(on: bool) -> Self;
    /// `Some(enabled)` when the section holds nothing but its switch.
    fn as_flag(&self) -> Option<bool>;
}

macro_rules! switch_sections {
    ($($section:ty),*) => {$(
        impl Switch for $section {
            fn from_flag(on: bool) -> Self {
                Self { enabled: Some(on), ..Self::default() }
            }

            fn as_flag(&self) -> Option<bool> {
                let rest = Self { enabled: None, ..self.clone() };
                if rest == Self::default() { self.enabled } else { None }
            }
        }
    )*};
}

switch_sections!(
    RetrySection,
    RetryBudgetSection,
    CircuitBreakerSection,
    FailureRateSection
);

/// `#[serde(with = "switch")]`: a section as a table of settings or a bare
/// boolean. Serializes a section that holds only its switch as the boolean.
pub(crate) mod switch {
    use super::{
        Deserialize, Deserializer, MapAccess, MapAccessDeserializer, PhantomData, Serialize,
        Serializer, Switch, Visitor, de, fmt,
    };

    #[allow(clippy::ref_option)] // serde's `with` passes `&Option<T>`
    pub(crate) fn serialize<S, T>(value: &Option<T>, serializer: S) -> Result<S::Ok, S::Error>
    where
        S: Serializer,
        T: Serialize + Switch,
    {
        match value {
            None => serializer.serialize_none(),
            Some(section) => match section.as_flag() {
                Some(on) => serializer.serialize_bool(on),
                None => section.serialize(serializer),
            },
        }
    }

    pub(crate) fn deserialize<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de> + Switch,
    {
        deserializer.deserialize_any(SwitchVisitor(PhantomData))
    }

    struct SwitchVisitor<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de> + Switch> Visitor<'de> for SwitchVisitor<T> {
        type Value = Option<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("`true`, `false` or a table of settings")
        }

        fn visit_bool<E: de::Error>(self, on: bool) -> Result<Self::Value, E> {
            Ok(Some(T::from_flag(on)))
        }

        fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<Self::Value, M::Error> {
            // The section's own `Deserialize`, so its unknown-key errors name the key.
            T::deserialize(MapAccessDeserializer::new(map)).map(Some)
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_needs_exactly_one_rate() {
        let mut section = RateLimitSection {
            per_minute: Some(60),
            burst: Some(5),
            fail_fast: Some(true),
            ..RateLimitSection::default()
        };
        assert_eq!(
            section.rate_limit().unwrap(),
            RateLimit::per_minute(60).burst(5).fail_fast()
        );
        section.per_second = Some(1);
        assert!(section.rate_limit().is_err());
        section.per_second = None;
        section.per_minute = None;
        assert!(section.rate_limit().is_err());
    }
}

/// The `cache` section of an [`ApiClientConfig`](super::ApiClientConfig)
/// (feature `cache`): a [`Cache`](crate::Cache) as data; every key optional.
///
/// ```toml
/// [cache]
/// max_entries = 10000          # default 10,000
/// max_bytes = 67108864         # default 64 MiB
/// stale_if_error = "5m"        # default none
/// stale_while_revalidate = "30s"
/// store_credentialed = false
/// ```
#[cfg(feature = "cache")]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct CacheSection {
    /// At most this many entries (default 10,000; 0 is an error); see
    /// [`Cache::in_memory`](crate::Cache::in_memory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_entries: Option<usize>,
    /// At most this many bytes (default 64 MiB); see
    /// [`Cache::max_bytes`](crate::Cache::max_bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<usize>,
    /// The client's stale-if-error window (default none); see
    /// [`Cache::stale_if_error`](crate::Cache::stale_if_error).
    #[serde(
        with = "super::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub stale_if_error: Option<Duration>,
    /// The client's stale-while-revalidate window (default none); see
    /// [`Cache::stale_while_revalidate`](crate::Cache::stale_while_revalidate).
    #[serde(
        with = "super::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub stale_while_revalidate: Option<Duration>,
    /// Store responses to credentialed requests without `public` (default
    /// `false`); see [`Cache::store_credentialed`](crate::Cache::store_credentialed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_credentialed: Option<bool>,
}

#[cfg(feature = "cache")]
impl CacheSection {
    /// The entries a cache from a section without `max_entries` holds.
    const DEFAULT_MAX_ENTRIES: usize = 10_000;

    pub(super) fn cache(&self) -> crate::Cache {
        let mut cache =
            crate::Cache::in_memory(self.max_entries.unwrap_or(Self::DEFAULT_MAX_ENTRIES));
        if let Some(bytes) = self.max_bytes {
            cache = cache.max_bytes(bytes);
        }
        if let Some(window) = self.stale_if_error {
            cache = cache.stale_if_error(window);
        }
        if let Some(window) = self.stale_while_revalidate {
            cache = cache.stale_while_revalidate(window);
        }
        if let Some(store) = self.store_credentialed {
            cache = cache.store_credentialed(store);
        }
        cache
    }
}
