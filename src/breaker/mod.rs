//! Circuit breakers: one per endpoint, a plain state machine with no I/O.
//!
//! States, as a list:
//!
//! - **Closed**: calls pass; failures are counted. `consecutive_failures` in a
//!   row, or a failure rate of at least `threshold` over the last `window`
//!   attempts (once `min_calls` are seen), opens the breaker.
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

mod registry;

pub(crate) use registry::Breakers;

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

type StateCallback = Arc<dyn Fn(&str, CircuitState, CircuitState) + Send + Sync>;

/// When a circuit breaker opens and how it probes its way back.
///
/// | option | default |
/// |---|---|
/// | `consecutive_failures` | 5 (0 turns this trip off) |
/// | `failure_rate(threshold, window, min_calls)` | `(0.5, 20, 10)` |
/// | `open_duration` | 10 s |
/// | `half_open_max_calls` | 1 |
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
///             .on_state_change(|endpoint, from, to| {
///                 eprintln!("{endpoint}: {from} -> {to}");
///             }),
///     )
///     .build()?;
/// # Ok::<(), resilient_http::Error>(())
/// ```
#[derive(Clone)]
#[must_use]
pub struct CircuitBreakerConfig {
    pub(crate) consecutive_failures: u32,
    pub(crate) failure_rate: Option<FailureRate>,
    pub(crate) open_duration: Duration,
    pub(crate) half_open_max_calls: u32,
    pub(crate) on_state_change: Option<StateCallback>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct FailureRate {
    pub(crate) threshold: f64,
    pub(crate) window: u32,
    pub(crate) min_calls: u32,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate: Some(FailureRate {
                threshold: 0.5,
                window: 20,
                min_calls: 10,
            }),
            open_duration: Duration::from_secs(10),
            half_open_max_calls: 1,
            on_state_change: None,
        }
    }
}

impl fmt::Debug for CircuitBreakerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerConfig")
            .field("consecutive_failures", &self.consecutive_failures)
            .field("failure_rate", &self.failure_rate)
            .field("open_duration", &self.open_duration)
            .field("half_open_max_calls", &self.half_open_max_calls)
            .field("on_state_change", &self.on_state_change.is_some())
            .finish()
    }
}

impl CircuitBreakerConfig {
    /// Open after this many failed attempts in a row (default 5; 0 turns it off).
    pub fn consecutive_failures(mut self, failures: u32) -> Self {
        self.consecutive_failures = failures;
        self
    }

    /// Open when at least `threshold` (0.0 to 1.0) of the last `window`
    /// attempts failed, once `min_calls` attempts are in the window
    /// (default `0.5, 20, 10`). Invalid values are a `Config` error from
    /// [`build()`](crate::ApiClientBuilder::build).
    pub fn failure_rate(mut self, threshold: f64, window: u32, min_calls: u32) -> Self {
        self.failure_rate = Some(FailureRate {
            threshold,
            window,
            min_calls,
        });
        self
    }

    /// Trip on consecutive failures only.
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

    /// Called with `(endpoint, from, to)` on every state change, after the
    /// change, outside any lock. Keep it short: it runs on the caller's task.
    pub fn on_state_change<F>(mut self, callback: F) -> Self
    where
        F: Fn(&str, CircuitState, CircuitState) + Send + Sync + 'static,
    {
        self.on_state_change = Some(Arc::new(callback));
        self
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
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
            if rate.window == 0 {
                return Err(Error::config(
                    "circuit breaker: failure_rate window must not be 0",
                ));
            }
            if rate.min_calls > rate.window {
                return Err(Error::config(
                    "circuit breaker: failure_rate min_calls must not exceed the window",
                ));
            }
        }
        Ok(())
    }
}

/// Why a breaker opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    Consecutive,
    Rate,
    ProbeFailed,
}

impl Reason {
    const fn as_str(self) -> &'static str {
        match self {
            Self::Consecutive => "consecutive failures",
            Self::Rate => "failure rate",
            Self::ProbeFailed => "probe failed",
        }
    }
}

