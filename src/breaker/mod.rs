//! Circuit breakers: one per endpoint, a plain state machine with no I/O.
//!
//! States, as a list:
//!
//! - **Closed**: calls pass; failed attempts are counted, and the first trip
//!   rule that is met opens the breaker (the rules, their defaults and the
//!   default configuration's promise, with its arithmetic, are on
//!   [`CircuitBreakerConfig`]).
//! - **Open**: calls are refused at once with [`ErrorKind::Rejected`] and
//!   [`Error::is_circuit_open`]; [`Error::retry_after`] says when the next probe
//!   may go. After `open_duration` the breaker is half-open.
//! - **`HalfOpen`**: at most `half_open_max_calls` probes pass at a time; others are
//!   refused. A probe that succeeds closes the breaker; one that fails opens it
//!   again. A probe whose call is dropped gives its slot back.
//!
//! Failures are [`ErrorKind::Retryable`] and [`ErrorKind::Server`] outcomes;
//! every other outcome proves the endpoint answered. Every attempt is recorded,
//! not every call, so a breaker can open in the middle of a retry loop.
//!
//! Mechanism: the closed fast path ([`Breaker::try_acquire`]) reads two atomics
//! (the packed state, and the deadline of a sustained run, if one is armed) and
//! neither locks nor allocates. Recording an outcome takes a short lock on the
//! counts: the run of failures in a row, and the rate window (`window.rs`:
//! per-second buckets, or a ring of outcomes), both sized when the breaker is
//! built. The model tests in `model.rs` drive millions of attempts through
//! this state machine on an injected clock.
//!
//! [`ErrorKind::Rejected`]: crate::ErrorKind::Rejected
//! [`ErrorKind::Retryable`]: crate::ErrorKind::Retryable
//! [`ErrorKind::Server`]: crate::ErrorKind::Server
//! [`Error::is_circuit_open`]: crate::Error::is_circuit_open
//! [`Error::retry_after`]: crate::Error::retry_after

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, ErrorKind};
use crate::timeout::nanos_since;

#[cfg(test)]
mod model;
mod registry;
mod window;

pub(crate) use registry::Breakers;
pub(crate) use window::{FailureRate, RateWindow};
use window::{MAX_TIME_WINDOW, Window};

/// The state of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CircuitState {
    /// Calls pass; failures are counted.
    Closed,
    /// Calls are refused at once until the open duration has passed.
    Open,
    /// A limited number of probe calls pass to test the endpoint.
    HalfOpen,
}

