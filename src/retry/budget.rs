//! The retry budget: how many retries a client may add on top of its calls.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Error;

/// How many retries the client may add on top of its calls.
///
/// Retrying a failing service multiplies its load exactly when it can least
/// bear it; a fixed `max_attempts` cannot prevent that, since every call still
/// retries. A budget bounds retries as a share of recent successful calls,
/// the way tower's `TpsBudget` and gRPC's retry throttling do: each call that
/// succeeds deposits `ratio` of a retry, each retry withdraws one, and deposits
/// expire after a 10 s window. A small floor (`min_per_second`, default 10 per
/// second over the window) lets a quiet client retry at all.
///
/// The budget is shared by all clones of a client.
///
/// | option | default |
/// |---|---|
/// | `ratio` | 0.5 (retries add at most half of the calls that succeed) |
/// | `min_per_second` | 10 |
/// | window | 10 s |
///
/// # The extra load it allows, and what it heals
///
/// - **The cap.** Over any window, retries are at most `ratio` × the calls
///   that succeeded in it plus `min_per_second` × the window: with the
///   defaults, +50% of the successful calls plus 10 retries a second. Since
///   only successes deposit, a full outage spends the floor alone: 100
///   retries per 10 s, so 1,000 calls into a dead service in a burst send at
///   most 1,100 requests (1.10 requests a call), whatever `max_attempts` is.
/// - **What it heals.** With independent failures at rate p and
///   `max_attempts` m, a call needs p + p² + … + p^(m−1) retries on average
///   and succeeds with probability 1 − p^m, which deposits `ratio` × (1 − p^m).
///   The budget keeps up while the first is below the second. With m = 4:
///   at p = 0.2, 0.248 retries are needed a call and 0.5 × 0.998 = 0.499 are
///   deposited; at p = 0.3, 0.417 against 0.496. Both are healed as far as the
///   attempts allow (99.8% and 99.2% of calls succeed); the budget starts to
///   bind near p = 0.33. Beyond that, retries are held at half the successes,
///   which is what stops a failing service from being hammered.
/// - **Why not 0.2.** At 0.2 a call at p = 0.2 earns 0.2 × 0.998 retries but
///   needs 0.248: calls fail once the budget is spent, and a long run heals only
///   about 95% of N calls (successes S = 0.8 N + 0.8 × 0.2 S, so
///   S = 0.8 N / 0.84 ≈ 0.95 N).
///
/// The model tests in `retry/model.rs` drive these cases through the budget
/// on an injected clock. [`RetryBudget::ratio`] with another value keeps the
/// same rules.
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

/// The default share of successful calls that retries may add.
pub(crate) const DEFAULT_RATIO: f64 = 0.5;

impl Default for RetryBudget {
    fn default() -> Self {
        Self::ratio(DEFAULT_RATIO)
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
    #[cfg(any(test, feature = "bench-internals"))]
    pub(crate) fn withdraw(&self, now: Instant) -> bool {
        self.take(now).is_some()
    }

    /// Takes one retry; returns the generation of the slot it was taken from.
    fn take(&self, now: Instant) -> Option<u64> {
        let generation = self.rotate(now);
        let slot = &self.slots[slot_index(generation)];
        // Take first, then check: concurrent withdrawals cannot all spend the
        // same last token.
        slot.fetch_sub(UNIT, Ordering::AcqRel);
        if self.balance_units() >= 0 {
            Some(generation)
        } else {
            slot.fetch_add(UNIT, Ordering::AcqRel);
            None
        }
    }

    /// Takes one retry, returned to the budget if the guard is dropped before
    /// [`Withdrawal::spend`] (a call cancelled during its backoff).
    pub(crate) fn try_withdraw(&self, now: Instant) -> Option<Withdrawal<'_>> {
        // Not `then_some`: building a guard that is then dropped would refund.
        self.take(now).map(|generation| Withdrawal {
            budget: self,
            generation,
            spent: false,
        })
    }

    /// Gives back a retry taken from `generation`'s slot, if that slot is
    /// still in the window; an expired debit has already come back.
    fn refund(&self, generation: u64, now: Instant) {
        let current = self.rotate(now);
        if current.saturating_sub(generation) < SLOTS as u64 {
            self.slots[slot_index(generation)].fetch_add(UNIT, Ordering::AcqRel);
        }
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
        slot_index(self.rotate(now))
    }

    /// Expires old slots and returns the current generation.
    fn rotate(&self, now: Instant) -> u64 {
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
        generation.max(seen)
    }
}

/// One retry taken from a [`Budget`]; given back on drop unless spent.
#[derive(Debug)]
pub(crate) struct Withdrawal<'a> {
    budget: &'a Budget,
    generation: u64,
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
            self.budget.refund(self.generation, Instant::now());
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
    fn a_refund_after_its_slot_expired_adds_nothing() {
        let t0 = Instant::now();
        let b = Budget::new(0.2, 1, Duration::from_secs(1), t0);
        let w = b.try_withdraw(t0).unwrap();
        // The window has passed: the debit expired, so the floor is back...
        assert_eq!(b.balance(at(t0, 1_500)), 1);
        // ...and a late refund must not add a second retry to the window.
        b.refund(w.generation, at(t0, 1_500));
        w.spend();
        assert_eq!(b.balance(at(t0, 1_500)), 1);
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
}