const TAG_CLOSED: u64 = 0;
const TAG_OPEN: u64 = 1;
const TAG_HALF_OPEN: u64 = 2;

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
    consecutive: u32,
    ring: Vec<bool>,
    next: usize,
    seen: u32,
    failures: u32,
}

impl Machine {
    fn clear_counts(&mut self) {
        self.consecutive = 0;
        self.ring.iter_mut().for_each(|f| *f = false);
        self.next = 0;
        self.seen = 0;
        self.failures = 0;
    }

    fn push(&mut self, failed: bool) {
        if self.ring.is_empty() {
            return;
        }
        let len = u32::try_from(self.ring.len()).unwrap_or(u32::MAX);
        if self.seen == len && self.ring[self.next] {
            self.failures -= 1;
        }
        self.ring[self.next] = failed;
        if failed {
            self.failures += 1;
        }
        self.seen = (self.seen + 1).min(len);
        self.next = (self.next + 1) % self.ring.len();
    }
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
    /// `generation << 2 | tag`, for the lock-free closed-state fast path.
    packed: AtomicU64,
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
        let window = cfg.failure_rate.map_or(0, |r| r.window as usize);
        Self {
            endpoint: endpoint.into(),
            cfg,
            packed: AtomicU64::new(TAG_CLOSED),
            machine: Mutex::new(Machine {
                state: State::Closed,
                generation: 0,
                consecutive: 0,
                ring: vec![false; window],
                next: 0,
                seen: 0,
                failures: 0,
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
        if packed & 3 == TAG_CLOSED {
            return Ok(Permit {
                breaker: self,
                generation: packed >> 2,
                probe: false,
                done: false,
            });
        }
        let (result, transition) = {
            let mut m = self.lock();
            let transition = self.expire(&mut m, now);
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

    /// The state at `now` (an open breaker whose time is up reports half-open).
    pub(crate) fn state(&self, now: Instant) -> CircuitState {
        let transition = {
            let mut m = self.lock();
            let t = self.expire(&mut m, now);
            (public(m.state), t)
        };
        self.report(transition.1);
        transition.0
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

    /// Open -> `HalfOpen` once the open duration has passed.
    fn expire(&self, m: &mut Machine, now: Instant) -> Option<Transition> {
        if let State::Open { until } = m.state
            && now >= until
        {
            return Some(self.set(m, State::HalfOpen { in_flight: 0 }, None));
        }
        None
    }

    fn set(&self, m: &mut Machine, to: State, reason: Option<Reason>) -> Transition {
        let from = public(m.state);
        m.state = to;
        m.generation += 1;
        let tag = match to {
            State::Closed => {
                m.clear_counts();
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
            if m.generation != permit.generation {
                // A result from before the last state change says nothing now.
                return;
            }
            match (m.state, verdict) {
                (State::Closed, Verdict::Success) => {
                    m.consecutive = 0;
                    m.push(false);
                    None
                }
                (State::Closed, Verdict::Failure) => {
                    m.consecutive = m.consecutive.saturating_add(1);
                    m.push(true);
                    let cf = self.cfg.consecutive_failures;
                    let reason = if cf > 0 && m.consecutive >= cf {
                        Some(Reason::Consecutive)
                    } else if self.rate_tripped(&m) {
                        Some(Reason::Rate)
                    } else {
                        None
                    };
                    reason.map(|r| self.open(&mut m, now, r))
                }
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
                (State::Closed | State::Open { .. }, _) => None,
            }
        };
        self.report(transition);
    }

    fn open(&self, m: &mut Machine, now: Instant, reason: Reason) -> Transition {
        // A duration too long to add means "open until further notice".
        let until = now
            .checked_add(self.cfg.open_duration)
            .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
            .unwrap_or(now);
        self.set(m, State::Open { until }, Some(reason))
    }

    fn rate_tripped(&self, m: &Machine) -> bool {
        let Some(rate) = self.cfg.failure_rate else {
            return false;
        };
        m.seen > 0
            && m.seen >= rate.min_calls
            && f64::from(m.failures) / f64::from(m.seen) >= rate.threshold
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
            cb(endpoint, t.from, t.to);
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
            cfg().on_state_change(move |e, from, to| {
                log.lock().unwrap().push((e.to_owned(), from, to));
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