impl CircuitState {
    /// A short name for logs and metrics (`"closed"`, `"open"`, `"half_open"`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

type StateCallback = Arc<dyn Fn(&StateChange<'_>) + Send + Sync>;

/// A circuit breaker's change of state, as
/// [`on_state_change`](CircuitBreakerConfig::on_state_change) reports it.
///
/// `#[non_exhaustive]`: fields may be added (read them by name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct StateChange<'a> {
    /// The endpoint, as `scheme://host:port`.
    pub endpoint: &'a str,
    /// The state before the change.
    pub from: CircuitState,
    /// The state after the change.
    pub to: CircuitState,
}

/// The default of [`CircuitBreakerConfig::consecutive_failures`].
const CONSECUTIVE: u32 = 30;
/// The default of [`CircuitBreakerConfig::sustained_failures`].
const SUSTAINED: Sustained = Sustained {
    failures: 20,
    span: Duration::from_secs(1),
};
/// The default window of [`CircuitBreakerConfig::failure_rate_over`].
pub(crate) const DEFAULT_RATE_WINDOW: Duration = Duration::from_secs(30);
/// The default of [`CircuitBreakerConfig::failure_rate_over`].
pub(crate) const DEFAULT_RATE: FailureRate = FailureRate {
    threshold: 0.5,
    window: RateWindow::Time(DEFAULT_RATE_WINDOW),
    min_calls: 300,
};

/// When a circuit breaker opens and how it probes its way back.
///
/// A closed breaker opens on the first of three trip rules that is met:
///
/// | rule | default | set with |
/// |---|---|---|
/// | failed attempts in a row, at any speed | 30 | [`consecutive_failures`](Self::consecutive_failures) |
/// | failed attempts in a row that have lasted a while | 20, lasting 1 s | [`sustained_failures`](Self::sustained_failures) |
/// | the share of failed attempts among the recent ones | 50% of the most recent whole seconds that hold 300 attempts, within the last 30 s | [`failure_rate_over`](Self::failure_rate_over), or [`failure_rate`](Self::failure_rate) over a count of attempts |
///
/// | other option | default |
/// |---|---|
/// | `open_duration` | 10 s |
/// | `half_open_max_calls` | 1 |
///
/// A sustained run opens the breaker as soon as it has lasted its span: the
/// first attempt asked for after that is refused, even if the run reached its
/// count earlier.
///
/// A failed attempt is one that ended `Retryable` or `Server`, with
/// exceptions that say nothing against the endpoint:
///
/// - a request it refused unprocessed (an HTTP/2 stream refused or cut by a
///   `GOAWAY`);
/// - the failure of the caller's own upload stream;
/// - an error status from another origin a redirect led to: the endpoint
///   answered (with the redirect), which counts as its success (a
///   connection failure or a timeout at that origin still counts against
///   the endpoint: the transport does not say where it happened);
/// - an attempt cut by the call's deadline before the `attempt_timeout` (the
///   call's own [`timeout`](crate::RequestBuilder::timeout), a client-wide
///   `total_timeout`, or what waits left of them), when the endpoint
///   answered another attempt while it ran or as long before it started.
///   One code path in a hurry must not open the breaker for every caller;
///   an endpoint that answers nobody while such attempts run (it hangs, or
///   drops packets) counts their timeouts as failures.
///
/// # What the default configuration promises
///
/// The default tells an outage from a flaky dependency:
///
/// - **An outage opens it fast.** A full outage that starts from a healthy
///   state opens it within 20 failed attempts or 1 s, whichever is later: when
///   the 20th failure in a row comes 1 s or more after the first, it opens the
///   breaker; when it comes sooner, the run opens it once it has lasted 1 s
///   (the next attempt is refused), or at its 30th failure if that comes
///   first (so a burst of calls into a dead endpoint costs about 30 requests,
///   not a second of them).
/// - **A bad share opens it.** Failures of 50% or more sustained for 30 s at 10
///   attempts a second or more open it: the window (the current second and 30
///   before it) then holds 300 attempts or more, and a share of 50% trips it
///   at the next failed attempt (a success never opens the breaker).
///   At a higher rate it reacts sooner: from 300 attempts a second, the last
///   second alone holds enough.
/// - **Healing is seen at once.** After `open_duration` one probe goes; its
///   success closes the breaker, so calls succeed again within `open_duration`
///   plus one probe.
/// - **Random failures do not open it.** Independent random failures at a rate
///   up to 30%, at any call rate from 1 to 50,000 calls a second, open it less
///   than once per 1,000 hours (expected openings below 1e-3 an hour).
///
/// The arithmetic for the last promise, with p = 0.3 and, to leave room for
/// retries (4 attempts at 30% make 1.42 attempts a call), 100,000 attempts a
/// second, 3.6e8 an hour; every attempt's outcome is assumed independent of the
/// others and of when attempts are made:
///
/// - *30 in a row*: a run of 30 failures starts at a given attempt with
///   probability at most p^30 = 2.1e-16; 3.6e8 × 2.1e-16 = 7.4e-8 an hour.
/// - *20 in a row lasting 1 s*: such a run holds every attempt of its first
///   second, and at least 20. Cut the hour into 3,600 one-second slices: an
///   attempt that is the j-th from the end of its slice starts such a run with
///   probability at most p^max(20, j), so a slice adds at most
///   20·p^20 + p^21/(1 − p) = 7.1e-10, whatever the call rate or its bursts:
///   3,600 × 7.1e-10 = 2.6e-6 an hour.
/// - *The share*: each check counts n ≥ 300 attempts, whose failures are
///   binomial; P(Bin(n, 0.3) ≥ n/2) is largest at n = 300, where it is 3.5e-13
///   (the Chernoff bound, e^(−300·D(0.5‖0.3)) = 4.4e-12, is looser). There is
///   one check per failed attempt; counting one per attempt:
///   3.6e8 × 3.5e-13 = 1.3e-4 an hour. At lower rates the checks are fewer,
///   and below about 10 attempts a second the window seldom holds 300.
/// - *Together*: at most 1.3e-4 openings an hour, once in about 7,800 hours.
///   At 20% failures the share term is 5e-31 a check.
///
/// A fixed count cannot carry this alone: 10 failures in a row start at
/// about one attempt in 240,000 at p = 0.3 (0.7 × 0.3^10), about 740 an hour
/// at 50,000 attempts a second; a count safe at that rate (22 or more) would
/// break the promise of opening within 20 failed attempts for a quiet client.
/// The time condition lets 20 apply where 20 is safe.
///
/// Explicit settings keep their meaning: `consecutive_failures(5)` opens on
/// any 5 failures in a row (which also covers the sustained rule), and
/// `failure_rate(0.5, 20, 10)` counts the last 20 attempts.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use resilient_http::{ApiClient, CircuitBreakerConfig};
///
/// let client = ApiClient::builder()
///     .base_url("http://127.0.0.1:8080/")
///     .circuit_breaker(
///         CircuitBreakerConfig::default()
///             .consecutive_failures(3)
///             .open_duration(Duration::from_secs(5))
///             .on_state_change(|change| {
///                 eprintln!("{}: {} -> {}", change.endpoint, change.from, change.to);
///             }),
///     )
///     .build()?;
/// # Ok::<(), resilient_http::Error>(())
/// ```
#[derive(Clone)]
#[must_use]
pub struct CircuitBreakerConfig {
    pub(crate) consecutive_failures: u32,
    pub(crate) sustained: Sustained,
    pub(crate) failure_rate: Option<FailureRate>,
    pub(crate) open_duration: Duration,
    pub(crate) half_open_max_calls: u32,
    pub(crate) on_state_change: Option<StateCallback>,
    /// The first invalid setting found while reading a configuration file.
    pub(crate) invalid: Option<&'static str>,
}

/// The sustained-run rule: `failures` in a row (0: off) lasting `span`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sustained {
    pub(crate) failures: u32,
    pub(crate) span: Duration,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: CONSECUTIVE,
            sustained: SUSTAINED,
            failure_rate: Some(DEFAULT_RATE),
            open_duration: Duration::from_secs(10),
            half_open_max_calls: 1,
            on_state_change: None,
            invalid: None,
        }
    }
}

