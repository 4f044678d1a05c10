//! Hooks for the `hot_path` benchmark: the per-call bookkeeping of every layer,
//! reachable without sockets. Not part of the public API (hidden from docs, no
//! stability promise).

use std::time::Duration;

use reqwest::StatusCode;
use tokio::time::Instant;

use crate::breaker::{self, CircuitBreakerConfig, Verdict};
use crate::error::{ErrorKind, Outcome, classify};
use crate::limit::{Limits, RateLimit};
use crate::retry;
use crate::timeout::{Deadline, TimeoutPhase};

/// The kind the classifier gives a status.
#[must_use]
pub fn classify_status(code: u16) -> Option<ErrorKind> {
    let status = StatusCode::from_u16(code).ok()?;
    Some(classify(&Outcome::Status(status)).kind())
}

/// The attempt limit of a fresh deadline.
#[must_use]
pub fn deadline(total: Duration, attempt: Duration) -> (Duration, TimeoutPhase) {
    Deadline::after(total).attempt_limit_at(Instant::now(), attempt)
}

/// A circuit breaker with the default configuration.
#[derive(Debug)]
pub struct Breaker(breaker::Breaker);

impl Default for Breaker {
    fn default() -> Self {
        Self(breaker::Breaker::new(
            "http://127.0.0.1:1",
            CircuitBreakerConfig::default(),
        ))
    }
}

impl Breaker {
    /// A breaker that has just opened.
    #[must_use]
    pub fn open() -> Self {
        let b = Self::default();
        let now = Instant::now();
        // The default opens on 30 failures in a row.
        while let Ok(p) = b.0.try_acquire(now) {
            p.record(Verdict::Failure, now);
        }
        b
    }

    /// Admits and records one successful attempt; `false` if refused.
    pub fn success(&self) -> bool {
        let now = Instant::now();
        match self.0.try_acquire(now) {
            Ok(p) => {
                p.record(Verdict::Success, now);
                true
            }
            Err(_) => false,
        }
    }
}

/// A retry budget with the default settings.
#[derive(Debug)]
pub struct Budget(retry::Budget);

impl Default for Budget {
    fn default() -> Self {
        Self(retry::Budget::new(
            retry::DEFAULT_RATIO,
            10,
            Duration::from_secs(10),
            Instant::now(),
        ))
    }
}

impl Budget {
    /// One successful call.
    pub fn deposit(&self) {
        self.0.deposit(Instant::now());
    }

    /// One retry; `false` when refused.
    pub fn withdraw(&self) -> bool {
        self.0.withdraw(Instant::now())
    }
}

/// A rate limit so high it never makes a call wait.
fn never_biting_rate() -> Option<(governor::Quota, bool)> {
    RateLimit::per_second(1_000_000_000)
        .validate()
        .ok()
        .map(|q| (q, true))
}

/// One limit at a time, for the cost of an uncontended permit.
#[derive(Debug)]
pub struct Permits {
    rate: Limits,
    concurrency: Limits,
    deadline: Deadline,
}

impl Default for Permits {
    fn default() -> Self {
        let quota = never_biting_rate();
        Self {
            rate: Limits::new(quota, None),
            concurrency: Limits::new(None, Some(64)),
            deadline: Deadline::after(Duration::from_secs(3600)),
        }
    }
}

impl Permits {
    /// Takes one rate-limit permit (never waits: the rate is huge).
    pub async fn rate(&self) -> bool {
        self.rate.rate(&self.deadline).await.is_ok()
    }

    /// Takes and releases one concurrency permit.
    pub async fn concurrency(&self) -> bool {
        self.concurrency.concurrency(&self.deadline).await.is_ok()
    }
}

/// A rate limit that never bites and a concurrency limit of 64.
#[derive(Debug)]
pub struct Layers {
    limits: Limits,
    breaker: Breaker,
    budget: Budget,
}

impl Default for Layers {
    fn default() -> Self {
        let quota = never_biting_rate();
        Self {
            limits: Limits::new(quota, Some(64)),
            breaker: Breaker::default(),
            budget: Budget::default(),
        }
    }
}

impl Layers {
    /// The bookkeeping of one successful call through every layer: deadline,
    /// concurrency permit, breaker admission and record, rate-limit permit,
    /// classification of a 200, budget deposit. No I/O.
    pub async fn one_call(&self) -> bool {
        let deadline = Deadline::after(Duration::from_secs(30));
        let Ok((permit, _)) = self.limits.concurrency(&deadline).await else {
            return false;
        };
        let now = Instant::now();
        let Ok(admitted) = self.breaker.0.try_acquire(now) else {
            return false;
        };
        if self.limits.rate(&deadline).await.is_err() {
            return false;
        }
        let (_limit, _phase) = deadline.attempt_limit_at(Instant::now(), Duration::from_secs(10));
        let ok = StatusCode::OK.is_success() && classify_status(200) != Some(ErrorKind::Retryable);
        let now = Instant::now();
        admitted.record(Verdict::Success, now);
        self.budget.0.deposit(now);
        drop(permit);
        ok
    }
}

/// A shared rate limit (feature `redis`) that never bites: 1,000,000 permits
/// per second with a burst as large, so each permit costs what the store
/// costs and no wait.
#[cfg(feature = "redis")]
#[derive(Debug)]
pub struct SharedPermits {
    limits: Limits,
    deadline: Deadline,
}

#[cfg(feature = "redis")]
impl SharedPermits {
    /// A shared limit on the Redis at `url` under `key`, leasing `lease`
    /// permits per round trip, with a 1 s budget per call to Redis (so a
    /// slow run measures Redis, not the fallback).
    ///
    /// # Errors
    ///
    /// A `Config` error for an invalid URL or lease.
    pub fn new(url: &str, key: &str, lease: u32) -> Result<Self, crate::Error> {
        let limit = RateLimit::per_second(1_000_000)
            .burst(1_000_000)
            .shared(
                crate::RedisLimiter::new(url, key)
                    .lease(lease)
                    .timeout(Duration::from_secs(1)),
            )
            .on_store_error(crate::StoreFallback::Reject);
        Ok(Self {
            limits: Limits::from_settings(Some(&limit), None)?,
            deadline: Deadline::after(Duration::from_secs(3600)),
        })
    }

    /// Takes one permit; `false` when refused (Redis failed).
    pub async fn permit(&self) -> bool {
        self.limits.rate(&self.deadline).await.is_ok()
    }
}