impl fmt::Debug for CircuitBreakerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerConfig")
            .field("consecutive_failures", &self.consecutive_failures)
            .field("sustained", &self.sustained)
            .field("failure_rate", &self.failure_rate)
            .field("open_duration", &self.open_duration)
            .field("half_open_max_calls", &self.half_open_max_calls)
            .field("on_state_change", &self.on_state_change.is_some())
            .field("invalid", &self.invalid)
            .finish()
    }
}

impl CircuitBreakerConfig {
    /// Open after this many failed attempts in a row, however fast they come
    /// (default 30; 0 turns this rule off). The sustained rule
    /// ([`sustained_failures`](Self::sustained_failures)) is separate.
    pub fn consecutive_failures(mut self, failures: u32) -> Self {
        self.consecutive_failures = failures;
        self
    }

    /// Open after `failures` failed attempts in a row once the run has lasted
    /// `span` since its first failure (default 20 over 1 s; 0 failures turns
    /// this rule off). The breaker opens at the first attempt asked for after
    /// the span has passed, so a run that reached its count sooner does not
    /// wait for another failure.
    pub fn sustained_failures(mut self, failures: u32, span: Duration) -> Self {
        self.sustained = Sustained { failures, span };
        self
    }

    /// Open when at least `threshold` (0.0 to 1.0) of the last `window`
    /// attempts failed, once `min_calls` attempts are in the window. This
    /// replaces the default time-based rule
    /// ([`failure_rate_over`](Self::failure_rate_over)). Invalid values are a
    /// `Config` error from [`build()`](crate::ApiClientBuilder::build).
    pub fn failure_rate(mut self, threshold: f64, window: u32, min_calls: u32) -> Self {
        self.failure_rate = Some(FailureRate {
            threshold,
            window: RateWindow::Calls(window),
            min_calls,
        });
        self
    }

    /// Open when at least `threshold` (0.0 to 1.0) of the attempts of the most
    /// recent whole seconds that hold `min_calls` attempts failed, looking back
    /// over the current second and `window` (rounded up to whole seconds, 1 s
    /// to 10 min) before it; fewer than `min_calls` attempts in all never trip
    /// it. Default `0.5, 30 s, 300`: see the table above for why. Invalid
    /// values are a `Config` error from [`build()`](crate::ApiClientBuilder::build).
    pub fn failure_rate_over(mut self, threshold: f64, window: Duration, min_calls: u32) -> Self {
        self.failure_rate = Some(FailureRate {
            threshold,
            window: RateWindow::Time(window),
            min_calls,
        });
        self
    }

    /// No failure-rate rule: trip on failures in a row only.
    pub fn no_failure_rate(mut self) -> Self {
        self.failure_rate = None;
        self
    }

    /// How long the breaker stays open before it admits a probe (default 10 s).
    pub fn open_duration(mut self, duration: Duration) -> Self {
        self.open_duration = duration;
        self
    }

    /// Probes admitted at a time while half-open (default 1; at least 1).
    pub fn half_open_max_calls(mut self, calls: u32) -> Self {
        self.half_open_max_calls = calls;
        self
    }

    /// Called with a [`StateChange`] (endpoint, from, to) on every state
    /// change, after the change, outside any lock. Keep it short: it runs on the caller's task.
    pub fn on_state_change<F>(mut self, callback: F) -> Self
    where
        F: Fn(&StateChange<'_>) + Send + Sync + 'static,
    {
        self.on_state_change = Some(Arc::new(callback));
        self
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if let Some(reason) = self.invalid {
            return Err(Error::config(reason));
        }
        if self.half_open_max_calls == 0 {
            return Err(Error::config(
                "circuit breaker: half_open_max_calls must be at least 1",
            ));
        }
        if let Some(rate) = self.failure_rate {
            if !(0.0..=1.0).contains(&rate.threshold) {
                return Err(Error::config(
                    "circuit breaker: failure_rate threshold must be within 0.0..=1.0",
                ));
            }
            match rate.window {
                RateWindow::Calls(0) => {
                    return Err(Error::config(
                        "circuit breaker: failure_rate window must not be 0",
                    ));
                }
                RateWindow::Calls(window) if rate.min_calls > window => {
                    return Err(Error::config(
                        "circuit breaker: failure_rate min_calls must not exceed the window",
                    ));
                }
                RateWindow::Time(window)
                    if window < Duration::from_secs(1) || window > MAX_TIME_WINDOW =>
                {
                    return Err(Error::config(
                        "circuit breaker: failure_rate_over window must be within 1 s..=10 min",
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Why a breaker opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    Consecutive,
    Sustained,
    Rate,
    ProbeFailed,
}

impl Reason {
    const fn as_str(self) -> &'static str {
        match self {
            Self::Consecutive => "consecutive failures",
            Self::Sustained => "sustained failures",
            Self::Rate => "failure rate",
            Self::ProbeFailed => "probe failed",
        }
    }
}

const TAG_CLOSED: u64 = 0;
const TAG_OPEN: u64 = 1;
const TAG_HALF_OPEN: u64 = 2;
/// `trip_at` when no sustained run is armed.
const UNARMED: u64 = u64::MAX;

#[derive(Debug, Clone, Copy)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { in_flight: u32 },
}

#[derive(Debug)]
struct Machine {
    state: State,
    generation: u64,
    /// Failed attempts in a row, and when the first of them was recorded.
    consecutive: u32,
    run_start: Instant,
    /// Whether `trip_at` holds this run's deadline.
    armed: bool,
    window: Window,
    /// When the endpoint last answered (a success recorded).
    answered: Option<Instant>,
}

/// A transition to report once the lock is released.
#[derive(Debug, Clone, Copy)]
struct Transition {
    from: CircuitState,
    to: CircuitState,
    reason: Option<Reason>,
}

/// One endpoint's circuit breaker.
pub(crate) struct Breaker {
    endpoint: Box<str>,
    cfg: CircuitBreakerConfig,
    /// Where the rate window's seconds and `trip_at` count from.
    epoch: Instant,
    /// `generation << 2 | tag`, for the lock-free closed-state fast path.
    packed: AtomicU64,
    /// Nanoseconds after `epoch` when an armed sustained run opens the
    /// breaker (`UNARMED` when none is), for the same fast path.
    trip_at: AtomicU64,
    machine: Mutex<Machine>,
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("endpoint", &self.endpoint)
            .field("state", &self.state(Instant::now()))
            .finish_non_exhaustive()
    }
}

/// Admission to make one attempt. Record its outcome with [`Permit::record`];
/// dropping it unrecorded (a cancelled call) gives a probe slot back.
#[derive(Debug)]
pub(crate) struct Permit<'a> {
    breaker: &'a Breaker,
    generation: u64,
    probe: bool,
    done: bool,
}

/// The outcome of one attempt, as the breaker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The endpoint answered.
    Success,
    /// The endpoint failed (a `Retryable` or `Server` outcome).
    Failure,
    /// The attempt proves nothing about the endpoint (it was never sent).
    Neutral,
    /// The call's own deadline cut the attempt (started at `started`)
    /// before the attempt timeout: a failure unless the endpoint answered
    /// another attempt while this one ran, or as long before it started. A
    /// short deadline against an endpoint that answers others says nothing
    /// of it; against one that answers nobody (it hangs, or drops packets)
    /// it is an outage.
    Cut { started: Instant },
}

impl Verdict {
    /// What an outcome of `kind` says about the endpoint. The one place that
    /// decides what counts as a failure: `Retryable` and `Server` do; a local
    /// `Config` or `Rejected` error proves nothing; anything else means the
    /// endpoint answered.
    pub(crate) const fn of(kind: ErrorKind) -> Self {
        if kind.is_endpoint_failure() {
            Self::Failure
        } else if matches!(kind, ErrorKind::Config | ErrorKind::Rejected) {
            Self::Neutral
        } else {
            Self::Success
        }
    }
}

impl Breaker {
    pub(crate) fn new(endpoint: impl Into<Box<str>>, cfg: CircuitBreakerConfig) -> Self {
        let now = Instant::now();
        let window = Window::new(cfg.failure_rate);
        Self {
            endpoint: endpoint.into(),
            cfg,
            epoch: now,
            packed: AtomicU64::new(TAG_CLOSED),
            trip_at: AtomicU64::new(UNARMED),
            machine: Mutex::new(Machine {
                state: State::Closed,
                generation: 0,
                consecutive: 0,
                run_start: now,
                armed: false,
                window,
                answered: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Machine> {
        // The machine is updated in small steps that leave it consistent, so a
        // panic elsewhere while holding the lock cannot corrupt it.
        self.machine.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks to make one attempt at `now`. `Err` carries the time until the
    /// next probe may go (`None` when half-open probes are all taken).
    pub(crate) fn try_acquire(&self, now: Instant) -> Result<Permit<'_>, Option<Duration>> {
        let packed = self.packed.load(Ordering::Acquire);
        if packed & 3 == TAG_CLOSED && !self.run_due(now) {
            return Ok(Permit {
                breaker: self,
                generation: packed >> 2,
                probe: false,
                done: false,
            });
        }
        let (result, transition) = {
            let mut m = self.lock();
            let transition = self.advance(&mut m, now);
            let generation = m.generation;
            let result = match m.state {
                State::Closed => Ok(Permit {
                    breaker: self,
                    generation,
                    probe: false,
                    done: false,
                }),
                State::Open { until } => Err(Some(until.saturating_duration_since(now))),
                State::HalfOpen { ref mut in_flight } => {
                    if *in_flight < self.cfg.half_open_max_calls {
                        *in_flight += 1;
                        Ok(Permit {
                            breaker: self,
                            generation,
                            probe: true,
                            done: false,
                        })
                    } else {
                        Err(None)
                    }
                }
            };
            (result, transition)
        };
        self.report(transition);
        result
    }

    /// Whether an armed sustained run has lasted its span at `now` (lock-free;
    /// the lock confirms it).
    fn run_due(&self, now: Instant) -> bool {
        let at = self.trip_at.load(Ordering::Acquire);
        at != UNARMED && nanos_since(self.epoch, now) >= at
    }

    /// The state at `now` (an open breaker whose time is up reports half-open).
    pub(crate) fn state(&self, now: Instant) -> CircuitState {
        let transition = {
            let mut m = self.lock();
            let t = self.advance(&mut m, now);
            (public(m.state), t)
        };
        self.report(transition.1);
        transition.0
    }

    /// Whether it is closed, as it stands (no transition is made or
    /// reported).
    pub(crate) fn is_closed(&self) -> bool {
        self.packed.load(Ordering::Acquire) & 3 == TAG_CLOSED
    }

    /// Time until an open breaker admits a probe; `None` unless open.
    pub(crate) fn open_for(&self, now: Instant) -> Option<Duration> {
        if self.packed.load(Ordering::Acquire) & 3 != TAG_OPEN {
            return None;
        }
        match self.lock().state {
            State::Open { until } if until > now => Some(until - now),
            _ => None,
        }
    }

    /// The changes time alone makes: Open -> `HalfOpen` once the open
    /// duration has passed, Closed -> Open once an armed sustained run has
    /// lasted its span.
    fn advance(&self, m: &mut Machine, now: Instant) -> Option<Transition> {
        match m.state {
            State::Open { until } if now >= until => {
                Some(self.set(m, State::HalfOpen { in_flight: 0 }, None))
            }
            State::Closed if m.armed && self.sustained(m, now) => {
                Some(self.open(m, now, Reason::Sustained))
            }
            _ => None,
        }
    }

    /// Whether the run of failures meets the sustained rule at `now`.
    fn sustained(&self, m: &Machine, now: Instant) -> bool {
        let rule = self.cfg.sustained;
        rule.failures > 0
            && m.consecutive >= rule.failures
            && now.saturating_duration_since(m.run_start) >= rule.span
    }

    fn disarm(&self, m: &mut Machine) {
        if m.armed {
            m.armed = false;
            self.trip_at.store(UNARMED, Ordering::Release);
        }
    }

    fn set(&self, m: &mut Machine, to: State, reason: Option<Reason>) -> Transition {
        let from = public(m.state);
        m.state = to;
        m.generation += 1;
        self.disarm(m);
        let tag = match to {
            State::Closed => {
                m.consecutive = 0;
                m.window.clear();
                TAG_CLOSED
            }
            State::Open { .. } => TAG_OPEN,
            State::HalfOpen { .. } => TAG_HALF_OPEN,
        };
        self.packed
            .store(m.generation << 2 | tag, Ordering::Release);
        Transition {
            from,
            to: public(to),
            reason,
        }
    }

    fn record(&self, permit: &Permit<'_>, verdict: Verdict, now: Instant) {
        if verdict == Verdict::Neutral && !permit.probe {
            return;
        }
        let transition = {
            let mut m = self.lock();
            if verdict == Verdict::Success {
                m.answered = Some(m.answered.map_or(now, |t| t.max(now)));
            }
            if m.generation != permit.generation {
                // A result from before the last state change says nothing now.
                return;
            }
            let verdict = match verdict {
                Verdict::Cut { started } => {
                    // An answer while it ran, or as long before it started.
                    let ran = now.saturating_duration_since(started);
                    let since = started.checked_sub(ran).unwrap_or(started);
                    if m.answered.is_some_and(|t| t >= since) {
                        Verdict::Neutral
                    } else {
                        Verdict::Failure
                    }
                }
                v => v,
            };
            match (m.state, verdict) {
                (State::Closed, Verdict::Success) => self.counted(&mut m, now, false),
                (State::Closed, Verdict::Failure) => self.counted(&mut m, now, true),
                (State::HalfOpen { .. }, Verdict::Success) => {
                    Some(self.set(&mut m, State::Closed, None))
                }
                (State::HalfOpen { .. }, Verdict::Failure) => {
                    Some(self.open(&mut m, now, Reason::ProbeFailed))
                }
                (State::HalfOpen { in_flight }, Verdict::Neutral) => {
                    m.state = State::HalfOpen {
                        in_flight: in_flight.saturating_sub(1),
                    };
                    None
                }
                (State::Closed | State::Open { .. }, _) | (_, Verdict::Cut { .. }) => None,
            }
        };
        self.report(transition);
    }

    /// Counts an attempt in the closed state and, after a failure, applies
    /// the trip rules.
    fn counted(&self, m: &mut Machine, now: Instant, failed: bool) -> Option<Transition> {
        m.window.push(failed, self.second(now));
        if failed {
            if m.consecutive == 0 {
                m.run_start = now;
            }
            m.consecutive = m.consecutive.saturating_add(1);
        } else {
            m.consecutive = 0;
            self.disarm(m);
        }
        let cf = self.cfg.consecutive_failures;
        let reason = if !failed {
            // A success never opens the breaker.
            None
        } else if cf > 0 && m.consecutive >= cf {
            Some(Reason::Consecutive)
        } else if self.sustained(m, now) {
            Some(Reason::Sustained)
        } else if self
            .cfg
            .failure_rate
            .is_some_and(|rule| m.window.tripped(&rule))
        {
            Some(Reason::Rate)
        } else {
            None
        };
        if let Some(reason) = reason {
            return Some(self.open(m, now, reason));
        }
        let rule = self.cfg.sustained;
        if failed && rule.failures > 0 && m.consecutive >= rule.failures && !m.armed {
            // The count is reached before the span: open once the span has
            // passed, at whatever asks first.
            let due = m
                .run_start
                .checked_add(rule.span)
                .map_or(UNARMED - 1, |at| nanos_since(self.epoch, at));
            m.armed = true;
            self.trip_at.store(due, Ordering::Release);
        }
        None
    }

    /// Whole seconds from the epoch to `now`: the rate window's bucket.
    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }

    fn open(&self, m: &mut Machine, now: Instant, reason: Reason) -> Transition {
        // A duration too long to add means "open until further notice".
        let until = now
            .checked_add(self.cfg.open_duration)
            .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
            .unwrap_or(now);
        self.set(m, State::Open { until }, Some(reason))
    }

    /// Gives back a probe slot of a permit dropped without a result.
    fn release(&self, permit: &Permit<'_>) {
        if permit.probe {
            self.record(permit, Verdict::Neutral, Instant::now());
        }
    }

    fn report(&self, transition: Option<Transition>) {
        let Some(t) = transition else { return };
        let endpoint = &*self.endpoint;
        match t.to {
            CircuitState::Open => tracing::warn!(
                target: "resilient_http::breaker",
                endpoint,
                from = t.from.as_str(),
                reason = t.reason.map_or("", Reason::as_str),
                open_for_ms = u64::try_from(self.cfg.open_duration.as_millis()).unwrap_or(u64::MAX),
                "circuit breaker opened"
            ),
            CircuitState::HalfOpen => tracing::info!(
                target: "resilient_http::breaker",
                endpoint,
                "circuit breaker half-open: admitting probes"
            ),
            CircuitState::Closed => tracing::info!(
                target: "resilient_http::breaker",
                endpoint,
                "circuit breaker closed"
            ),
        }
        #[cfg(feature = "metrics")]
        crate::stats::breaker_transition(endpoint, t.to);
        if let Some(cb) = &self.cfg.on_state_change {
            cb(&StateChange {
                endpoint,
                from: t.from,
                to: t.to,
            });
        }
    }
}

fn public(state: State) -> CircuitState {
    match state {
        State::Closed => CircuitState::Closed,
        State::Open { .. } => CircuitState::Open,
        State::HalfOpen { .. } => CircuitState::HalfOpen,
    }
}

impl Permit<'_> {
    /// Records the outcome of the attempt this permit admitted.
    pub(crate) fn record(mut self, verdict: Verdict, now: Instant) {
        self.done = true;
        self.breaker.record(&self, verdict, now);
    }

    /// Whether this permit is a half-open probe.
    #[cfg(test)]
    pub(crate) fn is_probe(&self) -> bool {
        self.probe
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.release(self);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg() -> CircuitBreakerConfig {
        CircuitBreakerConfig::default()
            .consecutive_failures(3)
            .no_failure_rate()
            .open_duration(Duration::from_secs(10))
    }

    fn fail(b: &Breaker, now: Instant) {
        b.try_acquire(now).unwrap().record(Verdict::Failure, now);
    }

    #[test]
    fn opens_after_consecutive_failures_and_rejects_with_time_to_probe() {
        let t0 = Instant::now();
        let b = Breaker::new("e", cfg());
        fail(&b, t0);
        fail(&b, t0);
        assert_eq!(b.state(t0), CircuitState::Closed);
        fail(&b, t0);
        assert_eq!(b.state(t0), CircuitState::Open);
        let wait = b.try_acquire(t0 + Duration::from_secs(4)).unwrap_err();
        assert_eq!(wait, Some(Duration::from_secs(6)));
    }

    #[test]
    fn a_cut_attempt_counts_only_when_the_endpoint_answered_nobody_meanwhile() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let b = Breaker::new("e", cfg());
        // Another attempt answered while each cut one ran: nothing counts.
        for k in 0..5 {
            let cut = b.try_acquire(ms(k * 100)).unwrap();
            b.try_acquire(ms(k * 100 + 10))
                .unwrap()
                .record(Verdict::Success, ms(k * 100 + 20));
            let started = ms(k * 100);
            cut.record(Verdict::Cut { started }, ms(k * 100 + 50));
        }
        assert_eq!(b.state(ms(500)), CircuitState::Closed);
        // The last answer came before these started: an outage.
        for k in 6..9 {
            let started = ms(k * 100);
            let cut = b.try_acquire(started).unwrap();
            cut.record(Verdict::Cut { started }, ms(k * 100 + 50));
        }
        assert_eq!(b.state(ms(900)), CircuitState::Open);
        // An answer just before a cut one started (a caller taking turns
        // with a slower path): nothing counts either, so half the attempts
        // failing does not open it by its rate.
        let b2 = Breaker::new("f", cfg().failure_rate(0.5, 10, 4));
        for k in 0..5 {
            let answered_at = ms(k * 2000);
            b2.try_acquire(answered_at)
                .unwrap()
                .record(Verdict::Success, answered_at);
            let started = answered_at + Duration::from_millis(10);
            let cut = b2.try_acquire(started).unwrap();
            cut.record(Verdict::Cut { started }, started + Duration::from_secs(1));
        }
        assert_eq!(b2.state(ms(10_000)), CircuitState::Closed);
        // A probe the deadline cut with no answer meanwhile reopens it.
        let later = ms(900) + Duration::from_secs(10);
        let probe = b.try_acquire(later).unwrap();
        probe.record(
            Verdict::Cut { started: later },
            later + Duration::from_millis(50),
        );
        assert_eq!(b.state(later), CircuitState::Open);
    }

    #[test]
    fn a_success_resets_the_consecutive_count() {
        let t0 = Instant::now();
        let b = Breaker::new("e", cfg());
        fail(&b, t0);
        fail(&b, t0);
        b.try_acquire(t0).unwrap().record(Verdict::Success, t0);
        fail(&b, t0);
        fail(&b, t0);
        assert_eq!(b.state(t0), CircuitState::Closed);
    }

    #[test]
    fn half_open_probe_success_closes_and_failure_reopens() {
        let t0 = Instant::now();
        let b = Breaker::new("e", cfg());
        for _ in 0..3 {
            fail(&b, t0);
        }
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.state(t1), CircuitState::HalfOpen);
        let probe = b.try_acquire(t1).unwrap();
        assert!(probe.is_probe());
        assert_eq!(b.try_acquire(t1).unwrap_err(), None, "one probe at a time");
        probe.record(Verdict::Failure, t1);
        assert_eq!(b.state(t1), CircuitState::Open);
        let t2 = t1 + Duration::from_secs(10);
        b.try_acquire(t2).unwrap().record(Verdict::Success, t2);
        assert_eq!(b.state(t2), CircuitState::Closed);
    }

    #[test]
    fn a_dropped_probe_gives_its_slot_back() {
        let t0 = Instant::now();
        let b = Breaker::new("e", cfg());
        for _ in 0..3 {
            fail(&b, t0);
        }
        let t1 = t0 + Duration::from_secs(10);
        drop(b.try_acquire(t1).unwrap());
        assert!(b.try_acquire(t1).is_ok());
    }

    #[test]
    fn failure_rate_trips_once_min_calls_are_seen() {
        let t0 = Instant::now();
        let b = Breaker::new(
            "e",
            CircuitBreakerConfig::default()
                .consecutive_failures(0)
                .failure_rate(0.5, 10, 6),
        );
        // fail, ok, fail, ok, fail: 3 of 5, below min_calls.
        for i in 0..5 {
            let v = if i % 2 == 0 {
                Verdict::Failure
            } else {
                Verdict::Success
            };
            b.try_acquire(t0).unwrap().record(v, t0);
        }
        assert_eq!(b.state(t0), CircuitState::Closed);
        b.try_acquire(t0).unwrap().record(Verdict::Success, t0);
        assert_eq!(
            b.state(t0),
            CircuitState::Closed,
            "3 of 6 failed: 50%, but the last call succeeded"
        );
        fail(&b, t0);
        assert_eq!(b.state(t0), CircuitState::Open, "4 of 7 failed");
    }

    #[test]
    fn late_results_from_before_a_change_are_ignored() {
        let t0 = Instant::now();
        let b = Breaker::new("e", cfg());
        let early = b.try_acquire(t0).unwrap();
        for _ in 0..3 {
            fail(&b, t0);
        }
        early.record(Verdict::Success, t0);
        assert_eq!(b.state(t0), CircuitState::Open);
    }

    #[test]
    fn state_changes_call_back_outside_the_lock() {
        let t0 = Instant::now();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let b = Arc::new(Breaker::new(
            "http://x:1",
            cfg().on_state_change(move |c| {
                log.lock()
                    .unwrap()
                    .push((c.endpoint.to_owned(), c.from, c.to));
            }),
        ));
        for _ in 0..3 {
            fail(&b, t0);
        }
        let t1 = t0 + Duration::from_secs(10);
        b.try_acquire(t1).unwrap().record(Verdict::Success, t1);
        let seen = seen.lock().unwrap().clone();
        let states: Vec<_> = seen.iter().map(|(_, f, t)| (*f, *t)).collect();
        assert_eq!(
            states,
            [
                (CircuitState::Closed, CircuitState::Open),
                (CircuitState::Open, CircuitState::HalfOpen),
                (CircuitState::HalfOpen, CircuitState::Closed),
            ]
        );
        assert!(seen.iter().all(|(e, _, _)| e == "http://x:1"));
    }

    #[test]
    fn a_sustained_run_opens_once_it_has_lasted_its_span() {
        let t0 = Instant::now();
        let b = Breaker::new(
            "e",
            CircuitBreakerConfig::default()
                .consecutive_failures(0)
                .no_failure_rate()
                .sustained_failures(3, Duration::from_secs(1)),
        );
        let ms = |n| t0 + Duration::from_millis(n);
        for t in [0, 100, 200, 300] {
            fail(&b, ms(t));
        }
        assert_eq!(
            b.state(ms(999)),
            CircuitState::Closed,
            "4 failures, 0.999 s"
        );
        // No further failure is needed: the next ask after 1 s is refused.
        assert_eq!(
            b.try_acquire(ms(1_000)).unwrap_err(),
            Some(Duration::from_secs(10))
        );
        assert_eq!(b.state(ms(1_000)), CircuitState::Open);
    }

    #[test]
    fn a_success_disarms_a_sustained_run() {
        let t0 = Instant::now();
        let b = Breaker::new(
            "e",
            CircuitBreakerConfig::default()
                .consecutive_failures(0)
                .no_failure_rate()
                .sustained_failures(3, Duration::from_secs(1)),
        );
        for _ in 0..3 {
            fail(&b, t0);
        }
        b.try_acquire(t0).unwrap().record(Verdict::Success, t0);
        let later = t0 + Duration::from_secs(5);
        assert!(b.try_acquire(later).is_ok());
        assert_eq!(b.state(later), CircuitState::Closed);
        // A slow run opens at its count.
        for s in 5..8 {
            fail(&b, t0 + Duration::from_secs(s));
        }
        assert_eq!(b.state(t0 + Duration::from_secs(7)), CircuitState::Open);
    }

    #[test]
    fn the_default_rate_rule_counts_seconds_not_attempts() {
        let t0 = Instant::now();
        let b = Breaker::new(
            "e",
            CircuitBreakerConfig::default()
                .consecutive_failures(0)
                .sustained_failures(0, Duration::ZERO),
        );
        // 299 attempts, alternating, over 29.9 s: below min_calls.
        for i in 0..299u64 {
            let now = t0 + Duration::from_millis(100 * i);
            let v = if i % 2 == 1 {
                Verdict::Failure
            } else {
                Verdict::Success
            };
            b.try_acquire(now).unwrap().record(v, now);
        }
        assert_eq!(
            b.state(t0 + Duration::from_millis(29_800)),
            CircuitState::Closed
        );
        // The 300th, a failure: 150 of 300, exactly the threshold.
        fail(&b, t0 + Duration::from_millis(29_900));
        assert_eq!(
            b.state(t0 + Duration::from_millis(29_900)),
            CircuitState::Open
        );
    }

    #[test]
    fn config_is_validated() {
        assert!(CircuitBreakerConfig::default().validate().is_ok());
        assert!(
            CircuitBreakerConfig::default()
                .half_open_max_calls(0)
                .validate()
                .is_err()
        );
        assert!(
            CircuitBreakerConfig::default()
                .failure_rate(1.5, 20, 10)
                .validate()
                .is_err()
        );
        assert!(
            CircuitBreakerConfig::default()
                .failure_rate(0.5, 0, 0)
                .validate()
                .is_err()
        );
        assert!(
            CircuitBreakerConfig::default()
                .failure_rate(0.5, 5, 6)
                .validate()
                .is_err()
        );
        for bad in [Duration::from_millis(999), Duration::from_secs(601)] {
            assert!(
                CircuitBreakerConfig::default()
                    .failure_rate_over(0.5, bad, 10)
                    .validate()
                    .is_err()
            );
        }
        assert!(
            CircuitBreakerConfig::default()
                .failure_rate_over(0.5, Duration::from_secs(600), 10_000)
                .validate()
                .is_ok()
        );
    }

    #[derive(Debug, Clone)]
    enum Step {
        Acquire,
        Succeed(usize),
        Fail(usize),
        Drop(usize),
        Advance(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => Just(Step::Acquire),
            2 => (0usize..8).prop_map(Step::Succeed),
            3 => (0usize..8).prop_map(Step::Fail),
            1 => (0usize..8).prop_map(Step::Drop),
            2 => (0u64..15_000).prop_map(Step::Advance),
        ]
    }

    fn allowed(from: CircuitState, to: CircuitState) -> bool {
        use CircuitState::{Closed, HalfOpen, Open};
        matches!(
            (from, to),
            (Closed, Closed | Open)
                | (Open, Open | HalfOpen)
                | (HalfOpen, HalfOpen | Open | Closed)
        )
    }

    proptest! {
        #[test]
        fn random_runs_stay_on_the_state_graph(
            steps in proptest::collection::vec(step(), 1..200),
            max_probes in 1u32..4,
        ) {
            let t0 = Instant::now();
            let b = Breaker::new(
                "e",
                CircuitBreakerConfig::default()
                    .consecutive_failures(3)
                    .failure_rate(0.5, 6, 4)
                    .open_duration(Duration::from_secs(5))
                    .half_open_max_calls(max_probes),
            );
            let mut now = t0;
            let mut held: Vec<Permit<'_>> = Vec::new();
            let mut last = b.state(now);
            for s in steps {
                match s {
                    Step::Acquire => {
                        if let Ok(p) = b.try_acquire(now) {
                            held.push(p);
                        }
                    }
                    Step::Succeed(i) | Step::Fail(i) | Step::Drop(i) if !held.is_empty() => {
                        let p = held.remove(i % held.len());
                        match s {
                            Step::Succeed(_) => p.record(Verdict::Success, now),
                            Step::Fail(_) => p.record(Verdict::Failure, now),
                            _ => drop(p),
                        }
                    }
                    Step::Advance(ms) => now += Duration::from_millis(ms),
                    _ => {}
                }
                let probes_now = held.iter().filter(|p| p.probe && p.generation == b.packed.load(Ordering::Acquire) >> 2).count();
                prop_assert!(probes_now <= max_probes as usize);
                let state = b.state(now);
                prop_assert!(allowed(last, state), "{last:?} -> {state:?}");
                last = state;
            }
        }
    }
}
